//! Property tests of the IMAP framer and tokenizer (groundwork for issue 3):
//! - a stream of commands framed whole or in fragments yields the same commands;
//! - fed byte by byte, every synchronizing literal gets exactly one continuation
//!   request and a LITERAL+ literal none;
//! - the tokenizer never panics on any bytes, and accepts every generated command.

use proptest::prelude::*;
use shardmail::proto::imap::lexer::{tokenize, Frame, FrameLimits, Framer, Token};

const LIMITS: FrameLimits = FrameLimits {
    command_bytes_max: 4096,
    literal_bytes_max: 1 << 20,
    upload_bytes_max: 0,
    non_sync_bytes_max: u64::MAX,
};

#[derive(Debug, Clone)]
enum Arg {
    Atom(String),
    Quoted(String),
    Literal(Vec<u8>, bool),
    List(Vec<String>),
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        "[A-Za-z0-9.:*\\\\$]{1,12}".prop_map(Arg::Atom),
        "[ -!#-\\[\\]-~]{0,12}".prop_map(Arg::Quoted),
        (proptest::collection::vec(any::<u8>(), 0..40), any::<bool>())
            .prop_map(|(b, p)| Arg::Literal(b, p)),
        proptest::collection::vec("[A-Z]{1,6}", 0..4).prop_map(Arg::List),
    ]
}

fn command() -> impl Strategy<Value = (Vec<u8>, usize, usize)> {
    (
        "[a-z][a-z0-9]{0,5}",
        "[A-Z]{2,8}",
        proptest::collection::vec(arg(), 0..5),
    )
        .prop_map(|(tag, name, args)| {
            let mut out = format!("{tag} {name}").into_bytes();
            let (mut sync, mut plus) = (0, 0);
            for a in args {
                out.push(b' ');
                match a {
                    Arg::Atom(s) => out.extend_from_slice(s.as_bytes()),
                    Arg::Quoted(s) => out.extend_from_slice(format!("\"{s}\"").as_bytes()),
                    Arg::Literal(bytes, non_sync) => {
                        let marker = if non_sync { "+" } else { "" };
                        out.extend_from_slice(
                            format!("{{{}{marker}}}\r\n", bytes.len()).as_bytes(),
                        );
                        out.extend_from_slice(&bytes);
                        if non_sync {
                            plus += 1
                        } else {
                            sync += 1
                        }
                    }
                    Arg::List(items) => {
                        out.extend_from_slice(format!("({})", items.join(" ")).as_bytes())
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
            (out, sync, plus)
        })
}

/// Frames `stream` fed in `chunk`-byte pieces: the commands, and continuations sent.
fn frame_all(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, usize) {
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    let (mut commands, mut continues) = (Vec::new(), 0);
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match framer.frame(&buf, &LIMITS) {
                Frame::Complete { len } => commands.push(buf.drain(..len).collect()),
                Frame::Continue => continues += 1,
                Frame::NeedMore => break,
                Frame::Refused { .. } => panic!("generated commands stay within limits"),
                Frame::Upload { .. } => panic!("uploads are off in these limits"),
            }
        }
    }
    assert!(
        buf.is_empty(),
        "leftover {:?}",
        String::from_utf8_lossy(&buf)
    );
    (commands, continues)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn framing_is_split_invariant(cmds in proptest::collection::vec(command(), 1..6), chunk in 1usize..30) {
        let stream: Vec<u8> = cmds.iter().flat_map(|(c, _, _)| c.clone()).collect();
        let (whole, _) = frame_all(&stream, usize::MAX);
        let (split, _) = frame_all(&stream, chunk);
        let expected: Vec<Vec<u8>> = cmds.iter().map(|(c, _, _)| c.clone()).collect();
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(&split, &expected);
        for c in &whole {
            prop_assert!(tokenize(c, 16).is_ok(), "{:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn one_continuation_per_synchronizing_literal(cmd in command()) {
        let (bytes, sync, _plus) = cmd;
        let (_, continues) = frame_all(&bytes, 1);
        prop_assert_eq!(continues, sync);
    }

    #[test]
    fn tokenizer_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = tokenize(&bytes, 8);
        let mut framer = Framer::new();
        let _ = framer.frame(&bytes, &FrameLimits { command_bytes_max: 64, literal_bytes_max: 16, upload_bytes_max: 0, non_sync_bytes_max: u64::MAX });
    }

    #[test]
    fn literals_come_back_byte_exact(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut cmd = format!("t APPEND INBOX {{{}}}\r\n", data.len()).into_bytes();
        cmd.extend_from_slice(&data);
        cmd.extend_from_slice(b"\r\n");
        let parsed = tokenize(&cmd, 4).expect("valid");
        prop_assert_eq!(parsed.args.get(1), Some(&Token::Literal(&data)));
    }
}
