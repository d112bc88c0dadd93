//! A partition's index: accounts → mailboxes → messages, rebuilt from the log.
//!
//! The index is state derived from `messages.log`: [`Index::apply`] replays one record,
//! and the same function applies a record after its group commit is durable, so replay
//! and live operation can never disagree. `index.snap` is an rkyv snapshot of the index
//! with the log offset it covers; opening loads it and replays only the log after it.
//! Pure data; no IO except the snapshot helpers at the bottom.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rkyv::{Archive, Deserialize, Serialize};

pub use super::op::{CorruptRecord, Op};

/// System flags as bits (IMAP names; Maildir letters in [`crate::export`]).
pub mod flags {
    pub const SEEN: u32 = 1;
    pub const ANSWERED: u32 = 1 << 1;
    pub const FLAGGED: u32 = 1 << 2;
    pub const DELETED: u32 = 1 << 3;
    pub const DRAFT: u32 = 1 << 4;
    /// `\Recent`: never stored; an IMAP session adds it when rendering the flags of
    /// a message it shows as recent.
    pub const RECENT: u32 = 1 << 31;
}

/// RFC 6154 special-use attribute of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[repr(u8)]
pub enum SpecialUse {
    None = 0,
    Inbox = 1,
    Sent = 2,
    Drafts = 3,
    Trash = 4,
    Junk = 5,
    /// Set only by CREATE … (USE (\Archive)) (RFC 6154 CREATE-SPECIAL-USE).
    Archive = 6,
}

impl SpecialUse {
    pub(crate) fn from_u8(v: u8) -> SpecialUse {
        match v {
            1 => SpecialUse::Inbox,
            2 => SpecialUse::Sent,
            3 => SpecialUse::Drafts,
            4 => SpecialUse::Trash,
            5 => SpecialUse::Junk,
            6 => SpecialUse::Archive,
            _ => SpecialUse::None,
        }
    }
}

/// Mailboxes every account has from its first use (ids 1..=5, in this order).
pub const DEFAULT_MAILBOXES: [(&str, SpecialUse); 5] = [
    ("INBOX", SpecialUse::Inbox),
    ("Sent", SpecialUse::Sent),
    ("Drafts", SpecialUse::Drafts),
    ("Trash", SpecialUse::Trash),
    ("Junk", SpecialUse::Junk),
];

/// One message in one mailbox.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct MessageEntry {
    pub uid: u32,
    pub modseq: u64,
    pub flags: u32,
    /// Seconds since the Unix epoch (IMAP INTERNALDATE).
    pub internal_date: i64,
    /// Offset of the blob record in the log.
    pub blob: u64,
    /// Offset and length of the message bytes in the log (what FETCH/RETR serve).
    pub offset: u64,
    pub len: u32,
    /// IMAP keywords (`$Forwarded`, `$MDNSent`, user keywords), in the order set. A
    /// boxed slice: two words, and no allocation for the common message without any.
    /// (The MIME summary is not here: it stays in the Blob record, in the page
    /// cache, and is read when a command needs it — `op::summary_at`.)
    pub keywords: Box<[String]>,
    /// When it was saved in this mailbox (RFC 8514 SAVEDATE), Unix seconds (u32: the
    /// entry stays 64 bytes; good to 2106); 0 = unknown (logged before save dates).
    pub save_date: u32,
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct MailboxIndex {
    pub id: u32,
    pub name: String,
    pub special_use: SpecialUse,
    pub uidvalidity: u32,
    /// Next UID to assign; UIDs are reserved when a commit is queued.
    pub uid_next: u32,
    pub highest_modseq: u64,
    /// Sorted by UID.
    pub messages: Vec<MessageEntry>,
    /// Every keyword a message of this mailbox has carried, in first-use order (IMAP
    /// FLAGS, and what `limits.keywords_per_mailbox_max` counts). Kept when the
    /// messages that used them go: clients expect a stable list.
    pub keywords: Vec<String>,
    /// Expunge tombstones, (MODSEQ, UID) in MODSEQ order: what a session, QRESYNC's
    /// `VANISHED (EARLIER)` and CHANGEDSINCE ask "what went since MODSEQ m" of, in
    /// O(log n + answer). Complete above `expunged_floor` (compaction may drop older
    /// ones; a question about an older MODSEQ gets the full, pessimistic answer).
    pub expunged: Vec<(u64, u32)>,
    pub expunged_floor: u64,
    /// Recent flag changes, (MODSEQ, UID) in MODSEQ order, at most
    /// [`FLAG_CHANGES_KEPT`] of them (older ones are dropped in halves): complete above
    /// `flag_changes_floor`. A session that looked after the floor learns what
    /// changed without reading every message.
    pub flag_changes: Vec<(u64, u32)>,
    pub flag_changes_floor: u64,
    /// Every [`APPEND_MARK_EVERY`]th append's (MODSEQ, UID): appends raise both, so
    /// the messages appended after MODSEQ m are those above the UID of the last mark
    /// at or below m (plus at most that many more to filter).
    pub append_marks: Vec<(u64, u32)>,
    /// Kept as messages come, go and change flags (STATUS UNSEEN, DELETED and SIZE
    /// answer without reading the messages).
    pub counts: Counts,
    /// Where `\Recent` starts: in memory only, never logged or snapshotted.
    #[rkyv(with = rkyv::with::Skip)]
    pub recent: RecentMark,
}

