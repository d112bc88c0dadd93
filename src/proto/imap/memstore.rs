//! An in-memory account for driving [`Session`](super::session::Session) without a
//! server: transcript tests, property tests and the fuzz target use it.
//!
//! Changes go through the real [`Index::apply`] with the same [`Op`]s the partition
//! logs, so the session is tested against the index semantics it runs on; only the
//! log file and the group commit are missing. Test support: not used by the server.

use crate::store::index::{BlobCache, Index, MessageEntry, Op, SpecialUse, DEFAULT_MAILBOXES};
use crate::store::summary::Summary;

use super::session::{Mailstore, Write, Written};

/// One account in memory.
#[derive(Debug)]
pub struct MemStore {
    pub index: Index,
    pub account: u64,
    log: Vec<u8>,
    blobs: BlobCache,
    clock: u32,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    /// An account with the default mailboxes and nothing in them.
    pub fn new() -> MemStore {
        let mut store = MemStore {
            index: Index::default(),
            account: 7,
            log: Vec::new(),
            blobs: BlobCache::default(),
            clock: 1_000,
        };
        for (i, (name, special)) in DEFAULT_MAILBOXES.iter().enumerate() {
            store.op(Op::MailboxCreate {
                account: 7,
                id: i as u32 + 1,
                uidvalidity: 1_000 + i as u32,
                special: *special,
                name: (*name).to_string(),
            });
        }
        store
    }

    fn op(&mut self, op: Op) -> bool {
        self.index.apply(op, &mut self.blobs).is_ok()
    }

    fn next_modseq(&self, mailbox: u32) -> u64 {
        self.mailbox(mailbox).map_or(1, |m| m.highest_modseq + 1)
    }

    fn mailbox(&self, id: u32) -> Option<&crate::store::index::MailboxIndex> {
        self.index
            .accounts
            .get(&self.account)?
            .mailboxes
            .iter()
            .find(|m| m.id == id)
    }

    /// Delivers a message into `mailbox` (as SMTP would); returns its UID.
    pub fn deliver(&mut self, mailbox: u32, message: &[u8], internal_date: i64) -> u32 {
        self.store_message(mailbox, message, internal_date, 0, Vec::new())
    }

    fn store_message(
        &mut self,
        mailbox: u32,
        message: &[u8],
        internal_date: i64,
        flags: u32,
        keywords: Vec<String>,
    ) -> u32 {
        let offset = self.log.len() as u64;
        self.log.extend_from_slice(message);
        let summary = Box::new(Summary::parse(message));
        self.op(Op::Blob {
            blob: offset,
            offset,
            len: message.len() as u32,
            summary,
        });
        let uid = self.mailbox(mailbox).map_or(1, |m| m.uid_next);
        let modseq = self.next_modseq(mailbox);
        self.op(Op::Append {
            account: self.account,
            mailbox,
            uid,
            modseq,
            internal_date,
            flags,
            blob: offset,
            keywords,
            resolved: None,
        });
        uid
    }

    fn create(&mut self, name: &str) -> u32 {
        let id = self
            .index
            .accounts
            .get(&self.account)
            .map_or(6, |a| a.next_mailbox_id());
        self.clock += 1;
        self.op(Op::MailboxCreate {
            account: self.account,
            id,
            uidvalidity: self.clock,
            special: SpecialUse::None,
            name: name.to_string(),
        });
        id
    }

