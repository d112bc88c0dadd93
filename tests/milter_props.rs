//! Property tests of the milter client's sans-IO half (the CI-run half of fuzzing;
//! `tests/fuzz` has the `milter_replies` target):
//!
//! - A conversation fed any reply bytes, in any split, never panics, ends or asks
//!   for more, and reaches the same result however the bytes were split.
//! - Applying any changes to any message never panics and always yields a header
//!   of well-formed fields (every line a field or a fold, CRLF-terminated).

use bytes::Bytes;
use proptest::prelude::*;
use shardmail::proto::milter::{edit, Conversation, Decoder, Edit, Flow, Transaction};

fn framed(code: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(code);
    out.extend_from_slice(payload);
    out
}

/// Plausible milter replies and raw noise.
fn reply_bytes() -> impl Strategy<Value = Vec<u8>> {
    let negotiate = framed(b'O', &[0, 0, 0, 6, 0, 0, 0, 0x3f, 0, 0, 0, 0]);
    let piece = prop_oneof![
        Just(negotiate),
        Just(framed(b'c', b"")),
        Just(framed(b'a', b"")),
        Just(framed(b'p', b"")),
        Just(framed(b's', b"")),
        Just(framed(b'h', b"X-A\0v\0")),
        Just(framed(b'm', b"\0\0\0\x01Subject\0\0")),
        Just(framed(b'b', b"new body")),
        Just(framed(b'q', b"why\0")),
        Just(framed(b'y', b"554 5.7.1 no\0")),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(c, p)| framed(c, &p)),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn transaction() -> Transaction {
    Transaction {
        hostname: "mx.example.org".into(),
        client_name: "unknown".into(),
        helo: "c.example".into(),
        queue_id: "ID".into(),
        mail_from: "a@b.example".into(),
        recipients: vec!["r@example.org".into()],
        ..Transaction::default()
    }
}

/// Runs a conversation with `replies` arriving in pieces of `split`; the result as
/// text (outcome, error, or "needs more").
fn run(replies: &[u8], split: usize) -> String {
    let message = Bytes::from_static(b"Subject: s\r\nX: y\r\n\r\nbody\r\n");
    let mut conversation = Conversation::new(transaction(), message, 4096);
    let mut decoder = Decoder::default();
    let mut pieces = replies.chunks(split.max(1));
    loop {
        let mut awaiting = false;
        while let Some(out) = conversation.next_packet() {
            if out.await_reply {
                awaiting = true;
                break;
            }
        }
        if !awaiting {
            return "ended without a verdict".into();
        }
        loop {
            match decoder.next_reply() {
                Err(e) => return format!("wire error {e}"),
                Ok(None) => match pieces.next() {
                    Some(p) => decoder.feed(p),
                    None => return "needs more".into(),
                },
                Ok(Some(reply)) => match conversation.reply(reply) {
                    Err(e) => return format!("error {e}"),
                    Ok(Flow::Next) => break,
                    Ok(Flow::Wait) => {}
                    Ok(Flow::Done) => return format!("{:?}", conversation.outcome()),
                },
            }
        }
    }
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let text = "[ -~\r\n\t]{0,12}";
    let edit = prop_oneof![
        (text, text).prop_map(|(name, value)| Edit::Add { name, value }),
        (0u32..6, text, text).prop_map(|(index, name, value)| Edit::Insert { index, name, value }),
        (0u32..4, text, text).prop_map(|(index, name, value)| Edit::Change { index, name, value }),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Edit::Body),
    ];
    proptest::collection::vec(edit, 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn conversations_never_panic_and_ignore_fragmentation(replies in reply_bytes(), split in 1usize..9) {
        let whole = run(&replies, replies.len().max(1));
        prop_assert_eq!(run(&replies, split), whole);
    }

    #[test]
    fn edits_always_leave_a_well_formed_header(
        lines in proptest::collection::vec("[ -~\t:]{0,20}", 0..6),
        edits in edits(),
    ) {
        // Any message made of CRLF lines (what SMTP delivers): the changes must not
        // make its header worse.
        let message: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let (out, _) = edit::apply(message.as_bytes(), &edits);
        let blank = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2);
        let header_end = if out.starts_with(b"\r\n") { 0 } else { blank.expect("an empty line ends the header") };
        let header = &out[..header_end];
        for line in header.split_inclusive(|&b| b == b'\n') {
            prop_assert!(line.ends_with(b"\r\n"), "line without CRLF: {:?}", String::from_utf8_lossy(line));
            let body = &line[..line.len() - 2];
            prop_assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
        }
    }
}
