//! Typed arguments of IMAP commands (RFC 9051 §6, CONDSTORE/QRESYNC RFC 7162, ESEARCH
//! RFC 4731, LIST-EXTENDED RFC 5258, BINARY RFC 3516), parsed from lexer [`Token`]s.
//!
//! Owns the grammar of each argument: sequence sets, FETCH items and sections, SEARCH
//! keys, STORE operations, LIST/SELECT/STATUS options. Every function returns a
//! `Result<_, String>` whose error is the reason sent with `BAD`; nothing here panics
//! or allocates in proportion to anything but the command it was given.

use super::lexer::Token;
use crate::store::index::flags;

/// An error message for `BAD`.
pub type Bad = String;

/// `*` or a number in a sequence set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    Value(u32),
    Star,
}

impl SeqNum {
    fn resolve(self, largest: u32) -> u32 {
        match self {
            SeqNum::Value(v) => v,
            SeqNum::Star => largest,
        }
    }
}

/// A sequence set (`1:4,7,9:*`), of sequence numbers or UIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(SeqNum, SeqNum)>);

impl SequenceSet {
    /// `$`, the saved search result (RFC 5182): an empty set here, which the session
    /// replaces with the UIDs it saved (a set that is never substituted matches
    /// nothing; every parsed set is otherwise non-empty).
    pub const SAVED: SequenceSet = SequenceSet(Vec::new());

    /// Whether this is `$`.
    pub fn is_saved(&self) -> bool {
        self.0.is_empty()
    }

    /// The set of exactly `values` (sorted, distinct), as ranges.
    pub fn from_sorted(values: &[u32]) -> SequenceSet {
        let mut ranges: Vec<(SeqNum, SeqNum)> = Vec::new();
        for &v in values {
            match ranges.last_mut() {
                Some((_, SeqNum::Value(hi))) if hi.checked_add(1) == Some(v) => *hi = v,
                _ => ranges.push((SeqNum::Value(v), SeqNum::Value(v))),
            }
        }
        SequenceSet(ranges)
    }

    pub fn parse(text: &str) -> Result<SequenceSet, Bad> {
        if text == "$" {
            return Ok(SequenceSet::SAVED);
        }
        let number = |s: &str| -> Result<SeqNum, Bad> {
            if s == "*" {
                return Ok(SeqNum::Star);
            }
            match s.parse::<u32>() {
                Ok(n) if n > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(SeqNum::Value(n)),
                _ => Err(format!("invalid sequence set: {text}")),
            }
        };
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let range = match item.split_once(':') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(item)?;
                    (n, n)
                }
            };
            ranges.push(range);
        }
        Ok(SequenceSet(ranges))
    }

    /// Whether `n` is in the set, `*` standing for `largest`.
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (a.resolve(largest), b.resolve(largest));
            (a.min(b)..=a.max(b)).contains(&n)
        })
    }

    /// The ranges `lo..=hi` the set names (`*` being `largest`), sorted and merged:
    /// what a lookup walks instead of testing every message against every range.
    pub fn ranges(&self, largest: u32) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = self
            .0
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.resolve(largest), b.resolve(largest));
                (a.min(b), a.max(b))
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    }

    /// A set of UIDs from sorted, distinct values (for COPYUID, VANISHED, ESEARCH).
    pub fn compact(values: &[u32]) -> String {
        let mut out = String::new();
        let mut i = 0;
        while let Some(&start) = values.get(i) {
            let mut end = start;
            while values.get(i + 1) == Some(&(end.wrapping_add(1))) {
                end += 1;
                i += 1;
            }
            if !out.is_empty() {
                out.push(',');
            }
            if start == end {
                out.push_str(&start.to_string());
            } else {
                out.push_str(&format!("{start}:{end}"));
            }
            i += 1;
        }
        out
    }
}

/// Which text of a part a section names (RFC 9051 §6.4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Header,
    HeaderFields { not: bool, fields: Vec<String> },
    Text,
    Mime,
}

/// `BODY[<part>.<text>]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

/// One FETCH data item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAtt {
    Envelope,
    Flags,
    InternalDate,
    Rfc822Size,
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    /// `BODY` (non-extensible BODYSTRUCTURE).
    Body,
    BodyStructure,
    Uid,
    ModSeq,
    /// RFC 8970 PREVIEW.
    Preview,
    /// RFC 8514 SAVEDATE.
    SaveDate,
    /// RFC 8474 OBJECTID.
    EmailId,
    ThreadId,
    BodySection {
        peek: bool,
        section: Section,
        partial: Option<(u32, u32)>,
    },
    Binary {
        peek: bool,
        part: Vec<u32>,
        partial: Option<(u32, u32)>,
    },
    BinarySize {
        part: Vec<u32>,
    },
}

impl FetchAtt {
    /// Whether fetching this sets `\Seen` (RFC 9051 §6.4.5).
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchAtt::Rfc822
                | FetchAtt::Rfc822Text
                | FetchAtt::BodySection { peek: false, .. }
                | FetchAtt::Binary { peek: false, .. }
        )
    }
}

/// FETCH modifiers (RFC 7162).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchModifiers {
    pub changed_since: Option<u64>,
    pub vanished: bool,
}

