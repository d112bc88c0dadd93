//! The outbound SMTP client's transcripts, run in memory through `proto::testkit`, each
//! replayed with the server's bytes whole and in 1-, 2-, 7- and 100-byte pieces: what
//! the client sends and does must be identical.
//!
//! Transcript lines: `S: text` a server line (CRLF added); consecutive `S:` lines are
//! one block, fed after everything before it (a server answering what it was sent).
//! `C: text` a line the client must send, `A: …` an action it must take: `A: starttls`,
//! `A: ready`, `A: finished ok|perm STATUS|temp STATUS, …` (one entry per recipient),
//! `A: failed ERROR`, `A: closed`. On `ready` and `finished` the driver begins the next
//! envelope of the test, or QUITs when none is left; `starttls` is answered with a
//! successful handshake.

use shardmail::proto::smtp::client::{
    ClientAction, ClientConfig, ClientSession, Envelope, SessionError, TlsPolicy,
};
use shardmail::proto::smtp::notify::{MessageDsn, Notify, RcptDsn, Ret};
use shardmail::proto::testkit::{Driver, Turn};

const PIECES: [usize; 5] = [usize::MAX, 1, 2, 7, 100];

fn config(tls: TlsPolicy) -> ClientConfig {
    ClientConfig {
        hostname: "out.example.org".into(),
        tls,
        auth: None,
    }
}

fn envelope(rcpts: &[&str], message: &str) -> Envelope {
    Envelope {
        from: "alice@example.org".into(),
        rcpts: rcpts
            .iter()
            .map(|r| (r.to_string(), RcptDsn::default()))
            .collect(),
        message: bytes::Bytes::from(message.to_string()),
        dsn: MessageDsn::default(),
        require_tls: false,
    }
}

fn describe(action: &ClientAction) -> String {
    match action {
        ClientAction::StartTls => "starttls".into(),
        ClientAction::Ready => "ready".into(),
        ClientAction::Closed => "closed".into(),
        ClientAction::Failed(e) => format!("failed {}", error_name(e)),
        ClientAction::Finished(results) => {
            let each: Vec<String> = results
                .iter()
                .map(|r| match r {
                    Ok(_) => "ok".into(),
                    Err(f) if f.is_permanent() => format!("perm {}", f.status),
                    Err(f) => format!("temp {}", f.status),
                })
                .collect();
            format!("finished {}", each.join(", "))
        }
    }
}

fn error_name(e: &SessionError) -> String {
    match e {
        SessionError::Refused(f) => format!("refused {} {}", f.phase.as_str(), f.status),
        SessionError::Closing(f) => format!("closing {}", f.phase.as_str()),
        SessionError::TlsNotOffered => "tls-not-offered".into(),
        SessionError::AuthNotOffered => "auth-not-offered".into(),
        SessionError::DataAfterStartTls => "data-after-starttls".into(),
        SessionError::BadReply(r) => format!("bad-reply {r:?}"),
        SessionError::Closed(phase) => format!("closed-by-server {}", phase.as_str()),
    }
}

/// Runs `transcript` with the server's blocks cut in `chunk`-byte pieces; `eof` closes
/// the connection after the last block. Returns the client's lines and actions.
fn run(
    config: ClientConfig,
    envelopes: &[Envelope],
    transcript: &str,
    chunk: usize,
    eof: bool,
) -> Vec<String> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut in_block = false;
    for line in transcript.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(server) = line.strip_prefix("S: ") {
            if !in_block {
                blocks.push(Vec::new());
            }
            let block = blocks.last_mut().unwrap();
            block.extend_from_slice(server.as_bytes());
            block.extend_from_slice(b"\r\n");
            in_block = true;
        } else {
            in_block = false;
        }
    }
    let mut queue: Vec<Envelope> = envelopes.iter().rev().cloned().collect();
    let mut answer =
        |session: &mut ClientSession, action: ClientAction, turn: &mut Turn<'_, ClientAction>| {
            turn.log.push(format!("A: {}", describe(&action)));
            match action {
                ClientAction::StartTls => session.tls_established(turn.out),
                ClientAction::Ready | ClientAction::Finished(_) => match queue.pop() {
                    Some(e) => session.begin(e, turn.out).unwrap(),
                    None => session.quit(turn.out),
                },
                ClientAction::Failed(_) | ClientAction::Closed => {}
            }
        };
    let mut driver = Driver::new(ClientSession::new(config));
    for block in &blocks {
        driver.feed(block, chunk, &mut answer);
    }
    if eof {
        driver.machine.eof(&mut driver.out);
        driver.feed(b"", chunk, &mut answer);
    }
    driver.log
}

