//! One IMAP session (RFC 9051 / RFC 3501 and the advertised extensions), sans-IO.
//!
//! Owns the protocol state: login state, the selected mailbox as this client sees it
//! (sequence numbers → UIDs, the last MODSEQ reported), enabled extensions, IDLE,
//! and every reply. Reads go through [`Mailstore`] (the account's index and message
//! bytes, borrowed for one call); writes leave as [`Action::Write`] and the session
//! waits — reading no further input — until the IO layer reports the durable result
//! with [`Session::written`]. So a tagged `OK` for APPEND, STORE, COPY, MOVE or
//! EXPUNGE is only ever produced after the change is durable.
//!
//! This file is the dispatcher and the session state: framing input into commands,
//! checking each [`Verb`] against the state and routing it to its command family's
//! file (`auth`, `enable`, `mailbox`, `list`, `fetch`, `search_command`,
//! `sort_command`, `context`, `store_command`, `copy`, `expunge`, `append`, `quota`,
//! `metadata`, `notify`). Each family's file parses its arguments, runs and replies;
//! `update` holds the unsolicited updates every command may carry, `write` the
//! durable changes and their completion.
//!
//! Never touches a socket, a clock (time is an argument) or panics on input.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::Arc;

use super::command::{
    self, FetchAtt, FetchModifiers, SearchArgs, Section, SectionText, SequenceSet, StatusItem,
    StoreMode,
};
use super::lexer::{tokenize, Frame, FrameLimits, Framer, Refusal, Token};
use super::render;
use super::search::{self, Candidate};
use super::verb::Verb;

use crate::store::change::{Change, NewMessage, Outcome};
use crate::store::index::{
    flags, mailbox_name_eq, AccountIndex, MailboxIndex, MessageEntry, SpecialUse, DEFAULT_MAILBOXES,
};
use crate::store::op::CorruptRecord;
use crate::store::Summary;

pub type Outbox = crate::proto::Outbox<Action>;

use super::names::normalize;
pub use super::names::DELIMITER;

mod append;
mod auth;
mod context;
mod copy;
mod enable;
mod expunge;
mod fetch;
mod list;
mod mailbox;
mod metadata;
mod notify;
mod quota;
mod recent;
mod search_command;
mod sort_command;
mod store_command;
mod update;
mod view;
mod write;

use mailbox::{status_line, vanished_since};
use update::{announce_keywords, flags_changed_since, flags_update};
pub use write::{Bodies, Write, WriteFailure, Written};

use view::{View, Viewpoint};

/// Settings a session needs (from `Config`).
#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub hostname: String,
    /// TLS can be started on this port (`listen.imap` with a certificate).
    pub tls_available: bool,
    /// `tls.allow_plaintext_auth`: LOGIN/AUTHENTICATE without TLS.
    pub allow_plaintext_auth: bool,
    /// `limits.imap_command_bytes_max`: longest command line outside literals.
    pub command_bytes_max: usize,
    /// `limits.imap_thread_messages_max`: matches one THREAD may thread.
    pub thread_messages_max: usize,
    /// `limits.imap_append_messages_max`: messages in one (MULTI)APPEND.
    pub append_messages_max: usize,
    /// `limits.imap_metadata_bytes_max`: METADATA one account keeps.
    pub metadata_bytes_max: usize,
    /// `limits.imap_search_updates_max`: live SEARCH results one session keeps.
    pub search_updates_max: usize,
    /// `limits.message_size_max`: APPENDLIMIT and the largest literal.
    pub literal_bytes_max: u64,
    /// List nesting in one command.
    pub depth_max: usize,
    pub bad_commands_max: u32,
    pub auth_failures_max: u32,
    /// `limits.preauth_literal_bytes_max`: the largest literal before login.
    pub preauth_literal_bytes_max: u64,
    /// `limits.mailboxes_per_account_max` (CREATE, RENAME of INBOX, SUBSCRIBE).
    pub mailboxes_per_account_max: usize,
    /// `limits.keywords_per_mailbox_max`: distinct keywords one mailbox may carry.
    pub keywords_per_mailbox_max: usize,
    /// `limits.output_buffer_bytes_max`: reply bytes produced before the session stops
    /// and lets the IO layer send them (long replies continue in further steps).
    pub output_bytes_max: usize,
}

impl Default for ImapConfig {
    /// The embedded defaults (as `Config` has them); tests override what they need.
    fn default() -> Self {
        ImapConfig {
            hostname: "localhost".into(),
            tls_available: true,
            allow_plaintext_auth: false,
            command_bytes_max: 64 * 1024,
            thread_messages_max: 20_000,
            append_messages_max: 1_000,
            metadata_bytes_max: 256 * 1024,
            search_updates_max: 8,
            literal_bytes_max: 50 << 20,
            depth_max: 16,
            bad_commands_max: 20,
            auth_failures_max: 3,
            preauth_literal_bytes_max: 8 * 1024,
            mailboxes_per_account_max: 10_000,
            keywords_per_mailbox_max: 256,
            output_bytes_max: 256 * 1024,
        }
    }
}

