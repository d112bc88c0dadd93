//! Per-shard counters and latency histograms, merged across shards on request, and
//! their Prometheus text exposition (DESIGN.md §8).
//!
//! Each shard owns a [`Metrics`] (plain `Cell`s and `RefCell`ed histograms: no atomics
//! on hot paths). A scrape of `listen.metrics` asks every shard for a [`Snapshot`]
//! (owned, `Send`) over the mesh, adds them up and formats them. Nothing here does IO.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Label values of the delivery counters, in `shard::delivery_log` order.
pub const DIRECTIONS: [&str; 2] = ["in", "out"];
pub const DELIVERY_STATUSES: [&str; 6] = [
    "delivered",
    "queued",
    "deferred",
    "bounced",
    "rejected",
    "discarded",
];
/// Label values of the login counters.
pub const PROTOCOLS: [&str; 3] = ["smtp", "imap", "pop3"];
pub const LOGIN_RESULTS: [&str; 4] = ["ok", "failed", "throttled", "busy"];
/// What `antispam.rate_limits` counts, in `RateCount` order.
pub const RATE_COUNTS: [&str; 4] = ["connections", "messages", "recipients", "failed_commands"];
/// Why a connection was refused (the limit's config key, or the open-file capacity).
pub const REFUSAL_REASONS: [&str; 3] = [
    "connections_per_ip_max",
    "sessions_per_shard_max",
    "capacity",
];

/// A milter conversation's result (`milter.servers`), by [`milter_index`].
pub const MILTER_VERDICTS: [&str; 6] = [
    "accept",
    "quarantine",
    "reject",
    "tempfail",
    "discard",
    "error",
];
/// The [`MILTER_VERDICTS`] index of a milter that could not be asked.
pub const MILTER_ERROR: usize = 5;

/// The [`MILTER_VERDICTS`] index of `verdict` (`error` for an unknown name).
pub fn milter_index(verdict: &str) -> usize {
    MILTER_VERDICTS
        .iter()
        .position(|v| *v == verdict)
        .unwrap_or(MILTER_ERROR)
}

/// Adds one to `table[i][j]`, ignoring indexes out of range.
pub fn bump<const I: usize, const J: usize>(table: &[[Cell<u64>; J]; I], i: usize, j: usize) {
    if let Some(c) = table.get(i).and_then(|row| row.get(j)) {
        add(c, 1);
    }
}

/// Adds one to `row[i]`, ignoring an index out of range.
pub fn bump_one<const N: usize>(row: &[Cell<u64>; N], i: usize) {
    if let Some(c) = row.get(i) {
        add(c, 1);
    }
}

/// Counters for one protocol.
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    pub connections: Cell<u64>,
    pub commands: Cell<u64>,
    pub auth_failures: Cell<u64>,
}

/// One shard's counters.
#[derive(Debug)]
pub struct Metrics {
    pub smtp: ProtocolCounters,
    pub pop3: ProtocolCounters,
    pub imap: ProtocolCounters,
    pub messages_accepted: Cell<u64>,
    /// Refused when complete (policy, storage); refusals at RCPT or for size are not
    /// counted as messages.
    pub messages_rejected: Cell<u64>,
    pub bytes_received: Cell<u64>,
    pub outbound_delivered: Cell<u64>,
    pub outbound_bounced: Cell<u64>,
    pub bytes_sent_pop3: Cell<u64>,
    pub bytes_sent_imap: Cell<u64>,
    /// Connections refused, by [`REFUSAL_REASONS`].
    pub connections_refused: [Cell<u64>; 3],
    /// Recipients per delivery attempt, by [`DIRECTIONS`] × [`DELIVERY_STATUSES`].
    pub deliveries: [[Cell<u64>; 6]; 2],
    /// Login attempts, by [`PROTOCOLS`] × [`LOGIN_RESULTS`].
    pub logins: [[Cell<u64>; LOGIN_RESULTS.len()]; 3],
    /// TLS handshakes as a server (implicit TLS and STARTTLS): completed, failed.
    pub tls_handshakes: [Cell<u64>; 2],
    /// Events refused by `antispam.rate_limits`, by [`RATE_COUNTS`].
    pub rate_limited: [Cell<u64>; 4],
    /// Clients that talked before the greeting (`antispam.greet_delay_ms`).
    pub pregreet: Cell<u64>,
    /// Clients refused at connect by their DNS list score (`antispam.dnsbl`).
    pub dnsbl_rejected: Cell<u64>,
    /// Recipients deferred by greylisting (`antispam.greylist`).
    pub greylisted: Cell<u64>,
    /// Milter conversations, by [`MILTER_VERDICTS`].
    pub milter: [Cell<u64>; 6],
    /// Reverse DNS verdicts of screened MX clients: pass, fail, temperror.
    pub fcrdns: [Cell<u64>; 3],
    /// HELO/EHLO refused for naming us (MX port).
    pub helo_refused: Cell<u64>,
    /// Recipients' sender lists that matched: allow, block.
    pub sender_lists: [Cell<u64>; 2],
    /// Login attempts answered "try later" by the throttle, without a hash computed.
    pub logins_throttled: Cell<u64>,
    /// Connections closed for a deadline (pre-login, command, minimum data rate).
    pub deadline_disconnects: Cell<u64>,
    /// From end of DATA to the `250` (storage on every owner, checks included), µs.
    pub accept_latency: RefCell<Histogram<u64>>,
    /// From queued to accepted by the next hop, per delivered recipient, ms.
    pub outbound_delay: RefCell<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 2 significant digits: ~10 KiB per histogram. Constant bounds that
    // hdrhistogram accepts; nothing here depends on input.
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("constant histogram bounds are valid")
}

