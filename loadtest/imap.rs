//! The `imap` scenario: sessions of LOGIN, SELECT INBOX, a weighted mix of operations,
//! LOGOUT, against any IMAP server (shardmail, Dovecot, …).
//!
//! Connections are tasks on the client shards; every operation is one command and its
//! tagged reply, timed into an hdrhistogram (per kind and overall). Runs are bounded by
//! a session count and a time limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use super::net::{run_connections, Client, Tls};
use super::{new_histogram, ImapArgs};

const OPS: [&str; 7] = [
    "fetch_headers",
    "fetch_body",
    "store",
    "search",
    "append",
    "idle",
    "noop",
];

#[derive(Default)]
struct Stats {
    ops: BTreeMap<&'static str, u64>,
    bytes: u64,
    logins: u64,
    login_us: u64,
    errors: BTreeMap<String, u64>,
}

fn parse_mix(mix: &str) -> Result<Vec<(&'static str, u32)>, String> {
    let mut weights = Vec::new();
    for item in mix.split(',').filter(|i| !i.is_empty()) {
        let (name, w) = item
            .split_once('=')
            .ok_or(format!("--mix: {item} is not name=weight"))?;
        let op = OPS.iter().find(|o| **o == name.trim()).ok_or(format!(
            "--mix: unknown operation {name} (known: {})",
            OPS.join(", ")
        ))?;
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("--mix: bad weight in {item}"))?;
        weights.push((*op, w));
    }
    if weights.iter().map(|w| w.1).sum::<u32>() == 0 {
        return Err("--mix: all weights are zero".into());
    }
    Ok(weights)
}

pub fn run(args: ImapArgs, shards: usize) -> Result<(), String> {
    let mix = parse_mix(&args.mix)?;
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
                let (args, mix) = (args.clone(), mix.clone());
                async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 + 1);
                    let mut local: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
                    let mut s = Stats::default();
                    while shared.claim().is_some() {
                        let n = rng.gen_range(0..args.user.len());
                        match session(&args, &args.user[n], &mix, &mut rng, &mut local, &mut s)
                            .await
                        {
                            Ok(()) => shared.finished_one(),
                            Err(e) => *s.errors.entry(e).or_default() += 1,
                        }
                    }
                    (s, local)
                }
            }
        },
    )?;
    let mut s = Stats::default();
    let mut h: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    for (one, hists) in results {
        for (k, v) in one.ops {
            *s.ops.entry(k).or_default() += v;
        }
        for (k, v) in one.errors {
            *s.errors.entry(k).or_default() += v;
        }
        s.bytes += one.bytes;
        s.logins += one.logins;
        s.login_us += one.login_us;
        for (k, v) in hists {
            match h.get_mut(k) {
                Some(mine) => {
                    let _ = mine.add(&v);
                }
                None => {
                    h.insert(k, v);
                }
            }
        }
    }
    let mut all = new_histogram()?;
    for (k, v) in h.iter() {
        if *k != "login" {
            let _ = all.add(v);
        }
    }
    let ops: u64 = s.ops.values().sum();
    let errors: u64 = s.errors.values().sum();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let pct = |h: &Histogram<u64>| {
        serde_json::json!({"p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99),
                           "p999": ms(h, 0.999), "max": h.max() as f64 / 1000.0})
    };
    if args.json {
        let per_op: serde_json::Map<String, serde_json::Value> = h
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::json!({"count": v.len(), "latency_ms": pct(v)}),
                )
            })
            .collect();
        let report = serde_json::json!({
            "scenario": "imap", "server": args.server, "connections": args.connections,
            "sessions": s.logins, "operations": ops, "errors": errors, "error_kinds": s.errors,
            "elapsed_s": elapsed, "ops_per_s": ops as f64 / elapsed,
            "logins_per_s": s.logins as f64 / elapsed, "mb_per_s": s.bytes as f64 / elapsed / 1e6,
            "latency_ms": pct(&all), "per_operation": per_op,
        });
        println!("{report}");
        return Ok(());
    }
    println!(
        "scenario      imap → {} ({} connections, mix {})",
        args.server, args.connections, args.mix
    );
    println!(
        "sessions      {}   operations {ops}   errors {errors}",
        s.logins
    );
    for (k, v) in &s.errors {
        println!("  error {k}: {v}");
    }
    println!("elapsed       {elapsed:.2} s");
    println!(
        "throughput    {:.0} ops/s   {:.0} logins/s   {:.1} MB/s received",
        ops as f64 / elapsed,
        s.logins as f64 / elapsed,
        s.bytes as f64 / elapsed / 1e6
    );
    for (name, v) in h.iter() {
        println!(
            "  {name:<14} {:>7}  p50 {:.2}  p99 {:.2}  max {:.2} ms",
            v.len(),
            ms(v, 0.5),
            ms(v, 0.99),
            v.max() as f64 / 1000.0
        );
    }
    println!(
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(&all, 0.5),
        ms(&all, 0.9),
        ms(&all, 0.99),
        ms(&all, 0.999),
        all.max() as f64 / 1000.0
    );
    Ok(())
}

