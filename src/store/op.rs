//! The log's records as changes to the index: one definition of each, encoded and
//! decoded here and nowhere else (DESIGN.md §4).
//!
//! Every record carries a version in its header (`layout::Record::version`); a record
//! whose kind or version this build does not know is an error naming its offset —
//! never skipped, never truncated as a torn tail, never decoded to a default. The
//! cached MIME summary in a Blob is versioned too ([`Summary::decode`]): an older one
//! is re-derived from the message bytes stored beside it. `docs/format.md` has the
//! byte layout and the upgrade rules. Pure code; no IO.

use super::index::SpecialUse;
use super::layout::{self, Fields, Kind, Record};
use super::summary::Summary;

/// Record versions this build writes, per kind (all kinds are at version 0 but the
/// Blob, whose summary gained a version byte in version 1, and the Append, which
/// gained the save date in version 1).
pub const BLOB_VERSION: u8 = 1;
pub const APPEND_VERSION: u8 = 1;

/// A record the index could not decode; opening the partition stops there.
#[derive(Debug)]
pub struct CorruptRecord {
    pub offset: u64,
    pub reason: &'static str,
}

/// One decoded log record: what [`super::Index::apply`] does with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A message's bytes and its cached MIME summary. The summary stays in the log
    /// (read with [`summary_at`] when a FETCH or SEARCH needs it): the index keeps
    /// only where the bytes are.
    Blob {
        blob: u64,
        offset: u64,
        len: u32,
    },
    MailboxCreate {
        account: u64,
        id: u32,
        uidvalidity: u32,
        special: SpecialUse,
        name: String,
    },
    Append {
        account: u64,
        mailbox: u32,
        uid: u32,
        modseq: u64,
        internal_date: i64,
        flags: u32,
        blob: u64,
        keywords: Vec<String>,
        /// When the message was saved in this mailbox (RFC 8514 SAVEDATE), Unix
        /// seconds; 0 = unknown (records from before version 1).
        save_date: u32,
        /// The blob's location (offset and length of the message bytes) when it was
        /// written by an earlier commit (COPY); `None` means "look it up among this
        /// replay's blobs". Not on disk.
        resolved: Option<(u64, u32)>,
    },
    Flags {
        account: u64,
        mailbox: u32,
        uid: u32,
        modseq: u64,
        flags: u32,
        keywords: Vec<String>,
    },
    MailboxRename {
        account: u64,
        mailbox: u32,
        name: String,
    },
    MailboxDelete {
        account: u64,
        mailbox: u32,
    },
    Expunge {
        account: u64,
        mailbox: u32,
        uid: u32,
        modseq: u64,
    },
    Subscription {
        account: u64,
        subscribed: bool,
        name: String,
    },
    /// A compacted mailbox's counters: UIDs below `uid_next` and MODSEQs up to
    /// `highest_modseq` are used; expunges and flag changes at or below
    /// `history_floor` are forgotten (QRESYNC gets the full answer for them).
    MailboxState {
        account: u64,
        mailbox: u32,
        uid_next: u32,
        highest_modseq: u64,
        history_floor: u64,
    },
    /// A METADATA entry of a mailbox (0: the server) set to `value`, or removed.
    Metadata {
        account: u64,
        mailbox: u32,
        entry: String,
        value: Option<Vec<u8>>,
    },
}

impl Op {
    /// The account an op changes (`None` for blobs, which belong to no mailbox).
    pub fn account(&self) -> Option<u64> {
        match self {
            Op::Blob { .. } => None,
            Op::MailboxCreate { account, .. }
            | Op::Append { account, .. }
            | Op::Flags { account, .. }
            | Op::Expunge { account, .. }
            | Op::MailboxRename { account, .. }
            | Op::MailboxDelete { account, .. }
            | Op::Subscription { account, .. }
            | Op::MailboxState { account, .. }
            | Op::Metadata { account, .. } => Some(*account),
        }
    }