/// Read access to the logged-in account, for the duration of one call.
pub trait Mailstore {
    /// The account's mailboxes (`None` before login or if the account has none yet).
    fn account(&self) -> Option<&AccountIndex>;
    /// The account's partition log (mapped), where message bytes and their MIME
    /// summaries are read from.
    fn log(&self) -> Option<&[u8]>;
    /// The stored bytes of a message.
    fn bytes(&self, entry: &MessageEntry) -> Option<&[u8]> {
        let start = entry.offset as usize;
        self.log()?.get(start..start + entry.len as usize)
    }
    /// The MIME summary of a message, read from its Blob record (re-derived from the
    /// message if it is of an older version); an error if the record is unreadable.
    fn summary(&self, entry: &MessageEntry) -> Result<Summary, CorruptRecord> {
        let log = self.log().unwrap_or(&[]);
        crate::store::op::summary_at(log, entry.blob, entry.offset, entry.len)
    }
    /// The logged-in account's limits (none unless the store says).
    fn quota(&self) -> crate::users::Quota {
        crate::users::Quota::default()
    }
}

/// A store with nothing in it (before login).
pub struct NoStore;

impl Mailstore for NoStore {
    fn account(&self) -> Option<&AccountIndex> {
        None
    }
    fn log(&self) -> Option<&[u8]> {
        None
    }
}

/// Work for the IO layer.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Flush replies, then run the TLS handshake; call [`Session::tls_established`].
    StartTls,
    /// Find a deflate slot and answer [`Session::compression_decided`]; if allowed,
    /// flush replies (uncompressed), then deflate both directions from here on (input
    /// already read behind the command is compressed).
    Compress,
    /// Check the login; answer with [`Session::logged_in`] or [`Session::login_failed`].
    Authenticate {
        /// `LOGIN` (the command) or the SASL mechanism (`PLAIN`…), for the login log.
        mechanism: &'static str,
        username: String,
        secret: crate::proto::sasl::Secret,
    },
    /// Look up the account's SCRAM verifier (a decoy when there is none) and the
    /// channel binding data; answer with [`Session::sasl_credentials`].
    SaslCredentials { username: String },
    /// Make a durable change; answer with [`Session::written`].
    Write(Write),
    /// Bytes `offset..offset + len` of the log go out at reply position `at` (before
    /// `reply[at..]`): large FETCH literals are written from the map, never copied
    /// into the reply buffer.
    Splice { at: usize, offset: u64, len: usize },
    /// Flush replies and close the connection.
    Close,
    /// The session logged out but stays connected (UNAUTHENTICATE, RFC 8437): release
    /// the account (its session slot) before the next login.
    Unauthenticated,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    BadCredentials,
    Temporary,
    /// Backed off after failed logins: no password was checked.
    Throttled,
    /// The account has `limits.sessions_per_user_max` sessions.
    TooManySessions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated,
    Logout,
}

/// The selected mailbox as this client knows it.
#[derive(Debug, Clone)]
struct Selected {
    id: u32,
    read_only: bool,
    /// What the session was told: its sequence numbers ([`View`]).
    at: Viewpoint,
    /// Flag changes up to this MODSEQ have been reported.
    reported_modseq: u64,
    /// Keywords announced in FLAGS.
    keywords: Vec<String>,
    /// What this session shows as `\Recent` (IMAP4rev1 only).
    recent: recent::Recent,
    /// `$`, the last SEARCH RETURN (SAVE) result, as UIDs (RFC 5182): messages
    /// expunged since simply are not found; selecting again empties it.
    saved: SequenceSet,
    /// Live SEARCH results (CONTEXT=SEARCH), updated as the mailbox changes.
    live: Vec<context::LiveSearch>,
}

impl Selected {
    /// The flags to render for `entry`: its stored flags, plus `\Recent` if this
    /// session shows it so.
    fn flags_of(&self, entry: &MessageEntry) -> u32 {
        entry.flags | recent_bit(&self.recent, entry.uid)
    }
}

