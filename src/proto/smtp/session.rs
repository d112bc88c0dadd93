//! The SMTP server session state machine (RFC 5321, 3207, 4954, 3030, 2920, 1870).
//!
//! Pure: bytes in, replies and [`Action`]s out, time passed as an argument. The IO layer
//! (`src/shard/smtp.rs`) feeds [`Session::receive`] whatever it has read, drops the
//! consumed prefix, carries out the actions and reports their results through
//! [`Session::tls_established`], [`Session::auth_result`] and [`Session::delivered`].
//! While an action is pending the session consumes nothing, which is what makes
//! pipelined input safe: a command is only read once every earlier one has its answer.
//! This module must never do IO, read a clock, or panic on peer input.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::SystemTime;

use memchr::memchr;

use super::command::{self, Command};
use super::data::{DataProgress, DataReader};
use super::notify::{MessageDsn, RcptDsn};
use crate::auth::policy::{self, Policies, SpfKind};
use crate::config::raw::RateCount;
mod auth;
mod directory;
mod envelope;
mod hello;

pub use directory::{Directory, Greylisting, RateEvent, Recipient, Resolution, SenderVerdict};

use crate::proto::{rfc5322_date, Incoming};

/// Which listener the session arrived on; decides policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `listen.smtp`: inbound MX, mail for local domains from anyone, no AUTH.
    Mx,
    /// `listen.submission`: STARTTLS then AUTH required before MAIL.
    Submission,
    /// `listen.submissions`: implicit TLS, AUTH required before MAIL.
    Submissions,
    /// `listen.lmtp` (RFC 2033): an edge MTA on this host delivers into local
    /// mailboxes; LHLO, no AUTH, no relaying, a reply per recipient after the data.
    Lmtp,
}

/// Everything a session needs to know about the server; shared by all sessions of a shard.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub port: Port,
    /// A certificate is loaded, so STARTTLS can be offered.
    pub tls_available: bool,
    pub allow_plaintext_auth: bool,
    pub message_size_max: usize,
    pub line_bytes_max: usize,
    pub recipients_max: usize,
    pub bad_commands_max: u32,
    pub auth_failures_max: u32,
    /// Domain used for `<postmaster>` without a domain (RFC 5321 §4.1.1.3).
    pub postmaster_domain: String,
    /// What SPF/DMARC verdicts do, per recipient domain (`[auth]`).
    pub policies: Policies,
    /// Authenticated senders may only use their own address or its aliases.
    pub sender_login_match: bool,
}

/// A complete message ready to be stored by every recipient's owner.
#[derive(Debug)]
pub struct Envelope {
    pub id: String,
    /// Reverse path; empty for the null sender `<>`.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    /// `Received:` header followed by the message exactly as received (unstuffed);
    /// what the IO layer moved to its spool precedes what is still staged.
    pub message: Incoming,
    /// Length of our `Received:` header at the start of `message`.
    pub received_len: usize,
    pub received_at: SystemTime,
    /// Check DKIM/ARC/DMARC before storing (MX port, client not exempt).
    pub verify: bool,
    /// The authenticated user, for submission (no checks; DKIM signing instead).
    pub authenticated: Option<String>,
    /// RET and ENVID, for the notices this message may cause (RFC 3461).
    pub dsn: MessageDsn,
    /// REQUIRETLS (RFC 8689): relayed only over verified TLS to a server offering it.
    pub require_tls: bool,
    /// Greylisted recipients: the `451` for the message unless it has a DKIM pass
    /// from an allowlisted domain ([`Greylisting::DeferUnlessDkim`]).
    pub greylisted: Option<String>,
}

/// Work the IO layer must do for the session.
#[derive(Debug)]
pub enum Action {
    /// Flush replies, discard any further buffered input, then run the TLS handshake.
    StartTls,
    /// Check the login (the throttle, then the secret, off the reactor), then call
    /// [`Session::auth_result`].
    Authenticate {
        /// The SASL mechanism (`PLAIN`, `LOGIN`, `SCRAM-SHA-256`…), for the login log.
        mechanism: &'static str,
        username: String,
        secret: crate::proto::sasl::Secret,
    },
    /// Look up the account's SCRAM verifier (a decoy when there is none) and the
    /// channel binding data, then call [`Session::sasl_credentials`].
    SaslCredentials { username: String },
    /// Evaluate SPF for HELO and MAIL FROM, then call [`Session::spf_checked`] (or
    /// [`Session::checks_unavailable`]).
    CheckSpf {
        ip: IpAddr,
        helo: String,
        mail_from: String,
    },
    /// Store durably, then call [`Session::delivered`].
    Deliver(Envelope),
    /// Flush replies and close the connection.
    Close,
}