fn atom<'a>(token: Option<&Token<'a>>) -> Option<&'a str> {
    match token {
        Some(Token::Atom(a)) => Some(a),
        _ => None,
    }
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Bad> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} must be a number"));
    }
    text.parse().map_err(|_| format!("{what} is out of range"))
}

/// Part numbers `1.2.3` (possibly empty).
fn part_numbers(text: &str) -> Result<Vec<u32>, Bad> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split('.')
        .map(|n| match number::<u32>(n, "a part number") {
            Ok(0) => Err("part numbers start at 1".to_string()),
            other => other,
        })
        .collect()
}

/// `<origin.count>`.
fn partial(text: &str) -> Result<Option<(u32, u32)>, Bad> {
    if text.is_empty() {
        return Ok(None);
    }
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or("invalid partial range")?;
    let (origin, count) = inner.split_once('.').ok_or("invalid partial range")?;
    let count: u32 = number(count, "a partial count")?;
    if count == 0 {
        return Err("a partial count must not be 0".into());
    }
    Ok(Some((number(origin, "a partial origin")?, count)))
}

/// Parses the section text inside `[...]` (not HEADER.FIELDS, whose list is separate).
pub(crate) fn section_spec(spec: &str, fields: Option<Vec<String>>) -> Result<Section, Bad> {
    let upper = spec.to_ascii_uppercase();
    let (numbers, text) = match upper.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (upper.get(..i).unwrap_or(""), upper.get(i..).unwrap_or("")),
        None => (upper.as_str(), ""),
    };
    let numbers = numbers.strip_suffix('.').unwrap_or(numbers);
    if !text.is_empty() && !numbers.is_empty() && !upper.contains('.') {
        return Err(format!("invalid section: {spec}"));
    }
    let part = part_numbers(numbers)?;
    let text = match (text, fields) {
        ("", None) => None,
        ("HEADER", None) => Some(SectionText::Header),
        ("TEXT", None) => Some(SectionText::Text),
        ("MIME", None) if !part.is_empty() => Some(SectionText::Mime),
        ("HEADER.FIELDS", Some(fields)) => Some(SectionText::HeaderFields { not: false, fields }),
        ("HEADER.FIELDS.NOT", Some(fields)) => {
            Some(SectionText::HeaderFields { not: true, fields })
        }
        _ => return Err(format!("invalid section: {spec}")),
    };
    Ok(Section { part, text })
}

/// Parses FETCH's item argument (a macro, one item, or a list) and modifiers.
// Longer than ~80 lines: one arm per FETCH data item of the grammar, kept together as the grammar is.
pub fn fetch_items(args: &[Token<'_>]) -> Result<(Vec<FetchAtt>, FetchModifiers), Bad> {
    let (items, rest): (Vec<Token<'_>>, &[Token<'_>]) = match args.split_first() {
        Some((Token::List(list), rest)) => (list.clone(), rest),
        Some((Token::Atom(a), rest)) => {
            let expanded = match a.to_ascii_uppercase().as_str() {
                "ALL" => vec![
                    FetchAtt::Flags,
                    FetchAtt::InternalDate,
                    FetchAtt::Rfc822Size,
                    FetchAtt::Envelope,
                ],
                "FAST" => vec![
                    FetchAtt::Flags,
                    FetchAtt::InternalDate,
                    FetchAtt::Rfc822Size,
                ],
                "FULL" => vec![
                    FetchAtt::Flags,
                    FetchAtt::InternalDate,
                    FetchAtt::Rfc822Size,
                    FetchAtt::Envelope,
                    FetchAtt::Body,
                ],
                _ => Vec::new(),
            };
            if expanded.is_empty() {
                (vec![Token::Atom(a)], rest)
            } else {
                return Ok((expanded, fetch_modifiers(rest)?));
            }
        }
        _ => return Err("FETCH needs data items".into()),
    };
    let mut out = Vec::new();
    let mut tokens = items.iter().peekable();
    while let Some(token) = tokens.next() {
        let Some(name) = atom(Some(token)) else {
            return Err("invalid FETCH item".into());
        };
        let upper = name.to_ascii_uppercase();
        if upper == "PREVIEW" {
            // `PREVIEW (LAZY)` (RFC 8970 §3.1): the preview is always at hand here.
            if let Some(Token::List(mods)) = tokens.peek() {
                if !mods
                    .iter()
                    .all(|m| atom(Some(m)).is_some_and(|a| a.eq_ignore_ascii_case("LAZY")))
                {
                    return Err("PREVIEW takes only the LAZY modifier".into());
                }
                tokens.next();
            }
            out.push(FetchAtt::Preview);
            continue;
        }
        let simple = match upper.as_str() {
            "ENVELOPE" => Some(FetchAtt::Envelope),
            "FLAGS" => Some(FetchAtt::Flags),
            "INTERNALDATE" => Some(FetchAtt::InternalDate),
            "SAVEDATE" => Some(FetchAtt::SaveDate),
            "RFC822.SIZE" => Some(FetchAtt::Rfc822Size),
            "RFC822" => Some(FetchAtt::Rfc822),
            "RFC822.HEADER" => Some(FetchAtt::Rfc822Header),
            "RFC822.TEXT" => Some(FetchAtt::Rfc822Text),
            "BODY" => Some(FetchAtt::Body),
            "BODYSTRUCTURE" => Some(FetchAtt::BodyStructure),
            "UID" => Some(FetchAtt::Uid),
            "MODSEQ" => Some(FetchAtt::ModSeq),
            "EMAILID" => Some(FetchAtt::EmailId),
            "THREADID" => Some(FetchAtt::ThreadId),
            _ => None,
        };
        if let Some(att) = simple {
            out.push(att);
            continue;
        }
        let (kind, after) = upper
            .split_once('[')
            .ok_or_else(|| format!("unknown FETCH item: {name}"))?;
        // The lexer keeps `[...]` in one atom, HEADER.FIELDS list included.
        let (spec, tail) = after
            .rsplit_once(']')
            .ok_or_else(|| format!("invalid section in {name}"))?;
        let (spec, fields) = match spec.split_once(' ') {
            Some((spec, list)) => {
                let inner = list
                    .trim()
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or("invalid header field list")?;
                let fields: Vec<String> = inner
                    .split_ascii_whitespace()
                    .map(|f| f.trim_matches('"').to_string())
                    .collect();
                if fields.is_empty() {
                    return Err("empty header field list".into());
                }
                (spec.to_string(), Some(fields))
            }
            None => (spec.to_string(), None),
        };
        let partial = partial(tail)?;
        match kind {
            "BODY" | "BODY.PEEK" => out.push(FetchAtt::BodySection {
                peek: kind == "BODY.PEEK",
                section: section_spec(&spec, fields)?,
                partial,
            }),
            "BINARY" | "BINARY.PEEK" if fields.is_none() => out.push(FetchAtt::Binary {
                peek: kind == "BINARY.PEEK",
                part: part_numbers(&spec)?,
                partial,
            }),
            "BINARY.SIZE" if fields.is_none() && partial.is_none() => {
                out.push(FetchAtt::BinarySize {
                    part: part_numbers(&spec)?,
                })
            }
            _ => return Err(format!("unknown FETCH item: {name}")),
        }
    }
    if out.is_empty() {
        return Err("FETCH needs data items".into());
    }
    Ok((out, fetch_modifiers(rest)?))
}

