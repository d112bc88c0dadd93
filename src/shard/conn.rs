//! A connection's byte stream (plain or TLS) and its bounded input buffer.
//!
//! The only place that reads and writes sockets. TLS is rustls driven by hand over
//! glommio's `TcpStream` (ciphertext in via `read_tls`, out via `write_tls`), so the
//! whole connection can be taken apart at a quiescent point — a duplicated fd plus the
//! rustls `ServerConnection`, both `Send` — and rebuilt on the shard that owns the
//! account's data ([`Stream::into_parts`] / [`Stream::from_parts`]). Shard-local, `!Send`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ServerConnection;

use crate::proto::Outbox;

/// Ciphertext read per socket read (a TLS record is at most 16 KiB + overhead).
const TLS_READ_BYTES: usize = 18 * 1024;
/// …and while the peer is not sending in bulk (the last read did not fill a buffer):
/// a command fits, and an idle connection holds no more.
const TLS_READ_BYTES_IDLE: usize = 512;

/// Plain or TLS, either possibly under IMAP COMPRESS (`Deflate`); `Moved` once taken
/// apart for a hand-off or during STARTTLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
    Deflate(Box<super::compress::Deflated>),
    Moved,
}

/// A TLS connection (server side, or client side for outbound delivery) over a glommio
/// socket.
pub struct TlsConn {
    tcp: TcpStream,
    tls: rustls::Connection,
    /// Ciphertext read from the socket; `cipher_in[cipher_pos..]` is not yet handed to
    /// rustls (it takes more only once the application drained its plaintext).
    cipher_in: Vec<u8>,
    cipher_pos: usize,
    /// Ciphertext staging for writes.
    cipher_out: Vec<u8>,
    /// The last read filled its buffer: the peer is sending in bulk.
    bulk: bool,
}

/// A connection taken apart for a move to another shard: everything here is `Send`.
pub struct StreamParts {
    /// A duplicate of the socket; the original was closed when the stream was dropped.
    pub fd: RawFd,
    pub tls: Option<Box<ServerConnection>>,
    /// Ciphertext read but not yet given to rustls.
    pub cipher_pending: Vec<u8>,
    /// COMPRESS=DEFLATE is on (IMAP).
    pub deflate: Option<Box<super::compress::DeflateState>>,
}

impl std::fmt::Debug for StreamParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamParts")
            .field("fd", &self.fd)
            .field("tls", &self.tls.is_some())
            .field("deflate", &self.deflate.is_some())
            .finish()
    }
}

