//! Mailbox names: what a valid name is, and LIST/LSUB pattern matching (RFC 9051
//! §6.3.9: `*` matches anything, `%` anything but the hierarchy delimiter).
//!
//! Names come from clients and end up as directory names (`shardmail export`) and in
//! every LIST reply, so [`validate`] refuses what could escape a directory or break a
//! reply: empty, `.` or `..` components, control characters, wildcards, over-long
//! components. [`Pattern`] matches in time linear in the name (a bit-parallel NFA
//! over the pattern's positions), whatever the pattern: no backtracking, so no pattern
//! can stall a shard (DESIGN.md §10). Pure code; never panics on any input.

/// The hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';

/// Longest component of a mailbox name (as most filesystems' file names).
pub const COMPONENT_BYTES_MAX: usize = 255;

/// Longest mailbox name in all.
pub const NAME_BYTES_MAX: usize = 1024;

/// Longest LIST pattern considered; a longer one matches nothing (no valid name is
/// that long once its wildcards are collapsed).
const PATTERN_BYTES_MAX: usize = 2 * NAME_BYTES_MAX;

/// Why a mailbox name is refused (answered `NO [CANNOT]` with this text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    ComponentTooLong,
    /// An empty component: a leading delimiter or two in a row.
    EmptyComponent,
    /// `.` or `..` as a component.
    DotComponent,
    /// A control character, or `*`/`%` (LIST wildcards).
    BadCharacter,
    /// An 8-bit byte: without UTF8=ACCEPT names are 7-bit (RFC 3501 §5.1.3).
    NotAscii,
    /// An `&` that does not start a modified UTF-7 sequence (`&-`, or `&`
    /// modified-base64 `-`).
    BadUtf7,
}

impl NameError {
    pub fn text(self) -> String {
        match self {
            NameError::Empty => "Mailbox name is empty".into(),
            NameError::TooLong => format!("Mailbox names are at most {NAME_BYTES_MAX} bytes"),
            NameError::ComponentTooLong => {
                format!("Each level of a mailbox name is at most {COMPONENT_BYTES_MAX} bytes")
            }
            NameError::EmptyComponent => {
                format!("Mailbox names cannot start with or repeat the delimiter {DELIMITER}")
            }
            NameError::DotComponent => "Mailbox name levels cannot be . or ..".into(),
            NameError::BadCharacter => {
                "Mailbox names cannot contain control characters, * or %".into()
            }
            NameError::NotAscii => {
                "Mailbox names are 7-bit: encode others in modified UTF-7 (RFC 3501 5.1.3)".into()
            }
            NameError::BadUtf7 => {
                "Invalid modified UTF-7 in the mailbox name: & starts &-, or base64 ending in -"
                    .into()
            }
        }
    }
}

/// `INBOX` in any case is INBOX; one trailing delimiter is dropped (RFC 9051 §6.3.4).
pub fn normalize(name: &str) -> String {
    let name = name.strip_suffix(DELIMITER).unwrap_or(name);
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".into()
    } else {
        name.to_string()
    }
}