/// A command waiting for the IO layer.
#[derive(Debug)]
enum Pending {
    /// STARTTLS answered: nothing more is read until the handshake is done (input
    /// pipelined behind it is plaintext the client must not have sent).
    StartTls,
    /// COMPRESS asked: nothing more is read until the IO layer has decided (and,
    /// if allowed, the stream deflates).
    Compress {
        tag: String,
    },
    Login {
        tag: String,
    },
    Simple {
        tag: String,
        done: &'static str,
    },
    /// CREATE: the reply names the new mailbox's MAILBOXID (RFC 8474).
    Create {
        tag: String,
        name: String,
    },
    Append {
        tag: String,
        uidvalidity: u32,
    },
    Store(StorePending),
    Copy {
        tag: String,
        uid: bool,
        moving: bool,
        uidvalidity: u32,
    },
    Expunge {
        tag: String,
        closing: bool,
    },
    Fetch(FetchPending),
    /// A DELETE of the selected mailbox deselects it.
    Delete {
        tag: String,
        mailbox: u32,
    },
    /// A LIST answered in steps (see [`Session::resume`]).
    List(list::ListPending),
    /// A FETCH answered in steps.
    FetchSteps(FetchPending),
    /// A SEARCH evaluated in steps.
    SearchSteps(SearchPending),
    /// A SORT or THREAD's matches being ordered in steps.
    SortSteps(sort_command::SortJob),
}

#[derive(Debug)]
struct StorePending {
    tag: String,
    uid: bool,
    silent: bool,
    targets: Vec<u32>,
    modified: Vec<u32>,
}

#[derive(Debug)]
struct FetchPending {
    tag: String,
    uid: bool,
    targets: Vec<u32>,
    items: Vec<FetchAtt>,
    modifiers: FetchModifiers,
    /// `targets[next..]` are still to be answered (FETCH answers in steps).
    next: usize,
}

/// A SEARCH being evaluated in steps.
#[derive(Debug)]
struct SearchPending {
    tag: String,
    uid: bool,
    ret: command::SearchReturn,
    key: command::SearchKey,
    with_modseq: bool,
    /// Reads message bytes (HEADER, BODY, TEXT): costs more per message.
    reads_message: bool,
    /// Sequence numbers `next + 1…end` are still to be examined (the key's UID or
    /// sequence-set bounds, so `UID SEARCH UID 999990:*` reads 10 messages, not 1M).
    next: usize,
    end: usize,
    hits: Vec<u32>,
    /// SORT or THREAD: the order asked for, and each match with its key.
    order: Option<sort_command::Order>,
    ordered: Vec<sort_command::Ordered>,
    /// UIDs of the hits, when the result is to be saved as `$`.
    hit_uids: Vec<u32>,
    /// MODSEQ of each hit (for RETURN (MIN)/(MAX) with a MODSEQ criterion).
    hit_modseqs: Vec<u64>,
    highest: u64,
}

/// Messages one FETCH step answers at most (besides `limits.output_buffer_bytes_max`):
/// 256 ENVELOPE+BODYSTRUCTURE renderings take about 1 ms (275k/s, benches/imap_pop3).
const FETCH_STEP_MESSAGES: usize = 256;
/// Work one SEARCH step may do: a message costs 1, plus 1 per 256 bytes when the key
/// reads the message (about 1 MiB of text searched, or 4,096 index entries, a step).
const SEARCH_STEP_UNITS: usize = 4096;

/// One IMAP session.
#[derive(Debug)]
pub struct Session {
    config: Arc<ImapConfig>,
    framer: Framer,
    state: State,
    tls: bool,
    /// COMPRESS=DEFLATE is on (RFC 4978; it stays on for the connection's life).
    compressed: bool,
    /// NOTIFY SET (RFC 5465) and what it has reported.
    notify: Option<notify::Notify>,
    user: Option<String>,
    selected: Option<Selected>,
    pending: Option<Pending>,
    /// Bytes of a refused LITERAL+ literal still to throw away.
    discard: u64,
    /// Throw input away up to the next LF (after a refused over-long line).
    skip_line: bool,
    /// Waiting for an AUTHENTICATE response line, under this tag.
    sasl_tag: Option<String>,
    /// The SASL exchange of an AUTHENTICATE in progress.
    sasl: Option<Box<crate::proto::sasl::Exchange>>,
    /// Logged in by the IO layer; the OK waits for the empty answer to the
    /// mechanism's success data.
    sasl_success: Option<String>,
    /// In IDLE, under this tag.
    idle_tag: Option<String>,
    bad_commands: u32,
    auth_failures: u32,
    condstore: bool,
    qresync: bool,
    rev2: bool,
    commands: u64,
    /// The last call stopped taking commands because the reply buffer was full.
    output_full: bool,
    /// An APPEND message literal being received.
    upload: Option<append::Upload>,
    /// Bodies begun (tells one upload's spool from the next).
    uploads: u64,
    /// The time given with the latest input (WITHIN's OLDER/YOUNGER measure from it).
    now: i64,
    /// ENABLE UTF8=ACCEPT (RFC 6855): UTF-8 mailbox names and UTF8 APPEND.
    utf8_accept: bool,
}

