//! The SMTP client session state machine (RFC 5321, 3207, 4954 PLAIN, 2920, 3030, 1870,
//! 6152, 6531), sans-IO like the server session.
//!
//! The IO layer (`src/shard/outbound/`) feeds [`ClientSession::receive`] whatever the
//! server sent, drops the consumed prefix, writes `out.reply` (our commands) to the
//! socket and carries out the [`ClientAction`]s: upgrading to TLS, then
//! [`ClientSession::tls_established`]; on [`ClientAction::Ready`] starting a
//! transaction with [`ClientSession::begin`] or ending with [`ClientSession::quit`].
//! While an action is pending the session consumes nothing. A transaction ends in one
//! [`ClientAction::Finished`] with an outcome per recipient; a session that cannot go
//! on ends in [`ClientAction::Failed`] with a typed [`SessionError`].
//! This module must never do IO, read a clock, or panic on what a server sends.

use std::collections::VecDeque;

use base64::Engine as _;

use super::error::{Failure, Phase, SessionError, Severity};
use super::reply::{self, Capabilities, Reply};
use crate::proto::smtp::notify::{xtext_encode, MessageDsn, RcptDsn};
use crate::proto::Outbox;

/// Whether to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Plaintext only (the retry after a failed opportunistic handshake).
    Never,
    /// STARTTLS when offered, else plaintext (RFC 7435).
    Opportunistic,
    /// STARTTLS or fail: no plaintext transaction.
    Required,
}

/// What one session is told before it starts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name for EHLO/HELO.
    pub hostname: String,
    pub tls: TlsPolicy,
    /// `AUTH PLAIN` credentials for a relay host.
    pub auth: Option<(String, String)>,
}

/// One message for one server: the envelope and the content as stored.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: String,
    /// Each recipient with its NOTIFY and ORCPT (passed on to a server offering DSN).
    pub rcpts: Vec<(String, RcptDsn)>,
    /// The message, CRLF line ends, not dot-stuffed.
    pub message: bytes::Bytes,
    /// The sender's RET and ENVID, passed on to a server that offers DSN.
    pub dsn: MessageDsn,
    /// REQUIRETLS (RFC 8689): only over TLS to a server that offers REQUIRETLS.
    pub require_tls: bool,
}

impl Envelope {
    fn needs_smtputf8(&self) -> bool {
        reply::needs_smtputf8(&self.from, self.rcpts.iter().map(|(a, _)| a.as_str()))
    }
}

/// A recipient's result: the accepting reply, or why not.
pub type RcptResult = Result<String, Failure>;

/// Work for the IO layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Do the TLS handshake now, then call [`ClientSession::tls_established`].
    StartTls,
    /// The session is open and idle: [`ClientSession::begin`] or [`ClientSession::quit`].
    Ready,
    /// A transaction is over: one result per recipient, in order. The session is idle
    /// again (no further `Ready`).
    Finished(Vec<RcptResult>),
    /// The session cannot go on: close the connection.
    Failed(SessionError),
    /// QUIT answered: close the connection.
    Closed,
}

/// Called in a state that does not allow it (a bug in the IO layer, not peer input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotIdle;

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// `StartTls` emitted; waiting for [`ClientSession::tls_established`].
    TlsPending,
    Auth,
    Idle,
    Transaction(Box<Transaction>),
    Quit,
    Done,
}

/// The reply we wait for next, in the order the commands went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    Content,
    /// The `.` that ends a DATA nobody is left to receive (RFC 2920 §3.1).
    Dot,
    Rset,
}

#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    pipelined: bool,
    chunking: bool,
    expect: VecDeque<Expect>,
    mail: Option<Reply>,
    results: Vec<Option<RcptResult>>,
    /// RCPT commands sent so far (all at once when pipelined).
    rcpts_sent: usize,
    /// The reply to DATA, once it came.
    data: Option<Reply>,
    content_sent: bool,
    dot_sent: bool,
    rset_sent: bool,
}

/// One outbound SMTP session.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    caps: Capabilities,
    tls_active: bool,
}

impl ClientSession {
    /// A session on a fresh connection: it waits for the greeting.
    pub fn new(config: ClientConfig) -> ClientSession {
        ClientSession {
            config,
            state: State::Greeting,
            caps: Capabilities::default(),
            tls_active: false,
        }
    }

    /// What the server's last EHLO offered (empty after a HELO fallback).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Reads complete replies from `input`; returns the bytes used.
    pub fn receive(&mut self, input: &[u8], out: &mut Outbox<ClientAction>) -> usize {
        let mut used = 0;
        while self.awaits_reply() && out.actions.is_empty() {
            let rest = input.get(used..).unwrap_or_default();
            match reply::parse_reply(rest) {
                Ok(None) => break,
                Ok(Some((reply, n))) => {
                    used += n;
                    let more = used < input.len();
                    self.on_reply(reply, more, out);
                }
                Err(e) => {
                    self.fail(SessionError::BadReply(e), out);
                    used = input.len();
                }
            }
        }
        used
    }

