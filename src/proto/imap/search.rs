//! SEARCH evaluation (RFC 9051 §6.4.4): one message against a [`SearchKey`].
//!
//! Flags, sizes, dates, UIDs and MODSEQ come from the index entry; FROM/TO/CC/BCC/
//! SUBJECT from the envelope cached at delivery (addresses as parsed, not raw); HEADER reads only the header block;
//! only BODY and TEXT read the message body. Matches are case-insensitive substring
//! matches over the stored bytes, and — when that finds nothing — over the decoded
//! text: RFC 2047 encoded words in headers, base64 and quoted-printable text parts in
//! bodies (RFC 9051 §6.4.4 asks for matching on decoded text). Pure; never panics.

use std::borrow::Cow;
use std::cell::OnceCell;

use super::address;
use super::command::{days_from_civil, DateCmp, SearchKey};
use super::render::header_fields;
use crate::store::index::MessageEntry;
use crate::store::Summary;

/// One message as SEARCH sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub entry: &'a MessageEntry,
    /// Largest sequence number and UID in the mailbox (what `*` means).
    pub largest_seq: u32,
    pub largest_uid: u32,
    /// The message bytes, fetched only if a key needs them.
    pub bytes: &'a dyn Fn() -> Option<&'a [u8]>,
    pub(crate) cache: OnceCell<Option<&'a [u8]>>,
    /// Its MIME summary (read from the log), likewise only if a key needs it.
    pub summary: &'a dyn Fn() -> Option<Summary>,
    summary_cache: OnceCell<Option<Summary>>,
    /// The session shows it as `\Recent` (RFC 3501 §2.3.2).
    pub recent: bool,
    /// Now, in seconds since the epoch (WITHIN's OLDER and YOUNGER).
    pub now: i64,
}

impl<'a> Candidate<'a> {
    pub fn new(
        seq: u32,
        entry: &'a MessageEntry,
        largest_seq: u32,
        largest_uid: u32,
        bytes: &'a dyn Fn() -> Option<&'a [u8]>,
        summary: &'a dyn Fn() -> Option<Summary>,
    ) -> Candidate<'a> {
        Candidate {
            seq,
            entry,
            largest_seq,
            largest_uid,
            bytes,
            cache: OnceCell::new(),
            summary,
            summary_cache: OnceCell::new(),
            recent: false,
            now: 0,
        }
    }

    /// The summary, `None` if its record cannot be read (keys then fall back to the
    /// raw header block).
    pub fn summary(&self) -> Option<&Summary> {
        self.summary_cache.get_or_init(|| (self.summary)()).as_ref()
    }

    fn message(&self) -> &'a [u8] {
        self.cache.get_or_init(|| (self.bytes)()).unwrap_or(&[])
    }

    /// The message's header block (read from the log on first use).
    pub fn header_block(&self) -> &'a [u8] {
        let m = self.message();
        let end = match self.summary().and_then(|s| s.parts.first()) {
            Some(p) => p.offset_body as usize,
            None => memchr::memmem::find(m, b"\r\n\r\n").map_or(m.len(), |at| at + 4),
        };
        m.get(..end.min(m.len())).unwrap_or(m)
    }
}

