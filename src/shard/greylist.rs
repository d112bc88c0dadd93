//! Greylisting (`antispam.greylist`): the first delivery attempt of a new (client
//! network, envelope sender, recipient) triplet gets `451 4.7.1`; a retry after
//! `antispam.greylist_delay` passes, and the triplet is then remembered for
//! `antispam.greylist_ttl` (real servers retry, most spamware does not).
//!
//! The table is shared by all shards. A triplet is its SHA-256, cut to 64 bits, so
//! the table holds no addresses and the key is the same after an upgrade. Accepted
//! triplets are durable: a writer thread appends `(key, until)` records to
//! `DATA/greylist.bin` and syncs them; the file is read back (and rewritten without
//! expired records) at start. Pending triplets live in memory only: after a restart a
//! sender waits once more. At [`ENTRIES_MAX`] triplets the stale pending ones go; if
//! the table is still full, new triplets pass (mail is never refused for our memory).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::Greylisting;

/// Triplets kept in all (about 40 bytes each).
pub const ENTRIES_MAX: usize = 1_000_000;
/// A pending triplet not retried within this long starts over.
pub const RETRY_WINDOW: Duration = Duration::from_secs(86_400);
/// The file of accepted triplets in the data directory.
pub const FILE: &str = "greylist.bin";
const RECORD: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Seconds since the epoch.
    first_seen: u64,
    /// Accepted until then (0: pending).
    passed_until: u64,
}

/// The answer for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Try again in this long.
    Defer(Duration),
}

/// The shared table and its log.
#[derive(Debug)]
pub struct Greylist {
    entries: Mutex<HashMap<u64, Entry>>,
    writer: mpsc::Sender<(u64, u64)>,
}

/// Seconds since the epoch (the greylist's clock, and the one its callers pass in).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The triplet's key: the client's /24 (IPv4) or /64 (IPv6), the sender, the recipient.
pub fn key(ip: IpAddr, sender: &str, recipient: &str) -> u64 {
    let (family, net) = super::admission::network(ip, 24, 64);
    let text = format!(
        "{family}:{net:x}\n{}\n{}",
        sender.to_ascii_lowercase(),
        recipient.to_ascii_lowercase()
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(first)
}

impl Greylist {
    /// Opens (and compacts) `DATA/greylist.bin` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<Greylist, String> {
        let path = data_dir.join(FILE);
        let now = now_secs();
        let mut entries = HashMap::new();
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path) {
            f.read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        }
        // A torn last record (a crash mid-append) is ignored.
        for record in bytes.chunks_exact(RECORD) {
            let (k, u) = record.split_at(8);
            let (Ok(k), Ok(u)) = (k.try_into(), u.try_into()) else {
                continue;
            };
            let (key, until) = (u64::from_le_bytes(k), u64::from_le_bytes(u));
            if until > now && entries.len() < ENTRIES_MAX {
                let e = entries.entry(key).or_insert(Entry {
                    first_seen: 0,
                    passed_until: 0,
                });
                e.passed_until = e.passed_until.max(until);
            }
        }
        rewrite(&path, &entries)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("greylist".into())
            .spawn(move || write_loop(file, path, rx))
            .map_err(|e| format!("cannot start the greylist writer: {e}"))?;
        Ok(Greylist {
            entries: Mutex::new(entries),
            writer: tx,
        })
    }

    /// Accepted triplets in the table now (for tests and the log).
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The verdict for `key` under `policy`, at `now` (seconds since the epoch).
    pub fn check(&self, key: u64, policy: Greylisting, now: u64) -> Verdict {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= ENTRIES_MAX && !map.contains_key(&key) {
            let window = RETRY_WINDOW.as_secs();
            map.retain(|_, e| e.passed_until > now || now.saturating_sub(e.first_seen) < window);
            if map.len() >= ENTRIES_MAX {
                return Verdict::Pass;
            }
        }
        let e = map.entry(key).or_insert(Entry {
            first_seen: now,
            passed_until: 0,
        });
        if e.passed_until > now {
            return Verdict::Pass;
        }
        let waited = now.saturating_sub(e.first_seen);
        if e.passed_until == 0
            && waited >= policy.delay.as_secs()
            && waited < RETRY_WINDOW.as_secs()
        {
            e.passed_until = now + policy.ttl.as_secs();
            let record = (key, e.passed_until);
            drop(map);
            // A lost record (the writer gone at exit) only greylists the sender again.
            let _ = self.writer.send(record);
            return Verdict::Pass;
        }
        if waited >= RETRY_WINDOW.as_secs() || e.passed_until != 0 {
            // Too late a retry, or a remembered triplet that expired: start over.
            *e = Entry {
                first_seen: now,
                passed_until: 0,
            };
            return Verdict::Defer(policy.delay);
        }
        Verdict::Defer(policy.delay.saturating_sub(Duration::from_secs(waited)))
    }
}

