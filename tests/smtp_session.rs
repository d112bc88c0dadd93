//! SMTP session transcripts, run in memory (no sockets) through `proto::testkit`,
//! each replayed whole and in 1-, 2-, 7- and 100-byte fragments: the replies and
//! actions must be identical.
//!
//! Transcript lines: `C: text` client line (CRLF added), `R: text` raw client bytes
//! with `\r` `\n` escapes and no CRLF added, `S: text` expected reply line, `A: …`
//! expected action (`A: deliver FROM -> TO,TO`, `A: auth USER PASS` — the fake
//! password is `secret` —, `A: starttls`, `A: close`). A `A: deliver … => fail`
//! line makes the store fail. Client lines are sent in blocks: all `C:`/`R:` lines
//! up to the next `S:`/`A:` line go out together (pipelining).

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardmail::auth::policy::{Policies, Policy, SpfFailAction, SpfKind};
use shardmail::config::raw::RateCount;
use shardmail::proto::smtp::{
    Action, DeliveryError, Directory, Port, RateEvent, Resolution, Session, SessionConfig,
};
use shardmail::proto::testkit::sasl::{binding, scram_verifier, shown, ScramClient};
use shardmail::proto::testkit::{Driver, Smtp, Turn};

struct FakeDirectory;

impl Directory for FakeDirectory {
    fn resolve(&self, address: &str) -> Resolution {
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        match (local, domain) {
            ("alice", "example.org") => Resolution::Local {
                account: 1,
                mailbox: address.into(),
            },
            ("bob", "example.org") => Resolution::Local {
                account: 2,
                mailbox: address.into(),
            },
            ("carol", "strict.org") => Resolution::Local {
                account: 3,
                mailbox: address.into(),
            },
            ("postmaster", "example.org") => Resolution::Local {
                account: 1,
                mailbox: "alice@example.org".into(),
            },
            (_, "example.org") => Resolution::UnknownUser,
            _ => Resolution::NotLocal,
        }
    }

    /// A fixed policy standing in for `antispam.rate_limits`.
    fn rate_limited(&self, e: RateEvent<'_>) -> Option<String> {
        let limited = "451 4.7.1 Rate limit reached (test)".to_string();
        match (e.count, e.sender, e.recipient) {
            (RateCount::Messages, "flood@spam.example", _) => Some(limited),
            (RateCount::Recipients, "busy@b.example", Some("bob@example.org")) => Some(limited),
            (RateCount::FailedCommands, _, Some("guess3@example.org")) => {
                Some("421 4.7.0 mx.example Too many failed commands (test)".into())
            }
            _ => None,
        }
    }
}

