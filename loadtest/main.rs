//! `shardmail-load`: a load generator for SMTP, IMAP and POP3 that works against any
//! server speaking the protocol (shardmail, Postfix, Dovecot, …).
//!
//! Connections are tasks on glommio client shards (`--shards`, one executor each; see
//! [`net`]). SMTP pipelines MAIL/RCPT/DATA when the server offers PIPELINING, one
//! latency sample per message (MAIL sent → final 250); IMAP and POP3 time each
//! operation or download. Latencies go to hdrhistogram. Every run is bounded by a count
//! and a time limit. Prints a table, or JSON with `--json`; progress goes to stderr
//! once a second. `abuse` measures what hostile clients cost ([`abuse`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

mod abuse;
mod imap;
mod net;

use net::{run_connections, Client, Shared, Tls};

#[derive(Parser)]
#[command(
    name = "shardmail-load",
    about = "SMTP/IMAP/POP3 load generator (works against any server of the protocol)"
)]
struct Cli {
    /// Client shards: glommio executors the connections are spread over.
    #[arg(long, global = true, default_value_t = 2)]
    shards: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Send messages over SMTP.
    Smtp(SmtpArgs),
    /// Log in over POP3 and download every message (LIST, UIDL, RETR all, QUIT).
    Pop3(Pop3Args),
    /// IMAP sessions: LOGIN, SELECT, a weighted mix of FETCH/STORE/SEARCH/APPEND/NOOP,
    /// LOGOUT.
    Imap(ImapArgs),
    /// Put test mail into existing accounts: APPEND over IMAP (any server).
    Seed(SeedArgs),
    /// Hostile clients: bystander latency during heavy commands, memory per idle
    /// connection and under unfinished uploads (issue 11).
    Abuse(abuse::AbuseArgs),
}

#[derive(clap::Args, Clone)]
struct SeedArgs {
    /// IMAP server address.
    #[arg(long, default_value = "127.0.0.1:2143")]
    server: String,
    /// Accounts to fill (they must exist: `shardmail user add`, or the server's own tool).
    #[arg(long, required = true)]
    user: Vec<String>,
    #[arg(long, default_value = "pw")]
    password: String,
    /// Messages per account.
    #[arg(long, short = 'm', default_value_t = 300)]
    messages: u64,
    /// Message size in bytes.
    #[arg(long, short = 's', default_value_t = 10 * 1024)]
    size: usize,
    /// TLS: none, implicit or starttls.
    #[arg(long, value_enum, default_value_t = Tls::None)]
    tls: Tls,
    /// Create the accounts first in this shardmail data directory (runs the
    /// `shardmail` binary next to this one: `user add`); other servers create users
    /// with their own tools.
    #[arg(long, value_name = "DATA_DIR")]
    create_shardmail_users: Option<std::path::PathBuf>,
    /// Stop after this many seconds (hard bound).
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
}

#[derive(clap::Args, Clone)]
struct ImapArgs {
    /// Server address (plain IMAP; the server must allow LOGIN without TLS).
    #[arg(long, default_value = "127.0.0.1:2143")]
    server: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// Login sessions in total.
    #[arg(long, default_value_t = 200)]
    sessions: u64,
    /// Operations per session after SELECT.
    #[arg(long, default_value_t = 20)]
    ops: u32,
    /// Accounts to log in as, taken in turn.
    #[arg(long, required = true)]
    user: Vec<String>,
    #[arg(long, default_value = "pw")]
    password: String,
    /// Weights of the operations, `name=weight,…`: fetch_headers (10 messages'
    /// envelope headers), fetch_body (one whole message), store (+/-\Seen),
    /// search (UNSEEN, or FROM), append (a 2 KiB message), idle (IDLE until a second
    /// connection's APPEND wakes it; timed from APPEND sent to EXISTS seen), noop.
    #[arg(
        long,
        default_value = "fetch_headers=30,fetch_body=30,store=15,search=10,append=5,idle=2,noop=8"
    )]
    mix: String,
    /// Stop after this many seconds even if sessions remain (hard bound).
    #[arg(long, default_value_t = 120)]
    duration_secs: u64,
    /// TLS: none, implicit (SMTPS/IMAPS/POP3S port) or starttls.
    #[arg(long, value_enum, default_value_t = Tls::None)]
    tls: Tls,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Clone)]
struct Pop3Args {
    /// Server address (plain POP3; the server must allow USER/PASS without TLS).
    #[arg(long, default_value = "127.0.0.1:2110")]
    server: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// Login sessions in total.
    #[arg(long, default_value_t = 200)]
    sessions: u64,
    /// Accounts to log in as, taken in turn (each holds its own maildrop lock).
    #[arg(long, required = true)]
    user: Vec<String>,
    #[arg(long, default_value = "pw")]
    password: String,
    /// Stop after this many seconds even if sessions remain (hard bound).
    #[arg(long, default_value_t = 120)]
    duration_secs: u64,
    /// TLS: none, implicit (SMTPS/IMAPS/POP3S port) or starttls.
    #[arg(long, value_enum, default_value_t = Tls::None)]
    tls: Tls,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Clone)]
