//! The mailstore (DESIGN.md §4): partitions of an append-only log plus a derived index.
//!
//! A data directory holds `store.json` (format and partition count, fixed at creation)
//! and `partitions/NNNN/{messages.log,index.snap}`. Accounts map to partitions by a
//! hash of their id; partitions map to shards by `partition % shards`. This module owns
//! the on-disk format; it never speaks a protocol and never blocks a shard on fsync.

pub mod change;
pub mod compact;
pub mod index;
pub mod layout;
pub mod op;
pub mod partition;
pub mod space;
pub mod summary;
pub mod usage;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use index::{flags, AccountIndex, Index, MailboxIndex, MessageEntry, SpecialUse};
pub use partition::Partition;

pub use summary::Summary;

/// Errors from the store; each names the file involved.
#[derive(Debug, Clone)]
pub enum StoreError {
    Io(String),
    Corrupt(String),
    /// The partition stopped after a write error; restart recovers it.
    Failed(u32),
    /// The request does not fit the mailbox state (exists already, no such mailbox).
    /// The text is for clients: it never names a file.
    Invalid(String),
    /// No room for new data: the filesystem is full (ENOSPC, EDQUOT) or below
    /// `store.reserve_free_bytes`. Temporary: it clears once space is freed.
    NoSpace(String),
}

impl StoreError {
    pub fn io(path: &Path, e: std::io::Error) -> StoreError {
        let text = format!("{}: {e}", path.display());
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace(text),
            _ => StoreError::Io(text),
        }
    }

    /// True for a temporary lack of space (the client may retry later).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace(_))
    }
    pub fn glommio<T: fmt::Debug>(path: &Path, e: glommio::GlommioError<T>) -> StoreError {
        StoreError::Io(format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(s) => write!(f, "store I/O error: {s}"),
            StoreError::Corrupt(s) => write!(f, "store is damaged: {s}"),
            StoreError::Failed(p) => write!(f, "partition {p} stopped after a write error"),
            StoreError::Invalid(s) => f.write_str(s),
            StoreError::NoSpace(s) => write!(f, "no space for new data: {s}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A message as it is stored: our header block (trace and authentication headers,
/// possibly empty) followed by the body as received. Both are refcounted; the body of
/// a large message is a map of its spool file, written to the log without a copy.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub head: bytes::Bytes,
    pub body: bytes::Bytes,
    /// crc32c of `body` (computed with the summary, off the reactor for large bodies).
    pub body_crc: u32,
}

impl StoredMessage {
    pub fn new(head: bytes::Bytes, body: bytes::Bytes) -> StoredMessage {
        let body_crc = crc32c::crc32c(&body);
        StoredMessage {
            head,
            body,
            body_crc,
        }
    }

    /// A small message held in one piece (tests, benches).
    pub fn from_slice(message: &[u8]) -> StoredMessage {
        StoredMessage::new(bytes::Bytes::new(), bytes::Bytes::copy_from_slice(message))
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// crc32c of head ++ body.
    pub fn crc_after(&self, crc: u32) -> u32 {
        let crc = crc32c::crc32c_append(crc, &self.head);
        crc32c::crc32c_combine(crc, self.body_crc, self.body.len())
    }
}

/// `store.json`: what a data directory was created with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreMeta {
    pub format: u32,
    pub partitions: u32,
}

/// Current on-disk format version.
pub const FORMAT: u32 = 1;

/// Reads `store.json`, creating it with `partitions` on a new data directory.
pub fn init(data_dir: &Path, partitions: u32) -> Result<StoreMeta, StoreError> {
    let path = data_dir.join("store.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let meta: StoreMeta = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        if meta.format != FORMAT {
            return Err(StoreError::Corrupt(format!(
                "{}: format {} but this shardmail reads format {FORMAT}",
                path.display(),
                meta.format
            )));
        }
        if meta.partitions != partitions {
            tracing::info!(
                configured = partitions,
                existing = meta.partitions,
                "server.partitions is fixed at creation; using the existing count"
            );
        }
        return Ok(meta);
    }
    std::fs::create_dir_all(data_dir.join("partitions"))
        .map_err(|e| StoreError::io(data_dir, e))?;
    let meta = StoreMeta {
        format: FORMAT,
        partitions,
    };
    let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    crate::users::write_atomic(&path, text.as_bytes()).map_err(|e| StoreError::io(&path, e))?;
    Ok(meta)
}

/// Reads `store.json` of an existing data directory.
pub fn meta(data_dir: &Path) -> Result<StoreMeta, StoreError> {
    let path = data_dir.join("store.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
}

pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join("partitions").join(format!("{partition:04}"))
}

/// The partition that owns an account (stable for the life of the data directory).
pub fn partition_of(account: u64, partitions: u32) -> u32 {
    // splitmix64 finaliser: account ids are random already, but mixing keeps the
    // spread even if a future id scheme is sequential.
    let mut z = account.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(partitions.max(1))) as u32
}

/// The shard that owns a partition.
pub fn shard_of(partition: u32, shards: usize) -> usize {
    partition as usize % shards.max(1)
}
