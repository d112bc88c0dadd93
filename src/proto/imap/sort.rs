//! SORT and THREAD=ORDEREDSUBJECT (RFC 5256), ESORT's RETURN options come from
//! [`super::command::SearchReturn`]: the sort criteria, the base subject, each
//! message's sort key and the ordering and threading of a SEARCH's matches.
//!
//! Keys come from the index entry (ARRIVAL, SIZE) and the envelope cached at delivery
//! (DATE, FROM, TO, CC, SUBJECT, DISPLAYFROM, DISPLAYTO); text compares with
//! i;ascii-casemap (ASCII letters folded), ties in mailbox order (RFC 5256 §3).
//! Pure and bounded: the session computes keys in steps, sorting is O(n log n) over
//! keys already made. Never panics.

use std::cmp::Ordering;

use super::address::{self, Address};
use super::command::{self, Bad};
use super::lexer::Token;
use crate::store::index::MessageEntry;
use crate::store::Summary;

/// One sort criterion (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
    DisplayFrom,
    DisplayTo,
}

impl Criterion {
    /// Whether the key needs the message's cached envelope (read from the log).
    pub fn needs_summary(self) -> bool {
        !matches!(self, Criterion::Arrival | Criterion::Size)
    }
}

/// A criterion and whether REVERSE precedes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortBy {
    pub criterion: Criterion,
    pub reverse: bool,
}

/// Parses `(REVERSE DATE SUBJECT …)`.
pub fn criteria(token: Option<&Token<'_>>) -> Result<Vec<SortBy>, Bad> {
    let Some(Token::List(items)) = token else {
        return Err("SORT needs a list of sort criteria".into());
    };
    let mut out = Vec::new();
    let mut reverse = false;
    for item in items {
        let name = item
            .as_str()
            .map(|s| s.to_ascii_uppercase())
            .ok_or("invalid sort criterion")?;
        let criterion = match name.as_str() {
            "REVERSE" if !reverse => {
                reverse = true;
                continue;
            }
            "ARRIVAL" => Criterion::Arrival,
            "CC" => Criterion::Cc,
            "DATE" => Criterion::Date,
            "FROM" => Criterion::From,
            "SIZE" => Criterion::Size,
            "SUBJECT" => Criterion::Subject,
            "TO" => Criterion::To,
            "DISPLAYFROM" => Criterion::DisplayFrom,
            "DISPLAYTO" => Criterion::DisplayTo,
            _ => return Err(format!("unknown sort criterion {name}")),
        };
        out.push(SortBy { criterion, reverse });
        reverse = false;
    }
    if reverse || out.is_empty() {
        return Err("SORT criteria must name a key (REVERSE alone is not one)".into());
    }
    Ok(out)
}

/// The charset argument of SORT and THREAD: UTF-8 and US-ASCII are what text is
/// compared in (RFC 5256 §3 requires both).
pub fn charset(token: Option<&Token<'_>>) -> Result<(), Bad> {
    match token
        .and_then(Token::as_str)
        .map(|s| s.to_ascii_uppercase())
        .as_deref()
    {
        Some("UTF-8" | "US-ASCII") => Ok(()),
        Some(_) => Err("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset".into()),
        None => Err("SORT and THREAD need a charset".into()),
    }
}

/// One part of a message's sort key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPart {
    Number(i64),
    Text(String),
}

/// The key of one message under `criteria`.
pub fn key_of(
    criteria: &[SortBy],
    entry: &MessageEntry,
    summary: Option<&Summary>,
) -> Vec<KeyPart> {
    let env = summary.map(|s| &s.envelope);
    criteria
        .iter()
        .map(|c| match c.criterion {
            Criterion::Arrival => KeyPart::Number(entry.internal_date),
            Criterion::Size => KeyPart::Number(i64::from(entry.len)),
            Criterion::Date => KeyPart::Number(sent_date(summary, entry)),
            Criterion::Subject => KeyPart::Text(base_subject(
                env.and_then(|e| e.subject.as_deref()).unwrap_or(""),
            )),
            Criterion::From => mailbox_of(env.and_then(|e| e.from.as_deref())),
            Criterion::To => mailbox_of(env.and_then(|e| e.to.as_deref())),
            Criterion::Cc => mailbox_of(env.and_then(|e| e.cc.as_deref())),
            Criterion::DisplayFrom => display_of(env.and_then(|e| e.from.as_deref())),
            Criterion::DisplayTo => display_of(env.and_then(|e| e.to.as_deref())),
        })
        .collect()
}

