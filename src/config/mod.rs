//! Configuration: one TOML file, checked in two steps (ripgrep's low/high args).
//!
//! [`raw`] mirrors the file with serde and a default for every key, so `shardmail serve`
//! runs with no file at all. [`Config::load`] applies `--set KEY=VALUE` overrides on the
//! TOML tree, deserializes with the path of any bad key, then validates into [`Config`],
//! whose errors always name the key and the reason. This module never opens sockets or
//! touches the data directory.

mod milter;
pub mod raw;
pub mod source;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use milter::{Milter, MilterAddress, MilterServer};
pub use raw::{Durability, LogFormat, MilterDefault};
pub use source::{ConfigSource, Loaded};
use validate::*;

/// A configuration error that names the offending key.
#[derive(Debug)]
pub struct ConfigError {
    /// Dotted key, e.g. `limits.message_size_max`, or the file for read errors.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Every limit that bounds what a peer can make us do. Units are last in each name.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message accepted (DATA or BDAT), excluding our own trace header.
    pub message_size_max: usize,
    /// Longest SMTP command line, CRLF included (RFC 5321 §4.5.3.1.4 requires ≥ 512).
    pub line_bytes_max: usize,
    /// Longest IMAP command line outside literals: an `ID` at RFC 2971's maximum and a
    /// QRESYNC known-UIDs set must fit (Dovecot's default is 64 KiB too).
    pub imap_command_bytes_max: usize,
    /// Messages one IMAP THREAD may thread: its last pass (linking and rendering the
    /// threads) is one step of the shard, about 2 ms per 1,000 messages.
    pub imap_thread_messages_max: usize,
    /// Messages one IMAP APPEND may carry (MULTIAPPEND, RFC 3502): they are stored in
    /// one commit, all or none.
    pub imap_append_messages_max: usize,
    /// Bytes of IMAP METADATA (RFC 5464) one account keeps: entry names and values of
    /// the server's and every mailbox's entries together, in memory and in the log.
    pub imap_metadata_bytes_max: usize,
    /// Live SEARCH results (CONTEXT=SEARCH, RFC 5267) one IMAP session keeps; each
    /// is re-checked on every change to the selected mailbox.
    pub imap_search_updates_max: usize,
    /// IMAP sessions of the whole server that may deflate at once (COMPRESS=DEFLATE,
    /// RFC 4978): each holds about 0.7 MiB of compressor and decompressor state.
    pub imap_compress_sessions_max: usize,
    /// Recipients per transaction (RFC 5321 §4.5.3.1.8 requires ≥ 100).
    pub recipients_max: usize,
    /// Unknown or malformed commands before the session is closed.
    pub bad_commands_max: u32,
    /// Failed AUTH attempts before the session is closed.
    pub auth_failures_max: u32,
    /// Pause before answering a failed AUTH, to slow down password guessing.
    pub auth_failure_delay: Duration,
    /// A session that sends nothing for this long is closed (RFC 5321 §4.5.3.2.7: ≥ 5 min).
    pub idle_timeout: Duration,
    /// IMAP autologout (RFC 9051 §5.4: at least 30 minutes), IDLE included.
    pub imap_idle_timeout: Duration,
    /// Parenthesized lists nested in one IMAP command (FETCH items, SEARCH keys).
    pub imap_nesting_max: usize,
    /// Concurrent sessions per shard; past it new connections get `421 4.3.2`.
    pub sessions_per_shard_max: usize,
    /// How long a verified login is cached (zero: not at all).
    pub auth_cache: Duration,
    /// Password verification threads (0 = one per core).
    pub password_threads: usize,
    /// Largest IMAP literal before login.
    pub preauth_literal_bytes_max: usize,
    /// Unsent reply bytes per connection before the session waits for its peer.
    pub output_buffer_bytes_max: usize,
    pub mailboxes_per_account_max: usize,
    pub keywords_per_mailbox_max: usize,
    /// Connections per client address (IPv6: per address), all shards and services.
    pub connections_per_ip_max: usize,
    /// Logged-in IMAP + POP3 sessions per account.
    pub sessions_per_user_max: usize,
    /// IMAP/POP3 connections must log in within this.
    pub preauth_timeout: Duration,
    /// A command line, once begun, must be complete within this.
    pub command_timeout: Duration,
    /// Minimum average rate of DATA/BDAT bodies and IMAP literals (bytes/s) after
    /// `min_data_rate_grace`; 0 turns the check off.
    pub min_data_rate: u64,
    pub min_data_rate_grace: Duration,
    /// Login throttling (per client address or /64, and per account).
    pub login_failures_before_backoff: u32,
    pub login_backoff_max: Duration,
    pub login_failure_memory: Duration,
    /// Clients the per-address limits do not apply to.
    pub ip_limit_exempt_networks: Vec<IpNet>,
}