fn config(port: Port) -> Rc<SessionConfig> {
    let mut policies = Policies::default();
    let strict = Policy {
        spf_fail: SpfFailAction::Reject,
        ..Policy::default()
    };
    policies.domains.insert("strict.org".into(), strict);
    Rc::new(SessionConfig {
        hostname: "mx.example".into(),
        port,
        tls_available: port != Port::Lmtp,
        allow_plaintext_auth: false,
        message_size_max: 200,
        line_bytes_max: 512,
        recipients_max: 3,
        bad_commands_max: 4,
        auth_failures_max: 2,
        postmaster_domain: "example.org".into(),
        policies,
        sender_login_match: true,
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_675_500)
}

fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

/// Runs `transcript` feeding client bytes in `chunk`-byte pieces; returns the log of
/// replies and actions per block, and the delivered messages.
fn run(port: Port, transcript: &str, chunk: usize) -> (Vec<String>, Vec<Vec<u8>>) {
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut session = Session::new(config(port), peer, 0xABC, port == Port::Submissions);
    session.verify_senders(transcript.contains("A: spf "));
    let mut d = Driver::new(Smtp {
        session,
        now: now(),
        directory: FakeDirectory,
    });
    d.machine.session.greet(&mut d.out);
    let fail_flags: Vec<bool> = transcript
        .lines()
        .filter(|l| l.trim_start().starts_with("A: deliver"))
        .map(|l| l.trim_end().ends_with("=> fail"))
        .collect();
    let mut deliveries = 0usize;
    let mut delivered = Vec::new();
    let mut answer =
        |smtp: &mut Smtp<FakeDirectory>, action: Action, turn: &mut Turn<'_, Action>| {
            let session = &mut smtp.session;
            match action {
                Action::Deliver(env) => {
                    let to: Vec<_> = env.recipients.iter().map(|r| r.address.clone()).collect();
                    let fail = fail_flags.get(deliveries).copied().unwrap_or(false);
                    deliveries += 1;
                    turn.log.push(format!(
                        "A: deliver {} -> {}{}",
                        env.mail_from,
                        to.join(","),
                        if fail { " => fail" } else { "" }
                    ));
                    let result = if fail {
                        Err(DeliveryError::Temporary)
                    } else {
                        Ok(())
                    };
                    if !fail {
                        delivered.push(env.message.staged.clone());
                    }
                    session.delivered(&env.id, &result, turn.out);
                }
                Action::Authenticate {
                    username, secret, ..
                } => {
                    let password = shown(&secret);
                    turn.log.push(format!("A: auth {username} {password}"));
                    let ok = password == "secret" || password == "<proof ok>";
                    session.auth_result(ok.then_some(username), turn.out);
                }
                Action::SaslCredentials { username } => {
                    turn.log.push(format!("A: scram {username}"));
                    session.sasl_credentials(scram_verifier(), &binding(), turn.out);
                }
                Action::StartTls => {
                    turn.log.push("A: starttls".into());
                    turn.drop_input(); // as the IO layer does (CVE-2011-0411)
                    session.tls_established();
                }
                Action::CheckSpf {
                    ip,
                    helo,
                    mail_from,
                } => {
                    turn.log.push(format!("A: spf {ip} {helo} {mail_from}"));
                    // The fake DNS: the sender's domain names its SPF result.
                    let kind = match mail_from.rsplit_once('@').map(|(_, d)| d) {
                        Some("busy.example") => None, // the worker's queue is full
                        Some("fail.example") => Some(SpfKind::Fail),
                        Some("temp.example") => Some(SpfKind::TempError),
                        _ => Some(SpfKind::Pass),
                    };
                    match kind {
                        Some(kind) => session.spf_checked(kind, turn.out),
                        None => session.checks_unavailable(turn.out),
                    }
                }
                Action::Close => turn.log.push("A: close".into()),
            }
        };
    d.drain();
    let mut block: Vec<u8> = Vec::new();
    let lines: Vec<&str> = transcript.lines().map(str::trim_start).collect();
    for i in 0..=lines.len() {
        let line = lines.get(i).copied().unwrap_or_default();
        if let Some(text) = line.strip_prefix("C: ").or(line.strip_prefix("C:")) {
            block.extend_from_slice(text.as_bytes());
            block.extend_from_slice(b"\r\n");
            continue;
        }
        if let Some(raw) = line.strip_prefix("R: ") {
            block.extend_from_slice(&unescape(raw));
            continue;
        }
        // End of a client block: feed it in fragments.
        if !block.is_empty() {
            d.feed(&std::mem::take(&mut block), chunk, &mut answer);
        }
    }
    (d.log, delivered)
}

/// Checks the transcript in every fragmentation; returns the delivered messages.
fn check(port: Port, transcript: &str) -> Vec<Vec<u8>> {
    let expected: Vec<String> = transcript
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("S:") || l.starts_with("A:"))
        .map(String::from)
        .collect();
    let (whole, delivered) = run(port, transcript, usize::MAX);
    assert_eq!(whole, expected, "whole transcript");
    for chunk in [1, 2, 7, 100] {
        let (log, d) = run(port, transcript, chunk);
        assert_eq!(log, expected, "transcript in {chunk}-byte fragments");
        assert_eq!(d, delivered, "delivered bytes in {chunk}-byte fragments");
    }
    delivered
}

