//! Client shards and line-oriented async IO for the load tester.
//!
//! [`run_on_shards`] starts one glommio executor per client shard (`--shards`) and
//! spreads the connections over them; each connection is a task, so thousands of
//! connections cost no threads and no context switches between them. [`Client`] reads
//! lines and exact byte counts from a buffered glommio TCP stream — plain, implicit TLS
//! or upgraded by STARTTLS, through the server's own connection type — and writes to it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpStream;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use shardmail::shard::conn::Stream;

/// io_uring registered memory per client shard (glommio needs RLIMIT_MEMLOCK for it).
const IO_MEMORY: usize = 512 * 1024;
const SPIN_US: u64 = 50;

/// Runs `task(connection)` for every connection in `0..connections`, spread over
/// `shards` glommio executors, and waits for all of them.
pub fn run_on_shards<F, Fut>(shards: usize, connections: usize, task: F) -> Result<(), String>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let shards = shards.clamp(1, connections.max(1));
    let next_shard = Arc::new(AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(shards))
        .name("load")
        .io_memory(IO_MEMORY)
        .spin_before_park(Duration::from_micros(SPIN_US))
        .on_all_shards(move || {
            let (task, next_shard) = (task.clone(), next_shard.clone());
            async move {
                let me = next_shard.fetch_add(1, Ordering::Relaxed);
                let tasks: Vec<_> = (me..connections)
                    .step_by(shards)
                    .map(|c| glommio::spawn_local(task(c)))
                    .collect();
                for t in tasks {
                    t.await;
                }
            }
        })
        .map_err(|e| {
            format!("cannot start client shards: {e} (glommio needs RLIMIT_MEMLOCK >= 512 KiB per shard: ulimit -l)")
        })?;
    handles.join_all().into_iter().try_for_each(|r| {
        r.map(|_| ())
            .map_err(|e| format!("client shard failed: {e}"))
    })
}

/// A connection (plain or TLS) with buffered reads.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// How a scenario's connections use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tls {
    /// Plain text throughout.
    None,
    /// TLS from the first byte (SMTPS/IMAPS/POP3S ports).
    Implicit,
    /// The protocol's STARTTLS/STLS after the greeting.
    Starttls,
}

/// How long a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

impl Client {
    pub async fn connect(server: &str, tls: Tls) -> Result<Client, String> {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|e| format!("connect: {}", kind(&std::io::Error::from(e))))?;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
        let mut c = Client {
            stream: Stream::Plain(tcp),
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
        };
        if tls == Tls::Implicit {
            c.start_tls().await?;
        }
        Ok(c)
    }

    /// Runs the client side of a TLS handshake (implicit, or after STARTTLS's reply).
    /// The server's certificate is not verified: this is a load tool for test servers.
    pub async fn start_tls(&mut self) -> Result<(), String> {
        if self.start != self.end {
            return Err("server sent data before the TLS handshake".into());
        }
        let name = rustls_pki_types::ServerName::try_from("localhost")
            .map_err(|e| e.to_string())?
            .to_owned();
        self.stream
            .upgrade_client(&client_tls(), name, HANDSHAKE_LIMIT)
            .await
            .map_err(|e| format!("tls: {}", kind(&e)))
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {}", kind(&e)))
    }

    async fn fill(&mut self) -> Result<(), String> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = self.buf.len() * 2;
            self.buf.resize(grown, 0);
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| format!("read: {}", kind(&e)))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.end += n;
        Ok(())
    }

    /// Reads one line (LF included) into `line`, replacing its contents.
    pub async fn read_line(&mut self, line: &mut Vec<u8>) -> Result<(), String> {
        line.clear();
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                line.extend_from_slice(&self.buf[self.start..self.start + i + 1]);
                self.start += i + 1;
                return Ok(());
            }
            if self.end - self.start > 1 << 20 {
                return Err("line longer than 1 MiB".into());
            }
            self.fill().await?;
        }
    }

    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), String> {
        let mut done = 0;
        while done < out.len() {
            if self.start == self.end {
                self.fill().await?;
            }
            let n = (self.end - self.start).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        Ok(())
    }
}

thread_local! {
    static CLIENT_TLS: Arc<rustls::ClientConfig> = shardmail::tls::client_config_unverified();
}

fn client_tls() -> Arc<rustls::ClientConfig> {
    CLIENT_TLS.with(Arc::clone)
}

/// Error kinds without addresses or numbers, so errors group by kind in the report.
fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

/// What the connections of one run share: the next unit of work to claim, how many
/// finished (for progress), and the stop flag the deadline sets.
#[derive(Clone)]
pub struct Shared {
    next: Arc<std::sync::atomic::AtomicU64>,
    done: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    total: u64,
}

impl Shared {
    /// Claims the next unit of work (a message, a session); `None` when all are
    /// claimed or the run must stop.
    pub fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.total).then_some(n)
    }

    pub fn finished_one(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Runs `work(connection, shared)` for each connection on the client shards, with a
/// progress line on stderr once a second (`total` units of `what`) and a hard stop at
/// `duration`; returns each connection's result and the elapsed seconds.
pub fn run_connections<R, W, Fut>(
    shards: usize,
    connections: usize,
    total: u64,
    what: &'static str,
    duration: Duration,
    work: W,
) -> Result<(Vec<R>, f64), String>
where
    R: Send + 'static,
    W: Fn(usize, Shared) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = R> + 'static,
{
    let shared = Shared {
        next: Arc::default(),
        done: Arc::default(),
        stop: Arc::default(),
        total,
    };
    let results: Arc<std::sync::Mutex<Vec<R>>> = Arc::default();
    let started = std::time::Instant::now();
    let deadline = started + duration;
    let progress = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut last = (std::time::Instant::now(), 0);
            while !shared.stopped() {
                std::thread::sleep(Duration::from_millis(100));
                if last.0.elapsed() >= Duration::from_secs(1) {
                    let n = shared.done.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    eprintln!("  {n}/{total} {what}, {rate:.0}/s");
                    last = (std::time::Instant::now(), n);
                }
                if std::time::Instant::now() > deadline {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let outcome = run_on_shards(shards, connections, {
        let (shared, results) = (shared.clone(), results.clone());
        move |c| {
            let (work, shared, results) = (work.clone(), shared.clone(), results.clone());
            async move {
                let r = work(c, shared).await;
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            }
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = progress.join();
    outcome?;
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((results, elapsed))
}