/// The validated configuration every shard holds (as an `Rc`).
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    /// Shards to run; already resolved from `0` = one per core.
    pub shards: usize,
    pub data_dir: PathBuf,
    /// Partitions of a new data directory (fixed once the directory exists).
    pub partitions: u32,
    /// io_uring registered memory per shard, bytes.
    pub io_memory_bytes: usize,
    /// How long a graceful shutdown waits for sessions to finish their command.
    pub shutdown_grace: Duration,
    /// How long an idle shard spins before parking (0: park at once).
    pub spin_before_park: Duration,
    /// How long a task runs before a stepwise job yields (DESIGN.md §10).
    pub step_budget: Duration,
    pub local_domains: Vec<String>,
    pub listen: Listen,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Whether AUTH may be used on a connection without TLS (default: no).
    pub allow_plaintext_auth: bool,
    pub limits: Limits,
    pub store: StoreOptions,
    pub dns: Dns,
    pub auth: Auth,
    pub queue: Queue,
    pub quota: QuotaPolicy,
    /// How often the TLS certificate and key files are checked for a change (ACME
    /// renewals); zero: only on reload.
    pub tls_watch_interval: Duration,
    pub log: LogSettings,
    pub antispam: Antispam,
    pub milter: Milter,
}

/// `[antispam]`, validated.
#[derive(Debug, Clone)]
pub struct Antispam {
    pub greet_delay: Duration,
    pub exempt: Vec<IpNet>,
    pub rate_limits: Vec<RateLimit>,
    pub dnsbl: Vec<Dnsbl>,
    pub reject_score: i64,
    pub junk_score: i64,
    pub fcrdns_fail_score: i64,
    /// Lowercase, without a trailing dot.
    pub allow_dkim_domains: Vec<String>,
    /// `Some` when greylisting is on.
    pub greylist: Option<Greylisting>,
}

/// `antispam.greylist_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greylisting {
    pub delay: Duration,
    pub ttl: Duration,
}

/// One DNS list: `zone`, what a listing adds to the score, which answers count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnsbl {
    pub zone: String,
    pub weight: i64,
    pub lookup: raw::DnsblLookup,
    /// Empty: any answer in 127.0.0.0/8.
    pub codes: Vec<std::net::Ipv4Addr>,
}

impl Dnsbl {
    /// Whether these A records mean "listed".
    pub fn lists(&self, answers: &[std::net::Ipv4Addr]) -> bool {
        answers.iter().any(|a| {
            if self.codes.is_empty() {
                a.octets()[0] == 127
            } else {
                self.codes.contains(a)
            }
        })
    }
}

impl Antispam {
    pub fn exempts(&self, ip: std::net::IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(ip))
    }

    /// Whether a DKIM pass can clear greylisting: a static list, or a DKIM-domain
    /// DNS list with a negative weight (an allowlist).
    pub fn has_dkim_allowlist(&self) -> bool {
        !self.allow_dkim_domains.is_empty()
            || self
                .dnsbl
                .iter()
                .any(|l| l.lookup == raw::DnsblLookup::DkimDomain && l.weight < 0)
    }
}

/// One rate limit: at most `limit` of `count` per `key` in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub key: raw::RateKey,
    pub count: raw::RateCount,
    pub window: Duration,
    pub limit: u64,
}

impl fmt::Display for RateLimit {
    /// As the refusal and the log name it: `client_ip messages 100/60s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}/{}s",
            self.key.name(),
            self.count.name(),
            self.limit,
            self.window.as_secs()
        )
    }
}