fn fetch_modifiers(rest: &[Token<'_>]) -> Result<FetchModifiers, Bad> {
    let mut modifiers = FetchModifiers::default();
    match rest {
        [] => {}
        [Token::List(list)] => {
            let mut it = list.iter();
            while let Some(token) = it.next() {
                match atom(Some(token)).map(str::to_ascii_uppercase).as_deref() {
                    Some("CHANGEDSINCE") => {
                        let n = atom(it.next()).ok_or("CHANGEDSINCE needs a number")?;
                        modifiers.changed_since = Some(number(n, "CHANGEDSINCE")?);
                    }
                    Some("VANISHED") => modifiers.vanished = true,
                    _ => return Err("unknown FETCH modifier".into()),
                }
            }
            if modifiers.vanished && modifiers.changed_since.is_none() {
                return Err("VANISHED needs CHANGEDSINCE".into());
            }
        }
        _ => return Err("unexpected arguments after FETCH items".into()),
    }
    Ok(modifiers)
}

/// A system flag's bit, or `None` for a keyword.
pub fn system_flag(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "\\seen" => flags::SEEN,
        "\\answered" => flags::ANSWERED,
        "\\flagged" => flags::FLAGGED,
        "\\deleted" => flags::DELETED,
        "\\draft" => flags::DRAFT,
        _ => return None,
    })
}

/// A flag list: system flag bits and keywords (`\Recent` cannot be set: RFC 3501).
pub fn flag_list(tokens: &[Token<'_>]) -> Result<(u32, Vec<String>), Bad> {
    let mut bits = 0;
    let mut keywords: Vec<String> = Vec::new();
    for t in tokens {
        // `NIL` is an atom too (a keyword named NIL).
        let name = match t {
            Token::Atom(name) => name,
            Token::Nil => &"NIL",
            _ => return Err("a flag must be an atom".into()),
        };
        if let Some(bit) = system_flag(name) {
            bits |= bit;
        } else if name.starts_with('\\') {
            return Err(format!("{name} cannot be set"));
        } else if name.bytes().any(|b| b"(){%*\"\\]".contains(&b)) {
            return Err(format!("invalid keyword: {name}"));
        } else if !keywords.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            keywords.push((*name).to_string());
        }
    }
    Ok((bits, keywords))
}

/// STORE's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreArgs {
    pub set: SequenceSet,
    pub unchanged_since: Option<u64>,
    pub mode: StoreMode,
    pub silent: bool,
    pub flags: u32,
    pub keywords: Vec<String>,
}

