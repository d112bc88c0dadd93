//! MAIL and RCPT: a transaction's envelope. The sender's checks (size, SMTPUTF8, a
//! login's own address, the message rate limit, SPF as an action), each recipient's
//! resolution (alias, quota, the recipient's own sender lists, relay rules), the
//! recipient and failed-command rate limits and greylisting. Part of the pure
//! [`Session`]: every lookup goes through the [`Directory`].

use super::command::{self, MailParams, RcptParams};
use super::*;
use crate::proto::smtp::notify;

impl Session {
    pub(super) fn mail(
        &mut self,
        from: Option<command::Mailbox<'_>>,
        params: MailParams<'_>,
        dir: &dyn Directory,
        out: &mut Outbox,
    ) {
        if self.helo.is_none() {
            return out.line("503 5.5.1 Send EHLO or HELO first");
        }
        if self.transaction.is_some() {
            return out.line("503 5.5.1 Nested MAIL command");
        }
        if self.requires_auth() && self.authenticated.is_none() {
            return out.line("530 5.7.0 Authentication required");
        }
        if params
            .size
            .is_some_and(|s| s > self.config.message_size_max as u64)
        {
            return out.line("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        if params.requiretls && !self.tls {
            // Only offered after STARTTLS (RFC 8689 §4).
            return out.line("530 5.7.10 REQUIRETLS needs a TLS session: STARTTLS first");
        }
        if from.is_some_and(|m| !m.is_ascii()) && !params.smtputf8 {
            return out.line("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        if let (Some(login), Some(sender)) = (self.authenticated.as_deref(), from) {
            let sender = sender.to_address();
            if self.config.sender_login_match && !dir.may_send_as(login, &sender) {
                return out.line(&format!(
                    "553 5.7.1 <{sender}>: Sender address rejected: not owned by user {login}"
                ));
            }
        }
        let mail_from = from.map(|m| m.to_address()).unwrap_or_default();
        if let Some(reply) =
            dir.rate_limited(self.rate_event(RateCount::Messages, &mail_from, None))
        {
            return self.refuse_for_rate(&reply, out);
        }
        self.transaction = Some(Transaction {
            mail_from,
            smtputf8: params.smtputf8,
            require_tls: params.requiretls,
            dsn: MessageDsn {
                ret: params.ret,
                envid: params.envid.and_then(notify::parse_envid),
            },
            recipients: Vec::new(),
            message: None,
            header_len: 0,
            bdat_bytes: 0,
            bdat_oversize: false,
            used_bdat: false,
            spf: None,
            greylisted: None,
        });
        if self.verify {
            self.state = State::Waiting;
            out.actions.push(Action::CheckSpf {
                ip: self.peer,
                helo: self.helo.clone().unwrap_or_default(),
                mail_from: from.map(|m| m.to_address()).unwrap_or_default(),
            });
            return;
        }
        out.line("250 2.1.0 Sender ok");
    }

    pub(super) fn rcpt(
        &mut self,
        to: command::Mailbox<'_>,
        params: RcptParams<'_>,
        dir: &dyn Directory,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.transaction.as_ref() else {
            return out.line("503 5.5.1 Need MAIL before RCPT");
        };
        if txn.message.is_some() {
            return out.line("503 5.5.1 RCPT not allowed during BDAT");
        }
        let address = if to.domain.is_empty() {
            format!("postmaster@{}", self.config.postmaster_domain)
        } else {
            to.to_address()
        };
        let refusal = if txn.recipients.len() >= self.config.recipients_max {
            Some("452 4.5.3 Too many recipients".to_string())
        } else if !to.is_ascii() && !txn.smtputf8 {
            Some("553 5.6.7 Non-ASCII address requires SMTPUTF8".to_string())
        } else {
            let dsn = RcptDsn {
                notify: params.notify,
                orcpt: params.orcpt.and_then(notify::parse_orcpt),
            };
            self.add_recipient(address.clone(), dsn, dir)
        };
        let mail_from = self
            .transaction
            .as_ref()
            .map(|t| t.mail_from.as_str())
            .unwrap_or_default();
        let count = match refusal {
            None => RateCount::Recipients,
            Some(_) => RateCount::FailedCommands,
        };
        if let Some(reply) = dir.rate_limited(self.rate_event(count, mail_from, Some(&address))) {
            if refusal.is_none() {
                if let Some(t) = self.transaction.as_mut() {
                    t.recipients.pop();
                }
            }
            return self.refuse_for_rate(&reply, out);
        }
        let allowed = self
            .transaction
            .as_ref()
            .and_then(|t| t.recipients.last())
            .is_some_and(|r| r.sender_allowed);
        if refusal.is_none() && !allowed {
            let event = self.rate_event(RateCount::Recipients, mail_from, Some(&address));
            match dir.greylisted(event) {
                Greylisting::Pass => {}
                Greylisting::Defer(reply) => {
                    if let Some(t) = self.transaction.as_mut() {
                        t.recipients.pop();
                    }
                    return out.line(&reply);
                }
                Greylisting::DeferUnlessDkim(reply) => {
                    if let Some(t) = self.transaction.as_mut() {
                        t.greylisted.get_or_insert(reply);
                    }
                }
            }
        }
        match refusal {
            None => out.line(
                match self.transaction.as_ref().and_then(|t| t.recipients.last()) {
                    Some(r) if r.remote => "250 2.1.5 Recipient ok (will be relayed)",
                    _ => "250 2.1.5 Recipient ok",
                },
            ),
            Some(reply) => {
                if self.refused.len() < REFUSED_KEPT_MAX {
                    let mail_from = self
                        .transaction
                        .as_ref()
                        .map(|t| t.mail_from.clone())
                        .unwrap_or_default();
                    self.refused.push(RefusedRecipient {
                        mail_from,
                        address,
                        reply: reply.clone(),
                    });
                }
                out.line(&reply)
            }
        }
    }

    pub(super) fn rate_event<'a>(
        &'a self,
        count: RateCount,
        sender: &'a str,
        recipient: Option<&'a str>,
    ) -> RateEvent<'a> {
        RateEvent {
            count,
            ip: self.peer,
            port: self.config.port,
            user: self.authenticated.as_deref(),
            sender,
            recipient,
        }
    }

