//! `shardmail user …`: accounts, their passwords and app passwords, quotas and
//! sender lists, edited in `users.json` under its lock ([`UserDb::update`]). A
//! running server picks a change up within a second. Prints for the operator;
//! never talks to a running server.

use std::path::Path;

use clap::Subcommand;
use shardmail::config::Config;
use shardmail::users::{self, UserDb};

use crate::{now_secs, read_password, served_locally};

#[derive(Subcommand)]
pub enum UserCmd {
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
    /// App passwords: a random secret per device or program, limited to some
    /// protocols, revoked one by one; checked in microseconds (no argon2).
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCmd),
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
pub enum AppPasswordCmd {
    /// Make one and print its secret (shown this once only).
    Add {
        email: String,
        /// What it is for ("phone", "laptop-mbsync"): 1-32 letters, digits, . _ -
        #[arg(long)]
        label: String,
        /// Protocols it may log in to: imap, pop3, smtp (comma-separated or
        /// repeated; default all).
        #[arg(long, value_name = "PROTOCOLS")]
        scope: Vec<String>,
    },
    /// List an account's app passwords (labels, scopes, creation dates).
    List { email: String },
    /// Revoke one by its label (applies to a running server within a second).
    Revoke {
        email: String,
        #[arg(long)]
        label: String,
    },
}

/// An account's address as `users.json` keys it, or the error to print.
pub fn address(email: &str) -> Result<String, String> {
    users::normalize(email).ok_or_else(|| "expected an address like user@example.org".to_string())
}

/// The account `email` in `db` to edit, or the error to print.
fn account<'d>(db: &'d mut UserDb, email: &str) -> Result<&'d mut users::User, String> {
    db.users.get_mut(email).ok_or_else(|| no_user(email))
}

fn no_user(email: &str) -> String {
    format!("no user {email} (see `shardmail user list`)")
}

pub fn user(cmd: UserCmd, config: &Config, data: &Path) -> Result<(), String> {
    match cmd {
        UserCmd::Add {
            email,
            password_stdin,
        } => {
            let email = address(&email)?;
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
            let (hash, scram) = users::password_secrets(&read_password(password_stdin)?)?;
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
                        scram: Some(scram),
                        created,
                        quota: users::Quota::default(),
                        senders: users::SenderLists::default(),
                        app_passwords: Vec::new(),
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
            let email = address(&email)?;
            UserDb::update(data, |db| {
                db.users.remove(&email).ok_or_else(|| no_user(&email))?;
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
            let email = address(&email)?;
            let (hash, scram) = users::password_secrets(&read_password(password_stdin)?)?;
            UserDb::update(data, |db| {
                let u = account(db, &email)?;
                u.password = hash;
                u.scram = Some(scram);
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
        UserCmd::AppPassword(cmd) => app_password(cmd, data),
        UserCmd::Quota {
            email,
            storage,
            messages,
        } => {
            let email = address(&email)?;
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
                let u = account(db, &email)?;
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
    let email = address(email)?;
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
        let lists = &mut account(db, &email)?.senders;
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

/// `shardmail user app-password …`.
fn app_password(cmd: AppPasswordCmd, data: &Path) -> Result<(), String> {
    match cmd {
        AppPasswordCmd::Add {
            email,
            label,
            scope,
        } => {
            let email = address(&email)?;
            let (entry, secret) = users::AppPassword::generate(&label, &scope, now_secs())?;
            let scopes = entry.scopes.join(",");
            UserDb::update(data, |db| {
                let list = &mut account(db, &email)?.app_passwords;
                if list.iter().any(|a| a.label == entry.label) {
                    return Err(format!(
                        "{email} already has an app password labelled {label:?} \
                         (revoke it first, or pick another label)"
                    ));
                }
                if list.len() >= users::app_password::APP_PASSWORDS_MAX {
                    return Err(format!(
                        "{email} has {} app passwords, the most allowed: revoke one first",
                        list.len()
                    ));
                }
                list.push(entry);
                Ok(())
            })?;
            println!("app password {label:?} for {email} ({scopes}):");
            println!("{secret}");
            println!("(shown once: it cannot be recovered, only revoked)");
            Ok(())
        }
        AppPasswordCmd::List { email } => {
            let email = address(&email)?;
            let db = UserDb::load(data).map_err(|e| e.to_string())?;
            let user = db.users.get(&email).ok_or_else(|| no_user(&email))?;
            if user.app_passwords.is_empty() {
                println!("{email} has no app passwords");
            }
            for a in &user.app_passwords {
                println!("{}\t{}\tcreated {}", a.label, a.scopes.join(","), {
                    let (y, m, d) = shardmail::proto::civil_from_days(a.created.div_euclid(86_400));
                    format!("{y:04}-{m:02}-{d:02}")
                });
            }
            Ok(())
        }
        AppPasswordCmd::Revoke { email, label } => {
            let email = address(&email)?;
            UserDb::update(data, |db| {
                let list = &mut account(db, &email)?.app_passwords;
                let before = list.len();
                list.retain(|a| a.label != label);
                if list.len() == before {
                    return Err(format!("{email} has no app password labelled {label:?}"));
                }
                Ok(())
            })?;
            println!("revoked app password {label:?} of {email}");
            Ok(())
        }
    }
}
