//! POP3 session transcripts in memory (through `proto::testkit`, the drivers the
//! protocols share), each replayed whole and in 1-, 2-, 7- and 100-byte fragments
//! with identical results; plus property tests (never panics,
//! split-invariant) and the TOP/dot-stuffing helpers against naive versions.
//!
//! Lines: `C:` client line (CRLF added), `S:` expected reply line, `A:` expected action
//! (`A: auth USER PASS` — password `secret` logs in, user `busy@x` is [IN-USE] —,
//! `A: retr UID [LINES]`, `A: update UID,UID`, `A: starttls`, `A: close`).

use std::sync::Arc;

use proptest::prelude::*;
use shardmail::proto::pop3::{self, Action, Entry, LoginRefusal, Maildrop, Pop3Config, Session};
use shardmail::proto::testkit::sasl::{binding, scram_verifier, shown};
use shardmail::proto::testkit::{Driver, Turn};

fn config() -> Arc<Pop3Config> {
    Arc::new(Pop3Config {
        hostname: "pop.example".into(),
        tls_available: true,
        allow_plaintext_auth: false,
        line_bytes_max: 256,
        bad_commands_max: 4,
        auth_failures_max: 2,
        output_bytes_max: 256 * 1024,
    })
}

fn maildrop() -> Maildrop {
    Maildrop {
        uidvalidity: 77,
        entries: vec![
            Entry {
                uid: 3,
                size: 100,
                deleted: false,
            },
            Entry {
                uid: 5,
                size: 250,
                deleted: false,
            },
            Entry {
                uid: 9,
                size: 40,
                deleted: false,
            },
        ],
    }
}

/// Answers the session's actions as the IO layer would, logging each as an `A:` line.
fn answer(s: &mut Session, action: Action, turn: &mut Turn<'_, Action>) {
    match action {
        Action::Authenticate {
            username, secret, ..
        } => {
            let password = shown(&secret);
            turn.log.push(format!("A: auth {username} {password}"));
            if username == "busy@x" {
                s.login_refused(LoginRefusal::InUse, turn.out);
            } else if password == "secret" || password == "<proof ok>" {
                s.logged_in(username, maildrop(), turn.out);
            } else {
                s.login_refused(LoginRefusal::BadCredentials, turn.out);
            }
        }
        Action::SaslCredentials { username } => {
            turn.log.push(format!("A: scram {username}"));
            s.sasl_credentials(scram_verifier(), &binding(), turn.out);
        }
        Action::Retrieve { uid, lines } => {
            turn.log.push(match lines {
                Some(n) => format!("A: retr {uid} {n}"),
                None => format!("A: retr {uid}"),
            });
            s.retrieved();
        }
        Action::Update { expunge } => {
            let uids: Vec<String> = expunge.iter().map(u32::to_string).collect();
            turn.log.push(format!("A: update {}", uids.join(",")));
            s.updated(Ok(expunge.len()), turn.out);
        }
        Action::StartTls => {
            turn.log.push("A: starttls".into());
            turn.drop_input();
            s.tls_established();
        }
        Action::Close => turn.log.push("A: close".into()),
    }
}

/// Runs a transcript, each client block fed in `chunk`-byte pieces; returns the
/// `S:`/`A:` lines produced.
fn run(transcript: &str, chunk: usize, tls: bool) -> Vec<String> {
    let mut d = Driver::new(Session::new(config(), tls));
    d.machine.greet(&mut d.out);
    let mut block: Vec<u8> = Vec::new();
    let lines: Vec<&str> = transcript.lines().map(str::trim_start).collect();
    for i in 0..=lines.len() {
        if let Some(text) = lines.get(i).and_then(|l| l.strip_prefix("C:")) {
            block.extend_from_slice(text.strip_prefix(' ').unwrap_or(text).as_bytes());
            block.extend_from_slice(b"\r\n");
            continue;
        }
        d.feed(&std::mem::take(&mut block), chunk, &mut answer);
    }
    d.log
}

fn check(transcript: &str, tls: bool) {
    let expected: Vec<String> = transcript
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("S:") || l.starts_with("A:"))
        .map(String::from)
        .collect();
    for chunk in [usize::MAX, 1, 2, 7, 100] {
        assert_eq!(
            run(transcript, chunk, tls),
            expected,
            "in {chunk}-byte fragments"
        );
    }
}

