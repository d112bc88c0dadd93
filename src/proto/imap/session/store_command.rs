//! STORE and UID STORE (flags and keywords, .SILENT, CONDSTORE UNCHANGEDSINCE): plans
//! the change, sends it as one write, and reports the result once it is durable.

use super::*;

impl Session {
    // Longer than ~80 lines: argument checks in the order RFC 9051 and RFC 7162 state them.
    pub(super) fn store(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let a = match command::store_args(args) {
            Ok(a) => a,
            Err(e) => return self.bad(tag, &e, out),
        };
        if self.selected.as_ref().is_none_or(|s| s.read_only) {
            out.line(&format!("{tag} NO [READ-ONLY] Mailbox is read-only"));
            return;
        }
        if a.unchanged_since.is_some() {
            self.condstore_on(store, out);
        }
        let targets = match self.resolve(&a.set, uid, store) {
            Ok(t) => t,
            Err(e) => return self.bad(tag, &e, out),
        };
        let Some(mb) = self.mailbox(store) else {
            return;
        };
        if a.mode != StoreMode::Remove && !self.keywords_fit(tag, mb, &a.keywords, out) {
            return;
        }
        let mut changes = Vec::new();
        let mut modified = Vec::new();
        let mut target_uids = Vec::new();
        for (seq, u) in &targets {
            let Ok(at) = mb.messages.binary_search_by_key(u, |m| m.uid) else {
                continue;
            };
            let Some(m) = mb.messages.get(at) else {
                continue;
            };
            if a.unchanged_since.is_some_and(|n| m.modseq > n) {
                modified.push(if uid { *u } else { *seq });
                continue;
            }
            target_uids.push(*u);
            let (bits, keywords) = match a.mode {
                StoreMode::Replace => (a.flags, a.keywords.clone()),
                StoreMode::Add => {
                    let mut k = m.keywords.to_vec();
                    for new in &a.keywords {
                        if !k.iter().any(|x| x.eq_ignore_ascii_case(new)) {
                            k.push(new.clone());
                        }
                    }
                    (m.flags | a.flags, k)
                }
                StoreMode::Remove => {
                    let k = m
                        .keywords
                        .iter()
                        .filter(|x| !a.keywords.iter().any(|r| r.eq_ignore_ascii_case(x)))
                        .cloned()
                        .collect();
                    (m.flags & !a.flags, k)
                }
            };
            if bits != m.flags || keywords[..] != m.keywords[..] {
                changes.push((m.uid, bits, keywords));
            }
        }
        let pending = StorePending {
            tag: tag.to_string(),
            uid,
            silent: a.silent,
            targets: target_uids,
            modified,
        };
        if changes.is_empty() {
            self.finish_store(pending, &[], store, out);
            return;
        }
        let mailbox = mb.id;
        self.pending = Some(Pending::Store(pending));
        out.actions
            .push(Action::Write(Change::Store { mailbox, changes }.into()));
    }

    pub(super) fn finish_store(
        &mut self,
        p: StorePending,
        changed: &[(u32, u64)],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let mut reported: HashSet<u32> = HashSet::new();
        let changed_uids: HashSet<u32> = changed.iter().map(|c| c.0).collect();
        let keywords_max = self.config.keywords_per_mailbox_max;
        if let (Some(mb), Some(sel)) = (self.mailbox(store), self.selected.as_mut()) {
            announce_keywords(sel, mb, keywords_max, out);
        }
        if let (Some(sel), Some(mb)) = (&self.selected, self.mailbox(store)) {
            let view = View::new(mb, sel.at);
            for u in &p.targets {
                // .SILENT still reports a change made by someone else (RFC 7162 §3.1.3).
                if p.silent && (changed_uids.contains(u) || !self.condstore) {
                    reported.insert(*u);
                    continue;
                }
                let Some(seq) = view.index_of(*u) else {
                    continue;
                };
                let Ok(at) = mb.messages.binary_search_by_key(u, |m| m.uid) else {
                    continue;
                };
                let Some(m) = mb.messages.get(at) else {
                    continue;
                };
                let flags = sel.flags_of(m);
                flags_update(
                    out,
                    seq + 1,
                    m,
                    flags,
                    p.uid || self.qresync,
                    self.condstore,
                );
                reported.insert(*u);
            }
        }
        self.update(store, out, p.uid, &reported);
        if p.modified.is_empty() {
            out.line(&format!("{} OK STORE completed", p.tag));
        } else {
            out.line(&format!(
                "{} OK [MODIFIED {}] Conditional STORE failed for some messages",
                p.tag,
                SequenceSet::compact(&p.modified)
            ));
        }
    }

    /// Keywords a STORE or APPEND would set fit `limits.keywords_per_mailbox_max`
    /// (counting those the mailbox knows); otherwise answers `NO [LIMIT]`.
    pub(super) fn keywords_fit(
        &self,
        tag: &str,
        mb: &MailboxIndex,
        keywords: &[String],
        out: &mut Outbox,
    ) -> bool {
        let mut new: Vec<&str> = Vec::new();
        for k in keywords {
            if !mb.has_keyword(k) && !new.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                new.push(k);
            }
        }
        let max = self.config.keywords_per_mailbox_max;
        if !new.is_empty() && mb.keywords.len() + new.len() > max {
            out.line(&format!(
                "{tag} NO [LIMIT] A mailbox carries at most {max} keywords \
                 (limits.keywords_per_mailbox_max)"
            ));
            return false;
        }
        if let Some(long) = keywords.iter().find(|k| k.len() > KEYWORD_BYTES_MAX) {
            out.line(&format!(
                "{tag} NO [LIMIT] Keywords are at most {KEYWORD_BYTES_MAX} bytes ({} given)",
                long.len()
            ));
            return false;
        }
        true
    }
}
