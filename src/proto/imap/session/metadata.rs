//! SETMETADATA and GETMETADATA (RFC 5464, METADATA and METADATA-SERVER): entries on
//! the server (mailbox `""`) and on each mailbox, stored durably in the account's log
//! (`Change::SetMetadata`) and bounded per account by
//! `limits.imap_metadata_bytes_max`.
//!
//! Entry names are compared without case and stored lower-case; both `/private` and
//! `/shared` entries belong to the account (nothing is shared between users here, so
//! the two are simply two trees). A rename keeps a mailbox's entries (they hang on
//! its id); a delete drops them. Part of the sans-IO session: no IO.

use super::super::lexer::Token;
use super::super::render;
use super::{normalize, Action, Change, Mailstore, Outbox, Pending, Session};
use crate::store::index::AccountIndex;

/// The two entry trees (RFC 5464 §3.2).
const ROOTS: [&str; 2] = ["/private", "/shared"];

/// An entry name checked for SETMETADATA (RFC 5464 §3.2.1: under a root, no `*`, `%`,
/// empty component or trailing `/`, printable ASCII), lower-cased.
fn entry_name(name: &str, allow_root: bool) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let rooted = ROOTS.iter().any(|root| {
        lower
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/') || (allow_root && rest.is_empty()))
    });
    let printable = lower.bytes().all(|b| (0x21..0x7f).contains(&b));
    if !rooted
        || !printable
        || lower.contains(['*', '%'])
        || lower.contains("//")
        || lower.ends_with('/')
    {
        return Err(format!(
            "Invalid METADATA entry name {name:?} (RFC 5464 §3.2: /private/… or /shared/…)"
        ));
    }
    Ok(lower)
}

/// GETMETADATA's options (RFC 5464 §4.2).
#[derive(Debug, Clone, Copy)]
struct GetOptions {
    maxsize: Option<usize>,
    /// 0, 1 or infinity (`None`).
    depth: Option<usize>,
}

impl Session {
    /// The mailbox id a METADATA command names: 0 for the server (`""`).
    fn metadata_mailbox(
        &self,
        tag: &str,
        token: Option<&Token<'_>>,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) -> Option<u32> {
        let name = self.mailbox_name(token)?;
        if name.is_empty() {
            return Some(0);
        }
        let id = store
            .account()
            .and_then(|a| a.mailbox(&normalize(&name)))
            .map(|m| m.id);
        if id.is_none() {
            out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
        }
        id
    }

    /// SETMETADATA mailbox (entry value …): NIL removes an entry.
    pub(super) fn set_metadata(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let (Some(mailbox_arg), Some(Token::List(list)), None) =
            (args.first(), args.get(1), args.get(2))
        else {
            return self.bad(tag, "SETMETADATA takes a mailbox and (entry value …)", out);
        };
        let mut entries: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut items = list.iter();
        while let Some(name) = items.next() {
            let name = match name.as_str().map(|n| entry_name(&n, false)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => return self.bad(tag, &e, out),
                None => return self.bad(tag, "SETMETADATA: an entry name must be a string", out),
            };
            let mut value = items.next();
            // literal8 (`~{n}`): the `~` lexes as an atom of its own.
            if let Some(Token::Atom("~")) = value {
                value = items.next();
            }
            let value = match value {
                Some(Token::Nil) => None,
                Some(Token::Quoted(q)) => Some(q.as_bytes().to_vec()),
                Some(Token::Literal(l)) => Some(l.to_vec()),
                _ => return self.bad(tag, "SETMETADATA: each entry needs a value or NIL", out),
            };
            entries.retain(|(n, _)| n != &name);
            entries.push((name, value));
        }
        if entries.is_empty() {
            return self.bad(tag, "SETMETADATA needs at least one entry", out);
        }
        let Some(mailbox) = self.metadata_mailbox(tag, Some(mailbox_arg), store, out) else {
            return;
        };
        let max = self.config.metadata_bytes_max;
        let account = store.account();
        if entries
            .iter()
            .any(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len) > max)
        {
            out.line(&format!(
                "{tag} NO [METADATA MAXSIZE {max}] A METADATA value is at most {max} bytes \
                 (limits.imap_metadata_bytes_max)"
            ));
            return;
        }
        if after_change(account, mailbox, &entries) > max {
            out.line(&format!(
                "{tag} NO [METADATA TOOMANY] An account keeps at most {max} bytes of METADATA \
                 (limits.imap_metadata_bytes_max)"
            ));
            return;
        }
        self.pending = Some(Pending::Simple {
            tag: tag.to_string(),
            done: "SETMETADATA completed",
        });
        out.actions.push(Action::Write(
            Change::SetMetadata { mailbox, entries }.into(),
        ));
    }

    /// GETMETADATA [(MAXSIZE n DEPTH d)] mailbox entry | (entry …).
    pub(super) fn get_metadata(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let (options, rest) = match args.split_first() {
            Some((Token::List(opts), rest)) => match get_options(opts) {
                Ok(o) => (o, rest),
                Err(e) => return self.bad(tag, &e, out),
            },
            _ => (
                GetOptions {
                    maxsize: None,
                    depth: Some(0),
                },
                args,
            ),
        };
        let requested: Vec<&Token<'_>> = match rest.get(1) {
            Some(Token::List(list)) => list.iter().collect(),
            Some(one) => vec![one],
            None => return self.bad(tag, "GETMETADATA takes a mailbox and entries", out),
        };
        if rest.len() > 2 || requested.is_empty() {
            return self.bad(tag, "GETMETADATA takes a mailbox and entries", out);
        }
        let mut names = Vec::new();
        for token in requested {
            match token.as_str().map(|n| entry_name(&n, true)) {
                Some(Ok(n)) => names.push(n),
                Some(Err(e)) => return self.bad(tag, &e, out),
                None => return self.bad(tag, "GETMETADATA: an entry name must be a string", out),
            }
        }
        let Some(mailbox) = self.metadata_mailbox(tag, rest.first(), store, out) else {
            return;
        };
        let shown = match rest.first().and_then(|t| self.mailbox_name(Some(t))) {
            Some(name) if !name.is_empty() => self.shown_name(&normalize(&name)).into_owned(),
            _ => String::new(),
        };
        let found = store.account().map_or(&[][..], |a| a.annotations(mailbox));
        let longest_skipped = metadata_line(out, &shown, found, &names, options);
        if longest_skipped > 0 {
            out.line(&format!(
                "{tag} OK [METADATA LONGENTRIES {longest_skipped}] GETMETADATA completed"
            ));
        } else {
            out.line(&format!("{tag} OK GETMETADATA completed"));
        }
    }
}

