//! IMAP QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT and SETQUOTA over the account's one
//! quota root `""`, and the check APPEND and COPY make before writing (`NO
//! [OVERQUOTA]`). Limits come from the store's view of the logged-in user
//! ([`Mailstore::quota`]: `shardmail user quota` over `quota.*_default`), usage from
//! the index, kept incrementally (never a scan). Part of the sans-IO session.

use super::super::lexer::Token;
use super::super::names::normalize;
use super::{Mailstore, Outbox, Session};
use crate::users::Quota;

/// The capabilities this module answers for.
/// (QUOTA itself comes with the GETQUOTA verb.)
pub(super) const CAPABILITIES: &str = " QUOTA=RES-STORAGE QUOTA=RES-MESSAGE";

impl Session {
    /// Whether storing `bytes` more in `messages` more messages would pass a limit;
    /// if so, answers `NO [OVERQUOTA]`.
    pub(super) fn over_quota(
        &self,
        tag: &str,
        store: &dyn Mailstore,
        bytes: u64,
        messages: u64,
        out: &mut Outbox,
    ) -> bool {
        let usage = store.account().map(|a| a.usage).unwrap_or_default();
        let over = store.quota().is_exceeded_by(usage, bytes, messages);
        if over {
            out.line(&format!(
                "{tag} NO [OVERQUOTA] Quota exceeded (GETQUOTAROOT INBOX shows it)"
            ));
        }
        over
    }

    /// GETQUOTA root / GETQUOTAROOT mailbox / SETQUOTA root (…).
    pub(super) fn quota_command(
        &mut self,
        tag: &str,
        name: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(arg) = self.mailbox_name(args.first()) else {
            return self.bad(tag, &format!("{name} needs a quota root or mailbox"), out);
        };
        match name {
            "GETQUOTAROOT" => {
                let mailbox = normalize(&arg);
                if store.account().and_then(|a| a.mailbox(&mailbox)).is_none() {
                    out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
                    return;
                }
                let mut line = b"* QUOTAROOT ".to_vec();
                super::render::mailbox_name(&mut line, &mailbox);
                line.extend_from_slice(b" \"\"\r\n");
                out.reply.extend_from_slice(&line);
                quota_line(out, store);
                out.line(&format!("{tag} OK GETQUOTAROOT completed"));
            }
            "GETQUOTA" if arg.is_empty() => {
                quota_line(out, store);
                out.line(&format!("{tag} OK GETQUOTA completed"));
            }
            "GETQUOTA" => out.line(&format!(
                "{tag} NO [NONEXISTENT] No such quota root (the account's is \"\")"
            )),
            _ => out.line(&format!(
                "{tag} NO [NOPERM] Quotas are set by the administrator (shardmail user quota)"
            )),
        }
    }
}

/// `* QUOTA "" (STORAGE used limit MESSAGE used limit)`: only resources with a limit;
/// STORAGE in units of 1,024 bytes, rounded up (RFC 9208 §5.1).
fn quota_line(out: &mut Outbox, store: &dyn Mailstore) {
    let usage = store.account().map(|a| a.usage).unwrap_or_default();
    let Quota { storage, messages } = store.quota();
    let mut resources = Vec::new();
    if let Some(limit) = storage.filter(|l| *l != u64::MAX) {
        resources.push(format!(
            "STORAGE {} {}",
            usage.bytes.div_ceil(1024),
            limit / 1024
        ));
    }
    if let Some(limit) = messages.filter(|l| *l != u64::MAX) {
        resources.push(format!("MESSAGE {} {limit}", usage.messages));
    }
    out.line(&format!("* QUOTA \"\" ({})", resources.join(" ")));
}
