//! The configuration file as serde sees it: every key optional, every default here.
//!
//! This is the single place where defaults live, so `docs/config.md` and the profiles
//! in `tuning/` can be checked against it. Nothing here validates beyond types; that
//! is [`super::Config::validate`]'s job.

use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::ConfigError;

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub domains: RawDomains,
    pub listen: RawListen,
    pub tls: RawTls,
    pub limits: RawLimits,
    pub store: RawStore,
    pub dns: RawDns,
    pub auth: RawAuth,
    pub queue: RawQueue,
    pub quota: RawQuota,
    pub log: RawLog,
    pub antispam: RawAntispam,
    pub milter: RawMilter,
}

/// `[milter]`: content filters speaking the Sendmail milter protocol (rspamd, …).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawMilter {
    /// Asked in order after DATA, each seeing the previous one's changes.
    pub servers: Vec<RawMilterServer>,
}

/// One `milter.servers` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMilterServer {
    /// `inet:127.0.0.1:11332`, `inet:[::1]:11332` or `unix:/run/rspamd/milter.sock`.
    pub address: String,
    /// How long each reply may take (the connection attempt included).
    #[serde(default = "milter_timeout")]
    pub timeout: Duration,
    /// What a message gets when the milter cannot be asked.
    #[serde(default)]
    pub default_action: MilterDefault,
    /// Conversations with this milter at once, all shards together.
    #[serde(default = "milter_concurrency")]
    pub concurrency: u32,
}

fn milter_timeout() -> Duration {
    Duration::Text("30s".into())
}

fn milter_concurrency() -> u32 {
    32
}

/// `milter.servers[].default_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MilterDefault {
    /// `451 4.7.1`: the client tries again later (Postfix's default).
    #[default]
    Tempfail,
    /// Go on as if the milter had accepted.
    Accept,
}

/// `[antispam]`: limits and checks against abusive senders (issue 15).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAntispam {
    /// Milliseconds the MX port waits before its greeting; a client that talks first
    /// is refused (`554 5.7.1`). 0: greet at once.
    pub greet_delay_ms: u64,
    /// Clients these limits and checks never apply to (the per-user limits still do).
    pub exempt_networks: Vec<String>,
    pub rate_limits: Vec<RawRateLimit>,
    /// DNS blocklists (positive weights) and allowlists (negative), checked at connect.
    pub dnsbl: Vec<RawDnsbl>,
    /// A client scoring this much or more is refused at connect (`554 5.7.1`).
    pub reject_score: i64,
    /// Mail from a client scoring this much or more goes to Junk.
    pub junk_score: i64,
    /// Added to the score of an MX client without forward-confirmed reverse DNS.
    pub fcrdns_fail_score: i64,
    /// Domains whose DKIM-signed mail (a passing `d=`) skips greylisting.
    pub allow_dkim_domains: Vec<String>,
    /// Greylisting of (client /24 or /64, sender, recipient) on the MX port.
    pub greylist: bool,
    /// How long a new triplet waits before its retry is accepted.
    pub greylist_delay: Duration,
    /// How long an accepted triplet is remembered (and passes at once).
    pub greylist_ttl: Duration,
}

/// One `antispam.dnsbl` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsbl {
    pub zone: String,
    pub weight: i64,
    /// What is looked up in the zone.
    #[serde(default)]
    pub lookup: DnsblLookup,
    /// Answers that count as listed (e.g. `127.0.0.2`); empty: any `127.0.0.0/8` answer.
    #[serde(default)]
    pub codes: Vec<String>,
}

/// What a DNS list is asked about (`antispam.dnsbl[].lookup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsblLookup {
    /// The client's address, reversed (at connect).
    #[default]
    ClientIp,
    /// The envelope sender's domain (after DATA).
    SenderDomain,
    /// Each `d=` of a DKIM signature that passed (after DATA).
    DkimDomain,
}