/// The first UID no session has yet been shown as `\Recent` (RFC 3501 §2.3.2: a
/// message is recent in exactly one session, the first to select its mailbox after it
/// arrived). Sessions claim through a shared reference, so it is a `Cell`: the index
/// belongs to one shard's thread. It lives only in memory: after a restart it starts
/// at `uid_next` ([`Index::forget_recent`]), so mail that arrived before the restart
/// is not recent afterwards (RFC 3501 says SHOULD be; we choose not to mark a whole
/// mailbox recent on every restart).
#[derive(Debug, Clone, Default)]
pub struct RecentMark(std::cell::Cell<u32>);

impl PartialEq for RecentMark {
    /// Session state, not mailbox content: a recovered index equals the live one.
    fn eq(&self, _: &RecentMark) -> bool {
        true
    }
}

/// Message counts of a mailbox, maintained by [`Index::apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct Counts {
    pub unseen: u32,
    pub deleted: u32,
    /// Sum of the messages' sizes (RFC822.SIZE), and of those marked `\Deleted`.
    pub bytes: u64,
    pub deleted_bytes: u64,
}

impl Counts {
    fn add(&mut self, flags: u32, len: u32) {
        self.unseen += u32::from(flags & flags::SEEN == 0);
        self.deleted += u32::from(flags & flags::DELETED != 0);
        self.bytes += u64::from(len);
        if flags & flags::DELETED != 0 {
            self.deleted_bytes += u64::from(len);
        }
    }
    fn remove(&mut self, flags: u32, len: u32) {
        self.unseen = self
            .unseen
            .saturating_sub(u32::from(flags & flags::SEEN == 0));
        self.deleted = self
            .deleted
            .saturating_sub(u32::from(flags & flags::DELETED != 0));
        self.bytes = self.bytes.saturating_sub(u64::from(len));
        if flags & flags::DELETED != 0 {
            self.deleted_bytes = self.deleted_bytes.saturating_sub(u64::from(len));
        }
    }
}

/// What an account stores, for quotas: kept incrementally, never by a scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Usage {
    /// Sum of message sizes over all mailboxes (a message copied twice counts twice,
    /// as IMAP QUOTA's STORAGE does).
    pub bytes: u64,
    pub messages: u64,
}

/// Spacing of [`MailboxIndex::append_marks`] (in UIDs).
pub const APPEND_MARK_EVERY: u32 = 256;