/// The reply to the end of DATA (or the last BDAT) for `result`.
pub fn delivery_reply(id: &str, result: &Result<(), DeliveryError>) -> String {
    match result {
        Ok(()) => format!("250 2.0.0 Ok: stored as {id}"),
        Err(DeliveryError::Temporary) => {
            "451 4.3.0 Temporary failure storing the message, try again later".into()
        }
        Err(DeliveryError::Refused(reply)) => reply.clone(),
    }
}

/// Replies and actions produced by one call.
pub type Outbox = crate::proto::Outbox<Action>;

/// Why a delivery did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Storage or a shard failed; the client should retry (`451 4.3.0`).
    Temporary,
    /// Refused by policy, with the complete reply line (e.g. DMARC `550 5.7.1`).
    Refused(String),
}

#[derive(Debug)]
enum State {
    Command,
    /// An over-long line is being discarded up to its LF.
    DiscardLine,
    /// A SASL exchange (in `Session::sasl`) waits for the client's response line.
    Sasl,
    /// Authenticated by the IO layer; the mechanism's success data went out as a
    /// challenge, whose empty answer completes the login.
    SaslSuccess(String),
    Data(DataReader),
    Bdat {
        remaining: u64,
        last: bool,
        refusal: Option<&'static str>,
    },
    /// The IO layer is carrying out an action; nothing is consumed meanwhile.
    Waiting,
    Closed,
}

#[derive(Debug)]
struct Transaction {
    mail_from: String,
    smtputf8: bool,
    /// MAIL FROM had REQUIRETLS (RFC 8689).
    require_tls: bool,
    /// What the sender asked for with RET and ENVID.
    dsn: MessageDsn,
    recipients: Vec<Recipient>,
    /// `Received:` + body; begun when DATA or the first BDAT begins.
    message: Option<Incoming>,
    /// Length of our `Received:` header at the start of `message`.
    header_len: usize,
    bdat_bytes: u64,
    bdat_oversize: bool,
    used_bdat: bool,
    /// SPF result of MAIL FROM, when this session verifies senders.
    spf: Option<SpfKind>,
    /// The greylisting reply for the message unless a DKIM pass clears it.
    greylisted: Option<String>,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    config: Rc<SessionConfig>,
    peer: IpAddr,
    session_id: u64,
    transactions: u32,
    state: State,
    tls: bool,
    helo: Option<String>,
    /// Forward-confirmed reverse DNS name of the client.
    client_name: Option<String>,
    esmtp: bool,
    authenticated: Option<String>,
    transaction: Option<Transaction>,
    bad_commands: u32,
    auth_failures: u32,
    /// The SASL exchange of an AUTH in progress.
    sasl: Option<Box<crate::proto::sasl::Exchange>>,
    /// SPF/DKIM/ARC/DMARC apply to this session's mail.
    verify: bool,
    /// Command lines processed (for metrics).
    commands: u64,
    /// Names a client outside our networks may not greet us with (our host name and
    /// address): a forged HELO (postscreen's and Postfix's usual check).
    own_names: Vec<String>,
    /// A HELO refused for naming us, not yet logged by the IO layer.
    refused_helo: Option<String>,
    /// LMTP: the accepted recipients of the message being stored, each of which gets
    /// its own reply once it is (RFC 2033 §4.2).
    lmtp_recipients: Vec<String>,
    /// Recipients refused since the IO layer last asked ([`Session::take_refused`]),
    /// at most [`REFUSED_KEPT_MAX`].
    refused: Vec<RefusedRecipient>,
}

/// A recipient refused at RCPT, for the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRecipient {
    pub mail_from: String,
    pub address: String,
    pub reply: String,
}

