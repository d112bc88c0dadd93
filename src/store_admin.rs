//! `shardmail store stats` and `shardmail store compact`: what the operator runs
//! against a data directory. Stats are read-only and safe beside a running server.
//! Compaction with the server stopped runs here (holding the data directory's lock,
//! as the server does), partition by partition with progress; with the server
//! running it asks the server (a request file per partition) and waits. The work
//! itself is [`crate::store::compact`].

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::store::{self, compact};
use crate::users::UserDb;

/// Which accounts to keep: those in `users.json`. An empty or unreadable user list
/// keeps everything (a missing file must never delete every account's mail).
fn kept_accounts(data_dir: &Path) -> Result<Box<dyn Fn(u64) -> bool>, String> {
    let db = UserDb::load(data_dir).map_err(|e| {
        format!("{e}; fix users.json before compacting (accounts not in it are dropped)")
    })?;
    if db.users.is_empty() {
        return Ok(Box::new(|_| true));
    }
    let ids: std::collections::HashSet<u64> = db.users.values().map(|u| u.id).collect();
    Ok(Box::new(move |id| ids.contains(&id)))
}

fn partitions(data_dir: &Path, only: Option<u32>) -> Result<Vec<u32>, String> {
    let meta = store::meta(data_dir).map_err(|e| format!("{e} (has the server ever run here?)"))?;
    match only {
        Some(p) if p >= meta.partitions => Err(format!(
            "--partition {p}: this data directory has partitions 0 to {}",
            meta.partitions - 1
        )),
        Some(p) => Ok(vec![p]),
        None => Ok((0..meta.partitions).collect()),
    }
}

/// Prints one line per partition that holds anything, and a total.
pub fn stats(data_dir: &Path, only: Option<u32>) -> Result<(), String> {
    let keep = kept_accounts(data_dir)?;
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>8} {:>10} {:>8}",
        "partition", "log", "live", "garbage", "ratio", "messages", "accounts"
    );
    let mut total = compact::Stats::default();
    for p in partitions(data_dir, only)? {
        let dir = store::partition_dir(data_dir, p);
        if !dir.join("messages.log").exists() {
            continue;
        }
        let s = compact::stats(&dir, &keep).map_err(|e| format!("partition {p}: {e}"))?;
        if s.messages == 0 && s.garbage_bytes() == 0 {
            continue;
        }
        print_stats(&p.to_string(), &s);
        total.log_bytes += s.log_bytes;
        total.live_bytes += s.live_bytes;
        total.message_bytes += s.message_bytes;
        total.messages += s.messages;
        total.accounts += s.accounts;
    }
    print_stats("total", &total);
    Ok(())
}

fn print_stats(label: &str, s: &compact::Stats) {
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>7.1}% {:>10} {:>8}",
        label,
        human(s.log_bytes),
        human(s.live_bytes),
        human(s.garbage_bytes()),
        s.garbage_ratio() * 100.0,
        s.messages,
        s.accounts
    );
}

/// Compacts every partition (or one); with `min_ratio`, only those with at least that
/// share of garbage.
pub fn compact_all(data_dir: &Path, only: Option<u32>, min_ratio: f64) -> Result<(), String> {
    let Ok(_lock) = crate::shard::preflight::lock_data_dir(data_dir) else {
        return request_compaction(data_dir, only, min_ratio);
    };
    let keep = kept_accounts(data_dir)?;
    let list = partitions(data_dir, only)?;
    let (mut before, mut after) = (0u64, 0u64);
    let started = Instant::now();
    for (i, p) in list.iter().enumerate() {
        let dir = store::partition_dir(data_dir, *p);
        if !dir.join("messages.log").exists() {
            continue;
        }
        let s = compact::stats(&dir, &keep).map_err(|e| format!("partition {p}: {e}"))?;
        if s.garbage_ratio() < min_ratio || s.garbage_bytes() == 0 {
            continue;
        }
        let label = format!("partition {p} ({}/{})", i + 1, list.len());
        let t = Instant::now();
        let mut last = Instant::now();
        let mut show = |done: u64, total: u64| {
            if last.elapsed().as_millis() < 250 && done < total {
                return;
            }
            last = Instant::now();
            let secs = t.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / secs;
            let eta = if rate > 0.0 {
                (total.saturating_sub(done)) as f64 / rate
            } else {
                0.0
            };
            eprint!(
                "\r{label}: {} of {} copied, {:.1} MB/s, ETA {eta:.0} s   ",
                human(done),
                human(total),
                rate / 1e6
            );
            let _ = std::io::stderr().flush();
        };
        let report =
            compact::compact(&dir, &keep, &mut show).map_err(|e| format!("partition {p}: {e}"))?;
        eprintln!();
        println!(
            "{label}: {} → {} ({} messages; {} deleted accounts dropped) in {:.1} s",
            human(report.before.log_bytes),
            human(report.after_bytes),
            report.before.messages,
            report.dropped_accounts,
            t.elapsed().as_secs_f64()
        );
        before += report.before.log_bytes;
        after += report.after_bytes;
    }
    println!(
        "compacted: {} → {} in {:.1} s",
        human(before),
        human(after),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The server is running: ask it to compact (a request file per partition, which
/// the owning shard removes when done) and wait, showing progress.
fn request_compaction(data_dir: &Path, only: Option<u32>, min_ratio: f64) -> Result<(), String> {
    let keep = kept_accounts(data_dir)?;
    let mut waiting = Vec::new();
    for p in partitions(data_dir, only)? {
        let dir = store::partition_dir(data_dir, p);
        if !dir.join("messages.log").exists() {
            continue;
        }
        let s = compact::stats(&dir, &keep).map_err(|e| format!("partition {p}: {e}"))?;
        if s.garbage_ratio() < min_ratio || s.garbage_bytes() == 0 {
            continue;
        }
        let request = dir.join(crate::shard::compaction::REQUEST);
        std::fs::write(&request, b"")
            .map_err(|e| format!("cannot write {}: {e}", request.display()))?;
        waiting.push(request);
    }
    let total = waiting.len();
    eprintln!("the server is running: it compacts {total} partitions now (logs say \"compacted\")");
    let started = Instant::now();
    let deadline = started + std::time::Duration::from_secs(24 * 3600);
    while !waiting.is_empty() {
        if Instant::now() > deadline {
            return Err("the server did not finish within a day; see its log".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        waiting.retain(|r| r.exists());
        eprint!(
            "\r{}/{total} partitions compacted, {:.0} s   ",
            total - waiting.len(),
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    println!(
        "compacted {total} partitions in {:.1} s (`shardmail store stats` shows the result)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A byte count for people: `1.5 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match UNITS.get(unit) {
        Some(u) if unit > 0 => format!("{value:.1} {u}"),
        _ => format!("{n} B"),
    }
}
