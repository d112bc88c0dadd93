//! Compaction of one partition with the server stopped: the log is rewritten with only
//! what is live — each referenced message once, each live mailbox and message as one
//! record — and swapped in atomically. Expunged messages, deleted mailboxes and
//! accounts no longer in `users.json` are dropped; UIDs, UIDVALIDITY, MODSEQs, flags,
//! keywords, INTERNALDATE and message bytes are kept (Blob records are copied
//! verbatim, checksums included).
//!
//! Crash safety: the new log is written and fsynced in a sibling directory
//! (`NNNN.compact/`) and checked by opening it and comparing it with the old index and
//! bytes; only then is the old snapshot removed and the new log renamed over the old
//! one (one atomic rename, directory fsynced). A crash at any point leaves either the
//! old log or the new one; a leftover `NNNN.compact/` is removed by the next run and
//! never read by the server. Must never run while a server holds the data directory
//! (the CLI takes its lock), and never changes a live message's numbers or bytes.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::index::{AccountIndex, Index, MailboxIndex};
use super::layout::{self, FILE_MAGIC};
use super::op::Op;
use super::partition;
use super::StoreError;

/// What one partition holds and how much of it is garbage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub log_bytes: u64,
    /// Bytes the log would take compacted: live Blob records (each once) and one
    /// record per live mailbox, message and subscription.
    pub live_bytes: u64,
    /// Sum of the live messages' sizes (a shared blob counted once).
    pub message_bytes: u64,
    pub messages: u64,
    pub accounts: u64,
}

impl Stats {
    pub fn garbage_bytes(&self) -> u64 {
        self.log_bytes.saturating_sub(self.live_bytes)
    }
    /// Garbage as a share of the log (what `store.compaction_garbage_ratio` compares).
    pub fn garbage_ratio(&self) -> f64 {
        if self.log_bytes == 0 {
            0.0
        } else {
            self.garbage_bytes() as f64 / self.log_bytes as f64
        }
    }
}

/// The outcome of compacting one partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub before: Stats,
    pub after_bytes: u64,
    pub dropped_accounts: u64,
}

/// Stats of the partition in `dir` (read-only: safe while a server runs; a record
/// being written is simply not counted yet).
pub fn stats(dir: &Path, keep: &dyn Fn(u64) -> bool) -> Result<Stats, StoreError> {
    let loaded = partition::load(dir)?;
    let map = partition::map_log(dir)?;
    Ok(measure(&loaded.index, &map, loaded.file_len, keep))
}

fn measure(index: &Index, log: &[u8], log_bytes: u64, keep: &dyn Fn(u64) -> bool) -> Stats {
    let mut stats = Stats {
        log_bytes,
        live_bytes: FILE_MAGIC.len() as u64,
        ..Stats::default()
    };
    let mut blobs = HashSet::new();
    for (_, acct) in index.accounts.iter().filter(|(id, _)| keep(**id)) {
        stats.accounts += 1;
        let mut ops = Vec::new();
        account_ops(acct, 0, &mut ops, &mut |_| 0);
        let mut encoded = Vec::new();
        for op in &ops {
            op.encode(&mut encoded);
        }
        stats.live_bytes += encoded.len() as u64;
        for m in acct.mailboxes.iter().flat_map(|mb| &mb.messages) {
            stats.messages += 1;
            if blobs.insert(m.blob) {
                stats.message_bytes += u64::from(m.len);
                stats.live_bytes += record_len(log, m.blob).unwrap_or(0) as u64;
            }
        }
    }
    stats
}

/// Bytes of the record at `offset`, padding included.
fn record_len(log: &[u8], offset: u64) -> Option<usize> {
    let start = offset as usize;
    let len = u32::from_le_bytes(log.get(start..start + 4)?.try_into().ok()?) as usize;
    Some(layout::record_bytes(len))
}

