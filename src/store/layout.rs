//! On-disk format of a partition's `messages.log`: encoding and scanning of records.
//!
//! ```text
//! file   = FILE_MAGIC (16 bytes) record*
//! record = len:u32le crc32c:u32le kind:u8 version:u8 zero[6] payload[len] zero-pad to 8
//! crc    = crc32c(kind ++ payload)            version 0 (logs written before versions)
//!        = crc32c(kind ++ version ++ payload) version 1 and later
//! ```
//! The log holds message blobs and the index journal in one stream, so one fdatasync
//! makes a whole group commit durable. Scanning stops at the first record that is
//! short or has a bad checksum: that is the torn tail recovery truncates. A record
//! with a good checksum but a kind or version this build does not know is returned
//! (kind `None`) so that decoding fails loudly — a log written by a newer shardmail is
//! never mistaken for a torn tail. The records' payloads are defined in `op.rs`.
//! Pure code; no IO.

/// First 16 bytes of every log file.
pub const FILE_MAGIC: &[u8; 16] = b"shardmail-log-v1";
pub const RECORD_HEADER_BYTES: usize = 16;
pub const RECORD_ALIGN: usize = 8;
/// Largest payload a record may claim; anything bigger is corruption (1 GiB limit on
/// messages plus the summary).
pub const RECORD_PAYLOAD_MAX: usize = (1 << 30) + (16 << 20);

const _: () = assert!(FILE_MAGIC.len().is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));

/// Record kinds. Values are on disk: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `summary_len:u32 summary message` — the message bytes, stored once per partition.
    Blob = 1,
    /// `account:u64 mailbox:u32 uidvalidity:u32 special:u8 name`.
    MailboxCreate = 2,
    /// `account:u64 mailbox:u32 uid:u32 modseq:u64 internal_date:i64 flags:u32 blob:u64
    /// [keywords]`.
    Append = 3,
    /// `account:u64 mailbox:u32 uid:u32 modseq:u64 flags:u32 [keywords]`.
    Flags = 4,
    /// `account:u64 mailbox:u32 uid:u32 modseq:u64`.
    Expunge = 5,
    /// `account:u64 mailbox:u32 name`.
    MailboxRename = 6,
    /// `account:u64 mailbox:u32`.
    MailboxDelete = 7,
    /// `account:u64 subscribed:u8 name` — IMAP SUBSCRIBE/UNSUBSCRIBE (by name: a
    /// subscription may name a mailbox that does not exist, RFC 9051 §6.3.7).
    Subscription = 8,
    /// `account:u64 mailbox:u32 uid_next:u32 highest_modseq:u64 history_floor:u64` —
    /// written by compaction after a mailbox's messages: what its records no longer
    /// say (UIDs and MODSEQs used by expunged messages, where its history starts).
    MailboxState = 9,
    /// `account:u64 mailbox:u32 present:u8 entry_len:u16 entry value` — an IMAP
    /// METADATA entry (RFC 5464) set (`present` 1) or removed (0); mailbox 0 holds
    /// the server's entries.
    Metadata = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Blob,
            2 => Kind::MailboxCreate,
            3 => Kind::Append,
            4 => Kind::Flags,
            5 => Kind::Expunge,
            6 => Kind::MailboxRename,
            7 => Kind::MailboxDelete,
            8 => Kind::Subscription,
            9 => Kind::MailboxState,
            10 => Kind::Metadata,
            _ => return None,
        })
    }
}

/// Bytes a record with `payload_len` bytes of payload takes, padding included.
pub const fn record_bytes(payload_len: usize) -> usize {
    let raw = RECORD_HEADER_BYTES + payload_len;
    raw.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Record kind byte values this build knows (for the scanner).
fn known_kind(b: u8) -> Option<Kind> {
    Kind::from_u8(b)
}

/// Zero bytes that follow a payload of `payload_len` to the next record.
pub const fn padding(payload_len: usize) -> usize {
    record_bytes(payload_len) - RECORD_HEADER_BYTES - payload_len
}

/// Appends a record header for a payload written elsewhere (a large message body
/// goes to the file straight from its own buffer): `crc` is [`record_crc`]'s.
pub fn encode_header(out: &mut Vec<u8>, kind: Kind, version: u8, payload_len: usize, crc: u32) {
    assert!(
        payload_len <= RECORD_PAYLOAD_MAX,
        "record payload {payload_len} exceeds RECORD_PAYLOAD_MAX"
    );
    debug_assert_eq!(out.len() % RECORD_ALIGN, 0);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind as u8);
    out.push(version);
    out.extend_from_slice(&[0; 6]);
}

/// The crc of a record: over its kind byte, its version byte unless that is 0, and
/// its payload. Version-0 records predate the version byte (it was a zero pad the crc
/// did not cover), so they keep their crc; every later version is protected by it.
pub fn record_crc(kind: Kind, version: u8, payload: &[&[u8]]) -> u32 {
    let mut crc = crc_head(kind as u8, version);
    for p in payload {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc
}

fn crc_head(kind: u8, version: u8) -> u32 {
    match version {
        0 => crc32c::crc32c(&[kind]),
        v => crc32c::crc32c(&[kind, v]),
    }
}

/// Appends one version-0 record to `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, payload: &[&[u8]]) {
    encode_versioned(out, kind, 0, payload);
}