impl Drop for StreamParts {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: `fd` is a descriptor this value owns (from `dup`) and nothing else
            // closes it: `Stream::from_parts` takes it by setting `fd` to -1 first.
            unsafe { libc::close(self.fd) };
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Plain",
            Stream::Tls(_) => "Tls",
            Stream::Deflate(_) => "Deflate",
            Stream::Moved => "Moved",
        })
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream was moved")
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// Sends whatever ciphertext rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.cipher_out.clear();
            self.tls.write_tls(&mut self.cipher_out)?;
            self.tcp.write_all(&self.cipher_out).await?;
        }
        Ok(())
    }

    /// Gives rustls more ciphertext — what is left from the last socket read, else one
    /// new read — and processes it; `Ok(false)` at end of stream. Only as much as
    /// rustls accepts: it refuses more while 16 KiB of decrypted plaintext wait to be
    /// read, so the rest stays in `cipher_in` for the next call (feeding it all at once
    /// failed bulk transfers with "received plaintext buffer full").
    async fn read_tls(&mut self) -> io::Result<bool> {
        if self.cipher_pos >= self.cipher_in.len() {
            // Cancellation-safe (IDLE drops a pending read when the mailbox changes):
            // while the read is in flight nothing is pending, so a dropped read leaves
            // no stale bytes behind.
            let mut buf = std::mem::take(&mut self.cipher_in);
            self.cipher_pos = 0;
            // Small reads while the peer is quiet (an idle connection holds 2 KiB, not
            // a whole record's worth); full records while it is sending in bulk.
            let want = if self.bulk {
                TLS_READ_BYTES
            } else {
                TLS_READ_BYTES_IDLE
            };
            if buf.capacity() > 2 * want {
                buf = Vec::new();
            }
            buf.resize(want, 0);
            let n = self.tcp.read(&mut buf).await?;
            buf.truncate(n);
            self.bulk = n == want;
            self.cipher_in = buf;
            if n == 0 {
                return Ok(false);
            }
        }
        let mut input = self.cipher_in.get(self.cipher_pos..).unwrap_or(&[]);
        let before = input.len();
        match self.tls.read_tls(&mut input) {
            Ok(_) => {}
            // Backpressure: plaintext is waiting; the caller reads it, then calls again.
            Err(e) if e.kind() == io::ErrorKind::Other => {}
            Err(e) => return Err(e),
        }
        let taken = before - input.len();
        if taken == 0 {
            // Callers come here only with no plaintext waiting: rustls refusing input
            // now would never change. Fail rather than spin.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input refused",
            ));
        }
        self.cipher_pos += taken;
        if let Err(e) = self.tls.process_new_packets() {
            let _ = self.flush_tls().await; // send the alert
            return Err(tls_error(e));
        }
        Ok(true)
    }

    async fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.flush_tls().await?;
            if self.tls.is_handshaking() && self.tls.wants_read() && !self.read_tls().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in handshake",
                ));
            }
        }
        self.flush_tls().await
    }

    /// Waits until plaintext (or the end of the stream) can be read, without a
    /// buffer of the caller's: an idle TLS connection holds only rustls's own.
    async fn readable(&mut self) -> io::Result<()> {
        loop {
            let state = self.tls.process_new_packets().map_err(tls_error)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(());
            }
            self.flush_tls().await?;
            if !self.read_tls().await? {
                return Ok(()); // end of stream: the read that follows says so
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0 = the peer sent close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.flush_tls().await?;
            if !self.read_tls().await? {
                return Ok(0);
            }
        }
    }

    /// rustls buffers at most its buffer limit (64 KiB) of plaintext: feed it in
    /// pieces, sending the records between them.
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.tls.writer().write(rest)?;
            rest = rest.get(n..).unwrap_or(&[]);
            self.flush_tls().await?;
        }
        self.flush_tls().await
    }
}

