//! The SMTP client's failures as types: which command a server refused and how
//! (permanent or transient, reply code, enhanced status, the reply line), and why a
//! session cannot go on. Retry, bounce and TLS decisions match on these, never on
//! message text. Pure data: no IO.

use std::fmt;

use super::reply::{Reply, ReplyError};

/// The command a reply answered (or the greeting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// The reply after the message content (DATA's final dot or `BDAT … LAST`).
    Content,
    Rset,
    Quit,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::Helo => "HELO",
            Phase::StartTls => "STARTTLS",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL",
            Phase::Rcpt => "RCPT",
            Phase::Data => "DATA",
            Phase::Content => "end of data",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
        }
    }
}

/// Whether retrying later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 4xx, or a local condition that may pass (retry later).
    Transient,
    /// 5xx, or a local condition that cannot pass (bounce).
    Permanent,
}

/// One refusal: a server's reply to a command, or our own decision not to send one
/// (the message is too big for the server's SIZE, it needs SMTPUTF8 the server lacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub severity: Severity,
    pub phase: Phase,
    /// The server's reply code; `None` when we decided without asking.
    pub code: Option<u16>,
    /// RFC 3463 status: the server's enhanced code, else derived from the reply code.
    pub status: String,
    /// The reply as one line (`550 5.1.1 no such user`), or our reason.
    pub text: String,
}

impl Failure {
    pub fn from_reply(phase: Phase, reply: &Reply) -> Failure {
        let severity = if reply.code >= 500 {
            Severity::Permanent
        } else {
            Severity::Transient
        };
        Failure {
            severity,
            phase,
            code: Some(reply.code),
            status: crate::proto::smtp::dsn::status_for(reply.code, reply.enhanced().as_deref()),
            text: reply.text(),
        }
    }

    /// A decision of ours, with the status the DSN reports.
    pub fn local(severity: Severity, phase: Phase, status: &str, text: String) -> Failure {
        Failure {
            severity,
            phase,
            code: None,
            status: status.to_string(),
            text,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.severity == Severity::Permanent
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(_) => write!(f, "{} refused: {}", self.phase.as_str(), self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// Why a session is over before its work was done: try another host, or later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// A reply the session cannot continue after: a greeting other than 220, EHLO and
    /// HELO refused, AUTH refused, STARTTLS refused when TLS is required.
    Refused(Failure),
    /// `421`: the server is closing the connection (RFC 5321 §3.8), at any point.
    Closing(Failure),
    /// TLS is required and the server does not offer STARTTLS.
    TlsNotOffered,
    /// The relay needs AUTH and the server does not offer AUTH PLAIN.
    AuthNotOffered,
    /// Bytes arrived after the `220` to STARTTLS and before the handshake: plaintext
    /// that would be read as if it came over TLS (RFC 3207 §5's command injection).
    DataAfterStartTls,
    /// A reply that is not SMTP, or one over the bounds.
    BadReply(ReplyError),
    /// The server closed the connection while we waited for its reply.
    Closed(Phase),
}

impl SessionError {
    /// Whether the next delivery attempt should not bother with this host.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SessionError::Refused(f) if f.is_permanent())
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Refused(failure) => failure.fmt(f),
            SessionError::Closing(failure) => {
                write!(
                    f,
                    "server closing during {}: {}",
                    failure.phase.as_str(),
                    failure.text
                )
            }
            SessionError::TlsNotOffered => {
                f.write_str("TLS required but the server does not offer STARTTLS")
            }
            SessionError::AuthNotOffered => {
                f.write_str("relay AUTH configured but the server does not offer AUTH PLAIN")
            }
            SessionError::DataAfterStartTls => {
                f.write_str("the server sent data after its STARTTLS reply (possible injection)")
            }
            SessionError::BadReply(e) => write!(f, "bad reply from the server: {e:?}"),
            SessionError::Closed(phase) => write!(
                f,
                "connection closed by the server (waiting for the {} reply)",
                phase.as_str()
            ),
        }
    }
}
