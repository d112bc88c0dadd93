//! The runtime: one glommio executor per shard, listeners, the mesh, shutdown.
//!
//! The only module tree that uses glommio. Each [`Shard`] owns its listeners (every
//! shard binds every address with SO_REUSEPORT), its sessions, the partitions with
//! `partition % shards == shard` and a copy of the user database. Shards share no
//! mutable state: deliveries to another shard's partition travel over the channel mesh
//! as owned messages ([`mesh::ShardMsg`]). Nothing here parses a protocol.

pub mod admission;
pub mod compaction;
pub mod compress;
pub mod conn;
pub mod deliver;
pub mod delivery_log;
pub mod greylist;
pub mod imap;
pub mod listen;
pub mod login;
pub mod mesh;
pub mod metrics_http;
pub mod milter;
pub mod outbound;
pub mod passwords;
pub mod pop3;
pub mod preflight;
pub mod ratelimit;
pub mod reload;
pub mod screen;
pub mod service;
pub mod shutdown;
pub mod smtp;
pub mod spool;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use crate::config::Config;
use crate::proto::smtp::{Directory, Greylisting, Port, Resolution, SenderVerdict, SessionConfig};
use crate::store::{self, Partition};
use crate::users::UserDb;
pub use login::{LoginAttempt, LoginCheck, MailboxLogin};
use mesh::{Mesh, ShardMsg};
use shutdown::Shutdown;

/// Everything one shard owns. Lives in an `Rc` on its executor thread.
pub struct Shard {
    pub id: usize,
    /// The settings new sessions start from; replaced whole on reload.
    live: RefCell<Rc<reload::Live>>,
    pub partitions: HashMap<u32, Rc<Partition>>,
    pub partitions_total: u32,
    pub users: RefCell<Rc<UserDb>>,
    users_checked: Cell<Option<Instant>>,
    users_stamp: Cell<Option<UsersStamp>>,
    pub mesh: Mesh,
    pub shutdown: Shutdown,
    /// Tasks serving a connection on this shard (shutdown waits for them).
    pub sessions: Cell<usize>,
    /// Sessions per protocol family on this shard (`listen::Family` order), each
    /// bounded by `limits.sessions_per_shard_max`.
    family_sessions: [Cell<usize>; 3],
    /// Refusals being written now (see `listen::refuse`).
    pub refusing: Cell<usize>,
    /// Each partition's size and garbage as the compaction check last measured them
    /// (for the metrics endpoint; a measurement scans the log, a scrape must not).
    pub store_stats: RefCell<HashMap<u32, store::compact::Stats>>,
    /// Refused-connection log lines, rate-limited.
    pub refusals: delivery_log::RefusalLog,
    /// When a long job last let the reactor run (see [`Shard::pause_if_due`]).
    last_pause: Cell<Instant>,
    /// Connections per address and in all, shared by every shard.
    pub connections: Arc<admission::Connections>,
    /// Failed-login back-off, shared by every shard and protocol.
    pub throttle: Arc<admission::LoginThrottle>,
    /// `antispam.rate_limits`, shared by every shard.
    pub rate: Arc<ratelimit::RateLimiter>,
    /// `antispam.greylist`'s table, shared by every shard (open even when off, so a
    /// reload can turn it on).
    pub greylist: Arc<greylist::Greylist>,
    /// Every account's storage usage, published by the shard owning it (quotas).
    pub usage: Arc<store::usage::UsageBoard>,
    /// Logged-in IMAP and POP3 sessions per account on this shard (sessions always
    /// move to their account's shard, so this count is the account's total).
    user_sessions: RefCell<HashMap<u64, usize>>,
    next_session: Cell<u64>,
    pub pop3_locks: pop3::Locks,
    /// The auth/DNS worker (checks inbound mail when `auth.enabled`, routes outbound).
    pub auth: Option<crate::auth::worker::AuthClient>,
    /// The outbound queue's delivery side.
    pub outbound: outbound::Outbound,
    pub metrics: crate::metrics::Metrics,
    /// Password verification threads and the verified-login cache, shared by every
    /// shard.
    pub passwords: Arc<passwords::Passwords>,
    /// Each milter's concurrency gate on this shard (`milter.servers[].concurrency`),
    /// by address, with the permits it was made with.
    milter_gates:
        RefCell<HashMap<crate::config::MilterAddress, (u64, Rc<glommio::sync::Semaphore>)>>,
}