impl Default for RawAntispam {
    fn default() -> Self {
        let rule = |key, count, window: &str, limit| RawRateLimit {
            key,
            count,
            window: Duration::Text(window.into()),
            limit,
        };
        RawAntispam {
            greet_delay_ms: 0,
            exempt_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            rate_limits: vec![
                rule(RateKey::ClientIp, RateCount::Connections, "1m", 60),
                rule(RateKey::ClientIp, RateCount::Messages, "1m", 100),
                rule(RateKey::ClientIp, RateCount::Recipients, "1m", 500),
                rule(RateKey::ClientIp, RateCount::FailedCommands, "1m", 30),
                rule(RateKey::ClientNet, RateCount::Connections, "1m", 300),
                rule(RateKey::AuthUser, RateCount::Messages, "1h", 500),
                rule(RateKey::AuthUser, RateCount::Recipients, "1h", 2000),
            ],
            dnsbl: Vec::new(),
            reject_score: 10,
            junk_score: 5,
            fcrdns_fail_score: 0,
            allow_dkim_domains: Vec::new(),
            greylist: false,
            greylist_delay: Duration::Text("5m".into()),
            greylist_ttl: Duration::Text("35d".into()),
        }
    }
}

/// One `antispam.rate_limits` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub key: RateKey,
    pub count: RateCount,
    pub window: Duration,
    pub limit: u64,
}

/// What a rate limit counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// The client's address: /32 for IPv4, /64 for IPv6.
    ClientIp,
    /// The client's network: /24 for IPv4, /48 for IPv6.
    ClientNet,
    /// The authenticated user (submission).
    AuthUser,
    /// The envelope sender's domain.
    SenderDomain,
    /// The envelope recipient.
    Recipient,
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateCount {
    Connections,
    /// Transactions (MAIL FROM).
    Messages,
    /// Accepted RCPT TO.
    Recipients,
    /// Refused recipients and failed logins.
    FailedCommands,
}

impl RateKey {
    pub fn name(self) -> &'static str {
        match self {
            RateKey::ClientIp => "client_ip",
            RateKey::ClientNet => "client_net",
            RateKey::AuthUser => "auth_user",
            RateKey::SenderDomain => "sender_domain",
            RateKey::Recipient => "recipient",
        }
    }
}

