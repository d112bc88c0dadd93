//! One partition: its `messages.log`, the index derived from it, and its changes.
//!
//! Owned by exactly one shard (`!Send`, shard-local `RefCell`s). A change is planned
//! against the index by [`change::plan`] (the same planner the session tests' store
//! uses), encoded once, and queued for group commit (`commit.rs`); only once durable
//! is it applied to the index and are the waiters told. Reads come from a read-only
//! mmap of the same file. This is the only module with `unsafe` in the store (the mmap).

mod commit;
mod compaction;

pub use compaction::Keep;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::BufferedFile;
use memmap2::Mmap;

use super::change::{self, BlobAt, Change, NewMessage, Outcome, Reservations};
use super::index::{self, BlobCache, Index, Op, DEFAULT_MAILBOXES};
use super::layout::{Scanner, FILE_MAGIC};
use super::{StoreError, StoredMessage};
use crate::config::{Durability, StoreOptions};
use commit::{Batch, Part};

/// Log and index of one partition as found on disk (shared by serve and export).
#[derive(Debug)]
pub struct Loaded {
    pub index: Index,
    /// End of the valid records; anything after it is a torn tail.
    pub valid_end: u64,
    pub file_len: u64,
    /// Log offset the loaded snapshot covered (the magic's end if there was none).
    pub snapshot_end: u64,
}

/// Opens the log read-only, loads the snapshot and replays the records after it.
pub fn load(dir: &Path) -> Result<Loaded, StoreError> {
    let path = dir.join("messages.log");
    let file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
    let file_len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
    if file_len < FILE_MAGIC.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "{}: shorter than its header",
            path.display()
        )));
    }
    let map = map_file(&file, &path)?;
    if map.get(..FILE_MAGIC.len()) != Some(&FILE_MAGIC[..]) {
        return Err(StoreError::Corrupt(format!(
            "{}: not a shardmail log",
            path.display()
        )));
    }
    let snapshot = Index::load_snapshot(dir).filter(|s| s.log_end <= file_len);
    let mut index = snapshot.unwrap_or_default();
    let snapshot_end = index.log_end.max(FILE_MAGIC.len() as u64);
    let mut blobs = BlobCache::from_index(&index);
    let mut scanner = Scanner::new(&map, index.log_end as usize);
    for record in scanner.by_ref() {
        let op = Op::decode(&record).map_err(|e| {
            StoreError::Corrupt(format!(
                "{}: record at offset {}: {}",
                path.display(),
                e.offset,
                e.reason
            ))
        })?;
        index.apply(op, &mut blobs).map_err(|e| {
            StoreError::Corrupt(format!(
                "{}: record at {}: {}",
                path.display(),
                record.offset,
                e.0
            ))
        })?;
    }
    index.log_end = scanner.valid_end();
    index.forget_recent();
    Ok(Loaded {
        valid_end: index.log_end,
        index,
        file_len,
        snapshot_end,
    })
}

/// A read-only map of a partition's log (export reads messages through it).
pub fn map_log(dir: &Path) -> Result<Mmap, StoreError> {
    let path = dir.join("messages.log");
    let file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
    map_file(&file, &path)
}

fn map_file(file: &std::fs::File, path: &Path) -> Result<Mmap, StoreError> {
    // SAFETY: the log is append-only while mapped: records are never rewritten in place
    // and the file is only truncated by `recover` before any map of it is taken. The
    // data directory is locked by the running server (`data/lock`), so no other
    // shardmail process truncates it; an outside process that does can cause SIGBUS,
    // which is the documented risk of serving from mmap (as in ripgrep's mmap.rs).
    unsafe { Mmap::map(file) }.map_err(|e| StoreError::io(path, e))
}

