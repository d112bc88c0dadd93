//! LIST pattern matching against a naive backtracking oracle on small inputs (the
//! matcher itself is a bit-parallel NFA: linear in the name, whatever the pattern),
//! and mailbox-name validation invariants.

use proptest::prelude::*;
use shardmail::proto::imap::names::{self, Pattern};

/// RFC 9051 §6.3.9 by the book: `*` matches anything, `%` anything but `/`.
fn naive(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => (0..=n.len()).any(|i| naive(rest, &n[i..])),
        Some((b'%', rest)) => {
            let stop = n.iter().position(|&c| c == b'/').unwrap_or(n.len());
            (0..=stop).any(|i| naive(rest, &n[i..]))
        }
        Some((c, rest)) => n
            .split_first()
            .is_some_and(|(d, nr)| c == d && naive(rest, nr)),
    }
}

fn pattern() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('*'), Just('%'), Just('/'), Just('a'), Just('b')],
        0..10,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('/'), Just('a'), Just('b'), Just('c')],
        0..12,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn matches_the_naive_matcher(p in pattern(), n in name()) {
        prop_assume!(!p.eq_ignore_ascii_case("INBOX"));
        prop_assert_eq!(Pattern::new(&p).matches(&n), naive(p.as_bytes(), n.as_bytes()), "{} ~ {}", p, n);
    }

    #[test]
    fn long_patterns_match_like_the_naive_one(p in "[*%ab/]{0,80}", n in "[ab/]{0,64}") {
        // Long enough to span more than one 64-bit word of NFA state.
        let expected = if p.matches(['*', '%']).count() <= 6 { Some(naive(p.as_bytes(), n.as_bytes())) } else { None };
        if let Some(e) = expected {
            prop_assert_eq!(Pattern::new(&p).matches(&n), e);
        }
    }

    #[test]
    fn valid_names_are_safe_paths(n in "[a-z./]{0,20}") {
        if names::validate(&n).is_ok() {
            prop_assert!(!n.split('/').any(|c| c.is_empty() || c == "." || c == ".."));
            prop_assert!(!n.starts_with('/'));
        }
    }
}

#[test]
fn literal_pattern_over_two_words() {
    let name = format!("{}/{}", "x".repeat(70), "y".repeat(70));
    assert!(Pattern::new(&name).matches(&name));
    assert!(Pattern::new(&format!("{}%", "x".repeat(70))).matches(&"x".repeat(75)));
    assert!(
        !Pattern::new(&format!("{}%", "x".repeat(70))).matches(&format!("{}/y", "x".repeat(70)))
    );
}
