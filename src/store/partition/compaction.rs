//! Compaction of a partition while the server runs (on its owning shard).
//!
//! 1. The index is cloned at log offset E (a short copy on the shard; commits go on);
//!    on the blocking pool the compacted log is written as of E beside the partition,
//!    throttled to `store.compaction_bytes_per_sec`, and verified (`compact::stage`).
//! 2. New changes are paused before they are planned (their records would carry the
//!    old file's offsets) and the commits in flight drain. What was committed after E
//!    is appended to the staged log with its blob offsets translated and fsynced.
//! 3. The live index is remapped to the new offsets (numbers, flags, tombstones and
//!    flag-change logs unchanged: sessions notice nothing), the old snapshot removed,
//!    the new log renamed into place, the handles reopened; changes resume.
//!
//! A crash at any point leaves the old log or the new, complete one (the rename is the
//! switch). Readers holding a map of the old file keep reading it until they drop it
//! (the IMAP layer splices from the map it planned with). Never runs twice at once on
//! a partition, nor beside an index checkpoint.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{LogFiles, Partition};
use crate::store::compact::{self, Report};
use crate::store::StoreError;

/// Which accounts compaction keeps (the users still in `users.json`).
pub type Keep = Arc<dyn Fn(u64) -> bool + Send + Sync>;

impl Partition {
    /// Waits while compaction swaps the log.
    pub(super) async fn unpaused(&self) {
        std::future::poll_fn(|cx| {
            if !self.paused.get() {
                return std::task::Poll::Ready(());
            }
            self.resume.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }

    fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        if !paused {
            for waker in self.resume.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Whether a compaction is running.
    pub fn is_compacting(&self) -> bool {
        self.compacting.get()
    }

    /// Compacts this partition with the server running (see the module doc).
    pub async fn compact_online(
        self: &Rc<Self>,
        keep: Keep,
        bytes_per_sec: u64,
    ) -> Result<Report, StoreError> {
        if self.compacting.replace(true) {
            return Err(StoreError::Corrupt(
                "a compaction is already running".into(),
            ));
        }
        // No snapshot may be written meanwhile: it would describe one log and name the
        // other. Wait for one in flight.
        while self.checkpointing.replace(true) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let result = self.compact_inner(keep, bytes_per_sec).await;
        self.set_paused(false);
        self.checkpointing.set(false);
        self.compacting.set(false);
        if result.is_err() {
            compact::discard(&self.dir);
        } else {
            // A snapshot of the new log soon, so a restart need not replay it all.
            self.snapshot_end.set(0);
            self.maybe_checkpoint();
        }
        result
    }

    async fn compact_inner(self: &Rc<Self>, keep: Keep, rate: u64) -> Result<Report, StoreError> {
        let snapshot = self.index.borrow().clone();
        let base = snapshot.log_end;
        let dir = self.dir.clone();
        let keep_bulk = keep.clone();
        let mut staged = glommio::executor()
            .spawn_blocking(move || {
                let log = super::map_log(&dir)?;
                compact::stage(
                    &dir,
                    &snapshot,
                    &log,
                    base,
                    &*keep_bulk,
                    Some(rate),
                    &mut |_, _| {},
                )
            })
            .await?;
        // Pause new changes; let those already queued become durable.
        self.set_paused(true);
        while self.committing.get() || !self.queue.borrow().is_empty() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if self.failed.get() {
            return Err(StoreError::Failed(self.id));
        }
        let end = self.index.borrow().log_end;
        // Bounded by what arrives while the bulk is copied; beyond 1 GiB give up (the
        // next check starts again from a fresh copy) rather than pause for long.
        let tail_len = u32::try_from(end - base)
            .ok()
            .filter(|n| *n <= 1 << 30)
            .ok_or_else(|| {
                StoreError::Invalid("too much arrived during compaction; will retry".into())
            })?;
        let tail = self
            .read(base, tail_len)
            .map(|s| s.to_vec())
            .ok_or_else(|| StoreError::Corrupt("the log's tail is not readable".into()))?;
        let dir = self.dir.clone();
        let keep_tail = keep.clone();
        staged = glommio::executor()
            .spawn_blocking(move || {
                compact::append_tail(&dir, &mut staged, &tail, base, &*keep_tail).map(|()| staged)
            })
            .await?;
        let remapped = compact::remap(&self.index.borrow(), &staged, &*keep)?;
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || compact::swap(&dir))
            .await?;
        // From here the new log is the partition's: open it or stop.
        if let Err(e) = self.reopen().await {
            tracing::error!(partition = self.id, error = %e, "cannot reopen the compacted log; partition stopped until restart");
            self.failed.set(true);
            return Err(e);
        }
        let after = staged.len;
        *self.index.borrow_mut() = remapped;
        self.end.set(after);
        Ok(Report {
            before: staged.before,
            after_bytes: after,
            dropped_accounts: staged.dropped_accounts,
        })
    }

    /// Opens the (new) log file's handles and map.
    async fn reopen(&self) -> Result<(), StoreError> {
        let files = LogFiles::open(&self.dir).await?;
        *self.writer.borrow_mut() = Rc::new(files.writer);
        *self.reader.borrow_mut() = files.reader;
        *self.appender.borrow_mut() = files.appender;
        *self.map.borrow_mut() = Rc::new(files.map);
        Ok(())
    }
}
