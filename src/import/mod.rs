//! `shardmail import EMAIL --maildir DIR | --mbox FILE [--mailbox NAME] | --imap URL`:
//! mail from another server into an account, with the server stopped (the import holds
//! the data directory's lock and writes through the same partition code the server
//! uses: every message is durable when counted, and the mailbox rules are the
//! store's).
//!
//! Sources ([`files`], [`imap`]) hand over batches of messages; a batch is stored
//! (appends in flight together share fdatasyncs), then acknowledged to its source —
//! which is how an IMAP import records where it got to and resumes after an
//! interruption. Bare LF line ends become CRLF (IMAP's); CRLF messages are stored byte
//! for byte. A message over `limits.message_size_max` is skipped and counted, never
//! cut. Memory is bounded by one batch, not by the source's size.

pub mod files;
pub mod imap;

use std::rc::Rc;
use std::time::{Instant, SystemTime};

use crate::config::Config;
use crate::store::{self, partition::Partition, Summary};
use crate::users::UserDb;

pub use files::{maildir_flags, Maildir, Mbox};

/// One message to store.
pub struct Message {
    pub mailbox: String,
    pub bytes: Vec<u8>,
    pub flags: u32,
    /// IMAP keywords (`$Forwarded`, `$Label1`…), at most [`KEYWORDS_MAX`].
    pub keywords: Vec<String>,
    pub internal_date: i64,
    /// An interrupted run may have stored it already (the batch in flight when it
    /// stopped): skipped if the mailbox's newest messages hold the same bytes.
    pub maybe_stored: bool,
}

/// Where messages come from, a batch at a time.
pub trait Feed {
    /// Messages and bytes in all, if known up front (for the progress line).
    fn total(&self) -> (u64, u64);
    /// The next messages, `None` when done.
    fn next_batch(&mut self) -> Result<Option<Vec<Message>>, String>;
    /// The last batch is durable.
    fn committed(&mut self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ImportReport {
    pub messages: u64,
    pub bytes: u64,
    pub mailboxes: u64,
    pub skipped_too_big: u64,
    /// Stored by an interrupted earlier run (found, not stored twice).
    pub already_present: u64,
    /// Messages and bytes the source says it has (0 if it cannot tell).
    pub total_messages: u64,
    pub total_bytes: u64,
}

/// Messages stored at once.
const IN_FLIGHT: usize = 64;

/// Keywords kept per imported message (more are dropped: a source's junk must not
/// swamp the mailbox's keyword list, `limits.keywords_per_mailbox_max`).
pub const KEYWORDS_MAX: usize = 16;

/// Imports everything `feed` yields into `email`'s account.
pub fn import(
    config: &Config,
    email: &str,
    feed: &mut dyn Feed,
    progress: &mut dyn FnMut(&ImportReport),
) -> Result<ImportReport, String> {
    let data_dir = &config.data_dir;
    let _lock = crate::shard::preflight::lock_data_dir(data_dir).map_err(|_| {
        format!(
            "the server is running on {} (it holds its lock): stop it, then import \
             (importing into a running server is not available yet)",
            data_dir.display()
        )
    })?;
    let db = UserDb::load(data_dir).map_err(|e| e.to_string())?;
    let user = db
        .user(email)
        .ok_or_else(|| format!("no user {email} (add it first: shardmail user add {email})"))?;
    let meta = store::init(data_dir, config.partitions).map_err(|e| e.to_string())?;
    let part = store::partition_of(user.id, meta.partitions);
    let dir = store::partition_dir(data_dir, part);
    let (total_messages, total_bytes) = feed.total();
    let size_max = config.limits.message_size_max;
    let account = user.id;
    let options = config.store;
    let mut report = ImportReport {
        total_messages,
        total_bytes,
        ..ImportReport::default()
    };
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .map_err(|e| format!("cannot start the store's executor: {e}"))?
        .run(async move {
            let p = Partition::open(part, &dir, options)
                .await
                .map_err(|e| e.to_string())?;
            p.ensure_account(account, now())
                .await
                .map_err(|e| e.to_string())?;
            let mut shown = Instant::now();
            while let Some(batch) = feed.next_batch()? {
                store_batch(&p, account, batch, size_max, &mut report).await?;
                feed.committed()?;
                if shown.elapsed().as_millis() >= 250 {
                    shown = Instant::now();
                    progress(&report);
                }
            }
            progress(&report);
            p.checkpoint().map_err(|e| e.to_string())?;
            Ok::<ImportReport, String>(report)
        })
}

/// Stores a batch (creating mailboxes as they are first named) and waits until all of
/// it is durable.
async fn store_batch(
    p: &Rc<Partition>,
    account: u64,
    batch: Vec<Message>,
    size_max: usize,
    report: &mut ImportReport,
) -> Result<(), String> {
    let mut window: Vec<glommio::Task<Result<u64, String>>> = Vec::new();
    for m in batch {
        if m.bytes.len() > size_max {
            report.skipped_too_big += 1;
            continue;
        }
        let mailbox = match p.mailbox_id(account, &m.mailbox) {
            Some(id) => id,
            None => {
                // Wait for what is in flight: the create is ordered after it.
                for t in window.drain(..) {
                    report.bytes += t.await?;
                    report.messages += 1;
                }
                report.mailboxes += 1;
                p.create_mailbox(account, &m.mailbox, now())
                    .await
                    .map_err(|e| format!("creating {}: {e}", m.mailbox))?
            }
        };
        if m.maybe_stored && already_stored(p, account, mailbox, &m.bytes) {
            report.already_present += 1;
            continue;
        }
        let p = Rc::clone(p);
        window.push(glommio::spawn_local(async move {
            let summary = Summary::parse(&m.bytes).to_bytes();
            p.append(
                account,
                mailbox,
                &m.bytes,
                &summary,
                m.flags,
                &m.keywords,
                m.internal_date,
            )
            .await
            .map_err(|e| format!("storing a message in {}: {e}", m.mailbox))?;
            Ok(m.bytes.len() as u64)
        }));
        if window.len() >= IN_FLIGHT {
            let oldest = window.remove(0);
            report.bytes += oldest.await?;
            report.messages += 1;
        }
    }
    for t in window {
        report.bytes += t.await?;
        report.messages += 1;
    }
    Ok(())
}

/// Whether one of the newest messages of `mailbox` has exactly these bytes.
fn already_stored(p: &Partition, account: u64, mailbox: u32, bytes: &[u8]) -> bool {
    let candidates: Vec<(u64, u32)> = {
        let index = p.index();
        let Some(mb) = index
            .accounts
            .get(&account)
            .and_then(|a| a.mailbox_by_id(mailbox))
        else {
            return false;
        };
        let from = mb.messages.len().saturating_sub(2 * imap::BATCH_MESSAGES);
        mb.messages
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .filter(|e| e.len as usize == bytes.len())
            .map(|e| (e.offset, e.len))
            .collect()
    };
    candidates
        .into_iter()
        .any(|(offset, len)| p.read(offset, len).is_some_and(|s| &s[..] == bytes))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Bare LF → CRLF; a message already in CRLF is returned unchanged.
pub fn crlf(bytes: Vec<u8>) -> Vec<u8> {
    let bare = bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || bytes.get(i - 1) != Some(&b'\r')));
    if !bare {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    let mut prev = 0u8;
    for b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}