    /// The IO layer saw the server close the connection.
    pub fn eof(&mut self, out: &mut Outbox<ClientAction>) {
        match self.phase() {
            Some(Phase::Quit) | None => {
                if !self.is_closed() {
                    self.state = State::Done;
                    out.actions.push(ClientAction::Closed);
                }
            }
            Some(phase) => self.fail(SessionError::Closed(phase), out),
        }
    }

    /// The handshake asked for by [`ClientAction::StartTls`] succeeded: EHLO again
    /// (RFC 3207 §4.2: forget what the plaintext EHLO said).
    pub fn tls_established(&mut self, out: &mut Outbox<ClientAction>) {
        if matches!(self.state, State::TlsPending) {
            self.tls_active = true;
            self.caps = Capabilities::default();
            out.line(&format!("EHLO {}", self.config.hostname));
            self.state = State::Ehlo;
        }
    }

    /// Starts a transaction for `envelope`. A message the server cannot take (SIZE,
    /// SMTPUTF8) finishes at once with permanent failures and nothing sent.
    pub fn begin(
        &mut self,
        envelope: Envelope,
        out: &mut Outbox<ClientAction>,
    ) -> Result<(), NotIdle> {
        if !self.is_idle() {
            return Err(NotIdle);
        }
        let utf8 = envelope.needs_smtputf8();
        if let Some(refusal) = self.cannot_take(&envelope, utf8) {
            let results = envelope.rcpts.iter().map(|_| Err(refusal.clone()));
            out.actions.push(ClientAction::Finished(results.collect()));
            return Ok(());
        }
        let mut mail = format!("MAIL FROM:<{}>", envelope.from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", envelope.message.len()));
        }
        if self.caps.eightbitmime && reply::is_8bit(&envelope.message) {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        if envelope.require_tls {
            mail.push_str(" REQUIRETLS");
        }
        if self.caps.dsn {
            if let Some(ret) = envelope.dsn.ret {
                mail.push_str(&format!(" RET={}", ret.as_param()));
            }
            if let Some(envid) = &envelope.dsn.envid {
                mail.push_str(&format!(" ENVID={}", xtext_encode(envid)));
            }
        }
        let mut t = Transaction {
            pipelined: self.caps.pipelining,
            chunking: self.caps.chunking,
            expect: VecDeque::new(),
            mail: None,
            results: vec![None; envelope.rcpts.len()],
            rcpts_sent: 0,
            data: None,
            content_sent: false,
            dot_sent: false,
            rset_sent: false,
            envelope,
        };
        out.line(&mail);
        t.expect.push_back(Expect::Mail);
        if t.pipelined {
            // One write for the whole envelope (RFC 2920), DATA too unless BDAT follows.
            for i in 0..t.envelope.rcpts.len() {
                out.line(&self.rcpt_command(&t.envelope, i));
                t.expect.push_back(Expect::Rcpt(i));
            }
            t.rcpts_sent = t.envelope.rcpts.len();
            if !t.chunking {
                out.line("DATA");
                t.expect.push_back(Expect::Data);
            }
        }
        self.state = State::Transaction(Box::new(t));
        Ok(())
    }

    /// Ends an idle session politely; [`ClientAction::Closed`] follows the reply.
    pub fn quit(&mut self, out: &mut Outbox<ClientAction>) {
        if self.is_idle() {
            out.line("QUIT");
            self.state = State::Quit;
        }
    }

    /// `RCPT TO:<…>`, with NOTIFY and ORCPT for a server that offers DSN.
    fn rcpt_command(&self, envelope: &Envelope, i: usize) -> String {
        let Some((address, dsn)) = envelope.rcpts.get(i) else {
            return String::new();
        };
        let mut line = format!("RCPT TO:<{address}>");
        if self.caps.dsn {
            if let Some(notify) = dsn.notify {
                line.push_str(&format!(" NOTIFY={}", notify.as_param()));
            }
            if let Some((kind, address)) = &dsn.orcpt {
                line.push_str(&format!(" ORCPT={kind};{}", xtext_encode(address)));
            }
        }
        line
    }

    fn cannot_take(&self, envelope: &Envelope, utf8: bool) -> Option<Failure> {
        if envelope.require_tls && !(self.tls_active && self.caps.requiretls) {
            let why = if self.tls_active {
                "the server does not offer REQUIRETLS"
            } else {
                "REQUIRETLS needs TLS, and this session has none"
            };
            return Some(Failure::local(
                Severity::Permanent,
                Phase::Mail,
                "5.7.10",
                why.to_string(),
            ));
        }
        if utf8 && !self.caps.smtputf8 {
            return Some(Failure::local(
                Severity::Permanent,
                Phase::Mail,
                "5.6.7",
                "the server does not support SMTPUTF8, which these addresses need".into(),
            ));
        }
        let size = envelope.message.len() as u64;
        match self.caps.size {
            Some(max) if max > 0 && size > max => Some(Failure::local(
                Severity::Permanent,
                Phase::Mail,
                "5.3.4",
                format!("message too large for the server (SIZE {max}, message {size} bytes)"),
            )),
            _ => None,
        }
    }

    fn awaits_reply(&self) -> bool {
        match &self.state {
            State::TlsPending | State::Idle | State::Done => false,
            State::Transaction(t) => !t.expect.is_empty(),
            _ => true,
        }
    }

    /// The command whose reply is awaited.
    fn phase(&self) -> Option<Phase> {
        Some(match &self.state {
            State::Greeting => Phase::Greeting,
            State::Ehlo => Phase::Ehlo,
            State::Helo => Phase::Helo,
            State::StartTls | State::TlsPending => Phase::StartTls,
            State::Auth => Phase::Auth,
            State::Quit => Phase::Quit,
            State::Transaction(t) => match t.expect.front()? {
                Expect::Mail => Phase::Mail,
                Expect::Rcpt(_) => Phase::Rcpt,
                Expect::Data => Phase::Data,
                Expect::Content | Expect::Dot => Phase::Content,
                Expect::Rset => Phase::Rset,
            },
            State::Idle | State::Done => return None,
        })
    }

    fn fail(&mut self, error: SessionError, out: &mut Outbox<ClientAction>) {
        self.state = State::Done;
        out.actions.push(ClientAction::Failed(error));
    }

    fn on_reply(&mut self, reply: Reply, more_input: bool, out: &mut Outbox<ClientAction>) {
        let phase = self.phase().unwrap_or(Phase::Greeting);
        if reply.code == 421 && phase != Phase::Quit {
            return self.fail(
                SessionError::Closing(Failure::from_reply(phase, &reply)),
                out,
            );
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Greeting if reply.code == 220 => {
                out.line(&format!("EHLO {}", self.config.hostname));
                self.state = State::Ehlo;
            }
            State::Ehlo if reply.is_positive() => {
                self.caps = reply::capabilities(&reply);
                self.after_hello(out);
            }
            // RFC 5321 §4.1.4: a server that does not know EHLO gets HELO.
            State::Ehlo if matches!(reply.code, 500..=504 | 550) => {
                out.line(&format!("HELO {}", self.config.hostname));
                self.state = State::Helo;
            }
            State::Helo if reply.is_positive() => {
                self.caps = Capabilities::default();
                self.after_hello(out);
            }
            State::StartTls if reply.code == 220 => {
                if more_input {
                    return self.fail(SessionError::DataAfterStartTls, out);
                }
                self.state = State::TlsPending;
                out.actions.push(ClientAction::StartTls);
            }
            State::StartTls if self.config.tls != TlsPolicy::Required => self.authenticate(out),
            State::Auth if reply.code == 235 => self.idle(out),
            State::Quit => {
                self.state = State::Done;
                out.actions.push(ClientAction::Closed);
            }
            State::Transaction(mut t) => {
                t.record(reply);
                if t.expect.is_empty() {
                    self.advance(t, out);
                } else {
                    self.state = State::Transaction(t);
                }
            }
            State::Greeting | State::Ehlo | State::Helo | State::StartTls | State::Auth => {
                self.fail(
                    SessionError::Refused(Failure::from_reply(phase, &reply)),
                    out,
                );
            }
            // No reply is awaited in these states; `receive` never gets here.
            state @ (State::TlsPending | State::Idle | State::Done) => self.state = state,
        }
    }

    /// EHLO (or HELO) answered: STARTTLS if we can and should, else on to AUTH.
    fn after_hello(&mut self, out: &mut Outbox<ClientAction>) {
        if !self.tls_active && self.config.tls != TlsPolicy::Never && self.caps.starttls {
            out.line("STARTTLS");
            self.state = State::StartTls;
        } else if !self.tls_active && self.config.tls == TlsPolicy::Required {
            self.fail(SessionError::TlsNotOffered, out);
        } else {
            self.authenticate(out);
        }
    }

    fn authenticate(&mut self, out: &mut Outbox<ClientAction>) {
        let Some((user, password)) = &self.config.auth else {
            return self.idle(out);
        };
        if !self.caps.auth_plain {
            return self.fail(SessionError::AuthNotOffered, out);
        }
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        out.line(&format!("AUTH PLAIN {token}"));
        self.state = State::Auth;
    }

    fn idle(&mut self, out: &mut Outbox<ClientAction>) {
        self.state = State::Idle;
        out.actions.push(ClientAction::Ready);
    }

    /// Every reply sent for so far is in: send what comes next, or finish.
    fn advance(&mut self, mut t: Box<Transaction>, out: &mut Outbox<ClientAction>) {
        let next = t.next_step();
        match next {
            Next::Rcpt(i) => {
                out.line(&self.rcpt_command(&t.envelope, i));
                t.rcpts_sent += 1;
                t.expect.push_back(Expect::Rcpt(i));
            }
            Next::Data => {
                out.line("DATA");
                t.expect.push_back(Expect::Data);
            }
            Next::Content => {
                let message = &t.envelope.message;
                if t.chunking {
                    out.reply
                        .extend_from_slice(format!("BDAT {} LAST\r\n", message.len()).as_bytes());
                    out.reply.extend_from_slice(message);
                } else {
                    crate::proto::dot_stuff_into(&mut out.reply, message);
                }
                t.content_sent = true;
                t.expect.push_back(Expect::Content);
            }
            Next::Dot => {
                out.reply.extend_from_slice(b".\r\n");
                t.dot_sent = true;
                t.expect.push_back(Expect::Dot);
            }
            Next::Rset => {
                out.line("RSET");
                t.rset_sent = true;
                t.expect.push_back(Expect::Rset);
            }
            Next::Finish => {
                let results = t.results.into_iter().map(|r| {
                    r.unwrap_or_else(|| {
                        Err(Failure::local(
                            Severity::Transient,
                            Phase::Rcpt,
                            "4.4.2",
                            "no reply to RCPT".into(),
                        ))
                    })
                });
                out.actions.push(ClientAction::Finished(results.collect()));
                self.state = State::Idle;
                return;
            }
        }
        self.state = State::Transaction(t);
    }
}

/// What a transaction sends next once all awaited replies are in.
enum Next {
    Rcpt(usize),
    Data,
    Content,
    Dot,
    Rset,
    Finish,
}

impl Transaction {
    fn record(&mut self, reply: Reply) {
        let Some(expected) = self.expect.pop_front() else {
            return;
        };
        match expected {
            Expect::Mail => self.mail = Some(reply),
            Expect::Rcpt(i) => {
                let result = if reply.is_positive() {
                    Ok(reply.text())
                } else {
                    Err(Failure::from_reply(Phase::Rcpt, &reply))
                };
                if let Some(slot) = self.results.get_mut(i) {
                    *slot = Some(result);
                }
            }
            Expect::Data => self.data = Some(reply),
            Expect::Content => {
                let outcome = if reply.is_positive() {
                    Ok(reply.text())
                } else {
                    Err(Failure::from_reply(Phase::Content, &reply))
                };
                self.settle_accepted(&outcome);
            }
            Expect::Dot | Expect::Rset => {}
        }
    }