/// How many flag changes a mailbox remembers; a session that last looked before the
/// oldest of them rescans its mailbox (O(n) once, then O(changes) again).
pub const FLAG_CHANGES_KEPT: usize = 8192;

impl MailboxIndex {
    /// One of the mailboxes every account has (cannot be deleted or renamed away).
    pub fn is_default(&self) -> bool {
        (1..=DEFAULT_MAILBOXES.len() as u32).contains(&self.id)
    }

    /// RFC 8474 MAILBOXID: the id never changes (RENAME keeps it) and is never reused.
    pub fn object_id(&self) -> String {
        format!("F{}-{}", self.id, self.uidvalidity)
    }

    /// The first UID not yet claimed as recent by any session.
    pub fn recent_from(&self) -> u32 {
        self.recent.0.get()
    }

    /// Claims every message not yet shown as recent for the calling session; returns
    /// the first UID of those (they run from there to `uid_next`).
    pub fn claim_recent(&self) -> u32 {
        let from = self.recent.0.get();
        self.recent.0.set(self.uid_next.max(from));
        from
    }

    /// Records keywords the mailbox has not seen (compared case-insensitively, as IMAP
    /// flags are).
    fn note_keywords(&mut self, keywords: &[String]) {
        for k in keywords {
            if !self.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                self.keywords.push(k.clone());
            }
        }
    }

    /// UIDs expunged after MODSEQ `since`, `None` if tombstones that old may be gone.
    pub fn expunged_since(&self, since: u64) -> Option<&[(u64, u32)]> {
        if since < self.expunged_floor {
            return None;
        }
        let start = self.expunged.partition_point(|(m, _)| *m <= since);
        self.expunged.get(start..)
    }

    /// Flag changes after MODSEQ `since` ((MODSEQ, UID); a UID may repeat, and a
    /// change superseded by a later one is listed too), `None` if changes that old
    /// may be forgotten.
    pub fn flag_changes_since(&self, since: u64) -> Option<&[(u64, u32)]> {
        if since < self.flag_changes_floor {
            return None;
        }
        let start = self.flag_changes.partition_point(|(m, _)| *m <= since);
        self.flag_changes.get(start..)
    }

    /// The messages with a UID above `uid` (those a session has not seen yet).
    pub fn messages_after(&self, uid: u32) -> &[MessageEntry] {
        let start = self.messages.partition_point(|m| m.uid <= uid);
        self.messages.get(start..).unwrap_or(&[])
    }

    /// Messages that may have been appended after MODSEQ `since`: a suffix of the
    /// mailbox at most [`APPEND_MARK_EVERY`] longer than the answer; callers keep
    /// those whose MODSEQ is above `since`.
    pub fn appended_since(&self, since: u64) -> &[MessageEntry] {
        let at = self.append_marks.partition_point(|(m, _)| *m <= since);
        match at.checked_sub(1).and_then(|i| self.append_marks.get(i)) {
            Some((_, uid)) => self.messages_after(*uid),
            None => &self.messages,
        }
    }

    fn note_append(&mut self, modseq: u64, uid: u32) {
        if self
            .append_marks
            .last()
            .is_none_or(|(_, u)| uid >= u.saturating_add(APPEND_MARK_EVERY))
        {
            self.append_marks.push((modseq, uid));
        }
    }

    /// Takes an expunged message out of the counts and the account's usage.
    fn forget(&mut self, gone: &MessageEntry, usage: &mut Usage) {
        self.counts.remove(gone.flags, gone.len);
        usage.bytes = usage.bytes.saturating_sub(u64::from(gone.len));
        usage.messages = usage.messages.saturating_sub(1);
    }

    fn note_expunge(&mut self, modseq: u64, uid: u32) {
        // MODSEQs only grow as ops apply; keep the order should a run's be lower.
        let at = self.expunged.partition_point(|(m, _)| *m <= modseq);
        self.expunged.insert(at, (modseq, uid));
    }

    fn note_flag_change(&mut self, modseq: u64, uid: u32) {
        if self.flag_changes.len() >= FLAG_CHANGES_KEPT {
            let drop = FLAG_CHANGES_KEPT / 2;
            if let Some((m, _)) = self.flag_changes.get(drop - 1) {
                self.flag_changes_floor = *m;
            }
            self.flag_changes.drain(..drop);
        }
        self.flag_changes.push((modseq, uid));
    }

    /// Whether `keyword` is already known to the mailbox.
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords
            .iter()
            .any(|x| x.eq_ignore_ascii_case(keyword))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct AccountIndex {
    pub mailboxes: Vec<MailboxIndex>,
    /// Mailbox names (INBOX as `INBOX`) → ids, in byte order: LIST walks it in
    /// order, and a name lookup is O(log n) however many mailboxes there are.
    pub names: BTreeMap<String, u32>,
    /// Ids of deleted mailboxes, sorted (ids are never reused; every op checks its
    /// mailbox against this list, in O(log n) however many were deleted).
    pub deleted: Vec<u32>,
    /// IMAP subscriptions, by mailbox name.
    pub subscribed: Vec<String>,
    /// Storage in use, over all mailboxes.
    pub usage: Usage,
    /// IMAP METADATA entries (RFC 5464), sorted by (mailbox, entry); mailbox 0 holds
    /// the server's. Entry names are stored lower-case (they compare without case).
    pub metadata: Vec<Annotation>,
}