    /// Appends the op's record to `out` (at version 0). A Blob carries message bytes
    /// the op does not hold: write it with [`encode_blob`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Blob { .. } => debug_assert!(false, "a Blob is written by encode_blob"),
            Op::MailboxCreate {
                account,
                id,
                uidvalidity,
                special,
                name,
            } => layout::encode(
                out,
                Kind::MailboxCreate,
                &[
                    &account.to_le_bytes(),
                    &id.to_le_bytes(),
                    &uidvalidity.to_le_bytes(),
                    &[*special as u8],
                    name.as_bytes(),
                ],
            ),
            Op::Append {
                account,
                mailbox,
                uid,
                modseq,
                internal_date,
                flags,
                blob,
                keywords,
                save_date,
                resolved: _,
            } => {
                let mut tail = Vec::new();
                encode_keywords(&mut tail, keywords);
                layout::encode_versioned(
                    out,
                    Kind::Append,
                    APPEND_VERSION,
                    &[
                        &account.to_le_bytes(),
                        &mailbox.to_le_bytes(),
                        &uid.to_le_bytes(),
                        &modseq.to_le_bytes(),
                        &internal_date.to_le_bytes(),
                        &flags.to_le_bytes(),
                        &blob.to_le_bytes(),
                        &save_date.to_le_bytes(),
                        &tail,
                    ],
                );
            }
            Op::Flags {
                account,
                mailbox,
                uid,
                modseq,
                flags,
                keywords,
            } => {
                let mut tail = Vec::new();
                encode_keywords(&mut tail, keywords);
                layout::encode(
                    out,
                    Kind::Flags,
                    &[
                        &account.to_le_bytes(),
                        &mailbox.to_le_bytes(),
                        &uid.to_le_bytes(),
                        &modseq.to_le_bytes(),
                        &flags.to_le_bytes(),
                        &tail,
                    ],
                );
            }
            Op::MailboxRename {
                account,
                mailbox,
                name,
            } => layout::encode(
                out,
                Kind::MailboxRename,
                &[
                    &account.to_le_bytes(),
                    &mailbox.to_le_bytes(),
                    name.as_bytes(),
                ],
            ),
            Op::MailboxDelete { account, mailbox } => layout::encode(
                out,
                Kind::MailboxDelete,
                &[&account.to_le_bytes(), &mailbox.to_le_bytes()],
            ),
            Op::Expunge {
                account,
                mailbox,
                uid,
                modseq,
            } => layout::encode(
                out,
                Kind::Expunge,
                &[
                    &account.to_le_bytes(),
                    &mailbox.to_le_bytes(),
                    &uid.to_le_bytes(),
                    &modseq.to_le_bytes(),
                ],
            ),
            Op::Subscription {
                account,
                subscribed,
                name,
            } => layout::encode(
                out,
                Kind::Subscription,
                &[
                    &account.to_le_bytes(),
                    &[u8::from(*subscribed)],
                    name.as_bytes(),
                ],
            ),
            Op::MailboxState {
                account,
                mailbox,
                uid_next,
                highest_modseq,
                history_floor,
            } => layout::encode(
                out,
                Kind::MailboxState,
                &[
                    &account.to_le_bytes(),
                    &mailbox.to_le_bytes(),
                    &uid_next.to_le_bytes(),
                    &highest_modseq.to_le_bytes(),
                    &history_floor.to_le_bytes(),
                ],
            ),
            Op::Metadata {
                account,
                mailbox,
                entry,
                value,
            } => layout::encode(
                out,
                Kind::Metadata,
                &[
                    &account.to_le_bytes(),
                    &mailbox.to_le_bytes(),
                    &[u8::from(value.is_some())],
                    &(entry.len() as u16).to_le_bytes(),
                    entry.as_bytes(),
                    value.as_deref().unwrap_or(&[]),
                ],
            ),
        }
    }

    /// Decodes a record that passed its checksum. An unknown kind or version is an
    /// error (written by a newer shardmail, or damage), never a default.
    pub fn decode(record: &Record<'_>) -> Result<Op, CorruptRecord> {
        let fail = |reason| CorruptRecord {
            offset: record.offset,
            reason,
        };
        let corrupt = || fail("a field is missing or malformed");
        let Some(kind) = record.kind else {
            return Err(fail("unknown record kind (written by a newer shardmail?)"));
        };
        let newest = match kind {
            Kind::Blob => BLOB_VERSION,
            Kind::Append => APPEND_VERSION,
            _ => 0,
        };
        if record.version > newest {
            return Err(fail(
                "unknown record version (written by a newer shardmail?)",
            ));
        }
        let mut f = Fields(record.payload);
        Ok(match kind {
            Kind::Blob => {
                let summary_len = f.u32().ok_or_else(corrupt)? as usize;
                let summary = f.bytes(summary_len).ok_or_else(corrupt)?;
                let message = f.rest();
                let len = u32::try_from(message.len()).map_err(|_| corrupt())?;
                // The summary itself is decoded when read; one a newer shardmail
                // wrote is refused here, at open, not at the first FETCH.
                if record.version >= 1 && summary_version(summary).is_err() {
                    return Err(fail("summary of an unknown version"));
                }
                Op::Blob {
                    blob: record.offset,
                    offset: record.payload_offset() + 4 + summary_len as u64,
                    len,
                }
            }
            Kind::MailboxCreate => {
                let account = f.u64().ok_or_else(corrupt)?;
                let id = f.u32().ok_or_else(corrupt)?;
                let uidvalidity = f.u32().ok_or_else(corrupt)?;
                let special = SpecialUse::from_u8(f.u8().ok_or_else(corrupt)?);
                let name = String::from_utf8(f.rest().to_vec()).map_err(|_| corrupt())?;
                Op::MailboxCreate {
                    account,
                    id,
                    uidvalidity,
                    special,
                    name,
                }
            }
            Kind::Append => Op::Append {
                account: f.u64().ok_or_else(corrupt)?,
                mailbox: f.u32().ok_or_else(corrupt)?,
                uid: f.u32().ok_or_else(corrupt)?,
                modseq: f.u64().ok_or_else(corrupt)?,
                internal_date: f.i64().ok_or_else(corrupt)?,
                flags: f.u32().ok_or_else(corrupt)?,
                blob: f.u64().ok_or_else(corrupt)?,
                save_date: match record.version {
                    0 => 0,
                    _ => f.u32().ok_or_else(corrupt)?,
                },
                keywords: decode_keywords(f.rest()).ok_or_else(corrupt)?,
                resolved: None,
            },
            Kind::Flags => Op::Flags {
                account: f.u64().ok_or_else(corrupt)?,
                mailbox: f.u32().ok_or_else(corrupt)?,
                uid: f.u32().ok_or_else(corrupt)?,
                modseq: f.u64().ok_or_else(corrupt)?,
                flags: f.u32().ok_or_else(corrupt)?,
                keywords: decode_keywords(f.rest()).ok_or_else(corrupt)?,
            },
            Kind::MailboxRename => {
                let account = f.u64().ok_or_else(corrupt)?;
                let mailbox = f.u32().ok_or_else(corrupt)?;
                let name = String::from_utf8(f.rest().to_vec()).map_err(|_| corrupt())?;
                Op::MailboxRename {
                    account,
                    mailbox,
                    name,
                }
            }
            Kind::Subscription => {
                let account = f.u64().ok_or_else(corrupt)?;
                let subscribed = f.u8().ok_or_else(corrupt)? != 0;
                let name = String::from_utf8(f.rest().to_vec()).map_err(|_| corrupt())?;
                Op::Subscription {
                    account,
                    subscribed,
                    name,
                }
            }
            Kind::MailboxDelete => Op::MailboxDelete {
                account: f.u64().ok_or_else(corrupt)?,
                mailbox: f.u32().ok_or_else(corrupt)?,
            },
            Kind::Expunge => Op::Expunge {
                account: f.u64().ok_or_else(corrupt)?,
                mailbox: f.u32().ok_or_else(corrupt)?,
                uid: f.u32().ok_or_else(corrupt)?,
                modseq: f.u64().ok_or_else(corrupt)?,
            },
            Kind::MailboxState => Op::MailboxState {
                account: f.u64().ok_or_else(corrupt)?,
                mailbox: f.u32().ok_or_else(corrupt)?,
                uid_next: f.u32().ok_or_else(corrupt)?,
                highest_modseq: f.u64().ok_or_else(corrupt)?,
                history_floor: f.u64().ok_or_else(corrupt)?,
            },
            Kind::Metadata => {
                let account = f.u64().ok_or_else(corrupt)?;
                let mailbox = f.u32().ok_or_else(corrupt)?;
                let present = f.u8().ok_or_else(corrupt)? != 0;
                let entry_len = f.u16().ok_or_else(corrupt)? as usize;
                let entry = f.bytes(entry_len).ok_or_else(corrupt)?;
                let entry = String::from_utf8(entry.to_vec()).map_err(|_| corrupt())?;
                let value = f.rest();
                if !present && !value.is_empty() {
                    return Err(corrupt());
                }
                Op::Metadata {
                    account,
                    mailbox,
                    entry,
                    value: present.then(|| value.to_vec()),
                }
            }
        })
    }
}