/// `[log]`: what the server logs and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter (`info`, `debug`, `info,shardmail::login=debug`); the
    /// `SHARDMAIL_LOG` environment variable replaces it when set.
    pub level: String,
    pub format: LogFormat,
}

/// `[quota]`: default limits per account and how SMTP refuses a full mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaPolicy {
    pub default: crate::users::Quota,
    pub hard_bounce: bool,
}

/// `[queue]`: outbound delivery.
#[derive(Debug, Clone)]
pub struct Queue {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    /// `None` = no delay notices.
    pub delay_notice: Option<Duration>,
    pub remote_port: u16,
    pub connections_max: usize,
    pub connections_per_destination_max: usize,
    pub relay: Option<Relay>,
    /// Lowercase domain → `host:port`.
    pub transports: std::collections::HashMap<String, String>,
    pub tls_required: Vec<String>,
    /// The CA certificates of `queue.tls_ca_file`, read and checked at load.
    pub tls_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// A smarthost for all outbound mail.
#[derive(Debug, Clone)]
pub struct Relay {
    /// `host:port`.
    pub host: String,
    pub auth: Option<(String, String)>,
    pub require_tls: bool,
}

/// `[dns]`.
#[derive(Debug, Clone)]
pub struct Dns {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub cache_entries: usize,
}

/// `[auth]`: checks of inbound mail on `listen.smtp`.
#[derive(Debug, Clone)]
pub struct Auth {
    pub enabled: bool,
    /// Authenticated senders may only use their own address or its aliases.
    pub sender_login_match: bool,
    pub exempt_networks: Vec<IpNet>,
    pub queue_depth_max: usize,
    pub policies: crate::auth::policy::Policies,
    /// Submitted mail whose From: the login does not own.
    pub from_header_match: FromHeaderMatch,
    /// Lowercased login → extra lowercased domains it may use in From:.
    pub from_header_domains: std::collections::HashMap<String, Vec<String>>,
}

/// `auth.from_header_match`: what DKIM signing does with a From: header the login
/// does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromHeaderMatch {
    /// `550 5.7.1`: nothing is sent or stored.
    Refuse,
    /// Accepted without our DKIM signature.
    Unsigned,
    /// Signed anyway (single-tenant servers where every user may speak for every
    /// hosted domain).
    Off,
}

impl Auth {
    /// Whether a client at `ip` connecting to the MX port is checked.
    pub fn checks(&self, ip: std::net::IpAddr) -> bool {
        self.enabled && !self.exempt_networks.iter().any(|n| n.contains(ip))
    }
}

/// An IP network such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse().ok()?, p.parse().ok()?),
            None => {
                let ip: std::net::IpAddr = s.parse().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(ip, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (prefix <= max).then_some(IpNet { addr: ip, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        fn bits(ip: std::net::IpAddr) -> (u128, u8) {
            match ip {
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let ((net, net_len), (addr, addr_len)) = (bits(self.addr), bits(ip));
        if net_len != addr_len {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == addr & mask
    }
}

/// How partitions make appends durable and checkpoint their index.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub durability: Durability,
    pub checkpoint_bytes: u64,
    /// Free space to keep on the data directory's filesystem.
    pub reserve_free: Reserve,
    /// Incoming messages above this go to a spool file while they arrive.
    pub spool_threshold_bytes: usize,
    pub compaction: Compaction,
}

/// `store.compaction_*`: when a running server compacts a partition, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    /// Compact once garbage is at least this share of the log (0 = never by itself).
    pub garbage_ratio: f64,
    /// …and at least this many bytes.
    pub min_garbage_bytes: u64,
    /// Message bytes copied per second at most.
    pub bytes_per_sec: u64,
    /// How often each shard checks its partitions (and `shardmail store compact`
    /// requests).
    pub check_interval: Duration,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            garbage_ratio: 0.3,
            min_garbage_bytes: 64 << 20,
            bytes_per_sec: 64 << 20,
            check_interval: Duration::from_secs(60),
        }
    }
}

/// `store.reserve_free_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Bytes(u64),
    /// Per cent of the filesystem's size.
    Percent(u8),
    /// 1 GiB or 5 % of the filesystem, whichever is smaller.
    Auto,
}