/// Checks a (normalized) name a client wants to create or rename to.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '*' || c == '%' || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(NameError::BadCharacter);
    }
    if !name.is_ascii() {
        return Err(NameError::NotAscii);
    }
    if !is_modified_utf7(name) {
        return Err(NameError::BadUtf7);
    }
    for component in name.split(DELIMITER) {
        match component {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::DotComponent),
            c if c.len() > COMPONENT_BYTES_MAX => return Err(NameError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// Whether every `&` in an ASCII name starts a well-formed modified UTF-7 shift:
/// `&-` (a literal `&`), or `&` + modified base64 (`A-Z a-z 0-9 + ,`) + `-`.
fn is_modified_utf7(name: &str) -> bool {
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b != b'&' {
            continue;
        }
        let mut encoded = 0usize;
        loop {
            match bytes.next() {
                Some(b'-') => break,
                Some(c) if c.is_ascii_alphanumeric() || c == b'+' || c == b',' => encoded += 1,
                _ => return false,
            }
        }
        // Base64 of UTF-16: a count that is no whole number of code units is
        // malformed.
        // n code units take ceil(16n / 6) characters: 3, 6, 8, 11, 14, 16, …
        if encoded != 0 && !matches!(encoded % 8, 0 | 3 | 6) {
            return false;
        }
    }
    true
}

/// True if a stored name is safe to use as a relative path below a directory (no
/// absolute path, no `.`/`..`, no empty component). Export checks every name with
/// this whatever the store holds, so a name stored before validation existed cannot
/// write outside `--out`.
pub fn is_safe_relative_path(name: &str) -> bool {
    validate(name).is_ok()
}

/// A compiled LIST pattern. Matching is a simulation of the pattern's NFA with one
/// bit per pattern position: O(name length × pattern length / 64) word operations.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Pattern positions (wildcard runs collapsed): the accepting state is `len`.
    len: usize,
    words: usize,
    /// Positions holding `*`.
    star: Vec<u64>,
    /// Positions holding `%`.
    percent: Vec<u64>,
    /// For each byte value, the positions holding that literal byte (index into
    /// `literal_masks`, `usize::MAX` when the byte does not occur).
    literal_of: Vec<usize>,
    literal_masks: Vec<Vec<u64>>,
    /// The pattern is `INBOX` in some case: it also matches `INBOX` exactly.
    inbox: bool,
    /// Longer than any name could need: matches nothing.
    never: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Atom {
    Star,
    Percent,
    Byte(u8),
}

impl Pattern {
    pub fn new(pattern: &str) -> Pattern {
        let bytes = pattern.as_bytes();
        let never = bytes.len() > PATTERN_BYTES_MAX;
        // Collapse wildcard runs: `%%` is `%`, and any run holding `*` is `*`. After
        // this no two wildcards are adjacent, so one shift closes over empty matches.
        let mut atoms: Vec<Atom> = Vec::with_capacity(bytes.len().min(PATTERN_BYTES_MAX));
        for &b in bytes.iter().take(PATTERN_BYTES_MAX) {
            let atom = match b {
                b'*' => Atom::Star,
                b'%' => Atom::Percent,
                other => Atom::Byte(other),
            };
            match (atoms.last_mut(), atom) {
                (Some(last @ Atom::Percent), Atom::Star) => *last = Atom::Star,
                (Some(Atom::Star), Atom::Star | Atom::Percent) => {}
                (Some(Atom::Percent), Atom::Percent) => {}
                _ => atoms.push(atom),
            }
        }
        let len = atoms.len();
        let words = len / 64 + 1;
        let mut star = vec![0u64; words];
        let mut percent = vec![0u64; words];
        let mut literal_of = vec![usize::MAX; 256];
        let mut literal_masks: Vec<Vec<u64>> = Vec::new();
        for (i, atom) in atoms.iter().enumerate() {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            match atom {
                Atom::Star => set(&mut star, word, bit),
                Atom::Percent => set(&mut percent, word, bit),
                Atom::Byte(b) => {
                    let slot = literal_of
                        .get(usize::from(*b))
                        .copied()
                        .unwrap_or(usize::MAX);
                    let slot = if slot == usize::MAX {
                        literal_masks.push(vec![0u64; words]);
                        let new = literal_masks.len() - 1;
                        if let Some(s) = literal_of.get_mut(usize::from(*b)) {
                            *s = new;
                        }
                        new
                    } else {
                        slot
                    };
                    if let Some(mask) = literal_masks.get_mut(slot) {
                        set(mask, word, bit);
                    }
                }
            }
        }
        Pattern {
            len,
            words,
            star,
            percent,
            literal_of,
            literal_masks,
            inbox: pattern.eq_ignore_ascii_case("INBOX"),
            never,
        }
    }

    /// Does `name` match? Linear in `name.len()` for a given pattern.
    pub fn matches(&self, name: &str) -> bool {
        if self.inbox && name == "INBOX" {
            return true;
        }
        if self.never {
            return false;
        }
        let mut state = vec![0u64; self.words];
        let mut next = vec![0u64; self.words];
        set(&mut state, 0, 1);
        self.close(&mut state);
        for &c in name.as_bytes() {
            let literal = self
                .literal_of
                .get(usize::from(c))
                .and_then(|&i| self.literal_masks.get(i));
            let mut carry = 0u64;
            let mut any = 0u64;
            for w in 0..self.words {
                let s = state.get(w).copied().unwrap_or(0);
                let mut stay = s & self.star.get(w).copied().unwrap_or(0);
                if c != b'/' {
                    stay |= s & self.percent.get(w).copied().unwrap_or(0);
                }
                let advancing = s & literal.and_then(|m| m.get(w).copied()).unwrap_or(0);
                let shifted = (advancing << 1) | carry;
                carry = advancing >> 63;
                let n = stay | shifted;
                if let Some(slot) = next.get_mut(w) {
                    *slot = n;
                }
                any |= n;
            }
            if any == 0 {
                return false;
            }
            std::mem::swap(&mut state, &mut next);
            self.close(&mut state);
        }
        let (word, bit) = (self.len / 64, 1u64 << (self.len % 64));
        state.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Adds position `i + 1` for every active wildcard position `i` (a wildcard may
    /// match nothing). One pass suffices: wildcards are never adjacent.
    fn close(&self, state: &mut [u64]) {
        let mut carry = 0u64;
        for w in 0..self.words {
            let wild =
                self.star.get(w).copied().unwrap_or(0) | self.percent.get(w).copied().unwrap_or(0);
            let Some(s) = state.get_mut(w) else { break };
            let active = *s & wild;
            *s |= (active << 1) | carry;
            carry = active >> 63;
        }
    }
}

fn set(mask: &mut [u64], word: usize, bit: u64) {
    if let Some(w) = mask.get_mut(word) {
        *w |= bit;
    }
}

/// True if any of `patterns` matches `name`.
pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// Whether some name in `sorted` (byte order) lies below `name` in the hierarchy.
/// Names with the prefix `name/` are contiguous in byte order: one binary search.
pub fn has_children(sorted: &[impl AsRef<str>], name: &str) -> bool {
    let prefix = format!("{name}{DELIMITER}");
    let at = sorted.partition_point(|n| n.as_ref() < prefix.as_str());
    sorted
        .get(at)
        .is_some_and(|n| n.as_ref().starts_with(prefix.as_str()))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let m = |p: &str, n: &str| Pattern::new(p).matches(n);
        assert!(m("*", "a/b/c"));
        assert!(m("%", "abc"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a*c", "a/b/c"));
        assert!(m("inbox", "INBOX"));
        assert!(m("INBOX", "INBOX"));
        assert!(!m("inbox", "Inbox2"));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("%*%", "x/y"));
        assert!(m("**a", "bba"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let name = format!("{}c", "a".repeat(250));
        let p = Pattern::new("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b");
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(!p.matches(&name));
        }
        // 1000 matches of a 251-byte name: microseconds each, not the seconds to
        // minutes a backtracking matcher takes (a bound loose enough for any host).
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn names() {
        assert_eq!(validate("a/b"), Ok(()));
        // Without UTF8=ACCEPT: 7-bit, non-ASCII in modified UTF-7 (Ä = &AMQ-).
        assert_eq!(validate("&AMQ-rger/Post"), Ok(()));
        assert_eq!(validate("Ärger/Post"), Err(NameError::NotAscii));
        assert_eq!(validate("a&b"), Err(NameError::BadUtf7));
        assert_eq!(validate("a&AM-"), Err(NameError::BadUtf7));
        for (bad, why) in [
            ("", NameError::Empty),
            (".", NameError::DotComponent),
            ("..", NameError::DotComponent),
            ("../x", NameError::DotComponent),
            ("INBOX/../../../x", NameError::DotComponent),
            ("a/./b", NameError::DotComponent),
            ("/abs", NameError::EmptyComponent),
            ("a//b", NameError::EmptyComponent),
            ("a\u{7}b", NameError::BadCharacter),
            ("a\u{85}b", NameError::BadCharacter),
            ("a*", NameError::BadCharacter),
        ] {
            assert_eq!(validate(bad), Err(why), "{bad:?}");
        }
        assert_eq!(validate(&"x".repeat(256)), Err(NameError::ComponentTooLong));
        assert_eq!(
            validate(&format!("{}/{}", "x".repeat(255), "y".repeat(255))),
            Ok(())
        );
        assert_eq!(validate(&"x/".repeat(600)), Err(NameError::TooLong));
    }

    #[test]
    fn children_by_binary_search() {
        let mut names = vec!["a", "a-b", "a/c", "b", "ab"];
        names.sort();
        assert!(has_children(&names, "a"));
        assert!(!has_children(&names, "a-b"));
        assert!(!has_children(&names, "b"));
    }
}
