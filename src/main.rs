//! The `shardmail` command: parses arguments, loads the config, and hands off to the
//! library (`shard::serve`, `users`, `export`). Nothing else lives here.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shardmail::config::{Config, ConfigSource};
use shardmail::users::{self, UserDb};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shardmail",
    version,
    about = "A shard-per-core mail server (SMTP, IMAP, POP3)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (TOML); without it the embedded defaults are used.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Override any config key, e.g. --set limits.message_size_max=20MiB (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM/SIGINT.
    Serve,
    /// Make the running server re-read its configuration, users, DKIM keys and TLS
    /// certificate (as SIGHUP does) and print the outcome.
    Reload,
    /// Print the effective configuration after defaults and overrides.
    CheckConfig,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage aliases and per-domain catch-alls.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Inspect and manage the outbound queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// DKIM signing keys for local domains.
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// Import mail into an account (server stopped): a Maildir / Maildir++ tree (what
    /// `export` writes, or Dovecot's and Courier's), an mbox file, or every mailbox of
    /// an account on another IMAP server (password on stdin; resumable).
    Import {
        email: String,
        #[arg(long, group = "source", required = true)]
        maildir: Option<PathBuf>,
        #[arg(long, group = "source")]
        mbox: Option<PathBuf>,
        /// `imaps://USER@HOST[:PORT]`.
        #[arg(long, group = "source", value_name = "URL")]
        imap: Option<String>,
        /// The mailbox an mbox goes into.
        #[arg(long, default_value = "INBOX", requires = "mbox")]
        mailbox: String,
        /// A PEM file of CA certificates the IMAP server's certificate may chain to
        /// (besides the web PKI roots).
        #[arg(long, requires = "imap")]
        ca: Option<PathBuf>,
    },
    /// The mailstore: per-partition usage and garbage, compaction.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Write an account's mailboxes as Maildir (works with the server stopped).
    Export {
        email: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account (prompts for the password unless --password-stdin).
    Add {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Delete an account (its stored mail is no longer reachable).
    Del { email: String },
    /// Change an account's password.
    Passwd {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show or change an account's own sender lists: mail from an allowed address or
    /// @domain goes to the inbox (no greylisting, no Junk); a blocked one is refused
    /// at RCPT. Applies to a running server within a second.
    Senders {
        email: String,
        /// An address (a@b.example) or domain (@b.example) to allow; repeatable.
        #[arg(long, value_name = "SENDER")]
        allow: Vec<String>,
        /// An address or domain to block; repeatable.
        #[arg(long, value_name = "SENDER")]
        block: Vec<String>,
        /// Take an address or domain off both lists; repeatable.
        #[arg(long, value_name = "SENDER")]
        remove: Vec<String>,
    },
    /// Set an account's quota: a size ("2GiB") or count, "default" (quota.*_default)
    /// or "unlimited". Applies to a running server within a second.
    Quota {
        email: String,
        #[arg(long, value_name = "SIZE|default|unlimited")]
        storage: Option<String>,
        #[arg(long, value_name = "N|default|unlimited")]
        messages: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Per partition: log size, live bytes, garbage (expunged mail, deleted mailboxes
    /// and accounts), messages (safe while the server runs).
    Stats {
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Rewrite partitions without their garbage (server stopped; shows progress).
    Compact {
        #[arg(long)]
        partition: Option<u32>,
        /// Only partitions with at least this share of garbage (0.0-1.0); default:
        /// every partition with any.
        #[arg(long, default_value_t = 0.0)]
        min_garbage_ratio: f64,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// One line per queued message: id, age, size, sender, pending recipients, next try.
    List,
    /// A message's envelope, per-recipient state and headers.
    Show { id: String },
    /// Retry every queued message now (a running server picks it up within a second).
    Flush,
    /// Remove a message from the queue without delivering it (no bounce).
    Delete { id: String },
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Create a signing key for DOMAIN and print the DNS record to publish.
    Generate {
        domain: String,
        /// Selector (the DNS label before `._domainkey`); default: s + year and month.
        #[arg(long)]
        selector: Option<String>,
        /// rsa (2048-bit, understood by every verifier) or ed25519 (RFC 8463).
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: shardmail::auth::dkim::Algorithm,
        /// Replace an existing key (publish the new record first when rotating).
        #[arg(long)]
        force: bool,
    },
    /// Print the DNS record of DOMAIN's key again.
    Show {
        domain: String,
        /// Print only the TXT value (for scripts).
        #[arg(long)]
        value: bool,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Route ALIAS (`name@domain`, or `@domain` for a catch-all) to the account TARGET.
    Add { alias: String, target: String },
    /// Remove an alias or catch-all.
    Del { alias: String },
    /// List aliases.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardmail: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let c = &cli.common;
    let source = ConfigSource {
        file: c.config.clone(),
        overrides: c.overrides.clone(),
        data_dir: c.data_dir.clone(),
    };
    let reloading = matches!(cli.command, Command::Reload);
    let loaded = source.load().map_err(|e| {
        if reloading {
            format!("not reloading, the running server keeps its configuration: {e}")
        } else {
            e.to_string()
        }
    })?;
    shardmail::logging::init(&loaded.config.log);
    let config = loaded.config.clone();
    let data = config.data_dir.clone();
    match cli.command {
        Command::Serve => shardmail::shard::serve(source, loaded),
        Command::Reload => shardmail::shard::reload::request(&data),
        Command::CheckConfig => {
            let text = loaded.effective_toml().map_err(|e| e.to_string())?;
            println!("# The effective configuration (shardmail check-config): defaults, the");
            println!("# --config file and --set overrides. `shardmail serve --config` accepts it;");
            println!(
                "# secrets are shown as \"{}\".",
                shardmail::config::SECRET_PLACEHOLDER
            );
            println!("{}", text.trim_end());
            Ok(())
        }
        Command::User(cmd) => user(cmd, &config, &data),
        Command::Alias(cmd) => alias(cmd, &data),
        Command::Dkim(cmd) => dkim(cmd, &config, &data),
        Command::Queue(cmd) => queue(cmd, &data),
        Command::Import {
            email,
            maildir,
            mbox,
            imap,
            mailbox,
            ca,
        } => import(&config, &email, maildir, mbox, imap, mailbox, ca),
        Command::Store(StoreCmd::Stats { partition }) => {
            shardmail::store_admin::stats(&data, partition)
        }
        Command::Store(StoreCmd::Compact {
            partition,
            min_garbage_ratio,
        }) => shardmail::store_admin::compact_all(&data, partition, min_garbage_ratio),
        Command::Export { email, out } => {
            let r = shardmail::export::export(&data, &email, &out)?;
            println!(
                "exported {} messages ({} bytes) in {} mailboxes to {}",
                r.messages,
                r.bytes,
                r.mailboxes,
                out.display()
            );
            if r.refused.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "not exported: {} mailbox(es) whose names are not safe as paths: {:?} \
                     (rename them over IMAP, then export again)",
                    r.refused.len(),
                    r.refused
                ))
            }
        }
    }
}

/// Whether `domain` is local for this command's configuration or for the one the
/// server that last ran on `data` recorded (`running.toml`): a domain given to
/// `serve` with `--set` is not wrongly reported missing to `user add`.
fn served_locally(config: &Config, data: &Path, domain: &str) -> bool {
    if config.is_local_domain(domain) {
        return true;
    }
    let running = data.join(shardmail::shard::preflight::RUNNING_CONFIG);
    running.exists()
        && Config::load(Some(&running), &[], None)
            .is_ok_and(|served| served.is_local_domain(domain))
}

fn user(cmd: UserCmd, config: &Config, data: &Path) -> Result<(), String> {
    match cmd {
        UserCmd::Add {
            email,
            password_stdin,
        } => {
            let email =
                users::normalize(&email).ok_or("expected an address like user@example.org")?;
            let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            if !served_locally(config, data, domain) {
                eprintln!(
                    "warning: {domain} is not in domains.local {:?} (nor in {}); this server \
                     will not accept mail for {email} until it is",
                    config.local_domains,
                    data.join(shardmail::shard::preflight::RUNNING_CONFIG)
                        .display()
                );
            }
            let hash = users::hash_password(&read_password(password_stdin)?)?;
            UserDb::update(data, |db| {
                if db.users.contains_key(&email) {
                    return Err(format!("{email} already exists (use `user passwd`)"));
                }
                let created = now_secs();
                db.users.insert(
                    email.clone(),
                    users::User {
                        id: users::new_account_id(),
                        password: hash,
                        created,
                        quota: users::Quota::default(),
                        senders: users::SenderLists::default(),
                    },
                );
                Ok(())
            })?;
            println!("added {email}");
            Ok(())
        }
        UserCmd::List => {
            let db = UserDb::load(data).map_err(|e| e.to_string())?;
            let shown = |limit: Option<u64>, default: Option<u64>, size: bool| match limit {
                Some(u64::MAX) => "unlimited".to_string(),
                Some(n) if size => shardmail::store_admin::human(n),
                Some(n) => n.to_string(),
                None => match default {
                    Some(n) if size => format!("{} (default)", shardmail::store_admin::human(n)),
                    Some(n) => format!("{n} (default)"),
                    None => "unlimited (default)".to_string(),
                },
            };
            let default = config.quota.default;
            for (email, u) in &db.users {
                println!(
                    "{email}\t{:016x}\tstorage {}\tmessages {}",
                    u.id,
                    shown(u.quota.storage, default.storage, true),
                    shown(u.quota.messages, default.messages, false)
                );
            }
            Ok(())
        }
        UserCmd::Del { email } => {
            let email =
                users::normalize(&email).ok_or("expected an address like user@example.org")?;
            UserDb::update(data, |db| {
                db.users
                    .remove(&email)
                    .ok_or_else(|| format!("no user {email}"))?;
                db.aliases.retain(|_, target| target != &email);
                Ok(())
            })?;
            println!("deleted {email}");
            Ok(())
        }
        UserCmd::Passwd {
            email,
            password_stdin,
        } => {
            let email =
                users::normalize(&email).ok_or("expected an address like user@example.org")?;
            let hash = users::hash_password(&read_password(password_stdin)?)?;
            UserDb::update(data, |db| {
                let u = db
                    .users
                    .get_mut(&email)
                    .ok_or_else(|| format!("no user {email}"))?;
                u.password = hash;
                Ok(())
            })?;
            println!("password changed for {email}");
            Ok(())
        }
        UserCmd::Senders {
            email,
            allow,
            block,
            remove,
        } => senders(data, &email, &allow, &block, &remove),
        UserCmd::Quota {
            email,
            storage,
            messages,
        } => {
            let email =
                users::normalize(&email).ok_or("expected an address like user@example.org")?;
            if storage.is_none() && messages.is_none() {
                return Err("give --storage and/or --messages (see `user quota --help`)".into());
            }
            let storage = storage
                .as_deref()
                .map(|s| quota_limit(s, true))
                .transpose()?;
            let messages = messages
                .as_deref()
                .map(|s| quota_limit(s, false))
                .transpose()?;
            let quota = UserDb::update(data, |db| {
                let u = db
                    .users
                    .get_mut(&email)
                    .ok_or_else(|| format!("no user {email}"))?;
                if let Some(limit) = storage {
                    u.quota.storage = limit;
                }
                if let Some(limit) = messages {
                    u.quota.messages = limit;
                }
                Ok(u.quota)
            })?;
            let show = |l: Option<u64>| l.map_or("default".to_string(), |n| n.to_string());
            println!(
                "quota of {email}: storage {} bytes, messages {}",
                show(quota.storage),
                show(quota.messages)
            );
            Ok(())
        }
    }
}

/// `shardmail user senders`: edits, then prints, the account's sender lists.
fn senders(
    data: &Path,
    email: &str,
    allow: &[String],
    block: &[String],
    remove: &[String],
) -> Result<(), String> {
    let email = users::normalize(email).ok_or("expected an address like user@example.org")?;
    let entries = |list: &[String]| -> Result<Vec<String>, String> {
        list.iter()
            .map(|e| {
                users::sender_entry(e).ok_or_else(|| {
                    format!("{e:?}: expected an address (a@b.example) or a domain (@b.example)")
                })
            })
            .collect()
    };
    let (allow, block, remove) = (entries(allow)?, entries(block)?, entries(remove)?);
    let edit = |db: &mut UserDb| {
        let lists = &mut db
            .users
            .get_mut(&email)
            .ok_or_else(|| format!("no user {email}"))?
            .senders;
        // An entry is on one list at most: the latest command decides.
        for entry in allow.iter().chain(&block).chain(&remove) {
            lists.allow.retain(|e| e != entry);
            lists.block.retain(|e| e != entry);
        }
        lists.allow.extend(allow.iter().cloned());
        lists.block.extend(block.iter().cloned());
        if lists.allow.len() > users::SENDER_LIST_MAX || lists.block.len() > users::SENDER_LIST_MAX
        {
            return Err(format!(
                "at most {} entries per list (use domains rather than addresses)",
                users::SENDER_LIST_MAX
            ));
        }
        Ok(lists.clone())
    };
    let lists = if allow.is_empty() && block.is_empty() && remove.is_empty() {
        // Only showing: no rewrite of users.json (which running servers would reload).
        let mut db = UserDb::load(data).map_err(|e| e.to_string())?;
        edit(&mut db)?
    } else {
        UserDb::update(data, edit)?
    };
    for entry in &lists.allow {
        println!("allow {entry}");
    }
    for entry in &lists.block {
        println!("block {entry}");
    }
    if lists.allow.is_empty() && lists.block.is_empty() {
        println!("{email} has no sender lists");
    }
    Ok(())
}

fn import(
    config: &Config,
    email: &str,
    maildir: Option<PathBuf>,
    mbox: Option<PathBuf>,
    imap: Option<String>,
    mailbox: String,
    ca: Option<PathBuf>,
) -> Result<(), String> {
    use shardmail::import::{self, imap::Imap, Feed, Maildir, Mbox};
    use shardmail::store_admin::human;
    let email = users::normalize(email).ok_or("expected an address like user@example.org")?;
    let mut feed: Box<dyn Feed> = match (maildir, mbox, imap) {
        (Some(dir), _, _) => Box::new(Maildir::open(&dir)?),
        (None, Some(file), _) => Box::new(Mbox::open(
            &file,
            &shardmail::proto::imap::names::normalize(&mailbox),
        )?),
        (None, None, Some(url)) => {
            let password = read_password(false)?;
            eprintln!("planning the import from {url} …");
            Box::new(Imap::open(
                &url,
                &password,
                ca.as_deref(),
                &config.data_dir,
                config.limits.message_size_max,
            )?)
        }
        _ => return Err("give --maildir DIR, --mbox FILE or --imap URL".into()),
    };
    let started = std::time::Instant::now();
    let mut show = |r: &import::ImportReport| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = r.bytes as f64 / secs;
        let eta = if rate > 0.0 {
            r.total_bytes.saturating_sub(r.bytes) as f64 / rate
        } else {
            0.0
        };
        eprint!(
            "\r{}/{} messages, {} of {}, {:.1} MB/s, ETA {eta:.0} s   ",
            r.messages,
            r.total_messages,
            human(r.bytes),
            human(r.total_bytes),
            rate / 1e6
        );
    };
    let r = import::import(config, &email, feed.as_mut(), &mut show)?;
    eprintln!();
    println!(
        "imported {} messages ({}) into {email}, {} new mailboxes, in {:.1} s{}",
        r.messages,
        human(r.bytes),
        r.mailboxes,
        started.elapsed().as_secs_f64(),
        [
            (r.skipped_too_big > 0).then(|| {
                format!(
                    "; {} skipped: larger than limits.message_size_max",
                    r.skipped_too_big
                )
            }),
            (r.already_present > 0).then(|| {
                format!(
                    "; {} already stored by the interrupted run",
                    r.already_present
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect::<String>()
    );
    Ok(())
}

/// A `user quota` limit: `None` = the configured default, `u64::MAX` = no limit.
fn quota_limit(text: &str, size: bool) -> Result<Option<u64>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "default" => Ok(None),
        "unlimited" | "none" => Ok(Some(u64::MAX)),
        _ if size => shardmail::config::raw::Size::Text(text.to_string())
            .bytes("--storage")
            .map(|n| Some(n as u64))
            .map_err(|e| format!("--storage: {}", e.reason)),
        _ => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| "--messages: expected a count, \"default\" or \"unlimited\"".into()),
    }
}

fn alias(cmd: AliasCmd, data: &Path) -> Result<(), String> {
    match cmd {
        AliasCmd::Add { alias, target } => {
            let alias = alias.trim().to_lowercase();
            let valid =
                alias.starts_with('@') && alias.len() > 1 || users::normalize(&alias).is_some();
            if !valid {
                return Err("alias must be name@domain, or @domain for a catch-all".into());
            }
            let target = users::normalize(&target).ok_or("target must be an account address")?;
            UserDb::update(data, |db| {
                if !db.users.contains_key(&target) {
                    return Err(format!("no account {target} (add it with `user add`)"));
                }
                db.aliases.insert(alias.clone(), target.clone());
                Ok(())
            })?;
            println!("{alias} -> {target}");
            Ok(())
        }
        AliasCmd::Del { alias } => {
            let alias = alias.trim().to_lowercase();
            UserDb::update(data, |db| {
                db.aliases
                    .remove(&alias)
                    .map(|_| ())
                    .ok_or_else(|| format!("no alias {alias}"))
            })?;
            println!("removed {alias}");
            Ok(())
        }
        AliasCmd::List => {
            let db = UserDb::load(data).map_err(|e| e.to_string())?;
            for (alias, target) in &db.aliases {
                println!("{alias}\t{target}");
            }
            Ok(())
        }
    }
}

fn queue(cmd: QueueCmd, data: &Path) -> Result<(), String> {
    use shardmail::queue;
    match cmd {
        QueueCmd::List => {
            let entries = queue::load_all(data, false)?;
            let now = now_secs();
            for e in &entries {
                let pending: Vec<&str> = e.pending().map(|r| r.address.as_str()).collect();
                let next = (e.next_attempt - now).max(0);
                let error = e
                    .pending()
                    .find_map(|r| r.last_error.as_deref())
                    .unwrap_or("");
                println!(
                    "{}  {:>6}s  {:>8}B  <{}>  {}  next in {next}s  {error}",
                    e.id,
                    now - e.created,
                    e.size,
                    e.mail_from,
                    pending.join(",")
                );
            }
            eprintln!("{} message(s) queued", entries.len());
            Ok(())
        }
        QueueCmd::Show { id } => {
            let entry = queue::load(data, &id)?
                .ok_or_else(|| format!("no queued message {id} (see `shardmail queue list`)"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?
            );
            let message = queue::read_message(data, &id)?;
            let end = message
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(message.len(), |i| i + 2);
            println!("\n{}", String::from_utf8_lossy(&message[..end]));
            Ok(())
        }
        QueueCmd::Flush => {
            queue::request_flush(data)?;
            println!("flush requested");
            Ok(())
        }
        QueueCmd::Delete { id } => {
            if queue::remove(data, &id)? {
                println!("deleted {id}");
                Ok(())
            } else {
                Err(format!("no queued message {id}"))
            }
        }
    }
}

fn dkim(cmd: DkimCmd, config: &Config, data: &Path) -> Result<(), String> {
    use shardmail::auth::dkim;
    match cmd {
        DkimCmd::Generate {
            domain,
            selector,
            algorithm,
            force,
        } => {
            if !served_locally(config, data, &domain) {
                eprintln!(
                    "warning: {domain} is not in domains.local (nor in {}); mail from it will \
                     not be signed",
                    data.join(shardmail::shard::preflight::RUNNING_CONFIG)
                        .display()
                );
            }
            let selector = selector.unwrap_or_else(default_selector);
            let key = dkim::generate(data, &domain, &selector, algorithm, force)?;
            eprintln!(
                "created the key for {}; publish this record, then restart shardmail:",
                key.domain
            );
            println!("{}", key.zone_record());
            Ok(())
        }
        DkimCmd::Show { domain, value } => {
            let key = dkim::load(data, &domain)?.ok_or_else(|| {
                format!(
                    "no DKIM key for {domain} (create one with `shardmail dkim generate {domain}`)"
                )
            })?;
            if value {
                println!("{}", key.txt_value());
            } else {
                println!("{}", key.zone_record());
            }
            Ok(())
        }
    }
}

/// `s` + YYYYMM: a new selector each month makes rotation a matter of publishing.
fn default_selector() -> String {
    let days = now_secs().div_euclid(86_400);
    let (y, m, _) = shardmail::proto::civil_from_days(days);
    format!("s{y}{m:02}")
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    let stdin = std::io::stdin();
    if !from_stdin && stdin.is_terminal() {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
