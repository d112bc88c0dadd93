//! What the client hears unasked about its selected mailbox: expunges, new messages
//! and flag changes since it last heard, from the mailbox's tombstones, flag-change log
//! and UID order (O(changes), never O(mailbox)), at the end of commands and in IDLE;
//! and the hooks that NOTIFY and live SEARCH results hang on it. No IO.

use super::*;

impl Session {
    /// The account changed (another session, a delivery): in IDLE, tell the client now.
    pub fn changed(&mut self, store: &dyn Mailstore, out: &mut Outbox) {
        if self.idle_tag.is_some() {
            self.update(store, out, true, &HashSet::new());
        }
        if self.notify.is_some() {
            self.notify_changes(store, out);
        }
    }

    // ---- Selected ----

    /// Reports what changed in the selected mailbox since the client last heard:
    /// expunges (only when `expunges_allowed`: never during FETCH, STORE or SEARCH),
    /// new messages, and flag changes not in `skip` (UIDs this command reported).
    pub(super) fn update(
        &mut self,
        store: &dyn Mailstore,
        out: &mut Outbox,
        expunges_allowed: bool,
        skip: &HashSet<u32>,
    ) {
        let keywords_max = self.config.keywords_per_mailbox_max;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let Some(mb) = store.account().and_then(|a| a.mailbox_by_id(sel.id)) else {
            // Deleted by another session.
            out.line("* BYE Selected mailbox was deleted");
            self.selected = None;
            self.close(out);
            return;
        };
        // What changed since the session last looked comes from the mailbox's
        // tombstones, flag-change log and UID order: O(changes), not O(mailbox).
        if !sel.at.is_reconstructible(mb) {
            // Compaction dropped tombstones this session still needed to number its
            // messages: it must select again.
            out.line("* BYE [UNAVAILABLE] Mailbox compacted; select it again");
            self.selected = None;
            self.close(out);
            return;
        }
        // What this update tells the client, kept for the live results (if any).
        let tracking = !sel.live.is_empty();
        let mut reported = context::Reported::default();
        if expunges_allowed {
            let view = View::new(mb, sel.at);
            let gone: Vec<(usize, u32)> = view.ghosts().collect();
            if tracking {
                reported.expunged = gone.iter().map(|g| g.1).collect();
            }
            if !gone.is_empty() {
                if self.qresync {
                    let uids: Vec<u32> = gone.iter().map(|g| g.1).collect();
                    out.line(&format!("* VANISHED {}", SequenceSet::compact(&uids)));
                } else {
                    for (i, _) in gone.iter().rev() {
                        out.line(&format!("* {} EXPUNGE", i + 1));
                    }
                }
            }
            sel.at.expunges_seen = mb.highest_modseq;
        }
        let last = sel.at.known_last;
        if let Some(newest) = mb.messages_after(last).last() {
            if tracking {
                reported.touched.extend(mb.messages_after(last));
            }
            sel.at.known_last = newest.uid;
            announce_keywords(sel, mb, keywords_max, out);
            out.line(&format!("* {} EXISTS", View::new(mb, sel.at).len()));
            if !self.rev2 {
                sel.recent.take_new(mb, sel.read_only);
                out.line(&format!("* {} RECENT", sel.recent.count(mb)));
            }
        }
        if mb.highest_modseq > sel.reported_modseq {
            let changed = flags_changed_since(mb, sel.reported_modseq, last);
            announce_keywords(sel, mb, keywords_max, out);
            let view = View::new(mb, sel.at);
            for m in &changed {
                if skip.contains(&m.uid) {
                    continue;
                }
                let Some(i) = view.index_of(m.uid) else {
                    continue;
                };
                let flags = sel.flags_of(m);
                flags_update(out, i + 1, m, flags, self.qresync, self.condstore);
            }
            if tracking {
                reported.touched.extend(changed);
            }
            sel.reported_modseq = mb.highest_modseq;
        }
        if tracking {
            self.live_search_changes(reported, store, out);
        }
    }
}

/// Keywords the client has not been told about: announce them with a new FLAGS
/// before any FETCH shows them (RFC 9051 §7.3.5). A mailbox's keyword list only
/// grows, so a longer list is the whole news.
pub(super) fn announce_keywords(
    sel: &mut Selected,
    mb: &MailboxIndex,
    keywords_max: usize,
    out: &mut Outbox,
) {
    if mb.keywords.len() > sel.keywords.len() {
        sel.keywords = mb.keywords.clone();
        let room = sel.keywords.len() < keywords_max;
        flags_lines(out, &sel.keywords, sel.read_only, room);
    }
}

/// `* n FETCH ([UID u ]FLAGS (…)[ MODSEQ (m)])`: how a flag change is reported, in
/// a STORE reply, an unsolicited update or a QRESYNC resynchronisation.
pub(super) fn flags_update(
    out: &mut Outbox,
    seq: usize,
    m: &MessageEntry,
    flags: u32,
    with_uid: bool,
    with_modseq: bool,
) {
    let mut line = format!("* {seq} FETCH (").into_bytes();
    if with_uid {
        line.extend_from_slice(format!("UID {} ", m.uid).as_bytes());
    }
    line.extend_from_slice(b"FLAGS ");
    render::flag_list(&mut line, flags, &m.keywords);
    if with_modseq {
        line.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
    }
    line.extend_from_slice(b")\r\n");
    out.reply.extend_from_slice(&line);
}

/// Messages up to UID `last` whose flags changed after MODSEQ `since`, each once:
/// from the flag-change log, or a scan if `since` is older than the log.
pub(super) fn flags_changed_since(mb: &MailboxIndex, since: u64, last: u32) -> Vec<&MessageEntry> {
    match mb.flag_changes_since(since) {
        Some(changes) => changes
            .iter()
            .filter(|(_, uid)| *uid <= last)
            .filter_map(|(modseq, uid)| {
                let at = mb.messages.binary_search_by_key(uid, |m| m.uid).ok()?;
                // A later change of the same message is listed further on.
                mb.messages.get(at).filter(|m| m.modseq == *modseq)
            })
            .collect(),
        None => mb
            .messages
            .iter()
            .filter(|m| m.modseq > since && m.uid <= last)
            .collect(),
    }
}