/// Capabilities that are not commands (those come from [`Verb::capability`]).
const PROTOCOL_CAPABILITIES: &str = "CONDSTORE QRESYNC SPECIAL-USE LIST-STATUS BINARY CHILDREN \
     OBJECTID WITHIN SEARCHRES ESORT SORT=DISPLAY PREVIEW UTF8=ACCEPT MULTIAPPEND CATENATE METADATA-SERVER SAVEDATE";

/// The capability list shared by every session, built once.
fn static_capabilities() -> &'static str {
    static CAPS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CAPS.get_or_init(|| {
        let mut caps = PROTOCOL_CAPABILITIES.to_string();
        for cap in super::verb::command_capabilities() {
            caps.push(' ');
            caps.push_str(cap);
        }
        caps.push_str(quota::CAPABILITIES);
        caps
    })
}

/// The largest non-synchronizing literal under LITERAL- (RFC 7888 §5).
const LITERAL_MINUS_BYTES_MAX: u64 = 4096;

/// Longest keyword (a flag atom) stored.
const KEYWORD_BYTES_MAX: usize = 255;
/// Longest line accepted in IDLE or as an AUTHENTICATE response.
const LINE_MAX: usize = 8192;

impl Session {
    pub fn new(config: Arc<ImapConfig>, tls: bool) -> Session {
        Session {
            config,
            framer: Framer::new(),
            state: State::NotAuthenticated,
            tls,
            compressed: false,
            notify: None,
            user: None,
            selected: None,
            pending: None,
            discard: 0,
            skip_line: false,
            sasl_tag: None,
            sasl: None,
            sasl_success: None,
            idle_tag: None,
            bad_commands: 0,
            auth_failures: 0,
            condstore: false,
            qresync: false,
            rev2: false,
            commands: 0,
            output_full: false,
            upload: None,
            uploads: 0,
            now: 0,
            utf8_accept: false,
        }
    }

    /// The greeting.
    pub fn greet(&self, out: &mut Outbox) {
        out.line(&format!(
            "* OK [CAPABILITY {}] {} shardmail IMAP ready",
            self.capabilities(),
            self.config.hostname
        ));
    }