/// A connection that passed admission: its peer, and the slot it holds.
#[derive(Debug)]
pub struct Client {
    pub peer: SocketAddr,
    pub ticket: admission::Ticket,
}

/// One logged-in IMAP/POP3 session of an account on its shard; dropping it frees the
/// slot (`limits.sessions_per_user_max`).
#[derive(Debug)]
pub struct UserSlot {
    shard: Rc<Shard>,
    account: u64,
}

impl UserSlot {
    pub fn account(&self) -> u64 {
        self.account
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self.shard.user_sessions.borrow_mut();
        if let Some(n) = map.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.account);
            }
        }
    }
}

/// What tells a rewritten `users.json` from the one loaded: its mtime, size and
/// inode (the CLI replaces it by rename, so the inode changes even within one tick
/// of a coarse clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UsersStamp {
    modified: SystemTime,
    len: u64,
    inode: u64,
}

impl UsersStamp {
    fn of(path: &std::path::Path) -> Option<UsersStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(UsersStamp {
            modified: m.modified().ok()?,
            len: m.len(),
            inode: m.ino(),
        })
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

impl Shard {
    pub fn family_sessions(&self, family: listen::Family) -> usize {
        self.family_sessions
            .get(family as usize)
            .map_or(0, Cell::get)
    }

    pub fn count_family(&self, family: listen::Family, delta: isize) {
        if let Some(c) = self.family_sessions.get(family as usize) {
            c.set(c.get().saturating_add_signed(delta));
        }
    }

