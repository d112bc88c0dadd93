//! POP3 server session (RFC 1939, RFC 2449 CAPA/RESP-CODES, RFC 2595 STLS, RFC 5034
//! AUTH PLAIN, RFC 3206 response codes), sans-IO.
//!
//! Bytes in, replies and [`Action`]s out, like the SMTP session. Message bodies never
//! pass through here: `RETR`/`TOP` emit [`Action::Retrieve`] and the IO layer streams
//! the stored bytes from the mmap, dot-stuffing on the way out ([`stuffing_points`],
//! [`top_len`]). The session is `Send`, because after login it moves to the shard that
//! owns the account. Never reads a clock, never panics on peer input.

use std::sync::Arc;

use super::sasl::Secret;

mod auth;
use memchr::memchr;
use memchr::memmem;

/// What the session needs to know about the server.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub hostname: String,
    pub tls_available: bool,
    pub allow_plaintext_auth: bool,
    pub line_bytes_max: usize,
    pub bad_commands_max: u32,
    pub auth_failures_max: u32,
    /// `limits.output_buffer_bytes_max`: reply bytes queued before the session stops
    /// taking commands (and a long LIST/UIDL pauses) until the client has read them.
    pub output_bytes_max: usize,
}

/// Lines of a multi-line LIST/UIDL answered in one step.
const LIST_STEP_LINES: usize = 4096;

/// A LIST or UIDL of the whole maildrop being answered in steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listing {
    uidl: bool,
    /// Entries from this index on are still to be listed.
    next: usize,
}

/// One message of the maildrop as fixed at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    pub size: u64,
    pub deleted: bool,
}

/// The INBOX snapshot a session works on (RFC 1939: numbers are stable in a session).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maildrop {
    pub uidvalidity: u32,
    pub entries: Vec<Entry>,
}

/// Why a login did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Wrong user or password (`[AUTH]`).
    BadCredentials,
    /// Another POP3 session holds the maildrop (`[IN-USE]`).
    InUse,
    /// The store could not be read (`[SYS/TEMP]`).
    Temporary,
    /// Backed off after failed logins: no password was checked (`[SYS/TEMP]`).
    Throttled,
    /// The account has `limits.sessions_per_user_max` sessions (`[SYS/TEMP]`).
    TooManySessions,
}

/// Work for the IO layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Flush replies, discard buffered input, run the TLS handshake, then call
    /// [`Session::tls_established`].
    StartTls,
    /// Check the password off the reactor; then, on the owning shard, lock the
    /// maildrop and call [`Session::logged_in`] or [`Session::login_refused`].
    Authenticate {
        /// `USER` (USER/PASS) or the SASL mechanism (`PLAIN`…), for the login log.
        mechanism: &'static str,
        username: String,
        secret: super::sasl::Secret,
    },
    /// Look up the account's SCRAM verifier (a decoy when there is none) and the
    /// channel binding data, then call [`Session::sasl_credentials`].
    SaslCredentials { username: String },
    /// Flush replies, then send message `uid` dot-stuffed (only the headers and
    /// `lines` body lines for TOP) and the terminating `.`; then [`Session::retrieved`].
    Retrieve { uid: u32, lines: Option<u32> },
    /// QUIT in TRANSACTION: expunge `uids` durably, then [`Session::updated`].
    Update { expunge: Vec<u32> },
    /// Flush replies and close.
    Close,
}

/// Replies and actions produced by one call.
pub type Outbox = super::Outbox<Action>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Authorization {
        user: Option<String>,
    },
    /// A SASL exchange (in `Session::sasl`) waits for the client's response line.
    Sasl,
    /// Logged in and the maildrop locked; the mechanism's success data went out as a
    /// challenge, whose empty answer enters TRANSACTION.
    SaslSuccess,
    Transaction,
    /// An action is being carried out; nothing is consumed.
    Waiting {
        transaction: bool,
    },
    /// An over-long line is being discarded up to its LF.
    DiscardLine {
        transaction: bool,
    },
    Closed,
}

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    config: Arc<Pop3Config>,
    state: State,
    tls: bool,
    maildrop: Maildrop,
    user: Option<String>,
    bad_commands: u32,
    auth_failures: u32,
    /// The SASL exchange of an AUTH in progress.
    sasl: Option<Box<super::sasl::Exchange>>,
    /// Command lines processed (for metrics).
    commands: u64,
    listing: Option<Listing>,
    /// The last call stopped taking commands because the reply buffer was full.
    output_full: bool,
}