/// The version byte of a versioned summary (Blob version ≥ 1), `Err` if this build
/// cannot read it.
fn summary_version(summary: &[u8]) -> Result<u8, &'static str> {
    match summary.first() {
        Some(&v) if v <= super::summary::SUMMARY_VERSION => Ok(v),
        _ => Err("summary of an unknown version"),
    }
}

/// The MIME summary of the message whose Blob record starts at `blob` in `log` (the
/// message bytes being `offset..offset+len`). Old summaries are re-derived from the
/// message; a record that is not a readable Blob is an error naming its offset.
pub fn summary_at(log: &[u8], blob: u64, offset: u64, len: u32) -> Result<Summary, CorruptRecord> {
    let fail = |reason| CorruptRecord {
        offset: blob,
        reason,
    };
    let (start, body) = (blob as usize, offset as usize);
    let header = log
        .get(start..start + layout::RECORD_HEADER_BYTES)
        .ok_or(fail("blob record beyond the log"))?;
    let version = *header.get(9).ok_or(fail("blob record header damaged"))?;
    let summary = log
        .get(start + layout::RECORD_HEADER_BYTES + 4..body)
        .ok_or(fail("blob record damaged"))?;
    let message = log
        .get(body..body + len as usize)
        .ok_or(fail("message beyond the log"))?;
    match version {
        // Version 0: the summary was an unversioned rkyv archive.
        0 => Ok(Summary::decode_unversioned(summary, message)),
        BLOB_VERSION => {
            Summary::decode(summary, message).map_err(|_| fail("summary of an unknown version"))
        }
        _ => Err(fail(
            "unknown record version (written by a newer shardmail?)",
        )),
    }
}