/// Checks the client's side of `transcript` in every piece size.
fn check(config: ClientConfig, envelopes: &[Envelope], transcript: &str) {
    check_with(config, envelopes, transcript, false, &PIECES);
}

fn check_with(
    config: ClientConfig,
    envelopes: &[Envelope],
    transcript: &str,
    eof: bool,
    pieces: &[usize],
) {
    let expected: Vec<String> = transcript
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("C: ") || l.starts_with("A: "))
        .map(String::from)
        .collect();
    for &chunk in pieces {
        let got = run(config.clone(), envelopes, transcript, chunk, eof);
        assert_eq!(got, expected, "pieces of {chunk} bytes");
    }
}

const EHLO_FULL: &str = "
    S: 250-mx.example.net Hello
    S: 250-PIPELINING
    S: 250-SIZE 1000000
    S: 250-8BITMIME
    S: 250 SMTPUTF8";

#[test]
fn pipelined_envelope_goes_out_in_one_write_and_data_follows() {
    let t = format!(
        "S: 220 mx.example.net ESMTP
         C: EHLO out.example.org
         {EHLO_FULL}
         A: ready
         C: MAIL FROM:<alice@example.org> SIZE=8
         C: RCPT TO:<bob@example.net>
         C: RCPT TO:<nobody@example.net>
         C: DATA
         S: 250 2.1.0 ok
         S: 250 2.1.5 ok
         S: 550 5.1.1 no such user
         S: 354 go ahead
         C: Hi.
         C: ..
         C: .
         S: 250 2.0.0 queued as X
         A: finished ok, perm 5.1.1
         C: QUIT
         S: 221 bye
         A: closed"
    );
    check(
        config(TlsPolicy::Opportunistic),
        &[envelope(
            &["bob@example.net", "nobody@example.net"],
            "Hi.\r\n.\r\n",
        )],
        &t,
    );
    // The envelope really is one write: MAIL, both RCPTs and DATA before any reply.
    let mut d = Driver::new(ClientSession::new(config(TlsPolicy::Opportunistic)));
    let mut ready = |s: &mut ClientSession, a: ClientAction, turn: &mut Turn<'_, ClientAction>| {
        if a == ClientAction::Ready {
            s.begin(envelope(&["b@x.net", "c@x.net"], "x\r\n"), turn.out)
                .unwrap();
        }
    };
    let server: String = std::iter::once("220 hi")
        .chain(
            EHLO_FULL
                .lines()
                .filter_map(|l| l.trim().strip_prefix("S: ")),
        )
        .map(|l| format!("{l}\r\n"))
        .collect();
    d.feed(server.as_bytes(), usize::MAX, &mut ready);
    let sent = String::from_utf8(d.sent).unwrap();
    assert!(
        sent.ends_with("MAIL FROM:<alice@example.org> SIZE=3\r\nRCPT TO:<b@x.net>\r\nRCPT TO:<c@x.net>\r\nDATA\r\n"),
        "{sent:?}"
    );
}

