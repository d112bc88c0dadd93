//! Accounts, aliases and catch-alls: `users.json` in the data directory.
//!
//! The CLI (`shardmail user …`, `shardmail alias …`) edits the file under an exclusive
//! `flock` and replaces it atomically; a running server notices the new mtime and
//! reloads it (each shard keeps its own copy). Passwords are argon2id PHC strings;
//! verification is CPU-heavy and must run off the reactor (`shard::passwords`);
//! app passwords ([`app_password`]) are cheap to check. Each
//! account has a random 64-bit id that keys its mail in the store, so deleting a user
//! and adding the same address again never resurrects old mail.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::proto::smtp::{Resolution, SenderVerdict};

pub mod app_password;
pub use app_password::AppPassword;

/// One account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: u64,
    /// argon2id PHC string.
    pub password: String,
    /// The SCRAM-SHA-256 verifier of the same password (derived when it is set; an
    /// account whose password predates it logs in with SCRAM after `user passwd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<crate::proto::sasl::scram::Verifier>,
    pub created: i64,
    /// Limits set for this account (`shardmail user quota`); a missing one is
    /// `quota.storage_default` / `quota.messages_default`.
    #[serde(default, skip_serializing_if = "Quota::is_unset")]
    pub quota: Quota,
    /// The account's own sender allow and block lists (`shardmail user senders`).
    #[serde(default, skip_serializing_if = "SenderLists::is_empty")]
    pub senders: SenderLists,
    /// Secrets for one device each (`shardmail user app-password`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_passwords: Vec<AppPassword>,
}

/// A user's senders to always accept into the inbox or always refuse: addresses
/// (`a@b.example`) and domains (`@b.example`), lowercase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SenderLists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
}

/// Entries per list: the lists are read on every RCPT and kept by every shard.
pub const SENDER_LIST_MAX: usize = 1000;

impl SenderLists {
    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.block.is_empty()
    }

    /// What the lists say about the envelope sender `sender`: an address entry
    /// decides before a domain entry, and block wins over allow at the same level.
    pub fn verdict(&self, sender: &str) -> SenderVerdict {
        let Some(sender) = normalize(sender) else {
            return SenderVerdict::Neutral; // the null sender, or no address
        };
        let domain = sender
            .rsplit_once('@')
            .map(|(_, d)| format!("@{d}"))
            .unwrap_or_default();
        for entry in [&sender, &domain] {
            if self.block.contains(entry) {
                return SenderVerdict::Block;
            }
            if self.allow.contains(entry) {
                return SenderVerdict::Allow;
            }
        }
        SenderVerdict::Neutral
    }
}

/// An entry for a sender list: `a@b.example` or a domain (`@b.example`,
/// `b.example`), lowercase; `None` if it is neither.
pub fn sender_entry(text: &str) -> Option<String> {
    let text = text.trim();
    let domain = text.strip_prefix('@').unwrap_or(text);
    if !text.starts_with('@') && text.contains('@') {
        return normalize(text);
    }
    let valid = !domain.is_empty()
        && domain.contains('.')
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    valid.then(|| format!("@{}", domain.to_ascii_lowercase()))
}

/// Storage and message limits of an account; `None` = no limit of that kind.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
}

impl Quota {
    fn is_unset(&self) -> bool {
        *self == Quota::default()
    }

    /// This account's limits over the configured defaults.
    pub fn over(self, default: Quota) -> Quota {
        Quota {
            storage: self.storage.or(default.storage),
            messages: self.messages.or(default.messages),
        }
    }

    /// Whether `usage` leaves no room for `more_bytes` more in `more_messages` more.
    pub fn is_exceeded_by(
        &self,
        usage: crate::store::index::Usage,
        more_bytes: u64,
        more_messages: u64,
    ) -> bool {
        self.storage
            .is_some_and(|max| usage.bytes.saturating_add(more_bytes) > max)
            || self
                .messages
                .is_some_and(|max| usage.messages.saturating_add(more_messages) > max)
    }
}

/// The whole user database.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UserDb {
    /// Keyed by normalised address (lowercase).
    pub users: BTreeMap<String, User>,
    /// `alias@domain` → `user@domain`; `@domain` is the domain's catch-all.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

/// Lowercases an address; `None` if it is not `local@domain`.
pub fn normalize(address: &str) -> Option<String> {
    let address = address.trim();
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || address.contains(char::is_whitespace) {
        return None;
    }
    Some(format!(
        "{}@{}",
        local.to_lowercase(),
        domain.to_ascii_lowercase()
    ))
}

