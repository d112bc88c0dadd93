//! COPY, MOVE and their UID forms (RFC 9051 §6.4.7, RFC 6851, UIDPLUS COPYUID).

use super::*;

impl Session {
    pub(super) fn copy(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        moving: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let verb = if moving { "MOVE" } else { "COPY" };
        let (Some(set), Some(dest)) = (
            args.first().and_then(Token::as_str),
            self.mailbox_name(args.get(1)),
        ) else {
            return self.bad(
                tag,
                &format!("{verb} needs a sequence set and a mailbox"),
                out,
            );
        };
        let set = match SequenceSet::parse(&set) {
            Ok(s) => s,
            Err(e) => return self.bad(tag, &e, out),
        };
        if moving && self.selected.as_ref().is_none_or(|s| s.read_only) {
            out.line(&format!("{tag} NO [READ-ONLY] Mailbox is read-only"));
            return;
        }
        let targets = match self.resolve(&set, uid, store) {
            Ok(t) => t,
            Err(e) => return self.bad(tag, &e, out),
        };
        let Some(to) = store.account().and_then(|a| a.mailbox(&normalize(&dest))) else {
            out.line(&format!("{tag} NO [TRYCREATE] No such mailbox"));
            return;
        };
        let Some(from) = self.selected.as_ref().map(|s| s.id) else {
            return;
        };
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        if uids.is_empty() {
            self.update(store, out, uid, &HashSet::new());
            out.line(&format!("{tag} OK {verb} completed (no messages)"));
            return;
        }
        // A MOVE inside the account changes no usage; a COPY adds its messages.
        if !moving {
            let bytes: u64 = self
                .mailbox(store)
                .map(|mb| {
                    uids.iter()
                        .filter_map(|u| mb.messages.binary_search_by_key(u, |m| m.uid).ok())
                        .filter_map(|at| mb.messages.get(at))
                        .map(|m| u64::from(m.len))
                        .sum()
                })
                .unwrap_or(0);
            if self.over_quota(tag, store, bytes, uids.len() as u64, out) {
                return;
            }
        }
        self.pending = Some(Pending::Copy {
            tag: tag.to_string(),
            uid,
            moving,
            uidvalidity: to.uidvalidity,
        });
        out.actions.push(Action::Write(
            Change::Copy {
                from,
                uids,
                to: to.id,
                expunge_source: moving,
            }
            .into(),
        ));
    }
}
