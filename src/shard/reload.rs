//! Reloading a running server: SIGHUP, `systemctl reload` and `shardmail reload`
//! re-read the configuration, users, DKIM keys and the TLS certificate; a changed
//! certificate file is also picked up by itself (`tls.watch_interval_secs`).
//!
//! One thread, the reloader, does every read and check (files, keys, validation) off
//! the shards, then publishes the result on a [`Board`]. Each shard looks at the board
//! between steps of its own ([`watch`]) and swaps its [`Live`] settings in one
//! assignment: sessions already running keep the settings they started with, new
//! sessions and handshakes get the new ones, and no connection is dropped. Keys that
//! need a restart ([`crate::config::source::RESTART_ONLY`]) keep their running values
//! and are named in the log. A reload that fails validation changes nothing and says
//! why, in the log and in `DATA_DIR/reload.status` (which `shardmail reload` prints).
//! Never blocks a shard: the shards only ever clone what the reloader built.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::source::is_restart_only;
use crate::config::{Config, ConfigSource, Loaded};
use crate::proto::smtp::{Port, SessionConfig};

use super::admission::{Connections, LoginThrottle};

/// DKIM signing keys by domain.
pub type DkimKeys = Arc<HashMap<String, Arc<crate::auth::dkim::KeyFile>>>;

/// How often a shard and the reloader look for work.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a reload waits for every shard to take the new settings before it reports.
const APPLY_WAIT_MAX: Duration = Duration::from_secs(10);
/// The file a reload's outcome is written to, in the data directory.
pub const STATUS_FILE: &str = "reload.status";

/// One shard's current settings: what every new session, handshake and signature
/// is built from. Replaced whole on reload.
pub struct Live {
    pub config: Rc<Config>,
    pub tls: Arc<rustls::ServerConfig>,
    pub dkim_keys: DkimKeys,
    smtp: [Rc<SessionConfig>; 4],
    pub pop3: Arc<crate::proto::pop3::Pop3Config>,
    pub imap: Arc<crate::proto::imap::session::ImapConfig>,
    /// `tls-server-end-point` channel binding data (RFC 5929) of `tls.cert`.
    pub server_end_point: Option<Vec<u8>>,
}

impl Live {
    pub fn new(config: Config, tls: Arc<rustls::ServerConfig>, dkim_keys: DkimKeys) -> Live {
        let smtp = [Port::Mx, Port::Submission, Port::Submissions, Port::Lmtp]
            .map(|port| Rc::new(super::smtp_config(&config, port)));
        let pop3 = Arc::new(crate::proto::pop3::Pop3Config {
            hostname: config.hostname.clone(),
            tls_available: true,
            allow_plaintext_auth: config.allow_plaintext_auth,
            line_bytes_max: config.limits.line_bytes_max,
            bad_commands_max: config.limits.bad_commands_max,
            auth_failures_max: config.limits.auth_failures_max,
            output_bytes_max: config.limits.output_buffer_bytes_max,
        });
        let imap = Arc::new(super::imap::config(&config));
        let server_end_point = crate::tls::server_end_point(&config.tls_cert);
        Live {
            server_end_point,
            config: Rc::new(config),
            tls,
            dkim_keys,
            smtp,
            pop3,
            imap,
        }
    }

    pub fn smtp(&self, port: Port) -> Rc<SessionConfig> {
        let i = match port {
            Port::Mx => 0,
            Port::Submission => 1,
            Port::Submissions => 2,
            Port::Lmtp => 3,
        };
        self.smtp
            .get(i)
            .cloned()
            .unwrap_or_else(|| Rc::new(super::smtp_config(&self.config, port)))
    }
}

/// What the reloader hands every shard (all `Send`).
#[derive(Clone)]
pub struct Published {
    pub generation: u64,
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ServerConfig>,
    pub dkim_keys: DkimKeys,
}

/// The newest settings and which shard has taken them; shared by the reloader and
/// every shard.
pub struct Board {
    generation: AtomicU64,
    current: Mutex<Option<Published>>,
    applied: Vec<AtomicU64>,
}

