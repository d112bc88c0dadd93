//! One message's conversation with one milter, replayed after DATA: negotiate,
//! connect, helo, mail, rcpt…, data, header…, eoh, body…, end of body, then the
//! milter's changes and its verdict.
//!
//! The IO layer asks [`Conversation::next_packet`] for bytes to send, and when they want an
//! answer, feeds each reply to [`Conversation::reply`] until it says to go on. Owns
//! the order of the stages, the macros sent with each, and what each reply means at
//! each stage; a reply that makes no sense where it came is an error, never a guess.

use std::net::IpAddr;

use bytes::Bytes;

use super::edit::{self, Field};
use super::{action, command, protocol, wire, Edit, Reply, CHUNK, VERSION};

/// What the milter is told about the message and its client.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// Our host name (macro `j`).
    pub hostname: String,
    /// The client's verified host name, or `unknown`.
    pub client_name: String,
    pub client_ip: Option<IpAddr>,
    pub client_port: u16,
    pub helo: String,
    /// Empty without TLS.
    pub tls_version: String,
    pub cipher: String,
    /// The authenticated user, or empty.
    pub auth_user: String,
    /// Our id for the message (macro `i`, as Postfix's queue id).
    pub queue_id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
}

/// What the milter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// An SMTP reply, `5xx`.
    Reject(String),
    /// An SMTP reply, `4xx`.
    Tempfail(String),
    /// Accept and throw away.
    Discard,
}

/// The end of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Changes to make, in order (only with [`Verdict::Accept`]).
    pub edits: Vec<Edit>,
    /// Set when the milter asked to quarantine the message (for us: to Junk).
    pub quarantine: Option<String>,
    /// Replies we ignored: changes not negotiated or never offered.
    pub ignored: usize,
}

/// What the IO layer does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Ask [`Conversation::next_packet`] for the next bytes.
    Next,
    /// Read another reply for the same stage (changes, progress).
    Wait,
    /// The verdict is in: [`Conversation::outcome`].
    Done,
}

/// A conversation that cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationError {
    /// The milter speaks a version before 2.
    Version(u32),
    /// The milter asked for protocol steps we did not offer.
    Protocol(u32),
    /// A reply that makes no sense at this stage.
    Unexpected { stage: &'static str, reply: String },
    /// The milter's changes would pass the message size limit.
    TooLarge,
}

impl std::fmt::Display for ConversationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationError::Version(v) => write!(f, "milter protocol version {v} < 2"),
            ConversationError::Protocol(p) => {
                write!(f, "milter asked for protocol flags {p:#x} we do not offer")
            }
            ConversationError::Unexpected { stage, reply } => {
                write!(f, "unexpected reply {reply} at {stage}")
            }
            ConversationError::TooLarge => {
                write!(f, "milter changes pass limits.message_size_max")
            }
        }
    }
}

/// Bytes for the milter and whether a reply must be read before the next.
#[derive(Debug)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub await_reply: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Negotiate,
    Connect,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    Header(usize),
    Eoh,
    /// The chunk starting at this body offset.
    Body(usize),
    Eob,
    Finished,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Start => "start",
            Stage::Negotiate => "negotiation",
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt(_) => "rcpt",
            Stage::Data => "data",
            Stage::Header(_) => "header",
            Stage::Eoh => "end of header",
            Stage::Body(_) => "body",
            Stage::Eob => "end of message",
            Stage::Finished => "finished",
        }
    }
}

/// The default replies, Postfix's texts.
const REJECT: &str = "550 5.7.1 Command rejected";
const TEMPFAIL: &str = "451 4.7.1 Service unavailable - try again later";

/// One message through one milter.
#[derive(Debug)]
pub struct Conversation {
    tx: Transaction,
    message: Bytes,
    fields: Vec<Field>,
    body_start: usize,
    stage: Stage,
    awaiting: bool,
    version: u32,
    actions: u32,
    protocol: u32,
    edits: Vec<Edit>,
    edit_bytes: usize,
    edit_max: usize,
    quarantine: Option<String>,
    ignored: usize,
    verdict: Option<Verdict>,
}