/// Sends one command (with an optional synchronizing literal) and reads until its
/// tagged reply; returns the untagged lines and the bytes read.
async fn command(
    c: &mut Client,
    tag_no: &mut u32,
    text: &str,
    literal: Option<&[u8]>,
) -> Result<(Vec<String>, u64), String> {
    *tag_no += 1;
    let tag = format!("t{tag_no}");
    c.write(format!("{tag} {text}\r\n").as_bytes()).await?;
    let mut untagged = Vec::new();
    let mut bytes = 0u64;
    let mut line = Vec::new();
    let mut literal = literal;
    loop {
        c.read_line(&mut line).await?;
        bytes += line.len() as u64;
        if line.starts_with(b"+") {
            if let Some(l) = literal.take() {
                c.write(l).await?;
                c.write(b"\r\n").await?;
            }
            continue;
        }
        // A literal at the end of the line: read it whole, then the rest of the line.
        while let Some(n) = literal_len(&line) {
            let mut buf = vec![0; n];
            c.read_exact(&mut buf).await?;
            bytes += n as u64;
            c.read_line(&mut line).await?;
        }
        let reply = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Some(rest) = reply.strip_prefix(&format!("{tag} ")) {
            if rest.starts_with("OK") {
                return Ok((untagged, bytes));
            }
            // Errors by kind: the command and the server's NO/BAD.
            let word: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return Err(format!("{} {word}", text_command(text)));
        }
        untagged.push(reply);
    }
}

