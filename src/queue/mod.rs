//! The outbound queue's durable spool (DESIGN.md §6): `DATA/queue/ID.msg` holds the
//! message bytes, `DATA/queue/ID.json` the envelope and per-recipient state.
//!
//! Enqueue writes and fsyncs the message, then writes the state to a temporary name,
//! fsyncs, renames and fsyncs the directory: only then is the client told `250`. A
//! state file always has its message; a message file without a state file is an
//! enqueue that never completed (never acknowledged) and is removed at start. State
//! changes replace the state file the same atomic way. Plain blocking file IO: shards
//! call it on glommio's blocking pool, the CLI directly. Retry timing lives here too
//! ([`backoff`]), as pure functions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::smtp::notify::{MessageDsn, RcptDsn};
use crate::users::write_atomic;

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    Pending,
    Delivered,
    /// Permanently failed (bounced, or about to be).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRcpt {
    pub address: String,
    pub state: RcptState,
    /// Last reply or error for this recipient.
    pub last_error: Option<String>,
    /// The server that gave it.
    pub remote_mta: Option<String>,
    /// The sender's NOTIFY and ORCPT (RFC 3461).
    #[serde(default, skip_serializing_if = "is_default")]
    pub dsn: RcptDsn,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One queued message's envelope and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: String,
    /// Envelope sender; empty for the null sender (DSNs), which never bounce.
    pub mail_from: String,
    pub recipients: Vec<QueueRcpt>,
    /// Seconds since the epoch.
    pub created: i64,
    pub next_attempt: i64,
    pub attempts: u32,
    pub size: u64,
    #[serde(default)]
    pub delay_notified: bool,
    /// The sender's RET and ENVID (RFC 3461).
    #[serde(default, skip_serializing_if = "is_default")]
    pub dsn: MessageDsn,
    /// REQUIRETLS (RFC 8689): only over verified TLS to a server that offers it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub require_tls: bool,
}

impl QueueEntry {
    pub fn pending(&self) -> impl Iterator<Item = &QueueRcpt> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
    }

    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("queue")
}

fn msg_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.msg"))
}

fn state_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Queue ids: time and a random suffix, sortable by arrival, safe as file names.
pub fn new_id(now: i64) -> String {
    format!("{now:010X}{:08X}", rand::random::<u32>())
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Stores a message durably; returns its entry. Blocking (fsyncs).
pub fn enqueue(
    data_dir: &Path,
    mail_from: &str,
    recipients: &[(String, RcptDsn)],
    dsn: &MessageDsn,
    require_tls: bool,
    message: &[&[u8]],
    now: i64,
) -> Result<QueueEntry, String> {
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let id = new_id(now);
    let msg = msg_path(&dir, &id);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&msg).map_err(|e| io_err(&msg, e))?;
        for part in message {
            f.write_all(part).map_err(|e| io_err(&msg, e))?;
        }
        f.sync_all().map_err(|e| io_err(&msg, e))?;
    }
    let entry = QueueEntry {
        id,
        mail_from: mail_from.to_string(),
        recipients: recipients
            .iter()
            .map(|(address, dsn)| QueueRcpt {
                address: address.clone(),
                state: RcptState::Pending,
                last_error: None,
                remote_mta: None,
                dsn: dsn.clone(),
            })
            .collect(),
        created: now,
        next_attempt: now,
        attempts: 0,
        size: message.iter().map(|part| part.len() as u64).sum(),
        delay_notified: false,
        dsn: dsn.clone(),
        require_tls,
    };
    save(data_dir, &entry)?; // write_atomic fsyncs the file and the directory
    Ok(entry)
}

/// Replaces an entry's state atomically. Blocking. An entry whose message file is gone
/// (`shardmail queue delete` while an attempt ran) stays deleted.
pub fn save(data_dir: &Path, entry: &QueueEntry) -> Result<(), String> {
    if !msg_path(&dir(data_dir), &entry.id).exists() {
        return Ok(());
    }
    let path = state_path(&dir(data_dir), &entry.id);
    let text = serde_json::to_string_pretty(entry).map_err(|e| e.to_string())?;
    write_atomic(&path, text.as_bytes()).map_err(|e| io_err(&path, e))
}