    /// A session slot for `account` (which this shard owns), unless it already has
    /// `limits.sessions_per_user_max`.
    pub fn user_slot(self: &Rc<Self>, account: u64) -> Option<UserSlot> {
        let mut map = self.user_sessions.borrow_mut();
        let n = map.entry(account).or_insert(0);
        if *n >= self.config().limits.sessions_per_user_max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            shard: self.clone(),
            account,
        })
    }

    /// Between two steps of a long job: once `server.step_budget_us` has passed since
    /// the shard last gave its reactor a turn, park this task on a timer so every
    /// other ready session runs and new input is read first (DESIGN.md §10).
    ///
    /// Not glommio's preempt timer: set that low, a shard was seen to park forever
    /// with its timers pending during shutdown (1 in ~30 stops, reproduced with
    /// `preempt_timer(500 µs)`, never with the default).
    pub async fn pause_if_due(&self) {
        let now = Instant::now();
        if now.duration_since(self.last_pause.get()) < self.config().step_budget {
            return;
        }
        glommio::timer::sleep(Duration::from_micros(1)).await;
        self.last_pause.set(Instant::now());
    }

    /// A process-unique session id: shard in the top bits, a counter below.
    pub fn next_session_id(&self) -> u64 {
        let n = self.next_session.get() + 1;
        self.next_session.set(n);
        ((self.id as u64) << 40) | (n & ((1 << 40) - 1))
    }

    /// The configuration in force now (a reload replaces it; what a caller holds
    /// stays as it was).
    pub fn config(&self) -> Rc<Config> {
        self.live.borrow().config.clone()
    }

    /// The TLS settings new handshakes use.
    pub fn tls(&self) -> Arc<rustls::ServerConfig> {
        self.live.borrow().tls.clone()
    }

    /// The channel binding data for SCRAM-PLUS on `stream`.
    pub fn channel_binding(
        &self,
        stream: &conn::Stream,
    ) -> crate::proto::sasl::scram::ChannelBinding {
        stream.channel_binding(self.live.borrow().server_end_point.clone())
    }

    pub fn smtp_config(&self, port: Port) -> Rc<SessionConfig> {
        self.live.borrow().smtp(port)
    }

    pub fn pop3_config(&self) -> Arc<crate::proto::pop3::Pop3Config> {
        self.live.borrow().pop3.clone()
    }

    pub fn imap_config(&self) -> Arc<crate::proto::imap::session::ImapConfig> {
        self.live.borrow().imap.clone()
    }

    /// The DKIM signing key for `domain`, if one is loaded.
    pub fn dkim_key(&self, domain: &str) -> Option<Arc<crate::auth::dkim::KeyFile>> {
        self.live.borrow().dkim_keys.get(domain).cloned()
    }

    /// This shard's concurrency gate for `server`: its share of the milter's
    /// `concurrency`. A reload that changes the share starts a new gate (conversations
    /// holding the old one finish under it).
    pub fn milter_gate(
        &self,
        server: &crate::config::MilterServer,
    ) -> Rc<glommio::sync::Semaphore> {
        let permits = milter::permits_per_shard(server.concurrency, self.config().shards);
        let mut gates = self.milter_gates.borrow_mut();
        match gates.get(&server.address) {
            Some((p, gate)) if *p == permits => gate.clone(),
            _ => {
                let gate = Rc::new(glommio::sync::Semaphore::new(permits));
                gates.insert(server.address.clone(), (permits, gate.clone()));
                gate
            }
        }
    }

    /// Takes a reload's settings: new sessions and handshakes use them from now on;
    /// users are read again at once.
    fn apply(&self, published: &reload::Published) {
        let live = reload::Live::new(
            (*published.config).clone(),
            published.tls.clone(),
            published.dkim_keys.clone(),
        );
        *self.live.borrow_mut() = Rc::new(live);
        self.users_checked.set(None);
        self.users_stamp.set(None);
        // A reload may change `limits.auth_cache_secs` or follow an edit of the
        // accounts: logins verify afresh.
        self.passwords.forget_all();
        self.refresh_users();
    }

    /// Re-reads `users.json` if it changed (checked at most once a second).
    pub fn refresh_users(&self) {
        let now = Instant::now();
        if self
            .users_checked
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.refresh_users_now();
    }

    /// Re-reads `users.json` if it changed since the last look (one stat; logins
    /// call this so a changed password or revoked app password applies at once).
    pub fn refresh_users_now(&self) {
        self.users_checked.set(Some(Instant::now()));
        let path = UserDb::path(&self.config().data_dir);
        let stamp = UsersStamp::of(&path);
        if stamp == self.users_stamp.get() {
            return;
        }
        match UserDb::load(&self.config().data_dir) {
            Ok(db) => {
                *self.users.borrow_mut() = Rc::new(db);
                self.users_stamp.set(stamp);
                // The login cache needs no clearing: its entries hash the stored
                // password hash, so a changed password no longer matches.
            }
            Err(e) => tracing::error!(error = %e, "cannot reload users; keeping the old ones"),
        }
    }

    pub fn partition(&self, id: u32) -> Option<&Rc<Partition>> {
        self.partitions.get(&id)
    }
}

impl Shard {
    /// The limits of the account `address` (its own over `quota.*_default`).
    pub fn quota_of(&self, address: &str) -> crate::users::Quota {
        let own = self
            .users
            .borrow()
            .users
            .get(address)
            .map(|u| u.quota)
            .unwrap_or_default();
        own.over(self.config().quota.default)
    }
}

/// Recipient lookups for SMTP sessions, from the shard's copy of the user database.
impl Directory for Shard {
    fn resolve(&self, address: &str) -> Resolution {
        // At most one stat a second: users and quotas changed by the CLI apply to
        // connections already open.
        self.refresh_users();
        let db = self.users.borrow().clone();
        let resolution = db.resolve(address, |d| self.config().is_local_domain(d));
        if let Resolution::Local { account, mailbox } = &resolution {
            // Full when not even one more byte and one more message fit (the message's
            // own size is not known at RCPT; a delivery may overshoot by one message).
            if self
                .quota_of(mailbox)
                .is_exceeded_by(self.usage.get(*account), 1, 1)
            {
                return Resolution::OverQuota {
                    permanent: self.config().quota.hard_bounce,
                };
            }
        }
        resolution
    }

