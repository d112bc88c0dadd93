//! `shardmail-load abuse …`: what hostile clients cost the server and its bystanders.
//!
//! * `stall`: an attacker runs one heavy IMAP command over and over (a pathological
//!   LIST pattern, LIST of every mailbox, SEARCH TEXT, FETCH 1:*) while a bystander
//!   session of the same account — so the same shard — sends NOOPs, and probes open
//!   SMTP connections for their greeting; both are measured first without the attack,
//!   in the same run, and reported with the ratio (issue 11's target: under 10×).
//! * `idle`: opens N connections that only read the greeting; reports the server's
//!   resident memory per connection (from `/proc/PID/status`).
//! * `uploads`: N connections each send M MiB of a DATA body or APPEND literal that
//!   never ends; reports the server's resident memory growth.
//!
//! Plain blocking sockets on client threads (these measure the server, not the
//! client); IMAP over implicit TLS with an unverified certificate, as a test client.
//! Every loop is bounded in count and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[derive(clap::Args, Clone)]
pub struct AbuseArgs {
    #[command(subcommand)]
    pub what: AbuseKind,
}

#[derive(clap::Subcommand, Clone)]
pub enum AbuseKind {
    /// Bystander latency during a heavy command (see the module doc).
    Stall(StallArgs),
    /// Server memory per idle connection.
    Idle(IdleArgs),
    /// Server memory under unfinished large uploads.
    Uploads(UploadArgs),
    /// Set the stage: create many mailboxes (pipelined) and a 255-byte-named one.
    Mailboxes(MailboxArgs),
}

#[derive(clap::Args, Clone)]
pub struct MailboxArgs {
    #[command(flatten)]
    pub login: Login,
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
}

/// An IMAPS server and an account on it.
#[derive(clap::Args, Clone)]
pub struct Login {
    /// IMAPS address (implicit TLS).
    #[arg(long)]
    pub imaps: SocketAddr,
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub password: String,
}

