#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use crate::proto::milter::Decoder;

const MESSAGE: &[u8] = b"Received: from x by y\r\nSubject: hi\r\n\r\nhello\r\n";

fn tx() -> Transaction {
    Transaction {
        hostname: "mx.example.org".into(),
        client_name: "unknown".into(),
        client_ip: Some("192.0.2.1".parse().unwrap()),
        client_port: 4000,
        helo: "client.example".into(),
        queue_id: "ID1".into(),
        mail_from: "a@example.com".into(),
        recipients: vec!["b@example.org".into(), "c@example.org".into()],
        ..Transaction::default()
    }
}

/// A decoded command: its code and payload.
fn commands(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((bytes[at + 4], bytes[at + 5..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

fn negotiated(actions: u32, protocol: u32) -> Reply {
    Reply::Negotiate {
        version: 6,
        actions,
        protocol,
    }
}

/// Plays a conversation: `answer` gives the replies to each command that awaits
/// one. Returns the command codes sent (macros left out) and the outcome.
fn play(
    message: &[u8],
    mut answer: impl FnMut(u8, &[u8]) -> Vec<Reply>,
) -> (Vec<u8>, Result<Outcome, ConversationError>) {
    let mut c = Conversation::new(tx(), Bytes::copy_from_slice(message), 1 << 20);
    let mut sent = Vec::new();
    while let Some(out) = c.next_packet() {
        let cmds = commands(&out.bytes);
        let (code, payload) = cmds.last().cloned().unwrap();
        sent.extend(cmds.iter().map(|(c, _)| *c).filter(|&c| c != b'D'));
        if !out.await_reply {
            continue;
        }
        for reply in answer(code, &payload) {
            match c.reply(reply) {
                Ok(Flow::Next) => break,
                Ok(Flow::Wait) => {}
                Ok(Flow::Done) => return (sent, Ok(c.outcome().unwrap())),
                Err(e) => return (sent, Err(e)),
            }
        }
    }
    (sent, Err(ConversationError::TooLarge)) // never reached by these tests
}

#[test]
fn a_full_conversation_in_postfix_order() {
    let mut headers = Vec::new();
    let (sent, outcome) = play(MESSAGE, |code, payload| match code {
        b'O' => vec![negotiated(action::OFFERED, 0)],
        b'L' => {
            headers.push(payload.to_vec());
            vec![Reply::Continue]
        }
        b'E' => vec![
            Reply::Edit(Edit::Add {
                name: "X-Scanned".into(),
                value: "yes".into(),
            }),
            Reply::Quarantine("suspicious".into()),
            Reply::Continue,
        ],
        _ => vec![Reply::Continue],
    });
    assert_eq!(sent, b"OCHMRRTLLNBE".to_vec());
    assert_eq!(headers[0], b"Received\0from x by y\0");
    assert_eq!(headers[1], b"Subject\0hi\0");
    let outcome = outcome.unwrap();
    assert_eq!(outcome.verdict, Verdict::Accept);
    assert_eq!(outcome.edits.len(), 1);
    assert_eq!(outcome.quarantine.as_deref(), Some("suspicious"));
}

#[test]
fn skipped_and_unanswered_stages() {
    let protocol = protocol::NO_CONNECT
        | protocol::NO_HELO
        | protocol::NO_REPLY_RCPT
        | protocol::NO_REPLY_HEADER
        | protocol::NO_BODY;
    let mut answered = Vec::new();
    let (sent, outcome) = play(MESSAGE, |code, _| {
        answered.push(code);
        match code {
            b'O' => vec![negotiated(action::ADD_HEADERS, protocol)],
            _ => vec![Reply::Continue],
        }
    });
    assert_eq!(sent, b"OMRRTLLNE".to_vec());
    assert_eq!(
        answered,
        b"OMTNE".to_vec(),
        "no replies awaited for RCPT and headers"
    );
    assert_eq!(outcome.unwrap().verdict, Verdict::Accept);
}

#[test]
fn early_verdicts_end_the_conversation() {
    for (at, reply, expected) in [
        (b'R', Reply::Reject, Verdict::Reject(REJECT.into())),
        (b'M', Reply::Tempfail, Verdict::Tempfail(TEMPFAIL.into())),
        (b'C', Reply::Discard, Verdict::Discard),
        (
            b'B',
            Reply::ReplyCode("554 5.7.1 Gtube pattern".into()),
            Verdict::Reject("554 5.7.1 Gtube pattern".into()),
        ),
        (
            b'E',
            Reply::ReplyCode("421-4.7.0 busy\r\n421 4.7.0 later".into()),
            Verdict::Tempfail("421 4.7.0 busy".into()),
        ),
        (
            b'H',
            Reply::ReplyCode("250 ok".into()),
            Verdict::Reject(REJECT.into()),
        ),
        (b'L', Reply::Accept, Verdict::Accept),
    ] {
        let (sent, outcome) = play(MESSAGE, |code, _| match code {
            b'O' => vec![negotiated(action::OFFERED, 0)],
            c if c == at => vec![reply.clone()],
            _ => vec![Reply::Continue],
        });
        assert_eq!(sent.last(), Some(&at));
        let outcome = outcome.unwrap();
        assert_eq!(outcome.verdict, expected);
        assert!(outcome.edits.is_empty());
    }
}

#[test]
fn large_bodies_go_in_chunks_and_skip_ends_them() {
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    message.extend(std::iter::repeat_n(b'x', CHUNK * 3 + 10));
    let mut chunks = Vec::new();
    let (sent, _) = play(&message, |code, payload| match code {
        b'O' => vec![negotiated(0, protocol::SKIP)],
        b'B' => {
            chunks.push(payload.len());
            vec![if chunks.len() == 2 {
                Reply::Skip
            } else {
                Reply::Continue
            }]
        }
        _ => vec![Reply::Continue],
    });
    assert_eq!(chunks, vec![CHUNK, CHUNK]);
    assert_eq!(sent.last(), Some(&b'E'));
    let (_, _) = play(&message, |code, payload| {
        if code == b'B' {
            chunks.push(payload.len());
        }
        match code {
            b'O' => vec![negotiated(0, 0)],
            _ => vec![Reply::Continue],
        }
    });
    assert_eq!(&chunks[2..], &[CHUNK, CHUNK, CHUNK, 10]);
}

#[test]
fn changes_not_negotiated_are_ignored_and_unexpected_replies_are_errors() {
    let (_, outcome) = play(MESSAGE, |code, _| match code {
        b'O' => vec![negotiated(action::ADD_HEADERS, 0)],
        b'E' => vec![
            Reply::Edit(Edit::Body(b"replaced".to_vec())),
            Reply::Unsupported(b'+'),
            Reply::Continue,
        ],
        _ => vec![Reply::Continue],
    });
    let outcome = outcome.unwrap();
    assert!(outcome.edits.is_empty());
    assert_eq!(outcome.ignored, 2);

    let (_, outcome) = play(MESSAGE, |code, _| match code {
        b'O' => vec![negotiated(0, 0)],
        _ => vec![Reply::Edit(Edit::Body(Vec::new()))],
    });
    assert!(matches!(
        outcome,
        Err(ConversationError::Unexpected {
            stage: "connect",
            ..
        })
    ));
    let (_, outcome) = play(MESSAGE, |_, _| vec![negotiated(0, 0x0800_0000)]);
    assert_eq!(outcome, Err(ConversationError::Protocol(0x0800_0000)));
    let (_, outcome) = play(MESSAGE, |_, _| {
        vec![Reply::Negotiate {
            version: 1,
            actions: 0,
            protocol: 0,
        }]
    });
    assert_eq!(outcome, Err(ConversationError::Version(1)));
}

#[test]
fn a_milter_cannot_grow_the_message_without_bound() {
    let mut c = Conversation::new(tx(), Bytes::from_static(MESSAGE), 100);
    while let Some(out) = c.next_packet() {
        if !out.await_reply {
            continue;
        }
        match commands(&out.bytes).last().unwrap().0 {
            b'O' => assert_eq!(c.reply(negotiated(action::OFFERED, 0)), Ok(Flow::Next)),
            b'E' => {
                let chunk = || Reply::Edit(Edit::Body(vec![b'x'; 60]));
                assert_eq!(c.reply(chunk()), Ok(Flow::Wait));
                assert_eq!(c.reply(chunk()), Err(ConversationError::TooLarge));
                return;
            }
            _ => assert_eq!(c.reply(Reply::Continue), Ok(Flow::Next)),
        }
    }
    panic!("the conversation ended without reaching the end of the message");
}

#[test]
fn wire_bytes_round_trip_through_the_decoder() {
    // The milter's side of the stream, in one buffer, decoded as the client does.
    let mut stream = Vec::new();
    wire::packet(
        &mut stream,
        b'O',
        &[
            &6u32.to_be_bytes(),
            &1u32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ],
    );
    wire::packet(&mut stream, b'p', &[]);
    wire::packet(&mut stream, b'c', &[]);
    let mut decoder = Decoder::default();
    decoder.feed(&stream);
    assert_eq!(decoder.next_reply().unwrap(), Some(negotiated(1, 0)));
    assert_eq!(decoder.next_reply().unwrap(), Some(Reply::Progress));
    assert_eq!(decoder.next_reply().unwrap(), Some(Reply::Continue));
    assert_eq!(decoder.next_reply().unwrap(), None);
    assert_eq!(commands(&quit()), vec![(b'Q', Vec::new())]);
}
