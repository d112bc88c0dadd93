//! What happens between "the message is complete" and "every owner has it durably".
//!
//! Inbound (MX) mail is verified by the auth worker (DKIM, ARC, DMARC with the SPF
//! verdict of its transaction), judged by `[auth]` policy (reject, defer, Junk or
//! INBOX) and gets our Authentication-Results. Mail from an authenticated user gets an
//! `auth=pass` Authentication-Results and a DKIM signature when its domain has a key —
//! only for a From: address the login owns (`auth.from_header_match`), so one user
//! of a multi-domain server cannot sign as another hosted domain.
//! Any Authentication-Results that arrived claiming our authserv-id is removed, and
//! any Return-Path. The milters (`milter.servers`) then see it with our Received on
//! top and may reject, discard, quarantine or change it; a submission is signed
//! after their changes. Local copies get our Return-Path (the envelope sender), and a copy for an
//! account reached through an alias or catch-all also gets `Delivered-To:` (the
//! account) and `X-Original-To:` (the address it was sent to). The message is then
//! stored in every recipient's partition (`mesh::store`); local recipients that asked
//! for NOTIFY=SUCCESS then get an `Action: delivered` notice, sent off the reply's path.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::delivery_log::{Client, Verdicts};
use super::screen::{self, Screened};
use super::{mesh, Shard};
use crate::auth::dkim::KeyFile;
use crate::auth::headers;
use crate::auth::policy::{self, Disposition};
use crate::auth::verify::SpfVerdict;
use crate::config::raw::DnsblLookup;
use crate::config::FromHeaderMatch;
use crate::proto::milter::Transaction;
use crate::proto::smtp::dsn::{DsnAction, RecipientStatus};
use crate::proto::smtp::notify::RcptDsn;
use crate::proto::smtp::{DeliveryError, Envelope, Recipient};
use crate::store::index::SpecialUse;

/// Mailbox ids of every account (`store::index::DEFAULT_MAILBOXES`).
const INBOX: u32 = SpecialUse::Inbox as u32;
const JUNK: u32 = SpecialUse::Junk as u32;

const CHECKS_BUSY: &str = "451 4.3.2 Too many messages are being checked, try again later";

/// What [`accept`] found out and did, for the delivery log.
#[derive(Debug, Default)]
pub struct Notes {
    pub verdicts: Verdicts,
    /// The mailbox local copies went to (`INBOX`, or `Junk` by policy).
    pub mailbox: &'static str,
    /// The outbound queue's id for the remote recipients.
    pub queue_id: Option<String>,
    /// The milter that had the message discarded (accepted, stored nowhere).
    pub discarded_by: Option<String>,
    /// Why local copies went to Junk (for the log), empty otherwise.
    pub junk_reason: String,
}

impl Notes {
    /// Local copies go to Junk for `reason` (the reasons add up).
    fn junk(&mut self, reason: String) {
        self.mailbox = "Junk";
        if !self.junk_reason.is_empty() {
            self.junk_reason.push_str("; ");
        }
        self.junk_reason.push_str(&reason);
    }
}

/// What the session knows about the message besides its envelope.
#[derive(Debug)]
pub struct Context<'a> {
    /// The transaction's SPF verdict (MX mail being verified).
    pub spf: Option<SpfVerdict>,
    /// The connect-time DNS list verdict (MX port).
    pub screened: &'a super::screen::Screened,
    /// Who sent it (for the milters).
    pub client: &'a Client,
}

/// Where local copies go and the headers we put on top, as the checks decided.
struct Judged {
    prefix: String,
    mailbox: u32,
}

