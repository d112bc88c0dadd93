//! LIST, LSUB and the mailbox-name commands' shared checks (RFC 9051 §6.3.9, RFC 5258
//! LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE).
//!
//! LIST walks the account's name index (a byte-ordered map) and resumes after the last
//! name it reported, so a LIST over 10,000 mailboxes is answered in steps of bounded
//! work (DESIGN.md §10) and stays correct when another session creates or deletes a
//! mailbox between two steps. Every test is O(log n) (children by one range lookup;
//! implied parents from the previous name in order), the patterns match in linear
//! time ([`names::Pattern`]). Part of the sans-IO session: no IO, no clock.

use std::collections::HashSet;
use std::ops::Bound;

use super::super::command::{self, ListArgs, StatusItem};
use super::super::lexer::Token;
use super::super::names::{self, Pattern, DELIMITER};
use super::{special_use_attr, status_line, Outbox, Pending, Session};
use crate::store::index::{mailbox_name_eq, AccountIndex, SpecialUse};

/// Work units one LIST step may spend: a name costs one, a STATUS also its messages
/// (1,024 names matched and rendered take well under a millisecond).
const LIST_STEP_UNITS: usize = 1024;

/// A LIST being answered in steps.
#[derive(Debug)]
pub(super) struct ListPending {
    tag: String,
    patterns: Vec<Pattern>,
    extended: bool,
    special_use_only: bool,
    return_subscribed: bool,
    return_status: Option<Vec<StatusItem>>,
    /// The last name examined in byte order: the next step starts after it.
    after: Option<String>,
    /// INBOX (listed first) has been dealt with.
    inbox_done: bool,
}

impl Session {
    pub(super) fn list(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn super::Mailstore,
        out: &mut Outbox,
    ) {
        let list = match command::list_args(args) {
            Ok(l) => l,
            Err(e) => return self.bad(tag, &e, out),
        };
        if list.patterns.len() == 1
            && list.patterns.first().is_some_and(String::is_empty)
            && !list.extended
        {
            out.line("* LIST (\\Noselect) \"/\" \"\"");
            out.line(&format!("{tag} OK LIST completed"));
            return;
        }
        let patterns: Vec<Pattern> = list
            .patterns
            .iter()
            .map(|p| Pattern::new(&self.stored_name(format!("{}{}", list.reference, p))))
            .collect();
        if list.subscribed_only {
            // Subscriptions are few (bounded by limits.mailboxes_per_account_max):
            // answered in one step.
            let empty = AccountIndex::default();
            let account = store.account().unwrap_or(&empty);
            self.list_subscribed(&list, &patterns, account, out);
            out.line(&format!("{tag} OK LIST completed"));
            return;
        }
        self.pending = Some(Pending::List(ListPending {
            tag: tag.to_string(),
            patterns,
            extended: list.extended,
            special_use_only: list.special_use_only,
            return_subscribed: list.return_subscribed,
            return_status: list.return_status,
            after: None,
            inbox_done: false,
        }));
        self.resume(store, out);
    }

