//! `shardmail export EMAIL --out DIR`: an account's mailboxes as Maildir.
//!
//! Reads the partition read-only (no recovery, no truncation), so it works with the
//! server stopped and is safe beside a running one (the log is append-only and every
//! record is checksummed; the export is the durable state at the moment it reads).
//! One Maildir folder per mailbox (`INBOX` is `DIR/INBOX`), message bytes exactly as
//! stored, flags in the file names (`:2,` + `DFRST`), INTERNALDATE as the file's
//! modification time. A mailbox whose stored name
//! could leave `DIR` (`..`, absolute, control characters) is refused, never written.

use std::path::Path;

use crate::store::{self, flags, partition};
use crate::users::UserDb;

/// Maildir info suffix for IMAP flags (letters in ASCII order, as Maildir requires).
pub fn maildir_flags(f: u32) -> String {
    let mut s = String::from(":2,");
    for (bit, letter) in [
        (flags::DRAFT, 'D'),
        (flags::FLAGGED, 'F'),
        (flags::ANSWERED, 'R'),
        (flags::SEEN, 'S'),
        (flags::DELETED, 'T'),
    ] {
        if f & bit != 0 {
            s.push(letter);
        }
    }
    s
}

/// Summary of an export, for the CLI's last line.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub mailboxes: usize,
    pub messages: usize,
    pub bytes: u64,
    /// Stored mailbox names that are not safe as a path below `--out` (`..`, an
    /// absolute name, control characters: stored before names were validated, or a
    /// damaged index). They are not exported.
    pub refused: Vec<String>,
}

/// Exports `email`'s mailboxes into `out` (created if needed).
pub fn export(data_dir: &Path, email: &str, out: &Path) -> Result<ExportReport, String> {
    let db = UserDb::load(data_dir).map_err(|e| e.to_string())?;
    let user = db.user(email).ok_or_else(|| {
        format!(
            "no user {email} in {} (see `shardmail user list`)",
            UserDb::path(data_dir).display()
        )
    })?;
    let meta = store::meta(data_dir).map_err(|e| format!("{e} (has the server ever run here?)"))?;
    let part = store::partition_of(user.id, meta.partitions);
    let dir = store::partition_dir(data_dir, part);
    let mut report = ExportReport::default();
    let loaded = if dir.join("messages.log").exists() {
        Some(partition::load(&dir).map_err(|e| e.to_string())?)
    } else {
        None
    };
    // Messages are read through a map of the log, not a copy of it: a partition's log
    // can be far larger than memory.
    let log = match &loaded {
        Some(_) => Some(partition::map_log(&dir).map_err(|e| e.to_string())?),
        None => None,
    };
    let log: &[u8] = log.as_deref().unwrap_or(&[]);
    let account = loaded.as_ref().and_then(|l| l.index.accounts.get(&user.id));
    let names: Vec<String> = match account {
        Some(a) => a.mailboxes.iter().map(|m| m.name.clone()).collect(),
        None => store::index::DEFAULT_MAILBOXES
            .iter()
            .map(|(n, _)| n.to_string())
            .collect(),
    };
    for name in names {
        // Whatever the store holds, nothing is written outside `out`.
        if !crate::proto::imap::names::is_safe_relative_path(&name) {
            report.refused.push(name);
            continue;
        }
        let folder = out.join(&name);
        if !folder.starts_with(out) {
            report.refused.push(name);
            continue;
        }
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(folder.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        }
        report.mailboxes += 1;
        let Some(mb) = account.and_then(|a| a.mailbox(&name)) else {
            continue;
        };
        for m in &mb.messages {
            let start = m.offset as usize;
            let bytes = log
                .get(start..start + m.len as usize)
                .ok_or_else(|| format!("message uid {} of {name} lies outside the log", m.uid))?;
            let file = folder.join("cur").join(format!(
                "{}.{}_{}.shardmail,S={}{}",
                m.internal_date,
                mb.uidvalidity,
                m.uid,
                m.len,
                maildir_flags(m.flags)
            ));
            std::fs::write(&file, bytes)
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            // INTERNALDATE as the file's time, as Dovecot reads it (and `import`).
            let when = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(m.internal_date.max(0) as u64);
            std::fs::File::options()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_modified(when))
                .map_err(|e| format!("cannot date {}: {e}", file.display()))?;
            report.messages += 1;
            report.bytes += u64::from(m.len);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_letters_sorted() {
        assert_eq!(maildir_flags(0), ":2,");
        assert_eq!(
            maildir_flags(flags::SEEN | flags::DRAFT | flags::ANSWERED),
            ":2,DRS"
        );
    }
}
