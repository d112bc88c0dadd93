//! Message bodies on their way in, kept out of memory: the IO side of
//! [`crate::proto::Incoming`].
//!
//! A session stages body bytes; [`Spooler::tend`] moves them to an unnamed temporary
//! file (`O_TMPFILE` in `DATA/spool`, so nothing is left behind by a crash) whenever
//! they pass `store.spool_threshold_bytes`. A finished body becomes one `Bytes` — the
//! staged bytes themselves for a small message, a read-only map of the spool file for
//! a large one — which the store writes to the log without copying it again. A session
//! holds at most the threshold in memory, however large the message or slow the
//! client (DESIGN.md §10). Each spool file holds one descriptor of the connection
//! capacity. Shard-local.

use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::admission::{Connections, FileTicket};
use crate::proto::Incoming;

/// Room beyond the threshold in a staging buffer: the most one read can add.
const STAGING_SLACK_BYTES: usize = 64 * 1024;

/// Why a body could not be kept.
#[derive(Debug)]
pub enum SpoolError {
    /// The filesystem is full (ENOSPC, EDQUOT): temporary.
    NoSpace,
    /// No descriptor left under the open-file limit: temporary.
    NoDescriptor,
    Io(io::Error),
}

impl SpoolError {
    fn from_io(e: io::Error) -> SpoolError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::NoSpace,
            Some(libc::EMFILE) | Some(libc::ENFILE) => SpoolError::NoDescriptor,
            _ => SpoolError::Io(e),
        }
    }

    /// The SMTP reply (RFC 3463: 4.3.1 mail system full / insufficient resources).
    pub fn smtp_reply(&self) -> String {
        match self {
            SpoolError::NoSpace => "452 4.3.1 Insufficient system storage; try again later".into(),
            SpoolError::NoDescriptor => {
                "452 4.3.1 Insufficient system resources; try again later".into()
            }
            SpoolError::Io(_) => {
                "451 4.3.0 Temporary failure storing the message, try again later".into()
            }
        }
    }
}

/// One body's spool file.
#[derive(Debug)]
struct Spool {
    file: std::fs::File,
    len: u64,
    generation: u64,
    _ticket: FileTicket,
}

/// Where a connection's incoming body goes once it outgrows memory.
#[derive(Debug)]
pub struct Spooler {
    dir: PathBuf,
    threshold: usize,
    connections: Arc<Connections>,
    spool: Option<Spool>,
    /// The current body could not be spooled: it is being received and thrown away,
    /// and will be refused with this error when it ends.
    failed: Option<(u64, SpoolError)>,
}

/// The spool directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("spool")
}

impl Spooler {
    pub fn new(data_dir: &Path, threshold: usize, connections: Arc<Connections>) -> Spooler {
        Spooler {
            dir: dir(data_dir),
            threshold,
            connections,
            spool: None,
            failed: None,
        }
    }

    /// Call after every `receive`: moves staged bytes of a growing body to its spool
    /// file, and drops the spool of a body the session replaced (refused and
    /// discarded, or followed by a newer one).
    pub fn tend(&mut self, incoming: Option<&mut Incoming>) {
        // No body now: the one spooled may just have completed and wait in an action
        // for `finish` — keep it. A stale spool goes when the next body (another
        // generation) begins, or with the connection.
        let Some(body) = incoming else {
            return;
        };
        let generation = body.generation();
        if self
            .spool
            .as_ref()
            .is_some_and(|s| s.generation != generation)
        {
            self.spool = None;
        }
        if self.failed.as_ref().is_some_and(|(g, _)| *g != generation) {
            self.failed = None;
        }
        if body.staged.len() < self.threshold {
            return;
        }
        let staged = body.take_staged();
        // The next bytes land in a buffer that will not need to grow: one receive adds
        // at most an input buffer's worth before the next spill.
        body.staged = Vec::with_capacity(self.threshold + STAGING_SLACK_BYTES);
        if self.failed.is_some() {
            return; // already refused: count the bytes, keep none
        }
        if let Err(e) = self.write(generation, &staged) {
            tracing::warn!(error = ?e, "cannot spool an incoming message; it will be refused");
            self.spool = None;
            self.failed = Some((generation, e));
        }
    }

    fn write(&mut self, generation: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        if self.spool.is_none() {
            let ticket = self.connections.file().ok_or(SpoolError::NoDescriptor)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(&self.dir)
                .map_err(SpoolError::from_io)?;
            self.spool = Some(Spool {
                file,
                len: 0,
                generation,
                _ticket: ticket,
            });
        }
        let Some(spool) = self.spool.as_mut() else {
            return Err(SpoolError::NoDescriptor);
        };
        // A page-cache copy on the shard, as the store's appends (no fsync: a spool
        // file is never acknowledged; the store's commit is).
        spool
            .file
            .write_all_at(bytes, spool.len)
            .map_err(SpoolError::from_io)?;
        spool.len += bytes.len() as u64;
        Ok(())
    }

    /// The whole body, once complete.
    pub fn finish(&mut self, mut body: Incoming) -> Result<Bytes, SpoolError> {
        let generation = body.generation();
        if let Some((g, e)) = self.failed.take() {
            if g == generation {
                self.spool = None;
                return Err(e);
            }
        }
        if body.spilled == 0 {
            self.spool = None;
            return Ok(Bytes::from(std::mem::take(&mut body.staged)));
        }
        let staged = body.take_staged();
        self.write(generation, &staged)?;
        let Some(spool) = self.spool.take() else {
            return Err(SpoolError::Io(io::Error::other("spool file missing")));
        };
        if spool.len != body.len() {
            return Err(SpoolError::Io(io::Error::other(
                "spool file length mismatch",
            )));
        }
        map(spool)
    }
}

/// A read-only map of a finished spool file as `Bytes` (the map, the file and its
/// descriptor slot live until the last clone is dropped).
fn map(spool: Spool) -> Result<Bytes, SpoolError> {
    // SAFETY: the file is unnamed (O_TMPFILE) and owned by this value: no other
    // process can open it, and nothing in this process writes or truncates it after
    // this point, so the mapped bytes never change under a reader.
    let map = unsafe { memmap2::Mmap::map(&spool.file) }.map_err(SpoolError::from_io)?;
    Ok(Bytes::from_owner(MappedSpool { map, _spool: spool }))
}

struct MappedSpool {
    map: memmap2::Mmap,
    _spool: Spool,
}

impl AsRef<[u8]> for MappedSpool {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// Creates `DATA/spool` (at start) and checks that O_TMPFILE works there.
pub fn prepare(data_dir: &Path) -> Result<(), String> {
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("server.data_dir: cannot create {}: {e}", dir.display()))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir)
        .map(drop)
        .map_err(|e| {
            format!(
                "server.data_dir: cannot create temporary files in {} ({e}); the filesystem \
                 must support O_TMPFILE (ext4, xfs, btrfs, tmpfs do)",
                dir.display()
            )
        })
}