impl Reserve {
    /// Bytes to keep free on a filesystem of `total` bytes.
    pub fn bytes_for(self, total: u64) -> u64 {
        match self {
            Reserve::Bytes(b) => b,
            Reserve::Percent(p) => total / 100 * u64::from(p),
            Reserve::Auto => (1u64 << 30).min(total / 20),
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Group,
            checkpoint_bytes: 256 << 20,
            reserve_free: Reserve::Bytes(0),
            spool_threshold_bytes: 256 * 1024,
            compaction: Compaction::default(),
        }
    }
}

/// Listening addresses per service; an empty list disables the service.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub smtp: Vec<SocketAddr>,
    pub submission: Vec<SocketAddr>,
    pub submissions: Vec<SocketAddr>,
    pub imap: Vec<SocketAddr>,
    pub imaps: Vec<SocketAddr>,
    pub pop3: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    pub lmtp: Vec<SocketAddr>,
    pub metrics: Vec<SocketAddr>,
    /// listen(2) backlog.
    pub backlog: u32,
}

/// What `check-config` prints in place of a secret.
pub const SECRET_PLACEHOLDER: &str = "<secret: not shown>";

impl Config {
    /// Reads `file` (if any), applies `overrides` (`KEY=VALUE`), then `data_dir` if given.
    pub fn load(
        file: Option<&Path>,
        overrides: &[String],
        data_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        Config::validate(source::load_raw(file, overrides, data_dir)?)
    }

    /// The embedded defaults, as `shardmail serve` with no file uses them.
    pub fn defaults() -> Config {
        Config::load(None, &[], None).unwrap_or_else(|e| panic!("embedded defaults invalid: {e}"))
    }