/// Refusals kept between two [`Session::take_refused`] calls (the IO layer drains them
/// after every `receive`, so only a pipelined burst can reach this).
const REFUSED_KEPT_MAX: usize = 256;

const HELP: &str =
    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH";

impl Session {
    /// A new session; `tls` is true on implicit-TLS ports once the handshake is done.
    pub fn new(config: Rc<SessionConfig>, peer: IpAddr, session_id: u64, tls: bool) -> Session {
        Session {
            config,
            peer,
            session_id,
            transactions: 0,
            state: State::Command,
            tls,
            helo: None,
            client_name: None,
            esmtp: false,
            authenticated: None,
            transaction: None,
            bad_commands: 0,
            auth_failures: 0,
            sasl: None,
            verify: false,
            commands: 0,
            refused: Vec::new(),
            lmtp_recipients: Vec::new(),
            own_names: Vec::new(),
            refused_helo: None,
        }
    }

    /// Refuses a HELO/EHLO that names us: `hostname` or the address the client
    /// connected to (`local`, bare or as `[literal]`). For clients outside our networks.
    pub fn refuse_own_helo(&mut self, local: IpAddr) {
        self.own_names = vec![
            self.config.hostname.to_ascii_lowercase(),
            local.to_string(),
            format!("[{local}]"),
        ];
    }

    /// The client's forward-confirmed host name (MX screening), for `Received:`.
    pub fn set_client_name(&mut self, name: Option<String>) {
        self.client_name = name;
    }

    pub fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// The HELO/EHLO name the client gave, if any.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Recipients refused at RCPT since the last call.
    pub fn take_refused(&mut self) -> Vec<RefusedRecipient> {
        std::mem::take(&mut self.refused)
    }

    /// The HELO name last refused for naming us, once (for the log).
    pub fn take_refused_helo(&mut self) -> Option<String> {
        self.refused_helo.take()
    }

    /// Command lines processed so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// Turns sender verification on (the MX port, for clients not in
    /// `auth.exempt_networks`).
    pub fn verify_senders(&mut self, on: bool) {
        self.verify = on;
    }

    /// SPF result of the pending MAIL FROM: the sender is accepted; recipients are then
    /// judged by their domain's policy.
    pub fn spf_checked(&mut self, spf: SpfKind, out: &mut Outbox) {
        self.state = State::Command;
        if let Some(t) = self.transaction.as_mut() {
            t.spf = Some(spf);
        }
        out.line("250 2.1.0 Sender ok");
    }

    /// The auth worker could not take the check (queue full or stopped).
    pub fn checks_unavailable(&mut self, out: &mut Outbox) {
        self.state = State::Command;
        self.transaction = None;
        out.line("451 4.3.2 Too many messages are being checked, try again later");
    }

    /// The `220` greeting.
    pub fn greet(&self, out: &mut Outbox) {
        out.line(&format!("220 {} ESMTP shardmail", self.config.hostname));
    }