/// ASCII case-insensitive substring test (an empty needle always matches), without
/// copying the haystack: candidates are found with `memchr2` on the needle's first
/// byte in both cases, then compared in place.
pub fn contains_ci(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    let Some(&first) = needle.first() else {
        return true;
    };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let mut from = 0;
    while let Some(i) = haystack
        .get(from..)
        .and_then(|rest| memchr::memchr2(lower, upper, rest))
    {
        let at = from + i;
        if haystack
            .get(at..at + needle.len())
            .is_some_and(|window| window.eq_ignore_ascii_case(needle))
        {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Unicode case-insensitive substring test over decoded text.
fn contains_text(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// A header value with RFC 2047 encoded words decoded (borrowed when it has none).
pub(crate) fn decoded_header(raw: &str) -> Cow<'_, str> {
    if !raw.contains("=?") {
        return Cow::Borrowed(raw);
    }
    let block = format!("Subject: {raw}\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse(block.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .map_or(Cow::Borrowed(raw), Cow::Owned)
}

/// Whether the header value matches raw, or once its encoded words are decoded.
fn header_matches(raw: &[u8], needle: &str) -> bool {
    if contains_ci(raw, needle) {
        return true;
    }
    // Decode only values that have encoded words (no copy of the others).
    memchr::memmem::find(raw, b"=?").is_some()
        && contains_text(&decoded_header(&String::from_utf8_lossy(raw)), needle)
}

/// Whether a base64 or quoted-printable text part of the message contains `needle`
/// once decoded (the raw bytes were searched already).
fn encoded_text_matches(c: &Candidate<'_>, needle: &str) -> bool {
    let m = c.message();
    let Some(summary) = c.summary() else {
        return false;
    };
    summary.parts.iter().any(|p| {
        let decode = match p
            .encoding
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("base64") => super::render::decode_base64,
            Some("quoted-printable") => super::render::decode_qp,
            _ => return false,
        };
        if p.ctype != "text" {
            return false;
        }
        let body = m
            .get(p.offset_body as usize..(p.offset_end as usize).min(m.len()))
            .unwrap_or(&[]);
        contains_text(&String::from_utf8_lossy(&decode(body)), needle)
    })
}

fn date_matches(cmp: DateCmp, day: i64, target: i64) -> bool {
    match cmp {
        DateCmp::Before => day < target,
        DateCmp::On => day == target,
        DateCmp::Since => day >= target,
    }
}

/// Whether `c` matches `key`.
pub fn matches(key: &SearchKey, c: &Candidate<'_>) -> bool {
    let e = c.entry;
    match key {
        SearchKey::All => true,
        SearchKey::Flag(bit, set) => (e.flags & bit != 0) == *set,
        SearchKey::Keyword(k, set) => e.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) == *set,
        SearchKey::Recent(recent) => c.recent == *recent,
        SearchKey::EmailId(id) => super::render::email_id(c.message()).eq_ignore_ascii_case(id),
        // No threads are computed: THREADID is NIL, so matches nothing.
        SearchKey::ThreadId(_) => false,
        SearchKey::Older(secs) => e.internal_date <= c.now.saturating_sub(*secs as i64),
        SearchKey::Younger(secs) => e.internal_date > c.now.saturating_sub(*secs as i64),
        SearchKey::Header(field, needle) => {
            let env = c.summary().map(|s| &s.envelope);
            let cached = env.and_then(|env| match field.as_str() {
                "FROM" => Some(&env.from),
                "TO" => Some(&env.to),
                "CC" => Some(&env.cc),
                "BCC" => Some(&env.bcc),
                "SUBJECT" => Some(&env.subject),
                _ => None,
            });
            // Address fields match their parsed envelope form (RFC 3501 §6.4.4);
            // SUBJECT and other fields the (decoded) value.
            let is_address = matches!(field.as_str(), "FROM" | "TO" | "CC" | "BCC");
            let value_matches = |v: &[u8]| {
                if is_address {
                    let form = address::search_form(&String::from_utf8_lossy(v));
                    header_matches(form.as_bytes(), needle)
                } else {
                    header_matches(v, needle)
                }
            };
            match cached {
                Some(value) => value
                    .as_deref()
                    .is_some_and(|v| value_matches(v.as_bytes())),
                None => header_fields(c.header_block()).any(|(name, whole)| {
                    name.eq_ignore_ascii_case(field.as_bytes())
                        && value_matches(whole.get(name.len() + 1..).unwrap_or(&[]))
                }),
            }
        }
        SearchKey::Body(needle) => {
            let m = c.message();
            let start = c.header_block().len();
            contains_ci(m.get(start..).unwrap_or(&[]), needle) || encoded_text_matches(c, needle)
        }
        SearchKey::Text(needle) => {
            contains_ci(c.message(), needle)
                || header_fields(c.header_block()).any(|(_, whole)| header_matches(whole, needle))
                || encoded_text_matches(c, needle)
        }
        SearchKey::Date(cmp, target) => {
            date_matches(*cmp, e.internal_date.div_euclid(86_400), *target)
        }
        SearchKey::SaveDate(cmp, target) => {
            e.save_date != 0 && date_matches(*cmp, i64::from(e.save_date) / 86_400, *target)
        }
        SearchKey::SaveDateSupported => true,
        SearchKey::SentDate(cmp, target) => {
            let sent = c
                .summary()
                .and_then(|s| s.envelope.date.as_deref())
                .and_then(mail_parser::DateTime::parse_rfc822)
                .map(|d| days_from_civil(i64::from(d.year), u32::from(d.month), u32::from(d.day)))
                // No usable Date: fall back to the internal date (RFC 9051 leaves it open).
                .unwrap_or(e.internal_date.div_euclid(86_400));
            date_matches(*cmp, sent, *target)
        }
        SearchKey::Larger(n) => u64::from(e.len) > *n,
        SearchKey::Smaller(n) => u64::from(e.len) < *n,
        SearchKey::Uid(set) => set.contains(e.uid, c.largest_uid),
        SearchKey::Seq(set) => set.contains(c.seq, c.largest_seq),
        SearchKey::ModSeq(n) => e.modseq >= *n,
        SearchKey::Not(k) => !matches(k, c),
        SearchKey::Or(a, b) => matches(a, c) || matches(b, c),
        SearchKey::And(keys) => keys.iter().all(|k| matches(k, c)),
    }
}

/// Whether a key (or any key inside it) mentions MODSEQ: the response then carries
/// `(MODSEQ n)` (RFC 7162 §3.1.5).
/// Whether evaluating `key` reads message bytes (HEADER, BODY, TEXT), which costs
/// far more per message than the index fields do.
pub fn reads_message(key: &SearchKey) -> bool {
    match key {
        SearchKey::Header(..) | SearchKey::Body(_) | SearchKey::Text(_) | SearchKey::EmailId(_) => {
            true
        }
        SearchKey::Not(k) => reads_message(k),
        SearchKey::Or(a, b) => reads_message(a) || reads_message(b),
        SearchKey::And(keys) => keys.iter().any(reads_message),
        _ => false,
    }
}

pub fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::And(keys) => keys.iter().any(uses_modseq),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_substrings() {
        assert!(contains_ci(b"Hello World", "world"));
        assert!(contains_ci(b"xxWORLD", "wOrLd"));
        assert!(contains_ci(b"abc", ""));
        assert!(!contains_ci(b"wor", "world"));
        assert!(!contains_ci(b"w o r l d", "world"));
        assert!(contains_ci(b"aaab", "aab"));
    }
    use crate::proto::imap::command::search_args;
    use crate::proto::imap::lexer::tokenize;
    use crate::store::index::MessageEntry;
    use crate::store::summary::Summary;

    fn matches_message(message: &'static [u8], search: &str) -> bool {
        let entry = MessageEntry {
            uid: 1,
            modseq: 1,
            flags: 0,
            internal_date: 0,
            blob: 0,
            offset: 0,
            len: message.len() as u32,
            keywords: Box::default(),
            save_date: 0,
        };
        let line: &'static [u8] = Box::leak(
            format!("a SEARCH {search}\r\n")
                .into_bytes()
                .into_boxed_slice(),
        );
        let key = search_args(&tokenize(line, 16).unwrap().args).unwrap().key;
        let bytes = || Some(message);
        let summary = || Some(Summary::parse(message));
        matches(&key, &Candidate::new(1, &entry, 1, 1, &bytes, &summary))
    }

    #[test]
    fn decoded_headers_and_bodies_match() {
        let m: &'static [u8] = b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.example>\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: base64\r\n\r\nU2Now7ZuZW4gR3LDvMOfZSBhdXMgS8O2bG4=\r\n--b\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak caf=C3=A9\r\n--b--\r\n";
        assert!(matches_message(m, "SUBJECT \"grüße\""));
        assert!(matches_message(m, "FROM jürgen"));
        assert!(matches_message(m, "FROM j@x.example"));
        assert!(
            matches_message(m, "BODY \"GRÜSSE AUS\"") || matches_message(m, "BODY \"Grüße aus\"")
        );
        assert!(matches_message(m, "BODY \"softbreak café\""));
        assert!(matches_message(m, "TEXT köln"));
        assert!(!matches_message(m, "BODY nowhere"));
        assert!(!matches_message(m, "SUBJECT hello"));
    }
}