#[test]
fn capa_stls_login_and_transaction() {
    check(
        "S: +OK pop.example shardmail POP3 ready
         C: CAPA
         S: +OK Capability list follows
         S: TOP
         S: UIDL
         S: RESP-CODES
         S: AUTH-RESP-CODE
         S: PIPELINING
         S: STLS
         S: IMPLEMENTATION shardmail
         S: .
         C: USER alice@x
         S: -ERR [AUTH] Plaintext authentication disallowed without TLS (use STLS)
         C: STLS
         S: +OK Begin TLS negotiation
         A: starttls
         C: CAPA
         S: +OK Capability list follows
         S: TOP
         S: UIDL
         S: RESP-CODES
         S: AUTH-RESP-CODE
         S: PIPELINING
         S: USER
         S: SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN
         S: IMPLEMENTATION shardmail
         S: .
         C: STAT
         S: -ERR Not logged in
         C: USER alice@x
         C: PASS secret
         S: +OK Send PASS
         A: auth alice@x secret
         S: +OK Logged in, 3 messages (390 octets)
         C: STAT
         C: LIST
         C: UIDL 2
         C: RETR 2
         C: TOP 1 5
         S: +OK 3 390
         S: +OK 3 messages (390 octets)
         S: 1 100
         S: 2 250
         S: 3 40
         S: .
         S: +OK 2 77.5
         S: +OK 250 octets
         A: retr 5
         S: +OK Top of message follows
         A: retr 3 5
         C: DELE 2
         S: +OK Message 2 deleted
         C: RETR 2
         S: -ERR Message 2 already deleted
         C: LIST
         S: +OK 2 messages (140 octets)
         S: 1 100
         S: 3 40
         S: .
         C: RSET
         S: +OK Maildrop has 3 messages (390 octets)
         C: DELE 1
         C: DELE 3
         C: RETR 4
         C: QUIT
         S: +OK Message 1 deleted
         S: +OK Message 3 deleted
         S: -ERR No such message
         A: update 3,9
         S: +OK shardmail POP3 signing off (2 messages deleted)
         A: close",
        false,
    );
}

#[test]
fn auth_plain_failures_in_use_and_errors() {
    check(
        "S: +OK pop.example shardmail POP3 ready
         C: AUTH
         S: +OK Supported mechanisms follow
         S: SCRAM-SHA-256-PLUS
         S: SCRAM-SHA-256
         S: PLAIN
         S: .
         C: AUTH PLAIN AGJ1c3lAeABzZWNyZXQ=
         A: auth busy@x secret
         S: -ERR [IN-USE] Mailbox is locked by another POP3 session
         C: PASS x
         S: -ERR USER first
         C: AUTH PLAIN
         S: + 
         C: AGFsaWNlQHgAd3Jvbmc=
         A: auth alice@x wrong
         S: -ERR [AUTH] Authentication failed
         C: APOP alice 0123
         S: -ERR APOP is not supported; use USER/PASS or AUTH PLAIN over TLS
         C: AUTH PLAIN AGFsaWNlQHgAd3Jvbmc=
         A: auth alice@x wrong
         S: -ERR [AUTH] Authentication failed
         S: -ERR [AUTH] Too many failed logins, closing connection
         A: close",
        true,
    );
}

#[test]
fn bad_commands_and_long_lines_disconnect() {
    let long = "X".repeat(300);
    check(
        &format!(
            "S: +OK pop.example shardmail POP3 ready
             C: FROB
             S: -ERR Unknown command
             C: {long}
             S: -ERR Line too long
             C: USER a@x
             C: PASS secret
             S: +OK Send PASS
             A: auth a@x secret
             S: +OK Logged in, 3 messages (390 octets)
             C: RETR zero
             S: -ERR Invalid message number
             C: RETR 0
             S: -ERR No such message
             C: USER b@x
             S: -ERR Already logged in
             S: -ERR Too many errors, closing connection
             A: close"
        ),
        true,
    );
}