impl Conversation {
    /// `message` as we would store it (our Received first); the milter's changes may
    /// add at most `edit_max` bytes.
    pub fn new(tx: Transaction, message: Bytes, edit_max: usize) -> Conversation {
        let (fields, body_start) = edit::fields(&message);
        Conversation {
            tx,
            message,
            fields,
            body_start,
            stage: Stage::Start,
            awaiting: false,
            version: VERSION,
            actions: action::OFFERED,
            protocol: 0,
            edits: Vec::new(),
            edit_bytes: 0,
            edit_max,
            quarantine: None,
            ignored: 0,
            verdict: None,
        }
    }

    /// Bytes to send next; `None` when waiting for a reply or done.
    pub fn next_packet(&mut self) -> Option<Outgoing> {
        if self.awaiting || self.verdict.is_some() {
            return None;
        }
        loop {
            self.stage = self.successor(self.stage);
            let mut bytes = Vec::new();
            let reply = match self.stage {
                Stage::Start | Stage::Finished => return None,
                Stage::Negotiate => {
                    wire::negotiate(&mut bytes, VERSION, action::OFFERED, protocol::OFFERED);
                    true
                }
                Stage::Connect if !self.skips(protocol::NO_CONNECT) => {
                    self.connect(&mut bytes);
                    !self.skips(protocol::NO_REPLY_CONNECT)
                }
                Stage::Helo if !self.skips(protocol::NO_HELO) && !self.tx.helo.is_empty() => {
                    let tls = [
                        ("{tls_version}", self.tx.tls_version.as_str()),
                        ("{cipher}", self.tx.cipher.as_str()),
                    ];
                    let tls = if self.tx.tls_version.is_empty() {
                        &[][..]
                    } else {
                        &tls[..]
                    };
                    wire::macros(&mut bytes, command::HELO, tls);
                    wire::strings(&mut bytes, command::HELO, &[&self.tx.helo]);
                    !self.skips(protocol::NO_REPLY_HELO)
                }
                Stage::Mail if !self.skips(protocol::NO_MAIL) => {
                    self.mail(&mut bytes);
                    !self.skips(protocol::NO_REPLY_MAIL)
                }
                Stage::Rcpt(i) if !self.skips(protocol::NO_RCPT) => {
                    let rcpt = self.tx.recipients.get(i).cloned().unwrap_or_default();
                    let bracketed = format!("<{rcpt}>");
                    wire::macros(&mut bytes, command::RCPT, &[("{rcpt_addr}", &rcpt)]);
                    wire::strings(&mut bytes, command::RCPT, &[&bracketed]);
                    !self.skips(protocol::NO_REPLY_RCPT)
                }
                Stage::Data if self.version >= 4 && !self.skips(protocol::NO_DATA) => {
                    wire::macros(&mut bytes, command::DATA, &[("i", &self.tx.queue_id)]);
                    wire::packet(&mut bytes, command::DATA, &[]);
                    !self.skips(protocol::NO_REPLY_DATA)
                }
                Stage::Header(i) if !self.skips(protocol::NO_HEADERS) => {
                    let Some(field) = self.fields.get(i) else {
                        continue;
                    };
                    let name = String::from_utf8_lossy(field.name(&self.message)).into_owned();
                    wire::header(&mut bytes, &name, &field.value(&self.message));
                    !self.skips(protocol::NO_REPLY_HEADER)
                }
                Stage::Eoh if !self.skips(protocol::NO_EOH) => {
                    wire::packet(&mut bytes, command::EOH, &[]);
                    !self.skips(protocol::NO_REPLY_EOH)
                }
                Stage::Body(offset) if !self.skips(protocol::NO_BODY) => {
                    let start = self.body_start + offset;
                    let end = (start + CHUNK).min(self.message.len());
                    let chunk = self.message.get(start..end).unwrap_or(&[]);
                    wire::packet(&mut bytes, command::BODY, &[chunk]);
                    !self.skips(protocol::NO_REPLY_BODY)
                }
                Stage::Eob => {
                    wire::macros(&mut bytes, command::BODYEOB, &[("i", &self.tx.queue_id)]);
                    wire::packet(&mut bytes, command::BODYEOB, &[]);
                    true
                }
                _ => continue, // a stage the milter asked us to skip
            };
            self.awaiting = reply;
            return Some(Outgoing {
                bytes,
                await_reply: reply,
            });
        }
    }