impl Stream {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            // Boxed: the deflate layer reads the stream it wraps (async recursion).
            Stream::Deflate(d) => Box::pin(d.read(buf)).await,
            Stream::Moved => Err(gone()),
        }
    }

    /// For TLS, waits until plaintext can be read (see [`InputBuffer::fill`]); a plain
    /// stream reads straight into the buffer, so there is nothing to wait for first.
    pub(super) async fn readable(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.readable().await,
            Stream::Deflate(d) => Box::pin(d.readable()).await,
            _ => Ok(()),
        }
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Stream::Tls(s) => s.write_all(buf).await,
            Stream::Deflate(d) => Box::pin(d.write_all(buf)).await,
            Stream::Moved => Err(gone()),
        }
    }

    /// Turns on COMPRESS=DEFLATE (after its OK went out uncompressed); `pending` is
    /// compressed input already read behind the command.
    pub fn compress(&mut self, pending: Vec<u8>, slot: super::admission::DeflateTicket) {
        let inner = std::mem::replace(self, Stream::Moved);
        let state = super::compress::DeflateState::new(pending, slot);
        *self = Stream::Deflate(Box::new(super::compress::Deflated::new(inner, state)));
    }

    /// Runs the server side of a TLS handshake on a plain stream (STARTTLS or an
    /// implicit-TLS port), bounded by `limit`.
    pub async fn upgrade(
        &mut self,
        config: &Arc<rustls::ServerConfig>,
        limit: Duration,
    ) -> io::Result<()> {
        self.start_tls(
            || ServerConnection::new(config.clone()).map(Into::into),
            limit,
        )
        .await
    }

    /// Runs the client side of a TLS handshake (STARTTLS to a remote server).
    pub async fn upgrade_client(
        &mut self,
        config: &Arc<rustls::ClientConfig>,
        server_name: rustls_pki_types::ServerName<'static>,
        limit: Duration,
    ) -> io::Result<()> {
        let connect = || rustls::ClientConnection::new(config.clone(), server_name).map(Into::into);
        self.start_tls(connect, limit).await
    }

    /// Wraps the plain stream in the TLS connection `make` builds and handshakes.
    async fn start_tls(
        &mut self,
        make: impl FnOnce() -> Result<rustls::Connection, rustls::Error>,
        limit: Duration,
    ) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Moved) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "already TLS"));
        };
        let tls = make().map_err(tls_error)?;
        let mut conn = Box::new(TlsConn {
            tcp,
            tls,
            cipher_in: Vec::new(),
            cipher_pos: 0,
            cipher_out: Vec::new(),
            bulk: false,
        });
        with_timeout(limit, conn.handshake()).await??;
        // The handshake's flights were the largest writes so far: do not keep them.
        conn.cipher_out = Vec::new();
        *self = Stream::Tls(conn);
        Ok(())
    }

    /// Our address on this connection (what the client connected to).
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Stream::Plain(s) => s.local_addr().ok().map(|a| a.ip()),
            Stream::Tls(c) => c.tcp.local_addr().ok().map(|a| a.ip()),
            Stream::Deflate(d) => d.inner.local_ip(),
            Stream::Moved => None,
        }
    }

    /// The client's port on this connection.
    pub fn peer_port(&self) -> Option<u16> {
        match self {
            Stream::Plain(s) => s.peer_addr().ok().map(|a| a.port()),
            Stream::Tls(c) => c.tcp.peer_addr().ok().map(|a| a.port()),
            Stream::Deflate(d) => d.inner.peer_port(),
            Stream::Moved => None,
        }
    }

    /// Negotiated TLS version and cipher suite, for trace headers and logs.
    pub fn tls_description(&self) -> Option<String> {
        if let Stream::Deflate(d) = self {
            return d.inner.tls_description();
        }
        let Stream::Tls(c) = self else { return None };
        let version = c
            .tls
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let suite = c
            .tls
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        Some(format!("{version} {suite}"))
    }

    /// Gives back buffer memory kept from a large write (between commands).
    pub fn trim(&mut self) {
        match self {
            Stream::Tls(c) if c.cipher_out.capacity() > REPLY_BYTES_KEPT => {
                c.cipher_out = Vec::new();
            }
            Stream::Deflate(d) => {
                d.trim(REPLY_BYTES_KEPT);
                d.inner.trim();
            }
            _ => {}
        }
    }

    /// SCRAM-PLUS channel binding data for this connection: the TLS exporter value
    /// (RFC 9266; label `EXPORTER-Channel-Binding`, no context, 32 bytes) and our
    /// certificate's hash (`server_end_point`, RFC 5929). Empty without TLS.
    pub fn channel_binding(
        &self,
        server_end_point: Option<Vec<u8>>,
    ) -> crate::proto::sasl::scram::ChannelBinding {
        let tls = match self {
            Stream::Deflate(d) => return d.inner.channel_binding(server_end_point),
            Stream::Tls(c) => &c.tls,
            _ => return crate::proto::sasl::scram::ChannelBinding::default(),
        };
        let mut exporter = vec![0u8; 32];
        let exported = tls
            .export_keying_material(&mut exporter, b"EXPORTER-Channel-Binding", None)
            .is_ok();
        crate::proto::sasl::scram::ChannelBinding {
            exporter: exported.then_some(exporter),
            server_end_point,
        }
    }

    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Deflate(d) => d.inner.is_tls(),
            s => matches!(s, Stream::Tls(_)),
        }
    }

    /// Takes the connection apart for a move to another shard. Call only at a
    /// quiescent point: no read or write in flight (rustls keeps any buffered bytes).
    pub fn into_parts(self) -> io::Result<StreamParts> {
        if let Stream::Deflate(d) = self {
            let (inner, state) = (*d).into_parts();
            let mut parts = inner.into_parts()?;
            parts.deflate = Some(Box::new(state));
            return Ok(parts);
        }
        let fd = match &self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(c) => c.tcp.as_raw_fd(),
            Stream::Deflate(_) | Stream::Moved => return Err(gone()),
        };
        // SAFETY: `fd` is the open socket of `self`; dup returns a new descriptor that
        // stays valid after `self` (and with it the original descriptor) is dropped.
        let dup = unsafe { libc::dup(fd) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        let (tls, cipher_pending) = match self {
            Stream::Tls(c) => match c.tls {
                rustls::Connection::Server(server) => (
                    Some(Box::new(server)),
                    c.cipher_in.get(c.cipher_pos..).unwrap_or(&[]).to_vec(),
                ),
                rustls::Connection::Client(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "client connections do not move",
                    ))
                }
            },
            _ => (None, Vec::new()),
        };
        Ok(StreamParts {
            fd: dup,
            tls,
            cipher_pending,
            deflate: None,
        })
    }

    /// Rebuilds a stream from [`StreamParts`] on the current shard.
    pub fn from_parts(mut parts: StreamParts) -> Stream {
        let fd = std::mem::replace(&mut parts.fd, -1);
        // SAFETY: `fd` is an open socket descriptor owned by `parts` (from `dup` in
        // `into_parts`), and ownership passes to the new `TcpStream` here (`parts` no
        // longer closes it).
        let tcp = unsafe { TcpStream::from_raw_fd(fd) };
        let stream = match parts.tls.take() {
            Some(tls) => Stream::Tls(Box::new(TlsConn {
                tcp,
                tls: rustls::Connection::Server(*tls),
                cipher_in: std::mem::take(&mut parts.cipher_pending),
                cipher_pos: 0,
                cipher_out: Vec::new(),
                bulk: false,
            })),
            None => Stream::Plain(tcp),
        };
        match parts.deflate.take() {
            Some(state) => {
                Stream::Deflate(Box::new(super::compress::Deflated::new(stream, *state)))
            }
            None => stream,
        }
    }

    pub async fn close(&mut self) {
        match self {
            Stream::Plain(s) => {
                let _ = s.close().await;
            }
            Stream::Tls(c) => {
                c.tls.send_close_notify();
                let _ = c.flush_tls().await;
                let _ = c.tcp.close().await;
            }
            Stream::Deflate(d) => Box::pin(d.inner.close()).await,
            Stream::Moved => {}
        }
    }
}