/// 1 ms .. 60 days (the longest `queue.max_age` worth keeping), 2 significant digits.
fn delay_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60 * 86_400_000, 2).expect("constant histogram bounds are valid")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            smtp: ProtocolCounters::default(),
            pop3: ProtocolCounters::default(),
            imap: ProtocolCounters::default(),
            messages_accepted: Cell::default(),
            messages_rejected: Cell::default(),
            bytes_received: Cell::default(),
            outbound_delivered: Cell::default(),
            outbound_bounced: Cell::default(),
            bytes_sent_pop3: Cell::default(),
            bytes_sent_imap: Cell::default(),
            connections_refused: Default::default(),
            deliveries: Default::default(),
            logins: Default::default(),
            tls_handshakes: Default::default(),
            rate_limited: Default::default(),
            pregreet: Cell::default(),
            dnsbl_rejected: Cell::default(),
            greylisted: Cell::default(),
            milter: Default::default(),
            sender_lists: Default::default(),
            helo_refused: Cell::default(),
            fcrdns: Default::default(),
            logins_throttled: Cell::default(),
            deadline_disconnects: Cell::default(),
            accept_latency: RefCell::new(histogram()),
            outbound_delay: RefCell::new(delay_histogram()),
        }
    }
}

/// Adds `n` to a counter.
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// Gauges read at scrape time from the shard's state.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub sessions: u64,
    pub queue_depth: u64,
    /// Age of the oldest message in this shard's queue, seconds (0 when empty).
    pub queue_oldest_age_secs: u64,
    pub store_syncs: u64,
    pub store_appends: u64,
    pub partitions: u64,
    /// Per partition this shard owns, as last measured.
    pub store: Vec<PartitionGauge>,
}

/// One partition's size, as the compaction check last measured it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionGauge {
    pub partition: u32,
    pub log_bytes: u64,
    pub garbage_bytes: u64,
    pub messages: u64,
}

/// Everything one shard reports, owned so it can cross the mesh.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// (metric name without the prefix, label text such as `protocol="smtp"`, value).
    pub counters: Vec<(&'static str, String, u64)>,
    pub gauges: Gauges,
    pub accept_latency: Histogram<u64>,
    pub outbound_delay: Histogram<u64>,
}