    /// Gives every recipient the server accepted so far the outcome of a later step.
    fn settle_accepted(&mut self, outcome: &RcptResult) {
        for result in self.results.iter_mut().flatten() {
            if result.is_ok() {
                *result = outcome.clone();
            }
        }
    }

    fn next_step(&mut self) -> Next {
        if self.rset_sent || self.content_sent {
            // After the content's reply the server has ended the transaction either way.
            return Next::Finish;
        }
        if self.dot_sent {
            return self.next_cleanup();
        }
        let mail_ok = self.mail.as_ref().is_some_and(Reply::is_positive);
        if !mail_ok {
            // MAIL refused: every recipient gets that reply, whatever RCPT said after.
            let failure = match &self.mail {
                Some(reply) => Failure::from_reply(Phase::Mail, reply),
                None => Failure::local(
                    Severity::Transient,
                    Phase::Mail,
                    "4.4.2",
                    "no reply to MAIL".into(),
                ),
            };
            for slot in &mut self.results {
                *slot = Some(Err(failure.clone()));
            }
            return self.next_cleanup();
        }
        if self.rcpts_sent < self.envelope.rcpts.len() {
            return Next::Rcpt(self.rcpts_sent);
        }
        let accepted = self.results.iter().flatten().any(Result::is_ok);
        if !accepted {
            return self.next_cleanup();
        }
        if self.chunking {
            return Next::Content;
        }
        match &self.data {
            None => Next::Data,
            Some(reply) if reply.code == 354 => Next::Content,
            Some(reply) => {
                let failure = Err(Failure::from_reply(Phase::Data, reply));
                self.settle_accepted(&failure);
                self.next_cleanup()
            }
        }
    }

    /// End an open DATA with `.` first (RFC 2920 §3.1), then RSET, then finish.
    fn next_cleanup(&mut self) -> Next {
        let data_open = self.data.as_ref().is_some_and(|r| r.code == 354) && !self.content_sent;
        if data_open && !self.dot_sent {
            Next::Dot
        } else if !self.rset_sent {
            Next::Rset
        } else {
            Next::Finish
        }
    }
}
