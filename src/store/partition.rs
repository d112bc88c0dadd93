//! One partition: its `messages.log`, the index derived from it, and group commit.
//!
//! Owned by exactly one shard (`!Send`, shard-local `RefCell`s). Appends are encoded
//! into records, queued, and written by a single commit task: every batch that queued
//! while the previous fdatasync ran is written and covered by the next one, and only
//! then are the index updated and the waiters told. Reads come from a read-only mmap of
//! the same file. This is the only module with `unsafe` in the store (the mmap).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::io::BufferedFile;
use memmap2::Mmap;

use super::index::{self, BlobCache, Index, Op, SpecialUse, DEFAULT_MAILBOXES};
use super::layout::{self, Kind, Scanner, FILE_MAGIC};
use super::StoreError;
use crate::config::{Durability, StoreOptions};

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
                "{}: undecodable record at {}",
                path.display(),
                e.offset
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

struct Batch {
    /// File offset of the first part.
    base: u64,
    /// The batch's bytes in file order: encoded records, and the bodies of large
    /// messages written from their own buffers (never copied into a record buffer).
    parts: Vec<Part>,
    /// Bytes in all parts.
    len: u64,
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

enum Part {
    Inline(Vec<u8>),
    Shared(bytes::Bytes),
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Inline(v) => v.len(),
            Part::Shared(b) => b.len(),
        }
    }
}

/// Messages at least this large are written from their own buffer (a map of the
/// spool file) rather than copied into the commit's buffer.
const SHARED_BODY_BYTES_MIN: usize = 256 * 1024;

/// How a group commit failed.
enum CommitError {
    /// Writing failed (ENOSPC, EDQUOT…): nothing was synced; the log can be rewound.
    Write(StoreError),
    /// The fdatasync failed, or the partition had stopped.
    Sync(StoreError),
}