    fn validate(raw: raw::RawConfig) -> Result<Config, ConfigError> {
        let hostname = raw.server.hostname.unwrap_or_else(system_hostname);
        if hostname.is_empty() || hostname.contains(char::is_whitespace) {
            return Err(err(
                "server.hostname",
                "must be a non-empty name without spaces",
            ));
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let shards = if raw.server.shards == 0 {
            cores
        } else {
            raw.server.shards
        };
        if shards > 1024 {
            return Err(err("server.shards", "at most 1024 (0 means one per core)"));
        }
        if raw.server.partitions == 0 || raw.server.partitions > 65_536 {
            return Err(err("server.partitions", "must be between 1 and 65536"));
        }
        let io_memory_bytes = raw.server.io_memory.bytes("server.io_memory")?;
        if io_memory_bytes < 64 * 1024 {
            return Err(err("server.io_memory", "at least 64KiB per shard"));
        }
        let mut local_domains = Vec::new();
        for (i, d) in raw.domains.local.iter().enumerate() {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() || d.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err(err(&format!("domains.local[{i}]"), "not a domain name"));
            }
            local_domains.push(d);
        }
        let data_dir = raw.server.data_dir;
        let tls_dir = data_dir.join("tls");
        let tls_cert = raw.tls.cert.unwrap_or_else(|| tls_dir.join("cert.pem"));
        let tls_key = raw.tls.key.unwrap_or_else(|| tls_dir.join("key.pem"));
        let l = &raw.limits;
        let limits = Limits {
            message_size_max: l.message_size_max.bytes("limits.message_size_max")?,
            line_bytes_max: l.line_bytes_max,
            imap_command_bytes_max: l.imap_command_bytes_max,
            imap_thread_messages_max: l.imap_thread_messages_max,
            imap_append_messages_max: l.imap_append_messages_max,
            imap_search_updates_max: l.imap_search_updates_max,
            imap_compress_sessions_max: l.imap_compress_sessions_max,
            imap_metadata_bytes_max: l
                .imap_metadata_bytes_max
                .bytes("limits.imap_metadata_bytes_max")?,
            recipients_max: l.recipients_max,
            bad_commands_max: l.bad_commands_max,
            auth_failures_max: l.auth_failures_max,
            auth_failure_delay: Duration::from_millis(l.auth_failure_delay_ms),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            imap_idle_timeout: Duration::from_secs(l.imap_idle_timeout_secs),
            imap_nesting_max: l.imap_nesting_max,
            sessions_per_shard_max: l.sessions_per_shard_max,
            auth_cache: Duration::from_secs(l.auth_cache_secs),
            password_threads: l.password_threads,
            preauth_literal_bytes_max: l
                .preauth_literal_bytes_max
                .bytes("limits.preauth_literal_bytes_max")?,
            output_buffer_bytes_max: l
                .output_buffer_bytes_max
                .bytes("limits.output_buffer_bytes_max")?,
            mailboxes_per_account_max: l.mailboxes_per_account_max,
            keywords_per_mailbox_max: l.keywords_per_mailbox_max,
            connections_per_ip_max: l.connections_per_ip_max,
            sessions_per_user_max: l.sessions_per_user_max,
            preauth_timeout: Duration::from_secs(l.preauth_timeout_secs),
            command_timeout: Duration::from_secs(l.command_timeout_secs),
            min_data_rate: l.min_data_rate,
            min_data_rate_grace: Duration::from_secs(l.min_data_rate_grace_secs),
            login_failures_before_backoff: l.login_failures_before_backoff,
            login_backoff_max: Duration::from_secs(l.login_backoff_max_secs),
            login_failure_memory: Duration::from_secs(l.login_failure_memory_secs),
            ip_limit_exempt_networks: parse_networks(
                "limits.ip_limit_exempt_networks",
                &l.ip_limit_exempt_networks,
            )?,
        };
        check_new_limits(&limits)?;
        if limits.message_size_max < 1024 || limits.message_size_max > (1 << 30) {
            return Err(err(
                "limits.message_size_max",
                "must be between 1KiB and 1GiB",
            ));
        }
        if limits.line_bytes_max < 512 || limits.line_bytes_max > 64 * 1024 {
            return Err(err(
                "limits.line_bytes_max",
                "must be between 512 and 65536 (RFC 5321)",
            ));
        }
        if !(8 * 1024..=1 << 20).contains(&limits.imap_command_bytes_max) {
            return Err(err(
                "limits.imap_command_bytes_max",
                "must be between 8192 and 1048576",
            ));
        }
        if !(100..=1_000_000).contains(&limits.imap_thread_messages_max) {
            return Err(err(
                "limits.imap_thread_messages_max",
                "must be between 100 and 1000000",
            ));
        }
        if !(1024..=16 << 20).contains(&limits.imap_metadata_bytes_max) {
            return Err(err(
                "limits.imap_metadata_bytes_max",
                "must be between 1 KiB and 16 MiB",
            ));
        }
        if limits.imap_search_updates_max > 100 {
            return Err(err(
                "limits.imap_search_updates_max",
                "must be between 0 and 100",
            ));
        }
        if !(1..=100_000).contains(&limits.imap_append_messages_max) {
            return Err(err(
                "limits.imap_append_messages_max",
                "must be between 1 and 100000",
            ));
        }
        if limits.recipients_max < 1 || limits.recipients_max > 100_000 {
            return Err(err("limits.recipients_max", "must be between 1 and 100000"));
        }
        if limits.idle_timeout < Duration::from_secs(1) {
            return Err(err("limits.idle_timeout_secs", "must be at least 1"));
        }
        if !(2..=64).contains(&limits.imap_nesting_max) {
            return Err(err("limits.imap_nesting_max", "must be between 2 and 64"));
        }
        if limits.imap_idle_timeout < Duration::from_secs(1) {
            return Err(err("limits.imap_idle_timeout_secs", "must be at least 1"));
        }
        if limits.sessions_per_shard_max == 0 {
            return Err(err("limits.sessions_per_shard_max", "must be at least 1"));
        }
        let listen = Listen {
            smtp: parse_addrs("listen.smtp", &raw.listen.smtp)?,
            submission: parse_addrs("listen.submission", &raw.listen.submission)?,
            submissions: parse_addrs("listen.submissions", &raw.listen.submissions)?,
            imap: parse_addrs("listen.imap", &raw.listen.imap)?,
            imaps: parse_addrs("listen.imaps", &raw.listen.imaps)?,
            pop3: parse_addrs("listen.pop3", &raw.listen.pop3)?,
            pop3s: parse_addrs("listen.pop3s", &raw.listen.pop3s)?,
            lmtp: parse_addrs("listen.lmtp", &raw.listen.lmtp)?,
            metrics: parse_addrs("listen.metrics", &raw.listen.metrics)?,
            backlog: raw.listen.backlog,
        };
        // LMTP trusts its client with final delivery and has no AUTH: never beyond
        // this host.
        if listen.lmtp.iter().any(|a| !a.ip().is_loopback()) {
            return Err(err(
                "listen.lmtp",
                "must be loopback addresses (127.0.0.0/8 or ::1): LMTP has no authentication",
            ));
        }
        if !(50..=100_000).contains(&raw.server.step_budget_us) {
            return Err(err(
                "server.step_budget_us",
                "must be between 50 and 100000 microseconds",
            ));
        }
        if !(16..=1 << 20).contains(&listen.backlog) {
            return Err(err("listen.backlog", "must be between 16 and 1048576"));
        }
        Ok(Config {
            hostname,
            shards,
            data_dir,
            partitions: raw.server.partitions,
            io_memory_bytes,
            shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
            spin_before_park: Duration::from_micros(raw.server.spin_before_park_us),
            step_budget: Duration::from_micros(raw.server.step_budget_us),
            local_domains,
            listen,
            tls_cert,
            tls_key,
            allow_plaintext_auth: raw.tls.allow_plaintext_auth,
            limits,
            dns: Dns {
                servers: parse_addrs(
                    "dns.servers",
                    &raw::OneOrMany::Many(raw.dns.servers.clone()),
                )?,
                timeout: raw.dns.timeout.value("dns.timeout")?,
                cache_entries: raw.dns.cache_entries.max(16),
            },
            auth: validate_auth(&raw.auth)?,
            queue: validate_queue(&raw.queue)?,
            tls_watch_interval: Duration::from_secs(raw.tls.watch_interval_secs),
            log: validate_log(&raw.log)?,
            antispam: validate_antispam(&raw.antispam)?,
            milter: milter::validate_milter(&raw.milter)?,
            quota: QuotaPolicy {
                default: crate::users::Quota {
                    storage: Some(raw.quota.storage_default.bytes("quota.storage_default")? as u64)
                        .filter(|n| *n > 0),
                    messages: Some(raw.quota.messages_default).filter(|n| *n > 0),
                },
                hard_bounce: raw.quota.hard_bounce,
            },
            store: StoreOptions {
                durability: raw.store.durability,
                checkpoint_bytes: raw.store.checkpoint_bytes.bytes("store.checkpoint_bytes")?
                    as u64,
                reserve_free: parse_reserve(&raw.store.reserve_free_bytes)?,
                spool_threshold_bytes: raw
                    .store
                    .spool_threshold_bytes
                    .bytes("store.spool_threshold_bytes")?
                    .clamp(16 * 1024, 64 << 20),
                compaction: Compaction {
                    garbage_ratio: ratio(
                        "store.compaction_garbage_ratio",
                        raw.store.compaction_garbage_ratio,
                    )?,
                    min_garbage_bytes: raw
                        .store
                        .compaction_min_garbage_bytes
                        .bytes("store.compaction_min_garbage_bytes")?
                        as u64,
                    bytes_per_sec: (raw
                        .store
                        .compaction_bytes_per_sec
                        .bytes("store.compaction_bytes_per_sec")?
                        as u64)
                        .max(1 << 20),
                    check_interval: Duration::from_secs(raw.store.compaction_check_secs.max(1)),
                },
            },
        })
    }