    fn skips(&self, flag: u32) -> bool {
        self.protocol & flag != 0
    }

    fn body_len(&self) -> usize {
        self.message.len().saturating_sub(self.body_start)
    }

    /// The stage after `stage`, whether or not it will be sent.
    fn successor(&self, stage: Stage) -> Stage {
        let recipients = self.tx.recipients.len();
        match stage {
            Stage::Start => Stage::Negotiate,
            Stage::Negotiate => Stage::Connect,
            Stage::Connect => Stage::Helo,
            Stage::Helo => Stage::Mail,
            Stage::Mail if recipients > 0 => Stage::Rcpt(0),
            Stage::Rcpt(i) if i + 1 < recipients => Stage::Rcpt(i + 1),
            Stage::Mail | Stage::Rcpt(_) => Stage::Data,
            Stage::Data if !self.fields.is_empty() => Stage::Header(0),
            Stage::Header(i) if i + 1 < self.fields.len() => Stage::Header(i + 1),
            Stage::Data | Stage::Header(_) => Stage::Eoh,
            Stage::Eoh if self.body_len() > 0 && !self.skips(protocol::NO_BODY) => Stage::Body(0),
            Stage::Body(offset) if offset + CHUNK < self.body_len() => Stage::Body(offset + CHUNK),
            Stage::Eoh | Stage::Body(_) => Stage::Eob,
            Stage::Eob | Stage::Finished => Stage::Finished,
        }
    }

    fn connect(&self, bytes: &mut Vec<u8>) {
        let tx = &self.tx;
        let ip = tx
            .client_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let (addr, port) = (ip.to_string(), tx.client_port.to_string());
        let underscore = format!("{} [{addr}]", tx.client_name);
        let pairs = [
            ("j", tx.hostname.as_str()),
            ("{daemon_name}", "shardmail"),
            ("v", concat!("shardmail ", env!("CARGO_PKG_VERSION"))),
            ("_", &underscore),
            ("{client_addr}", &addr),
            ("{client_port}", &port),
            ("{client_name}", &tx.client_name),
        ];
        wire::macros(bytes, command::CONNECT, &pairs);
        wire::connect(bytes, &tx.client_name, ip, tx.client_port);
    }

    fn mail(&self, bytes: &mut Vec<u8>) {
        let tx = &self.tx;
        let mut pairs = vec![("i", tx.queue_id.as_str()), ("{mail_addr}", &tx.mail_from)];
        if !tx.auth_user.is_empty() {
            pairs.push(("{auth_authen}", &tx.auth_user));
            pairs.push(("{auth_type}", "PLAIN"));
        }
        wire::macros(bytes, command::MAIL, &pairs);
        wire::strings(bytes, command::MAIL, &[&format!("<{}>", tx.mail_from)]);
    }