/// Orders two keys made under `criteria`; equal keys are left to mailbox order.
pub fn compare(criteria: &[SortBy], a: &[KeyPart], b: &[KeyPart]) -> Ordering {
    for (c, (x, y)) in criteria.iter().zip(a.iter().zip(b)) {
        let o = x.cmp(y);
        let o = if c.reverse { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The Date header as seconds since the epoch, or the internal date when it has
/// none that parses (RFC 5256 §2.2).
pub fn sent_date(summary: Option<&Summary>, entry: &MessageEntry) -> i64 {
    summary
        .and_then(|s| s.envelope.date.as_deref())
        .and_then(mail_parser::DateTime::parse_rfc822)
        .map(|d| d.to_timestamp())
        .unwrap_or(entry.internal_date)
}

fn first_mailbox(raw: Option<&str>) -> Option<Address> {
    raw.map(address::parse_addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| matches!(a, Address::Mailbox { .. }))
}

/// The addr-mailbox (local part) of the first address, case-folded (RFC 5256 §3).
fn mailbox_of(raw: Option<&str>) -> KeyPart {
    let local = match first_mailbox(raw) {
        Some(Address::Mailbox { local, .. }) => local,
        _ => String::new(),
    };
    KeyPart::Text(fold(&local))
}

/// The display name of the first address, else its address (RFC 5957 §3.1).
fn display_of(raw: Option<&str>) -> KeyPart {
    let shown = match first_mailbox(raw) {
        Some(Address::Mailbox {
            name: Some(name), ..
        }) if !name.is_empty() => super::search::decoded_header(&name).into_owned(),
        Some(Address::Mailbox { local, domain, .. }) => match domain {
            Some(d) => format!("{local}@{d}"),
            None => local,
        },
        _ => String::new(),
    };
    KeyPart::Text(fold(&shown))
}

/// The base subject (RFC 5256 §2.1): encoded words decoded, whitespace collapsed,
/// `Re:`/`Fw:`/`Fwd:` leaders (with `[blob]`s), `(fwd)` trailers and `[Fwd: …]`
/// wrappers removed, then case-folded for i;ascii-casemap.
pub fn base_subject(raw: &str) -> String {
    let decoded = super::search::decoded_header(raw);
    let mut s: String = decoded.split_whitespace().collect::<Vec<_>>().join(" ");
    loop {
        // (2) trailers: "(fwd)" and whitespace.
        loop {
            let t = s.trim_end();
            let cut = t.len().saturating_sub(5);
            match (t.get(cut..), t.get(..cut)) {
                (Some(end), Some(rest)) if end.eq_ignore_ascii_case("(fwd)") => {
                    s = rest.to_string()
                }
                _ => {
                    s = t.to_string();
                    break;
                }
            }
        }
        // (3) leaders, and a leading [blob] when something is left after it.
        loop {
            let before = s.clone();
            s = strip_leader(&s);
            if let Some(rest) = strip_blob(&s) {
                if !rest.trim().is_empty() {
                    s = rest.trim_start().to_string();
                }
            }
            if s == before {
                break;
            }
        }
        // (4) "[fwd:" … "]" wrapper.
        let wrapped = s.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("[fwd:"));
        if let Some(inner) = s
            .get(5..s.len().saturating_sub(1))
            .filter(|_| wrapped && s.ends_with(']'))
        {
            s = inner.trim().to_string();
            continue;
        }
        break;
    }
    fold(&s)
}

/// Case folding for comparison: I18NLEVEL=1 asks for i;unicode-casemap, whose
/// titlecase mapping this approximates with Unicode uppercase.
fn fold(s: &str) -> String {
    s.to_uppercase()
}

/// `subj-leader`: `*WSP subj-refwd` (re / fw / fwd, optional `[blob]`, colon).
fn strip_leader(s: &str) -> String {
    let t = s.trim_start();
    for word in ["fwd", "fw", "re"] {
        let starts = t
            .get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word));
        let Some(mut tail) = t.get(word.len()..).filter(|_| starts) else {
            continue;
        };
        if let Some(after) = strip_blob(tail.trim_start()) {
            tail = after;
        }
        if let Some(after) = tail.trim_start().strip_prefix(':') {
            return after.trim_start().to_string();
        }
    }
    s.to_string()
}