/// Writes the live records afresh (atomically), dropping expired and duplicate ones.
fn rewrite(path: &Path, entries: &HashMap<u64, Entry>) -> Result<(), String> {
    let mut bytes = Vec::with_capacity(entries.len() * RECORD);
    for (key, e) in entries {
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&e.passed_until.to_le_bytes());
    }
    crate::users::write_atomic(path, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_loop(mut file: std::fs::File, path: PathBuf, rx: mpsc::Receiver<(u64, u64)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut bytes = Vec::with_capacity(batch.len() * RECORD);
        for (key, until) in batch {
            bytes.extend_from_slice(&key.to_le_bytes());
            bytes.extend_from_slice(&until.to_le_bytes());
        }
        if let Err(e) = file.write_all(&bytes).and_then(|_| file.sync_data()) {
            tracing::warn!(error = %e, path = %path.display(), "cannot record accepted greylist triplets");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> Greylisting {
        Greylisting {
            delay: Duration::from_secs(300),
            ttl: Duration::from_secs(35 * 86_400),
        }
    }

    #[test]
    fn a_retry_after_the_delay_passes_and_is_remembered_across_a_restart() {
        let dir = std::env::temp_dir().join(format!("shardmail-grey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = Greylist::open(&dir).unwrap();
        let k = key("192.0.2.7".parse().unwrap(), "a@b.example", "u@example.org");
        let t = now_secs();
        assert_eq!(
            g.check(k, policy(), t),
            Verdict::Defer(Duration::from_secs(300))
        );
        assert_eq!(
            g.check(k, policy(), t + 100),
            Verdict::Defer(Duration::from_secs(200))
        );
        assert_eq!(g.check(k, policy(), t + 300), Verdict::Pass);
        assert_eq!(g.check(k, policy(), t + 301), Verdict::Pass);
        // The same network, sender and recipient is the same triplet.
        let same = key(
            "192.0.2.200".parse().unwrap(),
            "A@b.example",
            "U@example.org",
        );
        assert_eq!(same, k);
        let other = key("192.0.2.7".parse().unwrap(), "a@b.example", "v@example.org");
        assert!(matches!(
            g.check(other, policy(), t + 301),
            Verdict::Defer(_)
        ));
        // The writer thread syncs on its own: wait for the record to land.
        let path = dir.join(FILE);
        for _ in 0..200 {
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= RECORD as u64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(g);
        let again = Greylist::open(&dir).unwrap();
        assert_eq!(again.check(k, policy(), t + 302), Verdict::Pass);
        assert!(matches!(
            again.check(other, policy(), t + 302),
            Verdict::Defer(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_late_retry_starts_over() {
        let dir = std::env::temp_dir().join(format!("shardmail-grey2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = Greylist::open(&dir).unwrap();
        let k = key("192.0.2.7".parse().unwrap(), "a@b.example", "u@example.org");
        let t = 1_000_000;
        g.check(k, policy(), t);
        let late = t + RETRY_WINDOW.as_secs() + 1;
        assert_eq!(
            g.check(k, policy(), late),
            Verdict::Defer(Duration::from_secs(300))
        );
        assert_eq!(g.check(k, policy(), late + 300), Verdict::Pass);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