    fn copy(&mut self, from: u32, uids: &[u32], to: u32) -> Vec<(u32, u32)> {
        let entries: Vec<MessageEntry> = self
            .mailbox(from)
            .map(|m| {
                m.messages
                    .iter()
                    .filter(|e| uids.contains(&e.uid))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut pairs = Vec::new();
        for e in entries {
            let uid = self.mailbox(to).map_or(1, |m| m.uid_next);
            let modseq = self.next_modseq(to);
            self.op(Op::Append {
                account: self.account,
                mailbox: to,
                uid,
                modseq,
                internal_date: e.internal_date,
                flags: e.flags,
                blob: e.blob,
                keywords: e.keywords.clone(),
                resolved: Some((e.offset, e.len, Box::new(e.summary.clone()))),
            });
            pairs.push((e.uid, uid));
        }
        pairs
    }

    fn expunge(&mut self, mailbox: u32, uids: &[u32]) {
        for &uid in uids {
            let modseq = self.next_modseq(mailbox);
            self.op(Op::Expunge {
                account: self.account,
                mailbox,
                uid,
                modseq,
            });
        }
    }

    /// Makes a change as the partition would, durably at once.
    pub fn apply(&mut self, write: Write) -> Written {
        let account = self.account;
        match write {
            Write::Create { names } => {
                for n in names {
                    self.create(&n);
                }
                Written::Done
            }
            Write::Delete { mailbox } => {
                self.op(Op::MailboxDelete { account, mailbox });
                Written::Done
            }
            Write::Rename { renames } => {
                for (mailbox, name) in renames {
                    self.op(Op::MailboxRename {
                        account,
                        mailbox,
                        name,
                    });
                }
                Written::Done
            }
            Write::RenameInbox { to } => {
                let id = self.create(&to);
                let uids: Vec<u32> = self
                    .mailbox(1)
                    .map(|m| m.messages.iter().map(|e| e.uid).collect())
                    .unwrap_or_default();
                self.copy(1, &uids, id);
                self.expunge(1, &uids);
                Written::Done
            }
            Write::Subscribe { name, subscribed } => {
                self.op(Op::Subscription {
                    account,
                    subscribed,
                    name,
                });
                Written::Done
            }
            Write::Append {
                mailbox,
                message,
                flags,
                keywords,
                internal_date,
            } => {
                // Nothing is spooled in memory (the driver never moves bytes out).
                let message = message.into_bytes().unwrap_or_default();
                let uid = self.store_message(mailbox, &message, internal_date, flags, keywords);
                Written::Appended { uid }
            }
            Write::Store { mailbox, changes } => {
                let mut changed = Vec::new();
                for (uid, flags, keywords) in changes {
                    let modseq = self.next_modseq(mailbox);
                    self.op(Op::Flags {
                        account,
                        mailbox,
                        uid,
                        modseq,
                        flags,
                        keywords,
                    });
                    changed.push((uid, modseq));
                }
                Written::Stored(changed)
            }
            Write::Copy {
                from,
                uids,
                to,
                expunge_source,
            } => {
                let pairs = self.copy(from, &uids, to);
                if expunge_source {
                    let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
                    self.expunge(from, &moved);
                }
                Written::Copied(pairs)
            }
            Write::Expunge { mailbox, uids } => {
                self.expunge(mailbox, &uids);
                Written::Done
            }
        }
    }
}

impl Mailstore for MemStore {
    fn account(&self) -> Option<&crate::store::index::AccountIndex> {
        self.index.accounts.get(&self.account)
    }
    fn bytes(&self, entry: &MessageEntry) -> Option<&[u8]> {
        let start = entry.offset as usize;
        self.log.get(start..start + entry.len as usize)
    }
}

/// A session wired to a [`MemStore`]: feeds input as the IO layer would and carries
/// out every action (password `pw` logs in; writes apply at once).
#[derive(Debug)]
pub struct Driver {
    pub session: super::session::Session,
    pub store: MemStore,
    pub out: super::session::Outbox,
    /// Input not consumed yet.
    pub pending: Vec<u8>,
    /// Everything the server sent.
    pub sent: Vec<u8>,
    pub closed: bool,
    pub now: i64,
    /// Literals written from the log rather than the reply buffer.
    pub splices: usize,
    /// Calls to `receive`, and the largest reply one of them produced (long replies
    /// come in steps bounded by `output_bytes_max`).
    pub steps: usize,
    pub largest_step_reply: usize,
    /// As the IO layer's spooler: staged message bytes beyond this move to `spool`
    /// (`usize::MAX`: never), and the largest staged amount seen.
    pub spill_bytes: usize,
    pub spool: Vec<u8>,
    spool_generation: u64,
    pub largest_staged: usize,
}

impl Driver {
    pub fn new(config: std::sync::Arc<super::session::ImapConfig>, tls: bool) -> Driver {
        let session = super::session::Session::new(config, tls);
        let mut out = super::session::Outbox::default();
        session.greet(&mut out);
        let mut d = Driver {
            session,
            store: MemStore::new(),
            out,
            pending: Vec::new(),
            sent: Vec::new(),
            closed: false,
            now: 1_795_675_500,
            splices: 0,
            steps: 0,
            largest_step_reply: 0,
            spill_bytes: usize::MAX,
            spool: Vec::new(),
            spool_generation: u64::MAX,
            largest_staged: 0,
        };
        d.settle();
        d
    }

    /// Adds input and runs the session until it needs more.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.pending.extend_from_slice(bytes);
        self.settle();
    }

    /// The store changed behind the session's back (another session, a delivery).
    pub fn notify(&mut self) {
        self.session.changed(&self.store, &mut self.out);
        self.settle();
    }

    fn settle(&mut self) {
        use super::session::{Action, LoginRefusal};
        loop {
            // Splices first, in order, as the IO layer writes them.
            let mut written = 0;
            let mut actions = Vec::new();
            for action in std::mem::take(&mut self.out.actions) {
                if let Action::Splice { at, offset, len } = action {
                    self.sent
                        .extend_from_slice(self.out.reply.get(written..at).unwrap_or(&[]));
                    let start = offset as usize;
                    self.sent
                        .extend_from_slice(self.store.log.get(start..start + len).unwrap_or(&[]));
                    written = at;
                    self.splices += 1;
                } else {
                    actions.push(action);
                }
            }
            self.sent
                .extend_from_slice(self.out.reply.get(written..).unwrap_or(&[]));
            self.out.reply.clear();
            if actions.is_empty() {
                if self.closed {
                    return;
                }
                let used =
                    self.session
                        .receive(&self.pending, &self.store, self.now, &mut self.out);
                self.steps += 1;
                self.largest_step_reply = self.largest_step_reply.max(self.out.reply.len());
                if let Some(body) = self.session.incoming_mut() {
                    if body.generation() != self.spool_generation {
                        self.spool.clear(); // a new body: the old spool is stale
                        self.spool_generation = body.generation();
                    }
                    self.largest_staged = self.largest_staged.max(body.staged.len());
                    if body.staged.len() >= self.spill_bytes {
                        self.spool.extend_from_slice(&body.take_staged());
                    }
                }
                self.pending.drain(..used.min(self.pending.len()));
                if self.out.actions.is_empty()
                    && self.out.reply.is_empty()
                    && !self.session.wants_resume()
                {
                    return;
                }
                continue;
            }
            for action in actions {
                match action {
                    Action::StartTls => {
                        // As the IO layer: plaintext pipelined behind STARTTLS is dropped.
                        self.pending.clear();
                        self.session.tls_established();
                    }
                    Action::Authenticate { username, password } => {
                        if password == "pw" {
                            self.session.logged_in(username, &mut self.out)
                        } else {
                            self.session
                                .login_failed(LoginRefusal::BadCredentials, &mut self.out)
                        }
                    }
                    Action::Write(mut w) => {
                        if let Write::Append { message, .. } = &mut w {
                            // Reassemble what was "spooled", as the spooler does.
                            let mut whole = if message.generation() == self.spool_generation {
                                std::mem::take(&mut self.spool)
                            } else {
                                Vec::new()
                            };
                            whole.extend_from_slice(&message.staged);
                            *message = crate::proto::Incoming::with_head(0, whole);
                        }
                        let result = self.store.apply(w);
                        self.session.written(result, &self.store, &mut self.out);
                    }
                    Action::Close => {
                        self.closed = true;
                        self.pending.clear();
                    }
                    Action::Splice { .. } => {}
                }
            }
        }
    }
}
