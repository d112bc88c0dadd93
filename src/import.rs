//! `shardmail import EMAIL --maildir DIR | --mbox FILE [--mailbox NAME]`: mail from
//! another server's files into an account, with the server stopped (the import holds
//! the data directory's lock and writes through the same partition code the server
//! uses: every message is durable when counted, and the mailbox rules are the
//! store's).
//!
//! Maildir: the top-level `cur`/`new` are INBOX; Maildir++ folders `.A.B` become `A/B`;
//! a directory tree of Maildirs (what `shardmail export` writes: `INBOX/`, `Work/2026/`)
//! is read the same way. Flags come from the `:2,` info (`D F R S T`), INTERNALDATE
//! from the file's modification time. Mbox: messages split at `From ` lines, `>From `
//! unquoted (mboxrd), flags from `Status:`/`X-Status:`, INTERNALDATE from the `From `
//! line. Bare LF line ends become CRLF (IMAP's); CRLF messages are stored byte for
//! byte. A message over `limits.message_size_max` is skipped and counted, never cut.
//! Never reads outside the source it was given, never follows symlinks out of it.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use crate::config::Config;
use crate::store::{self, flags, partition::Partition, Summary};
use crate::users::UserDb;

/// Where the mail comes from.
pub enum Source {
    Maildir(PathBuf),
    Mbox { file: PathBuf, mailbox: String },
}