/// A Blob record being encoded (see [`Partition::encode_blob`]).
struct EncodedBlob {
    parts: Vec<Part>,
    tail: Vec<u8>,
    blob_op: Option<Op>,
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
    writer: BufferedFile,
    /// The same file opened for writing with std: appends are plain `pwrite`s.
    appender: std::fs::File,
    reader: std::fs::File,
    map: RefCell<Rc<Mmap>>,
    index: RefCell<Index>,
    queue: RefCell<Vec<Batch>>,
    committing: Cell<bool>,
    /// Offset where the next queued batch will be written.
    end: Cell<u64>,
    /// UIDs/modseqs handed out but not yet durable, per (account, mailbox).
    reserved: RefCell<HashMap<(u64, u32), (u32, u64)>>,
    /// Accounts whose default mailboxes are queued but not yet durable.
    creating: RefCell<HashSet<u64>>,
    /// Mailbox ids handed out but not yet durable, per account.
    next_mailbox: RefCell<HashMap<u64, u32>>,
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
        let loaded = recover(dir)?;
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
        Ok(Rc::new(Partition {
            appender,
            id,
            dir: dir.to_path_buf(),
            writer,
            reader,
            map: RefCell::new(Rc::new(map)),
            end: Cell::new(loaded.valid_end),
            snapshot_end: Cell::new(loaded.snapshot_end),
            checkpointing: Cell::new(false),
            checkpoint_bytes: options.checkpoint_bytes,
            index: RefCell::new(loaded.index),
            queue: RefCell::new(Vec::new()),
            committing: Cell::new(false),
            reserved: RefCell::new(HashMap::new()),
            creating: RefCell::new(HashSet::new()),
            next_mailbox: RefCell::new(HashMap::new()),
            durability: options.durability,
            failed: Cell::new(false),
            stats: Cell::new(CommitStats::default()),
            space: super::space::DiskSpace::new(dir, options.reserve_free),
            watchers: RefCell::new(HashMap::new()),
        }))
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
            let fresh = map_file(&self.reader, &self.dir).ok()?;
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
            let fresh = map_file(&self.reader, &self.dir).ok()?;
            *self.map.borrow_mut() = Rc::new(fresh);
        }
        Some(self.map.borrow().clone())
    }

    /// The bytes of message `uid` in `mailbox` of `account`, from the mmap.
    pub fn message(&self, account: u64, mailbox: u32, uid: u32) -> Option<MappedSlice> {
        let (offset, len) = self.with_entry(account, mailbox, uid, |e| (e.offset, e.len))?;
        self.read(offset, len)
    }

    /// Removes `uids` from a mailbox durably (one group commit for all of them).
    /// UIDs already gone are skipped, so a retry is harmless.
    pub async fn expunge(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        if self.failed.get() {
            return Err(StoreError::Failed(self.id));
        }
        let present: Vec<u32> = {
            let index = self.index.borrow();
            let Some(mb) = index
                .accounts
                .get(&account)
                .and_then(|a| a.mailbox_by_id(mailbox))
            else {
                return Ok(());
            };
            uids.iter()
                .copied()
                .filter(|u| mb.messages.binary_search_by_key(u, |m| m.uid).is_ok())
                .collect()
        };
        if present.is_empty() {
            return Ok(());
        }
        let base = self.end.get();
        let mut bytes = Vec::with_capacity(present.len() * 48);
        for uid in present {
            let modseq = self.reserve_modseq(account, mailbox);
            layout::encode(
                &mut bytes,
                Kind::Expunge,
                &[
                    &account.to_le_bytes(),
                    &mailbox.to_le_bytes(),
                    &uid.to_le_bytes(),
                    &modseq.to_le_bytes(),
                ],
            );
        }
        self.commit(base, bytes).await
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
        let message = super::StoredMessage::from_slice(message);
        self.deliver_message(accounts, mailbox, &message, summary, internal_date)
            .await
    }

    /// [`Partition::deliver`] of a [`super::StoredMessage`] (a large body is written
    /// from its own buffer).
    pub async fn deliver_message(
        self: &Rc<Self>,
        accounts: &[u64],
        mailbox: u32,
        message: &super::StoredMessage,
        summary: &[u8],
        internal_date: i64,
    ) -> Result<(), StoreError> {
        if self.failed.get() {
            return Err(StoreError::Failed(self.id));
        }
        self.check_space(message.len())?;
        // A record naming a missing mailbox would be durable and then fail every replay:
        // refuse it before anything is written.
        let known = |account: u64| {
            let index = self.index.borrow();
            match index.accounts.get(&account) {
                Some(a) => a.mailbox_by_id(mailbox).is_some(),
                None => (1..=DEFAULT_MAILBOXES.len() as u32).contains(&mailbox),
            }
        };
        if let Some(bad) = accounts.iter().find(|a| !known(**a)) {
            return Err(StoreError::Corrupt(format!(
                "account {bad:x} has no mailbox {mailbox}"
            )));
        }
        let base = self.end.get();
        let mut head = Vec::with_capacity(512);
        for &account in accounts {
            self.encode_default_mailboxes(&mut head, account, internal_date);
        }
        let blob = base + head.len() as u64;
        let mut blob_parts = self.encode_blob(head, summary, message);
        let mut tail = blob_parts.tail;
        for &account in accounts {
            let uid = self.encode_append(&mut tail, account, mailbox, internal_date, 0, &[], blob);
            debug_assert!(uid > 0);
        }
        blob_parts.parts.push(Part::Inline(tail));
        self.commit_parts(base, blob_parts.parts, blob_parts.blob_op)
            .await
    }

    /// Encodes the Blob record of `message` after the records already in `head`:
    /// inline (one buffer) for a small message, or with the body as its own part.
    /// Returns the parts so far, the bytes that continue the last part, and the Blob
    /// op when it cannot be decoded from contiguous bytes.
    fn encode_blob(
        &self,
        mut head: Vec<u8>,
        summary: &[u8],
        message: &super::StoredMessage,
    ) -> EncodedBlob {
        let blob = self.end.get() + head.len() as u64;
        let summary_len = (summary.len() as u32).to_le_bytes();
        if message.body.len() < SHARED_BODY_BYTES_MIN {
            layout::encode(
                &mut head,
                Kind::Blob,
                &[&summary_len, summary, &message.head, &message.body],
            );
            return EncodedBlob {
                parts: Vec::new(),
                tail: head,
                blob_op: None,
            };
        }
        let payload_len = 4 + summary.len() + message.len();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[Kind::Blob as u8]), &summary_len);
        let crc = message.crc_after(crc32c::crc32c_append(crc, summary));
        layout::encode_header(&mut head, Kind::Blob, payload_len, crc);
        head.extend_from_slice(&summary_len);
        head.extend_from_slice(summary);
        head.extend_from_slice(&message.head);
        let op = Op::Blob {
            blob,
            offset: blob + layout::RECORD_HEADER_BYTES as u64 + 4 + summary.len() as u64,
            len: message.len() as u32,
            summary: Box::new(super::Summary::from_bytes(summary).unwrap_or_default()),
        };
        EncodedBlob {
            parts: vec![
                Part::Inline(head),
                Part::Shared(message.body.clone()),
                Part::Inline(vec![0; layout::padding(payload_len)]),
            ],
            // The records after the Blob start aligned, in a buffer of their own.
            tail: Vec::new(),
            blob_op: Some(op),
        }
    }

    /// Encodes one Append record with a freshly reserved UID; returns the UID.
    #[allow(clippy::too_many_arguments)] // the record's fields, one argument each
    fn encode_append(
        &self,
        out: &mut Vec<u8>,
        account: u64,
        mailbox: u32,
        internal_date: i64,
        flags: u32,
        keywords: &[String],
        blob: u64,
    ) -> u32 {
        let (uid, modseq) = self.reserve(account, mailbox);
        let mut tail = Vec::new();
        layout::encode_keywords(&mut tail, keywords);
        layout::encode(
            out,
            Kind::Append,
            &[
                &account.to_le_bytes(),
                &mailbox.to_le_bytes(),
                &uid.to_le_bytes(),
                &modseq.to_le_bytes(),
                &internal_date.to_le_bytes(),
                &flags.to_le_bytes(),
                &blob.to_le_bytes(),
                &tail,
            ],
        );
        uid
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

    fn require_mailbox(&self, account: u64, mailbox: u32) -> Result<(), StoreError> {
        let index = self.index.borrow();
        let exists = index
            .accounts
            .get(&account)
            .is_some_and(|a| a.mailbox_by_id(mailbox).is_some());
        if exists {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!("no mailbox {mailbox}")))
        }
    }

    /// IMAP APPEND: stores one message in `mailbox` with flags, keywords and date;
    /// returns its UID once durable.
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
        let message = super::StoredMessage::from_slice(message);
        self.append_message(
            account,
            mailbox,
            &message,
            summary,
            flags,
            keywords,
            internal_date,
        )
        .await
    }

    /// [`Partition::append`] of a [`super::StoredMessage`].
    #[allow(clippy::too_many_arguments)] // APPEND's arguments, one each
    pub async fn append_message(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        message: &super::StoredMessage,
        summary: &[u8],
        flags: u32,
        keywords: &[String],
        internal_date: i64,
    ) -> Result<u32, StoreError> {
        self.require_mailbox(account, mailbox)?;
        self.check_space(message.len())?;
        let base = self.end.get();
        let mut encoded = self.encode_blob(Vec::new(), summary, message);
        let mut tail = encoded.tail;
        let uid = self.encode_append(
            &mut tail,
            account,
            mailbox,
            internal_date,
            flags,
            keywords,
            base,
        );
        encoded.parts.push(Part::Inline(tail));
        self.commit_parts(base, encoded.parts, encoded.blob_op)
            .await?;
        Ok(uid)
    }

    /// IMAP STORE: sets the flags and keywords of messages; returns each changed
    /// message's UID and new MODSEQ (UIDs no longer present are skipped).
    pub async fn store_flags(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        changes: &[(u32, u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>, StoreError> {
        self.require_mailbox(account, mailbox)?;
        let base = self.end.get();
        let mut bytes = Vec::new();
        let mut changed = Vec::new();
        for (uid, flags, keywords) in changes {
            let present = self.with_entry(account, mailbox, *uid, |_| ()).is_some();
            if !present {
                continue;
            }
            let modseq = self.reserve_modseq(account, mailbox);
            let mut tail = Vec::new();
            layout::encode_keywords(&mut tail, keywords);
            layout::encode(
                &mut bytes,
                Kind::Flags,
                &[
                    &account.to_le_bytes(),
                    &mailbox.to_le_bytes(),
                    &uid.to_le_bytes(),
                    &modseq.to_le_bytes(),
                    &flags.to_le_bytes(),
                    &tail,
                ],
            );
            changed.push((*uid, modseq));
        }
        if !bytes.is_empty() {
            self.commit(base, bytes).await?;
        }
        Ok(changed)
    }

    /// Makes sure `account` has its default mailboxes (an IMAP login before any mail).
    pub async fn ensure_account(self: &Rc<Self>, account: u64, now: i64) -> Result<(), StoreError> {
        let base = self.end.get();
        let mut bytes = Vec::new();
        self.encode_default_mailboxes(&mut bytes, account, now);
        if bytes.is_empty() {
            // Known, or being created by a commit in flight: wait for that one.
            while !self.index.borrow().accounts.contains_key(&account) {
                if self.failed.get() {
                    return Err(StoreError::Failed(self.id));
                }
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            return Ok(());
        }
        self.commit(base, bytes).await
    }

    /// IMAP SUBSCRIBE / UNSUBSCRIBE of a mailbox name.
    pub async fn subscribe(
        self: &Rc<Self>,
        account: u64,
        name: &str,
        subscribed: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let base = self.end.get();
        let mut bytes = Vec::new();
        self.encode_default_mailboxes(&mut bytes, account, now);
        layout::encode(
            &mut bytes,
            Kind::Subscription,
            &[
                &account.to_le_bytes(),
                &[u8::from(subscribed)],
                name.as_bytes(),
            ],
        );
        self.commit(base, bytes).await
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
        let base = self.end.get();
        let mut bytes = Vec::new();
        self.encode_default_mailboxes(&mut bytes, account, now);
        let id = {
            let index = self.index.borrow();
            let acct = index.accounts.get(&account);
            if acct.is_some_and(|a| a.mailbox(name).is_some())
                || index::DEFAULT_MAILBOXES
                    .iter()
                    .any(|(n, _)| index::mailbox_name_eq(n, name))
            {
                return Err(StoreError::Invalid(format!(
                    "mailbox {name} already exists"
                )));
            }
            let next = acct.map_or(index::DEFAULT_MAILBOXES.len() as u32 + 1, |a| {
                a.next_mailbox_id()
            });
            let mut pending = self.next_mailbox.borrow_mut();
            let slot = pending.entry(account).or_insert(next);
            *slot = (*slot).max(next);
            let id = *slot;
            *slot += 1;
            id
        };
        let uidvalidity = (now.max(1) as u32).wrapping_add(id);
        layout::encode(
            &mut bytes,
            Kind::MailboxCreate,
            &[
                &account.to_le_bytes(),
                &id.to_le_bytes(),
                &uidvalidity.to_le_bytes(),
                &[SpecialUse::None as u8],
                name.as_bytes(),
            ],
        );
        self.commit(base, bytes).await?;
        Ok(id)
    }

    /// IMAP RENAME (not of INBOX: that moves its messages and is the session's job).
    pub async fn rename_mailbox(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
        name: &str,
    ) -> Result<(), StoreError> {
        self.require_mailbox(account, mailbox)?;
        if self.mailbox_id(account, name).is_some() {
            return Err(StoreError::Invalid(format!(
                "mailbox {name} already exists"
            )));
        }
        let base = self.end.get();
        let mut bytes = Vec::new();
        layout::encode(
            &mut bytes,
            Kind::MailboxRename,
            &[
                &account.to_le_bytes(),
                &mailbox.to_le_bytes(),
                name.as_bytes(),
            ],
        );
        self.commit(base, bytes).await
    }

    /// IMAP DELETE: the mailbox and its messages disappear.
    pub async fn delete_mailbox(
        self: &Rc<Self>,
        account: u64,
        mailbox: u32,
    ) -> Result<(), StoreError> {
        self.require_mailbox(account, mailbox)?;
        let base = self.end.get();
        let mut bytes = Vec::new();
        layout::encode(
            &mut bytes,
            Kind::MailboxDelete,
            &[&account.to_le_bytes(), &mailbox.to_le_bytes()],
        );
        self.commit(base, bytes).await
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
        self.require_mailbox(account, from)?;
        self.require_mailbox(account, to)?;
        let base = self.end.get();
        let mut bytes = Vec::new();
        let mut pairs = Vec::new();
        let mut resolved = Vec::new();
        for &uid in uids {
            let Some(entry) = self.with_entry(account, from, uid, Clone::clone) else {
                continue;
            };
            let new_uid = self.encode_append(
                &mut bytes,
                account,
                to,
                entry.internal_date,
                entry.flags,
                &entry.keywords,
                entry.blob,
            );
            pairs.push((uid, new_uid));
            resolved.push((entry.offset, entry.len, Box::new(entry.summary)));
        }
        if bytes.is_empty() {
            return Ok(pairs);
        }
        self.commit_resolved(base, bytes, resolved).await?;
        Ok(pairs)
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
        let mb = index
            .accounts
            .get(&account)?
            .mailboxes
            .iter()
            .find(|m| m.id == mailbox)?;
        let at = mb.messages.binary_search_by_key(&uid, |m| m.uid).ok()?;
        mb.messages.get(at).map(f)
    }

    fn encode_default_mailboxes(&self, out: &mut Vec<u8>, account: u64, now: i64) {
        if self.index.borrow().accounts.contains_key(&account)
            || !self.creating.borrow_mut().insert(account)
        {
            return;
        }
        // UIDVALIDITY: creation time in seconds, distinct per mailbox (RFC 9051 §2.3.1.1).
        let uidvalidity = now.max(1) as u32;
        for (i, (name, special)) in DEFAULT_MAILBOXES.iter().enumerate() {
            let id = i as u32 + 1;
            layout::encode(
                out,
                Kind::MailboxCreate,
                &[
                    &account.to_le_bytes(),
                    &id.to_le_bytes(),
                    &uidvalidity.wrapping_add(i as u32).to_le_bytes(),
                    &[*special as u8],
                    name.as_bytes(),
                ],
            );
        }
    }

    /// Hands out the next UID and MODSEQ of a mailbox before its append is durable.
    fn reserve(&self, account: u64, mailbox: u32) -> (u32, u64) {
        let (uid_next, modseq_next) = self
            .index
            .borrow()
            .accounts
            .get(&account)
            .and_then(|a| a.mailbox_by_id(mailbox))
            .map(|m| (m.uid_next, m.highest_modseq + 1))
            .unwrap_or((1, 1));
        let mut reserved = self.reserved.borrow_mut();
        let slot = reserved
            .entry((account, mailbox))
            .or_insert((uid_next, modseq_next));
        slot.0 = slot.0.max(uid_next);
        slot.1 = slot.1.max(modseq_next);
        let out = *slot;
        *slot = (slot.0 + 1, slot.1 + 1);
        out
    }

    /// Hands out the next MODSEQ of a mailbox for a change that is not an append.
    fn reserve_modseq(&self, account: u64, mailbox: u32) -> u64 {
        let (uid, modseq) = self.reserve(account, mailbox);
        // `reserve` also advanced the UID; give it back (UIDs only grow on appends).
        if let Some(slot) = self.reserved.borrow_mut().get_mut(&(account, mailbox)) {
            slot.0 = uid;
        }
        modseq
    }

    /// Queues encoded records (which start at file offset `base`) and waits until they
    /// are durable and applied to the index.
    async fn commit(self: &Rc<Self>, base: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.commit_resolved(base, bytes, Vec::new()).await
    }

    /// [`Partition::commit`], where the Append records refer to blobs of earlier
    /// commits: `resolved` gives their locations, in order (COPY).
    async fn commit_resolved(
        self: &Rc<Self>,
        base: u64,
        bytes: Vec<u8>,
        resolved: Vec<(u64, u32, Box<super::summary::Summary>)>,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(
            base,
            self.end.get(),
            "records were encoded for another offset"
        );
        let mut ops = Scanner::region(&bytes, base)
            .map(|r| Op::decode(&r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                StoreError::Corrupt(format!("encoded an invalid record at {}", e.offset))
            })?;
        let mut resolved = resolved.into_iter();
        for op in &mut ops {
            if let Op::Append {
                resolved: slot @ None,
                ..
            } = op
            {
                if let Some(r) = resolved.next() {
                    *slot = Some(r);
                }
            }
        }
        self.queue_batch(base, vec![Part::Inline(bytes)], ops).await
    }

    /// Commits parts where a large message's Blob record spans an inline header, the
    /// shared body and the inline rest: the ops are decoded from the inline records,
    /// with `blob_op` (the Blob, which cannot be decoded without its body) in place.
    async fn commit_parts(
        self: &Rc<Self>,
        base: u64,
        parts: Vec<Part>,
        blob_op: Option<Op>,
    ) -> Result<(), StoreError> {
        let Some(blob_op) = blob_op else {
            // All inline: one contiguous buffer.
            let mut bytes = Vec::new();
            for p in parts {
                if let Part::Inline(v) = p {
                    if bytes.is_empty() {
                        bytes = v;
                    } else {
                        bytes.extend_from_slice(&v);
                    }
                }
            }
            return self.commit(base, bytes).await;
        };
        let corrupt = |e: index::CorruptRecord| {
            StoreError::Corrupt(format!("encoded an invalid record at {}", e.offset))
        };
        let (
            Some(Part::Inline(head)),
            Some(Part::Shared(body)),
            Some(Part::Inline(padding)),
            Some(Part::Inline(tail)),
        ) = (parts.first(), parts.get(1), parts.get(2), parts.get(3))
        else {
            return Err(StoreError::Corrupt("unexpected blob layout".into()));
        };
        let Op::Blob { blob, .. } = &blob_op else {
            return Err(StoreError::Corrupt("blob op expected".into()));
        };
        // Records before the Blob header, then the Blob, then records after its padding.
        let before = (*blob - base) as usize;
        let mut ops = Scanner::region(head.get(..before).unwrap_or(&[]), base)
            .map(|r| Op::decode(&r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        ops.push(blob_op);
        let payload_len = head.len() - before - layout::RECORD_HEADER_BYTES + body.len();
        debug_assert_eq!(padding.len(), layout::padding(payload_len));
        let tail_base = base + (head.len() + body.len() + padding.len()) as u64;
        ops.extend(
            Scanner::region(tail, tail_base)
                .map(|r| Op::decode(&r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?,
        );
        self.queue_batch(base, parts, ops).await
    }

    /// Queues a batch for the commit loop and waits until it is durable and applied.
    async fn queue_batch(
        self: &Rc<Self>,
        base: u64,
        parts: Vec<Part>,
        ops: Vec<Op>,
    ) -> Result<(), StoreError> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.end.set(base + len);
        let (done, wait) = oneshot::channel();
        self.queue.borrow_mut().push(Batch {
            base,
            len,
            parts,
            ops,
            done,
        });
        if !self.committing.replace(true) {
            let me = self.clone();
            glommio::spawn_local(async move { me.commit_loop().await }).detach();
        }
        wait.await.unwrap_or(Err(StoreError::Failed(self.id)))
    }

    async fn commit_loop(self: Rc<Self>) {
        loop {
            let mut batches: Vec<Batch> = {
                let mut queue = self.queue.borrow_mut();
                if queue.is_empty() {
                    self.committing.set(false);
                    return;
                }
                match self.durability {
                    // One batch per fdatasync: the strict mode for comparison runs.
                    Durability::Sync => vec![queue.remove(0)],
                    Durability::Group | Durability::None => std::mem::take(&mut *queue),
                }
            };
            let result = self.write_batches(&mut batches).await;
            let mut stats = self.stats.get();
            stats.syncs += 1;
            stats.batches += batches.len() as u64;
            self.stats.set(stats);
            match result {
                Ok(()) => {
                    for batch in batches {
                        let outcome = self.apply(batch.base + batch.len, batch.ops);
                        let _ = batch.done.send(outcome);
                    }
                }
                Err(CommitError::Write(e)) => {
                    // Nothing of these batches is durable or acknowledged: take the
                    // log back to its durable end and go on (a full disk is temporary).
                    let recovered = self.rewind_after_failed_write();
                    tracing::warn!(partition = self.id, error = %e, recovered, "log write failed; its changes were refused");
                    let error = if recovered {
                        e
                    } else {
                        StoreError::Failed(self.id)
                    };
                    for batch in batches {
                        let _ = batch.done.send(Err(error.clone()));
                    }
                }
                Err(CommitError::Sync(e)) => {
                    // After a failed fdatasync the page cache cannot be trusted
                    // (written pages may be marked clean and lost): stop, so a restart
                    // recovers from what is really on disk.
                    tracing::error!(partition = self.id, error = %e, "fdatasync failed; partition stopped until restart");
                    self.failed.set(true);
                    for batch in batches {
                        let _ = batch.done.send(Err(StoreError::Failed(self.id)));
                    }
                }
            }
            self.maybe_checkpoint();
        }
    }

    /// Rewrites the snapshot in the background once `store.checkpoint_bytes` of log
    /// have accumulated since the last one, so replay after a crash stays bounded.
    fn maybe_checkpoint(self: &Rc<Self>) {
        let log_end = self.index.borrow().log_end;
        if self.checkpointing.get() || log_end - self.snapshot_end.get() < self.checkpoint_bytes {
            return;
        }
        self.checkpointing.set(true);
        let snapshot = self.index.borrow().clone();
        let (me, dir) = (self.clone(), self.dir.clone());
        glommio::spawn_local(async move {
            let result = glommio::executor()
                .spawn_blocking(move || snapshot.save_snapshot(&dir).map(|()| snapshot.log_end))
                .await;
            match result {
                Ok(end) => me.snapshot_end.set(end),
                Err(e) => tracing::warn!(partition = me.id, error = %e, "index checkpoint failed"),
            }
            me.checkpointing.set(false);
        })
        .detach();
    }

    /// After a failed write: every queued batch was encoded after the failed ones, so
    /// all fail too; the file goes back to the durable end (the index's end: commits
    /// apply only after their sync), and reservations are forgotten. `false` if the
    /// file could not be truncated (then the partition stops).
    fn rewind_after_failed_write(&self) -> bool {
        let durable_end = self.index.borrow().log_end;
        for batch in self.queue.borrow_mut().drain(..) {
            let _ = batch.done.send(Err(StoreError::NoSpace(
                "an earlier write in the same group commit failed".into(),
            )));
        }
        // No await since the failed write: no task has mapped the torn bytes.
        if let Err(e) = self.appender.set_len(durable_end) {
            tracing::error!(partition = self.id, error = %e, "cannot truncate the torn tail; partition stopped");
            self.failed.set(true);
            return false;
        }
        self.end.set(durable_end);
        self.reserved.borrow_mut().clear();
        self.creating.borrow_mut().clear();
        self.next_mailbox.borrow_mut().clear();
        true
    }

    async fn write_batches(&self, batches: &mut [Batch]) -> Result<(), CommitError> {
        let path = self.dir.join("messages.log");
        if self.failed.get() {
            return Err(CommitError::Sync(StoreError::Failed(self.id)));
        }
        // Batches are contiguous in the file (each was encoded at the previous one's
        // end), so one write covers their inline parts: one syscall per commit, not per
        // message; a large body is written from its own buffer in between.
        let Some(base) = batches.first().map(|b| b.base) else {
            return Ok(());
        };
        // A direct pwrite: copying a commit's bytes into the page cache takes
        // microseconds, while an io_uring buffered write to ext4 is punted to an io-wq
        // worker thread (two context switches per commit). The fdatasync below, which
        // really waits for the disk, stays asynchronous. A short or failed write
        // leaves a torn tail, which `recover` truncates (here: before the next commit).
        use std::os::unix::fs::FileExt;
        let mut offset = base;
        let mut pending: Vec<u8> = Vec::new();
        let write = |bytes: &[u8], at: u64| {
            self.space.wrote(bytes.len() as u64);
            self.appender
                .write_all_at(bytes, at)
                .map_err(|e| CommitError::Write(StoreError::io(&path, e)))
        };
        for batch in batches.iter_mut() {
            debug_assert_eq!(
                batch.base,
                offset + pending.len() as u64,
                "batches not contiguous"
            );
            for part in std::mem::take(&mut batch.parts) {
                match part {
                    Part::Inline(v) if pending.is_empty() => pending = v,
                    Part::Inline(v) => pending.extend_from_slice(&v),
                    Part::Shared(body) => {
                        write(&pending, offset)?;
                        offset += pending.len() as u64;
                        pending.clear();
                        write(&body, offset)?;
                        offset += body.len() as u64;
                    }
                }
            }
        }
        write(&pending, offset)?;
        if self.durability != Durability::None {
            self.writer
                .fdatasync()
                .await
                .map_err(|e| CommitError::Sync(StoreError::glommio(&path, e)))?;
        }
        Ok(())
    }

    /// New mail of `bytes` fits `store.reserve_free_bytes` (a temporary refusal
    /// otherwise; expunges and flag changes are never refused for space).
    fn check_space(&self, bytes: usize) -> Result<(), StoreError> {
        self.space.admit(bytes as u64)
    }

    fn apply(&self, end: u64, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut index = self.index.borrow_mut();
        let mut blobs = BlobCache::default();
        let mut touched: Vec<u64> = Vec::new();
        for op in &ops {
            if let Op::MailboxCreate { account, .. } = op {
                self.creating.borrow_mut().remove(account);
            }
            if let Some(account) = op.account() {
                if touched.last() != Some(&account) && !touched.contains(&account) {
                    touched.push(account);
                }
            }
        }
        index
            .apply_all(ops, &mut blobs)
            .map_err(|e| StoreError::Corrupt(e.0.to_string()))?;
        debug_assert!(end >= index.log_end, "batches applied out of order");
        index.log_end = end;
        drop(index);
        for account in touched {
            self.touched(account);
        }
        Ok(())
    }

    /// Writes an index snapshot (at shutdown, after the last commit).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.index
            .borrow()
            .save_snapshot(&self.dir)
            .map_err(|e| StoreError::io(&self.dir, e))
    }
}