    /// Commands handled so far (for metrics).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Between commands (a safe point to stop).
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.sasl_tag.is_none() && self.upload.is_none()
    }

    /// The APPEND message being received, for the IO layer to spool as it grows.
    pub fn incoming_mut(&mut self) -> Option<&mut crate::proto::Incoming> {
        self.upload.as_mut().map(append::Upload::incoming_mut)
    }

    /// A literal is arriving (its deadline is a minimum data rate, not the command
    /// timeout).
    pub fn receiving_literal(&self) -> bool {
        self.upload.is_some() || self.discard > 0 || self.framer.in_literal()
    }

    /// The session stopped with work left that needs no input: a long reply being
    /// produced in steps, or pipelined commands held back until the client reads what
    /// is queued. The IO layer sends the replies, yields to other sessions, then calls
    /// [`Session::receive`] again (with whatever input it has).
    pub fn wants_resume(&self) -> bool {
        self.output_full || self.is_continuing()
    }

    fn is_continuing(&self) -> bool {
        matches!(
            self.pending,
            Some(
                Pending::List(_)
                    | Pending::FetchSteps(_)
                    | Pending::SearchSteps(_)
                    | Pending::SortSteps(_)
            )
        )
    }

    /// Runs one more step of a command answered in steps.
    fn resume(&mut self, store: &dyn Mailstore, out: &mut Outbox) {
        match self.pending.take() {
            Some(Pending::List(job)) => self.list_step(job, store, out),
            Some(Pending::FetchSteps(job)) => self.fetch_step(job, store, out),
            Some(Pending::SearchSteps(job)) => self.search_step(job, store, out),
            Some(Pending::SortSteps(job)) => self.sort_step(job, store, out),
            other => self.pending = other,
        }
    }

    /// In IDLE: the IO layer should call [`Session::changed`] when the account changes.
    pub fn is_idling(&self) -> bool {
        self.idle_tag.is_some()
    }

    /// The id of the selected mailbox, if any.
    pub fn selected_mailbox(&self) -> Option<u32> {
        self.selected.as_ref().map(|s| s.id)
    }

    fn login_allowed(&self) -> bool {
        self.tls || self.config.allow_plaintext_auth
    }

    fn capabilities(&self) -> String {
        let literal = if self.state == State::NotAuthenticated {
            "LITERAL-"
        } else {
            "LITERAL+"
        };
        let mut caps = format!("IMAP4rev1 IMAP4rev2 {literal} {}", static_capabilities());
        caps.push_str(&format!(" APPENDLIMIT={}", self.config.literal_bytes_max));
        if self.state == State::NotAuthenticated {
            if !self.tls && self.config.tls_available {
                caps.push_str(" STARTTLS");
            }
            if self.login_allowed() {
                for m in crate::proto::sasl::offered(self.tls, false) {
                    caps.push_str(" AUTH=");
                    caps.push_str(m.name());
                }
            } else {
                caps.push_str(" LOGINDISABLED");
            }
        }
        caps
    }

    fn frame_limits(&self) -> FrameLimits {
        // Before login a literal can only be a user name or password: a peer that has
        // proved nothing cannot make us buffer a message (limits.preauth_literal_bytes_max).
        let literal_bytes_max = if self.state == State::NotAuthenticated {
            self.config
                .preauth_literal_bytes_max
                .min(self.config.literal_bytes_max)
        } else {
            self.config.literal_bytes_max
        };
        // Logged in, an APPEND's message streams (up to APPENDLIMIT); every other
        // literal is buffered with its command, so together they are bounded like a
        // command line.
        let authenticated = self.state == State::Authenticated;
        FrameLimits {
            command_bytes_max: self.config.command_bytes_max,
            literal_bytes_max: if authenticated {
                self.config.command_bytes_max as u64
            } else {
                literal_bytes_max
            },
            upload_bytes_max: if authenticated {
                self.config.literal_bytes_max
            } else {
                0
            },
            // Before login LITERAL- is advertised instead of LITERAL+ (RFC 7888 §5):
            // nobody unproven sends more than 4 KiB without being asked.
            non_sync_bytes_max: if self.state == State::NotAuthenticated {
                LITERAL_MINUS_BYTES_MAX
            } else {
                u64::MAX
            },
        }
    }

    /// The largest literal accepted now (for the refusal text).
    fn literal_limit_text(&self) -> String {
        if self.state == State::NotAuthenticated {
            format!(
                "Literal larger than limits.preauth_literal_bytes_max ({} bytes) before login \
                 (and {{n+}} ones at most 4096: LITERAL-)",
                self.frame_limits().literal_bytes_max
            )
        } else {
            format!(
                "Literal larger than limits.message_size_max ({} bytes)",
                self.config.literal_bytes_max
            )
        }
    }

    /// Consumes complete commands from `input`; returns how many bytes were used.
    /// Stops early when an action must complete first.
    // Longer than ~80 lines: one arm per kind of frame, in the order the framer reports them.
    pub fn receive(
        &mut self,
        input: &[u8],
        store: &dyn Mailstore,
        now: i64,
        out: &mut Outbox,
    ) -> usize {
        self.now = now;
        self.output_full = false;
        if self.is_continuing() {
            self.resume(store, out);
        }
        let mut used = 0;
        while self.pending.is_none() && self.state != State::Logout {
            let rest = input.get(used..).unwrap_or(&[]);
            if rest.is_empty() {
                break;
            }
            if out.reply.len() >= self.config.output_bytes_max {
                // Pipelined commands wait until the client has read what is queued
                // (limits.output_buffer_bytes_max): unsent output stays bounded.
                self.output_full = true;
                break;
            }
            if self.discard > 0 {
                let n = self.discard.min(rest.len() as u64);
                self.discard -= n;
                used += n as usize;
                continue;
            }
            if self.skip_line {
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        used += i + 1;
                        self.skip_line = false;
                        continue;
                    }
                    None => {
                        used += rest.len();
                        break;
                    }
                }
            }
            if self.upload.is_some() {
                match self.upload_input(rest, store, out) {
                    Some(n) => {
                        used += n;
                        continue;
                    }
                    None => break,
                }
            }
            if self.idle_tag.is_some() || self.sasl_tag.is_some() {
                let Some(lf) = memchr::memchr(b'\n', rest) else {
                    if rest.len() > LINE_MAX {
                        used += rest.len();
                        self.skip_line = true;
                        self.line_too_long(out);
                    }
                    break;
                };
                let line = rest.get(..lf).unwrap_or(&[]);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                used += lf + 1;
                if self.idle_tag.is_some() {
                    self.idle_line(line, store, out);
                } else {
                    self.sasl_line(line, out);
                }
                continue;
            }
            match self.framer.frame(rest, &self.frame_limits()) {
                Frame::NeedMore => break,
                Frame::Continue => {
                    out.line("+ Ready for literal data");
                    break;
                }
                Frame::Complete { len } => {
                    let command = rest.get(..len).unwrap_or(&[]);
                    used += len;
                    self.command(command, store, out);
                }
                Frame::Upload {
                    prefix,
                    header,
                    size,
                    non_sync,
                } => {
                    let command = rest.get(..prefix).unwrap_or(&[]);
                    used += header;
                    self.commands += 1;
                    self.begin_upload(command, size, non_sync, store, out);
                }
                Frame::Refused {
                    reason,
                    tag,
                    discard,
                    remaining,
                    line_continues,
                } => {
                    used += discard;
                    self.discard = remaining;
                    self.skip_line = line_continues;
                    let tag = tag.unwrap_or_else(|| "*".into());
                    match reason {
                        Refusal::LiteralTooLarge => {
                            out.line(&format!("{tag} NO [TOOBIG] {}", self.literal_limit_text()));
                            self.count_bad(out);
                        }
                        Refusal::CommandTooLong => {
                            out.line(&format!(
                                "{tag} BAD Command line longer than {} bytes (limits.imap_command_bytes_max)",
                                self.config.command_bytes_max
                            ));
                            self.count_bad(out);
                        }
                    }
                }
            }
        }
        used
    }

    fn line_too_long(&mut self, out: &mut Outbox) {
        out.line("* BAD Line too long");
        self.count_bad(out);
    }

    fn count_bad(&mut self, out: &mut Outbox) {
        self.bad_commands += 1;
        if self.bad_commands >= self.config.bad_commands_max {
            out.line("* BYE Too many invalid commands");
            self.close(out);
        }
    }

    fn close(&mut self, out: &mut Outbox) {
        self.state = State::Logout;
        self.idle_tag = None;
        self.sasl_tag = None;
        self.sasl = None;
        out.actions.push(Action::Close);
    }

    fn bad(&mut self, tag: &str, reason: &str, out: &mut Outbox) {
        out.line(&format!("{tag} BAD {reason}"));
        self.count_bad(out);
    }

    /// The server is stopping: say goodbye at this safe point.
    pub fn shutdown(&mut self, out: &mut Outbox) {
        out.line("* BYE [UNAVAILABLE] Server shutting down");
        self.close(out);
    }

    /// No input for the idle timeout (30 minutes, IDLE included: RFC 9051 §5.4).
    pub fn timed_out(&mut self, out: &mut Outbox) {
        out.line("* BYE Autologout; idle for too long");
        self.close(out);
    }

    pub fn tls_established(&mut self) {
        self.tls = true;
        if matches!(self.pending, Some(Pending::StartTls)) {
            self.pending = None;
        }
    }

    // Longer than ~80 lines: the dispatch table: one arm per verb (the match is exhaustive on purpose).
    fn command(&mut self, bytes: &[u8], store: &dyn Mailstore, out: &mut Outbox) {
        self.commands += 1;
        let cmd = match tokenize(bytes, self.config.depth_max) {
            Ok(c) => c,
            Err(e) => {
                let tag = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.split(' ').next())
                    .filter(|t| !t.is_empty() && !t.contains(['\r', '\n', '*', '+']))
                    .unwrap_or("*")
                    .to_string();
                self.bad(&tag, &format!("Syntax error: {}", syntax_reason(e)), out);
                return;
            }
        };
        let tag = cmd.tag.to_string();
        if tag.contains(['*', '%']) {
            // `*` and `%` are not tag characters (RFC 9051 §9: tag).
            return self.bad("*", "Invalid tag", out);
        }
        let (name, uid) = match cmd.name.as_str() {
            "UID" => match cmd.args.first() {
                Some(Token::Atom(sub)) => (sub.to_ascii_uppercase(), true),
                _ => return self.bad(&tag, "UID needs a command", out),
            },
            _ => (cmd.name.clone(), false),
        };
        let args: &[Token<'_>] = if uid {
            cmd.args.get(1..).unwrap_or(&[])
        } else {
            &cmd.args
        };
        let Some(verb) = Verb::parse(&name) else {
            return self.bad(&tag, &format!("Unknown command {name}"), out);
        };
        if uid && !verb.has_uid_form() {
            return self.bad(&tag, &format!("UID {name} is not a command"), out);
        }
        let logged_in = matches!(self.state, State::Authenticated);
        if self.state == State::Logout || !verb.allowed_in(logged_in, self.selected.is_some()) {
            return self.bad(&tag, verb.refusal(logged_in), out);
        }
        match verb {
            Verb::Capability => {
                out.line(&format!("* CAPABILITY {}", self.capabilities()));
                out.line(&format!("{tag} OK CAPABILITY completed"));
            }
            Verb::Noop | Verb::Check => {
                self.update(store, out, true, &HashSet::new());
                out.line(&format!("{tag} OK {name} completed"));
            }
            Verb::Logout => {
                out.line("* BYE shardmail logging out");
                out.line(&format!("{tag} OK LOGOUT completed"));
                self.close(out);
            }
            Verb::Id => {
                out.line(&format!(
                    "* ID (\"name\" \"shardmail\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                out.line(&format!("{tag} OK ID completed"));
            }
            Verb::StartTls => {
                if self.tls || !self.config.tls_available {
                    return self.bad(
                        &tag,
                        "TLS is not available here (already active, or no certificate)",
                        out,
                    );
                }
                out.line(&format!("{tag} OK Begin TLS negotiation now"));
                self.pending = Some(Pending::StartTls);
                out.actions.push(Action::StartTls);
            }
            Verb::Compress => self.compress(&tag, args, out),
            Verb::SetMetadata => self.set_metadata(&tag, args, store, out),
            Verb::Notify => self.notify_command(&tag, args, store, out),
            Verb::CancelUpdate => self.cancel_update(&tag, args, out),
            Verb::GetMetadata => self.get_metadata(&tag, args, store, out),
            Verb::Login => self.login(&tag, args, out),
            Verb::Authenticate => self.authenticate(&tag, args, out),
            Verb::Enable => self.enable(&tag, args, out),
            Verb::Namespace => {
                out.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                out.line(&format!("{tag} OK NAMESPACE completed"));
            }
            Verb::Select | Verb::Examine => {
                self.select(&tag, args, verb == Verb::Examine, store, out)
            }
            Verb::Create => self.create(&tag, args, store, out),
            Verb::Delete => self.delete(&tag, args, store, out),
            Verb::Rename => self.rename(&tag, args, store, out),
            Verb::Subscribe | Verb::Unsubscribe => {
                let Some(mailbox) = self.mailbox_name(args.first()) else {
                    return self.bad(&tag, &format!("{name} needs a mailbox name"), out);
                };
                let mailbox = normalize(&mailbox);
                if verb == Verb::Subscribe && !self.subscription_fits(&tag, &mailbox, store, out) {
                    return;
                }
                self.pending = Some(Pending::Simple {
                    tag,
                    done: if verb == Verb::Subscribe {
                        "SUBSCRIBE completed"
                    } else {
                        "UNSUBSCRIBE completed"
                    },
                });
                out.actions.push(Action::Write(
                    Change::Subscribe {
                        name: mailbox,
                        subscribed: verb == Verb::Subscribe,
                    }
                    .into(),
                ));
            }
            Verb::List => self.list(&tag, args, store, out),
            Verb::Lsub => self.lsub(&tag, args, store, out),
            Verb::Status => self.status(&tag, args, store, out),
            Verb::GetQuota | Verb::GetQuotaRoot | Verb::SetQuota => {
                self.quota_command(&tag, &name, args, store, out)
            }
            Verb::Append => self.append_framed(bytes, store, out),
            Verb::Idle => {
                out.line("+ idling");
                self.idle_tag = Some(tag);
                self.update(store, out, true, &HashSet::new());
            }
            Verb::Unselect => {
                self.selected = None;
                out.line(&format!("{tag} OK UNSELECT completed"));
            }
            Verb::Close => self.close_mailbox(&tag, store, out),
            Verb::Expunge => self.expunge(&tag, args, uid, store, out),
            Verb::Search => self.search(&tag, args, uid, store, out),
            Verb::Sort => self.sort(&tag, args, uid, store, out),
            Verb::Thread => self.thread(&tag, args, uid, store, out),
            Verb::Fetch => self.fetch(&tag, args, uid, store, out),
            Verb::Store => self.store(&tag, args, uid, store, out),
            Verb::Copy | Verb::Move => self.copy(&tag, args, uid, verb == Verb::Move, store, out),
            Verb::Unauthenticate => self.unauthenticate(&tag, out),
        }
    }

    // ---- Not authenticated ----

    // ---- Authenticated ----

    /// Sessions that speak UTF-8 mailbox names: UTF8=ACCEPT enabled (RFC 6855) or
    /// IMAP4rev2 (RFC 9051 §5.1). Others see the stored modified UTF-7.
    fn utf8_names(&self) -> bool {
        self.utf8_accept || self.rev2
    }

    /// A mailbox-name argument in stored form (modified UTF-7).
    fn mailbox_name(&self, token: Option<&Token<'_>>) -> Option<String> {
        let name = command::mailbox_text(token?)?;
        Some(self.stored_name(name))
    }

    /// A name (or LIST pattern) the client sent, in stored form.
    fn stored_name(&self, name: String) -> String {
        if self.utf8_names() {
            super::utf7::encode(&name)
        } else {
            name
        }
    }

    /// A stored name as this session is to see it.
    fn shown_name<'n>(&self, stored: &'n str) -> std::borrow::Cow<'n, str> {
        match super::utf7::decode(stored).filter(|_| self.utf8_names()) {
            Some(utf8) => std::borrow::Cow::Owned(utf8),
            None => std::borrow::Cow::Borrowed(stored),
        }
    }

    fn list_line(
        &self,
        out: &mut Outbox,
        verb: &str,
        name: &str,
        attrs: &[&str],
        extra: Option<&str>,
    ) {
        let mut line = format!("* {verb} ({}) \"/\" ", attrs.join(" ")).into_bytes();
        render::mailbox_name(&mut line, &self.shown_name(name));
        if let Some(extra) = extra {
            line.push(b' ');
            line.extend_from_slice(extra.as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        out.reply.extend_from_slice(&line);
    }

    fn idle_line(&mut self, line: &[u8], store: &dyn Mailstore, out: &mut Outbox) {
        let Some(tag) = self.idle_tag.take() else {
            return;
        };
        if line.eq_ignore_ascii_case(b"DONE") {
            self.update(store, out, true, &HashSet::new());
            out.line(&format!("{tag} OK IDLE terminated"));
        } else {
            self.bad(&tag, "Expected DONE to end IDLE", out);
        }
    }

    /// Sequence numbers (1-based) and UIDs of the selected messages a set names.
    /// `Err` for a sequence number beyond the mailbox.
    fn resolve(
        &self,
        set: &SequenceSet,
        uid: bool,
        store: &dyn Mailstore,
    ) -> Result<Vec<(u32, u32)>, String> {
        let (Some(sel), Some(mb)) = (&self.selected, self.mailbox(store)) else {
            return Ok(Vec::new());
        };
        // `$` names the saved UIDs, in a UID command or not (RFC 5182 §2.1).
        let (set, uid) = if set.is_saved() {
            (&sel.saved, true)
        } else {
            (set, uid)
        };
        let view = View::new(mb, sel.at);
        let count = view.len() as u32;
        if !uid {
            // A number beyond the mailbox is an error, except in a range ending in `*`
            // (`1:*` on an empty mailbox names nothing; `10:*` in a 5-message one is 5).
            for (a, b) in &set.0 {
                if let (command::SeqNum::Value(x), command::SeqNum::Value(y)) = (a, b) {
                    if (*x).max(*y) > count {
                        return Err("Invalid sequence number (beyond the mailbox)".into());
                    }
                }
            }
        }
        // Each range is found by position or binary search: the cost is the answer's,
        // not the mailbox's.
        let mut out = Vec::new();
        for (lo, hi) in set.ranges(if uid { view.last_uid() } else { count }) {
            let (start, end) = if uid {
                (view.count_below(lo), view.count_below(hi.saturating_add(1)))
            } else {
                (lo.max(1) as usize - 1, (hi as usize).min(view.len()))
            };
            out.extend(
                view.iter_from(start)
                    .take(end.saturating_sub(start))
                    .map(|(i, u)| (i as u32 + 1, u)),
            );
        }
        Ok(out)
    }

    fn mailbox<'s>(&self, store: &'s dyn Mailstore) -> Option<&'s MailboxIndex> {
        let id = self.selected.as_ref()?.id;
        store.account()?.mailbox_by_id(id)
    }
}