impl Metrics {
    pub fn snapshot(&self, gauges: Gauges) -> Snapshot {
        let mut counters: Vec<(&'static str, String, u64)> = Vec::new();
        let mut put = |name: &'static str, labels: String, c: &Cell<u64>| {
            counters.push((name, labels, c.get()));
        };
        for (p, protocol) in [
            (&self.smtp, "smtp"),
            (&self.pop3, "pop3"),
            (&self.imap, "imap"),
        ] {
            let label = format!("protocol=\"{protocol}\"");
            put("connections_total", label.clone(), &p.connections);
            put("commands_total", label.clone(), &p.commands);
            put("auth_failures_total", label, &p.auth_failures);
        }
        put(
            "messages_accepted_total",
            String::new(),
            &self.messages_accepted,
        );
        put(
            "messages_rejected_total",
            String::new(),
            &self.messages_rejected,
        );
        put("received_bytes_total", String::new(), &self.bytes_received);
        put(
            "outbound_delivered_total",
            String::new(),
            &self.outbound_delivered,
        );
        put(
            "outbound_bounced_total",
            String::new(),
            &self.outbound_bounced,
        );
        put(
            "pop3_sent_bytes_total",
            String::new(),
            &self.bytes_sent_pop3,
        );
        put(
            "imap_sent_bytes_total",
            String::new(),
            &self.bytes_sent_imap,
        );
        for (reason, c) in REFUSAL_REASONS.iter().zip(&self.connections_refused) {
            put(
                "connections_refused_total",
                format!("reason=\"{reason}\""),
                c,
            );
        }
        for (direction, row) in DIRECTIONS.iter().zip(&self.deliveries) {
            for (status, c) in DELIVERY_STATUSES.iter().zip(row) {
                // One protocol delivers today; the label keeps room for LMTP.
                let label =
                    format!("direction=\"{direction}\",protocol=\"smtp\",status=\"{status}\"");
                put("deliveries_total", label, c);
            }
        }
        for (protocol, row) in PROTOCOLS.iter().zip(&self.logins) {
            for (result, c) in LOGIN_RESULTS.iter().zip(row) {
                let label = format!("protocol=\"{protocol}\",result=\"{result}\"");
                put("logins_total", label, c);
            }
        }
        for (result, c) in ["ok", "failed"].iter().zip(&self.tls_handshakes) {
            put("tls_handshakes_total", format!("result=\"{result}\""), c);
        }
        for (count, c) in RATE_COUNTS.iter().zip(&self.rate_limited) {
            put("rate_limited_total", format!("count=\"{count}\""), c);
        }
        put("pregreet_total", String::new(), &self.pregreet);
        put("dnsbl_rejected_total", String::new(), &self.dnsbl_rejected);
        put("greylisted_total", String::new(), &self.greylisted);
        put("helo_refused_total", String::new(), &self.helo_refused);
        for (result, c) in ["pass", "fail", "temperror"].iter().zip(&self.fcrdns) {
            put("fcrdns_total", format!("result=\"{result}\""), c);
        }
        for (verdict, c) in ["allow", "block"].iter().zip(&self.sender_lists) {
            put("sender_lists_total", format!("verdict=\"{verdict}\""), c);
        }
        for (verdict, c) in MILTER_VERDICTS.iter().zip(&self.milter) {
            put("milter_verdicts_total", format!("verdict=\"{verdict}\""), c);
        }
        put(
            "logins_throttled_total",
            String::new(),
            &self.logins_throttled,
        );
        put(
            "deadline_disconnects_total",
            String::new(),
            &self.deadline_disconnects,
        );
        Snapshot {
            counters,
            gauges,
            accept_latency: self.accept_latency.borrow().clone(),
            outbound_delay: self.outbound_delay.borrow().clone(),
        }
    }
}

