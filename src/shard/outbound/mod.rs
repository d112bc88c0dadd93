//! The outbound queue's delivery side on one shard (DESIGN.md §6).
//!
//! Each shard delivers the entries it enqueued (and, after a restart, the spooled
//! entries whose id hashes to it). A scheduler wakes every second (or at once for new
//! mail and `shardmail queue flush`), and for each due entry groups the pending
//! recipients by domain, routes each domain (relay host, transport override, or MX via
//! the DNS worker: [`route`]), and runs one SMTP transaction per domain
//! ([`transaction`]) on a pooled connection ([`pool`]) whose dialogue is the sans-IO
//! `proto::smtp::client` session: EHLO, opportunistic (or required, verified) STARTTLS,
//! AUTH for the relay, pipelined MAIL/RCPT, BDAT when offered or DATA. Idle connections
//! are reused per destination, within per-destination and per-shard limits, and closed
//! with QUIT once unused for `IDLE_REUSE`. Temporary failures retry with backoff;
//! permanent ones and expiry produce a DSN to the sender. Only this module speaks SMTP
//! as a client, and it decides on typed results, never on reply text.

mod pool;
mod route;
mod transaction;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::delivery_log::{self, Status};
use super::Shard;
use crate::proto::smtp::dsn::{Dsn, DsnAction, RecipientStatus};
use crate::proto::smtp::notify::{MessageDsn, Notify, RcptDsn};
use crate::proto::smtp::Resolution;
use crate::queue::{self, QueueEntry, RcptState};
use pool::ClientConn;

const TICK: Duration = Duration::from_secs(1);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Per-shard queue state.
pub struct Outbound {
    entries: RefCell<BTreeMap<String, QueueEntry>>,
    active: RefCell<HashSet<String>>,
    connections: Cell<usize>,
    per_destination: RefCell<HashMap<SocketAddr, usize>>,
    idle: RefCell<HashMap<SocketAddr, Vec<(ClientConn, Instant)>>>,
    wake: Cell<bool>,
    flush_seen: Cell<Option<SystemTime>>,
    tls_opportunistic: Arc<rustls::ClientConfig>,
    tls_verified: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("entries", &self.entries.borrow().len())
            .finish()
    }
}

