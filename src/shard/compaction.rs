//! When a running server compacts its partitions: each shard looks at the partitions
//! it owns every `store.compaction_check_secs` (measuring garbage on the blocking
//! pool) and compacts one whose garbage passes `store.compaction_garbage_ratio` and
//! `store.compaction_min_garbage_bytes`; and, every two seconds, for a request left by
//! `shardmail store compact` (`partitions/NNNN/compact.request`, removed when done).
//! One compaction at a time per shard. The work is `Partition::compact_online`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shard;
use crate::store::compact;
use crate::store::partition::Keep;

/// The file `shardmail store compact` leaves in a partition's directory.
pub const REQUEST: &str = "compact.request";

const REQUEST_POLL: Duration = Duration::from_secs(2);

pub fn start(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move { watch(shard).await }).detach();
}

/// Accounts to keep: those in the shard's copy of `users.json` (all of them if it
/// lists none, so an empty or missing file never deletes mail).
fn keep(shard: &Shard) -> Keep {
    let users = shard.users.borrow().clone();
    if users.users.is_empty() {
        return Arc::new(|_| true);
    }
    let ids: std::collections::HashSet<u64> = users.users.values().map(|u| u.id).collect();
    Arc::new(move |id| ids.contains(&id))
}

async fn watch(shard: Rc<Shard>) {
    let options = shard.config().store.compaction;
    let mut last_check = Instant::now();
    loop {
        let pause = REQUEST_POLL.min(options.check_interval);
        futures_lite::future::or(
            async {
                glommio::timer::sleep(pause).await;
            },
            shard.shutdown.wait(),
        )
        .await;
        if shard.shutdown.is_fired() {
            return;
        }
        let measure = options.garbage_ratio > 0.0 && last_check.elapsed() >= options.check_interval;
        if measure {
            last_check = Instant::now();
        }
        let mut ids: Vec<u32> = shard.partitions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(p) = shard.partitions.get(&id).cloned() else {
                continue;
            };
            let dir = crate::store::partition_dir(&shard.config().data_dir, id);
            let request = dir.join(REQUEST);
            let requested = request.exists();
            if !requested && !measure {
                continue;
            }
            shard.refresh_users();
            let keep = keep(&shard);
            let due = requested
                || {
                    let (d, k) = (dir.clone(), keep.clone());
                    let stats = glommio::executor()
                        .spawn_blocking(move || compact::stats(&d, &*k))
                        .await;
                    match stats {
                        Ok(s) => {
                            shard.store_stats.borrow_mut().insert(id, s);
                            s.garbage_ratio() >= options.garbage_ratio
                                && s.garbage_bytes() >= options.min_garbage_bytes
                        }
                        Err(e) => {
                            tracing::warn!(partition = id, error = %e, "cannot measure the partition's garbage");
                            false
                        }
                    }
                };
            if !due || shard.shutdown.is_fired() {
                continue;
            }
            let started = Instant::now();
            tracing::info!(partition = id, requested, "compacting");
            match p.compact_online(keep, options.bytes_per_sec).await {
                Ok(r) => {
                    let after = crate::store::compact::Stats {
                        log_bytes: r.after_bytes,
                        live_bytes: r.after_bytes,
                        ..r.before
                    };
                    shard.store_stats.borrow_mut().insert(id, after);
                    tracing::info!(
                        partition = id,
                        before = r.before.log_bytes,
                        after = r.after_bytes,
                        messages = r.before.messages,
                        dropped_accounts = r.dropped_accounts,
                        ms = started.elapsed().as_millis() as u64,
                        "compacted"
                    )
                }
                Err(e) => {
                    tracing::warn!(partition = id, error = %e, "compaction failed; the log is unchanged")
                }
            }
            if requested {
                let _ = std::fs::remove_file(&request);
            }
        }
    }
}
