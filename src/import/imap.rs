//! `--imap imaps://USER@HOST[:PORT]`: every mailbox of an account on another IMAP
//! server, with flags and INTERNALDATE, the way operators migrate with imapsync.
//!
//! A blocking client over rustls (web PKI roots, or `--ca FILE` for a private CA):
//! LOGIN, LIST, then per mailbox EXAMINE and `UID FETCH (UID RFC822.SIZE)` to plan,
//! and `UID FETCH (UID FLAGS INTERNALDATE BODY.PEEK[])` in batches of at most
//! [`BATCH_MESSAGES`] messages or [`BATCH_BYTES`]. After each batch is durable the
//! highest UID done per mailbox (with its UIDVALIDITY) is written to
//! `DATA/import/ACCOUNT@HOST.json`, so a second run resumes where the first stopped;
//! a changed UIDVALIDITY starts that mailbox over. Every response is bounded (lines
//! by [`LINE_MAX`], literals by `limits.message_size_max`); the server is a peer and
//! may be hostile.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

use super::{crlf, Feed, Message};
use crate::store::flags;

pub const BATCH_MESSAGES: usize = 100;
pub const BATCH_BYTES: u64 = 32 << 20;
const LINE_MAX: usize = 64 * 1024;

/// Where an import stands, per source mailbox.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    mailboxes: BTreeMap<String, Done>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct Done {
    uidvalidity: u32,
    last_uid: u32,
}

/// A mailbox to copy: its name there and here, and the UIDs (with sizes) still to do.
struct Plan {
    source: String,
    target: String,
    uidvalidity: u32,
    todo: std::collections::VecDeque<(u32, u64)>,
    /// Its first batch has been handed out in this run.
    started: bool,
}

pub struct Imap {
    conn: Conn,
    plans: Vec<Plan>,
    current: usize,
    selected: Option<String>,
    /// The batch handed out last: (plan, highest UID), recorded once durable.
    pending: Option<(usize, u32)>,
    progress: Progress,
    state_file: PathBuf,
    literal_max: usize,
    /// An earlier run of this import existed: the first batch of each mailbox may be
    /// partly stored already.
    resumed: bool,
}

/// `imaps://USER@HOST[:PORT]` → (user, host, port). The user may contain `@`.
pub fn parse_url(url: &str) -> Result<(String, String, u16), String> {
    let rest = url
        .strip_prefix("imaps://")
        .ok_or("--imap: expected imaps://USER@HOST[:PORT] (implicit TLS)")?;
    let (user, hostport) = rest
        .rsplit_once('@')
        .ok_or("--imap: the URL needs the account: imaps://USER@HOST")?;
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("--imap: bad port {p}"))?),
        None => (hostport, 993),
    };
    if user.is_empty() || host.is_empty() {
        return Err("--imap: expected imaps://USER@HOST[:PORT]".into());
    }
    Ok((user.to_string(), host.to_string(), port))
}

impl Imap {
    /// Logs in and plans the import (what is left of it, after an earlier run).
    pub fn open(
        url: &str,
        password: &str,
        ca: Option<&Path>,
        data_dir: &Path,
        literal_max: usize,
    ) -> Result<Imap, String> {
        let (user, host, port) = parse_url(url)?;
        let mut conn = Conn::connect(&host, port, ca, literal_max)?;
        conn.command(&format!("LOGIN {} {}", quoted(&user), quoted(password)))
            .map_err(|e| format!("{host}: login as {user} failed: {e}"))?;
        let state_file =
            data_dir
                .join("import")
                .join(format!("{}@{}.json", safe(&user), safe(&host)));
        let earlier = std::fs::read(&state_file).ok();
        let resumed = earlier.is_some();
        let progress: Progress = earlier
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut plans = Vec::new();
        for (source, target) in conn.mailboxes()? {
            let untagged = conn.command(&format!("EXAMINE {}", quoted(&source)))?;
            let uidvalidity = untagged
                .iter()
                .find_map(|l| number_after(l, b"UIDVALIDITY "))
                .unwrap_or(0) as u32;
            let done = progress
                .mailboxes
                .get(&source)
                .filter(|d| d.uidvalidity == uidvalidity)
                .map_or(0, |d| d.last_uid);
            let mut todo = std::collections::VecDeque::new();
            for line in conn.command("UID FETCH 1:* (UID RFC822.SIZE)")? {
                let items = fetch_items(&line)?;
                if let (Some(uid), Some(size)) = (items.uid, items.size) {
                    if uid > done {
                        todo.push_back((uid, size));
                    }
                }
            }
            todo.make_contiguous().sort_unstable();
            plans.push(Plan {
                source,
                target,
                uidvalidity,
                todo,
                started: false,
            });
        }
        let me = Imap {
            conn,
            plans,
            current: 0,
            selected: None,
            pending: None,
            progress,
            state_file,
            literal_max,
            resumed,
        };
        // Recorded before anything is stored, so a run killed during its first batch
        // is known to the next one.
        me.save()?;
        Ok(me)
    }

