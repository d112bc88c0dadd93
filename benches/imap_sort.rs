//! SORT and THREAD over one mailbox of 100,000 messages (`cargo bench --bench
//! imap_sort`): the real session over the in-memory store, so the time is the
//! protocol's own (key extraction from the cached envelopes, the sort, the reply),
//! without sockets. Reports the median of a few rounds, how many bounded steps the
//! command was answered in and the longest of them (DESIGN.md §10: that is how long
//! the shard's reactor is held). Numbers go to the README with the
//! host named, never into assertions.

use std::sync::Arc;
use std::time::Instant;

use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;

const MESSAGES: usize = 100_000;
const ROUNDS: usize = 3;

fn mailbox() -> Driver {
    let mut d = Driver::new(
        Arc::new(ImapConfig {
            hostname: "bench.example".into(),
            tls_available: true,
            output_bytes_max: 4 << 20,
            // Measure THREAD past its default limit (limits.imap_thread_messages_max).
            thread_messages_max: 1_000_000,
            ..ImapConfig::default()
        }),
        true,
    );
    let topics = [
        "budget", "lunch", "release", "invoice", "meeting", "report", "travel",
    ];
    let t = Instant::now();
    for i in 0..MESSAGES {
        let topic = topics[i % topics.len()];
        let prefix = ["", "Re: ", "Fwd: ", "Re: [team] "][i % 4];
        let day = 1 + (i * 7919) % 28;
        let msg = format!(
            "From: Sender {n} <user{n}@example.org>\r\nTo: team@example.org\r\n\
             Subject: {prefix}{topic} {k}\r\nDate: {day} Nov 2026 {h:02}:{m:02}:00 +0000\r\n\
             Message-ID: <{i}@example.org>\r\nReferences: <{parent}@example.org>\r\n\r\nbody {i}\r\n",
            parent = i / 4 * 4,
            n = (i * 31) % 5000,
            k = i % 997,
            h = i % 24,
            m = i % 60,
        );
        d.store.deliver(1, msg.as_bytes(), 1_795_000_000 + i as i64);
    }
    eprintln!(
        "built {MESSAGES} messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    d.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    d.sent.clear();
    d
}

fn main() {
    let mut d = mailbox();
    println!("SORT/THREAD over {MESSAGES} messages (in-memory store, one core):");
    for (name, command) in [
        ("SORT (ARRIVAL)", "SORT (ARRIVAL) UTF-8 ALL"),
        ("SORT (SUBJECT)", "SORT (SUBJECT) UTF-8 ALL"),
        ("SORT (DATE)", "SORT (DATE) UTF-8 ALL"),
        ("SORT (REVERSE FROM)", "SORT (REVERSE FROM) UTF-8 ALL"),
        (
            "SORT RETURN (MIN COUNT) (SUBJECT) … SUBJECT budget",
            "SORT RETURN (MIN COUNT) (SUBJECT) UTF-8 SUBJECT budget",
        ),
        ("THREAD ORDEREDSUBJECT", "THREAD ORDEREDSUBJECT UTF-8 ALL"),
        ("THREAD REFERENCES", "THREAD REFERENCES UTF-8 ALL"),
    ] {
        let mut times = Vec::new();
        let mut steps = 0;
        let mut longest = Vec::new();
        for _ in 0..ROUNDS {
            d.sent.clear();
            d.longest_step = std::time::Duration::ZERO;
            let before = d.steps;
            let t = Instant::now();
            d.feed(format!("s {command}\r\n").as_bytes());
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            steps = d.steps - before;
            longest.push(d.longest_step.as_secs_f64() * 1000.0);
            let reply = String::from_utf8_lossy(&d.sent);
            assert!(
                reply.contains("s OK"),
                "{name}: {}",
                &reply[reply.len().saturating_sub(200)..]
            );
        }
        times.sort_by(|a, b| a.total_cmp(b));
        longest.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {name:<52} median {:7.1} ms  (range {:.1}–{:.1}), {steps} steps, longest step {:.2} ms",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            longest[longest.len() / 2]
        );
    }
}