/// One METADATA entry.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Annotation {
    pub mailbox: u32,
    pub entry: String,
    pub value: Vec<u8>,
}

impl AccountIndex {
    /// The METADATA entries of `mailbox` (0: the server), in entry order.
    pub fn annotations(&self, mailbox: u32) -> &[Annotation] {
        let start = self.metadata.partition_point(|a| a.mailbox < mailbox);
        let end = self.metadata.partition_point(|a| a.mailbox <= mailbox);
        self.metadata.get(start..end).unwrap_or(&[])
    }

    /// Bytes of every METADATA entry (names and values), what
    /// `limits.imap_metadata_bytes_max` bounds.
    pub fn annotation_bytes(&self) -> usize {
        self.metadata
            .iter()
            .map(|a| a.entry.len() + a.value.len())
            .sum()
    }

    fn annotate(&mut self, mailbox: u32, entry: String, value: Option<Vec<u8>>) {
        let at = self
            .metadata
            .binary_search_by(|a| (a.mailbox, a.entry.as_str()).cmp(&(mailbox, entry.as_str())));
        match (at, value) {
            (Ok(i), Some(value)) => {
                if let Some(a) = self.metadata.get_mut(i) {
                    a.value = value;
                }
            }
            (Ok(i), None) => {
                self.metadata.remove(i);
            }
            (Err(i), Some(value)) => self.metadata.insert(
                i,
                Annotation {
                    mailbox,
                    entry,
                    value,
                },
            ),
            (Err(_), None) => {}
        }
    }
}

impl AccountIndex {
    /// The id a new mailbox gets: above every id ever used.
    pub fn next_mailbox_id(&self) -> u32 {
        let live = self.mailboxes.last().map_or(0, |m| m.id);
        live.max(self.deleted.last().copied().unwrap_or(0)) + 1
    }
}

