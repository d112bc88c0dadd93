//! Per-shard counters and latency histograms, merged across shards on request, and
//! their Prometheus text exposition (DESIGN.md §8).
//!
//! Each shard owns a [`Metrics`] (plain `Cell`s and `RefCell`ed histograms: no atomics
//! on hot paths). A scrape of `listen.metrics` asks every shard for a [`Snapshot`]
//! (owned, `Send`) over the mesh, adds them up and formats them. Nothing here does IO.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;

use hdrhistogram::Histogram;

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
    /// Connections refused by a limit (per address, per family, capacity).
    pub connections_refused: Cell<u64>,
    /// Login attempts answered "try later" by the throttle, without a hash computed.
    pub logins_throttled: Cell<u64>,
    /// Connections closed for a deadline (pre-login, command, minimum data rate).
    pub deadline_disconnects: Cell<u64>,
    /// From end of DATA to the `250` (storage on every owner, checks included), µs.
    pub accept_latency: RefCell<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 2 significant digits: ~10 KiB per histogram. Constant bounds that
    // hdrhistogram accepts; nothing here depends on input.
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("constant histogram bounds are valid")
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
            connections_refused: Cell::default(),
            logins_throttled: Cell::default(),
            deadline_disconnects: Cell::default(),
            accept_latency: RefCell::new(histogram()),
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
    pub store_syncs: u64,
    pub store_appends: u64,
    pub partitions: u64,
}

/// Everything one shard reports, owned so it can cross the mesh.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: Vec<(&'static str, &'static str, u64)>,
    pub gauges: Gauges,
    pub accept_latency: Histogram<u64>,
}

impl Metrics {
    pub fn snapshot(&self, gauges: Gauges) -> Snapshot {
        let counters = vec![
            ("connections_total", "smtp", self.smtp.connections.get()),
            ("connections_total", "pop3", self.pop3.connections.get()),
            ("connections_total", "imap", self.imap.connections.get()),
            ("commands_total", "smtp", self.smtp.commands.get()),
            ("commands_total", "pop3", self.pop3.commands.get()),
            ("commands_total", "imap", self.imap.commands.get()),
            ("auth_failures_total", "smtp", self.smtp.auth_failures.get()),
            ("auth_failures_total", "pop3", self.pop3.auth_failures.get()),
            ("auth_failures_total", "imap", self.imap.auth_failures.get()),
            ("messages_accepted_total", "", self.messages_accepted.get()),
            ("messages_rejected_total", "", self.messages_rejected.get()),
            ("received_bytes_total", "", self.bytes_received.get()),
            (
                "outbound_delivered_total",
                "",
                self.outbound_delivered.get(),
            ),
            ("outbound_bounced_total", "", self.outbound_bounced.get()),
            ("pop3_sent_bytes_total", "", self.bytes_sent_pop3.get()),
            ("imap_sent_bytes_total", "", self.bytes_sent_imap.get()),
            (
                "connections_refused_total",
                "",
                self.connections_refused.get(),
            ),
            ("logins_throttled_total", "", self.logins_throttled.get()),
            (
                "deadline_disconnects_total",
                "",
                self.deadline_disconnects.get(),
            ),
        ];
        Snapshot {
            counters,
            gauges,
            accept_latency: self.accept_latency.borrow().clone(),
        }
    }
}

const HELP: &[(&str, &str)] = &[
    (
        "connections_refused_total",
        "Connections refused by a limit (per address, per protocol family, capacity).",
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
        for &(name, label, v) in &s.counters {
            match totals
                .iter_mut()
                .find(|(n, l, _)| *n == name && *l == label)
            {
                Some(t) => t.2 += v,
                None => totals.push((name, label, v)),
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
                let _ = writeln!(out, "shardmail_{name}{{protocol=\"{label}\"}} {v}");
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
    out
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
