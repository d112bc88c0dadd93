//! What a change to an account becomes in the log: one planner for the live partition
//! and the in-memory store of the session tests (DESIGN.md §4, "one definition of each
//! change").
//!
//! A [`Change`] is what a session asks for (create, rename, append, store flags, copy,
//! move, expunge…). [`plan`] checks it against the index and turns it into the
//! [`Op`]s to log, numbering new UIDs, MODSEQs and mailbox ids through
//! [`Reservations`] (which the partition keeps across commits in flight, and a test
//! store creates fresh for each change). Every op of a change goes into one commit, so
//! a MOVE is atomic: after any crash the message is in exactly one mailbox. The
//! encoding of the ops is [`encode`]; applying them is `Index::apply_all`. Pure code.

use std::collections::{HashMap, HashSet};

use super::index::{mailbox_name_eq, Index, SpecialUse, DEFAULT_MAILBOXES};
use super::op::{self, Op};
use super::StoreError;

/// INBOX is mailbox 1 of every account.
const INBOX: u32 = 1;

/// A change to one account.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create these mailboxes, in order (missing parents first).
    Create {
        names: Vec<String>,
        /// The special use of the last name (CREATE-SPECIAL-USE); parents get none.
        special: SpecialUse,
    },
    Delete {
        mailbox: u32,
    },
    /// Rename mailboxes (a mailbox and its children).
    Rename {
        renames: Vec<(u32, String)>,
    },
    /// RENAME INBOX: create `to` and move every INBOX message into it (RFC 9051 §6.3.6).
    RenameInbox {
        to: String,
    },
    Subscribe {
        name: String,
        subscribed: bool,
    },
    /// Store messages, all or none (MULTIAPPEND, RFC 3502): their bytes go with the
    /// change, one [`BlobAt`] per message, in order.
    Append {
        mailbox: u32,
        messages: Vec<NewMessage>,
    },
    /// (UID, new flags, new keywords) per message; UIDs no longer there are skipped.
    Store {
        mailbox: u32,
        changes: Vec<(u32, u32, Vec<String>)>,
    },
    /// COPY, or MOVE when `expunge_source` (copies and expunges in one commit).
    Copy {
        from: u32,
        uids: Vec<u32>,
        to: u32,
        expunge_source: bool,
    },
    /// UIDs already gone are skipped, so a retry is harmless.
    Expunge {
        mailbox: u32,
        uids: Vec<u32>,
    },
    /// The default mailboxes, if the account has none yet.
    EnsureAccount,
    /// Set (`Some`) or remove (`None`) METADATA entries of a mailbox (0: the server);
    /// entry names lower-case.
    SetMetadata {
        mailbox: u32,
        entries: Vec<(String, Option<Vec<u8>>)>,
    },
}

/// One message of an APPEND: what the client said besides its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub flags: u32,
    pub keywords: Vec<String>,
    pub internal_date: i64,
}

/// What a planned change reports once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The new messages' UIDs, in the order given (consecutive).
    Appended {
        uids: Vec<u32>,
    },
    /// (UID, new MODSEQ) of each message changed.
    Stored(Vec<(u32, u64)>),
    /// (source UID, new UID) pairs.
    Copied(Vec<(u32, u32)>),
}

/// Where a new message's Blob record goes.
#[derive(Debug, Clone)]
pub struct BlobAt {
    /// Offset of the Blob record.
    pub blob: u64,
    /// Offset and length of the message bytes.
    pub offset: u64,
    pub len: u32,
}

impl BlobAt {
    /// Where a message of `message_len` bytes with a summary of `summary_len` goes
    /// when its Blob record starts at `blob` (`summary_len:u32 summary message`).
    pub fn at(blob: u64, summary_len: usize, message_len: usize) -> BlobAt {
        BlobAt {
            blob,
            offset: blob + super::layout::RECORD_HEADER_BYTES as u64 + 4 + summary_len as u64,
            len: message_len as u32,
        }
    }

    /// Where a change's new messages go, one Blob record after another from `base`
    /// (a change's Blob records come first): `sizes` are (summary, message) lengths.
    pub fn consecutive(base: u64, sizes: impl IntoIterator<Item = (usize, usize)>) -> Vec<BlobAt> {
        let mut at = base;
        sizes
            .into_iter()
            .map(|(summary_len, message_len)| {
                let blob = BlobAt::at(at, summary_len, message_len);
                at += super::layout::record_bytes(4 + summary_len + message_len) as u64;
                blob
            })
            .collect()
    }
}