    /// One step of a LIST: examines names after the last one reported until the step's
    /// work is spent; finishes with the tagged OK.
    pub(super) fn list_step(
        &mut self,
        mut job: ListPending,
        store: &dyn super::Mailstore,
        out: &mut Outbox,
    ) {
        let empty = AccountIndex::default();
        let account = store.account().unwrap_or(&empty);
        let defaults;
        let names = if account.names.is_empty() {
            // An account that never received mail has the default mailboxes implied.
            defaults = crate::store::index::DEFAULT_MAILBOXES
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.to_string(), i as u32 + 1))
                .collect();
            &defaults
        } else {
            &account.names
        };
        let start = match &job.after {
            Some(last) => Bound::Excluded(last.as_str()),
            None => Bound::Unbounded,
        };
        let mut spent = 0;
        let mut previous = job.after.clone();
        let output_max = self.config.output_bytes_max;
        // INBOX first, as clients expect; the rest in byte order (the cursor `after`
        // only ever follows that order).
        let inbox = names
            .get_key_value("INBOX")
            .filter(|_| !job.inbox_done)
            .map(|e| (true, e));
        job.inbox_done = true;
        let rest = names
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(n, _)| n.as_str() != "INBOX")
            .map(|e| (false, e));
        for (is_inbox, (name, id)) in inbox.into_iter().chain(rest) {
            if spent >= LIST_STEP_UNITS || out.reply.len() >= output_max {
                job.after = previous;
                self.pending = Some(Pending::List(job));
                return;
            }
            spent += 1;
            if is_inbox {
                self.list_row(&job, account, names, name, *id, out, &mut spent);
                continue;
            }
            // Parents of this name that do not exist, listed once (before their first
            // child: names below a prefix are contiguous in byte order).
            for parent in missing_parents(names, name, previous.as_deref()) {
                if names::any_matches(&job.patterns, parent) {
                    let attr = if job.extended {
                        "\\NonExistent"
                    } else {
                        "\\Noselect"
                    };
                    let subscribed = job.return_subscribed && is_subscribed(account, parent);
                    let mut attrs = vec![attr, "\\HasChildren"];
                    if subscribed {
                        attrs.push("\\Subscribed");
                    }
                    self.list_line(out, "LIST", parent, &attrs, None);
                }
            }
            previous = Some(name.clone());
            self.list_row(&job, account, names, name, *id, out, &mut spent);
        }
        out.line(&format!("{} OK LIST completed", job.tag));
    }

    /// The LIST line (and STATUS) of one existing mailbox, if it matches.
    #[allow(clippy::too_many_arguments)] // one row's inputs, one argument each
    fn list_row(
        &self,
        job: &ListPending,
        account: &AccountIndex,
        names: &std::collections::BTreeMap<String, u32>,
        name: &str,
        id: u32,
        out: &mut Outbox,
        spent: &mut usize,
    ) {
        if !names::any_matches(&job.patterns, name) {
            return;
        }
        let mb = account.mailbox_by_id(id);
        let special = mb.map_or(SpecialUse::None, |m| m.special_use);
        if job.special_use_only && matches!(special, SpecialUse::None | SpecialUse::Inbox) {
            return;
        }
        let mut attrs: Vec<&str> = Vec::new();
        if child_exists(names, name) {
            attrs.push("\\HasChildren");
        } else {
            attrs.push("\\HasNoChildren");
        }
        if job.return_subscribed && is_subscribed(account, name) {
            attrs.push("\\Subscribed");
        }
        attrs.extend(special_use_attr(special));
        self.list_line(out, "LIST", name, &attrs, None);
        if let (Some(items), Some(m)) = (&job.return_status, mb) {
            *spent += m.messages.len();
            status_line(out, &self.shown_name(&m.name), m, items);
        }
    }

    /// LIST (SUBSCRIBED …): subscribed names (existing or not) and, with
    /// RECURSIVEMATCH, parents of subscribed names with CHILDINFO.
    fn list_subscribed(
        &self,
        list: &ListArgs,
        patterns: &[Pattern],
        account: &AccountIndex,
        out: &mut Outbox,
    ) {
        let mut subscribed: Vec<&str> = account.subscribed.iter().map(String::as_str).collect();
        subscribed.sort_unstable();
        subscribed.dedup();
        // RECURSIVEMATCH (RFC 5258 §3.5): a name with a subscribed descendant the
        // patterns miss carries CHILDINFO, listed as LIST would list it;
        // `\NonExistent` only when it does not exist.
        let parents = if list.recursive_match {
            parents_of_unmatched(&subscribed, patterns)
        } else {
            Vec::new()
        };
        const CHILDINFO: &str = "(\"CHILDINFO\" (\"SUBSCRIBED\"))";
        let childinfo = |name: &str| parents.binary_search(&name).is_ok().then_some(CHILDINFO);
        let mut reported: HashSet<&str> = HashSet::new();
        for name in &subscribed {
            if names::any_matches(patterns, name) {
                let mb = account.mailbox(name);
                let mut attrs: Vec<&str> = Vec::new();
                if mb.is_none() {
                    attrs.push("\\NonExistent");
                }
                attrs.push(if child_exists(&account.names, name) {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                });
                attrs.push("\\Subscribed");
                if let Some(m) = mb {
                    attrs.extend(special_use_attr(m.special_use));
                }
                self.list_line(out, "LIST", name, &attrs, childinfo(name));
                reported.insert(name);
                if let (Some(items), Some(m)) = (&list.return_status, mb) {
                    status_line(out, &self.shown_name(&m.name), m, items);
                }
            }
        }
        for &parent in &parents {
            if reported.contains(parent) {
                continue;
            }
            let mb = account.mailbox(parent);
            let mut attrs: Vec<&str> = Vec::new();
            if mb.is_none() {
                attrs.push("\\NonExistent");
            }
            if child_exists(&account.names, parent) {
                attrs.push("\\HasChildren");
            }
            if let Some(m) = mb {
                attrs.extend(special_use_attr(m.special_use));
            }
            self.list_line(out, "LIST", parent, &attrs, Some(CHILDINFO));
        }
    }

    pub(super) fn lsub(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn super::Mailstore,
        out: &mut Outbox,
    ) {
        let (Some(reference), Some(pattern)) = (
            self.mailbox_name(args.first()),
            self.mailbox_name(args.get(1)),
        ) else {
            return self.bad(tag, "LSUB needs a reference and a pattern", out);
        };
        let pattern = Pattern::new(&format!("{reference}{pattern}"));
        if let Some(account) = store.account() {
            let mut subscribed: Vec<&str> = account.subscribed.iter().map(String::as_str).collect();
            subscribed.sort_unstable();
            subscribed.dedup();
            let patterns = std::slice::from_ref(&pattern);
            // Subscribed names, and (RFC 3501 §6.3.9) unsubscribed parents of
            // subscribed names the pattern misses, flagged `\Noselect`.
            let mut rows: Vec<(&str, bool)> = subscribed
                .iter()
                .filter(|s| pattern.matches(s))
                .map(|s| (*s, account.mailbox(s).is_none()))
                .collect();
            for parent in parents_of_unmatched(&subscribed, patterns) {
                if !rows.iter().any(|(n, _)| mailbox_name_eq(n, parent)) {
                    rows.push((parent, true));
                }
            }
            rows.sort_unstable();
            for (name, noselect) in rows {
                let attrs: &[&str] = if noselect { &["\\Noselect"] } else { &[] };
                self.list_line(out, "LSUB", name, attrs, None);
            }
        }
        out.line(&format!("{tag} OK LSUB completed"));
    }

    /// A new mailbox name is acceptable and the account has room for `adding` more
    /// mailboxes; otherwise the `NO` reply (sent here) says why.
    pub(super) fn check_new_names(
        &self,
        tag: &str,
        name: &str,
        adding: usize,
        account: Option<&AccountIndex>,
        out: &mut Outbox,
    ) -> bool {
        if let Err(e) = names::validate(name) {
            out.line(&format!("{tag} NO [CANNOT] {}", e.text()));
            return false;
        }
        let have = account.map_or(crate::store::index::DEFAULT_MAILBOXES.len(), |a| {
            a.mailboxes.len()
        });
        let max = self.config.mailboxes_per_account_max;
        if have + adding > max {
            out.line(&format!(
                "{tag} NO [LIMIT] An account holds at most {max} mailboxes \
                 (limits.mailboxes_per_account_max)"
            ));
            return false;
        }
        true
    }
}