    fn may_send_as(&self, login: &str, address: &str) -> bool {
        self.users.borrow().owns(login, address)
    }

    fn rate_limited(&self, event: crate::proto::smtp::RateEvent<'_>) -> Option<String> {
        ratelimit::check(self, &event)
    }

    fn sender_verdict(&self, mailbox: &str, mail_from: &str) -> SenderVerdict {
        let verdict = self.users.borrow().sender_verdict(mailbox, mail_from);
        if verdict != SenderVerdict::Neutral {
            let index = usize::from(verdict == SenderVerdict::Block);
            crate::metrics::bump_one(&self.metrics.sender_lists, index);
            tracing::info!(
                target: "shardmail::antispam",
                check = "sender_list",
                to = mailbox,
                from = mail_from,
                verdict = if index == 1 { "block" } else { "allow" },
                "recipient's sender list matched"
            );
        }
        verdict
    }

    fn greylisted(&self, e: crate::proto::smtp::RateEvent<'_>) -> Greylisting {
        let config = self.config();
        let (Some(policy), Some(recipient)) = (config.antispam.greylist, e.recipient) else {
            return Greylisting::Pass;
        };
        if e.port != Port::Mx || e.user.is_some() || config.antispam.exempts(e.ip) {
            return Greylisting::Pass;
        }
        let key = greylist::key(e.ip, e.sender, recipient);
        match self.greylist.check(key, policy, greylist::now_secs()) {
            greylist::Verdict::Pass => Greylisting::Pass,
            greylist::Verdict::Defer(wait) => {
                crate::metrics::add(&self.metrics.greylisted, 1);
                tracing::info!(
                    target: "shardmail::antispam",
                    check = "greylist",
                    ip = %e.ip,
                    from = e.sender,
                    to = recipient,
                    retry_after_secs = wait.as_secs(),
                    "greylisted"
                );
                let reply = format!(
                    "451 4.7.1 <{recipient}>: Greylisted, try again in {} seconds \
                     (antispam.greylist)",
                    wait.as_secs().max(1)
                );
                // With a DKIM allowlist and verification on, the decision waits for
                // the message's signatures.
                let verifies = self.auth.is_some() && config.auth.checks(e.ip);
                if verifies && config.antispam.has_dkim_allowlist() {
                    Greylisting::DeferUnlessDkim(reply)
                } else {
                    Greylisting::Defer(reply)
                }
            }
        }
    }
}

fn smtp_config(config: &Config, port: Port) -> SessionConfig {
    SessionConfig {
        hostname: config.hostname.clone(),
        port,
        // LMTP is loopback only (config check) and offers neither STARTTLS nor AUTH.
        tls_available: port != Port::Lmtp,
        allow_plaintext_auth: config.allow_plaintext_auth,
        message_size_max: config.limits.message_size_max,
        line_bytes_max: config.limits.line_bytes_max,
        recipients_max: config.limits.recipients_max,
        bad_commands_max: config.limits.bad_commands_max,
        auth_failures_max: config.limits.auth_failures_max,
        postmaster_domain: config
            .local_domains
            .first()
            .cloned()
            .unwrap_or_else(|| config.hostname.clone()),
        policies: config.auth.policies.clone(),
        sender_login_match: config.auth.sender_login_match,
    }
}

/// `limits.login_*` as the failed-login throttle takes them.
fn throttle_config(config: &Config) -> admission::ThrottleConfig {
    let limits = &config.limits;
    admission::ThrottleConfig {
        failures_before_backoff: limits.login_failures_before_backoff,
        backoff_max: limits.login_backoff_max,
        memory: limits.login_failure_memory,
        exempt: limits.ip_limit_exempt_networks.clone(),
    }
}

