//! Group commit of a partition: queued batches are written with one `pwrite` (a large
//! message body from its own buffer) and covered by one `fdatasync`; only then are
//! their ops applied to the index and the waiting tasks told. A failed write rewinds
//! the log to its durable end (a full disk is temporary); a failed fdatasync stops the
//! partition until a restart. Shard-local; no protocol here.

use std::rc::Rc;

use futures_channel::oneshot;

use super::{CommitStats, Partition};
use crate::config::Durability;
use crate::store::index::{BlobCache, Op};
use crate::store::layout::Scanner;
use crate::store::StoreError;

/// One change's bytes and ops, waiting for its group commit.
pub(super) struct Batch {
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

pub(super) enum Part {
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

/// How a group commit failed.
enum CommitError {
    /// Writing failed (ENOSPC, EDQUOT…): nothing was synced; the log can be rewound.
    Write(StoreError),
    /// The fdatasync failed, or the partition had stopped.
    Sync(StoreError),
}

impl Partition {
    /// Queues a change's bytes (`parts`, starting at file offset `base`) with the ops
    /// they encode, and waits until they are durable and applied.
    pub(super) async fn commit_ops(
        self: &Rc<Self>,
        base: u64,
        parts: Vec<Part>,
        ops: Vec<Op>,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(
            base,
            self.end.get(),
            "records were encoded for another offset"
        );
        debug_assert!(
            decodes_to(&parts, base, &ops),
            "encoded records differ from their ops"
        );
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
            let mut stats: CommitStats = self.stats.get();
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
    pub(super) fn maybe_checkpoint(self: &Rc<Self>) {
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
        if let Err(e) = self.appender.borrow().set_len(durable_end) {
            tracing::error!(partition = self.id, error = %e, "cannot truncate the torn tail; partition stopped");
            self.failed.set(true);
            return false;
        }
        self.end.set(durable_end);
        self.reservations.borrow_mut().clear();
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
        // leaves a torn tail, which is rewound (or truncated by `recover` at start).
        use std::os::unix::fs::FileExt;
        let mut offset = base;
        let mut pending: Vec<u8> = Vec::new();
        let write = |bytes: &[u8], at: u64| {
            self.space.wrote(bytes.len() as u64);
            self.appender
                .borrow()
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
            let writer = self.writer.borrow().clone();
            writer
                .fdatasync()
                .await
                .map_err(|e| CommitError::Sync(StoreError::glommio(&path, e)))?;
        }
        Ok(())
    }

    fn apply(&self, end: u64, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut index = self.index.borrow_mut();
        let mut blobs = BlobCache::default();
        let mut touched: Vec<u64> = Vec::new();
        {
            let mut numbers = self.reservations.borrow_mut();
            for op in &ops {
                numbers.applied(op);
                if let Some(account) = op.account() {
                    if touched.last() != Some(&account) && !touched.contains(&account) {
                        touched.push(account);
                    }
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
}

/// Debug builds check the one definition both ways: the encoded records decode to
/// exactly the ops that will be applied (the Blob of a large message aside, whose
/// body is not inline; `resolved` locations are in memory only).
fn decodes_to(parts: &[Part], base: u64, ops: &[Op]) -> bool {
    let [Part::Inline(bytes)] = parts else {
        return true;
    };
    let decoded: Result<Vec<Op>, _> = Scanner::region(bytes, base)
        .map(|r| Op::decode(&r))
        .collect();
    let Ok(decoded) = decoded else { return false };
    let strip = |op: &Op| match op {
        Op::Append { .. } => {
            let mut o = op.clone();
            if let Op::Append { resolved, .. } = &mut o {
                *resolved = None;
            }
            o
        }
        other => other.clone(),
    };
    decoded.len() == ops.len() && decoded.iter().zip(ops).all(|(d, o)| *d == strip(o))
}