    /// True once QUIT or an error closed the session.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True between commands (not inside a DATA/BDAT body, a SASL exchange or an
    /// action): a safe point to stop. An open transaction without a body is dropped
    /// by a stop, which loses nothing: nothing of it was acknowledged.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Command)
    }

    /// The body being received, for the IO layer to move to its spool as it grows.
    pub fn incoming_mut(&mut self) -> Option<&mut Incoming> {
        self.transaction.as_mut().and_then(|t| t.message.as_mut())
    }

    /// Inside a DATA or BDAT body (its deadline is a minimum data rate).
    pub fn receiving_body(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// The authenticated user, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The peer sent nothing for `limits.idle_timeout_secs`.
    pub fn timed_out(&mut self, out: &mut Outbox) {
        out.line(&format!(
            "421 4.4.2 {} Error: timeout exceeded",
            self.config.hostname
        ));
        self.close(out);
    }

    /// The server is shutting down; called between commands.
    pub fn shutdown(&mut self, out: &mut Outbox) {
        out.line(&format!(
            "421 4.3.2 {} Service shutting down",
            self.config.hostname
        ));
        self.close(out);
    }

    fn close(&mut self, out: &mut Outbox) {
        self.state = State::Closed;
        out.actions.push(Action::Close);
    }

    /// Consumes input; returns how many bytes were used. The caller keeps the rest and
    /// calls again when more arrives (or an action completes).
    pub fn receive(
        &mut self,
        input: &[u8],
        now: SystemTime,
        directory: &dyn Directory,
        out: &mut Outbox,
    ) -> usize {
        let mut used = 0;
        loop {
            let Some(rest) = input.get(used..) else {
                return used;
            };
            let step = match &mut self.state {
                State::Waiting | State::Closed => return used,
                State::Data(reader) => {
                    let txn_message = self.transaction.as_mut().and_then(|t| t.message.as_mut());
                    let Some(sink) = txn_message else {
                        // Unreachable by construction; fail safe rather than panic.
                        self.state = State::Command;
                        continue;
                    };
                    let size_max = self.config.message_size_max;
                    match reader.read(rest, sink, size_max) {
                        DataProgress::More(n) => return used + n,
                        DataProgress::Done(n) => {
                            used += n;
                            self.data_complete(now, out);
                            continue;
                        }
                    }
                }
                State::Bdat { .. } => {
                    if rest.is_empty() {
                        // BDAT 0 still needs its reply.
                        if matches!(self.state, State::Bdat { remaining: 0, .. }) {
                            self.bdat_chunk_complete(now, out);
                            continue;
                        }
                        return used;
                    }
                    used += self.bdat_bytes(rest, now, out);
                    continue;
                }
                _ => self.take_line(rest, out),
            };
            match step {
                LineStep::NeedMore => return used,
                LineStep::Consumed(n) => used += n,
                LineStep::Line(n, line_end) => {
                    let line = rest.get(..line_end).unwrap_or(&[]);
                    used += n;
                    self.line(line, now, directory, out);
                }
            }
        }
    }

    fn take_line(&mut self, rest: &[u8], out: &mut Outbox) -> LineStep {
        let limit = self.config.line_bytes_max;
        let window = rest.get(..limit.min(rest.len())).unwrap_or(rest);
        match memchr(b'\n', window) {
            Some(lf) => {
                if matches!(self.state, State::DiscardLine) {
                    self.state = State::Command;
                    out.line("500 5.5.2 Line too long");
                    self.count_bad_command(out);
                    return LineStep::Consumed(lf + 1);
                }
                let end = if lf > 0 && window.get(lf - 1) == Some(&b'\r') {
                    lf - 1
                } else {
                    lf
                };
                LineStep::Line(lf + 1, end)
            }
            None if window.len() >= limit => {
                // Past the limit without a LF: drop the window, keep dropping to the LF.
                if !matches!(self.state, State::DiscardLine) {
                    self.cancel_auth_exchange();
                    self.state = State::DiscardLine;
                }
                LineStep::Consumed(window.len())
            }
            None => LineStep::NeedMore,
        }
    }

    fn cancel_auth_exchange(&mut self) {
        if matches!(self.state, State::Sasl | State::SaslSuccess(_)) {
            self.sasl = None;
            self.state = State::Command;
        }
    }

    fn line(&mut self, line: &[u8], now: SystemTime, dir: &dyn Directory, out: &mut Outbox) {
        self.commands += 1;
        match std::mem::replace(&mut self.state, State::Command) {
            State::Sasl => self.sasl_line(line, out),
            State::SaslSuccess(user) => self.sasl_success_line(user, line, out),
            _ => match command::parse(line) {
                Ok(cmd) => self.command(cmd, now, dir, out),
                Err(e) => {
                    out.line(e.reply);
                    self.count_bad_command(out);
                }
            },
        }
    }

    fn count_bad_command(&mut self, out: &mut Outbox) {
        self.bad_commands += 1;
        if self.bad_commands >= self.config.bad_commands_max {
            out.line(&format!(
                "421 4.7.0 {} Too many errors, closing connection",
                self.config.hostname
            ));
            self.close(out);
        }
    }

    fn command(&mut self, cmd: Command<'_>, now: SystemTime, dir: &dyn Directory, o: &mut Outbox) {
        match cmd {
            Command::Ehlo(_) | Command::Helo(_) if self.config.port == Port::Lmtp => {
                o.line("500 5.5.1 This is an LMTP server (RFC 2033): use LHLO");
                self.count_bad_command(o);
            }
            Command::Lhlo(domain) if self.config.port == Port::Lmtp => {
                self.hello(domain, true, dir, o)
            }
            Command::Lhlo(_) => {
                o.line("500 5.5.1 Command unrecognized");
                self.count_bad_command(o);
            }
            Command::Ehlo(domain) => self.hello(domain, true, dir, o),
            Command::Helo(domain) => self.hello(domain, false, dir, o),
            Command::Mail(from, params) => self.mail(from, params, dir, o),
            Command::Rcpt(to, params) => self.rcpt(to, params, dir, o),
            Command::Data => self.data(now, o),
            Command::Bdat { size, last } => self.bdat(size, last, now),
            Command::Rset => {
                self.transaction = None;
                o.line("250 2.0.0 Ok");
            }
            Command::Noop => o.line("250 2.0.0 Ok"),
            Command::Quit => {
                o.line("221 2.0.0 Bye");
                self.close(o);
            }
            Command::Vrfy => {
                o.line("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
            }
            Command::Expn => o.line("502 5.5.1 EXPN is not available"),
            Command::Help => o.line(HELP),
            Command::StartTls => self.starttls(o),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial, o),
        }
    }

    fn data(&mut self, now: SystemTime, out: &mut Outbox) {
        let refusal = self.transaction_refusal(false);
        if let Some(reply) = refusal {
            return out.line(reply);
        }
        self.begin_message(now);
        out.line("354 End data with <CR><LF>.<CR><LF>");
        self.state = State::Data(DataReader::new());
    }

    /// Why DATA/BDAT cannot start now, if it cannot.
    fn transaction_refusal(&self, bdat: bool) -> Option<&'static str> {
        match &self.transaction {
            None => Some("503 5.5.1 Need MAIL command"),
            Some(t) if t.recipients.is_empty() => Some("554 5.5.1 No valid recipients"),
            Some(t) if !bdat && t.used_bdat => Some("503 5.5.1 DATA not allowed after BDAT"),
            Some(_) => None,
        }
    }

    fn begin_message(&mut self, now: SystemTime) {
        let header = self.received_header(now);
        if let Some(txn) = self.transaction.as_mut() {
            if txn.message.is_none() {
                txn.header_len = header.len();
                let generation = u64::from(self.transactions) << 1 | 1;
                txn.message = Some(Incoming::with_head(generation, header.into_bytes()));
            }
        }
    }

    fn data_complete(&mut self, now: SystemTime, out: &mut Outbox) {
        let State::Data(reader) = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        if reader.oversize {
            self.transaction = None;
            return out.line("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        if reader.bare_newline {
            self.transaction = None;
            return out.line(
                "550 5.6.11 Message refused: bare CR or LF in message; lines must end with \
                 CRLF (RFC 5321 section 2.3.8)",
            );
        }
        self.finish_message(now, out);
    }

    fn finish_message(&mut self, now: SystemTime, out: &mut Outbox) {
        let Some(txn) = self.transaction.take() else {
            return;
        };
        if self.config.port == Port::Lmtp {
            self.lmtp_recipients = txn.recipients.iter().map(|r| r.address.clone()).collect();
        }
        let envelope = Envelope {
            id: self.message_id(),
            mail_from: txn.mail_from,
            recipients: txn.recipients,
            message: txn.message.unwrap_or_default(),
            received_len: txn.header_len,
            received_at: now,
            verify: self.verify,
            authenticated: self.authenticated.clone(),
            dsn: txn.dsn,
            require_tls: txn.require_tls,
            greylisted: txn.greylisted,
        };
        self.state = State::Waiting;
        out.actions.push(Action::Deliver(envelope));
    }

    fn bdat(&mut self, size: u64, last: bool, now: SystemTime) {
        let refusal = self.transaction_refusal(true);
        if refusal.is_none() {
            self.begin_message(now);
            if let Some(t) = self.transaction.as_mut() {
                t.used_bdat = true;
            }
        }
        self.state = State::Bdat {
            remaining: size,
            last,
            refusal,
        };
    }

    fn bdat_bytes(&mut self, input: &[u8], now: SystemTime, out: &mut Outbox) -> usize {
        let State::Bdat {
            remaining, refusal, ..
        } = &mut self.state
        else {
            return 0;
        };
        let take = (*remaining).min(input.len() as u64) as usize;
        let chunk = input.get(..take).unwrap_or(&[]);
        *remaining -= take as u64;
        if refusal.is_none() {
            let size_max = self.config.message_size_max as u64;
            if let Some(t) = self.transaction.as_mut() {
                t.bdat_bytes += take as u64;
                if t.bdat_bytes > size_max {
                    if !t.bdat_oversize {
                        if let Some(m) = t.message.as_mut() {
                            m.discard(); // nothing of it will be stored
                        }
                    }
                    t.bdat_oversize = true;
                } else if let Some(m) = t.message.as_mut() {
                    m.staged.extend_from_slice(chunk);
                }
            }
        }
        if matches!(self.state, State::Bdat { remaining: 0, .. }) {
            self.bdat_chunk_complete(now, out);
        }
        take
    }

    fn bdat_chunk_complete(&mut self, now: SystemTime, out: &mut Outbox) {
        let State::Bdat { last, refusal, .. } = std::mem::replace(&mut self.state, State::Command)
        else {
            return;
        };
        if let Some(reply) = refusal {
            return out.line(reply);
        }
        let Some(txn) = self.transaction.as_mut() else {
            return;
        };
        if txn.bdat_oversize {
            if last {
                self.transaction = None;
            }
            return out.line("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        if last {
            self.finish_message(now, out);
        } else {
            out.line(&format!("250 2.0.0 {} octets received", txn.bdat_bytes));
        }
    }

    fn starttls(&mut self, out: &mut Outbox) {
        if self.tls {
            return out.line("503 5.5.1 TLS already active");
        }
        if !self.config.tls_available {
            return out.line("454 4.7.0 TLS not available due to temporary reason");
        }
        out.line("220 2.0.0 Ready to start TLS");
        self.state = State::Waiting;
        out.actions.push(Action::StartTls);
    }

    /// The TLS handshake after STARTTLS succeeded: forget everything learned before it
    /// (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.transaction = None;
        self.authenticated = None;
        self.state = State::Command;
    }

    /// Result of [`Action::Deliver`]: `250` only now, when every owner has synced.
    pub fn delivered(&mut self, id: &str, result: &Result<(), DeliveryError>, out: &mut Outbox) {
        self.state = State::Command;
        let reply = delivery_reply(id, result);
        if self.config.port != Port::Lmtp {
            return out.line(&reply);
        }
        // One reply per accepted recipient, in RCPT order (RFC 2033 §4.2). Storage
        // succeeds or fails for the message as a whole, so they agree.
        for address in std::mem::take(&mut self.lmtp_recipients) {
            match result {
                Ok(()) => out.line(&format!("250 2.1.5 <{address}> delivered as {id}")),
                Err(_) => out.line(&reply),
            }
        }
    }

    fn message_id(&mut self) -> String {
        self.transactions += 1;
        format!("{:012X}{:04X}", self.session_id, self.transactions)
    }

    fn received_header(&self, now: SystemTime) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let utf8 = self.transaction.as_ref().is_some_and(|t| t.smtputf8);
        // RFC 3848 / RFC 6531 "with" protocol names.
        let mut with = String::from(match (utf8, self.esmtp) {
            _ if self.config.port == Port::Lmtp => "LMTP",
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        });
        if self.tls {
            with.push('S');
        }
        if self.authenticated.is_some() {
            with.push('A');
        }
        let for_clause = match self.transaction.as_ref().map(|t| t.recipients.as_slice()) {
            Some([one]) => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ({name}[{peer}])\r\n\tby {host} (shardmail) with {with} id {id:012X}{seq:04X}{for_clause};\r\n\t{date}\r\n",
            peer = self.peer,
            name = self.client_name.as_ref().map(|n| format!("{n} ")).unwrap_or_default(),
            host = self.config.hostname,
            id = self.session_id,
            seq = self.transactions + 1,
            date = rfc5322_date(now),
        )
    }
}

enum LineStep {
    NeedMore,
    Consumed(usize),
    /// Consumed `.0` bytes; the line (without CR LF) is the first `.1` bytes.
    Line(usize, usize),
}