/// Runs the server until SIGTERM/SIGINT; returns after a graceful shutdown. `loaded`
/// is what `source` gave at start; SIGHUP reads `source` again (see [`reload`]). The
/// effective configuration is recorded in the data directory for the commands that
/// read it.
pub fn serve(
    source: crate::config::ConfigSource,
    loaded: crate::config::Loaded,
) -> Result<(), String> {
    let config = loaded.config.clone();
    let effective = loaded.effective_toml().map_err(|e| e.to_string())?;
    // A panicking shard would leave the others serving without it (its partitions
    // and sessions gone): stop the whole process instead, so the service manager
    // restarts it and recovery runs. Nothing acknowledged is lost by that.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!("a shard panicked; aborting so the server restarts cleanly");
        std::process::abort();
    }));
    preflight::check(&config)?;
    let _lock = preflight::lock_data_dir(&config.data_dir)?;
    preflight::record_running_config(&config.data_dir, &effective)?;
    let meta = store::init(&config.data_dir, config.partitions).map_err(|e| e.to_string())?;
    let tls = crate::tls::server_config(&config)?;
    let users = UserDb::load(&config.data_dir).map_err(|e| e.to_string())?;
    let dkim_keys = reload::load_dkim(&config.data_dir)?;
    // One worker does DNS for both checks and outbound routing, so it always runs.
    let auth = Some(crate::auth::worker::AuthService::start(
        crate::auth::worker::WorkerConfig {
            hostname: config.hostname.clone(),
            dns_servers: config.dns.servers.clone(),
            dns_timeout: config.dns.timeout,
            cache_entries: config.dns.cache_entries,
            queue_depth_max: config.auth.queue_depth_max,
        },
        None,
    )?);
    // Every socket listening before any shard starts: see listen::bind_all.
    let sockets = listen::bind_all(&config, config.shards)?;
    spool::prepare(&config.data_dir)?;
    let capacity = preflight::connection_capacity(&config, meta.partitions)?;
    let limits = &config.limits;
    let connections = admission::Connections::new(
        limits.connections_per_ip_max,
        limits.ip_limit_exempt_networks.clone(),
        capacity,
    );
    let throttle = admission::LoginThrottle::new(throttle_config(&config));
    let passwords = passwords::Passwords::start(config.limits.password_threads)?;
    let rate = ratelimit::RateLimiter::new(config.antispam.rate_limits.clone());
    let greylist = Arc::new(greylist::Greylist::open(&config.data_dir)?);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| format!("signal: {e}"))?;
    }
    // SIGHUP reloads (see reload); catching it replaces its default action (terminate).
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())
        .map_err(|e| format!("signal: {e}"))?;
    let shards = config.shards;
    let board = reload::Board::new(shards);
    reload::Reloader {
        source,
        running: loaded,
        board: board.clone(),
        connections: connections.clone(),
        throttle: throttle.clone(),
        rate: rate.clone(),
        dkim_keys: dkim_keys.clone(),
        hangup,
        stop: stop.clone(),
        attempts: 0,
    }
    .spawn()?;
    let mesh_builder = MeshBuilder::<ShardMsg, _>::full(shards, mesh::CHANNEL_DEPTH);
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let listening = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = Arc::new(config);
    tracing::info!(
        shards,
        partitions = meta.partitions,
        data_dir = %config.data_dir.display(),
        hostname = %config.hostname,
        "starting shardmail"
    );
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
        .name("shard")
        .io_memory(config.io_memory_bytes)
        .spin_before_park(config.spin_before_park)
        .on_all_shards({
            let init = ShardInit {
                config: config.clone(),
                tls,
                users,
                partitions_total: meta.partitions,
                mesh_builder,
                stop: stop.clone(),
                board,
                auth,
                dkim_keys,
                listening,
                sockets: Arc::new(std::sync::Mutex::new(
                    sockets.into_iter().map(Some).collect(),
                )),
                connections,
                throttle,
                passwords: passwords.clone(),
                rate,
                greylist,
                usage: Arc::new(store::usage::UsageBoard::default()),
            };
            let failed = failed.clone();
            move || async move {
                let result = run_shard(init).await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "shard failed");
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e);
                    }
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| preflight::explain_executor_error(&e.to_string()))?;
    let _ = handles.join_all();
    passwords.close();
    match failed.lock().ok().and_then(|mut f| f.take()) {
        Some(e) => Err(e),
        None => {
            tracing::info!("shardmail stopped cleanly");
            Ok(())
        }
    }
}