/// The records that recreate `acct` (`account` is its id): per mailbox its creation,
/// an Append per message (its blob from `blob_at`), its counters; then deleted
/// mailbox ids, subscriptions and METADATA entries.
fn account_ops(
    acct: &AccountIndex,
    account: u64,
    ops: &mut Vec<Op>,
    blob_at: &mut dyn FnMut(u64) -> u64,
) {
    for mb in &acct.mailboxes {
        mailbox_ops(mb, account, ops, blob_at);
    }
    for id in &acct.deleted {
        ops.push(Op::MailboxDelete {
            account,
            mailbox: *id,
        });
    }
    for name in &acct.subscribed {
        ops.push(Op::Subscription {
            account,
            subscribed: true,
            name: name.clone(),
        });
    }
    for a in &acct.metadata {
        ops.push(Op::Metadata {
            account,
            mailbox: a.mailbox,
            entry: a.entry.clone(),
            value: Some(a.value.clone()),
        });
    }
}

fn mailbox_ops(
    mb: &MailboxIndex,
    account: u64,
    ops: &mut Vec<Op>,
    blob_at: &mut dyn FnMut(u64) -> u64,
) {
    ops.push(Op::MailboxCreate {
        account,
        id: mb.id,
        uidvalidity: mb.uidvalidity,
        special: mb.special_use,
        name: mb.name.clone(),
    });
    for m in &mb.messages {
        ops.push(Op::Append {
            account,
            mailbox: mb.id,
            uid: m.uid,
            modseq: m.modseq,
            internal_date: m.internal_date,
            flags: m.flags,
            blob: blob_at(m.blob),
            keywords: m.keywords.to_vec(),
            save_date: m.save_date,
            resolved: None,
        });
    }
    ops.push(Op::MailboxState {
        account,
        mailbox: mb.id,
        uid_next: mb.uid_next,
        highest_modseq: mb.highest_modseq,
        history_floor: mb.highest_modseq,
    });
}

/// Where a partition's compacted log is built before it replaces the real one.
pub fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".compact");
    dir.with_file_name(name)
}

/// A compacted log written and verified beside the partition, not yet in place.
pub struct Staged {
    pub before: Stats,
    /// Old blob offset → new blob offset.
    pub moved: HashMap<u64, u64>,
    /// Length of the staged log.
    pub len: u64,
    pub dropped_accounts: u64,
}