#[test]
fn mx_delivery_with_dot_unstuffing() {
    let delivered = check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: EHLO client.example
         S: 250-mx.example Hello client.example [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250-STARTTLS
         S: 250 HELP
         C: MAIL FROM:<sender@remote.example>
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<alice@example.org>
         S: 250 2.1.5 Recipient ok
         C: RCPT TO:<nobody@example.org>
         S: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown
         C: RCPT TO:<someone@elsewhere.example>
         S: 554 5.7.1 <someone@elsewhere.example>: Relay access denied
         C: DATA
         S: 354 End data with <CR><LF>.<CR><LF>
         C: Subject: test
         C:
         C: ..starts with a dot
         C: .
         A: deliver sender@remote.example -> alice@example.org
         S: 250 2.0.0 Ok: stored as 000000000ABC0001
         C: QUIT
         S: 221 2.0.0 Bye
         A: close",
    );
    let text = String::from_utf8(delivered[0].clone()).expect("utf8");
    assert_eq!(
        text,
        "Received: from client.example ([192.0.2.1])\r\n\tby mx.example (shardmail) with ESMTP \
         id 000000000ABC0001\r\n\tfor <alice@example.org>;\r\n\tThu, 26 Nov 2026 06:45:00 +0000\r\n\
         Subject: test\r\n\r\n.starts with a dot\r\n"
    );
}

#[test]
fn pipelined_transaction_and_postmaster() {
    check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: HELO client.example
         S: 250 mx.example
         C: MAIL FROM:<>
         C: RCPT TO:<Postmaster>
         C: RCPT TO:<bob@example.org>
         C: DATA
         S: 250 2.1.0 Sender ok
         S: 250 2.1.5 Recipient ok
         S: 250 2.1.5 Recipient ok
         S: 354 End data with <CR><LF>.<CR><LF>
         C: hi
         C: .
         C: NOOP
         A: deliver  -> postmaster@example.org,bob@example.org
         S: 250 2.0.0 Ok: stored as 000000000ABC0001
         S: 250 2.0.0 Ok",
    );
}

#[test]
fn bdat_chunks() {
    let delivered = check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: EHLO c
         S: 250-mx.example Hello c [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250-STARTTLS
         S: 250 HELP
         C: BDAT 5
         R: hello
         S: 503 5.5.1 Need MAIL command
         C: MAIL FROM:<a@b.example>
         C: RCPT TO:<bob@example.org>
         C: BDAT 7
         R: Hi\\r\\n.\\r\\n
         S: 250 2.1.0 Sender ok
         S: 250 2.1.5 Recipient ok
         S: 250 2.0.0 7 octets received
         C: DATA
         S: 503 5.5.1 DATA not allowed after BDAT
         C: BDAT 0 LAST
         A: deliver a@b.example -> bob@example.org
         S: 250 2.0.0 Ok: stored as 000000000ABC0001",
    );
    assert!(
        delivered[0].ends_with(b"Hi\r\n.\r\n"),
        "BDAT bytes are stored as sent"
    );
}

