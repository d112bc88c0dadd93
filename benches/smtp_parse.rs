//! Micro-benchmarks (plain harness, `cargo bench`): SMTP command parsing, the DATA
//! reader (dot-unstuffing + CRLF.CRLF scan), and the store's append path with and
//! without fdatasync. Prints the median of several timed rounds; each round is
//! bounded. Numbers name the host in the README, never asserted in tests.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use shardmail::config::{Durability, StoreOptions};
use shardmail::proto::smtp::command;
use shardmail::proto::smtp::data::{DataProgress, DataReader};
use shardmail::store::Partition;

const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench_commands() {
    let lines: Vec<&[u8]> = vec![
        b"EHLO client.example.org",
        b"MAIL FROM:<sender.name@example.org> SIZE=5120 BODY=8BITMIME",
        b"RCPT TO:<recipient@example.com>",
        b"DATA",
        b"RSET",
        b"BDAT 65536 LAST",
    ];
    let bytes_per_pass: usize = lines.iter().map(|l| l.len() + 2).sum();
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let passes = 200_000;
        let t = Instant::now();
        for _ in 0..passes {
            for l in &lines {
                let _ = black_box(command::parse(black_box(l)));
            }
        }
        rates.push((passes * bytes_per_pass) as f64 / t.elapsed().as_secs_f64());
    }
    let r = median(rates);
    println!(
        "smtp command parse      {:>8.3} GB/s  ({:.1} M commands/s)",
        r / 1e9,
        r / bytes_per_pass as f64 * lines.len() as f64 / 1e6
    );
}

fn bench_data_reader() {
    let mut body = Vec::new();
    while body.len() < 8 << 20 {
        body.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog, again and again.\r\n",
        );
        body.extend_from_slice(b"..a stuffed line\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let mut rates = Vec::new();
    let mut sink = shardmail::proto::Incoming::default();
    for _ in 0..ROUNDS {
        sink.staged.clear();
        let t = Instant::now();
        let mut r = DataReader::new();
        // 64 KiB reads, as the IO layer delivers them.
        let mut pos = 0;
        while pos < body.len() {
            let end = (pos + 65536).min(body.len());
            match r.read(&body[pos..end], &mut sink, usize::MAX) {
                DataProgress::More(n) => pos += n.max(1),
                DataProgress::Done(n) => pos += n,
            }
        }
        rates.push(body.len() as f64 / t.elapsed().as_secs_f64());
    }
    println!("smtp DATA reader        {:>8.3} GB/s", median(rates) / 1e9);
}

fn bench_store(durability: Durability, label: &str, messages: usize) {
    let dir = std::env::temp_dir().join(format!("shardmail-bench-{}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let msg = vec![b'x'; 5120];
    let summary = shardmail::store::Summary::parse(&msg).to_bytes();
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor (RLIMIT_MEMLOCK?)");
    let rate = ex.run(async move {
        let p = Partition::open(
            0,
            &dir,
            StoreOptions {
                durability,
                checkpoint_bytes: u64::MAX,
                ..StoreOptions::default()
            },
        )
        .await
        .expect("open");
        // 64 concurrent appenders, like 64 SMTP sessions finishing DATA together.
        let t = Instant::now();
        let per_task = messages / 64;
        let tasks: Vec<_> = (0..64u64)
            .map(|a| {
                let (p, msg, summary) = (Rc::clone(&p), msg.clone(), summary.clone());
                glommio::spawn_local(async move {
                    for _ in 0..per_task {
                        p.deliver(&[a + 1], 1, &msg, &summary, 0)
                            .await
                            .expect("deliver");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let rate = (per_task * 64) as f64 / t.elapsed().as_secs_f64();
        let stats = p.stats();
        let _ = std::fs::remove_dir_all(&dir);
        (rate, stats.batches as f64 / stats.syncs.max(1) as f64)
    });
    println!(
        "store append {label:<10} {:>8.0} msg/s of 5 KiB  ({:.1} appends per commit)",
        rate.0, rate.1
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    bench_commands();
    bench_data_reader();
    let n = if quick { 6_400 } else { 64_000 };
    bench_store(Durability::None, "no-sync", n);
    bench_store(Durability::Group, "group", n);
    bench_store(Durability::Sync, "sync-each", n / 10);
}