/// Where a Blob record puts its parts: `summary_len:u32 summary message`, the message
/// being `head ++ body`. Returns the crc of the record's kind and payload given the
/// body's crc (so a large body is checksummed once, off the reactor).
pub fn blob_payload_head(summary: &[u8], head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + summary.len() + head.len());
    out.extend_from_slice(&(summary.len() as u32).to_le_bytes());
    out.extend_from_slice(summary);
    out.extend_from_slice(head);
    out
}

/// Appends a whole Blob record (summary and message bytes) to `out`.
pub fn encode_blob(out: &mut Vec<u8>, summary: &[u8], message: &[&[u8]]) {
    let summary_len = (summary.len() as u32).to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![&summary_len, summary];
    parts.extend_from_slice(message);
    layout::encode_versioned(out, Kind::Blob, BLOB_VERSION, &parts);
}

/// Optional trailing keyword list of Append and Flags: `count:u16 (len:u16 bytes)*`.
/// Absent (older records, or no keywords) means none.
pub fn encode_keywords(out: &mut Vec<u8>, keywords: &[String]) {
    if keywords.is_empty() {
        return;
    }
    out.extend_from_slice(&(keywords.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for k in keywords.iter().take(u16::MAX as usize) {
        let bytes = k.as_bytes();
        let len = bytes.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(bytes.get(..len).unwrap_or(bytes));
    }
}

/// Reads what [`encode_keywords`] wrote; `None` if it is malformed.
pub fn decode_keywords(mut rest: &[u8]) -> Option<Vec<String>> {
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let count = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    rest = rest.get(2..)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        out.push(String::from_utf8(rest.get(2..2 + len)?.to_vec()).ok()?);
        rest = rest.get(2 + len..)?;
    }
    rest.is_empty().then_some(out)
}