impl Outbound {
    /// `tls_ca`: extra trust anchors for verified TLS (`queue.tls_ca_file`).
    pub fn new(tls_ca: &[rustls_pki_types::CertificateDer<'static>]) -> Outbound {
        Outbound {
            entries: RefCell::new(BTreeMap::new()),
            active: RefCell::new(HashSet::new()),
            connections: Cell::new(0),
            per_destination: RefCell::new(HashMap::new()),
            idle: RefCell::new(HashMap::new()),
            wake: Cell::new(false),
            flush_seen: Cell::new(None),
            tls_opportunistic: crate::tls::client_config_unverified(),
            tls_verified: crate::tls::client_config_verified(tls_ca),
        }
    }

    /// Takes a freshly enqueued entry; the scheduler tries it at once.
    pub fn add(&self, entry: QueueEntry) {
        self.entries.borrow_mut().insert(entry.id.clone(), entry);
        self.wake.set(true);
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Age of the oldest queued message, seconds (0 when the queue is empty). One pass
    /// over the shard's queue: a scrape's cost, about 1 ms per 100,000 messages.
    pub fn oldest_age_secs(&self) -> u64 {
        let oldest = self.entries.borrow().values().map(|e| e.created).min();
        oldest.map_or(0, |created| {
            unix_now().saturating_sub(created).max(0) as u64
        })
    }

    /// Delivery attempts running now.
    pub fn in_flight(&self) -> usize {
        self.active.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new(&[])
    }
}

/// Loads this shard's share of the spool and starts the scheduler.
pub fn start(shard: &Rc<Shard>) {
    let owned: Vec<QueueEntry> = match queue::load_all(&shard.config().data_dir, shard.id == 0) {
        Ok(all) => all
            .into_iter()
            .filter(|e| owner_of(&e.id, shard.config().shards) == shard.id)
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the queue; outbound delivery is stopped");
            return;
        }
    };
    if !owned.is_empty() {
        tracing::info!(
            shard = shard.id,
            messages = owned.len(),
            "resuming queued messages"
        );
    }
    for entry in owned {
        shard
            .outbound
            .entries
            .borrow_mut()
            .insert(entry.id.clone(), entry);
    }
    let shard = shard.clone();
    glommio::spawn_local(async move { scheduler(shard).await }).detach();
}

fn owner_of(id: &str, shards: usize) -> usize {
    (crc32c::crc32c(id.as_bytes()) as usize) % shards.max(1)
}

async fn scheduler(shard: Rc<Shard>) {
    let out = &shard.outbound;
    loop {
        if shard.shutdown.is_fired() {
            return;
        }
        check_flush(&shard);
        let now = unix_now();
        let due: Vec<String> = {
            let active = out.active.borrow();
            out.entries
                .borrow()
                .values()
                .filter(|e| e.next_attempt <= now && !active.contains(&e.id))
                .map(|e| e.id.clone())
                .take(
                    shard
                        .config()
                        .queue
                        .connections_max
                        .saturating_sub(active.len()),
                )
                .collect()
        };
        for id in due {
            out.active.borrow_mut().insert(id.clone());
            let shard = shard.clone();
            glommio::spawn_local(async move {
                attempt(&shard, &id).await;
                shard.outbound.active.borrow_mut().remove(&id);
            })
            .detach();
        }
        if has_stale_idle(out) {
            let shard = shard.clone();
            glommio::spawn_local(async move { pool::close_stale(&shard).await }).detach();
        }
        // Sleep a tick, or less when new mail arrives.
        let mut slept = Duration::ZERO;
        while slept < TICK && !out.wake.replace(false) && !shard.shutdown.is_fired() {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            slept += Duration::from_millis(20);
        }
    }
}

fn has_stale_idle(out: &Outbound) -> bool {
    out.idle
        .borrow()
        .values()
        .flatten()
        .any(|(_, since)| since.elapsed() >= pool::IDLE_REUSE)
}

/// `shardmail queue flush` touches a file; every shard retries everything once per touch.
fn check_flush(shard: &Shard) {
    let path = queue::dir(&shard.config().data_dir).join("flush.request");
    let Ok(mtime) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
        return;
    };
    if shard.outbound.flush_seen.replace(Some(mtime)) == Some(mtime) {
        return;
    }
    let now = unix_now();
    for e in shard.outbound.entries.borrow_mut().values_mut() {
        e.next_attempt = now;
    }
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
enum Outcome {
    /// Accepted by the next hop (`mta`); its reply, and whether the sender's DSN
    /// request went along (the next hop offered DSN).
    Delivered {
        reply: String,
        mta: String,
        dsn_passed: bool,
    },
    Temporary {
        reason: String,
        mta: Option<String>,
    },
    Permanent {
        status: String,
        reason: String,
        mta: Option<String>,
    },
}

async fn attempt(shard: &Rc<Shard>, id: &str) {
    let Some(mut entry) = shard.outbound.entries.borrow().get(id).cloned() else {
        return;
    };
    let data_dir = shard.config().data_dir.clone();
    let id_owned = id.to_string();
    let message = glommio::executor()
        .spawn_blocking(move || queue::read_message(&data_dir, &id_owned))
        .await;
    let message = match message {
        Ok(m) => bytes::Bytes::from(m),
        Err(e) => {
            // Deleted with `shardmail queue delete`, or lost: stop tracking it.
            tracing::warn!(id, error = %e, "queued message is gone; dropping it from the queue");
            shard.outbound.entries.borrow_mut().remove(id);
            let (data_dir, id) = (shard.config().data_dir.clone(), id.to_string());
            let _ = glommio::executor()
                .spawn_blocking(move || queue::remove(&data_dir, &id))
                .await;
            return;
        }
    };
    let mut by_domain: BTreeMap<String, Vec<(String, RcptDsn)>> = BTreeMap::new();
    for r in entry.pending() {
        let domain = r
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let rcpt = (r.address.clone(), r.dsn.clone());
        by_domain.entry(domain).or_default().push(rcpt);
    }
    let tls = if entry.require_tls {
        route::TlsRequest::Required
    } else if tls_not_required(&message) {
        route::TlsRequest::NotRequired
    } else {
        route::TlsRequest::Policy
    };
    let mut tasks = Vec::new();
    for (domain, rcpts) in by_domain {
        let (shard, message, from) = (shard.clone(), message.clone(), entry.mail_from.clone());
        let dsn = entry.dsn.clone();
        tasks.push(glommio::spawn_local(async move {
            let (outcomes, via) =
                transaction::deliver_domain(&shard, &domain, &from, &rcpts, &dsn, tls, &message)
                    .await;
            rcpts
                .into_iter()
                .zip(outcomes)
                .map(|((rcpt, _), outcome)| (rcpt, outcome, via.clone()))
                .collect::<Vec<_>>()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await);
    }
    finish_attempt(shard, &mut entry, results, &message).await;
}

/// `TLS-Required: No` in the header section (RFC 8689 §5).
fn tls_not_required(message: &[u8]) -> bool {
    crate::proto::imap::render::header_value(message, "TLS-Required")
        .is_some_and(|v| v.eq_ignore_ascii_case("No"))
}

/// The delivery log's line for one recipient of one attempt.
fn log_attempt(
    shard: &Shard,
    entry: &QueueEntry,
    address: &str,
    outcome: &Outcome,
    via: &str,
    expired: bool,
    now: i64,
) {
    let (status, reply) = match outcome {
        Outcome::Delivered { reply, .. } => (Status::Delivered, reply.as_str()),
        Outcome::Temporary { reason, .. } if !expired => (Status::Deferred, reason.as_str()),
        Outcome::Temporary { reason, .. } | Outcome::Permanent { reason, .. } => {
            (Status::Bounced, reason.as_str())
        }
    };
    let delay = Duration::from_secs(now.saturating_sub(entry.created).max(0) as u64);
    if status == Status::Delivered {
        let ms = (delay.as_millis() as u64).max(1);
        let _ = shard.metrics.outbound_delay.borrow_mut().record(ms);
    }
    delivery_log::log(
        &shard.metrics,
        &delivery_log::Attempt {
            direction: "out",
            id: &entry.id,
            client: &delivery_log::Client::default(),
            from: &entry.mail_from,
            to: address,
            size: entry.size,
            verdicts: delivery_log::Verdicts::default(),
            relay: via,
            status,
            reply,
            delay,
            attempt: entry.attempts,
        },
    );
}

async fn finish_attempt(
    shard: &Rc<Shard>,
    entry: &mut QueueEntry,
    results: Vec<(String, Outcome, String)>,
    message: &[u8],
) {
    let now = unix_now();
    let q = &shard.config().queue;
    let expired = now - entry.created > q.max_age.as_secs() as i64;
    // Failures and relays the sender asked to hear about (NOTIFY, RFC 3461 §4.1).
    let (mut failed, mut relayed) = (Vec::new(), Vec::new());
    let mut bounced = 0;
    entry.attempts += 1;
    for (address, outcome, via) in results {
        log_attempt(shard, entry, &address, &outcome, &via, expired, now);
        let Some(r) = entry.recipients.iter_mut().find(|r| r.address == address) else {
            continue;
        };
        let notify = r.dsn.notify();
        let (status, reason, mta) = match outcome {
            Outcome::Delivered {
                reply,
                mta,
                dsn_passed,
            } => {
                crate::metrics::add(&shard.metrics.outbound_delivered, 1);
                r.state = RcptState::Delivered;
                // A next hop that speaks DSN took over the sender's request.
                if notify.success && !dsn_passed {
                    relayed.push(recipient_status(r, "2.0.0", Some(mta), reply));
                }
                continue;
            }
            Outcome::Temporary { reason, mta } if !expired => {
                r.last_error = Some(reason);
                r.remote_mta = mta;
                continue;
            }
            Outcome::Temporary { reason, mta } => (
                "4.4.7".to_string(),
                format!("message expired in the queue; last error: {reason}"),
                mta,
            ),
            Outcome::Permanent {
                status,
                reason,
                mta,
            } => (status, reason, mta),
        };
        r.state = RcptState::Failed;
        r.last_error = Some(reason.clone());
        r.remote_mta = mta.clone();
        bounced += 1;
        if notify.failure {
            failed.push(recipient_status(r, &status, mta, reason));
        }
    }
    let about = About::entry(entry);
    if bounced > 0 {
        crate::metrics::add(&shard.metrics.outbound_bounced, bounced);
        tracing::info!(id = %entry.id, failed = bounced, notified = failed.len(), "permanent failure; bouncing");
    }
    if !failed.is_empty() {
        notify(shard, &about, DsnAction::Failed, &failed, message).await;
    }
    if !relayed.is_empty() {
        notify(shard, &about, DsnAction::Relayed, &relayed, message).await;
    }
    if !entry.is_finished() {
        let delay = queue::backoff(entry.attempts, q.retry_min, q.retry_max);
        entry.next_attempt = now + delay.as_secs().max(1) as i64;
        let late = q
            .delay_notice
            .is_some_and(|d| now - entry.created >= d.as_secs() as i64);
        if late && !entry.delay_notified {
            notify_delay(shard, entry, message).await;
            entry.delay_notified = true;
        }
    }
    save_progress(shard, entry).await;
}

/// The one delay notice, for the pending recipients that asked for delays.
async fn notify_delay(shard: &Rc<Shard>, entry: &QueueEntry, message: &[u8]) {
    let delayed: Vec<RecipientStatus> = entry
        .pending()
        .filter(|r| r.dsn.notify().delay)
        .map(|r| {
            let diagnostic = r.last_error.clone();
            let diagnostic = diagnostic.unwrap_or_else(|| "delivery delayed".into());
            recipient_status(r, "4.4.1", r.remote_mta.clone(), diagnostic)
        })
        .collect();
    if !delayed.is_empty() {
        let about = About::entry(entry);
        notify(shard, &about, DsnAction::Delayed, &delayed, message).await;
    }
}

/// Writes the entry's new state (or removes it once finished), then updates memory.
async fn save_progress(shard: &Rc<Shard>, entry: &QueueEntry) {
    let data_dir = shard.config().data_dir.clone();
    let saved = entry.clone();
    let finished = entry.is_finished();
    let result = glommio::executor()
        .spawn_blocking(move || {
            if finished {
                queue::remove(&data_dir, &saved.id).map(|_| ())
            } else {
                queue::save(&data_dir, &saved)
            }
        })
        .await;
    if let Err(e) = result {
        tracing::error!(id = %entry.id, error = %e, "cannot update the queue entry");
    }
    let mut entries = shard.outbound.entries.borrow_mut();
    if finished {
        entries.remove(&entry.id);
    } else if entries.contains_key(&entry.id) {
        entries.insert(entry.id.clone(), entry.clone());
    }
}

/// One recipient's line in a notice, with the sender's ORCPT.
fn recipient_status(
    r: &queue::QueueRcpt,
    status: &str,
    mta: Option<String>,
    diagnostic: String,
) -> RecipientStatus {
    RecipientStatus {
        address: r.address.clone(),
        status: status.to_string(),
        remote_mta: mta,
        diagnostic,
        original_recipient: r.dsn.orcpt.clone(),
    }
}

/// The message a notice is about.
pub struct About<'a> {
    pub id: &'a str,
    /// The notice's recipient; empty (the null sender) means no notice.
    pub mail_from: &'a str,
    pub arrival: SystemTime,
    pub dsn: &'a MessageDsn,
}

impl<'a> About<'a> {
    fn entry(entry: &'a QueueEntry) -> About<'a> {
        About {
            id: &entry.id,
            mail_from: &entry.mail_from,
            arrival: UNIX_EPOCH + Duration::from_secs(entry.created.max(0) as u64),
            dsn: &entry.dsn,
        }
    }
}

/// Sends a DSN to the message's sender: stored locally, or queued with a null sender.
/// A message from the null sender never gets one (RFC 5321 §4.5.5).
pub async fn notify(
    shard: &Rc<Shard>,
    about: &About<'_>,
    action: DsnAction,
    rcpts: &[RecipientStatus],
    message: &[u8],
) {
    if about.mail_from.is_empty() {
        tracing::info!(id = %about.id, "no notice for a message from the null sender");
        return;
    }
    let body = Dsn {
        hostname: &shard.config().hostname,
        queue_id: about.id,
        to: about.mail_from,
        action,
        arrival: about.arrival,
        now: SystemTime::now(),
        recipients: rcpts,
        original: message,
        retry_until: Some(about.arrival + shard.config().queue.max_age),
        envid: about.dsn.envid.as_deref(),
        ret: about.dsn.ret,
    }
    .build();
    tracing::info!(id = %about.id, action = action.as_str(), rcpts = rcpts.len(), "sending a delivery status notification");
    if let Err(e) = send_generated(shard, about.mail_from, body).await {
        tracing::error!(id = %about.id, error = %e, "cannot send the delivery status notification");
    }
}

/// Delivers a message we generated (a DSN) from the null sender to `to`.
pub async fn send_generated(shard: &Rc<Shard>, to: &str, message: Vec<u8>) -> Result<(), String> {
    shard.refresh_users();
    let resolution = {
        let db = shard.users.borrow().clone();
        db.resolve(to, |d| shard.config().is_local_domain(d))
    };
    match resolution {
        Resolution::Local { account, mailbox } => {
            let rcpt = crate::proto::smtp::Recipient {
                address: to.to_string(),
                account,
                mailbox,
                remote: false,
                sender_allowed: false,
                dsn: RcptDsn {
                    notify: Some(Notify::NEVER),
                    orcpt: None,
                },
            };
            let body = bytes::Bytes::from(message);
            super::mesh::store(shard, Vec::new(), body, &[rcpt], 1, SystemTime::now())
                .await
                .map_err(|_| "storing the notification failed".to_string())
        }
        Resolution::UnknownUser => Err(format!("{to} is a local address without an account")),
        Resolution::OverQuota { .. } => Err(format!("{to} is over quota")),
        Resolution::NotLocal => {
            let parts = vec![bytes::Bytes::from(message)];
            let never = RcptDsn {
                notify: Some(Notify::NEVER),
                orcpt: None,
            };
            enqueue(
                shard,
                "",
                &[(to.to_string(), never)],
                &MessageDsn::default(),
                false,
                parts,
            )
            .await
            .map(|_| ())
        }
    }
}

/// Stores a message in the spool durably and schedules it on this shard.
pub async fn enqueue(
    shard: &Rc<Shard>,
    mail_from: &str,
    rcpts: &[(String, RcptDsn)],
    dsn: &MessageDsn,
    require_tls: bool,
    message: Vec<bytes::Bytes>,
) -> Result<String, String> {
    let (data_dir, from, rcpts, dsn) = (
        shard.config().data_dir.clone(),
        mail_from.to_string(),
        rcpts.to_vec(),
        dsn.clone(),
    );
    let entry = glommio::executor()
        .spawn_blocking(move || {
            let parts: Vec<&[u8]> = message.iter().map(|p| p.as_ref()).collect();
            queue::enqueue(
                &data_dir,
                &from,
                &rcpts,
                &dsn,
                require_tls,
                &parts,
                unix_now(),
            )
        })
        .await?;
    tracing::info!(id = %entry.id, from = %entry.mail_from, rcpts = entry.recipients.len(), "queued");
    let id = entry.id.clone();
    shard.outbound.add(entry);
    Ok(id)
}
