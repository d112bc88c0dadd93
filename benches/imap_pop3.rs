//! Micro-benchmarks (plain harness, `cargo bench --bench imap_pop3`): the IMAP framer
//! and tokenizer, the POP3 session's command handling, and serving — IMAP FETCH (whole messages,
//! headers, ENVELOPE+BODYSTRUCTURE) and POP3 RETR dot-stuffing — from memory, so the
//! protocol code's own cost is measured without sockets. Medians of several bounded
//! rounds; numbers go to the README with the host named, never into assertions.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use shardmail::proto::imap::lexer::{tokenize, Frame, FrameLimits, Framer};
use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;

const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench_imap_parse() {
    let commands: &[&[u8]] = &[
        b"a1 UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])\r\n",
        b"a2 UID STORE 1201:1250 +FLAGS.SILENT (\\Seen $Forwarded)\r\n",
        b"a3 SEARCH OR FROM \"alice@example.org\" SUBJECT report UNSEEN SINCE 1-Nov-2026\r\n",
        b"a4 SELECT INBOX (CONDSTORE)\r\n",
        b"a5 APPEND Sent (\\Seen) {64+}\r\nSubject: x\r\n\r\n0123456789012345678901234567890123456789012345\r\n",
        b"a6 NOOP\r\n",
    ];
    let stream: Vec<u8> = commands.iter().flat_map(|c| c.iter().copied()).collect();
    let limits = FrameLimits {
        command_bytes_max: 16 * 1024,
        literal_bytes_max: 1 << 20,
        upload_bytes_max: 0,
        non_sync_bytes_max: u64::MAX,
    };
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let passes = 100_000;
        let t = Instant::now();
        for _ in 0..passes {
            let mut framer = Framer::new();
            let mut at = 0;
            while at < stream.len() {
                match framer.frame(&stream[at..], &limits) {
                    Frame::Complete { len } => {
                        let _ = black_box(tokenize(&stream[at..at + len], 16));
                        at += len;
                    }
                    _ => break,
                }
            }
        }
        rates.push((passes * stream.len()) as f64 / t.elapsed().as_secs_f64());
    }
    let r = median(rates);
    println!(
        "imap frame+tokenize     {:>8.3} GB/s  ({:.1} M commands/s)",
        r / 1e9,
        r / stream.len() as f64 * commands.len() as f64 / 1e6
    );
}

fn bench_pop3_session() {
    use shardmail::proto::pop3::{Entry, Maildrop, Outbox, Pop3Config, Session};
    let config = Arc::new(Pop3Config {
        hostname: "bench".into(),
        tls_available: true,
        allow_plaintext_auth: true,
        line_bytes_max: 4096,
        bad_commands_max: 1000,
        auth_failures_max: 1000,
        output_bytes_max: 256 * 1024,
    });
    let mut s = Session::new(config, true);
    let mut out = Outbox::default();
    s.receive(b"USER alice\r\nPASS pw\r\n", &mut out);
    let entries = (1..=100)
        .map(|uid| Entry {
            uid,
            size: 10_240,
            deleted: false,
        })
        .collect();
    s.logged_in(
        "alice".into(),
        Maildrop {
            uidvalidity: 1,
            entries,
        },
        &mut out,
    );
    let lines: &[u8] = b"STAT\r\nLIST 12\r\nUIDL 12\r\nNOOP\r\nLIST 99\r\nUIDL 3\r\n";
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let passes = 200_000;
        let t = Instant::now();
        for _ in 0..passes {
            out.reply.clear();
            let used = s.receive(black_box(lines), &mut out);
            black_box(used);
        }
        rates.push((passes * lines.len()) as f64 / t.elapsed().as_secs_f64());
    }
    let r = median(rates);
    println!(
        "pop3 session commands   {:>8.3} GB/s  ({:.1} M commands/s, replies included)",
        r / 1e9,
        r / lines.len() as f64 * 6.0 / 1e6
    );
}

fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: alice@example.com\r\nSubject: message {i}\r\n\
         Date: Thu, 26 Nov 2026 06:45:00 +0000\r\nMessage-ID: <{i}@example.org>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    m
}

fn bench_fetch(label: &str, items: &str, size: usize) {
    let config = Arc::new(ImapConfig {
        hostname: "bench".into(),
        tls_available: true,
        allow_plaintext_auth: true,
        command_bytes_max: 16 * 1024,
        literal_bytes_max: 1 << 30,
        depth_max: 16,
        bad_commands_max: 1000,
        auth_failures_max: 1000,
        // Large enough that one step answers the whole FETCH, as before.
        output_bytes_max: 64 << 20,
        ..ImapConfig::default()
    });
    let count = 1000;
    let mut d = Driver::new(config, true);
    for i in 0..count {
        d.store.deliver(1, &message(i, size), 1_795_600_000);
    }
    d.feed(b"a LOGIN bob pw\r\nb EXAMINE INBOX\r\n");
    d.sent.clear();
    let command = format!("c FETCH 1:* {items}\r\n");
    let (mut rates, mut bytes) = (Vec::new(), 0);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let passes = 5;
        for _ in 0..passes {
            d.feed(command.as_bytes());
            bytes = d.sent.len();
            d.sent.clear();
        }
        rates.push((passes * count) as f64 / t.elapsed().as_secs_f64());
    }
    let r = median(rates);
    println!(
        "imap FETCH {label:<20} {:>8.0} msg/s  ({:.0} MB/s of replies)",
        r,
        r * bytes as f64 / count as f64 / 1e6
    );
}

fn bench_retr() {
    let m = message(1, 10 * 1024);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let passes = 100_000;
        let t = Instant::now();
        for _ in 0..passes {
            out.clear();
            shardmail::proto::dot_stuff_into(&mut out, black_box(&m));
            black_box(&out);
        }
        rates.push(passes as f64 / t.elapsed().as_secs_f64());
    }
    let r = median(rates);
    println!(
        "pop3 RETR dot-stuffing  {:>8.0} msg/s  ({:.2} GB/s, 10 KiB messages)",
        r,
        r * m.len() as f64 / 1e9
    );
}

fn main() {
    bench_imap_parse();
    bench_pop3_session();
    bench_fetch("BODY[] 10 KiB", "(UID BODY.PEEK[])", 10 * 1024);
    bench_fetch("BODY[] 100 KiB", "(UID BODY.PEEK[])", 100 * 1024);
    bench_fetch(
        "headers",
        "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])",
        10 * 1024,
    );
    bench_fetch(
        "ENVELOPE+BODYSTRUCT",
        "(UID FLAGS ENVELOPE BODYSTRUCTURE)",
        10 * 1024,
    );
    bench_retr();
}