struct SmtpArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 20)]
    connections: usize,
    /// Messages to send in total.
    #[arg(long, short = 'm', default_value_t = 10_000)]
    messages: u64,
    /// Stop after this many seconds even if messages remain (hard bound).
    #[arg(long, default_value_t = 120)]
    duration_secs: u64,
    /// Message size in bytes (headers included): `5120`, or `MIN-MAX` for sizes spread
    /// evenly over that range.
    #[arg(long, short = 's', default_value = "5120", value_parser = parse_size_range)]
    size: (usize, usize),
    /// Recipients per message, taken in turn from --to.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Recipient addresses (repeatable).
    #[arg(long, default_values_t = vec!["user@localhost".to_string()])]
    to: Vec<String>,
    #[arg(long, default_value = "load@loadtest.invalid")]
    from: String,
    /// Open a new connection for every message instead of reusing one.
    #[arg(long)]
    no_reuse: bool,
    /// AUTH PLAIN as USER:PASSWORD after EHLO (the server must allow it without TLS).
    #[arg(long, value_name = "USER:PASSWORD")]
    auth: Option<String>,
    /// TLS: none, implicit (SMTPS/IMAPS/POP3S port) or starttls.
    #[arg(long, value_enum, default_value_t = Tls::None)]
    tls: Tls,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Totals {
    ok: u64,
    bytes: u64,
    /// POP3: time spent logging in, and downloading, summed over sessions.
    login_us: u64,
    download_us: u64,
    logins: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

fn main() {
    let cli = Cli::parse();
    let shards = cli.shards;
    let result = match cli.scenario {
        Scenario::Smtp(args) => run_smtp(args, shards),
        Scenario::Pop3(args) => run_pop3(args, shards),
        Scenario::Imap(args) => imap::run(args, shards),
        Scenario::Seed(args) => imap::seed(args, shards),
        Scenario::Abuse(args) => abuse::run(args),
    };
    std::process::exit(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shardmail-load: {e}");
            1
        }
    });
}

fn run_smtp(args: SmtpArgs, shards: usize) -> Result<(), String> {
    if args.to.is_empty() || args.connections == 0 {
        return Err("need at least one --to and one connection".into());
    }
    let args = Arc::new(args);
    let (results, elapsed) = run_connections(
        shards,
        args.connections,
        args.messages,
        "messages",
        Duration::from_secs(args.duration_secs),
        {
            let args = args.clone();
            move |w, shared| {
                let args = args.clone();
                async move {
                    let mut local = new_histogram().unwrap_or_else(|e| panic!("{e}"));
                    let mut t = Totals::default();
                    worker(w, &args, &shared, &mut local, &mut t).await;
                    (t, local)
                }
            }
        },
    )?;
    let (totals, hist) = merge(results)?;
    report(&args, &totals, &hist, elapsed);
    Ok(())
}