/// One message to store.
pub struct Message {
    pub mailbox: String,
    pub bytes: Vec<u8>,
    pub flags: u32,
    pub internal_date: i64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ImportReport {
    pub messages: u64,
    pub bytes: u64,
    pub mailboxes: u64,
    pub skipped_too_big: u64,
}

/// Messages imported at once (each append is its own durable commit; in flight
/// together they share fdatasyncs).
const IN_FLIGHT: usize = 64;

pub fn import(
    config: &Config,
    email: &str,
    source: &Source,
    progress: &mut dyn FnMut(&ImportReport, u64, u64),
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
    let messages = match source {
        Source::Maildir(root) => maildir_messages(root)?,
        Source::Mbox { file, mailbox } => mbox_messages(file, mailbox)?,
    };
    let total_bytes: u64 = messages.iter().map(|m| m.bytes.len() as u64).sum();
    let total = messages.len() as u64;
    let size_max = config.limits.message_size_max;
    let account = user.id;
    let options = config.store;
    let mut report = ImportReport::default();
    let mut shown = Instant::now();
    let result = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
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
            let mut window: Vec<glommio::Task<Result<u64, String>>> = Vec::new();
            for m in messages {
                if m.bytes.len() > size_max {
                    report.skipped_too_big += 1;
                    continue;
                }
                let mailbox = match p.mailbox_id(account, &m.mailbox) {
                    Some(id) => id,
                    None => {
                        // Wait for what is in flight: a create is ordered after it.
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
                let p2 = Rc::clone(&p);
                window.push(glommio::spawn_local(async move {
                    let summary = Summary::parse(&m.bytes).to_bytes();
                    p2.append(
                        account,
                        mailbox,
                        &m.bytes,
                        &summary,
                        m.flags,
                        &[],
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
                if shown.elapsed().as_millis() >= 250 {
                    shown = Instant::now();
                    progress(&report, total, total_bytes);
                }
            }
            for t in window {
                report.bytes += t.await?;
                report.messages += 1;
            }
            progress(&report, total, total_bytes);
            p.checkpoint().map_err(|e| e.to_string())?;
            Ok::<ImportReport, String>(report)
        })?;
    Ok(result)
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

// ---- Maildir ----

/// Every message of every Maildir under `root`, mailbox by mailbox (sorted by name,
/// messages by file name).
pub fn maildir_messages(root: &Path) -> Result<Vec<Message>, String> {
    if !root.join("cur").is_dir() && !root.join("new").is_dir() && !root.is_dir() {
        return Err(format!("{}: not a directory", root.display()));
    }
    let mut folders = Vec::new();
    collect_folders(root, root, &mut folders)?;
    folders.sort();
    let mut out = Vec::new();
    for (name, dir) in folders {
        let mut files = Vec::new();
        for sub in ["cur", "new"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let meta = entry
                    .metadata()
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
                if meta.is_file() {
                    files.push((
                        entry.file_name().to_string_lossy().into_owned(),
                        entry.path(),
                        meta,
                    ));
                }
            }
        }
        // Unique names start with the delivery time, then a sequence: natural order
        // (digit runs as numbers) is arrival order, `…_2` before `…_10`. A folder
        // written by `shardmail export` keeps its UID order (a message APPENDed with
        // an old date is not moved to the front).
        if files.iter().all(|f| exported_uid(&f.0).is_some()) {
            files.sort_by_key(|f| exported_uid(&f.0));
        } else {
            files.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        }
        for (file_name, path, meta) in files {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let internal_date = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or_else(now, |d| d.as_secs() as i64);
            out.push(Message {
                mailbox: name.clone(),
                bytes: crlf(bytes),
                flags: maildir_flags(&file_name),
                internal_date,
            });
        }
    }
    Ok(out)
}

/// The UID in a name `shardmail export` wrote: `DATE.UIDVALIDITY_UID.shardmail,S=…`.
fn exported_uid(name: &str) -> Option<u32> {
    let (head, _) = name.split_once(".shardmail")?;
    head.rsplit_once('_')?.1.parse().ok()
}

/// Compares names with runs of digits as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let n = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let m = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..n], &y[..m]);
                let trim = |d: &[u8]| -> usize { d.iter().take_while(|c| **c == b'0').count() };
                let (dx, dy) = (&dx[trim(dx)..], &dy[trim(dy)..]);
                let order = dx.len().cmp(&dy.len()).then_with(|| dx.cmp(dy));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
                x = &x[n..];
                y = &y[m..];
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// (mailbox name, directory) of each Maildir below `root`: `root` itself is INBOX, a
/// `.A.B` child is `A/B` (Maildir++), any other child directory holding `cur` is a
/// mailbox named by its path (nested), searched recursively. Symlinks are not
/// followed.
fn collect_folders(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), String> {
    if dir.join("cur").is_dir() {
        let name = if dir == root {
            "INBOX".to_string()
        } else {
            let rel = dir
                .strip_prefix(root)
                .unwrap_or(dir)
                .to_string_lossy()
                .into_owned();
            match rel.strip_prefix('.') {
                Some(dotted) if !rel.contains('/') => dotted.replace('.', "/"),
                _ => rel,
            }
        };
        out.push((name, dir.to_path_buf()));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let skip = matches!(name.to_str(), Some("cur" | "new" | "tmp"));
        if kind.is_dir() && !kind.is_symlink() && !skip {
            collect_folders(root, &entry.path(), out)?;
        }
    }
    Ok(())
}

/// Flags from a Maildir file name's `:2,` info.
pub fn maildir_flags(file_name: &str) -> u32 {
    let Some((_, info)) = file_name.rsplit_once(":2,") else {
        return 0;
    };
    info.chars().fold(0, |f, c| {
        f | match c {
            'D' => flags::DRAFT,
            'F' => flags::FLAGGED,
            'R' => flags::ANSWERED,
            'S' => flags::SEEN,
            'T' => flags::DELETED,
            _ => 0,
        }
    })
}

// ---- mbox ----

/// The messages of an mbox file (all into `mailbox`).
pub fn mbox_messages(file: &Path, mailbox: &str) -> Result<Vec<Message>, String> {
    let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if !text.starts_with(b"From ") {
        return Err(format!(
            "{}: not an mbox file (it does not start with a \"From \" line)",
            file.display()
        ));
    }
    Ok(split_mbox(&text)
        .into_iter()
        .map(|(from_line, body)| {
            let bytes = crlf(unquote_from(body));
            let flags = mbox_flags(&bytes);
            Message {
                mailbox: mailbox.to_string(),
                internal_date: from_line_date(from_line).unwrap_or_else(now),
                bytes,
                flags,
            }
        })
        .collect())
}

/// (From line, message) pairs: a message starts after each line that begins with
/// `From ` at the start of the file or after an empty line.
fn split_mbox(text: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut starts = Vec::new();
    let mut at = 0;
    let mut previous_blank = true;
    while at < text.len() {
        let end = memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i + 1);
        let line = &text[at..end];
        if previous_blank && line.starts_with(b"From ") {
            starts.push((at, end));
        }
        previous_blank = line == b"\n" || line == b"\r\n";
        at = end;
    }
    let mut out = Vec::new();
    for (i, (line_start, body_start)) in starts.iter().enumerate() {
        let next = starts.get(i + 1).map_or(text.len(), |n| n.0);
        let mut body = &text[*body_start..next];
        // The blank line before the next From line belongs to the mbox, not the mail.
        if starts.get(i + 1).is_some() {
            body = body
                .strip_suffix(b"\r\n")
                .or_else(|| body.strip_suffix(b"\n"))
                .unwrap_or(body);
        }
        let from_line = text[*line_start..*body_start].trim_ascii_end();
        out.push((from_line, body));
    }
    out
}

/// mboxrd: a line `>From ` (any number of `>`) loses one `>`.
fn unquote_from(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|b| *b == b'\n') {
        let quotes = line.iter().take_while(|b| **b == b'>').count();
        if quotes > 0 && line.get(quotes..).is_some_and(|r| r.starts_with(b"From ")) {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Flags from `Status:` (R = seen) and `X-Status:` (A answered, F flagged, T draft,
/// D deleted) in the header.
fn mbox_flags(message: &[u8]) -> u32 {
    let end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let mut f = 0;
    for line in message[..end].split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], line[i + 1..].trim_ascii()),
            None => continue,
        };
        if name.eq_ignore_ascii_case(b"Status") {
            if value.contains(&b'R') {
                f |= flags::SEEN;
            }
        } else if name.eq_ignore_ascii_case(b"X-Status") {
            for c in value {
                f |= match c {
                    b'A' => flags::ANSWERED,
                    b'F' => flags::FLAGGED,
                    b'T' => flags::DRAFT,
                    b'D' => flags::DELETED,
                    _ => 0,
                };
            }
        }
    }
    f
}

/// The date of a `From sender Thu Nov 26 06:45:00 2026` line, as Unix seconds (UTC).
fn from_line_date(line: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(line).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    // From SENDER DOW MON DD HH:MM:SS YYYY
    let n = words.len();
    if n < 7 {
        return None;
    }
    let (month, day, time, year) = (words[n - 4], words[n - 3], words[n - 2], words[n - 1]);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(month))? as u32
        + 1;
    let day: u32 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (
        hms.next()??,
        hms.next()??,
        hms.next().flatten().unwrap_or(0),
    );
    let days = crate::proto::imap::command::days_from_civil(year, month, day);
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn mbox_splits_unquotes_and_reads_flags() {
        let mbox = b"From a@x Thu Nov 26 06:45:00 2026\nStatus: RO\nX-Status: AF\nSubject: one\n\n>From the start\n>>From deeper\n\nFrom b@x Fri Nov 27 00:00:01 2026\nSubject: two\n\nbody\n";
        let parts = split_mbox(mbox);
        assert_eq!(parts.len(), 2);
        let one = crlf(unquote_from(parts[0].1));
        assert_eq!(
            one,
            b"Status: RO\r\nX-Status: AF\r\nSubject: one\r\n\r\nFrom the start\r\n>From deeper\r\n"
        );
        assert_eq!(
            mbox_flags(&one),
            flags::SEEN | flags::ANSWERED | flags::FLAGGED
        );
        assert_eq!(crlf(parts[1].1.to_vec()), b"Subject: two\r\n\r\nbody\r\n");
        assert_eq!(from_line_date(parts[1].0), Some(1_795_737_601));
    }

    #[test]
    fn maildir_names_sort_in_arrival_order() {
        let mut names = vec!["100.7_10.s", "100.7_2.s", "99.7_11.s", "100.7_1.s"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            vec!["99.7_11.s", "100.7_1.s", "100.7_2.s", "100.7_10.s"]
        );
    }

    #[test]
    fn maildir_flags_and_crlf() {
        assert_eq!(
            maildir_flags("1.2_3.host,S=5:2,FS"),
            flags::FLAGGED | flags::SEEN
        );
        assert_eq!(maildir_flags("1.2_3.host"), 0);
        assert_eq!(crlf(b"a\r\nb\r\n".to_vec()), b"a\r\nb\r\n");
        assert_eq!(crlf(b"a\nb\r\n".to_vec()), b"a\r\nb\r\n");
    }
}