impl AccountIndex {
    pub fn mailbox(&self, name: &str) -> Option<&MailboxIndex> {
        let id = if name.eq_ignore_ascii_case("INBOX") {
            self.names.get("INBOX")
        } else {
            self.names.get(name)
        }?;
        self.mailbox_by_id(*id)
    }
    /// Mailboxes are kept in id order (ids only grow and are applied in order), so
    /// this is a binary search; a linear scan backs it up should that ever not hold.
    pub fn mailbox_by_id(&self, id: u32) -> Option<&MailboxIndex> {
        match self.mailboxes.binary_search_by_key(&id, |m| m.id) {
            Ok(at) => self.mailboxes.get(at),
            Err(_) => self.mailboxes.iter().find(|m| m.id == id),
        }
    }
    pub fn mailbox_mut_by_id(&mut self, id: u32) -> Option<&mut MailboxIndex> {
        match self.mailboxes.binary_search_by_key(&id, |m| m.id) {
            Ok(at) => self.mailboxes.get_mut(at),
            Err(_) => self.mailboxes.iter_mut().find(|m| m.id == id),
        }
    }
}

/// INBOX is case-insensitive (RFC 9051 §5.1); other names are exact.
pub fn mailbox_name_eq(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}

/// The whole index of one partition.
#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct Index {
    /// Log offset up to which records have been applied.
    pub log_end: u64,
    pub accounts: HashMap<u64, AccountIndex>,
}

/// Consecutive expunges from one mailbox, applied together.
struct ExpungeRun {
    account: u64,
    mailbox: u32,
    uids: Vec<u32>,
    modseq: u64,
}

