//! Property tests for the text-handling code issue 13 added, over arbitrary input:
//! the RFC 5322 address parser, modified UTF-7, the base subject, and
//! THREAD=REFERENCES never panic; modified UTF-7 round-trips every string; REFERENCES
//! places every message exactly once whatever the reference graph (loops and
//! duplicate ids included).

use proptest::prelude::*;
use shardmail::proto::imap::address::{parse_addresses, search_form};
use shardmail::proto::imap::sort::{base_subject, is_reply, message_ids, references, Referencing};
use shardmail::proto::imap::utf7;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn addresses_never_panic(raw in "\\PC{0,80}|[<>()\\\\\",:;@ a-z]{0,60}") {
        let _ = parse_addresses(&raw);
        let _ = search_form(&raw);
    }

    #[test]
    fn modified_utf7_round_trips(name in "\\PC{0,40}") {
        let encoded = utf7::encode(&name);
        prop_assert!(encoded.is_ascii());
        prop_assert_eq!(utf7::decode(&encoded), Some(name));
    }

    #[test]
    fn modified_utf7_decode_never_panics(raw in "[&A-Za-z0-9+,\\-]{0,40}") {
        let _ = utf7::decode(&raw);
    }

    #[test]
    fn base_subject_never_panics(raw in "\\PC{0,60}|(re|fwd|fw|\\[|\\]|:| |\\(fwd\\)|x){0,20}") {
        let _ = base_subject(&raw);
        let _ = is_reply(&raw);
        let _ = message_ids(&raw);
    }

    #[test]
    fn references_places_every_message_once(
        graph in proptest::collection::vec((0u8..12, proptest::collection::vec(0u8..12, 0..4), 0u8..3), 0..40)
    ) {
        let messages: Vec<Referencing> = graph
            .iter()
            .enumerate()
            .map(|(i, (id, refs, subject))| Referencing {
                number: i as u32 + 1,
                id: Some(format!("m{id}")),
                references: refs.iter().map(|r| format!("m{r}")).collect(),
                subject: ["A", "B", ""][*subject as usize].to_string(),
                is_reply: i % 2 == 0,
                date: (i as i64 * 7919) % 13,
            })
            .collect();
        let threads = references(&messages);
        let mut seen: Vec<u32> = threads
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        seen.sort_unstable();
        let want: Vec<u32> = (1..=messages.len() as u32).collect();
        prop_assert_eq!(seen, want, "{}", threads);
        prop_assert_eq!(threads.matches('(').count(), threads.matches(')').count());
    }
}

/// A hostile mailbox: 50,000 messages, each replying to the one before, and a
/// second tree 50,000 wide. Threading is iterative: no stack overflow, nothing lost.
#[test]
fn references_handles_deep_and_wide_threads() {
    let n = 50_000u32;
    let chain: Vec<Referencing> = (0..n)
        .map(|i| Referencing {
            number: i + 1,
            id: Some(format!("c{i}")),
            references: if i == 0 {
                Vec::new()
            } else {
                vec![format!("c{}", i - 1)]
            },
            subject: "CHAIN".into(),
            is_reply: i > 0,
            date: i64::from(i),
        })
        .collect();
    let threads = references(&chain);
    assert!(threads.starts_with("(1 2 3 "), "{}", &threads[..40]);
    assert_eq!(threads.split(' ').count(), n as usize);
    let wide: Vec<Referencing> = (0..n)
        .map(|i| Referencing {
            number: i + 1,
            id: Some(format!("w{i}")),
            references: if i == 0 {
                Vec::new()
            } else {
                vec!["w0".into()]
            },
            subject: "WIDE".into(),
            is_reply: i > 0,
            date: i64::from(i),
        })
        .collect();
    let threads = references(&wide);
    assert!(threads.starts_with("(1 (2)(3)"), "{}", &threads[..40]);
    assert_eq!(threads.matches('(').count(), n as usize);
}