const HELP: &[(&str, &str)] = &[
    (
        "connections_refused_total",
        "Connections refused, by the limit that refused them.",
    ),
    (
        "deliveries_total",
        "Recipients per delivery attempt, by direction and status (one delivery log line each).",
    ),
    ("logins_total", "Login attempts, by protocol and result."),
    (
        "rate_limited_total",
        "Connections, messages, recipients and failed commands refused by antispam.rate_limits.",
    ),
    (
        "greylisted_total",
        "Recipients deferred by greylisting (antispam.greylist).",
    ),
    (
        "fcrdns_total",
        "Forward-confirmed reverse DNS of screened MX clients, by result.",
    ),
    (
        "helo_refused_total",
        "MX clients whose HELO/EHLO named us (our host name or address).",
    ),
    (
        "sender_lists_total",
        "Recipients whose own sender list matched (shardmail user senders), by verdict.",
    ),
    (
        "milter_verdicts_total",
        "Milter conversations (milter.servers), by verdict; error: the milter could not be asked.",
    ),
    (
        "dnsbl_rejected_total",
        "MX clients refused at connect by their DNS list score (antispam.dnsbl).",
    ),
    (
        "pregreet_total",
        "MX clients that talked before the greeting (antispam.greet_delay_ms).",
    ),
    (
        "tls_handshakes_total",
        "Server TLS handshakes (implicit TLS and STARTTLS), by result.",
    ),
    (
        "logins_throttled_total",
        "Login attempts refused by the failed-login back-off (no hash computed).",
    ),
    (
        "deadline_disconnects_total",
        "Connections closed for a deadline (pre-login, command line, minimum data rate).",
    ),
    ("connections_total", "Connections accepted, by protocol."),
    (
        "commands_total",
        "Protocol commands processed, by protocol.",
    ),
    ("auth_failures_total", "Failed logins, by protocol."),
    (
        "messages_accepted_total",
        "Messages acknowledged with 250 (durable).",
    ),
    (
        "messages_rejected_total",
        "Complete messages refused (DMARC policy, checks busy, storage).",
    ),
    ("received_bytes_total", "Bytes of accepted messages."),
    (
        "outbound_delivered_total",
        "Recipients delivered by the outbound queue.",
    ),
    (
        "outbound_bounced_total",
        "Recipients that failed permanently (DSN sent).",
    ),
    (
        "pop3_sent_bytes_total",
        "Message bytes sent by POP3 RETR/TOP.",
    ),
    ("imap_sent_bytes_total", "Reply bytes sent by IMAP."),
];

/// Adds up every shard's snapshot and formats the Prometheus text exposition (0.0.4).
pub fn render(shards: &[Snapshot]) -> String {
    let mut out = String::new();
    let mut totals: Vec<(&str, &str, u64)> = Vec::new();
    for s in shards {
        for (name, label, v) in &s.counters {
            match totals.iter_mut().find(|(n, l, _)| n == name && l == label) {
                Some(t) => t.2 += v,
                None => totals.push((name, label, *v)),
            }
        }
    }
    for (name, help) in HELP {
        let _ = writeln!(
            out,
            "# HELP shardmail_{name} {help}\n# TYPE shardmail_{name} counter"
        );
        for (_, label, v) in totals.iter().filter(|(n, _, _)| n == name) {
            if label.is_empty() {
                let _ = writeln!(out, "shardmail_{name} {v}");
            } else {
                let _ = writeln!(out, "shardmail_{name}{{{label}}} {v}");
            }
        }
    }
    let sum = |f: fn(&Gauges) -> u64| shards.iter().map(|s| f(&s.gauges)).sum::<u64>();
    let gauges: [(&str, &str, u64); 5] = [
        ("sessions", "Open sessions.", sum(|g| g.sessions)),
        (
            "queue_depth",
            "Messages in the outbound queue.",
            sum(|g| g.queue_depth),
        ),
        (
            "store_syncs_total",
            "fdatasync calls of the message logs (group commits).",
            sum(|g| g.store_syncs),
        ),
        (
            "store_appends_total",
            "Append batches made durable; divide by syncs for appends per sync.",
            sum(|g| g.store_appends),
        ),
        (
            "partitions",
            "Open store partitions.",
            sum(|g| g.partitions),
        ),
    ];
    for (name, help, v) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP shardmail_{name} {help}\n# TYPE shardmail_{name} {kind}\nshardmail_{name} {v}"
        );
    }
    let _ = writeln!(out, "# HELP shardmail_shards Shards (executors) running.\n# TYPE shardmail_shards gauge\nshardmail_shards {}", shards.len());
    let oldest = shards
        .iter()
        .map(|s| s.gauges.queue_oldest_age_secs)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP shardmail_queue_oldest_age_seconds Age of the oldest message in the outbound queue.\n\
         # TYPE shardmail_queue_oldest_age_seconds gauge\nshardmail_queue_oldest_age_seconds {oldest}"
    );
    render_store(&mut out, shards);
    let mut latency = histogram();
    for s in shards {
        let _ = latency.add(&s.accept_latency);
    }
    let name = "shardmail_smtp_accept_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} End of DATA to 250 (durable on every owner).\n# TYPE {name} summary"
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = latency.value_at_quantile(q) as f64 / 1e6;
        let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
    }
    let sum_seconds = latency.mean() * latency.len() as f64 / 1e6;
    let _ = writeln!(
        out,
        "{name}_sum {sum_seconds}\n{name}_count {}",
        latency.len()
    );
    let mut delay = delay_histogram();
    for s in shards {
        let _ = delay.add(&s.outbound_delay);
    }
    let name = "shardmail_delivery_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Delivery latency: in, end of DATA to 250 (durable); out, queued to \
         accepted by the next hop.\n# TYPE {name} histogram"
    );
    histogram_lines(&mut out, name, "in", &latency, 1e-6, &IN_BUCKETS);
    histogram_lines(&mut out, name, "out", &delay, 1e-3, &OUT_BUCKETS);
    out
}