/// Compacts the partition in `dir` (server stopped), keeping the accounts `keep`
/// accepts. `progress(done, total)` is called as message bytes are copied.
pub fn compact(
    dir: &Path,
    keep: &dyn Fn(u64) -> bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, StoreError> {
    let loaded = partition::recover(dir)?;
    let old = partition::map_log(dir)?;
    let staged = stage(
        dir,
        &loaded.index,
        &old,
        loaded.file_len,
        keep,
        None,
        progress,
    )?;
    drop(old);
    swap(dir)?;
    // A snapshot of the new log, so the next start need not replay it.
    let reopened = partition::load(dir)?;
    reopened
        .index
        .save_snapshot(dir)
        .map_err(|e| StoreError::io(dir, e))?;
    Ok(Report {
        before: staged.before,
        after_bytes: staged.len,
        dropped_accounts: staged.dropped_accounts,
    })
}

/// Writes the compacted form of `index` (whose records are in `log`, `log_len`
/// bytes of it) to the staging directory, fsyncs it, opens it and checks it against
/// `index` and the old bytes. At most `bytes_per_sec` of message bytes are copied a
/// second when given (a running server's disk is shared).
pub fn stage(
    dir: &Path,
    index: &Index,
    log: &[u8],
    log_len: u64,
    keep: &dyn Fn(u64) -> bool,
    bytes_per_sec: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Staged, StoreError> {
    let staging = staging_dir(dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
    }
    let before = measure(index, log, log_len, keep);
    std::fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
    let new_path = staging.join("messages.log");
    let started = std::time::Instant::now();
    let mut paced = |done: u64, total: u64| {
        progress(done, total);
        if let Some(rate) = bytes_per_sec.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    };
    let (dropped, moved, len) = write_compacted(
        index,
        log,
        keep,
        &new_path,
        before.message_bytes,
        &mut paced,
    )?;
    sync_dir(&staging)?;
    let fresh = partition::load(&staging)?;
    let new_map = partition::map_log(&staging)?;
    verify(index, log, &fresh.index, &new_map, keep)?;
    Ok(Staged {
        before,
        moved,
        len,
        dropped_accounts: dropped,
    })
}

/// Appends to the staged log the records `tail` holds (the old log from offset
/// `base` on: what was committed while the bulk was copied), their blob offsets
/// translated, and fsyncs it. Records of dropped accounts are left out.
pub fn append_tail(
    dir: &Path,
    staged: &mut Staged,
    tail: &[u8],
    base: u64,
    keep: &dyn Fn(u64) -> bool,
) -> Result<(), StoreError> {
    let path = staging_dir(dir).join("messages.log");
    let mut out = Vec::new();
    for record in layout::Scanner::region(tail, base) {
        let op = Op::decode(&record).map_err(|e| {
            StoreError::Corrupt(format!("record at {} in the tail: {}", e.offset, e.reason))
        })?;
        match op {
            Op::Blob { blob, .. } => {
                let len = record_len(tail, blob - base).ok_or_else(|| damaged(blob))?;
                let start = (blob - base) as usize;
                let bytes = tail.get(start..start + len).ok_or_else(|| damaged(blob))?;
                staged.moved.insert(blob, staged.len + out.len() as u64);
                out.extend_from_slice(bytes);
            }
            // A dropped account's records go; an Append points at its blob's new place.
            other if other.account().is_some_and(|a| !keep(a)) => {}
            Op::Append { blob, .. } if !staged.moved.contains_key(&blob) => {
                return Err(damaged(blob));
            }
            mut other => {
                if let Op::Append { blob, .. } = &mut other {
                    *blob = staged.moved.get(blob).copied().unwrap_or(*blob);
                }
                other.encode(&mut out);
            }
        }
    }
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    file.write_all_at(&out, staged.len)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(&path, e))?;
    staged.len += out.len() as u64;
    Ok(())
}

/// `index` as it reads over the compacted log: every message's blob and bytes at
/// their new offsets, dropped accounts gone. Everything else (numbers, flags,
/// tombstones, flag-change logs) is kept as it is, so sessions go on undisturbed.
pub fn remap(
    index: &Index,
    staged: &Staged,
    keep: &dyn Fn(u64) -> bool,
) -> Result<Index, StoreError> {
    let mut out = index.clone();
    out.accounts.retain(|id, _| keep(*id));
    for acct in out.accounts.values_mut() {
        for m in acct
            .mailboxes
            .iter_mut()
            .flat_map(|mb| mb.messages.iter_mut())
        {
            let blob = *staged.moved.get(&m.blob).ok_or_else(|| damaged(m.blob))?;
            m.offset = blob + (m.offset - m.blob);
            m.blob = blob;
        }
    }
    out.log_end = staged.len;
    Ok(out)
}

/// Puts the staged log in place: the old snapshot goes first (its offsets are the
/// old log's), then one rename, each step made durable.
pub fn swap(dir: &Path) -> Result<(), StoreError> {
    let staging = staging_dir(dir);
    let new_path = staging.join("messages.log");
    match std::fs::remove_file(dir.join("index.snap")) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(dir, e)),
    }
    let log = dir.join("messages.log");
    std::fs::rename(&new_path, &log).map_err(|e| StoreError::io(&log, e))?;
    sync_dir(dir)?;
    std::fs::remove_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))
}

/// Removes a staged log that will not be used (a failed or abandoned compaction).
pub fn discard(dir: &Path) {
    let _ = std::fs::remove_dir_all(staging_dir(dir));
}