/// Adds up the connections' totals and histograms (SMTP and POP3).
fn merge(results: Vec<(Totals, Histogram<u64>)>) -> Result<(Totals, Histogram<u64>), String> {
    let mut totals = Totals::default();
    let mut hist = new_histogram()?;
    for (t, h) in results {
        let _ = hist.add(&h);
        totals.ok += t.ok;
        totals.bytes += t.bytes;
        totals.login_us += t.login_us;
        totals.download_us += t.download_us;
        totals.logins += t.logins;
        for (k, v) in t.errors {
            *totals.errors.entry(k).or_default() += v;
        }
    }
    Ok((totals, hist))
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    // Microseconds from 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

async fn worker(
    id: usize,
    args: &SmtpArgs,
    shared: &Shared,
    hist: &mut Histogram<u64>,
    totals: &mut Totals,
) {
    let mut conn: Option<Conn> = None;
    while let Some(n) = shared.claim() {
        if conn.is_none() {
            match Conn::open(&args.server, args.tls, args.auth.as_deref()).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    *totals.errors.entry(format!("connect: {e}")).or_default() += 1;
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let rcpts: Vec<&str> = (0..args.rcpts)
            .map(|i| args.to[(n as usize + i) % args.to.len()].as_str())
            .collect();
        let (min, max) = args.size;
        // A spread that does not depend on which worker sends message n.
        let size = min + (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % (max - min + 1);
        let body = message_body(id, n, size);
        let started = Instant::now();
        match c.send(&args.from, &rcpts, &body).await {
            Ok(()) => {
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                totals.ok += 1;
                totals.bytes += body.len() as u64;
                shared.finished_one();
            }
            Err(e) => {
                *totals.errors.entry(e).or_default() += 1;
                conn = None;
                continue;
            }
        }
        if args.no_reuse {
            if let Some(mut c) = conn.take() {
                c.quit().await;
            }
        }
    }
    if let Some(mut c) = conn {
        c.quit().await;
    }
}

fn parse_size_range(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected a byte count or MIN-MAX, got {text}");
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        }
        None => {
            let n = text.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
    }
}

fn message_body(worker: usize, n: u64, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: load@loadtest.invalid\r\nTo: user@localhost\r\nSubject: load {n}\r\n\
         Message-ID: <{n}.{worker}@loadtest.invalid>\r\n\r\n"
    )
    .into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

struct Conn {
    client: Client,
    pipelining: bool,
}

impl Conn {
    async fn open(server: &str, tls: Tls, auth: Option<&str>) -> Result<Conn, String> {
        let mut c = Conn {
            client: Client::connect(server, tls).await?,
            pipelining: false,
        };
        c.expect(220).await?;
        c.client.write(b"EHLO loadtest.invalid\r\n").await?;
        let mut lines = c.expect(250).await?;
        if tls == Tls::Starttls {
            c.client.write(b"STARTTLS\r\n").await?;
            c.expect(220).await?;
            c.client.start_tls().await?;
            c.client.write(b"EHLO loadtest.invalid\r\n").await?;
            lines = c.expect(250).await?;
        }
        c.pipelining = lines
            .iter()
            .any(|l| l.to_ascii_uppercase().contains("PIPELINING"));
        if let Some(credentials) = auth {
            use base64::Engine as _;
            let (user, password) = credentials
                .split_once(':')
                .ok_or("--auth expects USER:PASSWORD")?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            c.client
                .write(format!("AUTH PLAIN {token}\r\n").as_bytes())
                .await?;
            c.expect(235).await?;
        }
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, code: u16) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        let mut raw = Vec::new();
        loop {
            self.client.read_line(&mut raw).await?;
            let line = String::from_utf8_lossy(&raw).into_owned();
            let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                if got != code {
                    return Err(format!("reply {got}"));
                }
                return Ok(lines);
            }
        }
    }

    async fn send(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> Result<(), String> {
        let mut cmds = format!("MAIL FROM:<{from}>\r\n");
        for r in rcpts {
            cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        if self.pipelining {
            self.client.write(cmds.as_bytes()).await?;
            self.expect(250).await?;
            for _ in rcpts {
                self.expect(250).await?;
            }
        } else {
            let mut lines = cmds.split_inclusive("\r\n");
            for _ in 0..=rcpts.len() {
                self.client
                    .write(lines.next().unwrap_or_default().as_bytes())
                    .await?;
                self.expect(250).await?;
            }
            self.client.write(b"DATA\r\n").await?;
        }
        self.expect(354).await?;
        let mut wire = Vec::with_capacity(body.len() + 8);
        for line in body.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\n");
        self.client.write(&wire).await?;
        self.expect(250).await?;
        Ok(())
    }

    async fn quit(&mut self) {
        let _ = self.client.write(b"QUIT\r\n").await;
        let _ = self.expect(221).await;
    }
}

fn report(args: &SmtpArgs, t: &Totals, h: &Histogram<u64>, elapsed: f64) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = t.ok as f64 / elapsed;
    let mbps = t.bytes as f64 / elapsed / 1e6;
    let errors: u64 = t.errors.values().sum();
    if args.json {
        let report = serde_json::json!({
            "scenario": "smtp",
            "server": args.server,
            "connections": args.connections,
            "size": format!("{}-{}", args.size.0, args.size.1),
            "rcpts": args.rcpts,
            "messages_ok": t.ok,
            "errors": errors,
            "error_kinds": t.errors,
            "elapsed_s": elapsed,
            "messages_per_s": rate,
            "mb_per_s": mbps,
            "latency_ms": {
                "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
                "max": h.max() as f64 / 1000.0,
            },
        });
        println!("{report}");
        return;
    }
    println!(
        "scenario      smtp → {} ({} connections, {}-{} B, {} rcpt/msg, tls {:?})",
        args.server, args.connections, args.size.0, args.size.1, args.rcpts, args.tls
    );
    println!("messages ok   {}   errors {}", t.ok, errors);
    for (k, v) in &t.errors {
        println!("  error {k}: {v}");
    }
    println!("elapsed       {elapsed:.2} s");
    println!("throughput    {rate:.0} msg/s   {mbps:.1} MB/s");
    println!(
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
}

/// POP3: each worker logs in as the next account nobody else is using, downloads
/// everything with pipelined RETRs, and quits without deleting (so runs repeat).
fn run_pop3(args: Pop3Args, shards: usize) -> Result<(), String> {
    if args.connections > args.user.len() {
        return Err("need at least as many --user accounts as connections (maildrop locks)".into());
    }
    let args = Arc::new(args);
    let (results, elapsed) = run_connections(
        shards,
        args.connections,
        args.sessions,
        "sessions",
        Duration::from_secs(args.duration_secs),
        {
            let args = args.clone();
            move |w, shared| {
                let args = args.clone();
                async move {
                    let mut local = new_histogram().unwrap_or_else(|e| panic!("{e}"));
                    let mut t = Totals::default();
                    // Worker w always uses accounts w, w+connections, … so no two
                    // workers ever want the same maildrop.
                    let mine: Vec<&String> =
                        args.user.iter().skip(w).step_by(args.connections).collect();
                    let mut round = 0usize;
                    while shared.claim().is_some() {
                        let user = mine[round % mine.len()];
                        round += 1;
                        match pop3_session(
                            &args.server,
                            args.tls,
                            user,
                            &args.password,
                            &mut local,
                            &mut t,
                        )
                        .await
                        {
                            Ok(()) => shared.finished_one(),
                            Err(e) => *t.errors.entry(e).or_default() += 1,
                        }
                    }
                    (t, local)
                }
            }
        },
    )?;
    let (t, h) = merge(results)?;
    let login_ms = t.login_us as f64 / t.logins.max(1) as f64 / 1000.0;

    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let errors: u64 = t.errors.values().sum();
    let (rate, mbps) = (t.ok as f64 / elapsed, t.bytes as f64 / elapsed / 1e6);
    if args.json {
        let report = serde_json::json!({
            "scenario": "pop3", "server": args.server, "connections": args.connections,
            "messages_retrieved": t.ok, "errors": errors, "error_kinds": t.errors,
            "elapsed_s": elapsed, "messages_per_s": rate, "mb_per_s": mbps,
            "login_ms_mean": login_ms, "logins": t.logins,
            "session_download_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99),
                                 "p999": ms(0.999), "max": h.max() as f64 / 1000.0 },
        });
        println!("{report}");
        return Ok(());
    }
    println!(
        "scenario      pop3 → {} ({} connections)",
        args.server, args.connections
    );
    println!("retrieved     {} messages   errors {errors}", t.ok);
    for (k, v) in &t.errors {
        println!("  error {k}: {v}");
    }
    println!("elapsed       {elapsed:.2} s");
    println!("throughput    {rate:.0} msg/s   {mbps:.1} MB/s");
    println!(
        "logins        {} ({login_ms:.1} ms mean, USER+PASS round trip)",
        t.logins
    );
    println!(
        "session ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}

async fn pop3_session(
    server: &str,
    tls: Tls,
    user: &str,
    password: &str,
    hist: &mut Histogram<u64>,
    totals: &mut Totals,
) -> Result<(), String> {
    let mut c = Client::connect(server, tls).await?;
    let mut line = Vec::new();
    async fn ok_line(c: &mut Client, line: &mut Vec<u8>) -> Result<(), String> {
        c.read_line(line).await?;
        if line.starts_with(b"+OK") {
            Ok(())
        } else {
            Err(format!("reply {}", String::from_utf8_lossy(line).trim()))
        }
    }
    ok_line(&mut c, &mut line).await?;
    if tls == Tls::Starttls {
        c.write(b"STLS\r\n").await?;
        ok_line(&mut c, &mut line).await?;
        c.start_tls().await?;
    }
    let login_started = Instant::now();
    c.write(format!("USER {user}\r\nPASS {password}\r\nSTAT\r\n").as_bytes())
        .await?;
    ok_line(&mut c, &mut line).await?;
    ok_line(&mut c, &mut line).await?;
    totals.login_us += login_started.elapsed().as_micros() as u64;
    totals.logins += 1;
    ok_line(&mut c, &mut line).await?;
    let count: usize = String::from_utf8_lossy(&line)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Pipelined (the server advertises PIPELINING): all RETRs in one write.
    let mut cmds = String::new();
    for i in 1..=count {
        cmds.push_str(&format!("RETR {i}\r\n"));
    }
    let started = Instant::now();
    c.write(cmds.as_bytes()).await?;
    for _ in 0..count {
        ok_line(&mut c, &mut line).await?;
        let mut bytes = 0u64;
        loop {
            c.read_line(&mut line).await?;
            if line == b".\r\n" {
                break;
            }
            bytes += line.len() as u64;
        }
        totals.ok += 1;
        totals.bytes += bytes;
    }
    // One sample per session: time from the first RETR sent to the last byte read.
    let download_us = started.elapsed().as_micros().max(1) as u64;
    totals.download_us += download_us;
    let _ = hist.record(download_us);
    c.write(b"QUIT\r\n").await?;
    ok_line(&mut c, &mut line).await?;
    Ok(())
}