/// `[…]` at the start (no brackets inside): what follows it.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(']')?;
    if rest.get(..end)?.contains('[') {
        return None;
    }
    rest.get(end + 1..)
}

/// One message as THREAD sees it: its number (sequence or UID), base subject and
/// sent date.
#[derive(Debug, Clone)]
pub struct Threadable {
    pub number: u32,
    pub subject: String,
    pub date: i64,
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §4): messages grouped by base subject, each
/// group's first (by sent date, then number) the parent of the others; groups
/// ordered by their first message's date.
pub fn ordered_subject(mut messages: Vec<Threadable>) -> String {
    messages.sort_by(|a, b| {
        a.subject
            .cmp(&b.subject)
            .then(a.date.cmp(&b.date))
            .then(a.number.cmp(&b.number))
    });
    ordered_subject_of_sorted(&messages)
}

/// [`ordered_subject`] of messages already in (base subject, date, number) order.
pub fn ordered_subject_of_sorted(messages: &[Threadable]) -> String {
    use std::fmt::Write as _;
    let mut threads: Vec<&[Threadable]> =
        messages.chunk_by(|a, b| a.subject == b.subject).collect();
    threads.sort_by_key(|t| t.first().map(|m| (m.date, m.number)));
    let mut out = String::with_capacity(messages.len() * 8);
    for thread in threads {
        let Some((first, rest)) = thread.split_first() else {
            continue;
        };
        let _ = write!(out, "({}", first.number);
        match rest {
            [] => {}
            [only] => {
                let _ = write!(out, " {}", only.number);
            }
            many => {
                out.push(' ');
                for m in many {
                    let _ = write!(out, "({})", m.number);
                }
            }
        }
        out.push(')');
    }
    out
}

/// The THREAD algorithms this server implements (as parsed from the command).
pub fn thread_algorithm(token: Option<&Token<'_>>) -> Result<(), Bad> {
    match token
        .and_then(Token::as_str)
        .map(|s| s.to_ascii_uppercase())
        .as_deref()
    {
        Some("ORDEREDSUBJECT") => Ok(()),
        Some(other) => Err(format!(
            "THREAD algorithm {other} is not supported (ORDEREDSUBJECT is)"
        )),
        None => Err("THREAD needs an algorithm".into()),
    }
}

/// `SORT (criteria) charset keys…` (after any RETURN): the criteria and the
/// tokens of the search key.
pub fn sort_args<'a, 't>(
    args: &'a [Token<'t>],
) -> Result<(command::SearchReturn, Vec<SortBy>, &'a [Token<'t>]), Bad> {
    let (ret, rest) = command::return_options(args)?;
    let criteria = criteria(rest.first())?;
    charset(rest.get(1))?;
    Ok((ret, criteria, rest.get(2..).unwrap_or(&[])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_as_rfc_5256_strips_them() {
        for (raw, base) in [
            ("Re: hello", "HELLO"),
            ("RE: Re: re:  hello   world", "HELLO WORLD"),
            ("Fwd: [list] Re: hello (fwd)", "HELLO"),
            ("[Fwd: Re: hello]", "HELLO"),
            ("Re[2]: hello", "HELLO"),
            ("[list] hello", "HELLO"),
            ("[only a blob]", "[ONLY A BLOB]"),
            ("=?utf-8?q?Re=3A_caf=C3=A9?=", "CAFÉ"),
            ("", ""),
            ("Re:", ""),
        ] {
            assert_eq!(base_subject(raw), base, "{raw}");
        }
    }

    #[test]
    fn ordered_subject_threads_by_base_subject_then_date() {
        let m = |number, subject: &str, date| Threadable {
            number,
            subject: base_subject(subject),
            date,
        };
        let threads = ordered_subject(vec![
            m(1, "b", 10),
            m(2, "Re: a", 30),
            m(3, "a", 20),
            m(4, "Re: b", 40),
            m(5, "c", 5),
            m(6, "Re: a", 50),
        ]);
        assert_eq!(threads, "(5)(1 4)(3 (2)(6))");
    }
}
