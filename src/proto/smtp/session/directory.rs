//! What the session asks of the server about addresses, senders and limits: the
//! [`Directory`] trait and the answers it gives. A transcript test implements it
//! with a fake; the shard implements it over `users.json` and the shared limits.

use std::net::IpAddr;

use super::Port;
use crate::config::raw::RateCount;

/// How the directory classifies a recipient address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A local account (after alias and catch-all expansion).
    Local { account: u64, mailbox: String },
    /// The domain is ours, the user is not.
    UnknownUser,
    /// Not one of our domains.
    NotLocal,
    /// A local account that is over its quota (`452 4.2.2`, or `552 5.2.2` when
    /// `permanent`: `quota.hard_bounce`).
    OverQuota { permanent: bool },
}

/// Recipient lookup, kept behind a trait so transcripts can use a fake.
pub trait Directory {
    /// `address` is `local@domain` with the domain already lowercased.
    fn resolve(&self, address: &str) -> Resolution;

    /// Whether the authenticated `login` may use `address` as its sender (its own
    /// address, or an alias of it).
    fn may_send_as(&self, login: &str, address: &str) -> bool {
        login.eq_ignore_ascii_case(address)
    }

    /// Counts `event` against `antispam.rate_limits`; `Some(reply)` refuses the command
    /// (`451 4.7.1 …`, or `421 4.7.0 …`, after which the session closes).
    fn rate_limited(&self, _event: RateEvent<'_>) -> Option<String> {
        None
    }

    /// The sender lists of the account `mailbox` about `mail_from`.
    fn sender_verdict(&self, _mailbox: &str, _mail_from: &str) -> SenderVerdict {
        SenderVerdict::Neutral
    }

    /// Greylisting (`antispam.greylist`) of an accepted recipient.
    fn greylisted(&self, _event: RateEvent<'_>) -> Greylisting {
        Greylisting::Pass
    }
}

/// What a recipient's own sender lists say about the envelope sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderVerdict {
    Neutral,
    /// Into the inbox (no greylisting, no Junk).
    Allow,
    /// Refused at RCPT.
    Block,
}

/// What greylisting says about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greylisting {
    Pass,
    /// Refuse the recipient now with this reply (`451 4.7.1`).
    Defer(String),
    /// Accept it, and refuse the message with this reply after DATA unless it
    /// carries a DKIM signature of an allowlisted domain.
    DeferUnlessDkim(String),
}

/// An event the rate limits count, with who it is about.
#[derive(Debug, Clone, Copy)]
pub struct RateEvent<'a> {
    pub count: RateCount,
    pub ip: IpAddr,
    pub port: Port,
    pub user: Option<&'a str>,
    /// The envelope sender (empty for `<>`).
    pub sender: &'a str,
    pub recipient: Option<&'a str>,
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as given in RCPT TO.
    pub address: String,
    /// The local account (0 for a remote recipient).
    pub account: u64,
    /// Canonical address of the account (what the alias resolved to).
    pub mailbox: String,
    /// A recipient in another domain: goes to the outbound queue (authenticated
    /// submission only).
    pub remote: bool,
    /// The account allowlists the sender (`shardmail user senders --allow`), and SPF
    /// did not contradict it: inbox, no greylisting.
    pub sender_allowed: bool,
    /// The sender's NOTIFY and ORCPT for this recipient (RFC 3461).
    pub dsn: crate::proto::smtp::notify::RcptDsn,
}