impl Session {
    /// A SUBSCRIBE names a valid mailbox name and the account has room for it
    /// (subscriptions are bounded like mailboxes); otherwise answers `NO`.
    pub(super) fn subscription_fits(
        &self,
        tag: &str,
        name: &str,
        store: &dyn super::Mailstore,
        out: &mut Outbox,
    ) -> bool {
        if let Err(e) = names::validate(name) {
            out.line(&format!("{tag} NO [CANNOT] {}", e.text()));
            return false;
        }
        let account = store.account();
        let known = account.is_some_and(|a| is_subscribed(a, name));
        let count = account.map_or(0, |a| a.subscribed.len());
        let max = self.config.mailboxes_per_account_max;
        if !known && count >= max {
            out.line(&format!(
                "{tag} NO [LIMIT] At most {max} subscriptions (limits.mailboxes_per_account_max)"
            ));
            return false;
        }
        true
    }
}

/// Ancestors of subscribed names that match `patterns` while some subscribed
/// descendant of theirs does not (so the hierarchy stays visible to a `%` pattern),
/// in byte order, each once.
fn parents_of_unmatched<'a>(subscribed: &[&'a str], patterns: &[Pattern]) -> Vec<&'a str> {
    let mut parents: Vec<&str> = Vec::new();
    for name in subscribed {
        if names::any_matches(patterns, name) {
            continue;
        }
        for (cut, _) in name.match_indices(DELIMITER) {
            if let Some(parent) = name.get(..cut) {
                if names::any_matches(patterns, parent) {
                    parents.push(parent);
                }
            }
        }
    }
    parents.sort_unstable();
    parents.dedup();
    parents
}

fn is_subscribed(account: &AccountIndex, name: &str) -> bool {
    account.subscribed.iter().any(|s| mailbox_name_eq(s, name))
}

/// Some mailbox lies below `name` (one range lookup in the ordered names).
fn child_exists(names: &std::collections::BTreeMap<String, u32>, name: &str) -> bool {
    let prefix = format!("{name}{DELIMITER}");
    names
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .next()
        .is_some_and(|(n, _)| n.starts_with(&prefix))
}

/// Ancestors of `name` (shortest first) that are not mailboxes and were not already
/// implied by `previous`, the name examined before it in byte order.
fn missing_parents<'n>(
    names: &std::collections::BTreeMap<String, u32>,
    name: &'n str,
    previous: Option<&str>,
) -> Vec<&'n str> {
    let mut out = Vec::new();
    for (cut, _) in name.match_indices(DELIMITER) {
        let Some(parent) = name.get(..cut) else {
            continue;
        };
        let listed_before = previous.is_some_and(|p| {
            p.len() > cut && p.starts_with(parent) && p.as_bytes().get(cut) == Some(&b'/')
        });
        if !listed_before && !names.contains_key(parent) {
            out.push(parent);
        }
    }
    out
}
