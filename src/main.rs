//! The `shardmail` command: parses arguments, loads the config, and hands off to the
//! library (`shard::serve`, `users`, `export`). Nothing else lives here.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shardmail::config::{Config, ConfigSource};
use shardmail::users::{self, UserDb};

mod cli {
    //! The binary's subcommands that are more than a call into the library.
    pub mod user;
}

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
    User(cli::user::UserCmd),
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
        Command::User(cmd) => cli::user::user(cmd, &config, &data),
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
    let email = cli::user::address(email)?;
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