/// This shard's counters and current gauges.
pub fn metrics_snapshot(shard: &Shard) -> crate::metrics::Snapshot {
    let (mut syncs, mut appends) = (0, 0);
    for p in shard.partitions.values() {
        let s = p.stats();
        syncs += s.syncs;
        appends += s.batches;
    }
    let mut store: Vec<crate::metrics::PartitionGauge> = shard
        .store_stats
        .borrow()
        .iter()
        .map(|(p, s)| crate::metrics::PartitionGauge {
            partition: *p,
            log_bytes: s.log_bytes,
            garbage_bytes: s.garbage_bytes(),
            messages: s.messages,
        })
        .collect();
    store.sort_unstable();
    shard.metrics.snapshot(crate::metrics::Gauges {
        sessions: shard.sessions.get() as u64,
        queue_depth: shard.outbound.len() as u64,
        queue_oldest_age_secs: shard.outbound.oldest_age_secs(),
        store,
        store_syncs: syncs,
        store_appends: appends,
        partitions: shard.partitions.len() as u64,
    })
}

/// Everything a shard starts from; cloned once per shard (all `Send`).
#[derive(Clone)]
struct ShardInit {
    config: Arc<Config>,
    tls: Arc<rustls::ServerConfig>,
    users: UserDb,
    partitions_total: u32,
    mesh_builder: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    stop: Arc<AtomicBool>,
    /// Where the reloader publishes new settings.
    board: Arc<reload::Board>,
    auth: Option<Arc<crate::auth::worker::AuthService>>,
    dkim_keys: reload::DkimKeys,
    /// Shards whose listeners are all bound; the last one logs that the server is ready.
    listening: Arc<std::sync::atomic::AtomicUsize>,
    /// Listening sockets, one list per shard, made before any shard started.
    sockets: Arc<std::sync::Mutex<Vec<Option<Vec<listen::Bound>>>>>,
    connections: Arc<admission::Connections>,
    throttle: Arc<admission::LoginThrottle>,
    passwords: Arc<passwords::Passwords>,
    rate: Arc<ratelimit::RateLimiter>,
    greylist: Arc<greylist::Greylist>,
    usage: Arc<store::usage::UsageBoard>,
}

/// This shard's listening sockets (each shard takes its own list once).
fn take_sockets(
    sockets: &std::sync::Mutex<Vec<Option<Vec<listen::Bound>>>>,
    id: usize,
) -> Result<Vec<listen::Bound>, String> {
    let mut all = sockets
        .lock()
        .map_err(|_| "listening sockets lost".to_string())?;
    all.get_mut(id)
        .and_then(Option::take)
        .ok_or_else(|| format!("no listening sockets for shard {id}"))
}

