//! An in-memory account for driving [`Session`](super::session::Session) without a
//! server: transcript tests, property tests and the fuzz target use it.
//!
//! It is the real store over in-memory bytes: every change is planned by
//! [`change::plan`] (as the partition does), encoded into an in-memory log with the
//! log's own record format, decoded back and applied with [`Index::apply_all`] — the
//! recovery path. Only the file, the mmap and the group commit are missing. Test
//! support: not used by the server.

use crate::store::change::{self, BlobAt, Change, Outcome, Reservations};
use crate::store::index::{BlobCache, Index, Op};
use crate::store::layout::{Scanner, FILE_MAGIC};
use crate::store::summary::Summary;

use super::session::{Bodies, Mailstore, Write, WriteFailure, Written};

/// One account in memory.
#[derive(Debug)]
pub struct MemStore {
    pub index: Index,
    pub account: u64,
    /// The log: [`FILE_MAGIC`] then records, as on disk.
    log: Vec<u8>,
    blobs: BlobCache,
    /// "Now" for the changes (UIDVALIDITY of new mailboxes).
    pub now: i64,
    /// The account's limits, as the shard would look them up.
    pub quota: crate::users::Quota,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    /// An account with the default mailboxes (UIDVALIDITY 1000…) and nothing in them.
    pub fn new() -> MemStore {
        let mut store = MemStore {
            index: Index::default(),
            account: 7,
            log: FILE_MAGIC.to_vec(),
            blobs: BlobCache::default(),
            now: 1_000,
            quota: crate::users::Quota::default(),
        };
        let ops = Reservations::default().default_mailboxes(&store.index, 7, 1_000);
        store.commit(&ops, &[]);
        store.now = 1_795_675_500;
        store
    }

    /// Encodes `ops` (and a Blob's bytes) at the log's end, then decodes and applies
    /// what was written, as recovery replays a log.
    fn commit(&mut self, ops: &[Op], blobs: &[(&[u8], &[u8])]) {
        let base = self.log.len();
        let messages: Vec<[&[u8]; 1]> = blobs.iter().map(|(_, m)| [*m]).collect();
        let blobs: Vec<(&[u8], &[&[u8]])> = blobs
            .iter()
            .zip(&messages)
            .map(|((summary, _), m)| (*summary, &m[..]))
            .collect();
        change::encode(&mut self.log, ops, &blobs);
        let decoded: Vec<Op> = Scanner::region(self.log.get(base..).unwrap_or(&[]), base as u64)
            .filter_map(|r| Op::decode(&r).ok())
            .collect();
        // Resolved locations (COPY) are in memory only: take them from the plan.
        let decoded = decoded
            .into_iter()
            .zip(ops)
            .map(|(d, planned)| match (d, planned) {
                (Op::Append { .. }, p @ Op::Append { .. }) => p.clone(),
                (d, _) => d,
            })
            .collect::<Vec<_>>();
        let _ = self.index.apply_all(decoded, &mut self.blobs);
    }

    /// Delivers a message into `mailbox` (as SMTP would); returns its UID.
    pub fn deliver(&mut self, mailbox: u32, message: &[u8], internal_date: i64) -> u32 {
        let summary = Summary::parse(message).to_bytes();
        let blob = BlobAt::at(self.log.len() as u64, summary.len(), message.len());
        let mut numbers = Reservations::default();
        let ops = change::plan_delivery(
            &self.index,
            &[self.account],
            mailbox,
            internal_date,
            &mut numbers,
            blob,
        );
        let uid = ops
            .iter()
            .find_map(|o| match o {
                Op::Append { uid, .. } => Some(*uid),
                _ => None,
            })
            .unwrap_or(0);
        self.commit(&ops, &[(&summary, message)]);
        uid
    }

    /// Makes a change as the partition would, durably at once.
    pub fn apply(&mut self, write: Write) -> Written {
        let (change, bodies) = write.into_change();
        // Nothing is spooled in memory (the driver reassembles what it "spooled").
        let Some(bodies) = bodies else {
            return self.apply_change(&change, &[]);
        };
        let whole = bodies.bytes.into_bytes().unwrap_or_default();
        let messages: Vec<&[u8]> = Bodies::ranges(&bodies.lengths, whole.len())
            .into_iter()
            .map(|r| whole.get(r).unwrap_or(&[]))
            .collect();
        self.apply_change(&change, &messages)
    }

