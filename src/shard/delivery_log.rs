//! The delivery log: one line per recipient per delivery attempt, inbound and outbound,
//! under the target `shardmail::delivery` (fields in `docs/logging.md`), and one line
//! per refused connection under `shardmail::connection`.
//!
//! Owns the field names and their order, so every attempt reads the same whatever code
//! path made it. Values a client chose (HELO, addresses, user names, replies) are string
//! fields, which the text format quotes and escapes and the JSON format writes as JSON
//! strings: a client cannot forge a field or a line. Never logs message content.

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    // The order of `metrics::DELIVERY_STATUSES`.
    /// Stored in the recipient's mailbox, or accepted by the next hop.
    Delivered,
    /// Accepted from the client and queued for the next hop.
    Queued,
    /// Not delivered this time; tried again later (outbound), or the client was told
    /// to try again (inbound 4xx).
    Deferred,
    /// Given up: the sender gets a bounce.
    Bounced,
    /// Refused to the client with a 5xx.
    Rejected,
    /// Accepted and thrown away at a content filter's request (milter discard).
    Discarded,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Queued => "queued",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Rejected => "rejected",
            Status::Discarded => "discarded",
        }
    }

    /// The status of an SMTP reply we gave a client (`4xx` or `5xx`).
    pub fn of_refusal(reply: &str) -> Status {
        if reply.starts_with('4') {
            Status::Deferred
        } else {
            Status::Rejected
        }
    }
}

/// Who handed us the message (inbound), as far as we know it.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub helo: String,
    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384`, or empty without TLS.
    pub tls: String,
    /// The authenticated user, or empty.
    pub user: String,
    /// The client's port (for content filters; not logged).
    pub port: u16,
    /// Its forward-confirmed host name, or empty.
    pub name: String,
}

/// The verdicts of the checks that ran (`-` for one that did not).
#[derive(Debug, Clone, Copy)]
pub struct Verdicts {
    pub spf: &'static str,
    pub dkim: &'static str,
    pub dmarc: &'static str,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            spf: "-",
            dkim: "-",
            dmarc: "-",
        }
    }
}

/// One recipient's attempt.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// `in` (a client gave it to us) or `out` (we gave it to the next hop).
    pub direction: &'static str,
    /// The message's id: the SMTP id in `Received:` (inbound) or the queue id.
    pub id: &'a str,
    pub client: &'a Client,
    pub from: &'a str,
    pub to: &'a str,
    pub size: u64,
    pub verdicts: Verdicts,
    /// Where it went: `mailbox:INBOX`, `queue:<queue id>`, `host[addr]:port`, or `-`.
    pub relay: &'a str,
    pub status: Status,
    /// The reply given (inbound) or received (outbound), or our reason.
    pub reply: &'a str,
    /// Since the message arrived (inbound: since DATA ended; outbound: since queued).
    pub delay: Duration,
    /// Outbound: attempts so far, this one included.
    pub attempt: u32,
}

/// Writes `a` as one line and counts it (`shardmail_deliveries_total`).
pub fn log(metrics: &crate::metrics::Metrics, a: &Attempt<'_>) {
    let direction = usize::from(a.direction == "out");
    crate::metrics::bump(&metrics.deliveries, direction, a.status as usize);
    let ip = a
        .client
        .ip
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    tracing::info!(
        target: "shardmail::delivery",
        direction = a.direction,
        id = a.id,
        client_ip = %ip,
        client_name = or_dash(&a.client.name),
        helo = or_dash(&a.client.helo),
        tls = or_dash(&a.client.tls),
        user = or_dash(&a.client.user),
        from = a.from,
        to = a.to,
        size = a.size,
        spf = a.verdicts.spf,
        dkim = a.verdicts.dkim,
        dmarc = a.verdicts.dmarc,
        relay = a.relay,
        status = a.status.name(),
        reply = a.reply,
        delay_ms = a.delay.as_millis() as u64,
        attempt = a.attempt,
        "delivery"
    );
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Refused-connection lines a shard writes per second before it only counts them: a
/// flood of connections must not become a flood of log lines.
const REFUSALS_LOGGED_PER_SEC: u32 = 20;

/// Rate-limits the refused-connection lines of one shard.
#[derive(Debug)]
pub struct RefusalLog {
    window: Cell<Instant>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            window: Cell::new(Instant::now()),
            logged: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }
}

impl RefusalLog {
    /// One refused connection from `ip` on `service` (`listen.smtp`, …) for `reason`.
    pub fn refused(&self, ip: IpAddr, service: &str, reason: &str) {
        let now = Instant::now();
        if now.duration_since(self.window.get()) >= Duration::from_secs(1) {
            let suppressed = self.suppressed.replace(0);
            if suppressed > 0 {
                tracing::info!(
                    target: "shardmail::connection",
                    suppressed,
                    "more connections refused than logged in the last second"
                );
            }
            self.window.set(now);
            self.logged.set(0);
        }
        if self.logged.get() >= REFUSALS_LOGGED_PER_SEC {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        self.logged.set(self.logged.get() + 1);
        tracing::info!(target: "shardmail::connection", ip = %ip, service, reason, "connection refused");
    }
}
