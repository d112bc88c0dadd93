//! CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4): `UID SEARCH RETURN (UPDATE …)` and
//! `UID SORT RETURN (UPDATE …)` keep their result live, and every change the session
//! reports afterwards (new mail, flag changes, expunges) is checked against it:
//! `* ESEARCH (TAG …) UID ADDTO (position uid …)` and `REMOVEFROM`, positions in the
//! result's order (UID order for SEARCH, sort order for SORT), or the new MIN, MAX and
//! COUNT. `CANCELUPDATE` ends one; SELECT ends them all.
//!
//! A live result keeps each match's UID and, for SORT, its sort key, and is
//! re-evaluated only on the messages that changed, so one update costs
//! O(changes × (log n + key) per live result) (a SORT's removal finds the UID in
//! O(n)); `limits.imap_search_updates_max` bounds how many a session keeps (more get
//! `OK [NOUPDATE]`). Updates are for UID SEARCH and UID SORT: a sequence-number result
//! would be renumbered by every expunge. Part of the sans-IO session: no IO.

use std::cmp::Ordering;

use super::super::sort::{self, KeyPart, SortBy};
use super::view::View;
use super::*;

/// What one update told the client: the UIDs it announced expunged, and the
/// messages it announced new or with changed flags.
#[derive(Debug, Default)]
pub(super) struct Reported<'s> {
    pub(super) expunged: Vec<u32>,
    pub(super) touched: Vec<&'s MessageEntry>,
}

/// One live result (a UID SEARCH or UID SORT with RETURN (UPDATE)).
#[derive(Debug, Clone)]
pub(super) struct LiveSearch {
    tag: String,
    ret: command::SearchReturn,
    key: command::SearchKey,
    /// SORT's criteria (empty for SEARCH: UID order).
    criteria: Vec<SortBy>,
    /// The matches in the result's order: sort key (empty for SEARCH) and UID.
    items: Vec<(Vec<KeyPart>, u32)>,
}

impl LiveSearch {
    /// A live SEARCH result: `uids` ascending.
    pub(super) fn search(
        tag: String,
        ret: command::SearchReturn,
        key: command::SearchKey,
        uids: Vec<u32>,
    ) -> LiveSearch {
        let items = uids.into_iter().map(|u| (Vec::new(), u)).collect();
        LiveSearch::sorted(tag, ret, key, Vec::new(), items)
    }

    /// A live SORT result: `items` in sort order (ties by UID).
    pub(super) fn sorted(
        tag: String,
        ret: command::SearchReturn,
        key: command::SearchKey,
        criteria: Vec<SortBy>,
        items: Vec<(Vec<KeyPart>, u32)>,
    ) -> LiveSearch {
        LiveSearch {
            tag,
            ret,
            key,
            criteria,
            items,
        }
    }

    fn order(&self, a: &(Vec<KeyPart>, u32), b: &(Vec<KeyPart>, u32)) -> Ordering {
        sort::compare(&self.criteria, &a.0, &b.0).then(a.1.cmp(&b.1))
    }

    /// Where `uid` is in the result.
    fn position(&self, uid: u32) -> Option<usize> {
        if self.criteria.is_empty() {
            self.items.binary_search_by(|(_, u)| u.cmp(&uid)).ok()
        } else {
            self.items.iter().position(|(_, u)| *u == uid)
        }
    }

    /// Inserts a match in order; returns its (0-based) position.
    fn insert(&mut self, item: (Vec<KeyPart>, u32)) -> usize {
        let at = self
            .items
            .binary_search_by(|probe| self.order(probe, &item))
            .unwrap_or_else(|at| at);
        self.items.insert(at, item);
        at
    }
}