/// `Err(TimedOut)` if `fut` does not finish within `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> io::Result<T> {
    futures_lite::future::or(async { Ok(fut.await) }, async {
        glommio::timer::Timer::new(limit).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// How waiting for more input ended.
#[derive(Debug)]
pub enum ReadOutcome {
    Data,
    /// The peer closed the connection (or it broke).
    Closed,
    /// `limits.idle_timeout_secs` passed without input.
    TimedOut,
    /// The server is shutting down (only while `idle`).
    Shutdown,
}

/// Writes and clears `reply` if it holds anything.
pub async fn flush(stream: &mut Stream, reply: &mut Vec<u8>) -> io::Result<()> {
    if reply.is_empty() {
        return Ok(());
    }
    let result = stream.write_all(reply).await;
    reply.clear();
    if reply.capacity() > REPLY_BYTES_KEPT {
        // After a large reply, an idle connection gives the memory back.
        *reply = Vec::new();
        stream.trim();
    }
    result
}

/// Reply buffer capacity kept between commands.
const REPLY_BYTES_KEPT: usize = 16 * 1024;

/// Waits for more input with the idle timeout; between commands (`idle`) a shutdown
/// interrupts the wait too.
pub async fn read_more(
    stream: &mut Stream,
    input: &mut InputBuffer,
    shutdown: &super::shutdown::Shutdown,
    idle_timeout: Duration,
    idle: bool,
) -> ReadOutcome {
    let read = async {
        if idle {
            futures_lite::future::or(input.fill(stream), async {
                shutdown.wait().await;
                Err(io::Error::new(io::ErrorKind::Interrupted, "shutdown"))
            })
            .await
        } else {
            input.fill(stream).await
        }
    };
    match with_timeout(idle_timeout, read).await {
        Ok(Ok(0)) => ReadOutcome::Closed,
        Ok(Ok(_)) => ReadOutcome::Data,
        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => ReadOutcome::Shutdown,
        Ok(Err(_)) => ReadOutcome::Closed,
        Err(_) => ReadOutcome::TimedOut,
    }
}

/// What a session is doing, for its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading commands: a command line, once begun, must be complete within
    /// `limits.command_timeout_secs`.
    Commands,
    /// Receiving a message body (SMTP DATA/BDAT, an IMAP literal): it must average
    /// `limits.min_data_rate` after `limits.min_data_rate_grace_secs`.
    Transfer,
}

/// Which deadline ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No input for the idle timeout (the RFC timeouts).
    Idle,
    /// Not logged in within `limits.preauth_timeout_secs` (IMAP, POP3).
    Preauth,
    /// A command line took longer than `limits.command_timeout_secs`.
    Command,
    /// A body arrived slower than `limits.min_data_rate`.
    DataRate,
}