impl Board {
    pub fn new(shards: usize) -> Arc<Board> {
        Arc::new(Board {
            generation: AtomicU64::new(0),
            current: Mutex::new(None),
            applied: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The published settings if they are newer than `seen`.
    pub fn newer_than(&self, seen: u64) -> Option<Published> {
        if self.generation.load(Ordering::Acquire) == seen {
            return None;
        }
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Shard `shard` now runs on `generation`.
    pub fn applied(&self, shard: usize, generation: u64) {
        if let Some(a) = self.applied.get(shard) {
            a.store(generation, Ordering::Release);
        }
    }

    fn publish(
        &self,
        config: Arc<Config>,
        tls: Arc<rustls::ServerConfig>,
        dkim_keys: DkimKeys,
    ) -> u64 {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Acquire) + 1;
        *current = Some(Published {
            generation,
            config,
            tls,
            dkim_keys,
        });
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// Waits (on the reloader's thread) until every shard runs on `generation`;
    /// returns how many do.
    fn wait_applied(&self, generation: u64, stop: &AtomicBool) -> usize {
        let deadline = Instant::now() + APPLY_WAIT_MAX;
        loop {
            let done = self
                .applied
                .iter()
                .filter(|a| a.load(Ordering::Acquire) >= generation)
                .count();
            if done == self.applied.len()
                || Instant::now() >= deadline
                || stop.load(Ordering::SeqCst)
            {
                return done;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Takes newer settings from the board whenever they appear, until shutdown.
pub fn watch(shard: Rc<super::Shard>, board: Arc<Board>) {
    glommio::spawn_local(async move {
        let mut seen = 0;
        while !shard.shutdown.is_fired() {
            if let Some(published) = board.newer_than(seen) {
                seen = published.generation;
                shard.apply(&published);
                board.applied(shard.id, seen);
            }
            glommio::timer::sleep(POLL_INTERVAL).await;
        }
    })
    .detach();
}

/// Identifies a file's content cheaply: a renewal replaces the file (or the symlink's
/// target), which changes one of these.
type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The reloader's state: what runs now and where it came from.
pub struct Reloader {
    pub source: ConfigSource,
    pub running: Loaded,
    pub board: Arc<Board>,
    pub connections: Arc<Connections>,
    pub throttle: Arc<LoginThrottle>,
    pub rate: Arc<super::ratelimit::RateLimiter>,
    /// The DKIM keys in force (a certificate-only reload keeps them).
    pub dkim_keys: DkimKeys,
    pub hangup: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    /// Reloads asked for so far (each outcome in `reload.status` names its attempt, so
    /// `shardmail reload` tells a new outcome from an old one even when they read alike).
    pub attempts: u64,
}

/// What a successful reload changed.
struct Applied {
    generation: u64,
    live: Vec<String>,
    restart: Vec<String>,
    shards_applied: usize,
}

impl Reloader {
    /// Runs the reloader on its own thread until the stop flag is set.
    pub fn spawn(self) -> Result<(), String> {
        std::thread::Builder::new()
            .name("reloader".into())
            .spawn(move || self.run())
            .map(|_| ())
            .map_err(|e| format!("cannot start the reloader thread: {e}"))
    }

    fn run(mut self) {
        let mut cert_stamp = self.cert_stamp();
        let mut last_cert_check = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(POLL_INTERVAL);
            if self.hangup.swap(false, Ordering::SeqCst) {
                self.reload_all();
                cert_stamp = self.cert_stamp();
                continue;
            }
            let interval = self.running.config.tls_watch_interval;
            if interval.is_zero() || last_cert_check.elapsed() < interval {
                continue;
            }
            last_cert_check = Instant::now();
            let now = self.cert_stamp();
            if now != cert_stamp {
                cert_stamp = now;
                self.reload_certificate();
            }
        }
    }

    fn cert_stamp(&self) -> (FileStamp, FileStamp) {
        let c = &self.running.config;
        (stamp(&c.tls_cert), stamp(&c.tls_key))
    }

    fn data_dir(&self) -> PathBuf {
        self.running.config.data_dir.clone()
    }

    /// SIGHUP: everything that can change live.
    fn reload_all(&mut self) {
        super::service::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
        let started = Instant::now();
        self.attempts += 1;
        let attempt = self.attempts;
        let status = match self.try_reload() {
            Ok(a) => {
                let ms = started.elapsed().as_millis() as u64;
                if a.restart.is_empty() {
                    tracing::info!(
                        generation = a.generation,
                        changed = %a.live.join(","),
                        shards = a.shards_applied,
                        ms,
                        "configuration reloaded"
                    );
                } else {
                    tracing::warn!(
                        generation = a.generation,
                        changed = %a.live.join(","),
                        restart_needed = %a.restart.join(","),
                        shards = a.shards_applied,
                        ms,
                        "configuration reloaded; keys that need a restart keep their running values"
                    );
                }
                let mut text = format!(
                    "attempt={attempt}\nresult=ok\ngeneration={}\nchanged={}\nrestart_needed={}\n",
                    a.generation,
                    a.live.join(","),
                    a.restart.join(",")
                );
                if a.shards_applied < self.board.applied.len() {
                    text.push_str(&format!(
                        "warning=only {} of {} shards took the new settings within {} s\n",
                        a.shards_applied,
                        self.board.applied.len(),
                        APPLY_WAIT_MAX.as_secs()
                    ));
                }
                text
            }
            Err(reason) => {
                tracing::error!(
                    error = %reason,
                    "configuration reload refused; the running configuration stays in force"
                );
                format!(
                    "attempt={attempt}\nresult=refused\nerror={}\n",
                    reason.replace('\n', " ")
                )
            }
        };
        write_status(&self.data_dir(), &status);
        super::service::notify("READY=1\nSTATUS=every shard is listening");
    }

    fn try_reload(&mut self) -> Result<Applied, String> {
        let next = self.source.load().map_err(|e| e.to_string())?;
        let changed = self
            .running
            .changed_keys(&next)
            .map_err(|e| e.to_string())?;
        let (restart, live): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| is_restart_only(k));
        let applied = next
            .keeping_restart_only(&self.running)
            .map_err(|e| e.to_string())?;
        let config = &applied.config;
        let tls = crate::tls::server_config(config)?;
        let dkim_keys = load_dkim(&config.data_dir)?;
        let effective = applied.effective_toml().map_err(|e| e.to_string())?;
        crate::logging::set_level(&config.log.level)?;
        self.connections.set_policy(
            config.limits.connections_per_ip_max,
            config.limits.ip_limit_exempt_networks.clone(),
        );
        self.throttle.set_config(super::throttle_config(config));
        self.rate.set_rules(config.antispam.rate_limits.clone());
        let generation = self
            .board
            .publish(Arc::new(config.clone()), tls, dkim_keys.clone());
        self.dkim_keys = dkim_keys;
        let shards_applied = self.board.wait_applied(generation, &self.stop);
        super::preflight::record_running_config(&config.data_dir, &effective)?;
        self.running = applied;
        Ok(Applied {
            generation,
            live,
            restart,
            shards_applied,
        })
    }

    /// The certificate or key file changed: new handshakes use the new pair once both
    /// files form one (a renewal that writes them one after the other is read again
    /// when the second lands).
    fn reload_certificate(&mut self) {
        let config = &self.running.config;
        match crate::tls::server_config(config) {
            Ok(tls) => {
                let generation =
                    self.board
                        .publish(Arc::new(config.clone()), tls, self.dkim_keys.clone());
                let shards = self.board.wait_applied(generation, &self.stop);
                tracing::info!(
                    generation,
                    cert = %config.tls_cert.display(),
                    shards,
                    "TLS certificate changed on disk; new handshakes use it"
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "TLS certificate files changed but do not load; handshakes keep the running \
                 certificate (checked again when the files change)"
            ),
        }
    }
}

/// Every DKIM key under the data directory.
pub fn load_dkim(data_dir: &Path) -> Result<DkimKeys, String> {
    Ok(Arc::new(
        crate::auth::dkim::load_all(data_dir)?
            .into_iter()
            .map(|(domain, key)| (domain, Arc::new(key)))
            .collect(),
    ))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

fn write_status(data_dir: &Path, text: &str) {
    let path = data_dir.join(STATUS_FILE);
    if let Err(e) = crate::users::write_atomic(&path, text.as_bytes()) {
        tracing::warn!(error = %e, path = %path.display(), "cannot record the reload's outcome");
    }
}

fn status_generation(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("generation="))
        .and_then(|g| g.trim().parse().ok())
}

/// `shardmail reload`: signals the server serving `data_dir` (found through the
/// process id in its lock file) and prints the outcome it records.
pub fn request(data_dir: &Path) -> Result<(), String> {
    let pid = super::preflight::serving_pid(data_dir)?;
    let status_path = data_dir.join(STATUS_FILE);
    let before = std::fs::read(&status_path).ok();
    let pid_t = libc::pid_t::try_from(pid).map_err(|_| format!("bad process id {pid}"))?;
    // SAFETY: kill(2) with a plain pid and signal number has no memory effects.
    if unsafe { libc::kill(pid_t, libc::SIGHUP) } != 0 {
        return Err(format!(
            "cannot signal shardmail (pid {pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    let wait = APPLY_WAIT_MAX + Duration::from_secs(20);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = std::fs::read(&status_path).ok();
        if now.is_none() || now == before {
            continue;
        }
        let text = String::from_utf8_lossy(now.as_deref().unwrap_or_default()).into_owned();
        let generation = status_generation(&text).unwrap_or(0);
        if text.contains("result=ok") {
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .filter(|v| !v.is_empty())
                    .unwrap_or("nothing")
                    .to_string()
            };
            println!(
                "reloaded (generation {generation}): changed: {}; needs a restart: {}",
                field("changed="),
                field("restart_needed=")
            );
            if let Some(w) = text.lines().find_map(|l| l.strip_prefix("warning=")) {
                eprintln!("warning: {w}");
            }
            return Ok(());
        }
        let reason = text
            .lines()
            .find_map(|l| l.strip_prefix("error="))
            .unwrap_or("see the server's log");
        return Err(format!(
            "reload refused, the running configuration stays in force: {reason}"
        ));
    }
    Err(format!(
        "shardmail (pid {pid}) did not report a reload within {} s; see its log",
        wait.as_secs()
    ))
}