    fn save(&self) -> Result<(), String> {
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_vec_pretty(&self.progress).map_err(|e| e.to_string())?;
        crate::users::write_atomic(&self.state_file, &text)
            .map_err(|e| format!("{}: {e}", self.state_file.display()))
    }
}

impl Feed for Imap {
    fn total(&self) -> (u64, u64) {
        let todo = self.plans.iter().flat_map(|p| &p.todo);
        (
            todo.clone().count() as u64,
            todo.map(|(_, size)| size).sum(),
        )
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Message>>, String> {
        while self
            .plans
            .get(self.current)
            .is_some_and(|p| p.todo.is_empty())
        {
            self.current += 1;
        }
        let Some(plan) = self.plans.get_mut(self.current) else {
            return Ok(None);
        };
        if self.selected.as_deref() != Some(plan.source.as_str()) {
            self.conn
                .command(&format!("EXAMINE {}", quoted(&plan.source)))?;
            self.selected = Some(plan.source.clone());
        }
        let mut uids = Vec::new();
        let mut bytes = 0;
        while let Some((uid, size)) = plan.todo.front().copied() {
            if !uids.is_empty() && (uids.len() >= BATCH_MESSAGES || bytes + size > BATCH_BYTES) {
                break;
            }
            plan.todo.pop_front();
            uids.push(uid);
            bytes += size;
        }
        let maybe_stored = self.resumed && !plan.started;
        plan.started = true;
        let set = crate::proto::imap::command::SequenceSet::compact(&uids);
        let mut out = Vec::new();
        for line in self.conn.command(&format!(
            "UID FETCH {set} (UID FLAGS INTERNALDATE BODY.PEEK[])"
        ))? {
            let items = fetch_items(&line)?;
            let (Some(body), Some(_)) = (items.body, items.uid) else {
                continue;
            };
            if body.len() > self.literal_max {
                continue;
            }
            out.push(Message {
                mailbox: plan.target.clone(),
                bytes: crlf(body),
                flags: items.flags,
                keywords: items.keywords,
                internal_date: items.internal_date.unwrap_or_else(super::now),
                maybe_stored,
            });
        }
        self.pending = uids.last().map(|u| (self.current, *u));
        Ok(Some(out))
    }

    fn committed(&mut self) -> Result<(), String> {
        let Some((index, uid)) = self.pending.take() else {
            return Ok(());
        };
        let Some(plan) = self.plans.get(index) else {
            return Ok(());
        };
        self.progress.mailboxes.insert(
            plan.source.clone(),
            Done {
                uidvalidity: plan.uidvalidity,
                last_uid: uid,
            },
        );
        self.save()
    }
}

/// A file-name-safe form of a user or host name.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An IMAP quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(line, key)? + key.len();
    let digits: Vec<u8> = line
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One connection to the source server.
struct Conn {
    reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    tag: u32,
    literal_max: usize,
}

impl Conn {
    fn connect(
        host: &str,
        port: u16,
        ca: Option<&Path>,
        literal_max: usize,
    ) -> Result<Conn, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let tls = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| format!("{host}: {e}"))?;
        let tcp = TcpStream::connect((host, port)).map_err(|e| format!("{host}:{port}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .and_then(|()| tcp.set_write_timeout(Some(Duration::from_secs(120))))
            .map_err(|e| e.to_string())?;
        let mut conn = Conn {
            reader: BufReader::new(rustls::StreamOwned::new(tls, tcp)),
            tag: 0,
            literal_max,
        };
        let greeting = conn.response()?;
        if !greeting.starts_with(b"* OK") && !greeting.starts_with(b"* PREAUTH") {
            return Err(format!(
                "{host}:{port}: not an IMAP greeting: {}",
                String::from_utf8_lossy(&greeting)
            ));
        }
        Ok(conn)
    }

    /// Sends a command; returns its untagged responses, or the server's refusal.
    fn command(&mut self, command: &str) -> Result<Vec<Vec<u8>>, String> {
        self.tag += 1;
        let tag = format!("m{}", self.tag);
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|e| format!("sending to the server: {e}"))?;
        let mut untagged = Vec::new();
        loop {
            let line = self.response()?;
            if let Some(rest) = line.strip_prefix(format!("{tag} ").as_bytes()) {
                if rest.starts_with(b"OK") {
                    return Ok(untagged);
                }
                return Err(String::from_utf8_lossy(rest).trim_end().to_string());
            }
            if line.starts_with(b"* ") {
                untagged.push(line);
            }
        }
    }