/// A connection's deadlines (DESIGN.md §10: every wait has one). The idle timer alone
/// restarts on every byte, so a client trickling a byte at a time would never be
/// timed out by it; these bound the whole command, the whole body's rate and the time
/// to log in.
#[derive(Debug)]
pub struct Deadlines {
    connected: Instant,
    /// `None` where there is no login to wait for (SMTP).
    preauth: Option<Duration>,
    idle: Duration,
    command: Duration,
    rate: u64,
    grace: Duration,
    command_started: Option<Instant>,
    /// When the current body began, and its bytes so far.
    transfer: Option<(Instant, u64)>,
}

impl Deadlines {
    /// `idle`: the protocol's idle timeout; `preauth`: whether logging in is bounded.
    pub fn new(limits: &crate::config::Limits, idle: Duration, preauth: bool) -> Deadlines {
        Deadlines {
            connected: Instant::now(),
            preauth: preauth.then_some(limits.preauth_timeout),
            idle,
            command: limits.command_timeout,
            rate: limits.min_data_rate,
            grace: limits.min_data_rate_grace,
            command_started: None,
            transfer: None,
        }
    }

    /// The session consumed `used` bytes and `rest_empty` says whether input remains:
    /// a command completed, so the next one's clock starts now (if it has begun).
    pub fn consumed(&mut self, used: usize, rest_empty: bool) {
        if used > 0 || rest_empty {
            self.command_started = (!rest_empty).then(Instant::now);
        }
    }

    fn observe(&mut self, phase: Phase, input_empty: bool, now: Instant) {
        match phase {
            Phase::Transfer => {
                self.command_started = None;
                if self.transfer.is_none() {
                    self.transfer = Some((now, 0));
                }
            }
            Phase::Commands => {
                self.transfer = None;
                if input_empty {
                    self.command_started = None;
                } else if self.command_started.is_none() {
                    self.command_started = Some(now);
                }
            }
        }
    }

    fn received(&mut self, n: usize) {
        if let Some((_, bytes)) = self.transfer.as_mut() {
            *bytes += n as u64;
        }
    }