/// Verifies or signs `envelope` as its origin requires, asks the milters, then stores
/// it everywhere.
pub async fn accept(
    shard: &Rc<Shard>,
    envelope: Envelope,
    message: Bytes,
    cx: Context<'_>,
    notes: &mut Notes,
) -> Result<(), DeliveryError> {
    notes.mailbox = "INBOX";
    let mut received = message.slice(..envelope.received_len.min(message.len()));
    let original = message.slice(envelope.received_len.min(message.len())..);
    let mut judged = judge(
        shard,
        &envelope,
        original.clone(),
        cx.spf,
        cx.screened,
        notes,
    )
    .await?;
    let hostname = &shard.config().hostname;
    let mut body = match headers::strip_untrusted(&original, hostname) {
        Some(stripped) => Bytes::from(stripped),
        None => original,
    };
    if !shard.config().milter.servers.is_empty() {
        let whole = Bytes::from([received.as_ref(), body.as_ref()].concat());
        let tx = transaction(shard, &envelope, cx.client);
        let filtered = super::milter::filter(shard, &tx, whole).await?;
        if filtered.discarded_by.is_some() {
            notes.discarded_by = filtered.discarded_by;
            return Ok(());
        }
        if let Some(reason) = &filtered.quarantine {
            judged.mailbox = JUNK;
            notes.junk(format!("milter quarantine: {reason}"));
        }
        if let Some(changed) = filtered.message {
            // Our Received is in the changed message, where the milters left it.
            received = Bytes::new();
            body = changed;
        }
    }
    let signature = match &envelope.authenticated {
        Some(user) => submission_signature(shard, &envelope.id, user, &body).await?,
        None => String::new(),
    };
    let (remote, local): (Vec<_>, Vec<_>) = envelope.recipients.into_iter().partition(|r| r.remote);
    if !remote.is_empty() {
        // What leaves: the DKIM signature and our Received, never our own
        // Authentication-Results (it would publish the user's login). In parts: a
        // large body is written to the queue from its spool map, not copied.
        let outgoing = vec![
            Bytes::from(signature.clone()),
            received.clone(),
            body.clone(),
        ];
        let mut addresses: Vec<(String, RcptDsn)> =
            remote.into_iter().map(|r| (r.address, r.dsn)).collect();
        addresses.sort_by(|a, b| a.0.cmp(&b.0));
        addresses.dedup_by(|a, b| a.0 == b.0);
        let from = &envelope.mail_from;
        let (dsn, require_tls) = (&envelope.dsn, envelope.require_tls);
        let queue_id = super::outbound::enqueue(
            shard,
            from,
            &addresses,
            dsn,
            require_tls,
            outgoing,
        )
        .await
        .map_err(|e| {
            tracing::error!(id = %envelope.id, error = %e, "cannot queue for remote delivery");
            DeliveryError::Temporary
        })?;
        notes.queue_id = Some(queue_id);
    }
    if local.is_empty() {
        return Ok(());
    }
    // Final delivery: the envelope sender at the top (RFC 5321 §4.4; any that came
    // with the message was stripped above). The same for every recipient addressed by
    // its own name, so their blob stays shared; an account reached only through an
    // alias or catch-all gets its own copy saying which address it was for.
    let return_path = format!("Return-Path: <{}>\r\n", envelope.mail_from);
    let prefix = &judged.prefix;
    let mut common =
        Vec::with_capacity(return_path.len() + prefix.len() + signature.len() + received.len());
    common.extend_from_slice(prefix.as_bytes());
    common.extend_from_slice(signature.as_bytes());
    common.extend_from_slice(&received);
    if !notes.junk_reason.is_empty() {
        tracing::info!(
            target: "shardmail::antispam",
            check = "junk",
            id = %envelope.id,
            reason = notes.junk_reason.as_str(),
            "delivered to Junk"
        );
    }
    let success_notices = success_notices(&local, &shard.config().hostname);
    let (direct, aliased) = by_alias(local);
    // A recipient who allowlisted the sender gets it in the inbox whatever the checks
    // said (a refusal still stands).
    let mailbox_of = |r: &Recipient| {
        if r.sender_allowed {
            INBOX
        } else {
            judged.mailbox
        }
    };
    let (to_inbox, as_judged): (Vec<_>, Vec<_>) =
        direct.into_iter().partition(|r| mailbox_of(r) == INBOX);
    for (group, mailbox) in [(to_inbox, INBOX), (as_judged, judged.mailbox)] {
        if group.is_empty() {
            continue;
        }
        let mut head = return_path.clone().into_bytes();
        head.extend_from_slice(&common);
        mesh::store(
            shard,
            head,
            body.clone(),
            &group,
            mailbox,
            envelope.received_at,
        )
        .await?;
    }
    for recipient in aliased {
        let mailbox = mailbox_of(&recipient);
        // Postfix's pair: the account it was delivered to, and the address it was for.
        let trace = format!(
            "Delivered-To: {}\r\nX-Original-To: {}\r\n",
            recipient.mailbox, recipient.address
        );
        let mut head = trace.into_bytes();
        head.extend_from_slice(return_path.as_bytes());
        head.extend_from_slice(&common);
        let one = std::slice::from_ref(&recipient);
        mesh::store(
            shard,
            head,
            body.clone(),
            one,
            mailbox,
            envelope.received_at,
        )
        .await?;
    }
    if !success_notices.is_empty() {
        // After every copy is durable; off the reply's path (the 250 does not wait).
        let (shard, id, from, dsn) = (
            shard.clone(),
            envelope.id.clone(),
            envelope.mail_from.clone(),
            envelope.dsn.clone(),
        );
        let arrival = envelope.received_at;
        glommio::spawn_local(async move {
            let about = super::outbound::About {
                id: &id,
                mail_from: &from,
                arrival,
                dsn: &dsn,
            };
            let action = DsnAction::Delivered;
            super::outbound::notify(&shard, &about, action, &success_notices, &body).await;
        })
        .detach();
    }
    Ok(())
}