/// A change made into ops: the Blob op (if any) comes first.
#[derive(Debug)]
pub struct Planned {
    pub ops: Vec<Op>,
    pub outcome: Outcome,
}

/// UIDs, MODSEQs and mailbox ids handed out to changes planned but not yet applied.
/// The index only learns of a change once it is durable; until then these keep two
/// changes in flight from taking the same numbers.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Next (UID, MODSEQ) per (account, mailbox).
    next: HashMap<(u64, u32), (u32, u64)>,
    /// Next mailbox id per account.
    mailbox_ids: HashMap<u64, u32>,
    /// Accounts whose default mailboxes are planned but not applied.
    creating: HashSet<u64>,
}

impl Reservations {
    /// Forgets everything (after a failed commit: none of it will be applied).
    pub fn clear(&mut self) {
        *self = Reservations::default();
    }

    /// An op was applied to the index.
    pub fn applied(&mut self, op: &Op) {
        if let Op::MailboxCreate { account, .. } = op {
            self.creating.remove(account);
        }
    }

    /// The account's default mailboxes are being created by a commit in flight.
    pub fn is_creating(&self, account: u64) -> bool {
        self.creating.contains(&account)
    }

    /// The next UID and MODSEQ of a mailbox.
    fn uid(&mut self, index: &Index, account: u64, mailbox: u32) -> (u32, u64) {
        let (uid_next, modseq_next) = index
            .accounts
            .get(&account)
            .and_then(|a| a.mailbox_by_id(mailbox))
            .map(|m| (m.uid_next, m.highest_modseq + 1))
            .unwrap_or((1, 1));
        let slot = self
            .next
            .entry((account, mailbox))
            .or_insert((uid_next, modseq_next));
        slot.0 = slot.0.max(uid_next);
        slot.1 = slot.1.max(modseq_next);
        let out = *slot;
        *slot = (slot.0 + 1, slot.1 + 1);
        out
    }

    /// The next MODSEQ of a mailbox, for a change that is not an append.
    fn modseq(&mut self, index: &Index, account: u64, mailbox: u32) -> u64 {
        let (uid, modseq) = self.uid(index, account, mailbox);
        if let Some(slot) = self.next.get_mut(&(account, mailbox)) {
            slot.0 = uid; // UIDs only grow on appends
        }
        modseq
    }

    /// A new mailbox id: above every id ever used in the account.
    fn mailbox_id(&mut self, index: &Index, account: u64) -> u32 {
        let next = index.accounts.get(&account).map_or(
            DEFAULT_MAILBOXES.len() as u32 + 1,
            super::AccountIndex::next_mailbox_id,
        );
        let slot = self.mailbox_ids.entry(account).or_insert(next);
        *slot = (*slot).max(next);
        let id = *slot;
        *slot += 1;
        id
    }

    /// The MailboxCreate ops of an account's default mailboxes, unless it has them
    /// or a commit in flight creates them.
    pub fn default_mailboxes(&mut self, index: &Index, account: u64, now: i64) -> Vec<Op> {
        if index.accounts.contains_key(&account) || !self.creating.insert(account) {
            return Vec::new();
        }
        // UIDVALIDITY: creation time in seconds, distinct per mailbox (RFC 9051 §2.3.1.1).
        let uidvalidity = now.max(1) as u32;
        DEFAULT_MAILBOXES
            .iter()
            .enumerate()
            .map(|(i, (name, special))| Op::MailboxCreate {
                account,
                id: i as u32 + 1,
                uidvalidity: uidvalidity.wrapping_add(i as u32),
                special: *special,
                name: (*name).to_string(),
            })
            .collect()
    }
}

fn invalid(text: impl Into<String>) -> StoreError {
    StoreError::Invalid(text.into())
}

fn exists(index: &Index, account: u64, mailbox: u32) -> bool {
    index
        .accounts
        .get(&account)
        .is_some_and(|a| a.mailbox_by_id(mailbox).is_some())
}

fn require(index: &Index, account: u64, mailbox: u32) -> Result<(), StoreError> {
    if exists(index, account, mailbox) {
        Ok(())
    } else {
        Err(invalid("No such mailbox"))
    }
}

fn name_taken(index: &Index, account: u64, name: &str) -> bool {
    index
        .accounts
        .get(&account)
        .is_some_and(|a| a.mailbox(name).is_some())
        || DEFAULT_MAILBOXES
            .iter()
            .any(|(d, _)| mailbox_name_eq(d, name))
}