impl UserDb {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("users.json")
    }

    /// Loads the database; a missing file is an empty database.
    pub fn load(data_dir: &Path) -> std::io::Result<UserDb> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                std::io::Error::other(format!("{}: not a valid users file: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserDb::default()),
            Err(e) => Err(e),
        }
    }

    /// Loads, lets `edit` change the database, and saves it, all under an exclusive lock.
    pub fn update<T>(
        data_dir: &Path,
        edit: impl FnOnce(&mut UserDb) -> Result<T, String>,
    ) -> Result<T, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let lock_path = data_dir.join("users.lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        flock(&lock, libc::LOCK_EX)
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        let mut db = UserDb::load(data_dir).map_err(|e| e.to_string())?;
        let out = edit(&mut db)?;
        let text = serde_json::to_string_pretty(&db).map_err(|e| e.to_string())?;
        let path = Self::path(data_dir);
        write_atomic(&path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(out)
    }

    /// Classifies a recipient. `is_local_domain` comes from `domains.local`.
    pub fn resolve(&self, address: &str, is_local_domain: impl Fn(&str) -> bool) -> Resolution {
        let Some(addr) = normalize(address) else {
            return Resolution::UnknownUser;
        };
        let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if let Some(user) = self.users.get(&addr) {
            return Resolution::Local {
                account: user.id,
                mailbox: addr,
            };
        }
        let target = self
            .aliases
            .get(&addr)
            .or_else(|| self.aliases.get(&format!("@{domain}")));
        if let Some(target) = target {
            if let Some(user) = self.users.get(target) {
                return Resolution::Local {
                    account: user.id,
                    mailbox: target.clone(),
                };
            }
        }
        if is_local_domain(domain) {
            Resolution::UnknownUser
        } else {
            Resolution::NotLocal
        }
    }

    /// What the account `mailbox` (canonical) says about mail from `sender`.
    pub fn sender_verdict(&self, mailbox: &str, sender: &str) -> SenderVerdict {
        self.users
            .get(mailbox)
            .map_or(SenderVerdict::Neutral, |u| u.senders.verdict(sender))
    }

    /// Whether `login` may send as `address`: its own address or an explicit alias of
    /// it (not a domain catch-all, which would let one user be everybody).
    pub fn owns(&self, login: &str, address: &str) -> bool {
        let (Some(login), Some(address)) = (normalize(login), normalize(address)) else {
            return false;
        };
        login == address || self.aliases.get(&address) == Some(&login)
    }

    /// The account named by `address` (no alias expansion: logins use real names).
    pub fn user(&self, address: &str) -> Option<&User> {
        self.users.get(&normalize(address)?)
    }
}

/// A hash with the cost of a real one (same parameters as [`hash_password`]), checked
/// when the user does not exist, so the reply time does not reveal which accounts exist.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hhcmRtYWlsZHVtbXk$2A4bxHvE6Ed0Nt1wTCgwLzXbTdxOQPLSp4XH1Sg1R3U";

/// What is stored for a new password: its argon2id hash and its SCRAM verifier.
pub fn password_secrets(
    password: &str,
) -> Result<(String, crate::proto::sasl::scram::Verifier), String> {
    Ok((
        hash_password(password)?,
        crate::proto::sasl::scram::Verifier::derive(password)?,
    ))
}

/// argon2id with the crate's defaults (19 MiB, 2 passes: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// Checks `password` against a PHC string. CPU-heavy: call off the reactor.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Writes a file via a temporary name, fsync and rename, then fsyncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `flock(2)` on an open file (released when the file is closed).
pub fn flock(file: &std::fs::File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A new random account id (never 0).
pub fn new_account_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_users_aliases_catchall() {
        let mut db = UserDb::default();
        db.users.insert(
            "bob@ex.org".into(),
            User {
                id: 7,
                password: String::new(),
                scram: None,
                created: 0,
                quota: Quota::default(),
                senders: SenderLists::default(),
                app_passwords: Vec::new(),
            },
        );
        db.aliases.insert("info@ex.org".into(), "bob@ex.org".into());
        let local = |d: &str| d == "ex.org" || d == "other.org";
        assert_eq!(
            db.resolve("Bob@EX.org", local),
            Resolution::Local {
                account: 7,
                mailbox: "bob@ex.org".into()
            }
        );
        assert!(matches!(
            db.resolve("info@ex.org", local),
            Resolution::Local { account: 7, .. }
        ));
        assert_eq!(db.resolve("nobody@ex.org", local), Resolution::UnknownUser);
        assert_eq!(db.resolve("x@remote.example", local), Resolution::NotLocal);
        db.aliases.insert("@other.org".into(), "bob@ex.org".into());
        assert!(matches!(
            db.resolve("any@other.org", local),
            Resolution::Local { .. }
        ));
    }

    #[test]
    fn sender_lists_address_before_domain_block_before_allow() {
        let lists = SenderLists {
            allow: vec!["@friends.example".into(), "boss@spam.example".into()],
            block: vec!["@spam.example".into(), "ex@friends.example".into()],
        };
        assert_eq!(lists.verdict("Pal@Friends.Example"), SenderVerdict::Allow);
        assert_eq!(lists.verdict("ex@friends.example"), SenderVerdict::Block);
        assert_eq!(lists.verdict("boss@spam.example"), SenderVerdict::Allow);
        assert_eq!(lists.verdict("x@spam.example"), SenderVerdict::Block);
        assert_eq!(lists.verdict("x@other.example"), SenderVerdict::Neutral);
        assert_eq!(lists.verdict(""), SenderVerdict::Neutral);
        assert_eq!(sender_entry("A@B.example").as_deref(), Some("a@b.example"));
        assert_eq!(sender_entry("@B.example").as_deref(), Some("@b.example"));
        assert_eq!(sender_entry("b.example").as_deref(), Some("@b.example"));
        assert_eq!(sender_entry("nodot"), None);
        assert_eq!(sender_entry("@"), None);
        assert_eq!(sender_entry("a b@c.example"), None);
    }

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("s3cret").expect("hash");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "s3cret"));
        // The dummy must be a well-formed hash with the real parameters, or unknown
        // users would be refused faster than known ones.
        let dummy = PasswordHash::new(DUMMY_HASH).expect("dummy parses");
        let real = PasswordHash::new(&h).expect("real parses");
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.algorithm, real.algorithm);
    }
}