/// The lines of a `delivered` notice, for the local recipients that asked for one
/// (NOTIFY=SUCCESS, RFC 3461 §4.1).
fn success_notices(local: &[Recipient], hostname: &str) -> Vec<RecipientStatus> {
    local
        .iter()
        .filter(|r| r.dsn.notify().success)
        .map(|r| RecipientStatus {
            address: r.address.clone(),
            status: "2.0.0".into(),
            remote_mta: None,
            diagnostic: format!("250 2.0.0 delivered to the mailbox at {hostname}"),
            original_recipient: r.dsn.orcpt.clone(),
        })
        .collect()
}

/// MX mail: DKIM, ARC and DMARC verdicts by the auth worker, judged by `[auth]`
/// policy; submitted mail: our `auth=pass`. Then the connect-time DNS list score.
async fn judge(
    shard: &Shard,
    envelope: &Envelope,
    original: Bytes,
    spf: Option<SpfVerdict>,
    screened: &Screened,
    notes: &mut Notes,
) -> Result<Judged, DeliveryError> {
    let hostname = &shard.config().hostname;
    let mut judged = Judged {
        prefix: String::new(),
        mailbox: INBOX,
    };
    let mut verdict_domains = None;
    if envelope.verify {
        let (Some(spf), Some(auth)) = (spf, shard.auth.as_ref()) else {
            return Err(DeliveryError::Temporary);
        };
        notes.verdicts.spf = spf.kind().name();
        let verdict = auth
            .message(spf, original)
            .await
            .map_err(|_| DeliveryError::Refused(CHECKS_BUSY.into()))?;
        notes.verdicts.dkim = verdict.dkim;
        verdict_domains = Some(verdict.dkim_domains.clone());
        notes.verdicts.dmarc = verdict.dmarc.name();
        let recipients = envelope.recipients.iter().map(|r| r.address.as_str());
        match policy::disposition_for(&verdict, &shard.config().auth.policies, recipients) {
            Disposition::Reject(reply) | Disposition::Defer(reply) => {
                tracing::info!(id = %envelope.id, %reply, "message refused by policy");
                return Err(DeliveryError::Refused(reply));
            }
            Disposition::Junk => {
                judged.mailbox = JUNK;
                notes.junk(format!("dmarc={} policy", verdict.dmarc.name()));
            }
            Disposition::Inbox => {}
        }
        judged.prefix.push_str(&verdict.header);
    } else if let Some(user) = &envelope.authenticated {
        judged.prefix.push_str(&format!(
            "Authentication-Results: {hostname};\r\n\tauth=pass smtp.auth={user}\r\n"
        ));
    }
    let dkim_domains = verdict_domains.unwrap_or_default();
    let checks = after_data_checks(shard, envelope, screened, &dkim_domains).await?;
    if !checks.lists.is_empty() {
        // The DNS list and reverse DNS verdicts, for the user's filters.
        judged.prefix.push_str(&format!(
            "X-Spam-Score: {} (dnsbl: {})\r\n",
            checks.score, checks.lists
        ));
        if checks.score >= shard.config().antispam.junk_score {
            judged.mailbox = JUNK;
            notes.junk(format!("score {} ({})", checks.score, checks.lists));
        }
    }
    Ok(judged)
}