    /// True when `domain` (any case) is one we receive mail for.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::defaults();
        assert!(c.listen.smtp.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.limits.message_size_max >= 1 << 20);
    }

    #[test]
    fn check_config_prints_toml_that_loads_back_without_secrets() {
        let over = vec![
            "queue.relay_host=\"relay.example:587\"".to_string(),
            "queue.relay_username=\"bob\"".to_string(),
            "queue.relay_password=\"hunter2\"".to_string(),
            "limits.message_size_max=\"20MiB\"".to_string(),
            "auth.domains.\"example.org\".dmarc_reject=\"quarantine\"".to_string(),
        ];
        let printed = ConfigSource {
            overrides: over,
            ..ConfigSource::default()
        }
        .load()
        .and_then(|l| l.effective_toml())
        .expect("valid");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains(SECRET_PLACEHOLDER), "{printed}");
        assert!(
            printed.contains("message_size_max = \"20MiB\""),
            "{printed}"
        );
        // What it prints is a configuration file serve accepts, and prints the same.
        let file =
            std::env::temp_dir().join(format!("shardmail-check-{}.toml", std::process::id()));
        std::fs::write(&file, &printed).expect("write");
        let again = ConfigSource {
            file: Some(file.clone()),
            ..ConfigSource::default()
        }
        .load()
        .and_then(|l| l.effective_toml())
        .expect("loads back");
        let loaded = Config::load(Some(&file), &[], None).expect("serve accepts it");
        let _ = std::fs::remove_file(&file);
        assert_eq!(again, printed);
        assert_eq!(loaded.limits.message_size_max, 20 << 20);
    }

    #[test]
    fn type_errors_say_what_was_expected() {
        for (set, key, expected) in [
            (
                "limits.message_size_max=true",
                "limits.message_size_max",
                "expected a byte count such as 52428800",
            ),
            (
                "dns.timeout=[1]",
                "dns.timeout",
                "expected a duration such as 5",
            ),
            (
                "listen.smtp=5",
                "listen.smtp",
                "expected an address such as \"127.0.0.1:25\"",
            ),
            (
                "limits.message_size_max=-1",
                "limits.message_size_max",
                "expected a byte count",
            ),
        ] {
            let e = Config::load(None, &[set.to_string()], None).unwrap_err();
            assert_eq!(e.key, key, "{set}: {e}");
            assert!(e.reason.contains(expected), "{set}: {e}");
            assert!(
                !e.reason.contains("untagged") && !e.reason.contains('\n'),
                "{set}: {e}"
            );
        }
    }

    #[test]
    fn set_overrides_and_errors_name_the_key() {
        let over = vec![
            "server.shards=3".to_string(),
            "listen.smtp=[]".to_string(),
            "limits.message_size_max=2MiB".to_string(),
        ];
        let c = Config::load(None, &over, Some(Path::new("/tmp/x"))).expect("valid");
        assert_eq!(c.shards, 3);
        assert!(c.listen.smtp.is_empty());
        assert_eq!(c.limits.message_size_max, 2 << 20);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));

        let e = Config::load(None, &["limits.nonsense=1".into()], None).unwrap_err();
        assert!(e.key.contains("limits"), "{e}");
        let e = Config::load(None, &["listen.imap=nope".into()], None).unwrap_err();
        assert_eq!(e.key, "listen.imap");
        let e = Config::load(None, &["limits.message_size_max=12 parsecs".into()], None);
        assert_eq!(e.unwrap_err().key, "limits.message_size_max");
        let e = Config::load(None, &["server.shards=\"many\"".into()], None).unwrap_err();
        assert_eq!(e.key, "server.shards");
        let e = Config::load(None, &["auth.spf_fail=\"bounce\"".into()], None).unwrap_err();
        assert_eq!(e.key, "auth.spf_fail");
        let e = Config::load(None, &["dns.servers=[\"nope\"]".into()], None).unwrap_err();
        assert_eq!(e.key, "dns.servers");
        let over = vec![
            "auth.domains.\"Strict.Example\".spf_fail=\"reject\"".to_string(),
            "dns.timeout=\"250ms\"".to_string(),
        ];
        let c = Config::load(None, &over, None).expect("valid");
        assert_eq!(c.dns.timeout, Duration::from_millis(250));
        let strict = c.auth.policies.for_domain("strict.example");
        assert_eq!(strict.spf_fail, crate::auth::policy::SpfFailAction::Reject);
        assert_eq!(
            c.auth.policies.for_domain("other.example").spf_fail,
            crate::auth::policy::SpfFailAction::Mark
        );
        assert!(!c.auth.checks("127.0.0.1".parse().unwrap()));
        assert!(!c.auth.checks("::1".parse().unwrap()));
        assert!(c.auth.checks("192.0.2.7".parse().unwrap()));
    }
}
