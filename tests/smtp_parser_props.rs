//! Property tests of the SMTP parser and session (the CI-run half of fuzzing; the
//! coverage-guided half is `tests/fuzz`, see docs/testing.md).
//!
//! - `command::parse` never panics and only accepts what it can represent.
//! - A session fed arbitrary bytes never panics, and produces the same replies and
//!   actions however the bytes are split.
//! - The DATA reader agrees with a naive line-by-line oracle.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use shardmail::proto::smtp::command::{self, Command};
use shardmail::proto::smtp::data::{DataProgress, DataReader};
use shardmail::proto::smtp::{Action, Directory, Port, Resolution, Session, SessionConfig};
use shardmail::proto::testkit::{Driver, Smtp, Turn};

struct AnyLocal;
impl Directory for AnyLocal {
    fn resolve(&self, address: &str) -> Resolution {
        if address.ends_with("@example.org") {
            Resolution::Local {
                account: address.len() as u64,
                mailbox: address.into(),
            }
        } else {
            Resolution::NotLocal
        }
    }
}

/// Plausible SMTP traffic: real verbs, odd arguments, raw noise, CR/LF/dots.
fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"EHLO x\r\n".to_vec()),
        Just(b"HELO x\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=10\r\n".to_vec()),
        Just(b"RCPT TO:<u@example.org>\r\n".to_vec()),
        Just(b"RCPT TO:<x@remote.example>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 3\r\n".to_vec()),
        Just(b"BDAT 2 LAST\r\n".to_vec()),
        Just(b"AUTH PLAIN\r\n".to_vec()),
        Just(b"AUTH LOGIN dXNlcg==\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"..\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

fn session() -> Session {
    let config = Rc::new(SessionConfig {
        hostname: "mx.example".into(),
        port: Port::Submission,
        tls_available: true,
        allow_plaintext_auth: true,
        message_size_max: 64,
        line_bytes_max: 512,
        recipients_max: 5,
        bad_commands_max: 50,
        auth_failures_max: 3,
        postmaster_domain: "example.org".into(),
        policies: Default::default(),
        sender_login_match: true,
    });
    Session::new(config, IpAddr::V4(Ipv4Addr::LOCALHOST), 1, false)
}

/// Feeds `input` in `chunk`-sized pieces; returns replies plus a trace of actions.
fn drive(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut d = Driver::new(Smtp {
        session: session(),
        now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        directory: AnyLocal,
    });
    let mut trace_actions =
        |smtp: &mut Smtp<AnyLocal>, action: Action, turn: &mut Turn<'_, Action>| {
            let s = &mut smtp.session;
            match action {
                Action::Deliver(env) => {
                    turn.log.push(format!(
                        "[deliver]{}",
                        String::from_utf8_lossy(&env.message.staged)
                    ));
                    s.delivered(&env.id, &Ok(()), turn.out);
                }
                Action::Authenticate { username, .. } => {
                    turn.log.push("[auth]".into());
                    s.auth_result(Some(username), turn.out);
                }
                Action::StartTls => {
                    // Keep the pending bytes (unlike the IO layer) so the property
                    // compares like with like across splits.
                    turn.log.push("[tls]".into());
                    s.tls_established();
                }
                Action::CheckSpf { .. } => {
                    turn.log.push("[spf]".into());
                    s.spf_checked(shardmail::auth::policy::SpfKind::Pass, turn.out);
                }
                Action::SaslCredentials { .. } => turn.log.push("[scram]".into()),
                Action::Close => turn.log.push("[close]".into()),
            }
        };
    d.feed(input, chunk, &mut trace_actions);
    d.log.join("\n").into_bytes()
}

/// Naive DATA oracle: split on CRLF, stop at ".", strip one leading dot.
fn naive_data(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut pos = 0;
    while let Some(rel) = input[pos..].windows(2).position(|w| w == b"\r\n") {
        let line = &input[pos..pos + rel];
        pos += rel + 2;
        if line == b"." {
            return Some((body, pos));
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        body.extend_from_slice(line);
        body.extend_from_slice(b"\r\n");
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = command::parse(&line);
    }

    #[test]
    fn parsed_addresses_are_well_formed(local in "[a-zA-Z0-9.!#%+_-]{1,20}", domain in "[a-z0-9.-]{1,30}") {
        let line = format!("RCPT TO:<{local}@{domain}>");
        if let Ok(Command::Rcpt(m, _)) = command::parse(line.as_bytes()) {
            prop_assert_eq!(m.local, local.as_str());
            prop_assert!(!m.domain.is_empty() && !m.domain.starts_with('.') && !m.domain.contains(".."));
        }
    }

    #[test]
    fn session_is_split_invariant(input in smtp_bytes(), chunk in 1usize..20) {
        let whole = drive(&input, usize::MAX);
        let split = drive(&input, chunk);
        prop_assert_eq!(String::from_utf8_lossy(&whole), String::from_utf8_lossy(&split));
    }

    #[test]
    fn data_reader_matches_naive_oracle(lines in proptest::collection::vec("[.a-z]{0,6}", 0..12), chunk in 1usize..9) {
        let mut wire = Vec::new();
        for l in &lines {
            wire.extend_from_slice(l.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\ntrailer");
        let (expect_body, expect_used) = naive_data(&wire).expect("terminated");
        let mut reader = DataReader::new();
        let mut body = shardmail::proto::Incoming::default();
        let mut buf = Vec::new();
        let mut used_total = 0;
        let mut done = false;
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            match reader.read(&buf, &mut body, 1 << 20) {
                DataProgress::More(n) => { used_total += n; buf.drain(..n); }
                DataProgress::Done(n) => { used_total += n; done = true; break; }
            }
        }
        prop_assert!(done);
        prop_assert_eq!(used_total, expect_used);
        prop_assert_eq!(body.staged, expect_body);
    }
}