/// The checks that need the whole message: the sender-domain and DKIM-domain lists
/// (`antispam.dnsbl` with `lookup`), added to the connect-time score, and
/// greylisting held back for a DKIM allowlist. `Err`: refused.
async fn after_data_checks(
    shard: &Shard,
    envelope: &Envelope,
    screened: &Screened,
    dkim_domains: &[String],
) -> Result<Screened, DeliveryError> {
    let mut checks = screened.clone();
    if !screened.checked {
        return match &envelope.greylisted {
            Some(reply) => Err(DeliveryError::Refused(reply.clone())),
            None => Ok(checks),
        };
    }
    let config = shard.config();
    let sender_domain: Vec<String> = envelope
        .mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .into_iter()
        .collect();
    let by_sender = screen::ask_lists(shard, DnsblLookup::SenderDomain, &sender_domain);
    let by_dkim = screen::ask_lists(shard, DnsblLookup::DkimDomain, dkim_domains);
    let ((by_sender, _), (by_dkim, allowlisted)) =
        futures_lite::future::zip(by_sender, by_dkim).await;
    let domains_listed = !by_sender.lists.is_empty() || !by_dkim.lists.is_empty();
    checks.add(&by_sender);
    checks.add(&by_dkim);
    if domains_listed && checks.score >= config.antispam.reject_score {
        crate::metrics::add(&shard.metrics.dnsbl_rejected, 1);
        tracing::info!(
            target: "shardmail::antispam",
            check = "dnsbl",
            id = %envelope.id,
            score = checks.score,
            lists = checks.lists.as_str(),
            refused = true,
            "message listed"
        );
        return Err(DeliveryError::Refused(format!(
            "554 5.7.1 Message refused; listed: {} (antispam.dnsbl)",
            checks.lists
        )));
    }
    if let Some(reply) = &envelope.greylisted {
        let allowed = dkim_domains
            .iter()
            .find(|d| config.antispam.allow_dkim_domains.contains(d) || allowlisted.contains(d));
        let Some(domain) = allowed else {
            return Err(DeliveryError::Refused(reply.clone()));
        };
        tracing::info!(
            target: "shardmail::antispam",
            check = "greylist",
            id = %envelope.id,
            dkim_domain = %domain,
            "greylisting skipped for a DKIM pass from an allowlisted domain"
        );
    }
    Ok(checks)
}

/// What the milters are told about this message.
fn transaction(shard: &Shard, envelope: &Envelope, client: &Client) -> Transaction {
    let (tls_version, cipher) = client
        .tls
        .split_once(' ')
        .map(|(v, c)| (v.to_string(), c.to_string()))
        .unwrap_or_default();
    Transaction {
        hostname: shard.config().hostname.clone(),
        client_name: if client.name.is_empty() {
            "unknown".into()
        } else {
            client.name.clone()
        },
        client_ip: client.ip,
        client_port: client.port,
        helo: client.helo.clone(),
        tls_version,
        cipher,
        auth_user: envelope.authenticated.clone().unwrap_or_default(),
        queue_id: envelope.id.clone(),
        mail_from: envelope.mail_from.clone(),
        recipients: envelope
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect(),
    }
}