/// An op refers to something the index does not have (a bug or a damaged log).
#[derive(Debug)]
pub struct DanglingOp(pub &'static str);

impl Index {
    /// After recovery: nothing that arrived before is recent (see [`RecentMark`]).
    pub fn forget_recent(&mut self) {
        for mb in self.accounts.values().flat_map(|a| &a.mailboxes) {
            mb.recent.0.set(mb.uid_next);
        }
    }

    /// Applies one durable op (replay and live commits both come here).
    pub fn apply(&mut self, op: Op, blobs: &mut BlobCache) -> Result<(), DanglingOp> {
        match op {
            Op::Blob { blob, offset, len } => blobs.insert(blob, offset, len),
            Op::MailboxCreate {
                account,
                id,
                uidvalidity,
                special,
                name,
            } => {
                let acct = self.accounts.entry(account).or_default();
                if let Err(at) = acct.mailboxes.binary_search_by_key(&id, |m| m.id) {
                    acct.names.insert(name.clone(), id);
                    acct.mailboxes.insert(
                        at,
                        MailboxIndex {
                            id,
                            name,
                            special_use: special,
                            uidvalidity,
                            uid_next: 1,
                            highest_modseq: 0,
                            messages: Vec::new(),
                            keywords: Vec::new(),
                            expunged: Vec::new(),
                            expunged_floor: 0,
                            flag_changes: Vec::new(),
                            flag_changes_floor: 0,
                            append_marks: Vec::new(),
                            counts: Counts::default(),
                            recent: RecentMark::default(),
                        },
                    );
                }
            }
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
                resolved,
            } => {
                let (offset, len) = match resolved {
                    Some(at) => at,
                    None => blobs
                        .get(blob)
                        .ok_or(DanglingOp("append refers to an unknown blob"))?,
                };
                let Some((mb, usage)) = self.mailbox_and_usage(account, mailbox)? else {
                    return Ok(());
                };
                mb.uid_next = mb.uid_next.max(uid + 1);
                mb.highest_modseq = mb.highest_modseq.max(modseq);
                mb.note_keywords(&keywords);
                let entry = MessageEntry {
                    uid,
                    modseq,
                    flags,
                    internal_date,
                    blob,
                    offset,
                    len,
                    keywords: keywords.into_boxed_slice(),
                    save_date,
                };
                if let Err(at) = mb.messages.binary_search_by_key(&uid, |m| m.uid) {
                    mb.counts.add(flags, len);
                    usage.bytes += u64::from(len);
                    usage.messages += 1;
                    mb.messages.insert(at, entry);
                    mb.note_append(modseq, uid);
                }
            }
            Op::Flags {
                account,
                mailbox,
                uid,
                modseq,
                flags,
                keywords,
            } => {
                let Some(mb) = self.mailbox_mut(account, mailbox)? else {
                    return Ok(());
                };
                mb.highest_modseq = mb.highest_modseq.max(modseq);
                mb.note_keywords(&keywords);
                if let Ok(at) = mb.messages.binary_search_by_key(&uid, |m| m.uid) {
                    if let Some(m) = mb.messages.get_mut(at) {
                        mb.counts.remove(m.flags, m.len);
                        mb.counts.add(flags, m.len);
                        m.flags = flags;
                        m.keywords = keywords.into_boxed_slice();
                        m.modseq = modseq;
                        mb.note_flag_change(modseq, uid);
                    }
                }
            }
            Op::MailboxRename {
                account,
                mailbox,
                name,
            } => {
                let old = match self.mailbox_mut(account, mailbox)? {
                    Some(mb) => std::mem::replace(&mut mb.name, name.clone()),
                    None => return Ok(()),
                };
                if let Some(acct) = self.accounts.get_mut(&account) {
                    if acct.names.get(&old) == Some(&mailbox) {
                        acct.names.remove(&old);
                    }
                    acct.names.insert(name, mailbox);
                }
            }
            Op::Subscription {
                account,
                subscribed,
                name,
            } => {
                let acct = self.accounts.entry(account).or_default();
                acct.subscribed.retain(|n| n != &name);
                if subscribed {
                    acct.subscribed.push(name);
                }
            }
            Op::Metadata {
                account,
                mailbox,
                entry,
                value,
            } => {
                if mailbox != 0 && self.mailbox_mut(account, mailbox)?.is_none() {
                    return Ok(()); // the mailbox was deleted since
                }
                self.accounts
                    .entry(account)
                    .or_default()
                    .annotate(mailbox, entry, value);
            }
            Op::MailboxDelete { account, mailbox } => {
                if let Some(acct) = self.accounts.get_mut(&account) {
                    if let Some(gone) = acct.mailbox_by_id(mailbox) {
                        let (bytes, count) = (gone.counts.bytes, gone.messages.len() as u64);
                        acct.usage.bytes = acct.usage.bytes.saturating_sub(bytes);
                        acct.usage.messages = acct.usage.messages.saturating_sub(count);
                    }
                    acct.mailboxes.retain(|m| m.id != mailbox);
                    acct.names.retain(|_, id| *id != mailbox);
                    acct.metadata.retain(|a| a.mailbox != mailbox);
                    if let Err(at) = acct.deleted.binary_search(&mailbox) {
                        acct.deleted.insert(at, mailbox);
                    }
                }
            }
            Op::MailboxState {
                account,
                mailbox,
                uid_next,
                highest_modseq,
                history_floor,
            } => {
                let Some(mb) = self.mailbox_mut(account, mailbox)? else {
                    return Ok(());
                };
                mb.uid_next = mb.uid_next.max(uid_next);
                mb.highest_modseq = mb.highest_modseq.max(highest_modseq);
                mb.expunged_floor = mb.expunged_floor.max(history_floor);
                mb.flag_changes_floor = mb.flag_changes_floor.max(history_floor);
                mb.expunged.retain(|(m, _)| *m > history_floor);
                mb.flag_changes.retain(|(m, _)| *m > history_floor);
                // Compaction writes Appends in UID order with their current MODSEQs:
                // the only safe mark is "all of these existed at highest_modseq".
                mb.append_marks.clear();
                if let Some(last) = mb.messages.last() {
                    mb.append_marks.push((mb.highest_modseq, last.uid));
                }
            }
            Op::Expunge {
                account,
                mailbox,
                uid,
                modseq,
            } => {
                let Some((mb, usage)) = self.mailbox_and_usage(account, mailbox)? else {
                    return Ok(());
                };
                mb.highest_modseq = mb.highest_modseq.max(modseq);
                if let Ok(at) = mb.messages.binary_search_by_key(&uid, |m| m.uid) {
                    let gone = mb.messages.remove(at);
                    mb.forget(&gone, usage);
                    mb.note_expunge(modseq, uid);
                }
            }
        }
        Ok(())
    }

    /// Applies a commit's ops in order. Runs of expunges from one mailbox are removed
    /// in one pass over its messages: an EXPUNGE of 100,000 messages costs O(n), not
    /// O(n²) (DESIGN.md §10: bounded work per step).
    pub fn apply_all(
        &mut self,
        ops: impl IntoIterator<Item = Op>,
        blobs: &mut BlobCache,
    ) -> Result<(), DanglingOp> {
        let mut run: Option<ExpungeRun> = None;
        for op in ops {
            match op {
                Op::Expunge {
                    account,
                    mailbox,
                    uid,
                    modseq,
                } => match &mut run {
                    Some(r) if r.account == account && r.mailbox == mailbox => {
                        r.uids.push(uid);
                        r.modseq = r.modseq.max(modseq);
                    }
                    _ => {
                        if let Some(done) = run.take() {
                            self.expunge_run(done)?;
                        }
                        run = Some(ExpungeRun {
                            account,
                            mailbox,
                            uids: vec![uid],
                            modseq,
                        });
                    }
                },
                other => {
                    if let Some(done) = run.take() {
                        self.expunge_run(done)?;
                    }
                    self.apply(other, blobs)?;
                }
            }
        }
        match run {
            Some(done) => self.expunge_run(done),
            None => Ok(()),
        }
    }

    fn expunge_run(&mut self, run: ExpungeRun) -> Result<(), DanglingOp> {
        let ExpungeRun {
            account,
            mailbox,
            mut uids,
            modseq,
        } = run;
        let Some((mb, usage)) = self.mailbox_and_usage(account, mailbox)? else {
            return Ok(());
        };
        mb.highest_modseq = mb.highest_modseq.max(modseq);
        if let [uid] = uids.as_slice() {
            if let Ok(at) = mb.messages.binary_search_by_key(uid, |m| m.uid) {
                let gone = mb.messages.remove(at);
                mb.forget(&gone, usage);
                mb.note_expunge(modseq, *uid);
            }
            return Ok(());
        }
        uids.sort_unstable();
        let mut removed = Vec::new();
        let mut counts = mb.counts;
        mb.messages.retain(|m| {
            let gone = uids.binary_search(&m.uid).is_ok();
            if gone {
                removed.push(m.uid);
                counts.remove(m.flags, m.len);
                usage.bytes = usage.bytes.saturating_sub(u64::from(m.len));
                usage.messages = usage.messages.saturating_sub(1);
            }
            !gone
        });
        mb.counts = counts;
        // One MODSEQ for the run (its highest): the run is applied at once, so no
        // session saw a state between its expunges, and "expunged after m" may at
        // worst name a UID expunged at m itself (RFC 7162 allows reporting more).
        for uid in removed {
            mb.note_expunge(modseq, uid);
        }
        Ok(())
    }

    /// The mailbox an op targets and its account's usage (see [`Self::mailbox_mut`]).
    fn mailbox_and_usage(
        &mut self,
        account: u64,
        mailbox: u32,
    ) -> Result<Option<(&mut MailboxIndex, &mut Usage)>, DanglingOp> {
        let acct = self
            .accounts
            .get_mut(&account)
            .ok_or(DanglingOp("op refers to an unknown account"))?;
        if acct.deleted.binary_search(&mailbox).is_ok() {
            return Ok(None);
        }
        let usage = &mut acct.usage;
        let at = match acct.mailboxes.binary_search_by_key(&mailbox, |m| m.id) {
            Ok(at) => at,
            Err(_) => acct
                .mailboxes
                .iter()
                .position(|m| m.id == mailbox)
                .ok_or(DanglingOp("op refers to an unknown mailbox"))?,
        };
        Ok(acct.mailboxes.get_mut(at).map(|mb| (mb, usage)))
    }

    /// The mailbox an op targets; `Ok(None)` if it was deleted (an op queued while the
    /// delete was: nothing to do), an error if it never existed (damage or a bug).
    fn mailbox_mut(
        &mut self,
        account: u64,
        mailbox: u32,
    ) -> Result<Option<&mut MailboxIndex>, DanglingOp> {
        let acct = self
            .accounts
            .get_mut(&account)
            .ok_or(DanglingOp("op refers to an unknown account"))?;
        if acct.deleted.binary_search(&mailbox).is_ok() {
            return Ok(None);
        }
        acct.mailbox_mut_by_id(mailbox)
            .map(Some)
            .ok_or(DanglingOp("op refers to an unknown mailbox"))
    }

    /// Writes the snapshot atomically (write, fsync, rename, fsync dir).
    pub fn save_snapshot(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut file_bytes = Vec::with_capacity(bytes.len() + SNAPSHOT_HEADER_BYTES);
        file_bytes.extend_from_slice(SNAPSHOT_MAGIC);
        file_bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        file_bytes.extend_from_slice(&[0; 4]);
        file_bytes.extend_from_slice(&log_identity(dir)?.to_le_bytes());
        file_bytes.extend_from_slice(&bytes);
        let tmp = dir.join("index.snap.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&file_bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join("index.snap"))?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Loads `index.snap` if present and intact.
    pub fn load_snapshot(dir: &Path) -> Option<Index> {
        let bytes = std::fs::read(dir.join("index.snap")).ok()?;
        let body = bytes.get(SNAPSHOT_HEADER_BYTES..)?;
        // Bytes 12..16 are reserved (zero); a snapshot of another layout is ignored,
        // and so is one of another log file (compaction replaces the log: its
        // offsets would be wrong).
        if bytes.get(..8)? != SNAPSHOT_MAGIC || bytes.get(12..16)? != [0; 4] {
            return None;
        }
        let identity = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?);
        if log_identity(dir).ok()? != identity {
            return None;
        }
        let crc = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
        if crc32c::crc32c(body) != crc {
            return None;
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<Index, rkyv::rancor::Error>(&aligned).ok()
    }
}

/// `magic crc32c(body):u32 zero[4] log_inode:u64`, then the body.
const SNAPSHOT_HEADER_BYTES: usize = 24;

/// Which log file a snapshot describes: its inode number (a copied data directory
/// gets new inodes, and its snapshots are then merely ignored).
fn log_identity(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir.join("messages.log"))?.ino())
}