    /// One response, literals included (`{n}` followed by n bytes, then more line).
    fn response(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let mut limited = (&mut self.reader).take(LINE_MAX as u64);
            let n = limited
                .read_until(b'\n', &mut out)
                .map_err(|e| format!("reading from the server: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            if !out.ends_with(b"\n") {
                return Err(format!("a response line longer than {LINE_MAX} bytes"));
            }
            let line = out.get(start..).unwrap_or(&[]);
            let literal = line
                .strip_suffix(b"}\r\n")
                .and_then(|l| l.iter().rposition(|b| *b == b'{').map(|i| &l[i + 1..]))
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<usize>().ok());
            let Some(len) = literal else {
                return Ok(out);
            };
            if len > self.literal_max {
                return Err(format!(
                    "the server sent a {len}-byte literal (over limits.message_size_max)"
                ));
            }
            let at = out.len();
            out.resize(at + len, 0);
            self.reader
                .read_exact(out.get_mut(at..).unwrap_or(&mut []))
                .map_err(|e| format!("reading from the server: {e}"))?;
        }
    }

    /// (name there, name here) of every selectable mailbox.
    fn mailboxes(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for line in self.command("LIST \"\" \"*\"")? {
            let mut t = Tokens::new(line.strip_prefix(b"* LIST ").unwrap_or(&[]));
            let Some(Token::List(attrs)) = t.next() else {
                continue;
            };
            let delimiter = t.next().and_then(|d| d.text());
            let Some(name) = t.next().and_then(|n| n.text()) else {
                continue;
            };
            let noselect = attrs.iter().any(|a| {
                a.text().is_some_and(|a| {
                    a.eq_ignore_ascii_case("\\Noselect") || a.eq_ignore_ascii_case("\\NonExistent")
                })
            });
            if noselect {
                continue;
            }
            let target = match delimiter.as_deref() {
                Some(d) if d != "/" && !d.is_empty() => name.replace(d, "/"),
                _ => name.clone(),
            };
            out.push((name, crate::proto::imap::names::normalize(&target)));
        }
        Ok(out)
    }
}

/// What a FETCH response said.
#[derive(Default)]
struct FetchItems {
    uid: Option<u32>,
    size: Option<u64>,
    flags: u32,
    keywords: Vec<String>,
    internal_date: Option<i64>,
    body: Option<Vec<u8>>,
}