impl Session {
    /// CANCELUPDATE "tag" …
    pub(super) fn cancel_update(&mut self, tag: &str, args: &[Token<'_>], out: &mut Outbox) {
        let names: Vec<String> = args
            .iter()
            .filter_map(|t| t.as_str().map(|s| s.into_owned()))
            .collect();
        if names.is_empty() || names.len() != args.len() {
            return self.bad(tag, "CANCELUPDATE takes the tags of live searches", out);
        }
        let Some(sel) = self.selected.as_mut() else {
            return self.bad(tag, "No mailbox selected", out);
        };
        if let Some(unknown) = names
            .iter()
            .find(|n| !sel.live.iter().any(|l| &l.tag == *n))
        {
            let text = format!("No live search with tag {unknown}");
            return self.bad(tag, &text, out);
        }
        sel.live.retain(|l| !names.contains(&l.tag));
        out.line(&format!("{tag} OK CANCELUPDATE completed"));
    }

    /// Keeps a finished SEARCH's result live, if the session may keep one more;
    /// returns the tagged reply's response code otherwise.
    pub(super) fn keep_live(&mut self, live: LiveSearch) -> Option<String> {
        let max = self.config.search_updates_max;
        let sel = self.selected.as_mut()?;
        sel.live.retain(|l| l.tag != live.tag);
        if sel.live.len() >= max {
            return Some(format!(
                "[NOUPDATE \"{}\"] At most {max} live searches (limits.imap_search_updates_max)",
                live.tag
            ));
        }
        sel.live.push(live);
        None
    }

    /// After an update told the client of `reported` changes: what they did to each
    /// live result (the update's own lists, not computed again).
    pub(super) fn live_search_changes(
        &mut self,
        reported: Reported<'_>,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let now = self.now;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let Some(mb) = store.account().and_then(|a| a.mailbox_by_id(sel.id)) else {
            return;
        };
        let Reported { expunged, touched } = reported;
        let view = View::new(mb, sel.at);
        let (largest_seq, largest_uid) = (view.len() as u32, view.last_uid());
        for live in &mut sel.live {
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            for uid in &expunged {
                if let Some(i) = live.position(*uid) {
                    removed.push((i + 1, *uid));
                    live.items.remove(i);
                }
            }
            for entry in &touched {
                let Some(i) = view.index_of(entry.uid) else {
                    continue;
                };
                let bytes = || store.bytes(entry);
                let summary = || store.summary(entry).ok();
                let mut c = Candidate::new(
                    i as u32 + 1,
                    entry,
                    largest_seq,
                    largest_uid,
                    &bytes,
                    &summary,
                );
                c.recent = sel.recent.contains(entry.uid);
                c.now = now;
                let hit = search::matches(&live.key, &c);
                match (live.position(entry.uid), hit) {
                    (None, true) => {
                        // Sort keys do not depend on flags: one is computed only for a
                        // message that joins the result.
                        let needs_summary =
                            live.criteria.iter().any(|c| c.criterion.needs_summary());
                        let summary = needs_summary.then(|| c.summary()).flatten();
                        let key = sort::key_of(&live.criteria, entry, summary);
                        let at = live.insert((key, entry.uid));
                        added.push((at + 1, entry.uid));
                    }
                    (Some(at), false) => {
                        live.items.remove(at);
                        removed.push((at + 1, entry.uid));
                    }
                    _ => {}
                }
            }
            if added.is_empty() && removed.is_empty() {
                continue;
            }
            report(out, live, &removed, &added);
        }
    }
}

/// The ESEARCH updates of one live search: REMOVEFROM and ADDTO for a result of all
/// matches (or a PARTIAL one), the new MIN, MAX and COUNT for those.
fn report(out: &mut Outbox, live: &LiveSearch, removed: &[(usize, u32)], added: &[(usize, u32)]) {
    let pairs = |list: &[(usize, u32)]| {
        list.iter()
            .map(|(p, u)| format!("{p} {u}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let head = format!("* ESEARCH (TAG \"{}\") UID", live.tag);
    let listed = live.ret.all || live.ret.partial.is_some();
    if listed && !removed.is_empty() {
        out.line(&format!("{head} REMOVEFROM ({})", pairs(removed)));
    }
    if listed && !added.is_empty() {
        out.line(&format!("{head} ADDTO ({})", pairs(added)));
    }
    let mut ends = String::new();
    if live.ret.min {
        if let Some((_, first)) = live.items.first() {
            ends.push_str(&format!(" MIN {first}"));
        }
    }
    if live.ret.max {
        if let Some((_, last)) = live.items.last() {
            ends.push_str(&format!(" MAX {last}"));
        }
    }
    if live.ret.count {
        ends.push_str(&format!(" COUNT {}", live.items.len()));
    }
    if !ends.is_empty() {
        out.line(&format!("{head}{ends}"));
    }
}