/// The `\Recent` bit for `uid` in `recent`.
fn recent_bit(recent: &recent::Recent, uid: u32) -> u32 {
    if recent.contains(uid) {
        flags::RECENT
    } else {
        0
    }
}

/// `* FLAGS` and `* OK [PERMANENTFLAGS]`: at SELECT, and again when a new keyword
/// appears (RFC 9051 §7.3.5).
/// `room`: new keywords may still be created (`\*` in PERMANENTFLAGS).
fn flags_lines(out: &mut Outbox, keywords: &[String], read_only: bool, room: bool) {
    let list: String = keywords.iter().map(|k| format!(" {k}")).collect();
    out.line(&format!(
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{list})"
    ));
    if read_only {
        out.line("* OK [PERMANENTFLAGS ()] Read-only mailbox");
    } else {
        out.line(&format!(
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{list}{})] Flags permitted",
            if room { " \\*" } else { "" }
        ));
    }
}

fn syntax_reason(e: super::lexer::SyntaxError) -> &'static str {
    use super::lexer::SyntaxError;
    match e {
        SyntaxError::Unbalanced => "unbalanced parentheses or a stray character",
        SyntaxError::TooDeep => "lists nested deeper than limits.imap_nesting_max",
        SyntaxError::BadQuoted => "invalid quoted string",
        SyntaxError::BadLiteral => "invalid literal",
        SyntaxError::NotUtf8 => "text is not UTF-8",
        SyntaxError::Empty => "a tag and a command are needed",
    }
}

/// COPYUID wants the UIDs in the order copied: a list, compacted only where sorted.
fn join_uids(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    if sorted == uids {
        SequenceSet::compact(uids)
    } else {
        uids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub(super) fn special_use_attr(s: SpecialUse) -> Option<&'static str> {
    match s {
        SpecialUse::Sent => Some("\\Sent"),
        SpecialUse::Drafts => Some("\\Drafts"),
        SpecialUse::Trash => Some("\\Trash"),
        SpecialUse::Junk => Some("\\Junk"),
        SpecialUse::Archive => Some("\\Archive"),
        SpecialUse::None | SpecialUse::Inbox => None,
    }
}