/// Turns `change` into the ops of one commit (see the module doc). `blobs` is where
/// each new message goes (APPEND only; their Blob records come first, in order).
pub fn plan(
    index: &Index,
    account: u64,
    change: &Change,
    now: i64,
    numbers: &mut Reservations,
    blobs: &[BlobAt],
) -> Result<Planned, StoreError> {
    let mut ops = Vec::new();
    let mut outcome = Outcome::Done;
    match change {
        Change::EnsureAccount => ops.extend(numbers.default_mailboxes(index, account, now)),
        Change::Create { names, special } => {
            ops.extend(numbers.default_mailboxes(index, account, now));
            for (i, name) in names.iter().enumerate() {
                if name_taken(index, account, name) {
                    return Err(invalid(format!("Mailbox {name} already exists")));
                }
                let id = numbers.mailbox_id(index, account);
                ops.push(Op::MailboxCreate {
                    account,
                    id,
                    uidvalidity: (now.max(1) as u32).wrapping_add(id),
                    special: if i + 1 == names.len() {
                        *special
                    } else {
                        SpecialUse::None
                    },
                    name: name.clone(),
                });
            }
        }
        Change::Delete { mailbox } => {
            require(index, account, *mailbox)?;
            ops.push(Op::MailboxDelete {
                account,
                mailbox: *mailbox,
            });
        }
        Change::Rename { renames } => {
            for (mailbox, name) in renames {
                require(index, account, *mailbox)?;
                if name_taken(index, account, name) {
                    return Err(invalid(format!("Mailbox {name} already exists")));
                }
                ops.push(Op::MailboxRename {
                    account,
                    mailbox: *mailbox,
                    name: name.clone(),
                });
            }
        }
        Change::RenameInbox { to } => {
            if name_taken(index, account, to) {
                return Err(invalid(format!("Mailbox {to} already exists")));
            }
            let id = numbers.mailbox_id(index, account);
            ops.push(Op::MailboxCreate {
                account,
                id,
                uidvalidity: (now.max(1) as u32).wrapping_add(id),
                special: SpecialUse::None,
                name: to.clone(),
            });
            let uids: Vec<u32> = index
                .accounts
                .get(&account)
                .and_then(|a| a.mailbox_by_id(INBOX))
                .map(|m| m.messages.iter().map(|e| e.uid).collect())
                .unwrap_or_default();
            copy_ops(
                index, account, INBOX, &uids, id, true, numbers, &mut ops, true, now,
            );
        }
        Change::Subscribe { name, subscribed } => {
            ops.extend(numbers.default_mailboxes(index, account, now));
            ops.push(Op::Subscription {
                account,
                subscribed: *subscribed,
                name: name.clone(),
            });
        }
        Change::Append { mailbox, messages } => {
            require(index, account, *mailbox)?;
            if messages.is_empty() || blobs.len() != messages.len() {
                return Err(invalid("APPEND without its messages"));
            }
            ops.extend(blobs.iter().map(|b| Op::Blob {
                blob: b.blob,
                offset: b.offset,
                len: b.len,
            }));
            let mut uids = Vec::with_capacity(messages.len());
            for (message, blob) in messages.iter().zip(blobs) {
                let (uid, modseq) = numbers.uid(index, account, *mailbox);
                ops.push(Op::Append {
                    account,
                    mailbox: *mailbox,
                    uid,
                    modseq,
                    internal_date: message.internal_date,
                    flags: message.flags,
                    blob: blob.blob,
                    keywords: message.keywords.clone(),
                    save_date: save_date(now),
                    resolved: None,
                });
                uids.push(uid);
            }
            outcome = Outcome::Appended { uids };
        }
        Change::SetMetadata { mailbox, entries } => {
            if *mailbox != 0 {
                require(index, account, *mailbox)?;
            }
            ops.extend(numbers.default_mailboxes(index, account, now));
            ops.extend(entries.iter().map(|(entry, value)| Op::Metadata {
                account,
                mailbox: *mailbox,
                entry: entry.clone(),
                value: value.clone(),
            }));
        }
        Change::Store { mailbox, changes } => {
            require(index, account, *mailbox)?;
            let mb = index
                .accounts
                .get(&account)
                .and_then(|a| a.mailbox_by_id(*mailbox));
            let mut changed = Vec::new();
            for (uid, flags, keywords) in changes {
                let present =
                    mb.is_some_and(|m| m.messages.binary_search_by_key(uid, |e| e.uid).is_ok());
                if !present {
                    continue;
                }
                let modseq = numbers.modseq(index, account, *mailbox);
                ops.push(Op::Flags {
                    account,
                    mailbox: *mailbox,
                    uid: *uid,
                    modseq,
                    flags: *flags,
                    keywords: keywords.clone(),
                });
                changed.push((*uid, modseq));
            }
            outcome = Outcome::Stored(changed);
        }
        Change::Copy {
            from,
            uids,
            to,
            expunge_source,
        } => {
            require(index, account, *from)?;
            require(index, account, *to)?;
            let pairs = copy_ops(
                index,
                account,
                *from,
                uids,
                *to,
                *expunge_source,
                numbers,
                &mut ops,
                false,
                now,
            );
            outcome = Outcome::Copied(pairs);
        }
        Change::Expunge { mailbox, uids } => {
            let Some(mb) = index
                .accounts
                .get(&account)
                .and_then(|a| a.mailbox_by_id(*mailbox))
            else {
                return Ok(Planned { ops, outcome });
            };
            for uid in uids {
                if mb.messages.binary_search_by_key(uid, |e| e.uid).is_ok() {
                    let modseq = numbers.modseq(index, account, *mailbox);
                    ops.push(Op::Expunge {
                        account,
                        mailbox: *mailbox,
                        uid: *uid,
                        modseq,
                    });
                }
            }
        }
    }
    Ok(Planned { ops, outcome })
}