    /// [`MemStore::apply`] of a store [`Change`] with APPEND's `messages`.
    pub fn apply_change(&mut self, change: &Change, messages: &[&[u8]]) -> Written {
        let summaries: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| Summary::parse(m).to_bytes())
            .collect();
        let sizes = messages
            .iter()
            .zip(&summaries)
            .map(|(m, s)| (s.len(), m.len()));
        let blobs = BlobAt::consecutive(self.log.len() as u64, sizes);
        let mut numbers = Reservations::default();
        let planned = match change::plan(
            &self.index,
            self.account,
            change,
            self.now,
            &mut numbers,
            &blobs,
        ) {
            Ok(p) => p,
            Err(crate::store::StoreError::Invalid(text)) => {
                return Written::Failed(WriteFailure::Cannot(text))
            }
            Err(_) => return Written::Failed(WriteFailure::Unavailable),
        };
        let bytes: Vec<(&[u8], &[u8])> = summaries
            .iter()
            .zip(messages)
            .map(|(s, m)| (s.as_slice(), *m))
            .collect();
        self.commit(&planned.ops, &bytes);
        match planned.outcome {
            Outcome::Done => Written::Done,
            other => other.into(),
        }
    }
}

impl Mailstore for MemStore {
    fn account(&self) -> Option<&crate::store::index::AccountIndex> {
        self.index.accounts.get(&self.account)
    }
    fn log(&self) -> Option<&[u8]> {
        Some(&self.log)
    }
    fn quota(&self) -> crate::users::Quota {
        self.quota
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
    /// The longest one `receive` call took (benches report it: the reactor is held
    /// that long).
    pub longest_step: std::time::Duration,
    /// As the IO layer's spooler: staged message bytes beyond this move to `spool`
    /// (`usize::MAX`: never), and the largest staged amount seen.
    pub spill_bytes: usize,
    pub spool: Vec<u8>,
    spool_generation: u64,
    pub largest_staged: usize,
    /// The session asked for COMPRESS=DEFLATE.
    pub compressed: bool,
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
            longest_step: std::time::Duration::ZERO,
            spill_bytes: usize::MAX,
            spool: Vec::new(),
            spool_generation: u64::MAX,
            largest_staged: 0,
            compressed: false,
        };
        d.settle();
        d
    }

    /// A session over TLS on `imap.example` with the default limits, greeted (the
    /// greeting is not in `sent`), not yet logged in.
    pub fn standard() -> Driver {
        let mut d = Driver::new(
            std::sync::Arc::new(super::session::ImapConfig {
                hostname: "imap.example".into(),
                tls_available: true,
                ..super::session::ImapConfig::default()
            }),
            true,
        );
        d.sent.clear();
        d
    }

    /// [`Driver::standard`] with `configure`'s changes to its settings, logged in as
    /// `bob` (the greeting and the login's reply are not in `sent`).
    pub fn logged_in(configure: impl FnOnce(&mut super::session::ImapConfig)) -> Driver {
        let mut config = super::session::ImapConfig {
            hostname: "imap.example".into(),
            tls_available: true,
            ..super::session::ImapConfig::default()
        };
        configure(&mut config);
        let mut d = Driver::new(std::sync::Arc::new(config), true);
        d.say("a LOGIN bob pw\r\n");
        d
    }

    /// Feeds `input` and returns what the server sent in answer.
    pub fn say(&mut self, input: &str) -> String {
        self.feed(input.as_bytes());
        String::from_utf8_lossy(&std::mem::take(&mut self.sent)).into_owned()
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

    // Longer than ~80 lines: the IO layer's loop, action by action, as src/shard/imap.rs runs it.
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
                let started = std::time::Instant::now();
                let used =
                    self.session
                        .receive(&self.pending, &self.store, self.now, &mut self.out);
                self.longest_step = self.longest_step.max(started.elapsed());
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
                    Action::Compress => {
                        // The bytes are not deflated here (the IO layer's part, tested
                        // end to end); the session's side of it is.
                        self.compressed = true;
                        self.session.compression_decided(true, &mut self.out);
                    }
                    Action::StartTls => {
                        // As the IO layer: plaintext pipelined behind STARTTLS is dropped.
                        self.pending.clear();
                        self.session.tls_established();
                    }
                    Action::SaslCredentials { username } => {
                        let verifier = crate::proto::sasl::scram::Verifier::derive_with(
                            "pw",
                            username.as_bytes(),
                            4096,
                        );
                        let channel = crate::proto::sasl::scram::ChannelBinding::default();
                        self.session
                            .sasl_credentials(verifier, &channel, &mut self.out);
                    }
                    Action::Authenticate {
                        username, secret, ..
                    } => {
                        use crate::proto::sasl::Secret;
                        if matches!(&secret, Secret::Password(p) if p == "pw")
                            || secret == (Secret::Proof { matched: true })
                        {
                            self.session.logged_in(username, &mut self.out)
                        } else {
                            self.session
                                .login_failed(LoginRefusal::BadCredentials, &mut self.out)
                        }
                    }
                    Action::Write(mut w) => {
                        if let Some(Bodies { bytes: message, .. }) = &mut w.bodies {
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
                    Action::Splice { .. } | Action::Unauthenticated => {}
                }
            }
        }
    }
}