impl Session {
    pub fn new(config: Arc<Pop3Config>, tls: bool) -> Session {
        Session {
            config,
            state: State::Authorization { user: None },
            tls,
            maildrop: Maildrop::default(),
            user: None,
            bad_commands: 0,
            auth_failures: 0,
            sasl: None,
            commands: 0,
            listing: None,
            output_full: false,
        }
    }

    /// Work is left that needs no input (a long LIST/UIDL, or pipelined commands held
    /// back while output is queued): the IO layer sends what is queued, yields, and
    /// calls [`Session::receive`] again.
    pub fn wants_resume(&self) -> bool {
        self.output_full || self.listing.is_some()
    }

    /// Command lines processed so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    pub fn greet(&self, out: &mut Outbox) {
        out.line(&format!(
            "+OK {} shardmail POP3 ready",
            self.config.hostname
        ));
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Between commands: a safe point to stop or to move the session.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Authorization { .. } | State::Transaction)
    }

    /// The logged-in user, once the maildrop is open.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn timed_out(&mut self, out: &mut Outbox) {
        out.line("-ERR [SYS/TEMP] Disconnected for inactivity");
        self.close(out);
    }

    pub fn shutdown(&mut self, out: &mut Outbox) {
        out.line("-ERR [SYS/TEMP] Server shutting down");
        self.close(out);
    }

    fn close(&mut self, out: &mut Outbox) {
        self.state = State::Closed;
        out.actions.push(Action::Close);
    }

    fn in_transaction(&self) -> bool {
        matches!(
            self.state,
            State::Transaction
                | State::Waiting { transaction: true }
                | State::DiscardLine { transaction: true }
        )
    }

    /// Consumes input; returns the bytes used (the rest must be offered again).
    pub fn receive(&mut self, input: &[u8], out: &mut Outbox) -> usize {
        self.output_full = false;
        if let Some(listing) = self.listing.take() {
            self.list_step(listing, out);
        }
        let mut used = 0;
        loop {
            if self.listing.is_some() || matches!(self.state, State::Waiting { .. } | State::Closed)
            {
                return used;
            }
            if out.reply.len() >= self.config.output_bytes_max {
                self.output_full = true;
                return used;
            }
            let Some(rest) = input.get(used..) else {
                return used;
            };
            let limit = self.config.line_bytes_max;
            let window = rest.get(..limit.min(rest.len())).unwrap_or(rest);
            match memchr(b'\n', window) {
                Some(lf) => {
                    used += lf + 1;
                    if let State::DiscardLine { transaction } = self.state {
                        self.state = self.resting_state(transaction);
                        out.line("-ERR Line too long");
                        self.count_error(out);
                        continue;
                    }
                    let end = if lf > 0 && window.get(lf - 1) == Some(&b'\r') {
                        lf - 1
                    } else {
                        lf
                    };
                    self.line(window.get(..end).unwrap_or(&[]), out);
                }
                None if window.len() >= limit => {
                    used += window.len();
                    if !matches!(self.state, State::DiscardLine { .. }) {
                        let transaction = self.in_transaction();
                        self.state = State::DiscardLine { transaction };
                    }
                }
                None => return used,
            }
        }
    }

    fn resting_state(&self, transaction: bool) -> State {
        if transaction {
            State::Transaction
        } else {
            State::Authorization { user: None }
        }
    }

    fn count_error(&mut self, out: &mut Outbox) {
        self.bad_commands += 1;
        if self.bad_commands >= self.config.bad_commands_max {
            out.line("-ERR Too many errors, closing connection");
            self.close(out);
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Outbox) {
        self.commands += 1;
        match self.state {
            State::Sasl => return self.sasl_line(line, out),
            State::SaslSuccess => return self.sasl_success_line(line, out),
            _ => {}
        }
        let Ok(line) = std::str::from_utf8(line) else {
            out.line("-ERR Command is not valid UTF-8");
            return self.count_error(out);
        };
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        if self.state == State::Transaction {
            self.transaction_command(&verb, args, out);
        } else {
            self.authorization_command(&verb, args, out);
        }
    }

    fn plaintext_refused(&self) -> bool {
        !self.tls && !self.config.allow_plaintext_auth
    }

    fn authorization_command(&mut self, verb: &str, args: &str, out: &mut Outbox) {
        match verb {
            "CAPA" => self.capa(out),
            "QUIT" => {
                out.line(&format!(
                    "+OK {} shardmail POP3 signing off",
                    self.config.hostname
                ));
                self.close(out);
            }
            "STLS" => {
                if self.tls || !self.config.tls_available {
                    out.line("-ERR TLS already active or not available");
                    return self.count_error(out);
                }
                out.line("+OK Begin TLS negotiation");
                self.state = State::Waiting { transaction: false };
                out.actions.push(Action::StartTls);
            }
            "USER" | "PASS" | "AUTH" if self.plaintext_refused() => {
                out.line("-ERR [AUTH] Plaintext authentication disallowed without TLS (use STLS)");
            }
            "USER" => {
                if args.is_empty() {
                    out.line("-ERR Syntax: USER name");
                    return self.count_error(out);
                }
                self.state = State::Authorization {
                    user: Some(args.to_string()),
                };
                out.line("+OK Send PASS");
            }
            "PASS" => {
                let State::Authorization { user: Some(user) } =
                    std::mem::replace(&mut self.state, State::Authorization { user: None })
                else {
                    out.line("-ERR USER first");
                    return self.count_error(out);
                };
                self.authenticate("USER", user, Secret::Password(args.to_string()), out);
            }
            "AUTH" => self.auth(args, out),
            "APOP" => out.line("-ERR APOP is not supported; use USER/PASS or AUTH PLAIN over TLS"),
            "STAT" | "LIST" | "RETR" | "DELE" | "NOOP" | "RSET" | "TOP" | "UIDL" => {
                out.line("-ERR Not logged in");
                self.count_error(out);
            }
            _ => {
                out.line("-ERR Unknown command");
                self.count_error(out);
            }
        }
    }

    fn capa(&self, out: &mut Outbox) {
        out.line("+OK Capability list follows");
        out.line("TOP");
        out.line("UIDL");
        out.line("RESP-CODES");
        out.line("AUTH-RESP-CODE");
        out.line("PIPELINING");
        if self.state != State::Transaction {
            if !self.plaintext_refused() {
                out.line("USER");
                out.line(&format!(
                    "SASL {}",
                    super::sasl::offered_names(self.tls, false)
                ));
            }
            if !self.tls && self.config.tls_available {
                out.line("STLS");
            }
        }
        out.line("IMPLEMENTATION shardmail");
        out.line(".");
    }

    pub fn tls_established(&mut self) {
        self.tls = true;
        self.state = State::Authorization { user: None };
    }

    /// The message of a `Retrieve` action has been sent.
    pub fn retrieved(&mut self) {
        self.state = State::Transaction;
    }

    /// Result of the `Update` action (expunge at QUIT).
    pub fn updated(&mut self, result: Result<usize, ()>, out: &mut Outbox) {
        match result {
            Ok(n) => out.line(&format!(
                "+OK shardmail POP3 signing off ({n} messages deleted)"
            )),
            Err(()) => out.line("-ERR [SYS/TEMP] Some deleted messages were not removed"),
        }
        self.close(out);
    }

    fn transaction_command(&mut self, verb: &str, args: &str, out: &mut Outbox) {
        match verb {
            "STAT" => {
                let (count, size) = totals(&self.maildrop.entries);
                out.line(&format!("+OK {count} {size}"));
            }
            "LIST" => self.list(args, false, out),
            "UIDL" => self.list(args, true, out),
            "RETR" => {
                if let Some(entry) = self.message_arg(args, out) {
                    out.line(&format!("+OK {} octets", entry.size));
                    self.state = State::Waiting { transaction: true };
                    out.actions.push(Action::Retrieve {
                        uid: entry.uid,
                        lines: None,
                    });
                }
            }
            "TOP" => {
                let (msg, lines) = args.split_once(' ').unwrap_or((args, ""));
                let Some(lines) = parse_number(lines) else {
                    out.line("-ERR Syntax: TOP msg lines");
                    return self.count_error(out);
                };
                if let Some(entry) = self.message_arg(msg, out) {
                    out.line("+OK Top of message follows");
                    self.state = State::Waiting { transaction: true };
                    out.actions.push(Action::Retrieve {
                        uid: entry.uid,
                        lines: Some(lines),
                    });
                }
            }
            "DELE" => {
                if let Some(entry) = self.message_arg(args, out) {
                    let n = args.trim();
                    if let Some(e) = self
                        .maildrop
                        .entries
                        .iter_mut()
                        .find(|e| e.uid == entry.uid)
                    {
                        e.deleted = true;
                    }
                    out.line(&format!("+OK Message {n} deleted"));
                }
            }
            "NOOP" => out.line("+OK"),
            "RSET" => {
                for e in &mut self.maildrop.entries {
                    e.deleted = false;
                }
                let (count, size) = totals(&self.maildrop.entries);
                out.line(&format!(
                    "+OK Maildrop has {count} messages ({size} octets)"
                ));
            }
            "QUIT" => {
                let expunge: Vec<u32> = self
                    .maildrop
                    .entries
                    .iter()
                    .filter(|e| e.deleted)
                    .map(|e| e.uid)
                    .collect();
                self.state = State::Waiting { transaction: true };
                out.actions.push(Action::Update { expunge });
            }
            "CAPA" => self.capa(out),
            "USER" | "PASS" | "AUTH" | "APOP" | "STLS" => {
                out.line("-ERR Already logged in");
                self.count_error(out);
            }
            _ => {
                out.line("-ERR Unknown command");
                self.count_error(out);
            }
        }
    }

    /// LIST/UIDL with or without a message number.
    fn list(&mut self, args: &str, uidl: bool, out: &mut Outbox) {
        if args.trim().is_empty() {
            let (count, size) = totals(&self.maildrop.entries);
            out.line(&format!("+OK {count} messages ({size} octets)"));
            self.list_step(Listing { uidl, next: 0 }, out);
        } else if let Some(entry) = self.message_arg(args, out) {
            let n = args.trim().parse::<usize>().unwrap_or(0);
            out.line(&format!("+OK {}", self.list_row(uidl, n, &entry)));
        }
    }

    /// Lists entries from `listing.next` on, at most `LIST_STEP_LINES` and
    /// `output_bytes_max` of reply per step; the last step ends with `.`.
    fn list_step(&mut self, mut listing: Listing, out: &mut Outbox) {
        let mut lines = 0;
        while let Some(e) = self.maildrop.entries.get(listing.next) {
            if lines >= LIST_STEP_LINES || out.reply.len() >= self.config.output_bytes_max {
                self.listing = Some(listing);
                return;
            }
            listing.next += 1;
            if !e.deleted {
                let row = self.list_row(listing.uidl, listing.next, e);
                out.line(&row);
                lines += 1;
            }
        }
        out.line(".");
    }

    fn list_row(&self, uidl: bool, n: usize, e: &Entry) -> String {
        if uidl {
            format!("{n} {}.{}", self.maildrop.uidvalidity, e.uid)
        } else {
            format!("{n} {}", e.size)
        }
    }

    /// The message named by a message-number argument, or an `-ERR` reply.
    fn message_arg(&mut self, arg: &str, out: &mut Outbox) -> Option<Entry> {
        let Some(n) = parse_number(arg) else {
            out.line("-ERR Invalid message number");
            self.count_error(out);
            return None;
        };
        let entry = (n as usize)
            .checked_sub(1)
            .and_then(|i| self.maildrop.entries.get(i));
        match entry {
            None => {
                out.line("-ERR No such message");
                None
            }
            Some(e) if e.deleted => {
                out.line(&format!("-ERR Message {n} already deleted"));
                None
            }
            Some(e) => Some(e.clone()),
        }
    }
}