/// Naive stuffing: process line by line.
fn naive_stuff(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    for &b in m {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

fn stuff_with_points(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for p in pop3::stuffing_points(m) {
        out.extend_from_slice(&m[start..p]);
        out.push(b'.');
        start = p;
    }
    out.extend_from_slice(&m[start..]);
    out
}

fn command_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"USER a@x\r\n".to_vec()),
        Just(b"PASS secret\r\n".to_vec()),
        Just(b"PASS nope\r\n".to_vec()),
        Just(b"AUTH PLAIN\r\n".to_vec()),
        Just(b"STAT\r\nLIST\r\nUIDL 1\r\n".to_vec()),
        Just(b"RETR 2\r\nTOP 3 1\r\nDELE 1\r\n".to_vec()),
        Just(b"RSET\r\nNOOP\r\nCAPA\r\n".to_vec()),
        Just(b"STLS\r\n".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..30),
    ];
    proptest::collection::vec(piece, 0..20).prop_map(|v| v.concat())
}

/// Arbitrary input, in `chunk`-byte pieces: the transcript (replies and actions).
fn drive(input: &[u8], chunk: usize) -> Vec<String> {
    let mut d = Driver::new(Session::new(config(), true));
    d.feed(input, chunk, &mut |s, action, turn| {
        turn.log.push(format!("A: {action:?}"));
        match action {
            Action::Authenticate {
                username, secret, ..
            } if shown(&secret) == "secret" => s.logged_in(username, maildrop(), turn.out),
            Action::SaslCredentials { .. } => {
                s.sasl_credentials(scram_verifier(), &binding(), turn.out)
            }
            Action::Authenticate { .. } => s.login_refused(LoginRefusal::BadCredentials, turn.out),
            Action::Retrieve { .. } => s.retrieved(),
            Action::Update { expunge } => s.updated(Ok(expunge.len()), turn.out),
            Action::StartTls => s.tls_established(),
            Action::Close => {}
        }
    });
    d.log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn session_never_panics_and_is_split_invariant(input in command_soup(), chunk in 1usize..16) {
        prop_assert_eq!(drive(&input, usize::MAX), drive(&input, chunk));
    }

    #[test]
    fn stuffing_matches_naive(m in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..64)) {
        prop_assert_eq!(stuff_with_points(&m), naive_stuff(&m));
    }

    #[test]
    fn top_len_is_a_prefix_ending_at_a_line(m in "[a-z:\\r\\n]{0,80}", n in 0u32..5) {
        let len = pop3::top_len(m.as_bytes(), n);
        prop_assert!(len <= m.len());
        prop_assert!(len == m.len() || m.as_bytes()[len - 1] == b'\n');
    }
}

/// A client that pipelines LIST/UIDL of a large maildrop without reading: every
/// step queues at most `output_bytes_max` (plus one line), and the answers are
/// complete and in order.
#[test]
fn long_listings_come_in_bounded_steps() {
    let config = Arc::new(Pop3Config {
        output_bytes_max: 16 * 1024,
        ..(*config()).clone()
    });
    let mut d = Driver::new(Session::new(config, true));
    let mut input = b"USER a@x\r\nPASS secret\r\n".to_vec();
    let big = Maildrop {
        uidvalidity: 9,
        entries: (1..=10_000)
            .map(|uid| Entry {
                uid,
                size: 1000 + u64::from(uid),
                deleted: false,
            })
            .collect(),
    };
    for _ in 0..5 {
        input.extend_from_slice(b"LIST\r\nUIDL\r\n");
    }
    d.feed(&input, usize::MAX, &mut |s, action, turn| {
        if let Action::Authenticate { username, .. } = action {
            s.logged_in(username, big.clone(), turn.out);
        }
    });
    let (steps, largest) = (d.steps, d.largest_step_reply);
    let sent = d.sent;
    let text = String::from_utf8(sent).unwrap_or_default();
    assert_eq!(
        text.matches("\r\n10000 11000\r\n").count(),
        5,
        "{}",
        &text[..300.min(text.len())]
    );
    assert_eq!(text.matches("\r\n10000 9.10000\r\n").count(), 5);
    assert_eq!(text.matches("\r\n.\r\n").count(), 10);
    assert!(largest < 16 * 1024 + 64, "one step queued {largest} bytes");
    assert!(steps > 50, "{steps} steps");
}