/// Bumped whenever an archived index type changes (05: summaries left the index and
/// keywords became a boxed slice; 06: per-mailbox counts and per-account usage; 07:
/// METADATA entries and save dates): an older snapshot is then ignored and the log replayed in
/// full (the snapshot is only an accelerator).
const SNAPSHOT_MAGIC: &[u8; 8] = b"smsnap07";

/// Blob records seen during replay or commit, so Append records can find their bytes.
#[derive(Debug, Default)]
pub struct BlobCache {
    blobs: HashMap<u64, (u64, u32)>,
}

impl BlobCache {
    pub fn insert(&mut self, blob: u64, offset: u64, len: u32) {
        self.blobs.insert(blob, (offset, len));
    }
    pub fn get(&self, blob: u64) -> Option<(u64, u32)> {
        self.blobs.get(&blob).copied()
    }
    /// Rebuilds the cache from the index (after loading a snapshot).
    pub fn from_index(index: &Index) -> BlobCache {
        let mut cache = BlobCache::default();
        for acct in index.accounts.values() {
            for mb in &acct.mailboxes {
                for m in &mb.messages {
                    cache.insert(m.blob, m.offset, m.len);
                }
            }
        }
        cache
    }
    /// Drops entries once their appends are applied (live commits do not need them).
    pub fn clear(&mut self) {
        self.blobs.clear();
    }
}