/// The DKIM signature for mail `user` submitted, when its From: is theirs (or
/// `auth.from_header_match` lets it through); `Err` when that setting refuses it.
async fn submission_signature(
    shard: &Shard,
    id: &str,
    user: &str,
    body: &Bytes,
) -> Result<String, DeliveryError> {
    let from = header_from_domains(body);
    let owned = from
        .iter()
        .all(|(address, _)| from_owned(shard, user, address));
    let sign_it = match shard.config().auth.from_header_match {
        _ if owned => true,
        FromHeaderMatch::Off => true,
        FromHeaderMatch::Unsigned => {
            tracing::info!(%id, %user, "From: not owned by the login; sent unsigned");
            false
        }
        FromHeaderMatch::Refuse => {
            let address = from
                .iter()
                .find(|(a, _)| !from_owned(shard, user, a))
                .map(|(a, _)| a.clone())
                .unwrap_or_default();
            tracing::info!(%id, %user, %address, "From: not owned by the login; refused");
            return Err(DeliveryError::Refused(format!(
                "550 5.7.1 From: header address <{address}> is not owned by user {user} \
                 (auth.from_header_match)"
            )));
        }
    };
    let from_domain = from.first().map(|(_, d)| d.clone());
    if !sign_it {
        return Ok(String::new());
    }
    Ok(sign(shard, user, from_domain, body.clone())
        .await
        .unwrap_or_default())
}

/// Splits local recipients into those addressed by their account's own address and,
/// one per account, the accounts reached only through an alias or catch-all (an
/// account reached both ways gets one copy, the direct one).
fn by_alias(local: Vec<Recipient>) -> (Vec<Recipient>, Vec<Recipient>) {
    let direct_accounts: Vec<u64> = local
        .iter()
        .filter(|r| r.address.eq_ignore_ascii_case(&r.mailbox))
        .map(|r| r.account)
        .collect();
    let (direct, rest): (Vec<Recipient>, Vec<Recipient>) = local
        .into_iter()
        .partition(|r| direct_accounts.contains(&r.account));
    let mut aliased: Vec<Recipient> = Vec::new();
    for r in rest {
        if !aliased.iter().any(|a| a.account == r.account) {
            aliased.push(r);
        }
    }
    (direct, aliased)
}

/// The addresses of the From: header (RFC 5322 allows several), with their
/// lowercased domains.
fn header_from_domains(message: &[u8]) -> Vec<(String, String)> {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    let Some(from) = parsed.from() else {
        return Vec::new();
    };
    from.iter()
        .filter_map(|a| a.address())
        .map(|a| {
            let domain = a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
            (a.to_string(), domain.unwrap_or_default())
        })
        .collect()
}

/// May `login` put `address` in From:? Its own address or an alias of it, or a
/// domain `auth.from_header_domains` lists for it.
fn from_owned(shard: &Shard, login: &str, address: &str) -> bool {
    if shard.users.borrow().owns(login, address) {
        return true;
    }
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    shard
        .config()
        .auth
        .from_header_domains
        .get(&login.to_ascii_lowercase())
        .is_some_and(|domains| domains.contains(&domain))
}

/// The key to sign with: the From header's domain (already checked to be the
/// login's), else the user's own domain.
fn signing_key(shard: &Shard, user: &str, from_domain: Option<String>) -> Option<Arc<KeyFile>> {
    let user_domain = user.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    [from_domain, user_domain]
        .into_iter()
        .flatten()
        .find_map(|d| shard.dkim_key(&d))
}

/// A `DKIM-Signature:` header for mail from `user`, computed off the reactor.
async fn sign(
    shard: &Shard,
    user: &str,
    from_domain: Option<String>,
    message: Bytes,
) -> Option<String> {
    let key = signing_key(shard, user, from_domain)?;
    let result = glommio::executor()
        .spawn_blocking(move || key.sign(&message))
        .await;
    match result {
        Ok(header) => Some(header),
        Err(e) => {
            tracing::error!(error = %e, "DKIM signing failed; the message is stored unsigned");
            None
        }
    }
}