impl Login {
    fn session(&self) -> Result<Line, String> {
        Line::imap(self.imaps, &self.user, &self.password)
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// LIST "" "*a*a…*b" (17 wildcards; needs a long mailbox name to exist).
    ListPattern,
    /// LIST "" "*" (over however many mailboxes the account has).
    ListAll,
    /// SEARCH TEXT needle over INBOX.
    Search,
    /// FETCH 1:* (BODY.PEEK[HEADER]) over INBOX.
    Fetch,
}

#[derive(clap::Args, Clone)]
pub struct StallArgs {
    #[command(flatten)]
    pub login: Login,
    /// SMTP address probed for its greeting.
    #[arg(long)]
    pub smtp: Option<SocketAddr>,
    #[arg(long, value_enum)]
    pub attack: Attack,
    /// Attacking sessions.
    #[arg(long, default_value_t = 1)]
    pub attackers: usize,
    /// Probes before and during the attack.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
}

#[derive(clap::Args, Clone)]
pub struct IdleArgs {
    #[arg(long)]
    pub server: SocketAddr,
    /// The server's process id (its memory is read from /proc).
    #[arg(long)]
    pub pid: u32,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Implicit TLS (the handshake is done, then the connection idles).
    #[arg(long)]
    pub tls: bool,
}

#[derive(clap::Args, Clone)]
pub struct UploadArgs {
    /// SMTP address (DATA uploads).
    #[arg(long)]
    pub smtp: SocketAddr,
    /// The account APPEND uploads log in to (and DATA uploads are addressed to).
    #[command(flatten)]
    pub login: Login,
    #[arg(long)]
    pub pid: u32,
    /// Connections in all (half DATA, half APPEND).
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// MiB each sends (the upload is never finished).
    #[arg(long, default_value_t = 45)]
    pub megabytes: usize,
}

pub fn run(args: AbuseArgs) -> Result<(), String> {
    match args.what {
        AbuseKind::Stall(a) => stall(a),
        AbuseKind::Idle(a) => idle(a),
        AbuseKind::Uploads(a) => uploads(a),
        AbuseKind::Mailboxes(a) => mailboxes(a),
    }
}

fn mailboxes(a: MailboxArgs) -> Result<(), String> {
    let mut l = a.login.session()?;
    l.command(&format!("CREATE \"{}c\"", "a".repeat(254)))?;
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..a.count {
        batch.extend_from_slice(format!("m{i} CREATE many/{i:05}\r\n").as_bytes());
    }
    l.send(&batch)?;
    let last = format!("m{} ", a.count.saturating_sub(1));
    loop {
        let line = l.line()?;
        if line.starts_with(&last) {
            break;
        }
    }
    println!(
        "created {} mailboxes and one with a 255-byte name in {:.1} s",
        a.count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A line-oriented connection, plain or TLS.
trait Wire: Read + Write + Send {}
impl<T: Read + Write + Send> Wire for T {}

struct Line {
    r: BufReader<Box<dyn Wire>>,
    tag: u64,
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn tls(addr: SocketAddr) -> Result<Box<dyn Wire>, String> {
    let tcp = connect(addr)?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(shardmail::tls::client_config_unverified(), name)
        .map_err(|e| e.to_string())?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

impl Line {
    fn imap(addr: SocketAddr, user: &str, password: &str) -> Result<Line, String> {
        let mut l = Line {
            r: BufReader::with_capacity(1 << 16, tls(addr)?),
            tag: 0,
        };
        l.line()?;
        l.command(&format!("LOGIN \"{user}\" \"{password}\""))?;
        Ok(l)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut buf = Vec::new();
        self.r
            .read_until(b'\n', &mut buf)
            .map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return Err("connection closed".into());
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let w = self.r.get_mut();
        w.write_all(bytes)
            .and_then(|()| w.flush())
            .map_err(|e| e.to_string())
    }

    /// Sends a tagged command; reads to its tagged reply (literals skipped). Returns
    /// the untagged lines seen.
    fn command(&mut self, text: &str) -> Result<usize, String> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.send(format!("{tag} {text}\r\n").as_bytes())?;
        let mut untagged = 0;
        loop {
            let line = self.line()?;
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                if !rest.starts_with("OK") {
                    return Err(format!("{text}: {}", line.trim_end()));
                }
                return Ok(untagged);
            }
            untagged += 1;
            if let Some(n) = literal_len(&line) {
                let mut skip = vec![0; n];
                self.r.read_exact(&mut skip).map_err(|e| e.to_string())?;
            }
        }
    }
}

fn literal_len(line: &str) -> Option<usize> {
    let t = line.trim_end().strip_suffix('}')?;
    t.rsplit_once('{')?.1.parse().ok()
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// NOOP round trips on `probe`, and SMTP greetings, `count` each.
fn measure(
    probe: &mut Line,
    smtp: Option<SocketAddr>,
    count: usize,
) -> Result<(Histogram<u64>, Histogram<u64>), String> {
    let (mut noop, mut greet) = (histogram()?, histogram()?);
    for _ in 0..count {
        let t = Instant::now();
        probe.command("NOOP")?;
        let _ = noop.record(t.elapsed().as_micros().max(1) as u64);
        if let Some(addr) = smtp {
            let t = Instant::now();
            let s = connect(addr)?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if !line.starts_with("220") {
                return Err(format!("greeting: {line}"));
            }
            let _ = greet.record(t.elapsed().as_micros().max(1) as u64);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((noop, greet))
}

fn stall(a: StallArgs) -> Result<(), String> {
    let command = match a.attack {
        Attack::ListPattern => format!("LIST \"\" \"{}*b\"", "*a".repeat(16)),
        Attack::ListAll => "LIST \"\" \"*\"".into(),
        Attack::Search => "SEARCH TEXT needle".into(),
        Attack::Fetch => "FETCH 1:* (BODY.PEEK[HEADER])".into(),
    };
    let mut probe = a.login.session()?;
    probe.command("SELECT Sent")?;
    let (noop0, greet0) = measure(&mut probe, a.smtp, a.probes)?;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for _ in 0..a.attackers.max(1) {
        let mut l = a.login.session()?;
        l.command("EXAMINE INBOX")?;
        let (stop, rounds, command) = (stop.clone(), rounds.clone(), command.clone());
        attackers.push(std::thread::spawn(move || -> Result<Duration, String> {
            let (deadline, mut slowest) =
                (Instant::now() + Duration::from_secs(600), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = Instant::now();
                l.command(&command)?;
                slowest = slowest.max(t.elapsed());
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            Ok(slowest)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let measured = measure(&mut probe, a.smtp, a.probes);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    for t in attackers {
        slowest = slowest.max(t.join().map_err(|_| "attacker panicked".to_string())??);
    }
    let (noop1, greet1) = measured?;
    let n = rounds.load(Ordering::Relaxed);
    println!("attack {:?}: {command}", a.attack);
    println!(
        "  {} rounds in {:.1} s ({:.1} ms each on average, slowest {:.1} ms) by {} session(s)",
        n,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / n.max(1) as f64,
        slowest.as_secs_f64() * 1000.0,
        a.attackers
    );
    let ratio = |a: &Histogram<u64>, b: &Histogram<u64>| {
        b.value_at_quantile(0.5) as f64 / a.value_at_quantile(0.5).max(1) as f64
    };
    println!("  bystander NOOP, unloaded: {}", percentiles(&noop0));
    println!(
        "  bystander NOOP, attacked: {}  (p50 ratio {:.1}x)",
        percentiles(&noop1),
        ratio(&noop0, &noop1)
    );
    if a.smtp.is_some() {
        println!("  SMTP greeting, unloaded: {}", percentiles(&greet0));
        println!(
            "  SMTP greeting, attacked: {}  (p50 ratio {:.1}x)",
            percentiles(&greet1),
            ratio(&greet0, &greet1)
        );
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e} (is --pid the server's?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

fn idle(a: IdleArgs) -> Result<(), String> {
    let before = rss_kib(a.pid)?;
    let mut socks: Vec<Box<dyn Wire>> = Vec::with_capacity(a.connections);
    let started = Instant::now();
    for i in 0..a.connections {
        socks.push(if a.tls {
            tls(a.server)?
        } else {
            Box::new(connect(a.server)?)
        });
        if i % 1000 == 999 {
            eprintln!("  {} connections open", i + 1);
        }
    }
    let mut greeted = 0;
    for s in &mut socks {
        let mut b = [0u8; 1];
        if s.read(&mut b).map_err(|e| e.to_string())? == 1 {
            greeted += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(a.pid)?;
    println!(
        "{} idle {}connections to {} ({} greeted) in {:.1} s: server RSS {} -> {} KiB, {:.1} KiB per connection",
        a.connections,
        if a.tls { "TLS " } else { "" },
        a.server,
        greeted,
        started.elapsed().as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / a.connections.max(1) as f64
    );
    Ok(())
}

fn uploads(a: UploadArgs) -> Result<(), String> {
    // Logins first (argon2id keeps 19 MiB per verifying thread), then the baseline.
    let half = a.connections / 2;
    let mut appends = Vec::new();
    for _ in 0..a.connections - half {
        let mut l = a.login.session()?;
        l.tag += 1;
        let size = a.megabytes << 20;
        l.send(format!("u APPEND INBOX {{{}}}\r\n", size + 2).as_bytes())?;
        let line = l.line()?;
        if !line.starts_with('+') {
            return Err(format!("APPEND refused: {line}"));
        }
        appends.push(l);
    }
    let mut datas = Vec::new();
    for _ in 0..half {
        let s = connect(a.smtp)?;
        let mut l = Line {
            r: BufReader::new(Box::new(s)),
            tag: 0,
        };
        l.line()?;
        l.send(
            format!(
                "EHLO load.test\r\nMAIL FROM:<load@load.test>\r\nRCPT TO:<{}>\r\nDATA\r\n",
                a.login.user
            )
            .as_bytes(),
        )?;
        for _ in 0..8 {
            let line = l.line()?;
            if line.starts_with("354") {
                break;
            }
        }
        datas.push(l);
    }
    let before = rss_kib(a.pid)?;
    let chunk: Vec<u8> = (b"x".repeat(1022).into_iter().chain(*b"\r\n"))
        .collect::<Vec<u8>>()
        .repeat(1024);
    let started = Instant::now();
    for mb in 0..a.megabytes {
        for l in appends.iter_mut().chain(datas.iter_mut()) {
            l.send(&chunk)?;
        }
        if mb % 10 == 9 {
            eprintln!(
                "  {} MiB sent on each of {} connections",
                mb + 1,
                a.connections
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(a.pid)?;
    println!(
        "{} unfinished uploads ({} DATA, {} APPEND) of {} MiB each ({:.1} GiB in {:.1} s): server RSS {} -> {} KiB (+{:.1} MiB)",
        a.connections,
        half,
        a.connections - half,
        a.megabytes,
        (a.connections * a.megabytes) as f64 / 1024.0,
        started.elapsed().as_secs_f64(),
        before,
        after,
        after.saturating_sub(before) as f64 / 1024.0
    );
    Ok(())
}