    /// A rate limit's refusal: a `421` ends the session.
    pub(super) fn refuse_for_rate(&mut self, reply: &str, out: &mut Outbox) {
        out.line(reply);
        if reply.starts_with("421") {
            self.close(out);
        }
    }

    /// Resolves `address` and adds it to the transaction, or returns the refusal.
    fn add_recipient(
        &mut self,
        address: String,
        dsn: RcptDsn,
        dir: &dyn Directory,
    ) -> Option<String> {
        let is_mx = self.config.port == Port::Mx;
        let authenticated = self.authenticated.is_some();
        let txn = self.transaction.as_mut()?;
        match dir.resolve(&address) {
            Resolution::Local { account, mailbox } => {
                let policy = self.config.policies.for_address(&address);
                if let Some(reply) = txn.spf.and_then(|spf| policy::spf_reply(spf, policy)) {
                    return Some(reply.to_string());
                }
                let sender_allowed = match dir.sender_verdict(&mailbox, &txn.mail_from) {
                    SenderVerdict::Block => {
                        return Some(format!(
                            "550 5.7.1 <{address}>: Sender address rejected: blocked by the \
                             recipient"
                        ));
                    }
                    // A forged sender does not get past the checks: with SPF checked,
                    // only a pass counts.
                    SenderVerdict::Allow => txn.spf.is_none_or(|spf| spf == SpfKind::Pass),
                    SenderVerdict::Neutral => false,
                };
                txn.recipients.push(Recipient {
                    address,
                    account,
                    mailbox,
                    remote: false,
                    sender_allowed,
                    dsn,
                });
                None
            }
            Resolution::UnknownUser => Some(format!(
                "550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            )),
            Resolution::OverQuota { permanent: false } => Some(format!(
                "452 4.2.2 <{address}>: Mailbox full (over quota), try again later"
            )),
            Resolution::OverQuota { permanent: true } => {
                Some(format!("552 5.2.2 <{address}>: Mailbox full (over quota)"))
            }
            Resolution::NotLocal if is_mx || !authenticated => {
                Some(format!("554 5.7.1 <{address}>: Relay access denied"))
            }
            Resolution::NotLocal => {
                // Authenticated submission: relayed through the outbound queue.
                txn.recipients.push(Recipient {
                    address,
                    account: 0,
                    mailbox: String::new(),
                    remote: true,
                    sender_allowed: false,
                    dsn,
                });
                None
            }
        }
    }
}