    /// One reply to the stage last sent.
    pub fn reply(&mut self, reply: Reply) -> Result<Flow, ConversationError> {
        let stage = self.stage;
        let unexpected = |reply: &Reply| ConversationError::Unexpected {
            stage: stage.name(),
            reply: format!("{reply:?}"),
        };
        if !self.awaiting {
            return Err(unexpected(&reply));
        }
        let finish = |this: &mut Conversation, verdict| {
            this.awaiting = false;
            this.verdict = Some(verdict);
            Ok(Flow::Done)
        };
        match (stage, reply) {
            (
                Stage::Negotiate,
                Reply::Negotiate {
                    version,
                    actions,
                    protocol,
                },
            ) => {
                if version < 2 {
                    return Err(ConversationError::Version(version));
                }
                if protocol & !protocol::OFFERED != 0 {
                    return Err(ConversationError::Protocol(protocol & !protocol::OFFERED));
                }
                self.version = version.min(VERSION);
                self.actions = actions & action::OFFERED;
                self.protocol = protocol;
                self.awaiting = false;
                Ok(Flow::Next)
            }
            (Stage::Negotiate, other) => Err(unexpected(&other)),
            (_, Reply::Progress) => Ok(Flow::Wait),
            (Stage::Eob, Reply::Continue | Reply::Accept) => finish(self, Verdict::Accept),
            (_, Reply::Continue) => {
                self.awaiting = false;
                Ok(Flow::Next)
            }
            (_, Reply::Accept) => {
                self.edits.clear();
                finish(self, Verdict::Accept)
            }
            (_, Reply::Reject) => finish(self, Verdict::Reject(REJECT.into())),
            (_, Reply::Tempfail | Reply::ConnectionFail) => {
                finish(self, Verdict::Tempfail(TEMPFAIL.into()))
            }
            (_, Reply::ReplyCode(text)) => finish(self, reply_code(&text)),
            (_, Reply::Discard) => finish(self, Verdict::Discard),
            (Stage::Body(_), Reply::Skip) if self.skips(protocol::SKIP) => {
                self.stage = Stage::Body(self.body_len()); // its successor is Eob
                self.awaiting = false;
                Ok(Flow::Next)
            }
            (Stage::Eob, Reply::Quarantine(reason)) => {
                if self.actions & action::QUARANTINE != 0 {
                    self.quarantine = Some(reason);
                } else {
                    self.ignored += 1;
                }
                Ok(Flow::Wait)
            }
            (Stage::Eob, Reply::Edit(edit)) => {
                let needed = match edit {
                    Edit::Body(_) => action::CHANGE_BODY,
                    Edit::Add { .. } | Edit::Insert { .. } => action::ADD_HEADERS,
                    Edit::Change { .. } => action::CHANGE_HEADERS,
                };
                if self.actions & needed == 0 {
                    self.ignored += 1;
                    return Ok(Flow::Wait);
                }
                self.edit_bytes += edit.size();
                if self.edit_bytes > self.edit_max {
                    return Err(ConversationError::TooLarge);
                }
                self.edits.push(edit);
                Ok(Flow::Wait)
            }
            (Stage::Eob, Reply::Unsupported(_)) => {
                self.ignored += 1;
                Ok(Flow::Wait)
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    /// The verdict and changes; `None` before the conversation is done.
    pub fn outcome(self) -> Option<Outcome> {
        let verdict = self.verdict?;
        let accepted = verdict == Verdict::Accept;
        Some(Outcome {
            verdict,
            edits: if accepted { self.edits } else { Vec::new() },
            quarantine: if accepted { self.quarantine } else { None },
            ignored: self.ignored,
        })
    }
}

/// The QUIT that ends every conversation.
pub fn quit() -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::packet(&mut bytes, command::QUIT, &[]);
    bytes
}

/// A milter's own SMTP reply (`smfi_setreply`), first line only; one that is not a
/// 4xx or 5xx reply is replaced by the default rejection.
fn reply_code(text: &str) -> Verdict {
    let line = text.lines().next().unwrap_or_default().trim();
    let code = line.get(..3).unwrap_or_default();
    let valid = code.bytes().all(|b| b.is_ascii_digit())
        && matches!(line.as_bytes().get(3), None | Some(b' ' | b'-'));
    let reply = if line.len() > 3 {
        format!("{code} {}", line.get(4..).unwrap_or_default())
    } else {
        code.to_string()
    };
    match code.as_bytes().first() {
        Some(b'4') if valid => Verdict::Tempfail(reply),
        Some(b'5') if valid => Verdict::Reject(reply),
        _ => Verdict::Reject(REJECT.into()),
    }
}

#[cfg(test)]
#[path = "conversation_tests.rs"]
mod tests;