/// Creates an empty log if missing, then truncates a torn tail. Call before [`load`]
/// maps are used for serving.
pub fn recover(dir: &Path) -> Result<Loaded, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let path = dir.join("messages.log");
    if !path.exists() {
        let mut f = std::fs::File::create(&path).map_err(|e| StoreError::io(&path, e))?;
        f.write_all(FILE_MAGIC)
            .map_err(|e| StoreError::io(&path, e))?;
        f.sync_all().map_err(|e| StoreError::io(&path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(dir, e))?;
    }
    let loaded = load(dir)?;
    if loaded.valid_end < loaded.file_len {
        tracing::warn!(
            dir = %dir.display(),
            torn_bytes = loaded.file_len - loaded.valid_end,
            "truncating torn tail of the message log (an unacknowledged write)"
        );
        let f = std::fs::OpenOptions::new().write(true).open(&path);
        f.and_then(|f| {
            f.set_len(loaded.valid_end)?;
            f.sync_all()
        })
        .map_err(|e| StoreError::io(&path, e))?;
    }
    Ok(loaded)
}

/// The handles a partition keeps on its log (opened at start, and again after
/// compaction renamed a new log into place).
struct LogFiles {
    /// Async fdatasync (glommio).
    writer: BufferedFile,
    reader: std::fs::File,
    /// Plain `pwrite`s.
    appender: std::fs::File,
    map: Mmap,
}

impl LogFiles {
    async fn open(dir: &Path) -> Result<LogFiles, StoreError> {
        let path = dir.join("messages.log");
        let writer = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(&path)
            .await
            .map_err(|e| StoreError::glommio(&path, e))?;
        let reader = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let appender = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let map = map_file(&reader, &path)?;
        Ok(LogFiles {
            writer,
            reader,
            appender,
            map,
        })
    }
}

/// Bytes of a stored message, borrowed from the mmap (no copy).
#[derive(Debug, Clone)]
pub struct MappedSlice {
    map: Rc<Mmap>,
    start: usize,
    end: usize,
}

impl Deref for MappedSlice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.get(self.start..self.end).unwrap_or(&[])
    }
}

/// Counters for metrics and the issue notes.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub syncs: u64,
    pub batches: u64,
}

/// One open partition on its owning shard.
pub struct Partition {
    pub id: u32,
    dir: PathBuf,
    /// The log's handles (replaced when compaction swaps in a new log file).
    writer: RefCell<Rc<BufferedFile>>,
    /// The same file opened for writing with std: appends are plain `pwrite`s.
    appender: RefCell<std::fs::File>,
    reader: RefCell<std::fs::File>,
    map: RefCell<Rc<Mmap>>,
    index: RefCell<Index>,
    queue: RefCell<Vec<Batch>>,
    committing: Cell<bool>,
    /// Offset where the next queued batch will be written.
    end: Cell<u64>,
    /// UIDs, MODSEQs and mailbox ids handed out to changes not yet durable.
    reservations: RefCell<Reservations>,
    durability: Durability,
    checkpoint_bytes: u64,
    /// Log offset covered by the last snapshot written (or loaded).
    snapshot_end: Cell<u64>,
    checkpointing: Cell<bool>,
    failed: Cell<bool>,
    stats: Cell<CommitStats>,
    /// Free space against `store.reserve_free_bytes`.
    space: super::space::DiskSpace,
    /// Per account: a change counter and the tasks waiting for it to move (IMAP IDLE
    /// and sessions sharing a mailbox are woken when a commit touches the account).
    watchers: RefCell<HashMap<u64, (u64, Vec<std::task::Waker>)>>,
    /// Where each commit publishes the usage of the accounts it touched (quotas).
    usage: RefCell<Option<std::sync::Arc<super::usage::UsageBoard>>>,
    /// New changes wait while compaction swaps the log (their records would be
    /// encoded for the old file's offsets); woken when it is done.
    paused: Cell<bool>,
    resume: RefCell<Vec<std::task::Waker>>,
    compacting: Cell<bool>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .field("end", &self.end)
            .finish()
    }
}
impl Partition {
    /// Recovers and opens partition `id` in `dir` (inside a glommio executor).
    pub async fn open(
        id: u32,
        dir: &Path,
        options: StoreOptions,
    ) -> Result<Rc<Partition>, StoreError> {
        // A compaction cut short (by a crash or a stop) left its staging directory;
        // the log it was to replace is intact.
        super::compact::discard(dir);
        let loaded = recover(dir)?;
        let LogFiles {
            writer,
            reader,
            appender,
            map,
        } = LogFiles::open(dir).await?;
        Ok(Rc::new(Partition {
            appender: RefCell::new(appender),
            id,
            dir: dir.to_path_buf(),
            writer: RefCell::new(Rc::new(writer)),
            reader: RefCell::new(reader),
            map: RefCell::new(Rc::new(map)),
            end: Cell::new(loaded.valid_end),
            snapshot_end: Cell::new(loaded.snapshot_end),
            checkpointing: Cell::new(false),
            checkpoint_bytes: options.checkpoint_bytes,
            index: RefCell::new(loaded.index),
            queue: RefCell::new(Vec::new()),
            committing: Cell::new(false),
            reservations: RefCell::new(Reservations::default()),
            durability: options.durability,
            failed: Cell::new(false),
            stats: Cell::new(CommitStats::default()),
            space: super::space::DiskSpace::new(dir, options.reserve_free),
            watchers: RefCell::new(HashMap::new()),
            usage: RefCell::new(None),
            paused: Cell::new(false),
            resume: RefCell::new(Vec::new()),
            compacting: Cell::new(false),
        }))
    }