impl RateCount {
    pub fn name(self) -> &'static str {
        match self {
            RateCount::Connections => "connections",
            RateCount::Messages => "messages",
            RateCount::Recipients => "recipients",
            RateCount::FailedCommands => "failed_commands",
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A tracing filter; `SHARDMAIL_LOG` replaces it when set. Changes on reload.
    pub level: String,
    /// `text` (`key=value` fields) or `json` (one object per line). Restart to change.
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[quota]`: what an account may store, unless `shardmail user quota` says otherwise.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuota {
    /// Bytes of mail per account (sum of message sizes); 0 = no limit.
    pub storage_default: Size,
    /// Messages per account; 0 = no limit.
    pub messages_default: u64,
    /// Refuse over-quota recipients permanently (`552 5.2.2`) instead of asking the
    /// sender to retry (`452 4.2.2`).
    pub hard_bounce: bool,
}

impl Default for RawQuota {
    fn default() -> Self {
        RawQuota {
            storage_default: Size::Bytes(0),
            messages_default: 0,
            hard_bounce: false,
        }
    }
}

impl RawConfig {
    /// Deserializes the (override-applied) TOML tree; errors carry the dotted key path.
    pub fn from_tree(tree: toml::Table) -> Result<RawConfig, ConfigError> {
        let value = toml::Value::Table(tree);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            // The TOML error repeats the key on a line of its own: the key is ours to name.
            let reason = e.inner().to_string();
            let reason = reason.lines().next().unwrap_or_default().trim().to_string();
            // An unknown key shows up as an error on its table; name the table then.
            ConfigError { key, reason }
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Name used in the SMTP greeting, EHLO and `Received:`; default: the host's name.
    pub hostname: Option<String>,
    /// 0 = one shard per core.
    pub shards: usize,
    pub data_dir: PathBuf,
    /// Fixed when the data directory is created (DESIGN.md §1).
    pub partitions: u32,
    /// io_uring registered buffer memory per shard. Must fit RLIMIT_MEMLOCK with the
    /// rings of every shard (8 MiB is a common non-root limit).
    pub io_memory: Size,
    pub shutdown_grace_secs: u64,
    /// Microseconds an idle shard spins before parking; trades CPU for wake-up latency
    /// and fewer park/wake cycles (each park costs glommio a membarrier).
    pub spin_before_park_us: u64,
    /// Microseconds a long job (a LIST, FETCH or SEARCH answered in steps) may keep its
    /// shard before it lets the other sessions run and new input be read.
    pub step_budget_us: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            hostname: None,
            shards: 0,
            data_dir: PathBuf::from("./data"),
            partitions: 64,
            io_memory: Size::Bytes(512 * 1024),
            shutdown_grace_secs: 10,
            spin_before_park_us: 0,
            step_budget_us: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDomains {
    /// Domains this server receives mail for.
    pub local: Vec<String>,
}

impl Default for RawDomains {
    fn default() -> Self {
        RawDomains {
            local: vec!["localhost".to_string()],
        }
    }
}

/// A single address or a list of them.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

fn addr(s: &str) -> OneOrMany {
    OneOrMany::One(s.to_string())
}

/// Embedded defaults: high ports on loopback, so a first run needs no privileges and
/// exposes nothing. `tuning/default.toml` has the standard ports for a real host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub smtp: OneOrMany,
    pub submission: OneOrMany,
    pub submissions: OneOrMany,
    pub imap: OneOrMany,
    pub imaps: OneOrMany,
    pub pop3: OneOrMany,
    pub pop3s: OneOrMany,
    /// LMTP (RFC 2033) for an edge MTA delivering into our mailboxes; off unless set,
    /// loopback addresses only.
    pub lmtp: OneOrMany,
    /// Prometheus text endpoint (HTTP GET /metrics); off unless set.
    pub metrics: OneOrMany,
    /// listen(2) backlog of every listener: connections the kernel queues before we
    /// accept them (capped by net.core.somaxconn).
    pub backlog: u32,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            smtp: addr("127.0.0.1:2525"),
            submission: addr("127.0.0.1:2587"),
            submissions: addr("127.0.0.1:2465"),
            imap: addr("127.0.0.1:2143"),
            imaps: addr("127.0.0.1:2993"),
            pop3: addr("127.0.0.1:2110"),
            pop3s: addr("127.0.0.1:2995"),
            lmtp: OneOrMany::Many(Vec::new()),
            metrics: OneOrMany::Many(Vec::new()),
            backlog: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain; default `<data_dir>/tls/cert.pem`, self-signed on first start.
    pub cert: Option<PathBuf>,
    /// PEM private key; default `<data_dir>/tls/key.pem`.
    pub key: Option<PathBuf>,
    /// Allow AUTH/LOGIN without TLS. Off: passwords never cross the wire in clear.
    pub allow_plaintext_auth: bool,
    /// Seconds between checks of the certificate and key files for a change (ACME
    /// renewals); new handshakes use a changed pair. 0: only on reload.
    pub watch_interval_secs: u64,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            cert: None,
            key: None,
            allow_plaintext_auth: false,
            watch_interval_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub message_size_max: Size,
    pub line_bytes_max: usize,
    pub imap_command_bytes_max: usize,
    pub imap_thread_messages_max: usize,
    pub imap_append_messages_max: usize,
    pub imap_metadata_bytes_max: Size,
    pub imap_search_updates_max: usize,
    pub imap_compress_sessions_max: usize,
    pub recipients_max: usize,
    pub bad_commands_max: u32,
    pub auth_failures_max: u32,
    pub auth_failure_delay_ms: u64,
    pub idle_timeout_secs: u64,
    pub imap_idle_timeout_secs: u64,
    pub imap_nesting_max: usize,
    pub sessions_per_shard_max: usize,
    /// Seconds a successful login is remembered (as an HMAC keyed per run) so the
    /// next login of the same user and password skips argon2; 0 = off (every login
    /// pays argon2). A changed password or deleted account misses at once.
    pub auth_cache_secs: u64,
    /// Threads verifying passwords (argon2) for every shard; 0 = one per core.
    pub password_threads: usize,
    /// Largest IMAP literal accepted before login (a LOGIN password needs little).
    pub preauth_literal_bytes_max: Size,
    /// Reply bytes a session queues before it stops computing and waits for its peer
    /// to read them.
    pub output_buffer_bytes_max: Size,
    /// Mailboxes one account may have (IMAP CREATE; also bounds subscriptions).
    pub mailboxes_per_account_max: usize,
    /// Distinct keywords one mailbox may carry (IMAP STORE/APPEND).
    pub keywords_per_mailbox_max: usize,
    /// Connections from one client address, all services and shards together.
    pub connections_per_ip_max: usize,
    /// IMAP and POP3 sessions logged in to one account at once.
    pub sessions_per_user_max: usize,
    /// IMAP/POP3: seconds a connection may stay without logging in.
    pub preauth_timeout_secs: u64,
    /// Seconds within which a whole command line must arrive once it has started.
    pub command_timeout_secs: u64,
    /// Bytes per second a DATA/BDAT body or an IMAP literal must average once the
    /// grace period is over (Postfix's smtpd_min_data_rate).
    pub min_data_rate: u64,
    pub min_data_rate_grace_secs: u64,
    /// Failed logins per client address (IPv6: per /64) and per account before each
    /// further attempt waits for an exponentially growing back-off.
    pub login_failures_before_backoff: u32,
    /// The back-off ceiling.
    pub login_backoff_max_secs: u64,
    /// Failures are forgotten after this long without a new one.
    pub login_failure_memory_secs: u64,
    /// Clients not subject to the per-address limits (connections_per_ip_max and the
    /// per-address login back-off): local tools and webmail on the same host.
    pub ip_limit_exempt_networks: Vec<String>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            // Postfix's message_size_limit default is 10 MB; big attachments are common
            // now, and Gmail accepts 25 MB encoded (50 MB here leaves room for base64).
            message_size_max: Size::Bytes(50 << 20),
            line_bytes_max: 4096,
            imap_command_bytes_max: 64 * 1024,
            imap_thread_messages_max: 20_000,
            imap_append_messages_max: 1_000,
            imap_metadata_bytes_max: Size::Bytes(256 * 1024),
            imap_search_updates_max: 8,
            imap_compress_sessions_max: 1_000,
            recipients_max: 1000, // Postfix smtpd_recipient_limit
            bad_commands_max: 20,
            auth_failures_max: 3,
            auth_failure_delay_ms: 1000,
            idle_timeout_secs: 300,       // RFC 5321 §4.5.3.2.7
            imap_idle_timeout_secs: 1800, // RFC 9051 §5.4: at least 30 minutes
            imap_nesting_max: 16,
            sessions_per_shard_max: 10_000,
            auth_cache_secs: 300,
            password_threads: 0,
            preauth_literal_bytes_max: Size::Bytes(8 * 1024),
            output_buffer_bytes_max: Size::Bytes(256 * 1024),
            mailboxes_per_account_max: 10_000,
            keywords_per_mailbox_max: 256,
            connections_per_ip_max: 50,
            sessions_per_user_max: 20,
            preauth_timeout_secs: 60,
            command_timeout_secs: 60,
            min_data_rate: 500, // Postfix smtpd_min_data_rate
            min_data_rate_grace_secs: 10,
            login_failures_before_backoff: 5,
            login_backoff_max_secs: 900,
            login_failure_memory_secs: 3600,
            ip_limit_exempt_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// What "durable" means before a message is acknowledged.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// One fdatasync per append (no batching).
    Sync,
    /// One fdatasync covers every append that arrived while the previous one ran.
    #[default]
    Group,
    /// No fdatasync: an acknowledged message can be lost on power failure. Benchmarks only.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub durability: Durability,
    /// Log bytes appended to a partition before its index snapshot is rewritten; bounds
    /// how much log a restart after a crash must replay.
    pub checkpoint_bytes: Size,
    /// Free space kept on the data directory's filesystem: new mail is refused (as a
    /// temporary failure) below it, so expunges and housekeeping can still run. A
    /// size, a percentage of the filesystem ("5%"), or "auto" (1 GiB or 5%, the
    /// smaller).
    pub reserve_free_bytes: Size,
    /// Incoming messages larger than this are written to a spool file as they arrive
    /// instead of being held in memory.
    pub spool_threshold_bytes: Size,
    /// A running server compacts a partition once garbage (expunged mail, deleted
    /// mailboxes and accounts) is this share of its log (0 = only on request)…
    pub compaction_garbage_ratio: f64,
    /// …and at least this much.
    pub compaction_min_garbage_bytes: Size,
    /// Message bytes a compaction copies per second at most.
    pub compaction_bytes_per_sec: Size,
    /// Seconds between checks (and between looks for `shardmail store compact`).
    pub compaction_check_secs: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            durability: Durability::Group,
            checkpoint_bytes: Size::Bytes(256 << 20),
            reserve_free_bytes: Size::Text("auto".into()),
            spool_threshold_bytes: Size::Bytes(256 * 1024),
            compaction_garbage_ratio: 0.3,
            compaction_min_garbage_bytes: Size::Bytes(64 << 20),
            compaction_bytes_per_sec: Size::Bytes(64 << 20),
            compaction_check_secs: 60,
        }
    }
}

/// A byte size: an integer, or a string with a unit (`"50MiB"`, `"512KiB"`, `"1GB"`).
#[derive(Debug, Clone)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self, key: &str) -> Result<usize, ConfigError> {
        let bad = || ConfigError {
            key: key.to_string(),
            reason: "expected a byte count such as 52428800, \"50MiB\" or \"512KiB\"".into(),
        };
        let n = match self {
            Size::Bytes(n) => *n,
            Size::Text(s) => {
                let s = s.trim();
                let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                let (digits, unit) = s.split_at(split);
                let n: u64 = digits.parse().map_err(|_| bad())?;
                let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                    "" | "b" => 1,
                    "k" | "kib" => 1 << 10,
                    "kb" => 1000,
                    "m" | "mib" => 1 << 20,
                    "mb" => 1_000_000,
                    "g" | "gib" => 1 << 30,
                    "gb" => 1_000_000_000,
                    _ => return Err(bad()),
                };
                n.checked_mul(mult).ok_or_else(bad)?
            }
        };
        usize::try_from(n).map_err(|_| bad())
    }
}

/// DNS resolution for email authentication (and, later, the outbound queue).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// `ip:port` of resolvers; empty = the system's /etc/resolv.conf.
    pub servers: Vec<String>,
    /// Per-query timeout: seconds as an integer, or a string such as "500ms" or "5s".
    pub timeout: Duration,
    /// Entries per record type in the shared DNS cache.
    pub cache_entries: usize,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            servers: Vec::new(),
            timeout: Duration::Secs(5),
            cache_entries: 50_000,
        }
    }
}

/// A duration: integer seconds, or a string with `ms`/`s`/`m` units.
#[derive(Debug, Clone)]
pub enum Duration {
    Secs(u64),
    Text(String),
}

impl Duration {
    pub fn value(&self, key: &str) -> Result<std::time::Duration, ConfigError> {
        let bad = || ConfigError {
            key: key.to_string(),
            reason: "expected a duration such as 5, \"5s\", \"500ms\", \"1m\" or \"1h\"".into(),
        };
        match self {
            Duration::Secs(n) => Ok(std::time::Duration::from_secs(*n)),
            Duration::Text(s) => {
                let s = s.trim();
                let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                let (digits, unit) = s.split_at(split);
                let n: u64 = digits.parse().map_err(|_| bad())?;
                match unit.trim() {
                    "" | "s" => Ok(std::time::Duration::from_secs(n)),
                    "ms" => Ok(std::time::Duration::from_millis(n)),
                    "m" => Ok(std::time::Duration::from_secs(n * 60)),
                    "h" => Ok(std::time::Duration::from_secs(n * 3600)),
                    "d" => Ok(std::time::Duration::from_secs(n * 86_400)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// The four policy keys, as in `[auth]` and each `[auth.domains."…"]`.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub spf_fail: Option<crate::auth::policy::SpfFailAction>,
    pub dmarc_reject: Option<crate::auth::policy::DmarcAction>,
    pub dmarc_quarantine: Option<crate::auth::policy::DmarcAction>,
    pub temperror: Option<crate::auth::policy::TempErrorAction>,
}

/// SPF/DKIM/ARC/DMARC checks on `listen.smtp`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub enabled: bool,
    /// Clients in these networks are not checked (loopback by default, like Postfix's
    /// mynetworks for local submission tools). Relaying is never granted by this.
    pub exempt_networks: Vec<String>,
    /// Checks in flight across all shards before the MX answers 451 4.3.2.
    pub queue_depth_max: usize,
    /// Authenticated users may only send as their own address or its aliases.
    pub sender_login_match: bool,
    /// What happens when a submitted message's From: header names an address the
    /// login does not own: "refuse" (550 5.7.1), "unsigned" (sent without our DKIM
    /// signature) or "off" (signed anyway: only for single-tenant servers).
    pub from_header_match: String,
    /// Extra domains a login may use in From: (its own address and aliases always
    /// count): `"alice@example.com" = ["example.org"]`.
    pub from_header_domains: std::collections::BTreeMap<String, Vec<String>>,
    pub spf_fail: crate::auth::policy::SpfFailAction,
    pub dmarc_reject: crate::auth::policy::DmarcAction,
    pub dmarc_quarantine: crate::auth::policy::DmarcAction,
    pub temperror: crate::auth::policy::TempErrorAction,
    /// Per recipient domain overrides of the four policy keys.
    pub domains: std::collections::BTreeMap<String, RawPolicy>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            enabled: true,
            exempt_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            queue_depth_max: 10_000,
            sender_login_match: true,
            from_header_match: "refuse".into(),
            from_header_domains: Default::default(),
            spf_fail: crate::auth::policy::Policy::default().spf_fail,
            dmarc_reject: crate::auth::policy::Policy::default().dmarc_reject,
            dmarc_quarantine: crate::auth::policy::Policy::default().dmarc_quarantine,
            temperror: crate::auth::policy::Policy::default().temperror,
            domains: Default::default(),
        }
    }
}

/// The outbound queue (DESIGN.md §6).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    /// First retry after a temporary failure; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Give up (and bounce) after this long in the queue.
    pub max_age: Duration,
    /// Send a "delayed" notice once a message has waited this long; 0 = never.
    pub delay_notice: Duration,
    /// TCP port of remote MX hosts (25; tests point it elsewhere).
    pub remote_port: u16,
    /// Outbound SMTP connections per shard, and per destination host.
    pub connections_max: usize,
    pub connections_per_destination_max: usize,
    /// Send everything through this smarthost (`host:port`) instead of MX routing.
    pub relay_host: Option<String>,
    pub relay_username: Option<String>,
    pub relay_password: Option<String>,
    /// TLS to the relay: "required" (default; AUTH only over TLS) or "none".
    pub relay_tls: String,
    /// Per-domain routes that bypass MX lookup: `"example.com" = "10.1.2.3:25"`.
    pub transports: std::collections::BTreeMap<String, String>,
    /// Domains whose servers must offer STARTTLS with a certificate valid for the MX
    /// host name (web PKI); otherwise TLS is opportunistic and unverified.
    pub tls_required: Vec<String>,
    /// Extra trust anchors (PEM) for verified outbound TLS, beside the web PKI roots:
    /// a private relay's CA.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            retry_min: Duration::Secs(300),     // Postfix minimal_backoff_time
            retry_max: Duration::Secs(14400),   // Postfix maximal_backoff_time is 4000 s
            max_age: Duration::Secs(5 * 86400), // Postfix maximal_queue_lifetime
            delay_notice: Duration::Secs(4 * 3600),
            remote_port: 25,
            connections_max: 100,
            connections_per_destination_max: 10,
            relay_host: None,
            relay_username: None,
            relay_password: None,
            relay_tls: "required".into(),
            transports: Default::default(),
            tls_required: Vec::new(),
            tls_ca_file: None,
        }
    }
}

/// Deserializes a number or a string into `number` / `text`, and anything else into an
/// error that says what was expected (`expecting`) — not serde's "did not match any
/// variant of untagged enum".
macro_rules! number_or_text {
    ($ty:ident, $number:ident, $text:ident, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        Ok($ty::$number(v))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v)
                            .map($ty::$number)
                            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        Ok($ty::$text(v.to_string()))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $ty::$number(n) => s.serialize_u64(*n),
                    $ty::$text(t) => s.serialize_str(t),
                }
            }
        }
    };
}

number_or_text!(
    Size,
    Bytes,
    Text,
    "a byte count such as 52428800, \"50MiB\" or \"512KiB\""
);
number_or_text!(
    Duration,
    Secs,
    Text,
    "a duration such as 5, \"5s\" or \"500ms\""
);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OneOrMany, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address such as \"127.0.0.1:25\", or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(OneOrMany::Many(all))
            }
        }
        d.deserialize_any(V)
    }
}
