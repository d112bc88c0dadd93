//! CLOSE and EXPUNGE / UID EXPUNGE (UIDPLUS): removing `\\Deleted` messages.

use super::*;

impl Session {
    pub(super) fn close_mailbox(&mut self, tag: &str, store: &dyn Mailstore, out: &mut Outbox) {
        let Some(sel) = &self.selected else { return };
        let deleted: Vec<u32> = match (sel.read_only, self.mailbox(store)) {
            (false, Some(mb)) => mb
                .messages
                .iter()
                .filter(|m| m.flags & flags::DELETED != 0)
                .map(|m| m.uid)
                .collect(),
            _ => Vec::new(),
        };
        let mailbox = sel.id;
        if deleted.is_empty() {
            self.selected = None;
            out.line(&format!("{tag} OK CLOSE completed"));
            return;
        }
        self.pending = Some(Pending::Expunge {
            tag: tag.to_string(),
            closing: true,
        });
        out.actions.push(Action::Write(
            Change::Expunge {
                mailbox,
                uids: deleted,
            }
            .into(),
        ));
    }

    pub(super) fn expunge(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(sel) = &self.selected else { return };
        if sel.read_only {
            out.line(&format!("{tag} NO [READ-ONLY] Mailbox is read-only"));
            return;
        }
        let set = if uid {
            match args
                .first()
                .and_then(Token::as_str)
                .map(|s| SequenceSet::parse(&s))
            {
                Some(Ok(s)) => Some(s),
                _ => return self.bad(tag, "UID EXPUNGE needs a UID set", out),
            }
        } else {
            None
        };
        let (mailbox, at) = (sel.id, sel.at);
        let uids: Vec<u32> = self
            .mailbox(store)
            .map(|mb| {
                // Messages the session was not told of yet are not its to expunge.
                let largest = View::new(mb, at).last_uid();
                // Nothing marked \Deleted (the index counts them): no scan at all.
                let marked = if mb.counts.deleted == 0 {
                    0
                } else {
                    mb.messages.len()
                };
                mb.messages
                    .get(
                        ..mb.messages
                            .partition_point(|m| m.uid <= at.known_last)
                            .min(marked),
                    )
                    .unwrap_or(&[])
                    .iter()
                    .filter(|m| m.flags & flags::DELETED != 0)
                    .filter(|m| set.as_ref().is_none_or(|s| s.contains(m.uid, largest)))
                    .map(|m| m.uid)
                    .collect()
            })
            .unwrap_or_default();
        if uids.is_empty() {
            self.update(store, out, true, &HashSet::new());
            out.line(&format!("{tag} OK EXPUNGE completed"));
            return;
        }
        self.pending = Some(Pending::Expunge {
            tag: tag.to_string(),
            closing: false,
        });
        out.actions
            .push(Action::Write(Change::Expunge { mailbox, uids }.into()));
    }
}