    /// The earliest deadline and which it is.
    fn next(&self, now: Instant, logged_in: bool) -> (Instant, Expiry) {
        let mut best = (now + self.idle, Expiry::Idle);
        let mut consider = |at: Instant, which: Expiry| {
            if at < best.0 {
                best = (at, which);
            }
        };
        if let (Some(limit), false) = (self.preauth, logged_in) {
            consider(self.connected + limit, Expiry::Preauth);
        }
        if let Some(started) = self.command_started {
            consider(started + self.command, Expiry::Command);
        }
        if let (Some((started, bytes)), true) = (self.transfer, self.rate > 0) {
            // Postfix's smtpd_min_data_rate, as a credit: the grace period plus one
            // second per `rate` bytes received.
            let earned = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            consider(started + self.grace + earned, Expiry::DataRate);
        }
        best
    }
}

/// What the IO layer needs from any session to stop or time it out.
pub trait Interruptible {
    type Action;
    /// Between commands (a safe point to stop).
    fn is_idle(&self) -> bool;
    /// Reading commands, or receiving a body (which deadline applies).
    fn phase(&self) -> Phase {
        Phase::Commands
    }
    /// Logged in (the pre-login deadline no longer applies).
    fn logged_in(&self) -> bool {
        true
    }
    /// Writes the protocol's "shutting down" reply and closes.
    fn shutdown(&mut self, out: &mut Outbox<Self::Action>);
    /// Writes the protocol's idle-timeout reply and closes.
    fn timed_out(&mut self, out: &mut Outbox<Self::Action>);
}

/// Once a session has consumed what it could: flushes its replies, then waits for
/// input (or turns a shutdown/timeout into the session's reply). `false` means the
/// connection is finished.
pub async fn await_input<S: Interruptible>(
    stream: &mut Stream,
    input: &mut InputBuffer,
    session: &mut S,
    out: &mut Outbox<S::Action>,
    shard: &super::Shard,
    deadlines: &mut Deadlines,
) -> bool {
    if flush(stream, &mut out.reply).await.is_err() || input.is_full() {
        // A full buffer cannot happen with capacity > line_bytes_max; fail safe.
        return false;
    }
    input.shrink();
    let shutdown = &shard.shutdown;
    let idle = session.is_idle() && input.is_empty();
    if idle && shutdown.is_fired() {
        session.shutdown(out);
        return true;
    }
    let now = Instant::now();
    deadlines.observe(session.phase(), input.is_empty(), now);
    let (at, which) = deadlines.next(now, session.logged_in());
    let before = input.len;
    let outcome = if at <= now {
        ReadOutcome::TimedOut
    } else {
        read_more(stream, input, shutdown, at - now, idle).await
    };
    match outcome {
        ReadOutcome::Data => deadlines.received(input.len.saturating_sub(before)),
        // Peer gone: an unfinished SMTP message or unQUIT POP3 deletions are dropped.
        ReadOutcome::Closed => return false,
        ReadOutcome::Shutdown => session.shutdown(out),
        ReadOutcome::TimedOut => {
            if which != Expiry::Idle {
                crate::metrics::add(&shard.metrics.deadline_disconnects, 1);
                tracing::debug!(?which, "deadline passed; closing the connection");
            }
            session.timed_out(out)
        }
    }
    true
}

/// STARTTLS/STLS after the session said yes: sends the reply, drops anything the client
/// pipelined behind the command in clear (CVE-2011-0411, command injection), and runs
/// the handshake within `limits.idle_timeout`. `false` when the connection is lost.
pub async fn start_tls(
    shard: &super::Shard,
    stream: &mut Stream,
    input: &mut InputBuffer,
    reply: &mut Vec<u8>,
) -> bool {
    if flush(stream, reply).await.is_err() {
        return false;
    }
    input.clear();
    if let Err(e) = handshake(shard, stream).await {
        tracing::debug!(error = %e, "STARTTLS handshake failed");
        return false;
    }
    true
}