#[allow(clippy::type_complexity)]
fn write_compacted(
    index: &Index,
    old: &[u8],
    keep: &dyn Fn(u64) -> bool,
    path: &Path,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, HashMap<u64, u64>, u64), StoreError> {
    let file = std::fs::File::create(path).map_err(|e| StoreError::io(path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| StoreError::io(path, e);
    out.write_all(FILE_MAGIC).map_err(io)?;
    let mut at = FILE_MAGIC.len() as u64;
    let mut moved: HashMap<u64, u64> = HashMap::new();
    let (mut done, mut dropped) = (0u64, 0u64);
    let mut accounts: Vec<(&u64, &AccountIndex)> = index.accounts.iter().collect();
    accounts.sort_by_key(|(id, _)| **id);
    for (&account, acct) in accounts {
        if !keep(account) {
            dropped += 1;
            continue;
        }
        // Blob records first (each once), verbatim: their checksums stay valid.
        for m in acct.mailboxes.iter().flat_map(|mb| &mb.messages) {
            if moved.contains_key(&m.blob) {
                continue;
            }
            let len = record_len(old, m.blob).ok_or_else(|| damaged(m.blob))?;
            let start = m.blob as usize;
            let record = old.get(start..start + len).ok_or_else(|| damaged(m.blob))?;
            out.write_all(record).map_err(io)?;
            moved.insert(m.blob, at);
            at += len as u64;
            done += u64::from(m.len);
            progress(done, total);
        }
        let mut ops = Vec::new();
        account_ops(acct, account, &mut ops, &mut |blob| {
            moved.get(&blob).copied().unwrap_or(blob)
        });
        let mut encoded = Vec::new();
        for op in &ops {
            op.encode(&mut encoded);
        }
        out.write_all(&encoded).map_err(io)?;
        at += encoded.len() as u64;
    }
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    debug_assert_eq!(file.metadata().map(|m| m.len()).ok(), Some(at));
    Ok((dropped, moved, at))
}

fn damaged(offset: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "the blob record at offset {offset} is not readable; compaction stopped, nothing changed"
    ))
}

/// The compacted index must hold exactly the kept accounts, mailboxes and messages,
/// with the same numbers, flags and bytes.
fn verify<'a>(
    old: &Index,
    old_log: &'a [u8],
    new: &Index,
    new_log: &'a [u8],
    keep: &dyn Fn(u64) -> bool,
) -> Result<(), StoreError> {
    let fail = |what: String| {
        Err(StoreError::Corrupt(format!(
            "compacted log differs from the original ({what}); nothing changed"
        )))
    };
    let kept = old.accounts.keys().filter(|a| keep(**a)).count();
    if kept != new.accounts.len() {
        return fail(format!("{} accounts, not {kept}", new.accounts.len()));
    }
    for (id, a) in old.accounts.iter().filter(|(id, _)| keep(**id)) {
        let Some(b) = new.accounts.get(id) else {
            return fail(format!("account {id:016x} missing"));
        };
        if a.usage != b.usage
            || a.names != b.names
            || a.subscribed != b.subscribed
            || a.metadata != b.metadata
        {
            return fail(format!(
                "account {id:016x}: usage, names, subscriptions or METADATA"
            ));
        }
        if a.next_mailbox_id() != b.next_mailbox_id() || a.mailboxes.len() != b.mailboxes.len() {
            return fail(format!("account {id:016x}: mailbox ids"));
        }
        for (x, y) in a.mailboxes.iter().zip(&b.mailboxes) {
            let same = x.id == y.id
                && x.name == y.name
                && x.uidvalidity == y.uidvalidity
                && x.uid_next == y.uid_next
                && x.highest_modseq == y.highest_modseq
                && x.special_use == y.special_use
                && x.keywords == y.keywords
                && x.counts == y.counts
                && x.messages.len() == y.messages.len();
            if !same {
                return fail(format!("mailbox {} of {id:016x}", x.name));
            }
            for (m, n) in x.messages.iter().zip(&y.messages) {
                let bytes = |log: &'a [u8], e: &crate::store::MessageEntry| {
                    let s = e.offset as usize;
                    log.get(s..s + e.len as usize)
                };
                let same = m.uid == n.uid
                    && m.modseq == n.modseq
                    && m.flags == n.flags
                    && m.keywords == n.keywords
                    && m.internal_date == n.internal_date
                    && m.len == n.len
                    && bytes(old_log, m).is_some()
                    && bytes(old_log, m) == bytes(new_log, n);
                if !same {
                    return fail(format!("UID {} in {} of {id:016x}", m.uid, x.name));
                }
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