async fn run_shard(init: ShardInit) -> Result<(), String> {
    let ShardInit {
        config,
        tls,
        users,
        partitions_total,
        mesh_builder,
        stop,
        board,
        auth,
        dkim_keys,
        listening,
        sockets: init_sockets,
        connections,
        throttle,
        passwords,
        rate,
        greylist,
        usage,
    } = init;
    let config = (*config).clone();
    let outbound = outbound::Outbound::new(&config.queue.tls_ca);
    let shards = config.shards;
    // Join the mesh first: its peer index *is* the shard id, so partition ownership and
    // mesh routing can never disagree. Every shard joins before anything can fail, or
    // the others would wait for it forever.
    let mesh = Mesh::join(mesh_builder).await?;
    let id = mesh.peer_id();
    let shutdown = Shutdown::default();
    shutdown::watch(stop.clone(), id == 0, shutdown.clone());
    let mut partitions = HashMap::new();
    for p in (0..partitions_total).filter(|p| store::shard_of(*p, shards) == id) {
        let dir = store::partition_dir(&config.data_dir, p);
        let partition = Partition::open(p, &dir, config.store)
            .await
            .map_err(|e| format!("partition {p}: {e}"))?;
        partition.publish_usage(usage.clone());
        partitions.insert(p, partition);
    }
    let users_stamp = UsersStamp::of(&UserDb::path(&config.data_dir));
    let shard = Rc::new(Shard {
        id,
        live: RefCell::new(Rc::new(reload::Live::new(config, tls, dkim_keys))),
        partitions,
        partitions_total,
        users: RefCell::new(Rc::new(users)),
        users_checked: Cell::new(None),
        users_stamp: Cell::new(users_stamp),
        mesh,
        shutdown: shutdown.clone(),
        sessions: Cell::new(0),
        family_sessions: Default::default(),
        refusing: Cell::new(0),
        refusals: delivery_log::RefusalLog::default(),
        store_stats: RefCell::new(HashMap::new()),
        last_pause: Cell::new(Instant::now()),
        connections,
        throttle,
        rate,
        greylist,
        usage,
        user_sessions: RefCell::new(HashMap::new()),
        // Session (and so message) ids start from the clock, so a restart does not
        // hand out the ids of the last run again: 65,536 sessions a second before two
        // runs could overlap.
        next_session: Cell::new((greylist::now_secs() & 0xFF_FFFF) << 16),
        pop3_locks: pop3::Locks::default(),
        auth: auth.map(crate::auth::worker::AuthClient::new),
        outbound,
        metrics: crate::metrics::Metrics::default(),
        passwords,
        milter_gates: RefCell::default(),
    });
    reload::watch(shard.clone(), board);
    mesh::serve(shard.clone());
    outbound::start(&shard);
    compaction::start(&shard);
    let sockets = take_sockets(&init_sockets, id)?;
    let mut accept_tasks = Vec::new();
    for bound in sockets {
        if id == 0 {
            tracing::info!(addr = %bound.addr, "{} listening", bound.key);
        }
        let listener = listen::listener(bound.fd);
        accept_tasks.push(glommio::spawn_local(listen::accept_loop(
            shard.clone(),
            listener,
            bound.service,
        )));
    }
    // Every socket was listening before any shard started (listen::bind_all), so no
    // connection is refused meanwhile; say once that every shard accepts (tests and
    // service managers wait for this line).
    if listening.fetch_add(1, Ordering::SeqCst) + 1 == shards {
        tracing::info!(shards, "ready: every shard is listening");
        service::notify("READY=1\nSTATUS=every shard is listening");
    }
    shutdown.wait().await;
    tracing::debug!(shard = id, "stopping: accept tasks");
    for task in accept_tasks {
        task.cancel().await;
    }
    tracing::debug!(shard = id, "stopping: draining sessions");
    drain(&shard).await;
    tracing::debug!(shard = id, "stopping: writing index snapshots");
    for partition in shard.partitions.values() {
        if let Err(e) = partition.checkpoint() {
            tracing::warn!(partition = partition.id, error = %e, "index snapshot not written");
        }
    }
    Ok(())
}

/// Waits (bounded by `server.shutdown_grace_secs`) for sessions to finish and for
/// outbound attempts in flight to record their outcome (a delivery the remote accepted
/// but we never recorded would be sent again after the restart).
async fn drain(shard: &Rc<Shard>) {
    let deadline = Instant::now() + shard.config().shutdown_grace;
    let busy = || shard.sessions.get() > 0 || shard.outbound.in_flight() > 0;
    while busy() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if busy() {
        tracing::warn!(
            shard = shard.id,
            sessions = shard.sessions.get(),
            outbound = shard.outbound.in_flight(),
            "grace period over"
        );
    }
}
