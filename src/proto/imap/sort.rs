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
pub fn thread_algorithm(token: Option<&Token<'_>>) -> Result<Algorithm, Bad> {
    match token
        .and_then(Token::as_str)
        .map(|s| s.to_ascii_uppercase())
        .as_deref()
    {
        Some("ORDEREDSUBJECT") => Ok(Algorithm::OrderedSubject),
        Some("REFERENCES") => Ok(Algorithm::References),
        Some(other) => Err(format!(
            "THREAD algorithm {other} is not supported (ORDEREDSUBJECT and REFERENCES are)"
        )),
        None => Err("THREAD needs an algorithm".into()),
    }
}

/// A THREAD algorithm (RFC 5256 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    OrderedSubject,
    References,
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

/// One message as THREAD=REFERENCES sees it (RFC 5256 §4).
#[derive(Debug, Clone)]
pub struct Referencing {
    pub number: u32,
    /// Its Message-ID, normalised (`<…>` contents), if it has one.
    pub id: Option<String>,
    /// References (or, failing that, the first In-Reply-To id), oldest first.
    pub references: Vec<String>,
    /// Base subject, and whether the subject had a reply or forward leader.
    pub subject: String,
    pub is_reply: bool,
    pub date: i64,
}

/// The message ids in a References or In-Reply-To value, `<…>` contents in order.
pub fn message_ids(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(start) = rest.find('<') {
        let Some(after) = rest.get(start + 1..) else {
            break;
        };
        let Some(end) = after.find('>') else { break };
        let id: String = after.get(..end).unwrap_or("").split_whitespace().collect();
        if !id.is_empty() {
            out.push(id);
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

/// Whether a raw subject starts with a reply/forward leader (before base-subject
/// extraction strips it): the "reply or forward" test of RFC 5256 §4 step 5.
pub fn is_reply(raw: &str) -> bool {
    let decoded = super::search::decoded_header(raw);
    let trimmed = decoded.trim_start();
    strip_leader(trimmed) != trimmed || trimmed.to_ascii_lowercase().starts_with("[fwd:")
}

/// A node of the thread forest: a message, or a dummy standing for one that is
/// referenced but not in the result.
#[derive(Debug, Default, Clone)]
struct Node {
    message: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

/// THREAD=REFERENCES (RFC 5256 §4): parent/child links from References and
/// In-Reply-To, dummies pruned, roots with the same base subject gathered, siblings
/// and threads ordered by sent date.
pub fn references(messages: &[Referencing]) -> String {
    let mut nodes = link_messages(messages);
    // (2) Roots; (4) dummies pruned.
    let roots: Vec<usize> = (0..nodes.len())
        .filter(|&n| nodes.get(n).is_some_and(|x| x.parent.is_none()))
        .collect();
    let top = prune(&mut nodes, &roots);
    let mut gathered = gather_by_subject(&mut nodes, messages, top);
    clean_children(&mut nodes);
    // (6) Ordered by date; a dummy takes its first child's.
    sort_children(&mut nodes, messages, &gathered);
    gathered.sort_by_key(|&g| first_date(&nodes, messages, g));
    let mut out = String::new();
    for g in gathered {
        out.push('(');
        render_chain(&nodes, messages, g, &mut out);
        out.push(')');
    }
    out
}

/// RFC 5256 §4 step 1: a node per message and per referenced id, links between
/// consecutive references, each message under its last reference (no loops).
fn link_messages(messages: &[Referencing]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut by_id: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut node_for = |id: &str, nodes: &mut Vec<Node>| -> usize {
        *by_id.entry(id.to_string()).or_insert_with(|| {
            nodes.push(Node::default());
            nodes.len() - 1
        })
    };
    // (1) Containers, links between consecutive references, the message's parent.
    for (i, m) in messages.iter().enumerate() {
        let node = match &m.id {
            Some(id) => {
                let n = node_for(id, &mut nodes);
                if nodes.get(n).is_some_and(|x| x.message.is_some()) {
                    // A duplicate Message-ID: this one gets a container of its own.
                    nodes.push(Node::default());
                    nodes.len() - 1
                } else {
                    n
                }
            }
            None => {
                nodes.push(Node::default());
                nodes.len() - 1
            }
        };
        if let Some(x) = nodes.get_mut(node) {
            x.message = Some(i);
        }
        let skip = m.references.len().saturating_sub(REFERENCES_MAX);
        let refs: Vec<usize> = m
            .references
            .iter()
            .skip(skip)
            .map(|r| node_for(r, &mut nodes))
            .collect();
        for pair in refs.windows(2) {
            if let [a, b] = *pair {
                if nodes.get(b).is_some_and(|x| x.parent.is_none()) && !reaches(&nodes, b, a) {
                    link(&mut nodes, a, b);
                }
            }
        }
        // The message's parent is its last reference (replacing any link made from
        // another message's references), unless that would make a loop.
        unlink(&mut nodes, node);
        if let Some(&last) = refs.last() {
            if last != node && !reaches(&nodes, node, last) {
                link(&mut nodes, last, node);
            }
        }
    }
    nodes
}

/// RFC 5256 §4 step 5: roots with the same base subject gathered under one (the
/// non-reply, or a dummy), or under a new dummy holding both.
fn gather_by_subject(
    nodes: &mut Vec<Node>,
    messages: &[Referencing],
    top: Vec<usize>,
) -> Vec<usize> {
    // (5) Roots gathered by base subject.
    let subject_of = |nodes: &[Node], n: usize| subject_of(nodes, messages, n);
    let mut table: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for &r in &top {
        let Some((subject, reply)) = subject_of(nodes, r) else {
            continue;
        };
        if subject.is_empty() {
            continue;
        }
        let dummy = nodes.get(r).is_some_and(|x| x.message.is_none());
        match table.get(subject).copied() {
            None => {
                table.insert(subject, r);
            }
            Some(old) => {
                let old_dummy = nodes.get(old).is_some_and(|x| x.message.is_none());
                let old_reply = subject_of(nodes, old).is_some_and(|s| s.1);
                if (dummy && !old_dummy) || (old_reply && !reply) {
                    table.insert(subject, r);
                }
            }
        }
    }
    let mut gathered: Vec<usize> = Vec::new();
    for r in top {
        gathered.push(r);
        let entry = subject_of(nodes, r)
            .filter(|(s, _)| !s.is_empty())
            .and_then(|(s, _)| table.get(s).copied().map(|k| (s, k)));
        let Some((subject, keep)) = entry.filter(|&(_, k)| k != r) else {
            continue;
        };
        if nodes.get(keep).is_some_and(|x| x.parent.is_some()) {
            continue; // already gathered under another
        }
        let dummy = |n: usize| nodes.get(n).is_some_and(|x| x.message.is_none());
        let reply = |n: usize| subject_of(nodes, n).is_some_and(|s| s.1);
        let (keep_dummy, this_dummy) = (dummy(keep), dummy(r));
        let (keep_reply, this_reply) = (reply(keep), reply(r));
        if keep_dummy && this_dummy {
            let kids = nodes.get(r).map(|x| x.children.clone()).unwrap_or_default();
            for k in kids {
                link(nodes, keep, k);
            }
        } else if keep_dummy {
            link(nodes, keep, r);
        } else if this_dummy {
            link(nodes, r, keep);
            table.insert(subject, r);
        } else if !keep_reply && this_reply {
            link(nodes, keep, r);
        } else {
            // Neither holds the other: a new dummy holds both.
            nodes.push(Node::default());
            let holder = nodes.len() - 1;
            link(nodes, holder, keep);
            link(nodes, holder, r);
            gathered.push(holder);
            table.insert(subject, holder);
        }
    }
    gathered.dedup();
    gathered.retain(|&g| nodes.get(g).is_some_and(|x| x.parent.is_none()));
    gathered
}

/// A node's base subject and whether it is a reply: its message's, or for a dummy
/// its first child's.
fn subject_of<'m>(
    nodes: &[Node],
    messages: &'m [Referencing],
    n: usize,
) -> Option<(&'m str, bool)> {
    let x = nodes.get(n)?;
    let m = x
        .message
        .or_else(|| x.children.first().and_then(|c| nodes.get(*c)?.message))?;
    let m = messages.get(m)?;
    Some((m.subject.as_str(), m.is_reply))
}

fn link(nodes: &mut [Node], parent: usize, child: usize) {
    unlink(nodes, child);
    if let Some(c) = nodes.get_mut(child) {
        c.parent = Some(parent);
    }
    if let Some(p) = nodes.get_mut(parent) {
        p.children.push(child);
    }
}

/// Detaches `child` from its parent. Lazily: the parent's list keeps a stale entry
/// (its `parent` no longer points back), which [`live_children`] skips — removing
/// it here would cost the parent's width on every re-parenting.
fn unlink(nodes: &mut [Node], child: usize) {
    if let Some(c) = nodes.get_mut(child) {
        c.parent = None;
    }
}

/// The children of `n` that are really its children (see [`unlink`]), each once.
fn live_children(nodes: &[Node], n: usize, seen: &mut [bool]) -> Vec<usize> {
    let Some(x) = nodes.get(n) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(x.children.len());
    for &c in &x.children {
        let live = nodes.get(c).is_some_and(|y| y.parent == Some(n));
        if live && seen.get(c) == Some(&false) {
            if let Some(flag) = seen.get_mut(c) {
                *flag = true;
            }
            out.push(c);
        }
    }
    out
}

/// Drops the stale entries [`unlink`] left, everywhere (after the last re-linking).
fn clean_children(nodes: &mut [Node]) {
    let mut seen = vec![false; nodes.len()];
    for n in 0..nodes.len() {
        let live = live_children(nodes, n, &mut seen);
        if let Some(x) = nodes.get_mut(n) {
            x.children = live;
        }
    }
}

/// Whether `from` is `to` or one of `to`'s ancestors: linking `to` as the parent of
/// `from` would then make a loop.
///
/// Only a node with children can be an ancestor, so a leaf is answered at once;
/// otherwise the walk up from `to` stops after [`THREAD_DEPTH_MAX`] steps and says
/// "loop": a crafted mailbox cannot make each link cost the depth of a long chain
/// (the message then starts its own thread, gathered by subject).
fn reaches(nodes: &[Node], from: usize, to: usize) -> bool {
    if from != to && nodes.get(from).is_some_and(|x| x.children.is_empty()) {
        return false;
    }
    let mut cur = Some(to);
    for _ in 0..THREAD_DEPTH_MAX {
        let Some(n) = cur else { return false };
        if n == from {
            return true;
        }
        cur = nodes.get(n).and_then(|x| x.parent);
    }
    true
}

/// How far up a thread a loop check looks (see [`reaches`]).
const THREAD_DEPTH_MAX: usize = 256;
/// References kept per message: the last ones, its nearest ancestors (a header
/// with thousands of ids must not cost thousands of links).
pub const REFERENCES_MAX: usize = 256;

/// RFC 5256 §4 step 4 over the trees under `roots`: dummies without children go,
/// a dummy's children take its place — except a root dummy with several children,
/// which stays. Returns what is left at the top. Iterative (an explicit post-order
/// stack): a chain of a hundred thousand replies must not exhaust the thread's stack.
fn prune(nodes: &mut [Node], roots: &[usize]) -> Vec<usize> {
    let mut lifted: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    clean_children(nodes);
    let mut top = Vec::new();
    for &root in roots {
        let mut stack = vec![(root, false)];
        while let Some((n, children_done)) = stack.pop() {
            if !children_done {
                stack.push((n, true));
                let children = nodes.get(n).map(|x| x.children.clone()).unwrap_or_default();
                stack.extend(children.into_iter().rev().map(|c| (c, false)));
                continue;
            }
            let children = nodes
                .get_mut(n)
                .map(|x| std::mem::take(&mut x.children))
                .unwrap_or_default();
            let mut kept = Vec::new();
            for c in children {
                kept.extend(lifted.get_mut(c).map(std::mem::take).unwrap_or_default());
            }
            let dummy = nodes.get(n).is_some_and(|x| x.message.is_none());
            let stays = !dummy || (n == root && kept.len() > 1);
            for &k in &kept {
                if let Some(x) = nodes.get_mut(k) {
                    x.parent = stays.then_some(n);
                }
            }
            let result = if stays {
                if let Some(x) = nodes.get_mut(n) {
                    x.children = kept;
                }
                vec![n]
            } else {
                kept
            };
            if let Some(slot) = lifted.get_mut(n) {
                *slot = result;
            }
        }
        top.extend(lifted.get_mut(root).map(std::mem::take).unwrap_or_default());
    }
    top
}

/// The sent date (and number) a node sorts by: its message's, or for a dummy its
/// first child's.
fn first_date(nodes: &[Node], messages: &[Referencing], n: usize) -> (i64, u32) {
    let mut cur = n;
    for _ in 0..=nodes.len() {
        let Some(x) = nodes.get(cur) else { break };
        if let Some(m) = x.message.and_then(|m| messages.get(m)) {
            return (m.date, m.number);
        }
        match x.children.first() {
            Some(&c) => cur = c,
            None => break,
        }
    }
    (0, 0)
}

/// Orders every node's children under `from` by date.
fn sort_children(nodes: &mut [Node], messages: &[Referencing], from: &[usize]) {
    let mut stack: Vec<usize> = from.to_vec();
    while let Some(n) = stack.pop() {
        let mut kids = nodes
            .get_mut(n)
            .map(|x| std::mem::take(&mut x.children))
            .unwrap_or_default();
        stack.extend(kids.iter().copied());
        // Children first, so a dummy's date is that of its earliest child.
        kids.sort_by_key(|&k| first_date(nodes, messages, k));
        if let Some(x) = nodes.get_mut(n) {
            x.children = kids;
        }
    }
}

/// `n (a)(b)` or `n m …`: a single child continues the chain, several are each
/// parenthesised; a dummy prints only its children. Iterative, like [`prune`].
fn render_chain(nodes: &[Node], messages: &[Referencing], root: usize, out: &mut String) {
    use std::fmt::Write as _;
    enum Work {
        Chain(usize),
        Text(char),
    }
    let mut stack = vec![Work::Chain(root)];
    while let Some(work) = stack.pop() {
        let mut cur = match work {
            Work::Text(c) => {
                out.push(c);
                continue;
            }
            Work::Chain(n) => n,
        };
        let mut first = true;
        while let Some(x) = nodes.get(cur) {
            if let Some(m) = x.message.and_then(|m| messages.get(m)) {
                if !first {
                    out.push(' ');
                }
                let _ = write!(out, "{}", m.number);
                first = false;
            }
            match x.children.as_slice() {
                [] => break,
                [only] if x.message.is_some() || first => cur = *only,
                many => {
                    if !first {
                        out.push(' ');
                    }
                    for &c in many.iter().rev() {
                        stack.push(Work::Text(')'));
                        stack.push(Work::Chain(c));
                        stack.push(Work::Text('('));
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod references_tests {
    use super::*;

    fn m(number: u32, id: &str, refs: &[&str], subject: &str, date: i64) -> Referencing {
        Referencing {
            number,
            id: Some(id.to_string()),
            references: refs.iter().map(|r| r.to_string()).collect(),
            subject: base_subject(subject),
            is_reply: is_reply(subject),
            date,
        }
    }

    #[test]
    fn replies_hang_under_what_they_reference() {
        let threads = references(&[
            m(1, "a", &[], "hello", 10),
            m(2, "b", &["a"], "Re: hello", 20),
            m(3, "c", &["a", "b"], "Re: hello", 30),
            m(4, "d", &["a"], "Re: hello", 25),
            m(5, "e", &[], "other", 5),
        ]);
        assert_eq!(threads, "(5)(1 (2 3)(4))");
    }

    #[test]
    fn missing_parents_and_subjects_gather_threads() {
        // 2 and 3 reference a message not in the result: a dummy holds them.
        let threads = references(&[
            m(2, "b", &["gone"], "Re: topic", 20),
            m(3, "c", &["gone"], "Re: topic", 30),
            // Same base subject, not a reply, no references: the dummy thread's
            // messages and this one are gathered.
            m(1, "a", &[], "topic", 40),
        ]);
        assert_eq!(threads, "((2)(3)(1))");
        assert_eq!(message_ids("<a@x> <b@y>\r\n <c@z>"), ["a@x", "b@y", "c@z"]);
        assert!(is_reply("Re: x") && !is_reply("x"));
    }

    #[test]
    fn loops_and_duplicates_do_not_hang() {
        let threads = references(&[
            m(1, "a", &["b"], "x", 1),
            m(2, "b", &["a"], "y", 2),
            m(3, "a", &[], "z", 3),
        ]);
        assert!(
            threads.contains('1') && threads.contains('2') && threads.contains('3'),
            "{threads}"
        );
    }
}