/// Appends one record of `version` to `out`.
pub fn encode_versioned(out: &mut Vec<u8>, kind: Kind, version: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    assert!(
        len <= RECORD_PAYLOAD_MAX,
        "record payload {len} exceeds RECORD_PAYLOAD_MAX"
    );
    let start = out.len();
    debug_assert_eq!(start % RECORD_ALIGN, 0);
    encode_header(out, kind, version, len, record_crc(kind, version, payload));
    for p in payload {
        out.extend_from_slice(p);
    }
    out.resize(start + record_bytes(len), 0);
}

/// One record found by [`Scanner`].
#[derive(Debug)]
pub struct Record<'a> {
    /// Offset of the record header in the file.
    pub offset: u64,
    /// `None`: a kind this build does not know (decoding fails loudly).
    pub kind: Option<Kind>,
    pub version: u8,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// File offset of the payload's first byte.
    pub fn payload_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES as u64
    }
}

/// Iterates valid records from `start`; [`Scanner::valid_end`] is where they stop.
#[derive(Debug)]
pub struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// File offset of `bytes[0]`.
    base: u64,
}

impl<'a> Scanner<'a> {
    /// Scans a whole log file (`bytes` starts with [`FILE_MAGIC`]) from offset `start`.
    pub fn new(bytes: &'a [u8], start: usize) -> Scanner<'a> {
        Scanner {
            bytes,
            pos: start.max(FILE_MAGIC.len()),
            base: 0,
        }
    }

    /// Scans records encoded in memory that will sit at file offset `base`.
    pub fn region(bytes: &'a [u8], base: u64) -> Scanner<'a> {
        Scanner {
            bytes,
            pos: 0,
            base,
        }
    }

    /// End of the last valid record seen so far (after iteration: of the valid prefix).
    pub fn valid_end(&self) -> u64 {
        self.base + self.pos as u64
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        let header = self.bytes.get(self.pos..self.pos + RECORD_HEADER_BYTES)?;
        let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
        let kind_byte = header[8];
        let version = header[9];
        if len > RECORD_PAYLOAD_MAX || header[10..16] != [0; 6] {
            return None;
        }
        let kind = known_kind(kind_byte);
        let start = self.pos + RECORD_HEADER_BYTES;
        let payload = self.bytes.get(start..start + len)?;
        let end = self.pos + record_bytes(len);
        if end > self.bytes.len() {
            return None;
        }
        let actual = crc32c::crc32c_append(crc_head(kind_byte, version), payload);
        if actual != crc {
            return None;
        }
        let record = Record {
            offset: self.base + self.pos as u64,
            kind,
            version,
            payload,
        };
        self.pos = end;
        Some(record)
    }
}

/// Little-endian field reader over a payload; `None` when it runs short.
#[derive(Debug)]
pub struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        self.take(n)
    }
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(records: &[(Kind, &[u8])]) -> Vec<u8> {
        let mut out = FILE_MAGIC.to_vec();
        for (k, p) in records {
            encode(&mut out, *k, &[p]);
        }
        out
    }

    #[test]
    fn scan_round_trip_and_torn_tails() {
        let log = log_with(&[(Kind::Blob, b"hello"), (Kind::Expunge, b"0123456789abcdef")]);
        let mut s = Scanner::new(&log, 0);
        let kinds: Vec<_> = s.by_ref().map(|r| (r.kind, r.payload.len())).collect();
        assert_eq!(
            kinds,
            vec![(Some(Kind::Blob), 5), (Some(Kind::Expunge), 16)]
        );
        assert_eq!(s.valid_end(), log.len() as u64);

        // Every truncation point leaves a valid prefix ending on a record boundary.
        let first_end = FILE_MAGIC.len() + record_bytes(5);
        for cut in FILE_MAGIC.len()..log.len() {
            let mut s = Scanner::new(&log[..cut], 0);
            let n = s.by_ref().count();
            let expect = if cut >= first_end {
                first_end
            } else {
                FILE_MAGIC.len()
            };
            assert_eq!(s.valid_end() as usize, expect, "cut at {cut}");
            assert_eq!(n, usize::from(cut >= first_end));
        }
        // A flipped payload bit stops the scan at that record.
        let mut bad = log.clone();
        bad[FILE_MAGIC.len() + RECORD_HEADER_BYTES] ^= 1;
        let mut s = Scanner::new(&bad, 0);
        assert_eq!(s.by_ref().count(), 0);
        assert_eq!(s.valid_end() as usize, FILE_MAGIC.len());
    }

    #[test]
    fn unknown_kinds_are_returned_not_truncated() {
        let mut log = FILE_MAGIC.to_vec();
        encode(&mut log, Kind::Expunge, &[b"x"]);
        // A record of kind 200, version 3, with a good checksum: a newer format.
        let start = log.len();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[200, 3]), b"future");
        log.extend_from_slice(&6u32.to_le_bytes());
        log.extend_from_slice(&crc.to_le_bytes());
        log.extend_from_slice(&[200, 3, 0, 0, 0, 0, 0, 0]);
        log.extend_from_slice(b"future\0\0");
        let records: Vec<_> = Scanner::new(&log, 0).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].kind, None);
        assert_eq!(records[1].version, 3);
        assert_eq!(records[1].offset as usize, start);
    }

    #[test]
    fn the_crc_covers_the_version_byte_from_version_1() {
        let mut log = FILE_MAGIC.to_vec();
        encode_versioned(&mut log, Kind::Blob, 1, &[b"\0\0\0\0body"]);
        assert_eq!(Scanner::new(&log, 0).count(), 1);
        for flipped in [0u8, 2, 0x81] {
            let mut bad = log.clone();
            bad[FILE_MAGIC.len() + 9] = flipped;
            assert_eq!(Scanner::new(&bad, 0).count(), 0, "version {flipped}");
        }
    }
}
