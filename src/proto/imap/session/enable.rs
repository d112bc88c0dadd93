//! ENABLE (RFC 5161) and what it turns on: CONDSTORE (also by the first MODSEQ a
//! client uses, RFC 7162 §3.1), QRESYNC, IMAP4rev2 and UTF8=ACCEPT. No IO.

use super::*;

impl Session {
    /// A CONDSTORE-enabling command (RFC 7162 §3.1): the first one while a mailbox is
    /// selected also reports the mailbox's HIGHESTMODSEQ, before its own replies.
    pub(super) fn condstore_on(&mut self, store: &dyn Mailstore, out: &mut Outbox) {
        if std::mem::replace(&mut self.condstore, true) {
            return;
        }
        // What the session has been told up to, not the mailbox's newest: changes
        // it has not heard of yet must not look already synchronised.
        if let (Some(sel), Some(_)) = (&self.selected, self.mailbox(store)) {
            out.line(&format!(
                "* OK [HIGHESTMODSEQ {}] Highest",
                sel.reported_modseq
            ));
        }
    }

    pub(super) fn enable(&mut self, tag: &str, args: &[Token<'_>], out: &mut Outbox) {
        let mut enabled = Vec::new();
        for a in args {
            let Some(name) = a.as_str() else { continue };
            match name.to_ascii_uppercase().as_str() {
                "CONDSTORE" if !self.condstore => {
                    self.condstore = true;
                    enabled.push("CONDSTORE");
                }
                "QRESYNC" if !self.qresync => {
                    self.qresync = true;
                    self.condstore = true;
                    enabled.push("QRESYNC");
                }
                "UTF8=ACCEPT" if !self.utf8_accept => {
                    self.utf8_accept = true;
                    enabled.push("UTF8=ACCEPT");
                }
                "IMAP4REV2" if !self.rev2 => {
                    self.rev2 = true;
                    enabled.push("IMAP4rev2");
                }
                _ => {}
            }
        }
        if enabled.is_empty() {
            out.line("* ENABLED");
        } else {
            out.line(&format!("* ENABLED {}", enabled.join(" ")));
        }
        out.line(&format!("{tag} OK ENABLE completed"));
    }
}
