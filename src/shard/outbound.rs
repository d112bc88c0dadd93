//! The outbound queue's delivery side on one shard (DESIGN.md §6).
//!
//! Each shard delivers the entries it enqueued (and, after a restart, the spooled
//! entries whose id hashes to it). A scheduler wakes every second (or at once for new
//! mail and `shardmail queue flush`), and for each due entry groups the pending
//! recipients by domain, routes each domain (relay host, transport override, or MX via
//! the DNS worker), and runs one SMTP transaction per domain: EHLO, opportunistic (or
//! required, verified) STARTTLS, AUTH for the relay, pipelined MAIL/RCPT, BDAT when
//! offered or DATA. Idle connections are reused per destination, within per-destination
//! and per-shard limits. Temporary failures retry with backoff; permanent ones and
//! expiry produce a DSN to the sender. Only this module speaks SMTP as a client.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::conn::{with_timeout, InputBuffer, Stream};
use super::delivery_log::{self, Status};
use super::Shard;
use crate::auth::verify::RouteError;
use crate::config::Relay;
use crate::proto::smtp::client::{self, Capabilities, Reply};
use crate::proto::smtp::dsn::{self, Dsn, DsnAction, RecipientStatus};
use crate::proto::smtp::Resolution;
use crate::queue::{self, QueueEntry, RcptState};