/// The server side of a TLS handshake with the certificate in force, within
/// `limits.idle_timeout`, counted in `shardmail_tls_handshakes_total`.
pub async fn handshake(shard: &super::Shard, stream: &mut Stream) -> std::io::Result<()> {
    let result = stream
        .upgrade(&shard.tls(), shard.config().limits.idle_timeout)
        .await;
    crate::metrics::bump_one(&shard.metrics.tls_handshakes, usize::from(result.is_err()));
    result
}

/// A freshly accepted connection of a mailbox protocol: TCP_NODELAY on, and for an
/// implicit-TLS port (`implicit_tls`) the handshake done within `limits.idle_timeout`.
/// `None` when the peer is already gone or the handshake failed (logged at debug).
pub async fn accepted(
    shard: &super::Shard,
    tcp: TcpStream,
    implicit_tls: bool,
) -> Option<(Stream, std::net::SocketAddr)> {
    let peer = tcp.peer_addr().ok()?;
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if implicit_tls {
        if let Err(e) = handshake(shard, &mut stream).await {
            tracing::debug!(%peer, error = %e, "implicit TLS handshake failed");
            return None;
        }
    }
    Some((stream, peer))
}

/// Bytes an input buffer starts with, and shrinks back to between commands: an idle
/// connection holds this much, not its largest command (DESIGN.md §10).
const INPUT_BYTES_INITIAL: usize = 512;

/// A bounded input buffer: protocol code sees `data()`, consumes a prefix. It grows
/// (doubling) while a read fills it, never beyond its maximum, and shrinks back once
/// it is empty.
#[derive(Debug)]
pub struct InputBuffer {
    bytes: Vec<u8>,
    len: usize,
    max: usize,
}

impl InputBuffer {
    /// A buffer that may grow to `max` bytes.
    pub fn new(max: usize) -> InputBuffer {
        InputBuffer {
            bytes: Vec::new(),
            len: 0,
            max: max.max(INPUT_BYTES_INITIAL),
        }
    }

    /// A buffer that starts with `pending` (input carried over a hand-off).
    pub fn with_pending(max: usize, pending: &[u8]) -> InputBuffer {
        let mut b = InputBuffer::new(max.max(pending.len()));
        b.bytes = pending.to_vec();
        b.len = pending.len();
        b
    }

    pub fn data(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds its maximum: nothing more can be read until some is consumed.
    pub fn is_full(&self) -> bool {
        self.len >= self.max
    }

    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.bytes.copy_within(n..self.len, 0);
        self.len -= n;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes allocated now.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Raises the maximum to `max` (an IMAP command's literal must fit whole; the
    /// caller bounds it by the literal limit).
    pub fn grow(&mut self, max: usize) {
        self.max = self.max.max(max);
    }

    /// Gives memory back once empty: after a large command or body, an idle
    /// connection keeps only `INPUT_BYTES_INITIAL`.
    pub fn shrink(&mut self) {
        if self.len == 0 && self.bytes.len() > INPUT_BYTES_INITIAL {
            self.bytes = Vec::new();
        }
    }

    /// Reads once from `stream` into the free space; `Ok(0)` is end of stream.
    pub async fn fill(&mut self, stream: &mut Stream) -> io::Result<usize> {
        if self.bytes.is_empty() {
            // Allocate only once input is there (TLS): an idle connection waits with
            // no input buffer at all.
            stream.readable().await?;
        }
        if self.len == self.bytes.len() {
            if self.len >= self.max {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "input buffer full",
                ));
            }
            let next = (self.bytes.len() * 2).clamp(INPUT_BYTES_INITIAL, self.max);
            self.bytes.resize(next, 0);
        }
        let free = self.bytes.get_mut(self.len..).unwrap_or(&mut []);
        let n = stream.read(free).await?;
        self.len += n;
        Ok(n)
    }
}