fn totals(entries: &[Entry]) -> (usize, u64) {
    entries
        .iter()
        .filter(|e| !e.deleted)
        .fold((0, 0), |(c, s), e| (c + 1, s + e.size))
}

fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub use super::stuffing_points;

/// Bytes of `message` that TOP sends: the header, the blank line, and `lines` body lines.
pub fn top_len(message: &[u8], lines: u32) -> usize {
    let body_start = match memmem::find(message, b"\r\n\r\n") {
        Some(i) => i + 4,
        None => match memmem::find(message, b"\n\n") {
            Some(i) => i + 2,
            None => return message.len(),
        },
    };
    let mut end = body_start;
    for _ in 0..lines {
        match message.get(end..).and_then(|rest| memchr(b'\n', rest)) {
            Some(i) => end += i + 1,
            None => return message.len(),
        }
    }
    end
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn top_and_stuffing() {
        let m = b"Subject: x\r\n\r\nl1\r\n.l2\r\nl3";
        assert_eq!(top_len(m, 0), 14);
        assert_eq!(top_len(m, 1), 18);
        assert_eq!(top_len(m, 2), 23);
        assert_eq!(top_len(m, 9), m.len());
        assert_eq!(top_len(b"no body", 3), 7);
        assert_eq!(stuffing_points(m), vec![18]);
        assert_eq!(stuffing_points(b".x\r\n.\r\n"), vec![0, 4]);
    }
}
