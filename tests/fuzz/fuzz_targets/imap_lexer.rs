//! Fuzz target: the IMAP framer and tokenizer never panic, never claim more bytes than
//! they were given, and frame the same command whole or in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmail::proto::imap::lexer::{tokenize, Frame, FrameLimits, Framer};

const LIMITS: FrameLimits = FrameLimits { command_bytes_max: 512, literal_bytes_max: 256, upload_bytes_max: 0, non_sync_bytes_max: u64::MAX };

fn first_frame(parts: &[&[u8]]) -> Option<Frame> {
    let mut framer = Framer::new();
    let mut buf = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match framer.frame(&buf, &LIMITS) {
                Frame::Continue => continue,
                Frame::NeedMore => break,
                done => {
                    if let Frame::Complete { len } = &done {
                        assert!(*len <= buf.len());
                        let _ = tokenize(&buf[..*len], 16);
                    }
                    return Some(done);
                }
            }
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let at = usize::from(split).min(input.len());
    let _ = tokenize(input, 8);
    let whole = first_frame(&[input]);
    let pieces = first_frame(&[&input[..at], &input[at..]]);
    // A split can only change whether a complete command has been seen yet, not what
    // it is: compare when both saw one.
    if let (Some(Frame::Complete { len: a }), Some(Frame::Complete { len: b })) = (&whole, &pieces) {
        assert_eq!(a, b);
    }
});