/// Bucket bounds (seconds) of `shardmail_delivery_seconds`.
const IN_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];
const OUT_BUCKETS: [f64; 10] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0, 432_000.0, 864_000.0,
];

/// A Prometheus histogram's `_bucket`, `_sum` and `_count` lines from an hdr histogram
/// whose values are `unit` seconds each.
fn histogram_lines(
    out: &mut String,
    name: &str,
    direction: &str,
    h: &Histogram<u64>,
    unit: f64,
    buckets: &[f64],
) {
    // One pass over the recorded values; each bucket counts everything at or below it.
    let mut counts = vec![0u64; buckets.len()];
    for v in h.iter_recorded() {
        let seconds = v.value_iterated_to() as f64 * unit;
        if let Some(first) = buckets.iter().position(|le| seconds <= *le) {
            if let Some(c) = counts.get_mut(first) {
                *c += v.count_at_value();
            }
        }
    }
    let mut below = 0;
    for (le, c) in buckets.iter().zip(counts) {
        below += c;
        let _ = writeln!(
            out,
            "{name}_bucket{{direction=\"{direction}\",le=\"{le}\"}} {below}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{direction=\"{direction}\",le=\"+Inf\"}} {count}\n\
         {name}_sum{{direction=\"{direction}\"}} {sum}\n\
         {name}_count{{direction=\"{direction}\"}} {count}",
        count = h.len(),
        sum = h.mean() * h.len() as f64 * unit,
    );
}

/// Per-partition store sizes, as the compaction check last measured them.
fn render_store(out: &mut String, shards: &[Snapshot]) {
    type Get = fn(&PartitionGauge) -> u64;
    let mut rows: Vec<&PartitionGauge> =
        shards.iter().flat_map(|s| s.gauges.store.iter()).collect();
    rows.sort_unstable_by_key(|r| r.partition);
    let families: [(&str, &str, Get); 3] = [
        (
            "store_log_bytes",
            "Bytes of the partition's message log, as last measured (store.compaction_check_secs).",
            |r| r.log_bytes,
        ),
        (
            "store_garbage_bytes",
            "Bytes of the log compaction would reclaim, as last measured.",
            |r| r.garbage_bytes,
        ),
        (
            "store_messages",
            "Live messages in the partition, as last measured.",
            |r| r.messages,
        ),
    ];
    for (name, help, get) in families {
        let _ = writeln!(
            out,
            "# HELP shardmail_{name} {help}\n# TYPE shardmail_{name} gauge"
        );
        for r in &rows {
            let p = r.partition;
            let _ = writeln!(out, "shardmail_{name}{{partition=\"{p}\"}} {}", get(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_shards() {
        let a = Metrics::default();
        let b = Metrics::default();
        add(&a.smtp.connections, 2);
        add(&b.smtp.connections, 3);
        add(&a.messages_accepted, 1);
        let _ = a.accept_latency.borrow_mut().record(1500);
        let _ = b.accept_latency.borrow_mut().record(2500);
        let g = Gauges {
            store_syncs: 4,
            store_appends: 8,
            ..Gauges::default()
        };
        let text = render(&[a.snapshot(g.clone()), b.snapshot(g)]);
        assert!(
            text.contains("shardmail_connections_total{protocol=\"smtp\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("shardmail_messages_accepted_total 1\n"));
        assert!(text.contains("shardmail_store_syncs_total 8\n"));
        assert!(text.contains("shardmail_smtp_accept_latency_seconds_count 2\n"));
        assert!(text.contains("shardmail_shards 2\n"));
    }
}