#[test]
fn submission_requires_tls_then_auth() {
    check(
        Port::Submission,
        "S: 220 mx.example ESMTP shardmail
         C: EHLO c
         S: 250-mx.example Hello c [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250-STARTTLS
         S: 250 HELP
         C: MAIL FROM:<alice@example.org>
         S: 530 5.7.0 Authentication required
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==
         S: 538 5.7.11 Encryption required for requested authentication mechanism
         C: STARTTLS
         S: 220 2.0.0 Ready to start TLS
         A: starttls
         C: MAIL FROM:<alice@example.org>
         S: 503 5.5.1 Send EHLO or HELO first
         C: EHLO c
         S: 250-mx.example Hello c [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250-REQUIRETLS
         S: 250-AUTH PLAIN LOGIN
         S: 250 HELP
         C: AUTH LOGIN
         S: 334 VXNlcm5hbWU6
         C: YWxpY2VAZXhhbXBsZS5vcmc=
         S: 334 UGFzc3dvcmQ6
         C: d3Jvbmc=
         A: auth alice@example.org wrong
         S: 535 5.7.8 Authentication credentials invalid
         C: AUTH PLAIN
         S: 334 
         C: AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==
         A: auth alice@example.org secret
         S: 235 2.7.0 Authentication successful
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==
         S: 503 5.5.1 Already authenticated
         C: MAIL FROM:<bob@example.org>
         S: 553 5.7.1 <bob@example.org>: Sender address rejected: not owned by user alice@example.org
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<friend@remote.example>
         C: RCPT TO:<bob@example.org>
         C: DATA
         S: 250 2.1.0 Sender ok
         S: 250 2.1.5 Recipient ok (will be relayed)
         S: 250 2.1.5 Recipient ok
         S: 354 End data with <CR><LF>.<CR><LF>
         C: x
         C: .
         A: deliver alice@example.org -> friend@remote.example,bob@example.org => fail
         S: 451 4.3.0 Temporary failure storing the message, try again later",
    );
}

#[test]
fn auth_failures_disconnect() {
    check(
        Port::Submissions,
        "S: 220 mx.example ESMTP shardmail
         C: EHLO c
         S: 250-mx.example Hello c [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250-REQUIRETLS
         S: 250-AUTH PLAIN LOGIN
         S: 250 HELP
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAG5vcGU=
         A: auth alice@example.org nope
         S: 535 5.7.8 Authentication credentials invalid
         C: AUTH CRAM-MD5
         S: 504 5.5.4 Unrecognized authentication type
         C: AUTH PLAIN
         S: 334 
         C: *
         S: 501 5.0.0 Authentication cancelled
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAG5vcGU=
         A: auth alice@example.org nope
         S: 535 5.7.8 Authentication credentials invalid
         S: 421 4.7.0 mx.example Too many failed authentications, closing connection
         A: close",
    );
}

#[test]
fn rate_limits_refuse_the_command_or_end_the_session() {
    check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: HELO c
         S: 250 mx.example
         C: MAIL FROM:<flood@spam.example>
         S: 451 4.7.1 Rate limit reached (test)
         C: MAIL FROM:<busy@b.example>
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<alice@example.org>
         S: 250 2.1.5 Recipient ok
         C: RCPT TO:<bob@example.org>
         S: 451 4.7.1 Rate limit reached (test)
         C: DATA
         S: 354 End data with <CR><LF>.<CR><LF>
         C: Subject: only alice
         C: .
         A: deliver busy@b.example -> alice@example.org
         S: 250 2.0.0 Ok: stored as 000000000ABC0001
         C: MAIL FROM:<a@b.example>
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<guess1@example.org>
         S: 550 5.1.1 <guess1@example.org>: Recipient address rejected: User unknown
         C: RCPT TO:<guess3@example.org>
         S: 421 4.7.0 mx.example Too many failed commands (test)
         A: close",
    );
}

#[test]
fn sequence_and_limit_errors() {
    let long = "X".repeat(600);
    check(
        Port::Mx,
        &format!(
            "S: 220 mx.example ESMTP shardmail
             C: MAIL FROM:<a@b.example>
             S: 503 5.5.1 Send EHLO or HELO first
             C: HELO c
             S: 250 mx.example
             C: RCPT TO:<alice@example.org>
             S: 503 5.5.1 Need MAIL before RCPT
             C: DATA
             S: 503 5.5.1 Need MAIL command
             C: MAIL FROM:<a@b.example> SIZE=1000
             S: 552 5.3.4 Message size exceeds fixed maximum message size
             C: MAIL FROM:<a@b.example>
             S: 250 2.1.0 Sender ok
             C: MAIL FROM:<a@b.example>
             S: 503 5.5.1 Nested MAIL command
             C: DATA
             S: 554 5.5.1 No valid recipients
             C: RCPT TO:<alice@example.org>
             C: RCPT TO:<alice@example.org>
             C: RCPT TO:<bob@example.org>
             C: RCPT TO:<bob@example.org>
             S: 250 2.1.5 Recipient ok
             S: 250 2.1.5 Recipient ok
             S: 250 2.1.5 Recipient ok
             S: 452 4.5.3 Too many recipients
             C: RSET
             S: 250 2.0.0 Ok
             C: VRFY alice
             S: 252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery
             C: EXPN list
             S: 502 5.5.1 EXPN is not available
             C: HELP
             S: 214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH
             C: AUTH PLAIN
             S: 502 5.5.1 AUTH is not available on this port; use submission
             C: {long}
             S: 500 5.5.2 Line too long
             C: FOO
             S: 500 5.5.1 Command unrecognized
             C: MAIL FROM:<bad address>
             S: 501 5.1.7 Bad sender address syntax
             C: BAR
             S: 500 5.5.1 Command unrecognized
             S: 421 4.7.0 mx.example Too many errors, closing connection
             A: close"
        ),
    );
}

#[test]
fn oversize_and_bare_lf_are_refused_after_reading_the_whole_body() {
    let big = "Y".repeat(150);
    check(
        Port::Mx,
        &format!(
            "S: 220 mx.example ESMTP shardmail
             C: HELO c
             S: 250 mx.example
             C: MAIL FROM:<a@b.example>
             C: RCPT TO:<alice@example.org>
             C: DATA
             S: 250 2.1.0 Sender ok
             S: 250 2.1.5 Recipient ok
             S: 354 End data with <CR><LF>.<CR><LF>
             C: {big}
             C: {big}
             C: .
             S: 552 5.3.4 Message size exceeds fixed maximum message size
             C: MAIL FROM:<a@b.example>
             C: RCPT TO:<alice@example.org>
             C: DATA
             S: 250 2.1.0 Sender ok
             S: 250 2.1.5 Recipient ok
             S: 354 End data with <CR><LF>.<CR><LF>
             R: bare\\n.\\nstill the body\\r\\n.\\r\\n
             S: 550 5.6.11 Message refused: bare CR or LF in message; lines must end with CRLF (RFC 5321 section 2.3.8)
             C: MAIL FROM:<a@b.example>
             C: RCPT TO:<alice@example.org>
             C: BDAT 300 LAST
             R: {big}{big}
             S: 250 2.1.0 Sender ok
             S: 250 2.1.5 Recipient ok
             S: 552 5.3.4 Message size exceeds fixed maximum message size
             C: QUIT
             S: 221 2.0.0 Bye
             A: close"
        ),
    );
}

#[test]
fn smtputf8_addresses_need_the_parameter() {
    check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: EHLO c
         S: 250-mx.example Hello c [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250-STARTTLS
         S: 250 HELP
         C: MAIL FROM:<jörg@müller.example>
         S: 553 5.6.7 Non-ASCII address requires SMTPUTF8
         C: MAIL FROM:<jörg@müller.example> SMTPUTF8 BODY=8BITMIME
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<bob@example.org>
         S: 250 2.1.5 Recipient ok",
    );
}

#[test]
fn spf_policy_applies_per_recipient_domain_before_data() {
    check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: HELO client.example
         S: 250 mx.example
         C: MAIL FROM:<someone@fail.example>
         A: spf 192.0.2.1 client.example someone@fail.example
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<alice@example.org>
         C: RCPT TO:<carol@strict.org>
         S: 250 2.1.5 Recipient ok
         S: 550 5.7.23 SPF validation failed: the sender's domain does not authorise this host
         C: RSET
         S: 250 2.0.0 Ok
         C: MAIL FROM:<x@temp.example>
         A: spf 192.0.2.1 client.example x@temp.example
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<alice@example.org>
         S: 451 4.7.24 SPF validation error (temporary DNS failure), try again later
         C: RSET
         S: 250 2.0.0 Ok
         C: MAIL FROM:<x@busy.example>
         A: spf 192.0.2.1 client.example x@busy.example
         S: 451 4.3.2 Too many messages are being checked, try again later
         C: RCPT TO:<alice@example.org>
         S: 503 5.5.1 Need MAIL before RCPT
         C: MAIL FROM:<ok@pass.example>
         A: spf 192.0.2.1 client.example ok@pass.example
         S: 250 2.1.0 Sender ok
         C: RCPT TO:<carol@strict.org>
         C: DATA
         S: 250 2.1.5 Recipient ok
         S: 354 End data with <CR><LF>.<CR><LF>
         C: Subject: x
         C: .
         A: deliver ok@pass.example -> carol@strict.org
         S: 250 2.0.0 Ok: stored as 000000000ABC0001",
    );
}

#[test]
fn lmtp_replies_once_per_recipient_after_the_data() {
    let delivered = check(
        Port::Lmtp,
        "S: 220 mx.example ESMTP shardmail
         C: EHLO edge.example
         S: 500 5.5.1 This is an LMTP server (RFC 2033): use LHLO
         C: LHLO mx.example
         S: 250-mx.example Hello mx.example [192.0.2.1]
         S: 250-PIPELINING
         S: 250-SIZE 200
         S: 250-8BITMIME
         S: 250-SMTPUTF8
         S: 250-ENHANCEDSTATUSCODES
         S: 250-CHUNKING
         S: 250-DSN
         S: 250 HELP
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==
         S: 502 5.5.1 AUTH is not available on this port; use submission
         C: MAIL FROM:<sender@remote.example>
         C: RCPT TO:<alice@example.org>
         C: RCPT TO:<nobody@example.org>
         C: RCPT TO:<bob@example.org>
         C: RCPT TO:<someone@elsewhere.example>
         C: DATA
         S: 250 2.1.0 Sender ok
         S: 250 2.1.5 Recipient ok
         S: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown
         S: 250 2.1.5 Recipient ok
         S: 554 5.7.1 <someone@elsewhere.example>: Relay access denied
         S: 354 End data with <CR><LF>.<CR><LF>
         C: Subject: lmtp
         C:
         C: body
         C: .
         A: deliver sender@remote.example -> alice@example.org,bob@example.org
         S: 250 2.1.5 <alice@example.org> delivered as 000000000ABC0001
         S: 250 2.1.5 <bob@example.org> delivered as 000000000ABC0001
         C: MAIL FROM:<>
         C: RCPT TO:<alice@example.org>
         C: RCPT TO:<bob@example.org>
         C: DATA
         S: 250 2.1.0 Sender ok
         S: 250 2.1.5 Recipient ok
         S: 250 2.1.5 Recipient ok
         S: 354 End data with <CR><LF>.<CR><LF>
         C: x
         C: .
         A: deliver  -> alice@example.org,bob@example.org => fail
         S: 451 4.3.0 Temporary failure storing the message, try again later
         S: 451 4.3.0 Temporary failure storing the message, try again later
         C: STARTTLS
         S: 454 4.7.0 TLS not available due to temporary reason
         C: QUIT
         S: 221 2.0.0 Bye
         A: close",
    );
    let text = String::from_utf8(delivered[0].clone()).expect("utf8");
    assert!(text.contains("with LMTP id"), "{text}");
    // LHLO is LMTP's alone; REQUIRETLS needs a TLS session.
    check(
        Port::Mx,
        "S: 220 mx.example ESMTP shardmail
         C: LHLO client.example
         S: 500 5.5.1 Command unrecognized
         C: HELO client.example
         S: 250 mx.example
         C: MAIL FROM:<a@remote.example> REQUIRETLS
         S: 530 5.7.10 REQUIRETLS needs a TLS session: STARTTLS first
         C: QUIT
         S: 221 2.0.0 Bye
         A: close",
    );
}

/// One SCRAM login on submissions (TLS) with `client`, fed in `chunk`-byte pieces;
/// returns the reply lines. The fake IO layer answers with the testkit's verifier and
/// channel binding.
fn scram_login(mechanism: &str, client: &ScramClient, chunk: usize) -> Vec<String> {
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let session = Session::new(config(Port::Submissions), peer, 1, true);
    let mut d = Driver::new(Smtp {
        session,
        now: now(),
        directory: FakeDirectory,
    });
    let mut answer =
        |smtp: &mut Smtp<FakeDirectory>, action: Action, turn: &mut Turn<'_, Action>| {
            let s = &mut smtp.session;
            match action {
                Action::SaslCredentials { .. } => {
                    s.sasl_credentials(scram_verifier(), &binding(), turn.out)
                }
                Action::Authenticate {
                    username, secret, ..
                } => {
                    let ok = shown(&secret) == "<proof ok>";
                    s.auth_result(ok.then_some(username), turn.out)
                }
                _ => {}
            }
        };
    d.feed(b"EHLO c\r\n", chunk, &mut answer);
    d.feed(
        format!("AUTH {mechanism} {}\r\n", client.first()).as_bytes(),
        chunk,
        &mut answer,
    );
    let sent = String::from_utf8_lossy(&d.sent).to_string();
    let Some(server_first) = sent.lines().last().and_then(|l| l.strip_prefix("334 ")) else {
        return sent.lines().map(str::to_string).collect();
    };
    let (last, expected_v) = client.last(server_first);
    d.feed(format!("{last}\r\n").as_bytes(), chunk, &mut answer);
    let sent = String::from_utf8_lossy(&d.sent).to_string();
    if sent.lines().last() == Some(&format!("334 {expected_v}")) {
        d.feed(b"\r\n", chunk, &mut answer);
    }
    String::from_utf8_lossy(&d.sent)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn scram_logins_check_proof_and_channel_binding() {
    for chunk in [1, 2, 7, 100] {
        let ok = ScramClient::new("alice@example.org", "secret", "n,,", b"");
        let lines = scram_login("SCRAM-SHA-256", &ok, chunk);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("235 2.7.0 Authentication successful"),
            "{lines:?}"
        );

        let wrong = ScramClient::new("alice@example.org", "guess", "n,,", b"");
        let lines = scram_login("SCRAM-SHA-256", &wrong, chunk);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("535 5.7.8 Authentication credentials invalid"),
            "{lines:?}"
        );

        let bound = ScramClient::new("alice@example.org", "secret", "p=tls-exporter,,", &[7; 32]);
        let lines = scram_login("SCRAM-SHA-256-PLUS", &bound, chunk);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("235 2.7.0 Authentication successful"),
            "{lines:?}"
        );

        let end_point = ScramClient::new(
            "alice@example.org",
            "secret",
            "p=tls-server-end-point,,",
            &[9; 32],
        );
        let lines = scram_login("SCRAM-SHA-256-PLUS", &end_point, chunk);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("235 2.7.0 Authentication successful"),
            "{lines:?}"
        );

        // A man in the middle's channel: the right password, the wrong binding.
        let relayed = ScramClient::new("alice@example.org", "secret", "p=tls-exporter,,", &[8; 32]);
        let lines = scram_login("SCRAM-SHA-256-PLUS", &relayed, chunk);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("535 5.7.8 Authentication credentials invalid"),
            "{lines:?}"
        );

        // `y` (the client thinks we lack -PLUS) where we offered it: a downgrade.
        let downgraded = ScramClient::new("alice@example.org", "secret", "y,,", b"");
        let lines = scram_login("SCRAM-SHA-256", &downgraded, chunk);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("535 5.7.8 Authentication credentials invalid"),
            "{lines:?}"
        );
    }
}