/// Removes a finished or deleted entry. The message goes first: [`save`] never writes
/// state for an entry without its message, and a state file left without one is
/// cleaned up by [`load_all`].
pub fn remove(data_dir: &Path, id: &str) -> Result<bool, String> {
    let dir = dir(data_dir);
    let state = state_path(&dir, id);
    let existed = state.exists();
    let msg = msg_path(&dir, id);
    match std::fs::remove_file(&msg) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&msg, e)),
    }
    if existed {
        std::fs::remove_file(&state).map_err(|e| io_err(&state, e))?;
    }
    Ok(existed)
}

pub fn read_message(data_dir: &Path, id: &str) -> Result<Vec<u8>, String> {
    let path = msg_path(&dir(data_dir), id);
    std::fs::read(&path).map_err(|e| io_err(&path, e))
}

pub fn load(data_dir: &Path, id: &str) -> Result<Option<QueueEntry>, String> {
    let path = state_path(&dir(data_dir), id);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, e)),
    }
}

/// Every entry, oldest first; with `clean`, removes message files that never got a
/// state file (an enqueue interrupted before it was acknowledged).
pub fn load_all(data_dir: &Path, clean: bool) -> Result<Vec<QueueEntry>, String> {
    let dir = dir(data_dir);
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for item in read.flatten() {
        let name = item.file_name().to_string_lossy().to_string();
        if let Some(id) = name.strip_suffix(".json") {
            if clean && !msg_path(&dir, id).exists() {
                // A delete that stopped between its two unlinks.
                let _ = std::fs::remove_file(item.path());
                continue;
            }
            if let Some(entry) = load(data_dir, id)? {
                entries.push(entry);
            }
        } else if let Some(id) = name.strip_suffix(".msg") {
            if clean && !state_path(&dir, id).exists() {
                tracing::warn!(id, "removing a message whose enqueue never completed");
                let _ = std::fs::remove_file(item.path());
            }
        } else if clean && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(item.path());
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(entries)
}

/// Asks a running server to retry everything now (it polls for this file).
pub fn request_flush(data_dir: &Path) -> Result<(), String> {
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let path = dir.join("flush.request");
    std::fs::write(&path, b"").map_err(|e| io_err(&path, e))
}

/// Delay before attempt `attempts + 1`: `min`, doubling, capped at `max`.
pub fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_update_reload_remove() {
        let data = std::env::temp_dir().join(format!("shardmail-queue-{}", std::process::id()));
        let e = enqueue(
            &data,
            "a@x.example",
            &[
                ("b@y.example".into(), RcptDsn::default()),
                ("c@y.example".into(), RcptDsn::default()),
            ],
            &MessageDsn::default(),
            false,
            &[b"m", b"sg"],
            100,
        )
        .expect("enqueue");
        assert_eq!(read_message(&data, &e.id).expect("read"), b"msg");
        assert_eq!(e.size, 3, "the size is the message's bytes, not its parts");
        let mut e2 = e.clone();
        e2.recipients[0].state = RcptState::Delivered;
        e2.attempts = 1;
        save(&data, &e2).expect("save");
        // An interrupted enqueue leaves a message without state: removed on load.
        std::fs::write(dir(&data).join("ORPHAN.msg"), b"x").expect("write");
        let all = load_all(&data, true).expect("load");
        assert_eq!(all, vec![e2.clone()]);
        assert!(!dir(&data).join("ORPHAN.msg").exists());
        assert_eq!(all[0].pending().count(), 1);
        assert!(remove(&data, &e.id).expect("remove"));
        assert!(load_all(&data, true).expect("load").is_empty());
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let (min, max) = (Duration::from_secs(300), Duration::from_secs(4 * 3600));
        assert_eq!(backoff(1, min, max), min);
        assert_eq!(backoff(2, min, max), min * 2);
        assert_eq!(backoff(4, min, max), min * 8);
        assert_eq!(backoff(60, min, max), max);
    }
}