pub fn store_args(args: &[Token<'_>]) -> Result<StoreArgs, Bad> {
    let set = SequenceSet::parse(atom(args.first()).ok_or("STORE needs a sequence set")?)?;
    let mut rest = args.get(1..).unwrap_or(&[]);
    let mut unchanged_since = None;
    if let Some(Token::List(modifiers)) = rest.first() {
        match modifiers.as_slice() {
            [Token::Atom(name), Token::Atom(n)] if name.eq_ignore_ascii_case("UNCHANGEDSINCE") => {
                unchanged_since = Some(number(n, "UNCHANGEDSINCE")?);
            }
            _ => return Err("unknown STORE modifier".into()),
        }
        rest = rest.get(1..).unwrap_or(&[]);
    }
    let item = atom(rest.first())
        .ok_or("STORE needs FLAGS, +FLAGS or -FLAGS")?
        .to_ascii_uppercase();
    let (mode, name) = match item.as_bytes().first() {
        Some(b'+') => (StoreMode::Add, item.get(1..).unwrap_or("")),
        Some(b'-') => (StoreMode::Remove, item.get(1..).unwrap_or("")),
        _ => (StoreMode::Replace, item.as_str()),
    };
    let silent = match name {
        "FLAGS" => false,
        "FLAGS.SILENT" => true,
        _ => return Err(format!("unknown STORE item: {item}")),
    };
    let flag_tokens: Vec<Token<'_>> = match rest.get(1..).unwrap_or(&[]) {
        [Token::List(list)] => list.clone(),
        more => more.to_vec(),
    };
    let (flags, keywords) = flag_list(&flag_tokens)?;
    Ok(StoreArgs {
        set,
        unchanged_since,
        mode,
        silent,
        flags,
        keywords,
    })
}

/// A SEARCH key (RFC 9051 §6.4.4, MODSEQ from RFC 7162).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Flag(u32, bool),
    Keyword(String, bool),
    /// `\Recent` as the session shows it (RECENT, and OLD as `Recent(false)`).
    Recent(bool),
    Header(String, String),
    Body(String),
    Text(String),
    /// Internal date compared by day: (`Before`/`On`/`Since`, day number).
    Date(DateCmp, i64),
    SentDate(DateCmp, i64),
    /// RFC 8514: the save date compared by day (a message without one never matches).
    SaveDate(DateCmp, i64),
    /// RFC 8514 SAVEDATESUPPORTED: the mailbox keeps save dates (every one here does).
    SaveDateSupported,
    Larger(u64),
    Smaller(u64),
    Uid(SequenceSet),
    Seq(SequenceSet),
    ModSeq(u64),
    /// RFC 8474: the message's EMAILID / THREADID.
    EmailId(String),
    ThreadId(String),
    /// RFC 5032 WITHIN: internal date more (`Older`) or less (`Younger`) than this
    /// many seconds before now.
    Older(u64),
    Younger(u64),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateCmp {
    Before,
    On,
    Since,
}

/// ESEARCH RETURN options (RFC 4731).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchReturn {
    /// `RETURN (...)` was given: answer with ESEARCH.
    pub extended: bool,
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    /// SAVE (RFC 5182): keep the result as `$`.
    pub save: bool,
    /// PARTIAL (RFC 5267 §4.4, RFC 9394): the results at these positions, 1-based
    /// and inclusive; negative counts from the last (-1 is the last).
    pub partial: Option<(i64, i64)>,
    /// UPDATE (RFC 5267 §4.3): keep the result live and report changes to it.
    pub update: bool,
}

