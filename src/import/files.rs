//! Maildir and mbox sources for [`super::import`].
//!
//! Maildir: the top-level `cur`/`new` are INBOX; Maildir++ folders `.A.B` become
//! `A/B`; a directory tree of Maildirs (what `shardmail export` writes: `INBOX/`,
//! `Work/2026/`) is read the same way. Flags come from the `:2,` info (`D F R S T`),
//! INTERNALDATE from the file's modification time. Mbox: messages split at `From `
//! lines, `>From ` unquoted (mboxrd), flags from `Status:`/`X-Status:`, INTERNALDATE
//! from the `From ` line; the file is mapped, not read into memory. Never reads
//! outside the source it was given and never follows symlinks out of it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{crlf, now, Feed, Message};
use crate::store::flags;

/// Files per batch.
const BATCH: usize = 256;

/// One message file found: (mailbox, path, flags, INTERNALDATE, size).
type Found = (String, PathBuf, u32, i64, u64);

/// A Maildir tree, listed up front (names and metadata), read a batch at a time.
pub struct Maildir {
    /// In import order.
    files: std::vec::IntoIter<Found>,
    total: (u64, u64),
}

impl Maildir {
    pub fn open(root: &Path) -> Result<Maildir, String> {
        let files = maildir_files(root)?;
        let total = (files.len() as u64, files.iter().map(|f| f.4).sum::<u64>());
        Ok(Maildir {
            files: files.into_iter(),
            total,
        })
    }
}

impl Feed for Maildir {
    fn total(&self) -> (u64, u64) {
        self.total
    }
    fn next_batch(&mut self) -> Result<Option<Vec<Message>>, String> {
        let mut out = Vec::new();
        for (mailbox, path, flags, internal_date, _) in self.files.by_ref().take(BATCH) {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push(Message {
                mailbox,
                bytes: crlf(bytes),
                flags,
                internal_date,
                keywords: Vec::new(),
                maybe_stored: false,
            });
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// An mbox file, mapped; messages are copied out a batch at a time.
pub struct Mbox {
    map: memmap2::Mmap,
    /// (From line, message) ranges.
    parts: Vec<((usize, usize), (usize, usize))>,
    next: usize,
    mailbox: String,
}

impl Mbox {
    pub fn open(file: &Path, mailbox: &str) -> Result<Mbox, String> {
        let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        // SAFETY: a read-only map of a file the operator handed us to import; if
        // another process truncates it meanwhile, reading it may fault (the documented
        // risk of mapping, as for the server's own logs).
        let map =
            unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("{}: {e}", file.display()))?;
        if !map.starts_with(b"From ") {
            return Err(format!(
                "{}: not an mbox file (it does not start with a \"From \" line)",
                file.display()
            ));
        }
        let base = map.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        let parts = split_mbox(&map)
            .into_iter()
            .map(|(line, body)| (at(line), at(body)))
            .collect();
        Ok(Mbox {
            map,
            parts,
            next: 0,
            mailbox: mailbox.to_string(),
        })
    }
}

impl Feed for Mbox {
    fn total(&self) -> (u64, u64) {
        let bytes = self.parts.iter().map(|p| p.1 .1 as u64).sum();
        (self.parts.len() as u64, bytes)
    }
    fn next_batch(&mut self) -> Result<Option<Vec<Message>>, String> {
        let end = (self.next + BATCH).min(self.parts.len());
        let mut out = Vec::new();
        for ((ls, ll), (bs, bl)) in self.parts.get(self.next..end).unwrap_or(&[]) {
            let line = self.map.get(*ls..ls + ll).unwrap_or(&[]);
            let body = self.map.get(*bs..bs + bl).unwrap_or(&[]);
            let bytes = crlf(unquote_from(body));
            out.push(Message {
                mailbox: self.mailbox.clone(),
                flags: mbox_flags(&bytes),
                internal_date: from_line_date(line).unwrap_or_else(now),
                bytes,
                keywords: Vec::new(),
                maybe_stored: false,
            });
        }
        self.next = end;
        Ok((!out.is_empty()).then_some(out))
    }
}

/// Every message file of every Maildir under `root`: (mailbox, path, flags,
/// INTERNALDATE, size), mailbox by mailbox (sorted by name), files in arrival order.
fn maildir_files(root: &Path) -> Result<Vec<Found>, String> {
    if !root.is_dir() {
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
            let internal_date = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or_else(now, |d| d.as_secs() as i64);
            out.push((
                name.clone(),
                path,
                maildir_flags(&file_name),
                internal_date,
                meta.len(),
            ));
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