/// RFC 5321 §4.5.3.2 timeouts, simplified: connecting, and waiting for any reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an idle connection is kept for the next message to the same host.
const IDLE_REUSE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(1);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One open client connection.
struct ClientConn {
    stream: Stream,
    input: InputBuffer,
    caps: Capabilities,
    /// Host name, for DSNs and logs.
    host: String,
    tls: Option<String>,
    /// Taken from the idle pool (the peer may have closed it meanwhile).
    reused: bool,
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
    pub fn new() -> Outbound {
        Outbound {
            entries: RefCell::new(BTreeMap::new()),
            active: RefCell::new(HashSet::new()),
            connections: Cell::new(0),
            per_destination: RefCell::new(HashMap::new()),
            idle: RefCell::new(HashMap::new()),
            wake: Cell::new(false),
            flush_seen: Cell::new(None),
            tls_opportunistic: crate::tls::client_config_unverified(),
            tls_verified: crate::tls::client_config_verified(),
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
        Self::new()
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
        // Sleep a tick, or less when new mail arrives.
        let mut slept = Duration::ZERO;
        while slept < TICK && !out.wake.replace(false) && !shard.shutdown.is_fired() {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            slept += Duration::from_millis(20);
        }
    }
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
    /// Accepted by the next hop; its reply.
    Delivered {
        reply: String,
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
        Ok(m) => Rc::new(m),
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
    let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in entry.pending() {
        let domain = r
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        by_domain.entry(domain).or_default().push(r.address.clone());
    }
    let mut tasks = Vec::new();
    for (domain, rcpts) in by_domain {
        let (shard, message, from) = (shard.clone(), message.clone(), entry.mail_from.clone());
        tasks.push(glommio::spawn_local(async move {
            let (outcomes, via) = deliver_domain(&shard, &domain, &from, &rcpts, &message).await;
            rcpts
                .into_iter()
                .zip(outcomes)
                .map(|(rcpt, outcome)| (rcpt, outcome, via.clone()))
                .collect::<Vec<_>>()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await);
    }
    finish_attempt(shard, &mut entry, results, &message).await;
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
        Outcome::Delivered { reply } => (Status::Delivered, reply.as_str()),
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
    let mut failed = Vec::new();
    entry.attempts += 1;
    for (address, outcome, via) in results {
        log_attempt(shard, entry, &address, &outcome, &via, expired, now);
        let Some(r) = entry.recipients.iter_mut().find(|r| r.address == address) else {
            continue;
        };
        match outcome {
            Outcome::Delivered { .. } => {
                crate::metrics::add(&shard.metrics.outbound_delivered, 1);
                r.state = RcptState::Delivered;
            }
            Outcome::Temporary { reason, mta } if !expired => {
                r.last_error = Some(reason);
                r.remote_mta = mta;
            }
            Outcome::Temporary { reason, mta } => {
                r.state = RcptState::Failed;
                let reason = format!("message expired in the queue; last error: {reason}");
                failed.push(RecipientStatus {
                    address,
                    status: "4.4.7".into(),
                    remote_mta: mta.clone(),
                    diagnostic: reason.clone(),
                });
                r.last_error = Some(reason);
                r.remote_mta = mta;
            }
            Outcome::Permanent {
                status,
                reason,
                mta,
            } => {
                r.state = RcptState::Failed;
                failed.push(RecipientStatus {
                    address,
                    status,
                    remote_mta: mta.clone(),
                    diagnostic: reason.clone(),
                });
                r.last_error = Some(reason);
                r.remote_mta = mta;
            }
        }
    }
    if !failed.is_empty() {
        crate::metrics::add(&shard.metrics.outbound_bounced, failed.len() as u64);
        tracing::info!(id = %entry.id, failed = failed.len(), "permanent failure; bouncing");
        notify(shard, entry, DsnAction::Failed, &failed, message).await;
    }
    if !entry.is_finished() {
        let delay = queue::backoff(entry.attempts, q.retry_min, q.retry_max);
        entry.next_attempt = now + delay.as_secs().max(1) as i64;
        let late = q
            .delay_notice
            .is_some_and(|d| now - entry.created >= d.as_secs() as i64);
        if late && !entry.delay_notified {
            let delayed: Vec<RecipientStatus> = entry
                .pending()
                .map(|r| RecipientStatus {
                    address: r.address.clone(),
                    status: "4.4.1".into(),
                    remote_mta: r.remote_mta.clone(),
                    diagnostic: r
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "delivery delayed".into()),
                })
                .collect();
            notify(shard, entry, DsnAction::Delayed, &delayed, message).await;
            entry.delay_notified = true;
        }
    }
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

/// Sends a DSN to the entry's sender: stored locally, or queued with a null sender.
/// A message from the null sender never gets one (RFC 5321 §4.5.5).
async fn notify(
    shard: &Rc<Shard>,
    entry: &QueueEntry,
    action: DsnAction,
    rcpts: &[RecipientStatus],
    message: &[u8],
) {
    if entry.mail_from.is_empty() {
        tracing::info!(id = %entry.id, "not bouncing a message from the null sender");
        return;
    }
    let now = SystemTime::now();
    let created = UNIX_EPOCH + Duration::from_secs(entry.created.max(0) as u64);
    let retry_until = created + shard.config().queue.max_age;
    let body = Dsn {
        hostname: &shard.config().hostname,
        queue_id: &entry.id,
        to: &entry.mail_from,
        action,
        arrival: created,
        now,
        recipients: rcpts,
        original: message,
        retry_until: Some(retry_until),
    }
    .build();
    if let Err(e) = send_generated(shard, &entry.mail_from, body).await {
        tracing::error!(id = %entry.id, error = %e, "cannot send the delivery status notification");
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
            enqueue(shard, "", &[to.to_string()], parts)
                .await
                .map(|_| ())
        }
    }
}

/// Stores a message in the spool durably and schedules it on this shard.
pub async fn enqueue(
    shard: &Rc<Shard>,
    mail_from: &str,
    rcpts: &[String],
    message: Vec<bytes::Bytes>,
) -> Result<String, String> {
    let (data_dir, from, rcpts) = (
        shard.config().data_dir.clone(),
        mail_from.to_string(),
        rcpts.to_vec(),
    );
    let entry = glommio::executor()
        .spawn_blocking(move || {
            let parts: Vec<&[u8]> = message.iter().map(|p| p.as_ref()).collect();
            queue::enqueue(&data_dir, &from, &rcpts, &parts, unix_now())
        })
        .await?;
    tracing::info!(id = %entry.id, from = %entry.mail_from, rcpts = entry.recipients.len(), "queued");
    let id = entry.id.clone();
    shard.outbound.add(entry);
    Ok(id)
}

/// Where to connect for a domain.
enum Destination {
    Hosts {
        hosts: Vec<(String, Vec<SocketAddr>)>,
        verify_tls: bool,
    },
    Relay(Relay),
}

async fn destination(shard: &Shard, domain: &str) -> Result<Destination, RouteError> {
    let q = &shard.config().queue;
    if let Some(relay) = &q.relay {
        return Ok(Destination::Relay(relay.clone()));
    }
    let verify_tls = q.tls_required.iter().any(|d| d == domain);
    if let Some(target) = q.transports.get(domain) {
        let addrs = resolve_host_port(shard, target).await?;
        return Ok(Destination::Hosts {
            hosts: vec![(host_of(target), addrs)],
            verify_tls,
        });
    }
    let Some(auth) = shard.auth.as_ref() else {
        return Err(RouteError::Temporary("no DNS worker".into()));
    };
    let mx = auth.route(domain).await?;
    let hosts = mx
        .into_iter()
        .map(|h| {
            (
                h.name,
                h.addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, q.remote_port))
                    .collect(),
            )
        })
        .collect();
    Ok(Destination::Hosts { hosts, verify_tls })
}

fn host_of(host_port: &str) -> String {
    host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_string()
}

async fn resolve_host_port(shard: &Shard, target: &str) -> Result<Vec<SocketAddr>, RouteError> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| RouteError::Temporary(format!("bad host:port {target}")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| RouteError::Temporary(format!("bad port in {target}")))?;
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let auth = shard
        .auth
        .as_ref()
        .ok_or_else(|| RouteError::Temporary("no DNS worker".into()))?;
    // A host name: route() on it yields its addresses (implicit MX = the host).
    let hosts = auth.route(host).await?;
    Ok(hosts
        .into_iter()
        .flat_map(|h| h.addrs)
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// One SMTP transaction per domain; an outcome per recipient, in order.
async fn deliver_domain(
    shard: &Rc<Shard>,
    domain: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> (Vec<Outcome>, String) {
    let all = |o: Outcome| (vec![o; rcpts.len()], "-".to_string());
    let dest = match destination(shard, domain).await {
        Ok(d) => d,
        Err(RouteError::Permanent { status, reason }) => {
            return all(Outcome::Permanent {
                status: status.into(),
                reason,
                mta: None,
            })
        }
        Err(RouteError::Temporary(reason)) => return all(Outcome::Temporary { reason, mta: None }),
    };
    let (hosts, verify_tls, relay) = match dest {
        Destination::Hosts { hosts, verify_tls } => (hosts, verify_tls, None),
        Destination::Relay(relay) => {
            let addrs = match resolve_host_port(shard, &relay.host).await {
                Ok(a) => a,
                Err(RouteError::Temporary(r)) | Err(RouteError::Permanent { reason: r, .. }) => {
                    return all(Outcome::Temporary {
                        reason: format!("relay host: {r}"),
                        mta: None,
                    })
                }
            };
            (vec![(host_of(&relay.host), addrs)], false, Some(relay))
        }
    };
    let mut last = String::from("no address to connect to");
    for (host, addrs) in hosts {
        for addr in addrs {
            let conn = match checkout(shard, addr, &host, verify_tls, relay.as_ref()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot use this MX");
                    last = format!("{host} [{addr}]: {e}");
                    continue;
                }
            };
            let mut conn = conn;
            let mut result = transaction(&mut conn, from, rcpts, message).await;
            if result.is_err() && conn.reused {
                // The idle connection went stale: once more on a fresh one.
                release(shard, addr);
                match checkout(shard, addr, &host, verify_tls, relay.as_ref()).await {
                    Ok(fresh) => {
                        conn = fresh;
                        result = transaction(&mut conn, from, rcpts, message).await;
                    }
                    Err(e) => {
                        last = format!("{host} [{addr}]: {e}");
                        continue;
                    }
                }
            }
            match result {
                Ok(outcomes) => {
                    // The record RFC 7435 asks for: which transactions went without TLS.
                    let tls = conn.tls.clone().unwrap_or_else(|| "none".into());
                    tracing::info!(%host, %addr, %tls, rcpts = rcpts.len(), "SMTP transaction done");
                    checkin(shard, addr, conn);
                    return (outcomes, format!("{host}[{addr}] tls={tls}"));
                }
                Err(e) => {
                    release(shard, addr);
                    last = format!("{host} [{addr}]: {e}");
                }
            }
        }
    }
    all(Outcome::Temporary {
        reason: last,
        mta: None,
    })
}

/// A connection to `addr`: an idle one if fresh enough, else a new one within limits.
async fn checkout(
    shard: &Rc<Shard>,
    addr: SocketAddr,
    host: &str,
    verify_tls: bool,
    relay: Option<&Relay>,
) -> Result<ClientConn, String> {
    let out = &shard.outbound;
    let q = &shard.config().queue;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        // An idle connection to this host first: it holds one of the host's slots, so
        // a waiter that only watched the counters would wait for nothing.
        let reused = out.idle.borrow_mut().get_mut(&addr).and_then(|v| v.pop());
        match reused {
            Some((mut conn, since)) if since.elapsed() < IDLE_REUSE => {
                conn.reused = true;
                return Ok(conn);
            }
            Some((mut conn, _)) => {
                release(shard, addr);
                conn.stream.close().await;
                continue;
            }
            None => {}
        }
        let per = out
            .per_destination
            .borrow()
            .get(&addr)
            .copied()
            .unwrap_or(0);
        if out.connections.get() < q.connections_max && per < q.connections_per_destination_max {
            break;
        }
        if Instant::now() > deadline {
            return Err("connection limit reached".into());
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    out.connections.set(out.connections.get() + 1);
    *out.per_destination.borrow_mut().entry(addr).or_default() += 1;
    let require_tls = verify_tls || relay.is_some_and(|r| r.require_tls);
    let opened = match open(shard, addr, host, verify_tls, relay, true).await {
        // Opportunistic TLS (RFC 7435): a failed handshake is retried in plaintext, as
        // Postfix's `may` level does, unless a policy requires TLS.
        Err(e) if e.starts_with("TLS:") && !require_tls => {
            tracing::info!(%host, %addr, error = %e, "STARTTLS failed; retrying without TLS");
            open(shard, addr, host, verify_tls, relay, false).await
        }
        other => other,
    };
    if opened.is_err() {
        release(shard, addr);
    }
    opened
}

fn release(shard: &Shard, addr: SocketAddr) {
    let out = &shard.outbound;
    out.connections.set(out.connections.get().saturating_sub(1));
    if let Some(n) = out.per_destination.borrow_mut().get_mut(&addr) {
        *n = n.saturating_sub(1);
    }
}

fn checkin(shard: &Shard, addr: SocketAddr, conn: ClientConn) {
    shard
        .outbound
        .idle
        .borrow_mut()
        .entry(addr)
        .or_default()
        .push((conn, Instant::now()));
}

async fn open(
    shard: &Rc<Shard>,
    addr: SocketAddr,
    host: &str,
    verify_tls: bool,
    relay: Option<&Relay>,
    try_tls: bool,
) -> Result<ClientConn, String> {
    let tcp = with_timeout(CONNECT_TIMEOUT, glommio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = ClientConn {
        stream: Stream::Plain(tcp),
        input: InputBuffer::new(64 * 1024),
        caps: Capabilities::default(),
        host: host.to_string(),
        tls: None,
        reused: false,
    };
    let greeting = conn.reply().await?;
    if greeting.code != 220 {
        return Err(format!("greeting: {}", greeting.text()));
    }
    conn.ehlo(&shard.config().hostname).await?;
    let require_tls = verify_tls || relay.is_some_and(|r| r.require_tls);
    if conn.caps.starttls && try_tls {
        let reply = conn.command("STARTTLS").await?;
        if reply.code == 220 {
            let config = if verify_tls {
                &shard.outbound.tls_verified
            } else {
                &shard.outbound.tls_opportunistic
            };
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .or_else(|_| rustls_pki_types::ServerName::try_from(addr.ip().to_string()))
                .map_err(|e| format!("server name: {e}"))?;
            conn.input.clear();
            conn.stream
                .upgrade_client(config, name, CONNECT_TIMEOUT)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            conn.tls = conn.stream.tls_description();
            conn.ehlo(&shard.config().hostname).await?;
        } else if require_tls {
            return Err(format!("STARTTLS refused: {}", reply.text()));
        }
    } else if require_tls {
        return Err("TLS required but the server does not offer STARTTLS".into());
    }
    if conn.tls.is_none() {
        tracing::debug!(%host, "delivering without TLS (not offered)");
    }
    if let Some((user, password)) = relay.and_then(|r| r.auth.as_ref()) {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = conn.command(&format!("AUTH PLAIN {token}")).await?;
        if reply.code != 235 {
            return Err(format!("relay AUTH: {}", reply.text()));
        }
    }
    Ok(conn)
}

impl ClientConn {
    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            match client::parse_reply(self.input.data()) {
                Ok(Some((reply, used))) => {
                    self.input.consume(used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad reply from the server: {e:?}")),
            }
            match with_timeout(REPLY_TIMEOUT, self.input.fill(&mut self.stream)).await {
                Ok(Ok(0)) => return Err("connection closed by the server".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Err(_) => return Err("timed out waiting for a reply".into()),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    async fn ehlo(&mut self, hostname: &str) -> Result<(), String> {
        let reply = self.command(&format!("EHLO {hostname}")).await?;
        if !reply.is_positive() {
            return Err(format!("EHLO: {}", reply.text()));
        }
        self.caps = client::capabilities(&reply);
        Ok(())
    }
}

/// MAIL, RCPT…, then BDAT or DATA. `Err` means the connection is unusable (try another
/// host); replies, even failures, are outcomes.
async fn transaction(
    conn: &mut ClientConn,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Vec<Outcome>, String> {
    let mta = Some(conn.host.clone());
    let permanent = |status: &str, reason: String| Outcome::Permanent {
        status: status.into(),
        reason,
        mta: mta.clone(),
    };
    let utf8 = client::needs_smtputf8(from, rcpts.iter().map(String::as_str));
    if utf8 && !conn.caps.smtputf8 {
        let reason = format!(
            "{} does not support SMTPUTF8, which these addresses need",
            conn.host
        );
        return Ok(vec![permanent("5.6.7", reason); rcpts.len()]);
    }
    if conn
        .caps
        .size
        .is_some_and(|max| max > 0 && message.len() as u64 > max)
    {
        let reason = format!(
            "message too large for {} (SIZE {})",
            conn.host,
            conn.caps.size.unwrap_or(0)
        );
        return Ok(vec![permanent("5.3.4", reason); rcpts.len()]);
    }
    let mut mail = format!("MAIL FROM:<{from}>");
    if conn.caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", message.len()));
    }
    if conn.caps.eightbitmime && client::is_8bit(message) {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        mail.push_str(" SMTPUTF8");
    }
    let mut commands = vec![mail];
    commands.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
    let pipelined_data = conn.caps.pipelining && !conn.caps.chunking;
    if pipelined_data {
        commands.push("DATA".into());
    }
    let mut replies = Vec::new();
    if conn.caps.pipelining {
        let batch: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
        conn.send(batch.as_bytes()).await?;
        for _ in &commands {
            replies.push(conn.reply().await?);
        }
    } else {
        for c in &commands {
            let reply = conn.command(c).await?;
            let stop = replies.is_empty() && !reply.is_positive();
            replies.push(reply);
            if stop {
                break; // MAIL refused: no point sending RCPTs
            }
        }
    }
    let outcome_of = |r: &Reply| {
        if r.is_positive() {
            Outcome::Delivered { reply: r.text() }
        } else if r.is_transient() {
            Outcome::Temporary {
                reason: r.text(),
                mta: mta.clone(),
            }
        } else {
            Outcome::Permanent {
                status: dsn::status_for(r.code, r.enhanced().as_deref()),
                reason: r.text(),
                mta: mta.clone(),
            }
        }
    };
    let Some(mail_reply) = replies.first().cloned() else {
        return Err("no reply to MAIL".into());
    };
    if !mail_reply.is_positive() {
        if pipelined_data && replies.last().is_some_and(|r| r.code == 354) {
            conn.send(b".\r\n").await?;
            conn.reply().await?;
        }
        let _ = conn.command("RSET").await;
        return Ok(vec![outcome_of(&mail_reply); rcpts.len()]);
    }
    let mut outcomes: Vec<Outcome> = (0..rcpts.len())
        .map(|i| {
            replies
                .get(i + 1)
                .map(outcome_of)
                .unwrap_or(Outcome::Temporary {
                    reason: "no reply to RCPT".into(),
                    mta: mta.clone(),
                })
        })
        .collect();
    let accepted: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Outcome::Delivered { .. }))
        .map(|(i, _)| i)
        .collect();
    let data_reply = if pipelined_data {
        replies.last().cloned()
    } else {
        None
    };
    if accepted.is_empty() {
        if data_reply.as_ref().is_some_and(|r| r.code == 354) {
            conn.send(b".\r\n").await?; // RFC 2920 §3.1: end the unwanted data
            conn.reply().await?;
        }
        let _ = conn.command("RSET").await;
        return Ok(outcomes);
    }
    let final_reply = if conn.caps.chunking {
        let mut chunk = format!("BDAT {} LAST\r\n", message.len()).into_bytes();
        chunk.extend_from_slice(message);
        conn.send(&chunk).await?;
        conn.reply().await?
    } else {
        let go = match data_reply {
            Some(r) => r,
            None => conn.command("DATA").await?,
        };
        if go.code != 354 {
            let o = outcome_of(&go);
            for i in &accepted {
                if let Some(slot) = outcomes.get_mut(*i) {
                    *slot = o.clone();
                }
            }
            return Ok(outcomes);
        }
        conn.send(&stuffed(message)).await?;
        conn.reply().await?
    };
    let o = outcome_of(&final_reply);
    for i in accepted {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = o.clone();
        }
    }
    Ok(outcomes)
}

/// The message as DATA content: dot-stuffed, CRLF-terminated, then `.`.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    crate::proto::dot_stuff_into(&mut out, message);
    out
}