/// Parses a PARTIAL range: `a:b` (from the first) or `-a:-b` (from the last).
fn partial_range(text: &str) -> Result<(i64, i64), Bad> {
    let bad = || format!("PARTIAL takes a range such as 1:100 or -1:-100, not {text}");
    let (a, b) = text.split_once(':').ok_or_else(bad)?;
    let (a, b): (i64, i64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || b == 0 || (a < 0) != (b < 0) || a.unsigned_abs() > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(if a.abs() <= b.abs() { (a, b) } else { (b, a) })
}

/// ` PARTIAL (range set)` (or `NIL` for no results there), as ESEARCH returns it.
pub fn partial_reply(results: &[u32], range: (i64, i64)) -> String {
    let picked = partial_of(results, range);
    let set = if picked.is_empty() {
        "NIL".to_string()
    } else {
        SequenceSet::compact(picked)
    };
    format!(" PARTIAL ({}:{} {set})", range.0, range.1)
}

/// The results a PARTIAL range selects, in the order given.
pub fn partial_of<T>(results: &[T], (a, b): (i64, i64)) -> &[T] {
    let n = results.len() as i64;
    let (start, end) = if a > 0 {
        (a - 1, b)
    } else {
        (n + b, n + a + 1) // -1:-3 is the last three
    };
    let (start, end) = (start.clamp(0, n) as usize, end.clamp(0, n) as usize);
    results.get(start..end.max(start)).unwrap_or(&[])
}

impl SearchReturn {
    /// `RETURN (SAVE)` alone: the result is kept, and no ESEARCH is sent.
    pub fn save_only(&self) -> bool {
        self.save && !(self.min || self.max || self.all || self.count)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchArgs {
    pub ret: SearchReturn,
    pub key: SearchKey,
    /// A CHARSET was given (refused once UTF8=ACCEPT is on, RFC 6855 §3).
    pub charset: bool,
}

/// Parses `SEARCH [RETURN (...)] [CHARSET x] keys...`.
pub fn search_args(args: &[Token<'_>]) -> Result<SearchArgs, Bad> {
    let (ret, rest) = return_options(args)?;
    search_keys(ret, rest)
}

/// `[RETURN (options)]` (RFC 4731, RFC 5182 SAVE, RFC 5267 for SORT) and what
/// follows it.
pub fn return_options<'a, 't>(
    args: &'a [Token<'t>],
) -> Result<(SearchReturn, &'a [Token<'t>]), Bad> {
    let mut rest = args;
    let mut ret = SearchReturn::default();
    if atom(rest.first()).is_some_and(|a| a.eq_ignore_ascii_case("RETURN")) {
        let Some(Token::List(options)) = rest.get(1) else {
            return Err("RETURN needs a list".into());
        };
        ret.extended = true;
        let mut it = options.iter();
        while let Some(o) = it.next() {
            match atom(Some(o)).map(str::to_ascii_uppercase).as_deref() {
                Some("MIN") => ret.min = true,
                Some("MAX") => ret.max = true,
                Some("ALL") => ret.all = true,
                Some("COUNT") => ret.count = true,
                Some("SAVE") => ret.save = true,
                Some("UPDATE") => ret.update = true,
                // CONTEXT is a hint that updates may follow (RFC 5267 §4.2).
                Some("CONTEXT") => {}
                Some("PARTIAL") => {
                    let range = it
                        .next()
                        .and_then(Token::as_str)
                        .ok_or("PARTIAL needs a range")?;
                    ret.partial = Some(partial_range(&range)?);
                }
                _ => return Err("unknown RETURN option".into()),
            }
        }
        if !(ret.min || ret.max || ret.count || ret.save || ret.partial.is_some()) {
            ret.all = true; // RETURN () means ALL
        }
        rest = rest.get(2..).unwrap_or(&[]);
    }
    Ok((ret, rest))
}

/// Parses what SEARCH and SORT take after RETURN (their charset and keys).
pub fn search_keys(ret: SearchReturn, rest: &[Token<'_>]) -> Result<SearchArgs, Bad> {
    let mut rest = rest;
    let charset = atom(rest.first()).is_some_and(|a| a.eq_ignore_ascii_case("CHARSET"));
    if charset {
        let charset = rest
            .get(1)
            .and_then(Token::as_str)
            .ok_or("CHARSET needs a name")?;
        if !charset.eq_ignore_ascii_case("UTF-8") && !charset.eq_ignore_ascii_case("US-ASCII") {
            return Err(format!(
                "[BADCHARSET (UTF-8 US-ASCII)] {charset} is not supported"
            ));
        }
        rest = rest.get(2..).unwrap_or(&[]);
    }
    let mut it = rest.iter();
    let mut keys = Vec::new();
    while let Some(k) = search_key(&mut it, 0)? {
        keys.push(k);
    }
    if keys.is_empty() {
        return Err("SEARCH needs a search key".into());
    }
    let key = if keys.len() == 1 {
        keys.pop().unwrap_or(SearchKey::All)
    } else {
        SearchKey::And(keys)
    };
    Ok(SearchArgs { ret, key, charset })
}

const SEARCH_DEPTH_MAX: usize = 32;

// Longer than ~80 lines: one arm per SEARCH key of the grammar, kept together as the grammar is.
fn search_key<'a, 'b>(
    it: &mut std::slice::Iter<'b, Token<'a>>,
    depth: usize,
) -> Result<Option<SearchKey>, Bad> {
    if depth > SEARCH_DEPTH_MAX {
        return Err("search keys nested too deeply".into());
    }
    let Some(token) = it.next() else {
        return Ok(None);
    };
    let name = match token {
        Token::List(inner) => {
            let mut inner_it = inner.iter();
            let mut keys = Vec::new();
            while let Some(k) = search_key(&mut inner_it, depth + 1)? {
                keys.push(k);
            }
            if keys.is_empty() {
                return Err("empty search key list".into());
            }
            return Ok(Some(SearchKey::And(keys)));
        }
        Token::Atom(a) => a.to_ascii_uppercase(),
        _ => return Err("invalid search key".into()),
    };
    let mut string = |what: &str| -> Result<String, Bad> {
        it.next()
            .and_then(Token::as_str)
            .map(|s| s.into_owned())
            .ok_or_else(|| format!("{what} needs an argument"))
    };
    let key = match name.as_str() {
        "ALL" => SearchKey::All,
        "ANSWERED" => SearchKey::Flag(flags::ANSWERED, true),
        "DELETED" => SearchKey::Flag(flags::DELETED, true),
        "DRAFT" => SearchKey::Flag(flags::DRAFT, true),
        "FLAGGED" => SearchKey::Flag(flags::FLAGGED, true),
        "SEEN" => SearchKey::Flag(flags::SEEN, true),
        "UNANSWERED" => SearchKey::Flag(flags::ANSWERED, false),
        "UNDELETED" => SearchKey::Flag(flags::DELETED, false),
        "UNDRAFT" => SearchKey::Flag(flags::DRAFT, false),
        "UNFLAGGED" => SearchKey::Flag(flags::FLAGGED, false),
        "UNSEEN" => SearchKey::Flag(flags::SEEN, false),
        "RECENT" => SearchKey::Recent(true),
        // RFC 3501 §6.4.4: NEW is RECENT UNSEEN.
        "NEW" => SearchKey::And(vec![
            SearchKey::Recent(true),
            SearchKey::Flag(flags::SEEN, false),
        ]),
        "OLD" => SearchKey::Recent(false),
        "KEYWORD" => SearchKey::Keyword(string("KEYWORD")?, true),
        "UNKEYWORD" => SearchKey::Keyword(string("UNKEYWORD")?, false),
        "BCC" | "CC" | "FROM" | "SUBJECT" | "TO" => SearchKey::Header(name.clone(), string(&name)?),
        "HEADER" => {
            let field = string("HEADER")?.to_ascii_uppercase();
            SearchKey::Header(field, string("HEADER")?)
        }
        "BODY" => SearchKey::Body(string("BODY")?),
        "TEXT" => SearchKey::Text(string("TEXT")?),
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" | "SAVEDBEFORE"
        | "SAVEDON" | "SAVEDSINCE" => {
            let day = parse_date(&string(&name)?)?;
            let cmp = match name.trim_start_matches("SENT").trim_start_matches("SAVED") {
                "BEFORE" => DateCmp::Before,
                "ON" => DateCmp::On,
                _ => DateCmp::Since,
            };
            if name.starts_with("SENT") {
                SearchKey::SentDate(cmp, day)
            } else if name.starts_with("SAVED") {
                SearchKey::SaveDate(cmp, day)
            } else {
                SearchKey::Date(cmp, day)
            }
        }
        "SAVEDATESUPPORTED" => SearchKey::SaveDateSupported,
        "LARGER" => SearchKey::Larger(number(&string("LARGER")?, "LARGER")?),
        "SMALLER" => SearchKey::Smaller(number(&string("SMALLER")?, "SMALLER")?),
        "UID" => SearchKey::Uid(SequenceSet::parse(&string("UID")?)?),
        "EMAILID" => SearchKey::EmailId(string("EMAILID")?),
        "THREADID" => SearchKey::ThreadId(string("THREADID")?),
        "OLDER" => SearchKey::Older(number(&string("OLDER")?, "OLDER")?),
        "YOUNGER" => SearchKey::Younger(number(&string("YOUNGER")?, "YOUNGER")?),
        "MODSEQ" => {
            // MODSEQ [entry-name entry-type] n
            let first = string("MODSEQ")?;
            let n = if first.starts_with('"') || first.starts_with("/flags/") {
                string("MODSEQ")?;
                string("MODSEQ")?
            } else if first.bytes().all(|b| b.is_ascii_digit()) {
                first
            } else {
                string("MODSEQ")?;
                string("MODSEQ")?
            };
            SearchKey::ModSeq(number(&n, "MODSEQ")?)
        }
        "NOT" => match search_key(it, depth + 1)? {
            Some(k) => SearchKey::Not(Box::new(k)),
            None => return Err("NOT needs a search key".into()),
        },
        "OR" => {
            let a = search_key(it, depth + 1)?.ok_or("OR needs two search keys")?;
            let b = search_key(it, depth + 1)?.ok_or("OR needs two search keys")?;
            SearchKey::Or(Box::new(a), Box::new(b))
        }
        _ if name.starts_with(|c: char| c.is_ascii_digit() || c == '*' || c == '$') => {
            SearchKey::Seq(SequenceSet::parse(&name)?)
        }
        _ => return Err(format!("unknown search key: {name}")),
    };
    Ok(Some(key))
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Days from 1970-01-01 to a civil date (inverse of `civil_from_days`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `d-Mon-yyyy` (SEARCH dates) to a day number.
pub fn parse_date(text: &str) -> Result<i64, Bad> {
    let bad = || format!("invalid date: {text}");
    let mut parts = text.trim_matches('"').split('-');
    let (Some(d), Some(m), Some(y), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let d: u32 = d.parse().map_err(|_| bad())?;
    let m = MONTHS
        .iter()
        .position(|n| n.eq_ignore_ascii_case(m))
        .ok_or_else(bad)? as u32
        + 1;
    let y: i64 = y.parse().map_err(|_| bad())?;
    if !(1..=31).contains(&d) || !(1..=9999).contains(&y) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d))
}

/// APPEND's date-time `dd-Mon-yyyy hh:mm:ss +zzzz` to seconds since the epoch.
pub fn parse_date_time(text: &str) -> Result<i64, Bad> {
    let bad = || format!("invalid date-time: {text}");
    let mut fields = text.trim().split(' ');
    let (Some(date), Some(time), Some(zone), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let day = parse_date(date)?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|n| n.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [h, mi, s] = hms.as_slice() else {
        return Err(bad());
    };
    let (sign, digits) = match zone.as_bytes().first() {
        Some(b'+') => (1, zone.get(1..).unwrap_or("")),
        Some(b'-') => (-1, zone.get(1..).unwrap_or("")),
        _ => return Err(bad()),
    };
    let z: i64 = number(digits, "a time zone")?;
    if digits.len() != 4 || *h > 23 || *mi > 59 || *s > 60 {
        return Err(bad());
    }
    let offset = sign * ((z / 100) * 3600 + (z % 100) * 60);
    Ok(day * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// STATUS data items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    /// RFC 9208: bytes of the messages marked `\Deleted`.
    DeletedStorage,
    Size,
    HighestModSeq,
    Recent,
    /// RFC 8474.
    MailboxId,
}

pub fn status_items(tokens: &[Token<'_>]) -> Result<Vec<StatusItem>, Bad> {
    let mut items = Vec::new();
    for t in tokens {
        let item = match atom(Some(t)).map(str::to_ascii_uppercase).as_deref() {
            Some("MESSAGES") => StatusItem::Messages,
            Some("UIDNEXT") => StatusItem::UidNext,
            Some("UIDVALIDITY") => StatusItem::UidValidity,
            Some("UNSEEN") => StatusItem::Unseen,
            Some("DELETED") => StatusItem::Deleted,
            Some("DELETED-STORAGE") => StatusItem::DeletedStorage,
            Some("SIZE") => StatusItem::Size,
            Some("HIGHESTMODSEQ") => StatusItem::HighestModSeq,
            Some("RECENT") => StatusItem::Recent,
            Some("MAILBOXID") => StatusItem::MailboxId,
            _ => return Err("unknown STATUS item".into()),
        };
        items.push(item);
    }
    if items.is_empty() {
        return Err("STATUS needs items".into());
    }
    Ok(items)
}

/// LIST's options (RFC 5258, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListArgs {
    pub reference: String,
    pub patterns: Vec<String>,
    pub subscribed_only: bool,
    pub recursive_match: bool,
    pub special_use_only: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    pub return_status: Option<Vec<StatusItem>>,
    /// Any extended syntax was used (answer with extended data).
    pub extended: bool,
}

pub fn list_args(args: &[Token<'_>]) -> Result<ListArgs, Bad> {
    let mut list = ListArgs::default();
    let mut rest = args;
    if let Some(Token::List(selection)) = rest.first() {
        list.extended = true;
        for s in selection {
            match atom(Some(s)).map(str::to_ascii_uppercase).as_deref() {
                Some("SUBSCRIBED") => list.subscribed_only = true,
                Some("REMOTE") => {}
                Some("RECURSIVEMATCH") => list.recursive_match = true,
                Some("SPECIAL-USE") => list.special_use_only = true,
                _ => return Err("unknown LIST selection option".into()),
            }
        }
        if list.recursive_match && !list.subscribed_only {
            return Err("RECURSIVEMATCH needs another selection option".into());
        }
        rest = rest.get(1..).unwrap_or(&[]);
    }
    list.reference = rest
        .first()
        .and_then(mailbox_text)
        .ok_or("LIST needs a reference name")?;
    list.patterns = match rest.get(1) {
        Some(Token::List(patterns)) => {
            list.extended = true;
            patterns
                .iter()
                .map(mailbox_text)
                .collect::<Option<Vec<_>>>()
                .ok_or("invalid mailbox pattern")?
        }
        Some(t) => vec![mailbox_text(t).ok_or("invalid mailbox pattern")?],
        None => return Err("LIST needs a mailbox pattern".into()),
    };
    rest = rest.get(2..).unwrap_or(&[]);
    if !rest.is_empty() {
        if !atom(rest.first()).is_some_and(|a| a.eq_ignore_ascii_case("RETURN")) {
            return Err("unexpected LIST arguments".into());
        }
        let Some(Token::List(options)) = rest.get(1) else {
            return Err("RETURN needs a list".into());
        };
        list.extended = true;
        let mut it = options.iter();
        while let Some(o) = it.next() {
            match atom(Some(o)).map(str::to_ascii_uppercase).as_deref() {
                Some("SUBSCRIBED") => list.return_subscribed = true,
                Some("CHILDREN") => list.return_children = true,
                Some("SPECIAL-USE") => list.return_special_use = true,
                Some("STATUS") => {
                    let Some(Token::List(items)) = it.next() else {
                        return Err("STATUS needs a list of items".into());
                    };
                    list.return_status = Some(status_items(items)?);
                }
                _ => return Err("unknown LIST return option".into()),
            }
        }
    }
    Ok(list)
}

/// A mailbox name argument (astring; `NIL` is not one, but `""` is).
pub fn mailbox_text(token: &Token<'_>) -> Option<String> {
    match token {
        Token::Nil => Some("NIL".into()),
        t => t.as_str().map(|s| s.into_owned()),
    }
}

/// SELECT/EXAMINE parameters (RFC 7162).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectArgs {
    pub mailbox: String,
    pub condstore: bool,
    pub qresync: Option<Qresync>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qresync {
    pub uidvalidity: u32,
    pub modseq: u64,
    pub known_uids: Option<SequenceSet>,
}

pub fn select_args(args: &[Token<'_>]) -> Result<SelectArgs, Bad> {
    let mailbox = args
        .first()
        .and_then(mailbox_text)
        .ok_or("SELECT needs a mailbox name")?;
    let mut out = SelectArgs {
        mailbox,
        ..SelectArgs::default()
    };
    match args.get(1..).unwrap_or(&[]) {
        [] => {}
        [Token::List(params)] => {
            let mut it = params.iter();
            while let Some(p) = it.next() {
                match atom(Some(p)).map(str::to_ascii_uppercase).as_deref() {
                    Some("CONDSTORE") => out.condstore = true,
                    Some("QRESYNC") => {
                        let Some(Token::List(q)) = it.next() else {
                            return Err("QRESYNC needs parameters".into());
                        };
                        let uidvalidity = number(
                            atom(q.first()).ok_or("QRESYNC needs a UIDVALIDITY")?,
                            "UIDVALIDITY",
                        )?;
                        let modseq =
                            number(atom(q.get(1)).ok_or("QRESYNC needs a MODSEQ")?, "MODSEQ")?;
                        let known_uids = match atom(q.get(2)) {
                            Some(set) => Some(SequenceSet::parse(set)?),
                            None => None,
                        };
                        out.qresync = Some(Qresync {
                            uidvalidity,
                            modseq,
                            known_uids,
                        });
                    }
                    _ => return Err("unknown SELECT parameter".into()),
                }
            }
        }
        _ => return Err("unexpected SELECT arguments".into()),
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::proto::imap::lexer::tokenize;

    fn args(line: &str) -> Vec<Token<'static>> {
        let leaked: &'static [u8] =
            Box::leak(format!("a X {line}\r\n").into_bytes().into_boxed_slice());
        tokenize(leaked, 16).unwrap().args
    }

    #[test]
    fn sequence_sets() {
        let s = SequenceSet::parse("1:3,7,9:*").unwrap();
        assert!(s.contains(2, 20) && s.contains(7, 20) && s.contains(20, 20));
        assert!(!s.contains(8, 20));
        assert!(SequenceSet::parse("0").is_err() && SequenceSet::parse("1,,2").is_err());
        assert_eq!(SequenceSet::compact(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
    }

    #[test]
    fn fetch_items_parse() {
        let (items, m) = fetch_items(&args(
            "(UID BODY.PEEK[HEADER.FIELDS (Subject From)]<0.100> BODY[1.MIME] BINARY[2] MODSEQ) (CHANGEDSINCE 5 VANISHED)",
        ))
        .unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(
            items[1],
            FetchAtt::BodySection {
                peek: true,
                section: Section {
                    part: vec![],
                    text: Some(SectionText::HeaderFields {
                        not: false,
                        fields: vec!["SUBJECT".into(), "FROM".into()]
                    })
                },
                partial: Some((0, 100))
            }
        );
        assert_eq!(m.changed_since, Some(5));
        assert!(m.vanished);
        assert_eq!(fetch_items(&args("FAST")).unwrap().0.len(), 3);
        assert_eq!(fetch_items(&args("BODY[]")).unwrap().0.len(), 1);
        assert!(fetch_items(&args("(BODY[HEADER.FIELDS ()])")).is_err());
        assert!(fetch_items(&args("(BOGUS)")).is_err());
        assert!(fetch_items(&args("BODY.PEEK[HEADER.FIELDS (DATE)]")).is_ok());
    }

    #[test]
    fn search_keys() {
        let s = search_args(&args(
            "RETURN (MIN COUNT) CHARSET UTF-8 OR FROM alice (UNSEEN LARGER 10) NOT 1:3",
        ))
        .unwrap();
        assert!(s.ret.extended && s.ret.min && s.ret.count && !s.ret.all);
        let SearchKey::And(keys) = s.key else {
            panic!()
        };
        assert_eq!(keys.len(), 2);
        assert!(search_args(&args("CHARSET KOI8-R FROM x"))
            .unwrap_err()
            .contains("BADCHARSET"));
        assert!(search_args(&args("SINCE 1-Feb-2024")).is_ok());
        assert!(search_args(&args("SINCE 31-Foo-2024")).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1-Jan-1970").unwrap(), 0);
        assert_eq!(parse_date_time("01-Jan-1970 01:00:00 +0100").unwrap(), 0);
        assert_eq!(parse_date("29-Feb-2000").unwrap(), 11_016);
    }

    #[test]
    fn store_and_list() {
        let s = store_args(&args(
            "1:* (UNCHANGEDSINCE 9) +FLAGS.SILENT (\\Seen $Forwarded)",
        ))
        .unwrap();
        assert_eq!(s.mode, StoreMode::Add);
        assert!(s.silent);
        assert_eq!(s.unchanged_since, Some(9));
        assert_eq!(s.keywords, vec!["$Forwarded".to_string()]);
        assert!(store_args(&args("1 FLAGS (\\Recent)")).is_err());
        let l = list_args(&args(
            "(SUBSCRIBED) \"\" (INBOX \"Sent*\") RETURN (CHILDREN STATUS (MESSAGES))",
        ))
        .unwrap();
        assert!(l.subscribed_only && l.return_children);
        assert_eq!(l.patterns.len(), 2);
        let q = select_args(&args(
            "INBOX (QRESYNC (67890007 20050715194045000 41,43:211))",
        ))
        .unwrap();
        assert_eq!(q.qresync.unwrap().uidvalidity, 67_890_007);
    }
}