fn fetch_items(line: &[u8]) -> Result<FetchItems, String> {
    let mut items = FetchItems::default();
    let Some(at) = memchr::memmem::find(line, b" FETCH (") else {
        return Ok(items);
    };
    let mut t = Tokens::new(line.get(at + 7..).unwrap_or(&[]));
    let Some(Token::List(list)) = t.next() else {
        return Err("a FETCH response without its list".into());
    };
    let mut it = list.into_iter();
    while let (Some(key), Some(value)) = (it.next(), it.next()) {
        let key = key.text().unwrap_or_default().to_ascii_uppercase();
        match key.as_str() {
            "UID" => items.uid = value.text().and_then(|v| v.parse().ok()),
            "RFC822.SIZE" => items.size = value.text().and_then(|v| v.parse().ok()),
            "INTERNALDATE" => items.internal_date = value.text().and_then(|v| internal_date(&v)),
            "FLAGS" => {
                if let Token::List(fl) = value {
                    for f in fl.iter().filter_map(Token::text) {
                        items.flags |= match f.to_ascii_lowercase().as_str() {
                            "\\seen" => flags::SEEN,
                            "\\answered" => flags::ANSWERED,
                            "\\flagged" => flags::FLAGGED,
                            "\\deleted" => flags::DELETED,
                            "\\draft" => flags::DRAFT,
                            _ => 0,
                        };
                        if is_keyword(&f) && items.keywords.len() < super::KEYWORDS_MAX {
                            items.keywords.push(f);
                        }
                    }
                }
            }
            k if k.starts_with("BODY[") => {
                items.body = match value {
                    Token::Bytes(b) => Some(b),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Ok(items)
}

/// A keyword as IMAP allows it: an atom of at most 255 bytes, not a system flag.
fn is_keyword(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 255
        && !f.starts_with('\\')
        && f.bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
}

/// `26-Nov-2026 06:45:00 +0100` → Unix seconds.
fn internal_date(text: &str) -> Option<i64> {
    let (date, rest) = text.trim().split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let mut d = date.split('-');
    let day: u32 = d.next()?.trim().parse().ok()?;
    let month = d.next()?;
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(month))?;
    let year: i64 = d.next()?.parse().ok()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let zone: i64 = zone.trim_start_matches(['+', '-']).parse().ok()?;
    let offset = sign * ((zone / 100) * 3600 + (zone % 100) * 60);
    let days = crate::proto::imap::command::days_from_civil(year, month as u32 + 1, day);
    Some(days * 86_400 + h * 3600 + m * 60 + s - offset)
}

/// A response token: an atom or quoted string (as text), a literal (bytes), a list.
enum Token {
    Text(String),
    Bytes(Vec<u8>),
    List(Vec<Token>),
}

impl Token {
    fn text(&self) -> Option<String> {
        match self {
            Token::Text(t) => Some(t.clone()),
            Token::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Token::List(_) => None,
        }
    }
}

/// Tokens of a response (after its `* n FETCH ` or `* LIST `); depth-limited.
struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Tokens<'a> {
    fn new(rest: &'a [u8]) -> Tokens<'a> {
        Tokens { rest }
    }

    fn next(&mut self) -> Option<Token> {
        self.token(0)
    }

    fn token(&mut self, depth: usize) -> Option<Token> {
        while self.rest.first().is_some_and(|b| *b == b' ') {
            self.rest = &self.rest[1..];
        }
        match *self.rest.first()? {
            b'(' if depth < 8 => {
                self.rest = &self.rest[1..];
                let mut list = Vec::new();
                loop {
                    while self.rest.first().is_some_and(|b| *b == b' ') {
                        self.rest = &self.rest[1..];
                    }
                    match self.rest.first() {
                        Some(b')') => {
                            self.rest = &self.rest[1..];
                            return Some(Token::List(list));
                        }
                        None => return Some(Token::List(list)),
                        _ => list.push(self.token(depth + 1)?),
                    }
                }
            }
            b'"' => {
                let mut out = Vec::new();
                let mut i = 1;
                while let Some(&b) = self.rest.get(i) {
                    match b {
                        b'\\' => {
                            out.extend(self.rest.get(i + 1).copied());
                            i += 2;
                        }
                        b'"' => break,
                        _ => {
                            out.push(b);
                            i += 1;
                        }
                    }
                }
                self.rest = self.rest.get(i + 1..).unwrap_or(&[]);
                Some(Token::Text(String::from_utf8_lossy(&out).into_owned()))
            }
            b'{' => {
                let close = memchr::memchr(b'}', self.rest)?;
                let len: usize = std::str::from_utf8(self.rest.get(1..close)?)
                    .ok()?
                    .parse()
                    .ok()?;
                let start = close + 3; // "}\r\n"
                let bytes = self.rest.get(start..start + len)?.to_vec();
                self.rest = self.rest.get(start + len..).unwrap_or(&[]);
                Some(Token::Bytes(bytes))
            }
            _ => {
                // An atom; `[...]` (a section) belongs to it, spaces included.
                let mut i = 0;
                let mut bracket = false;
                while let Some(&b) = self.rest.get(i) {
                    match b {
                        b'[' => bracket = true,
                        b']' => bracket = false,
                        b' ' | b'(' | b')' | b'\r' | b'\n' if !bracket => break,
                        _ => {}
                    }
                    i += 1;
                }
                let atom = self.rest.get(..i.max(1))?;
                self.rest = self.rest.get(i.max(1)..).unwrap_or(&[]);
                Some(Token::Text(String::from_utf8_lossy(atom).into_owned()))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_dates() {
        assert_eq!(
            parse_url("imaps://alice@example.org@mail.example.org:1993").unwrap(),
            ("alice@example.org".into(), "mail.example.org".into(), 1993)
        );
        assert_eq!(parse_url("imaps://bob@h").unwrap().2, 993);
        assert!(parse_url("imap://bob@h").is_err());
        assert_eq!(
            internal_date("27-Nov-2026 01:00:01 +0100"),
            Some(1_795_737_601)
        );
        assert_eq!(
            internal_date(" 7-Nov-2026 00:00:00 +0000"),
            Some(1_794_009_600)
        );
    }

    #[test]
    fn fetch_responses_parse_with_literals_and_sections() {
        let line = b"* 3 FETCH (UID 17 FLAGS (\\Seen \\Flagged $Work) INTERNALDATE \"27-Nov-2026 00:00:01 +0000\" BODY[] {8}\r\nab\r\ncd\r\n)\r\n";
        let items = fetch_items(line).unwrap();
        assert_eq!(items.uid, Some(17));
        assert_eq!(items.flags, flags::SEEN | flags::FLAGGED);
        assert_eq!(items.keywords, vec!["$Work".to_string()]);
        assert_eq!(items.internal_date, Some(1_795_737_601));
        assert_eq!(items.body.as_deref(), Some(&b"ab\r\ncd\r\n"[..]));
        let sized = fetch_items(b"* 1 FETCH (UID 4 RFC822.SIZE 1234)\r\n").unwrap();
        assert_eq!((sized.uid, sized.size), (Some(4), Some(1234)));
    }
}
