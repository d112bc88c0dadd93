//! Outbound connections: opening one (TCP, then the sans-IO client session through
//! greeting, EHLO, STARTTLS and AUTH), driving its session over the socket, and
//! keeping idle ones for reuse within the per-shard and per-destination limits.
//! The SMTP dialogue itself lives in `proto::smtp::client`; this module only moves
//! bytes, enforces timeouts, and does the TLS handshake the session asks for.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::super::conn::{with_timeout, InputBuffer, Stream};
use super::super::Shard;
use crate::config::Relay;
use crate::proto::smtp::client::{
    ClientAction, ClientConfig, ClientSession, Envelope, SessionError, TlsPolicy,
};
use crate::proto::Outbox;

/// RFC 5321 §4.5.3.2 timeouts, simplified: connecting, and waiting for any reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an idle connection is kept for the next message to the same host.
pub(super) const IDLE_REUSE: Duration = Duration::from_secs(30);
/// How long a QUIT may wait for its reply before the connection is just closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on what one server reply may hold in memory (REPLY_LINES_MAX lines fit
/// only when short; a longer reply fails as a bad reply).
const REPLY_BUFFER_MAX: usize = 64 * 1024;

/// Why a connection could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnError {
    Connect(String),
    /// `queue.connections_max` or `queue.connections_per_destination_max` held for
    /// the whole connect timeout.
    LimitReached,
    /// The TLS handshake after STARTTLS failed.
    Tls(String),
    Io(String),
    /// No reply within the reply timeout.
    Timeout,
    /// The SMTP session ended: a refusal, a 421, a bad reply, an early close.
    Session(SessionError),
    /// The session asked for something out of order (a bug, not the peer).
    Unexpected(&'static str),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Connect(e) => write!(f, "connect: {e}"),
            ConnError::LimitReached => f.write_str("connection limit reached"),
            ConnError::Tls(e) => write!(f, "TLS: {e}"),
            ConnError::Io(e) => f.write_str(e),
            ConnError::Timeout => f.write_str("timed out waiting for a reply"),
            ConnError::Session(e) => e.fmt(f),
            ConnError::Unexpected(what) => write!(f, "client session out of order: {what}"),
        }
    }
}

/// One open client connection.
pub(super) struct ClientConn {
    stream: Stream,
    input: InputBuffer,
    pub(super) session: ClientSession,
    pub(super) tls: Option<String>,
    /// Taken from the idle pool (the peer may have closed it meanwhile).
    pub(super) reused: bool,
    /// TLS is up with a certificate verified against our roots.
    verified: bool,
}

impl ClientConn {
    /// Whether this pooled connection may carry mail for `target`: a connection
    /// opened with weaker TLS than the target requires must not be reused for it.
    fn serves(&self, target: &Target<'_>) -> bool {
        let tls_ok = self.tls.is_some() || !target.require_tls();
        let verify_ok = self.verified || !target.verify_tls;
        tls_ok && verify_ok
    }
}

impl ClientConn {
    /// Writes what `out` holds, then feeds the server's replies to the session until
    /// it asks for something: that action, or the error that ended the session.
    async fn run(&mut self, mut out: Outbox<ClientAction>) -> Result<ClientAction, ConnError> {
        loop {
            if !out.reply.is_empty() {
                self.stream
                    .write_all(&out.reply)
                    .await
                    .map_err(|e| ConnError::Io(format!("write: {e}")))?;
                out.reply.clear();
            }
            if !out.actions.is_empty() {
                // The session stops at its first action, so there is only one.
                return match out.actions.swap_remove(0) {
                    ClientAction::Failed(e) => Err(ConnError::Session(e)),
                    action => Ok(action),
                };
            }
            let used = self.session.receive(self.input.data(), &mut out);
            self.input.consume(used);
            if !out.reply.is_empty() || !out.actions.is_empty() {
                continue;
            }
            match with_timeout(REPLY_TIMEOUT, self.input.fill(&mut self.stream)).await {
                Ok(Ok(0)) => self.session.eof(&mut out),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ConnError::Io(format!("read: {e}"))),
                Err(_) => return Err(ConnError::Timeout),
            }
        }
    }

    /// One transaction: the session's outcome for each recipient, in order.
    pub(super) async fn transaction(
        &mut self,
        envelope: Envelope,
    ) -> Result<Vec<crate::proto::smtp::client::RcptResult>, ConnError> {
        let mut out = Outbox::default();
        self.session
            .begin(envelope, &mut out)
            .map_err(|_| ConnError::Unexpected("transaction on a busy connection"))?;
        match self.run(out).await? {
            ClientAction::Finished(results) => Ok(results),
            _ => Err(ConnError::Unexpected("no transaction result")),
        }
    }

    /// QUIT, a short wait for its reply, then close.
    async fn close(mut self) {
        let mut out = Outbox::default();
        self.session.quit(&mut out);
        let _ = with_timeout(QUIT_TIMEOUT, self.run(out)).await;
        self.stream.close().await;
    }
}

/// What a connection to one host must do: verify its certificate, authenticate.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub addr: SocketAddr,
    pub host: &'a str,
    pub verify_tls: bool,
    pub relay: Option<&'a Relay>,
}

impl Target<'_> {
    fn require_tls(&self) -> bool {
        self.verify_tls || self.relay.is_some_and(|r| r.require_tls)
    }
}