    /// Publishes every account's usage to `board`, and after each commit the usage
    /// of the accounts it touched.
    pub fn publish_usage(&self, board: std::sync::Arc<super::usage::UsageBoard>) {
        let index = self.index.borrow();
        board.publish(&index, index.accounts.keys().copied());
        *self.usage.borrow_mut() = Some(board);
    }

    /// Read access to the index (never hold it across an await).
    pub fn index(&self) -> std::cell::Ref<'_, Index> {
        self.index.borrow()
    }

    pub fn stats(&self) -> CommitStats {
        self.stats.get()
    }

    /// Message bytes at `offset..offset+len` of the log, from the mmap.
    pub fn read(&self, offset: u64, len: u32) -> Option<MappedSlice> {
        let (start, end) = (offset as usize, offset as usize + len as usize);
        if end > self.map.borrow().len() {
            // The file grew since the last map; map it again (old maps stay valid for
            // readers that still hold them).
            let fresh = map_file(&self.reader.borrow(), &self.dir).ok()?;
            *self.map.borrow_mut() = Rc::new(fresh);
        }
        let map = self.map.borrow().clone();
        (end <= map.len()).then_some(MappedSlice { map, start, end })
    }

    /// A map of the log covering every applied record (IMAP reads many messages per
    /// call through one map).
    pub fn current_map(&self) -> Option<Rc<Mmap>> {
        let need = self.index.borrow().log_end as usize;
        if self.map.borrow().len() < need {
            let fresh = map_file(&self.reader.borrow(), &self.dir).ok()?;
            *self.map.borrow_mut() = Rc::new(fresh);
        }
        Some(self.map.borrow().clone())
    }

    /// The bytes of message `uid` in `mailbox` of `account`, from the mmap.
    pub fn message(&self, account: u64, mailbox: u32, uid: u32) -> Option<MappedSlice> {
        let (offset, len) = self.with_entry(account, mailbox, uid, |e| (e.offset, e.len))?;
        self.read(offset, len)
    }

    /// Makes `change` durably (one group commit for all of it) and reports its
    /// outcome. `messages` are APPEND's messages with their encoded summaries.
    pub async fn execute(
        self: &Rc<Self>,
        account: u64,
        change: Change,
        now: i64,
        messages: &[(&StoredMessage, &[u8])],
    ) -> Result<Outcome, StoreError> {
        self.unpaused().await;
        if self.failed.get() {
            return Err(StoreError::Failed(self.id));
        }
        self.check_space(messages.iter().map(|(m, _)| m.len()).sum())?;
        let base = self.end.get();
        let blobs = BlobAt::consecutive(base, messages.iter().map(|(m, s)| (s.len(), m.len())));
        let planned = {
            let index = self.index.borrow();
            let mut numbers = self.reservations.borrow_mut();
            change::plan(&index, account, &change, now, &mut numbers, &blobs)?
        };
        if planned.ops.is_empty() {
            return Ok(planned.outcome);
        }
        let parts = encode_parts(&planned.ops, messages);
        self.commit_ops(base, parts, planned.ops).await?;
        Ok(planned.outcome)
    }

    /// Removes `uids` from a mailbox durably (one group commit for all of them).
    /// UIDs already gone are skipped, so a retry is harmless.
    pub async fn expunge(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        let change = Change::Expunge {
            mailbox,
            uids: uids.to_vec(),
        };
        self.execute(account, change, 0, &[]).await.map(|_| ())
    }

    /// Stores `message` in mailbox `mailbox` (1-5: the default mailboxes) of every
    /// account in `accounts` (all owned by this partition); resolves once durable per
    /// `store.durability`. (A copy for small messages: tests and benches.)
    pub async fn deliver(
        self: &Rc<Self>,
        accounts: &[u64],
        mailbox: u32,
        message: &[u8],
        summary: &[u8],
        internal_date: i64,
    ) -> Result<(), StoreError> {
        let message = StoredMessage::from_slice(message);
        self.deliver_message(accounts, mailbox, &message, summary, internal_date)
            .await
    }

    /// [`Partition::deliver`] of a [`StoredMessage`] (a large body is written from its
    /// own buffer): the accounts' default mailboxes if they have none, the Blob (once
    /// however many accounts share it), an Append for each account.
    pub async fn deliver_message(
        self: &Rc<Self>,
        accounts: &[u64],
        mailbox: u32,
        message: &StoredMessage,
        summary: &[u8],
        internal_date: i64,
    ) -> Result<(), StoreError> {
        self.unpaused().await;
        if self.failed.get() {
            return Err(StoreError::Failed(self.id));
        }
        self.check_space(message.len())?;
        let base = self.end.get();
        let ops = {
            let index = self.index.borrow();
            // A record naming a missing mailbox would be durable and then fail every
            // replay: refuse it before anything is written.
            let known = |account: u64| match index.accounts.get(&account) {
                Some(a) => a.mailbox_by_id(mailbox).is_some(),
                None => (1..=DEFAULT_MAILBOXES.len() as u32).contains(&mailbox),
            };
            if let Some(bad) = accounts.iter().find(|a| !known(**a)) {
                return Err(StoreError::Corrupt(format!(
                    "account {bad:x} has no mailbox {mailbox}"
                )));
            }
            let mut numbers = self.reservations.borrow_mut();
            let mut ops = Vec::new();
            for &account in accounts {
                ops.extend(numbers.default_mailboxes(&index, account, internal_date));
            }
            let mut before = Vec::new();
            change::encode(&mut before, &ops, &[]);
            let blob = BlobAt::at(base + before.len() as u64, summary.len(), message.len());
            ops.extend(change::plan_delivery(
                &index,
                accounts,
                mailbox,
                internal_date,
                &mut numbers,
                blob,
            ));
            ops
        };
        let parts = encode_parts(&ops, &[(message, summary)]);
        self.commit_ops(base, parts, ops).await
    }

    /// The mailbox `name` of `account`, if it exists now.
    pub fn mailbox_id(&self, account: u64, name: &str) -> Option<u32> {
        self.index
            .borrow()
            .accounts
            .get(&account)?
            .mailbox(name)
            .map(|m| m.id)
    }

    /// IMAP APPEND: stores one message in `mailbox` with flags, keywords and date;
    /// returns its UID once durable. (A copy of `message`: tests and benches.)
    #[allow(clippy::too_many_arguments)] // APPEND's arguments, one each
    pub async fn append(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        message: &[u8],
        summary: &[u8],
        flags: u32,
        keywords: &[String],
        internal_date: i64,
    ) -> Result<u32, StoreError> {
        let message = StoredMessage::from_slice(message);
        let change = Change::Append {
            mailbox,
            messages: vec![NewMessage {
                flags,
                keywords: keywords.to_vec(),
                internal_date,
            }],
        };
        match self
            .execute(account, change, internal_date, &[(&message, summary)])
            .await?
        {
            Outcome::Appended { uids } if uids.len() == 1 => Ok(uids.first().copied().unwrap_or(0)),
            _ => Err(StoreError::Invalid("APPEND stored nothing".into())),
        }
    }

    /// IMAP STORE: sets the flags and keywords of messages; returns each changed
    /// message's UID and new MODSEQ (UIDs no longer present are skipped).
    pub async fn store_flags(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        changes: &[(u32, u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>, StoreError> {
        let change = Change::Store {
            mailbox,
            changes: changes.to_vec(),
        };
        match self.execute(account, change, 0, &[]).await? {
            Outcome::Stored(changed) => Ok(changed),
            _ => Ok(Vec::new()),
        }
    }

    /// Makes sure `account` has its default mailboxes (an IMAP login before any mail).
    pub async fn ensure_account(self: &Rc<Self>, account: u64, now: i64) -> Result<(), StoreError> {
        let creating = self.reservations.borrow().is_creating(account);
        if !creating {
            self.execute(account, Change::EnsureAccount, now, &[])
                .await?;
        }
        // Created by a commit in flight: wait for that one.
        while !self.index.borrow().accounts.contains_key(&account) {
            if self.failed.get() {
                return Err(StoreError::Failed(self.id));
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// IMAP SUBSCRIBE / UNSUBSCRIBE of a mailbox name.
    pub async fn subscribe(
        self: &Rc<Self>,
        account: u64,
        name: &str,
        subscribed: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let change = Change::Subscribe {
            name: name.to_string(),
            subscribed,
        };
        self.execute(account, change, now, &[]).await.map(|_| ())
    }

    /// How many commits have touched `account` (compare with [`Partition::changed`]).
    pub fn generation(&self, account: u64) -> u64 {
        self.watchers.borrow().get(&account).map_or(0, |w| w.0)
    }

    /// Resolves once a commit touches `account` after generation `seen`.
    pub fn changed(&self, account: u64, seen: u64) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut watchers = self.watchers.borrow_mut();
            let entry = watchers.entry(account).or_insert((0, Vec::new()));
            if entry.0 != seen {
                return std::task::Poll::Ready(());
            }
            if !entry.1.iter().any(|w| w.will_wake(cx.waker())) {
                entry.1.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
    }

    fn touched(&self, account: u64) {
        if let Some(board) = self.usage.borrow().as_ref() {
            board.publish(&self.index.borrow(), [account]);
        }
        let mut watchers = self.watchers.borrow_mut();
        if let Some(entry) = watchers.get_mut(&account) {
            entry.0 += 1;
            for waker in entry.1.drain(..) {
                waker.wake();
            }
        }
    }

    /// IMAP CREATE: a new mailbox; returns its id.
    pub async fn create_mailbox(
        self: &Rc<Self>,
        account: u64,
        name: &str,
        now: i64,
    ) -> Result<u32, StoreError> {
        let change = Change::Create {
            names: vec![name.to_string()],
            special: crate::store::index::SpecialUse::None,
        };
        self.execute(account, change, now, &[]).await?;
        self.mailbox_id(account, name)
            .ok_or_else(|| StoreError::Invalid(format!("mailbox {name} was not created")))
    }

    /// IMAP RENAME (not of INBOX: see [`Change::RenameInbox`]).
    pub async fn rename_mailbox(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        name: &str,
    ) -> Result<(), StoreError> {
        let change = Change::Rename {
            renames: vec![(mailbox, name.to_string())],
        };
        self.execute(account, change, 0, &[]).await.map(|_| ())
    }

    /// IMAP DELETE: the mailbox and its messages disappear.
    pub async fn delete_mailbox(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
    ) -> Result<(), StoreError> {
        self.execute(account, Change::Delete { mailbox }, 0, &[])
            .await
            .map(|_| ())
    }

    /// IMAP COPY: new entries in `to` sharing the stored bytes (no copy of the
    /// message); returns (source UID, new UID) pairs, the COPYUID data.
    pub async fn copy(
        self: &Rc<Self>,
        account: u64,
        from: u32,
        uids: &[u32],
        to: u32,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        let change = Change::Copy {
            from,
            uids: uids.to_vec(),
            to,
            expunge_source: false,
        };
        match self.execute(account, change, 0, &[]).await? {
            Outcome::Copied(pairs) => Ok(pairs),
            _ => Ok(Vec::new()),
        }
    }

    /// Runs `f` on a message's index entry, if it exists (one lookup for every reader;
    /// nothing is cloned unless `f` does).
    fn with_entry<T>(
        &self,
        account: u64,
        mailbox: u32,
        uid: u32,
        f: impl FnOnce(&index::MessageEntry) -> T,
    ) -> Option<T> {
        let index = self.index.borrow();
        let mb = index.accounts.get(&account)?.mailbox_by_id(mailbox)?;
        let at = mb.messages.binary_search_by_key(&uid, |m| m.uid).ok()?;
        mb.messages.get(at).map(f)
    }

    /// New mail of `bytes` fits `store.reserve_free_bytes` (a temporary refusal
    /// otherwise; expunges and flag changes are never refused for space).
    fn check_space(&self, bytes: usize) -> Result<(), StoreError> {
        self.space.admit(bytes as u64)
    }

    /// Writes an index snapshot (at shutdown, after the last commit).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        if self.compacting.get() {
            // Mid-swap the index and the file on disk may be different logs' (the
            // next start replays instead).
            return Ok(());
        }
        self.index
            .borrow()
            .save_snapshot(&self.dir)
            .map_err(|e| StoreError::io(&self.dir, e))
    }
}

/// Messages at least this large are written from their own buffer (a map of the
/// spool file) rather than copied into the commit's buffer.
const SHARED_BODY_BYTES_MIN: usize = 256 * 1024;

/// The commit's bytes: records inline, and a large message body as its own part
/// (the Blob record's header and checksum cover it without a copy). Each Blob op
/// takes the next of `messages`.
fn encode_parts(ops: &[Op], messages: &[(&StoredMessage, &[u8])]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut bytes = Vec::new();
    let mut messages = messages.iter();
    for op in ops {
        match op {
            Op::Blob { .. } => {
                let Some((m, summary)) = messages.next() else {
                    continue;
                };
                if m.body.len() < SHARED_BODY_BYTES_MIN {
                    super::op::encode_blob(&mut bytes, summary, &[&m.head[..], &m.body[..]]);
                    continue;
                }
                let payload_len = 4 + summary.len() + m.len();
                let crc = super::layout::record_crc(
                    super::layout::Kind::Blob,
                    super::op::BLOB_VERSION,
                    &[&(summary.len() as u32).to_le_bytes(), summary],
                );
                let crc = m.crc_after(crc);
                super::layout::encode_header(
                    &mut bytes,
                    super::layout::Kind::Blob,
                    super::op::BLOB_VERSION,
                    payload_len,
                    crc,
                );
                bytes.extend_from_slice(&super::op::blob_payload_head(summary, &m.head));
                parts.push(Part::Inline(std::mem::take(&mut bytes)));
                parts.push(Part::Shared(m.body.clone()));
                // Padding apart: the records after the Blob start aligned in their own
                // buffer.
                parts.push(Part::Inline(vec![0; super::layout::padding(payload_len)]));
            }
            other => other.encode(&mut bytes),
        }
    }
    parts.push(Part::Inline(bytes));
    parts
}
