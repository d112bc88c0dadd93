//! Fuzz target: a milter conversation fed any reply bytes must never panic, and the
//! changes it collects must apply to the message without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardmail::proto::milter::{edit, Conversation, Decoder, Flow, Transaction};

fuzz_target!(|replies: &[u8]| {
    let message = Bytes::from_static(b"Subject: s\r\nX: y\r\n\r\nbody\r\n");
    let tx = Transaction { recipients: vec!["r@example.org".into()], ..Transaction::default() };
    let mut conversation = Conversation::new(tx, message.clone(), 1 << 16);
    let mut decoder = Decoder::default();
    decoder.feed(replies);
    loop {
        while let Some(out) = conversation.next_packet() {
            if out.await_reply {
                break;
            }
        }
        match decoder.next_reply() {
            Ok(Some(reply)) => match conversation.reply(reply) {
                Ok(Flow::Done) => break,
                Ok(_) => {}
                Err(_) => return,
            },
            _ => return,
        }
    }
    if let Some(outcome) = conversation.outcome() {
        let _ = edit::apply(&message, &outcome.edits);
    }
});