/// A connection to the target: an idle one if fresh enough, else a new one within
/// limits.
pub(super) async fn checkout(
    shard: &Rc<Shard>,
    target: Target<'_>,
) -> Result<ClientConn, ConnError> {
    let out = &shard.outbound;
    let q = &shard.config().queue;
    let addr = target.addr;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        // An idle connection to this host first: it holds one of the host's slots, so
        // a waiter that only watched the counters would wait for nothing.
        let reused = out.idle.borrow_mut().get_mut(&addr).and_then(|v| {
            let i = v.iter().rposition(|(conn, _)| conn.serves(&target))?;
            Some(v.remove(i))
        });
        match reused {
            Some((mut conn, since)) if since.elapsed() < IDLE_REUSE => {
                conn.reused = true;
                return Ok(conn);
            }
            Some((conn, _)) => {
                release(shard, addr);
                conn.close().await;
                continue;
            }
            None => {}
        }
        let per = out
            .per_destination
            .borrow()
            .get(&addr)
            .copied()
            .unwrap_or(0);
        if out.connections.get() < q.connections_max && per < q.connections_per_destination_max {
            break;
        }
        // At the limit, an idle connection too weak for this target gives its slot.
        let weaker = out.idle.borrow_mut().get_mut(&addr).and_then(Vec::pop);
        if let Some((conn, _)) = weaker {
            release(shard, addr);
            conn.close().await;
            continue;
        }
        if Instant::now() > deadline {
            return Err(ConnError::LimitReached);
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    out.connections.set(out.connections.get() + 1);
    *out.per_destination.borrow_mut().entry(addr).or_default() += 1;
    let policy = if target.require_tls() {
        TlsPolicy::Required
    } else {
        TlsPolicy::Opportunistic
    };
    let opened = match open(shard, target, policy).await {
        // Opportunistic TLS (RFC 7435): a failed handshake is retried in plaintext, as
        // Postfix's `may` level does, unless a policy requires TLS.
        // Plaintext right behind the 220 counts as a failed negotiation too: it is
        // refused, never read as TLS data.
        Err(e @ (ConnError::Tls(_) | ConnError::Session(SessionError::DataAfterStartTls)))
            if policy == TlsPolicy::Opportunistic =>
        {
            tracing::info!(host = target.host, %addr, error = %e, "STARTTLS failed; retrying without TLS");
            open(shard, target, TlsPolicy::Never).await
        }
        other => other,
    };
    if opened.is_err() {
        release(shard, addr);
    }
    opened
}

/// Gives back a connection slot (the connection is gone).
pub(super) fn release(shard: &Shard, addr: SocketAddr) {
    let out = &shard.outbound;
    out.connections.set(out.connections.get().saturating_sub(1));
    if let Some(n) = out.per_destination.borrow_mut().get_mut(&addr) {
        *n = n.saturating_sub(1);
    }
}

/// Parks a connection whose session is idle for the next message to `addr`.
pub(super) fn checkin(shard: &Shard, addr: SocketAddr, conn: ClientConn) {
    shard
        .outbound
        .idle
        .borrow_mut()
        .entry(addr)
        .or_default()
        .push((conn, Instant::now()));
}

/// Closes (with QUIT) idle connections nobody reused in time, so they do not hold
/// connection slots and remote sockets for ever.
pub(super) async fn close_stale(shard: &Rc<Shard>) {
    let stale: Vec<(SocketAddr, ClientConn)> = {
        let mut idle = shard.outbound.idle.borrow_mut();
        let mut stale = Vec::new();
        for (addr, conns) in idle.iter_mut() {
            let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(conns)
                .into_iter()
                .partition(|(_, since)| since.elapsed() < IDLE_REUSE);
            *conns = keep;
            stale.extend(old.into_iter().map(|(conn, _)| (*addr, conn)));
        }
        idle.retain(|_, conns| !conns.is_empty());
        stale
    };
    for (addr, conn) in stale {
        release(shard, addr);
        conn.close().await;
    }
}

async fn open(
    shard: &Rc<Shard>,
    target: Target<'_>,
    policy: TlsPolicy,
) -> Result<ClientConn, ConnError> {
    let tcp = with_timeout(
        CONNECT_TIMEOUT,
        glommio::net::TcpStream::connect(target.addr),
    )
    .await
    .map_err(|_| ConnError::Connect("timed out".into()))?
    .map_err(|e| ConnError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let config = ClientConfig {
        hostname: shard.config().hostname.clone(),
        tls: policy,
        auth: target.relay.and_then(|r| r.auth.clone()),
    };
    let mut conn = ClientConn {
        stream: Stream::Plain(tcp),
        input: InputBuffer::new(REPLY_BUFFER_MAX),
        session: ClientSession::new(config),
        tls: None,
        reused: false,
        verified: false,
    };
    let mut action = conn.run(Outbox::default()).await?;
    loop {
        match action {
            ClientAction::Ready => break,
            // The session saw all buffered input and refused any plaintext after the
            // 220 (DataAfterStartTls), so nothing unread is left to cross the handshake.
            ClientAction::StartTls => {
                let tls = if target.verify_tls {
                    &shard.outbound.tls_verified
                } else {
                    &shard.outbound.tls_opportunistic
                };
                let name = rustls_pki_types::ServerName::try_from(target.host.to_string())
                    .or_else(|_| {
                        rustls_pki_types::ServerName::try_from(target.addr.ip().to_string())
                    })
                    .map_err(|e| ConnError::Tls(format!("server name: {e}")))?;
                conn.stream
                    .upgrade_client(tls, name, CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| ConnError::Tls(e.to_string()))?;
                conn.tls = conn.stream.tls_description();
                conn.verified = target.verify_tls;
                let mut out = Outbox::default();
                conn.session.tls_established(&mut out);
                action = conn.run(out).await?;
            }
            ClientAction::Finished(_) | ClientAction::Closed | ClientAction::Failed(_) => {
                return Err(ConnError::Unexpected("session ended before it was ready"));
            }
        }
    }
    if conn.tls.is_none() {
        tracing::debug!(host = target.host, "delivering without TLS (not offered)");
    }
    Ok(conn)
}