fn text_command(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let body = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let body = body.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(body.get(open + 1..)?)
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

fn pick(mix: &[(&'static str, u32)], rng: &mut impl Rng) -> &'static str {
    let total: u32 = mix.iter().map(|m| m.1).sum();
    let mut r = rng.gen_range(0..total);
    for (name, w) in mix {
        if r < *w {
            return name;
        }
        r -= w;
    }
    "noop"
}

fn record(hists: &mut BTreeMap<&'static str, Histogram<u64>>, op: &'static str, took: Duration) {
    let h = hists
        .entry(op)
        .or_insert_with(|| new_histogram().unwrap_or_else(|e| panic!("{e}")));
    let _ = h.record(took.as_micros().max(1) as u64);
}

/// Connects, (STARTTLS), LOGIN; returns the connection and the next tag number.
async fn login(
    server: &str,
    tls: Tls,
    user: &str,
    password: &str,
) -> Result<(Client, u32), String> {
    let mut c = Client::connect(server, tls).await?;
    let mut tag = 0u32;
    let mut greeting = Vec::new();
    c.read_line(&mut greeting).await?;
    if !greeting.starts_with(b"* OK") {
        return Err(format!(
            "greeting {}",
            String::from_utf8_lossy(&greeting).trim()
        ));
    }
    if tls == Tls::Starttls {
        command(&mut c, &mut tag, "STARTTLS", None).await?;
        c.start_tls().await?;
    }
    command(
        &mut c,
        &mut tag,
        &format!("LOGIN \"{user}\" \"{password}\""),
        None,
    )
    .await?;
    Ok((c, tag))
}

/// A message of about `size` bytes for APPEND.
fn append_message(user: &str, size: usize) -> Vec<u8> {
    let mut msg = format!(
        "From: load@loadtest.invalid\r\nTo: {user}\r\nSubject: appended by shardmail-load\r\n\r\n"
    )
    .into_bytes();
    while msg.len() < size {
        msg.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n",
        );
    }
    msg
}

fn exists_in(untagged: &[String]) -> Option<u32> {
    untagged
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
}

/// IDLE wake-up: this connection idles, a second one (same user) appends; the time is
/// from the APPEND being sent to the EXISTS arriving on the idling connection.
async fn idle_wake(
    c: &mut Client,
    tag: &mut u32,
    notifier: &mut (Client, u32),
    user: &str,
) -> Result<(u32, u64, Duration), String> {
    *tag += 1;
    let idle_tag = format!("t{tag}");
    c.write(format!("{idle_tag} IDLE\r\n").as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        c.read_line(&mut line).await?;
        if line.starts_with(b"+") {
            break;
        }
        if line.starts_with(idle_tag.as_bytes()) {
            return Err(format!("IDLE {}", String::from_utf8_lossy(&line).trim()));
        }
    }
    let started = Instant::now();
    let msg = append_message(user, 512);
    let (n, t) = (&mut notifier.0, &mut notifier.1);
    command(n, t, &format!("APPEND INBOX {{{}}}", msg.len()), Some(&msg)).await?;
    let mut bytes = 0;
    let exists = loop {
        c.read_line(&mut line).await?;
        bytes += line.len() as u64;
        let text = String::from_utf8_lossy(&line);
        if let Some(n) = exists_in(&[text.trim_end().to_string()]) {
            break n;
        }
    };
    let woke_after = started.elapsed();
    c.write(b"DONE\r\n").await?;
    loop {
        c.read_line(&mut line).await?;
        if line.starts_with(idle_tag.as_bytes()) {
            break;
        }
    }
    Ok((exists, bytes, woke_after))
}

async fn session(
    args: &ImapArgs,
    user: &str,
    mix: &[(&'static str, u32)],
    rng: &mut impl Rng,
    hists: &mut BTreeMap<&'static str, Histogram<u64>>,
    stats: &mut Stats,
) -> Result<(), String> {
    let started = Instant::now();
    let (mut c, mut tag) = login(&args.server, args.tls, user, &args.password).await?;
    stats.login_us += started.elapsed().as_micros() as u64;
    stats.logins += 1;
    record(hists, "login", started.elapsed());
    let (untagged, _) = command(&mut c, &mut tag, "SELECT INBOX", None).await?;
    let mut exists: u32 = exists_in(&untagged).unwrap_or(0);
    let mut notifier: Option<(Client, u32)> = None;
    for _ in 0..args.ops {
        let op = pick(mix, rng);
        let started = Instant::now();
        let mut sample = None;
        let seq = if exists > 0 {
            rng.gen_range(1..=exists)
        } else {
            0
        };
        let (untagged, bytes) = match op {
            "fetch_headers" if exists > 0 => {
                let last = (seq + 9).min(exists);
                command(&mut c, &mut tag,
                    &format!("FETCH {seq}:{last} (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])"),
                    None,
                ).await?
            }
            "fetch_body" if exists > 0 => {
                command(&mut c, &mut tag, &format!("FETCH {seq} BODY.PEEK[]"), None).await?
            }
            "store" if exists > 0 => {
                let sign = if rng.gen_bool(0.5) { '+' } else { '-' };
                command(
                    &mut c,
                    &mut tag,
                    &format!("STORE {seq} {sign}FLAGS (\\Seen)"),
                    None,
                )
                .await?
            }
            "search" => {
                if rng.gen_bool(0.5) {
                    command(&mut c, &mut tag, "SEARCH UNSEEN", None).await?
                } else {
                    command(&mut c, &mut tag, "SEARCH FROM \"load\"", None).await?
                }
            }
            "append" => {
                let msg = append_message(user, 2048);
                command(
                    &mut c,
                    &mut tag,
                    &format!("APPEND INBOX (\\Seen) {{{}}}", msg.len()),
                    Some(&msg),
                )
                .await?
            }
            "idle" => {
                if notifier.is_none() {
                    notifier = Some(login(&args.server, args.tls, user, &args.password).await?);
                }
                let Some(n) = notifier.as_mut() else { continue };
                let (now_exists, bytes, woke_after) = idle_wake(&mut c, &mut tag, n, user).await?;
                sample = Some(woke_after);
                (vec![format!("* {now_exists} EXISTS")], bytes)
            }
            _ => command(&mut c, &mut tag, "NOOP", None).await?,
        };
        record(hists, op, sample.unwrap_or_else(|| started.elapsed()));
        *stats.ops.entry(op).or_default() += 1;
        stats.bytes += bytes;
        if let Some(n) = exists_in(&untagged) {
            exists = n;
        }
    }
    if let Some((mut n, mut t)) = notifier {
        let _ = command(&mut n, &mut t, "LOGOUT", None).await;
    }
    command(&mut c, &mut tag, "LOGOUT", None).await?;
    Ok(())
}

/// `seed`: APPENDs `messages` messages of `size` bytes to each user's INBOX, over IMAP
/// (so it works for any server; the users must exist).
/// `shardmail --data-dir DIR user add EMAIL` for each account that does not exist yet.
fn create_shardmail_users(
    data_dir: &std::path::Path,
    users: &[String],
    password: &str,
) -> Result<(), String> {
    use std::io::Write as _;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let shardmail = exe.with_file_name("shardmail");
    for user in users {
        let mut child = std::process::Command::new(&shardmail)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["user", "add", user, "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", shardmail.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{password}");
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !err.contains("already exists") {
            return Err(format!("shardmail user add {user}: {}", err.trim()));
        }
    }
    eprintln!("{} accounts ready in {}", users.len(), data_dir.display());
    Ok(())
}

pub fn seed(args: super::SeedArgs, shards: usize) -> Result<(), String> {
    if let Some(dir) = &args.create_shardmail_users {
        create_shardmail_users(dir, &args.user, &args.password)?;
    }
    let args = Arc::new(args);
    let total = args.messages * args.user.len() as u64;
    let (results, elapsed) = run_connections(
        shards,
        args.user.len(),
        total,
        "messages",
        Duration::from_secs(args.duration_secs),
        {
            let args = args.clone();
            move |u, shared| {
                let args = args.clone();
                async move {
                    let user = &args.user[u];
                    let run = async {
                        let (mut c, mut tag) =
                            login(&args.server, args.tls, user, &args.password).await?;
                        for i in 0..args.messages {
                            if shared.stopped() {
                                break;
                            }
                            let mut msg = format!(
                                "From: Seed Sender <seed{i}@loadtest.invalid>\r\nTo: {user}\r\n\
                                 Subject: seeded message {i}\r\nDate: Thu, 26 Nov 2026 06:45:00 +0000\r\n\
                                 Message-ID: <{i}.{u}@loadtest.invalid>\r\n\r\n"
                            )
                            .into_bytes();
                            while msg.len() < args.size {
                                msg.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\r\n");
                            }
                            command(
                                &mut c,
                                &mut tag,
                                &format!("APPEND INBOX {{{}}}", msg.len()),
                                Some(&msg),
                            )
                            .await?;
                            shared.finished_one();
                        }
                        command(&mut c, &mut tag, "LOGOUT", None).await.map(|_| ())
                    };
                    run.await.map_err(|e| format!("{user}: {e}"))
                }
            }
        },
    )?;
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    eprintln!(
        "seeded {} accounts in {elapsed:.1} s",
        args.user.len() - errors.len()
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