#[test]
fn without_pipelining_commands_wait_for_their_replies() {
    check(
        config(TlsPolicy::Opportunistic),
        &[envelope(&["a@x.net", "b@x.net"], "body\r\n")],
        "S: 220 old.example.net
         C: EHLO out.example.org
         S: 250 old.example.net
         A: ready
         C: MAIL FROM:<alice@example.org>
         S: 250 ok
         C: RCPT TO:<a@x.net>
         S: 451 4.3.0 try later
         C: RCPT TO:<b@x.net>
         S: 250 ok
         C: DATA
         S: 354 go
         C: body
         C: .
         S: 250 done
         A: finished temp 4.3.0, ok
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn mail_refused_refuses_everyone_and_resets() {
    check(
        config(TlsPolicy::Opportunistic),
        &[envelope(&["a@x.net", "b@x.net"], "body\r\n")],
        "S: 220 old.example.net
         C: EHLO out.example.org
         S: 250 old.example.net
         A: ready
         C: MAIL FROM:<alice@example.org>
         S: 553 5.7.1 sender rejected
         C: RSET
         S: 250 ok
         A: finished perm 5.7.1, perm 5.7.1
         C: QUIT
         S: 221 bye
         A: closed",
    );
    // Pipelined: DATA was already sent, and its 354 must be ended with a lone dot.
    check(
        config(TlsPolicy::Opportunistic),
        &[envelope(&["a@x.net"], "body\r\n")],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 PIPELINING
         A: ready
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<a@x.net>
         C: DATA
         S: 550 no
         S: 503 need MAIL
         S: 354 odd server
         C: .
         S: 554 no valid recipients
         C: RSET
         S: 250 ok
         A: finished perm 5.0.0
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn every_recipient_refused_ends_the_open_data_and_resets() {
    check(
        config(TlsPolicy::Opportunistic),
        &[envelope(&["a@x.net", "b@x.net"], "body\r\n")],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 PIPELINING
         A: ready
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<a@x.net>
         C: RCPT TO:<b@x.net>
         C: DATA
         S: 250 ok
         S: 550 5.1.1 no
         S: 452 4.2.2 full
         S: 554 5.5.1 no valid recipients
         C: RSET
         S: 250 ok
         A: finished perm 5.1.1, temp 4.2.2
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn data_refused_or_failed_content_applies_to_the_accepted_recipients() {
    check(
        config(TlsPolicy::Opportunistic),
        &[
            envelope(&["a@x.net", "b@x.net"], "one\r\n"),
            envelope(&["c@x.net"], "two\r\n"),
        ],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 PIPELINING
         A: ready
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<a@x.net>
         C: RCPT TO:<b@x.net>
         C: DATA
         S: 250 ok
         S: 250 ok
         S: 550 5.1.1 no
         S: 451 4.3.0 DATA not now
         C: RSET
         S: 250 ok
         A: finished temp 4.3.0, perm 5.1.1
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<c@x.net>
         C: DATA
         S: 250 ok
         S: 250 ok
         S: 354 go
         C: two
         C: .
         S: 554 5.7.1 spam
         A: finished perm 5.7.1
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn bdat_sends_the_message_unstuffed_in_one_chunk() {
    check(
        config(TlsPolicy::Opportunistic),
        &[envelope(&["a@x.net"], ".dot\r\n")],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250-PIPELINING
         S: 250 CHUNKING
         A: ready
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<a@x.net>
         S: 250 ok
         S: 250 ok
         C: BDAT 6 LAST
         C: .dot
         S: 250 2.0.0 ok
         A: finished ok
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn a_421_anywhere_ends_the_session_with_a_typed_error() {
    for (at, phase) in [("greeting", "greeting"), ("ehlo", "EHLO"), ("rcpt", "RCPT")] {
        let t = match at {
            "greeting" => "S: 421 4.3.2 too busy".to_string(),
            "ehlo" => "S: 220 mx\nC: EHLO out.example.org\nS: 421 4.3.2 shutting down".into(),
            _ => "S: 220 mx
                  C: EHLO out.example.org
                  S: 250-mx
                  S: 250 PIPELINING
                  A: ready
                  C: MAIL FROM:<alice@example.org>
                  C: RCPT TO:<a@x.net>
                  C: DATA
                  S: 250 ok
                  S: 421 4.4.2 idle too long"
                .into(),
        };
        let t = format!("{t}\nA: failed closing {phase}");
        check(
            config(TlsPolicy::Opportunistic),
            &[envelope(&["a@x.net"], "x\r\n")],
            &t,
        );
    }
}

#[test]
fn starttls_refused_fails_only_when_tls_is_required() {
    let t = "S: 220 mx
             C: EHLO out.example.org
             S: 250-mx
             S: 250 STARTTLS
             C: STARTTLS
             S: 454 4.7.0 TLS not available";
    check(
        config(TlsPolicy::Opportunistic),
        &[],
        &format!("{t}\nA: ready\nC: QUIT\nS: 221 bye\nA: closed"),
    );
    check(
        config(TlsPolicy::Required),
        &[],
        &format!("{t}\nA: failed refused STARTTLS 4.7.0"),
    );
    check(
        config(TlsPolicy::Required),
        &[],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250 mx
         A: failed tls-not-offered",
    );
    // Never: STARTTLS is not even tried (the plaintext retry after a failed handshake).
    check(
        config(TlsPolicy::Never),
        &[],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 STARTTLS
         A: ready
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn after_tls_the_capabilities_come_from_the_second_ehlo() {
    check(
        config(TlsPolicy::Required),
        &[envelope(&["a@x.net"], "x\r\n")],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250-PIPELINING
         S: 250 STARTTLS
         C: STARTTLS
         S: 220 go ahead
         A: starttls
         C: EHLO out.example.org
         S: 250-mx
         S: 250 SIZE 2
         A: ready
         A: finished perm 5.3.4
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn plaintext_after_the_starttls_reply_is_refused() {
    // Bytes in the same read as the 220 would be taken as TLS-protected (RFC 3207 §5).
    // Whole only: in pieces the injected line arrives after the handshake, where real
    // TLS would reject it as a bad record.
    check_with(
        config(TlsPolicy::Opportunistic),
        &[],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 STARTTLS
         C: STARTTLS
         S: 220 go ahead
         S: 250 injected
         A: failed data-after-starttls",
        false,
        &[usize::MAX],
    );
}

#[test]
fn size_and_smtputf8_mismatches_finish_without_sending() {
    check(
        config(TlsPolicy::Opportunistic),
        &[
            envelope(&["a@x.net"], "0123456789\r\n"),
            envelope(&["jürgen@x.net"], "x\r\n"),
        ],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 SIZE 10
         A: ready
         A: finished perm 5.3.4
         A: finished perm 5.6.7
         C: QUIT
         S: 221 bye
         A: closed",
    );
}

#[test]
fn helo_fallback_and_greeting_refused() {
    check(
        config(TlsPolicy::Opportunistic),
        &[],
        "S: 220 ancient
         C: EHLO out.example.org
         S: 502 5.5.2 what
         C: HELO out.example.org
         S: 250 ancient
         A: ready
         C: QUIT
         S: 221 bye
         A: closed",
    );
    check(
        config(TlsPolicy::Opportunistic),
        &[],
        "S: 554 5.7.1 go away
         A: failed refused greeting 5.7.1",
    );
}

#[test]
fn relay_auth_plain_and_its_refusals() {
    let mut with_auth = config(TlsPolicy::Opportunistic);
    with_auth.auth = Some(("relayuser".into(), "pw".into()));
    check(
        with_auth.clone(),
        &[],
        "S: 220 relay
         C: EHLO out.example.org
         S: 250-relay
         S: 250 AUTH LOGIN PLAIN
         C: AUTH PLAIN AHJlbGF5dXNlcgBwdw==
         S: 235 2.7.0 ok
         A: ready
         C: QUIT
         S: 221 bye
         A: closed",
    );
    check(
        with_auth.clone(),
        &[],
        "S: 220 relay
         C: EHLO out.example.org
         S: 250-relay
         S: 250 AUTH PLAIN
         C: AUTH PLAIN AHJlbGF5dXNlcgBwdw==
         S: 535 5.7.8 bad credentials
         A: failed refused AUTH 5.7.8",
    );
    check(
        with_auth,
        &[],
        "S: 220 relay
         C: EHLO out.example.org
         S: 250 relay
         A: failed auth-not-offered",
    );
}

#[test]
fn garbage_overlong_and_early_close_are_typed_errors() {
    check(
        config(TlsPolicy::Opportunistic),
        &[],
        "S: HTTP/1.1 400 Bad Request
         A: failed bad-reply Malformed",
    );
    let long = format!("S: 220 {}", "x".repeat(5000));
    check(
        config(TlsPolicy::Opportunistic),
        &[],
        &format!("{long}\nA: failed bad-reply TooLong"),
    );
    check_with(
        config(TlsPolicy::Opportunistic),
        &[envelope(&["a@x.net"], "x\r\n")],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 PIPELINING
         A: ready
         C: MAIL FROM:<alice@example.org>
         C: RCPT TO:<a@x.net>
         C: DATA
         S: 250 ok
         A: failed closed-by-server RCPT",
        true,
        &PIECES,
    );
}

#[test]
fn a_multiline_reply_split_anywhere_is_one_reply() {
    // 100 lines is the most a reply may have; the EHLO reply's keywords all count.
    let mut t = String::from("S: 220 mx\nC: EHLO out.example.org\nS: 250-mx\n");
    for i in 0..97 {
        t.push_str(&format!("S: 250-X-KEYWORD-{i}\n"));
    }
    t.push_str("S: 250-CHUNKING\nS: 250 PIPELINING\nA: ready\nC: QUIT\nS: 221 bye\nA: closed");
    check(config(TlsPolicy::Opportunistic), &[], &t);
    let mut d = Driver::new(ClientSession::new(config(TlsPolicy::Opportunistic)));
    let raw: String = t
        .lines()
        .filter_map(|l| l.strip_prefix("S: "))
        .take(101)
        .map(|l| format!("{l}\r\n"))
        .collect();
    d.feed(raw.as_bytes(), 3, &mut |_, _, _| {});
    let caps = d.machine.capabilities();
    assert!(caps.chunking && caps.pipelining, "{caps:?}");
}

#[test]
fn begin_is_refused_unless_idle() {
    let mut session = ClientSession::new(config(TlsPolicy::Opportunistic));
    let mut out = shardmail::proto::Outbox::default();
    assert!(session
        .begin(envelope(&["a@x.net"], "x\r\n"), &mut out)
        .is_err());
    assert!(out.reply.is_empty() && out.actions.is_empty());
}

#[test]
fn dsn_requests_go_along_only_to_a_server_that_offers_dsn() {
    let mut e = envelope(&["a@x.net", "b@x.net"], "x\r\n");
    e.dsn = MessageDsn {
        ret: Some(Ret::Hdrs),
        envid: Some("id 1".into()),
    };
    e.rcpts[0].1 = RcptDsn {
        notify: Some(Notify::parse("SUCCESS,FAILURE").unwrap()),
        orcpt: Some(("rfc822".into(), "a+x@x.net".into())),
    };
    let tail = "A: ready
         C: MAIL FROM:<alice@example.org>{MAIL}
         C: RCPT TO:<a@x.net>{RCPT}
         C: RCPT TO:<b@x.net>
         C: DATA
         S: 250 ok
         S: 250 ok
         S: 250 ok
         S: 354 go
         C: x
         C: .
         S: 250 ok
         A: finished ok, ok
         C: QUIT
         S: 221 bye
         A: closed";
    let with = format!(
        "S: 220 mx\nC: EHLO out.example.org\nS: 250-mx\nS: 250-PIPELINING\nS: 250 DSN\n{}",
        tail.replace("{MAIL}", " RET=HDRS ENVID=id+201")
            .replace("{RCPT}", " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bx@x.net")
    );
    check(config(TlsPolicy::Opportunistic), &[e.clone()], &with);
    let without = format!(
        "S: 220 mx\nC: EHLO out.example.org\nS: 250-mx\nS: 250 PIPELINING\n{}",
        tail.replace("{MAIL}", "").replace("{RCPT}", "")
    );
    check(config(TlsPolicy::Opportunistic), &[e], &without);
}

#[test]
fn requiretls_goes_only_over_tls_to_a_server_that_offers_it() {
    let mut e = envelope(&["a@x.net"], "x\r\n");
    e.require_tls = true;
    check(
        config(TlsPolicy::Required),
        &[e.clone(), e.clone()],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 STARTTLS
         C: STARTTLS
         S: 220 go ahead
         A: starttls
         C: EHLO out.example.org
         S: 250-mx
         S: 250 REQUIRETLS
         A: ready
         C: MAIL FROM:<alice@example.org> REQUIRETLS
         S: 250 ok
         C: RCPT TO:<a@x.net>
         S: 250 ok
         C: DATA
         S: 354 go
         C: x
         C: .
         S: 250 ok
         A: finished ok
         C: MAIL FROM:<alice@example.org> REQUIRETLS
         S: 250 ok
         C: RCPT TO:<a@x.net>
         S: 250 ok
         C: DATA
         S: 354 go
         C: x
         C: .
         S: 250 ok
         A: finished ok
         C: QUIT
         S: 221 bye
         A: closed",
    );
    // TLS but no REQUIRETLS at the next hop, or no TLS at all: 5.7.10, nothing sent.
    check(
        config(TlsPolicy::Required),
        &[e.clone()],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 STARTTLS
         C: STARTTLS
         S: 220 go ahead
         A: starttls
         C: EHLO out.example.org
         S: 250 mx
         A: ready
         A: finished perm 5.7.10
         C: QUIT
         S: 221 bye
         A: closed",
    );
    check(
        config(TlsPolicy::Never),
        &[e],
        "S: 220 mx
         C: EHLO out.example.org
         S: 250-mx
         S: 250 REQUIRETLS
         A: ready
         A: finished perm 5.7.10
         C: QUIT
         S: 221 bye
         A: closed",
    );
}