/// `* METADATA mailbox (entry value …)` for the entries `names` select (a missing
/// one is NIL), none if nothing is to be said; returns the size of the longest value
/// MAXSIZE left out (0 if none).
fn metadata_line(
    out: &mut Outbox,
    shown: &str,
    found: &[crate::store::index::Annotation],
    names: &[String],
    options: GetOptions,
) -> usize {
    let mut line = b"* METADATA ".to_vec();
    render::mailbox_name(&mut line, shown);
    line.extend_from_slice(b" (");
    let (mut any, mut longest_skipped) = (false, 0usize);
    let mut item = |line: &mut Vec<u8>, entry: &str| {
        if any {
            line.push(b' ');
        }
        any = true;
        line.extend_from_slice(entry.as_bytes());
        line.push(b' ');
    };
    for name in names {
        let mut matched = false;
        for a in found
            .iter()
            .filter(|a| within(&a.entry, name, options.depth))
        {
            matched = true;
            if options.maxsize.is_some_and(|m| a.value.len() > m) {
                longest_skipped = longest_skipped.max(a.value.len());
                continue;
            }
            item(&mut line, &a.entry);
            value(&mut line, &a.value);
        }
        if !matched && !ROOTS.contains(&name.as_str()) {
            item(&mut line, name);
            line.extend_from_slice(b"NIL");
        }
    }
    if any {
        line.extend_from_slice(b")\r\n");
        out.reply.extend_from_slice(&line);
    }
    longest_skipped
}

/// An entry's value: a quoted string when it can be, a literal (literal8 with NUL).
fn value(out: &mut Vec<u8>, v: &[u8]) {
    if memchr::memchr(0, v).is_some() {
        render::literal(out, v, true);
    } else {
        render::string(out, v);
    }
}

/// Whether `entry` is `name` or, per `depth`, below it.
fn within(entry: &str, name: &str, depth: Option<usize>) -> bool {
    if entry == name {
        return true;
    }
    let Some(rest) = entry.strip_prefix(name).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    match depth {
        Some(0) => false,
        Some(1) => !rest.contains('/'),
        _ => true,
    }
}

fn get_options(tokens: &[Token<'_>]) -> Result<GetOptions, String> {
    let mut options = GetOptions {
        maxsize: None,
        depth: Some(0),
    };
    let mut it = tokens.iter();
    while let Some(word) = it.next() {
        let word = word.as_str().unwrap_or_default().to_ascii_uppercase();
        let arg = it
            .next()
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("GETMETADATA option {word} needs a value"))?;
        match word.as_str() {
            "MAXSIZE" => {
                options.maxsize = Some(arg.parse().map_err(|_| "MAXSIZE takes a number")?);
            }
            "DEPTH" => {
                options.depth = match arg.to_ascii_lowercase().as_str() {
                    "0" => Some(0),
                    "1" => Some(1),
                    "infinity" => None,
                    _ => return Err("DEPTH takes 0, 1 or infinity".into()),
                }
            }
            _ => return Err(format!("Unknown GETMETADATA option {word}")),
        }
    }
    Ok(options)
}

/// Bytes of the account's METADATA once `entries` are set on `mailbox`.
fn after_change(
    account: Option<&AccountIndex>,
    mailbox: u32,
    entries: &[(String, Option<Vec<u8>>)],
) -> usize {
    let Some(account) = account else {
        return entries
            .iter()
            .map(|(n, v)| v.as_ref().map_or(0, |v| n.len() + v.len()))
            .sum();
    };
    let mut total = account.annotation_bytes();
    let current = account.annotations(mailbox);
    for (name, value) in entries {
        if let Some(old) = current.iter().find(|a| &a.entry == name) {
            total -= old.entry.len() + old.value.len();
        }
        if let Some(v) = value {
            total += name.len() + v.len();
        }
    }
    total
}