/// A save date as the index keeps it (RFC 8514; Unix seconds in a u32).
fn save_date(now: i64) -> u32 {
    now.clamp(0, i64::from(u32::MAX)) as u32
}

/// An SMTP delivery into `mailbox` of each of `accounts` (their default mailboxes are
/// already planned or present): the Blob once, an Append per account.
pub fn plan_delivery(
    index: &Index,
    accounts: &[u64],
    mailbox: u32,
    internal_date: i64,
    numbers: &mut Reservations,
    blob: BlobAt,
) -> Vec<Op> {
    let mut ops = vec![Op::Blob {
        blob: blob.blob,
        offset: blob.offset,
        len: blob.len,
    }];
    for &account in accounts {
        let (uid, modseq) = numbers.uid(index, account, mailbox);
        ops.push(Op::Append {
            account,
            mailbox,
            uid,
            modseq,
            internal_date,
            flags: 0,
            blob: blob.blob,
            keywords: Vec::new(),
            save_date: save_date(internal_date),
            resolved: None,
        });
    }
    ops
}

/// Appends that share the source messages' blobs (no copy of the bytes) and, for a
/// move, the expunges of the originals; returns (source UID, new UID) pairs.
/// `to_is_new`: the target is created by this same commit (RENAME INBOX).
#[allow(clippy::too_many_arguments)] // the copy's whole context, one argument each
fn copy_ops(
    index: &Index,
    account: u64,
    from: u32,
    uids: &[u32],
    to: u32,
    expunge_source: bool,
    numbers: &mut Reservations,
    ops: &mut Vec<Op>,
    to_is_new: bool,
    now: i64,
) -> Vec<(u32, u32)> {
    let _ = to_is_new; // a new mailbox starts at UID 1, as Reservations does anyway
    let Some(src) = index
        .accounts
        .get(&account)
        .and_then(|a| a.mailbox_by_id(from))
    else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    for uid in uids {
        let Ok(at) = src.messages.binary_search_by_key(uid, |e| e.uid) else {
            continue;
        };
        let Some(e) = src.messages.get(at) else {
            continue;
        };
        let (new_uid, modseq) = numbers.uid(index, account, to);
        ops.push(Op::Append {
            account,
            mailbox: to,
            uid: new_uid,
            modseq,
            internal_date: e.internal_date,
            flags: e.flags,
            blob: e.blob,
            keywords: e.keywords.to_vec(),
            save_date: save_date(now),
            resolved: Some((e.offset, e.len)),
        });
        pairs.push((*uid, new_uid));
    }
    if expunge_source {
        for (uid, _) in &pairs {
            let modseq = numbers.modseq(index, account, from);
            ops.push(Op::Expunge {
                account,
                mailbox: from,
                uid: *uid,
                modseq,
            });
        }
    }
    pairs
}

/// Encodes planned ops after `out`'s current end, each Blob with the next of `blobs`
/// (summary, message bytes) inline.
pub fn encode(out: &mut Vec<u8>, ops: &[Op], blobs: &[(&[u8], &[&[u8]])]) {
    let mut blobs = blobs.iter();
    for op in ops {
        match op {
            Op::Blob { .. } => {
                if let Some((summary, message)) = blobs.next() {
                    op::encode_blob(out, summary, message);
                }
            }
            other => other.encode(out),
        }
    }
}
