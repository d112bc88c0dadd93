//! Listening sockets and the accept loop: who gets in, and the reply for who does not.
//!
//! Every socket of every shard is created, bound (SO_REUSEPORT) and listening with
//! `listen.backlog` before any shard starts, so no connection ever reaches a socket
//! that is bound but not yet listening (which the kernel refuses). Each accepted
//! connection must pass, in order: the server's connection capacity (open-file limit
//! minus a reserve), `limits.connections_per_ip_max` across all shards, and
//! `limits.sessions_per_shard_max` for its protocol family (SMTP, IMAP and POP3 each
//! have their own budget, so idle IMAP clients cannot crowd out inbound mail). A
//! refused connection gets its protocol's temporary-failure reply — inside TLS on an
//! implicit-TLS port — and is closed. Shard-local, `!Send` (the fds are created on the
//! main thread and adopted by their shard).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};

use super::admission::Refusal;
use super::conn::Stream;
use super::Shard;
use crate::config::Config;
use crate::proto::smtp::Port;

/// Why a connection was refused: indexes of `metrics::REFUSAL_REASONS`, and the
/// reason the log names for each.
const REASON_PER_ADDRESS: usize = 0;
const REASON_SESSIONS_PER_SHARD: usize = 1;
const REASON_CAPACITY: usize = 2;
const REFUSAL_LOG_REASONS: [&str; 3] = [
    "limits.connections_per_ip_max",
    "limits.sessions_per_shard_max",
    "connection capacity (open-file limit)",
];

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Smtp(Port),
    Pop3 { implicit_tls: bool },
    Imap { implicit_tls: bool },
    Metrics,
}

/// Protocol families, each with its own `limits.sessions_per_shard_max` budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Smtp = 0,
    Imap = 1,
    Pop3 = 2,
}

impl Service {
    pub fn family(self) -> Option<Family> {
        match self {
            Service::Smtp(_) => Some(Family::Smtp),
            Service::Imap { .. } => Some(Family::Imap),
            Service::Pop3 { .. } => Some(Family::Pop3),
            Service::Metrics => None,
        }
    }

    /// The service's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp(Port::Mx) => "smtp",
            Service::Smtp(Port::Submission) => "submission",
            Service::Smtp(Port::Submissions) => "submissions",
            Service::Smtp(Port::Lmtp) => "lmtp",
            Service::Imap {
                implicit_tls: false,
            } => "imap",
            Service::Imap { implicit_tls: true } => "imaps",
            Service::Pop3 {
                implicit_tls: false,
            } => "pop3",
            Service::Pop3 { implicit_tls: true } => "pop3s",
            Service::Metrics => "metrics",
        }
    }

    fn implicit_tls(self) -> bool {
        matches!(
            self,
            Service::Smtp(Port::Submissions)
                | Service::Imap { implicit_tls: true }
                | Service::Pop3 { implicit_tls: true }
        )
    }

    /// The reply for a refused connection.
    fn refusal(self, why: Refusal, hostname: &str) -> String {
        let (smtp, text) = match why {
            Refusal::PerAddress => (
                "421 4.7.0",
                "Too many connections from your address (limits.connections_per_ip_max); try again later",
            ),
            Refusal::Capacity => (
                "421 4.3.2",
                "Too many connections; try again later",
            ),
        };
        match self {
            Service::Smtp(_) => format!("{smtp} {hostname} {text}\r\n"),
            Service::Imap { .. } => format!("* BYE [UNAVAILABLE] {text}\r\n"),
            Service::Pop3 { .. } => format!("-ERR [SYS/TEMP] {text}\r\n"),
            Service::Metrics => {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into()
            }
        }
    }
}

/// One listening socket, made before the shards start.
#[derive(Debug)]
pub struct Bound {
    pub key: &'static str,
    pub addr: SocketAddr,
    pub service: Service,
    pub fd: OwnedFd,
}

/// Every configured address, once per shard: `result[shard]` is that shard's sockets.
pub fn bind_all(config: &Config, shards: usize) -> Result<Vec<Vec<Bound>>, String> {
    use Service::{Imap, Metrics, Pop3, Smtp};
    let l = &config.listen;
    let services: [(&'static str, &[SocketAddr], Service); 9] = [
        ("listen.smtp", &l.smtp, Smtp(Port::Mx)),
        ("listen.lmtp", &l.lmtp, Smtp(Port::Lmtp)),
        ("listen.submission", &l.submission, Smtp(Port::Submission)),
        (
            "listen.submissions",
            &l.submissions,
            Smtp(Port::Submissions),
        ),
        (
            "listen.imap",
            &l.imap,
            Imap {
                implicit_tls: false,
            },
        ),
        ("listen.imaps", &l.imaps, Imap { implicit_tls: true }),
        (
            "listen.pop3",
            &l.pop3,
            Pop3 {
                implicit_tls: false,
            },
        ),
        ("listen.pop3s", &l.pop3s, Pop3 { implicit_tls: true }),
        ("listen.metrics", &l.metrics, Metrics),
    ];
    let mut out: Vec<Vec<Bound>> = (0..shards).map(|_| Vec::new()).collect();
    for (key, addrs, service) in services {
        for addr in addrs {
            for shard in out.iter_mut() {
                let fd = bind_one(addr, l.backlog).map_err(|e| {
                    format!(
                        "{key}: cannot listen on {addr}: {e}{}",
                        super::preflight::bind_hint(addr)
                    )
                })?;
                shard.push(Bound {
                    key,
                    addr: *addr,
                    service,
                    fd,
                });
            }
        }
    }
    Ok(out)
}

/// Listening sockets all services hold in all (for the open-file budget).
pub fn socket_count(config: &Config) -> usize {
    let l = &config.listen;
    let per_shard = [
        &l.smtp,
        &l.submission,
        &l.submissions,
        &l.imap,
        &l.imaps,
        &l.pop3,
        &l.pop3s,
        &l.metrics,
    ]
    .iter()
    .map(|a| a.len())
    .sum::<usize>();
    per_shard * config.shards
}

fn bind_one(addr: &SocketAddr, backlog: u32) -> std::io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:25` beside `0.0.0.0:25` must not clash.
        socket.set_only_v6(true)?;
    }
    socket.bind(&(*addr).into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Adopts a socket from [`bind_all`] on the current shard's reactor.
pub fn listener(fd: OwnedFd) -> TcpListener {
    // SAFETY: `fd` is a bound, listening TCP socket this process owns (made by
    // `bind_one`); ownership passes to the listener, nothing else closes it.
    unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// Refusals being written at once on a shard before further ones are closed
/// without a reply (a TLS handshake per refusal must not become the attack).
const REFUSALS_IN_FLIGHT_MAX: usize = 256;

/// How long a refused implicit-TLS client gets for its handshake.
const REFUSAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections for `service` until the task is cancelled.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, service: Service) {
    let mut backoff = Duration::from_millis(5);
    let mut last_warning: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                // EMFILE and friends: wait and retry with a ceiling (mini-redis); one
                // warning a minute at most, so a flood cannot fill the log.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "accept failed (open-file limit? see `ulimit -n`)");
                    last_warning = Some(Instant::now());
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let admitted = match service.family() {
            Some(family)
                if shard.family_sessions(family)
                    >= shard.config().limits.sessions_per_shard_max =>
            {
                Err((Refusal::Capacity, REASON_SESSIONS_PER_SHARD))
            }
            _ => shard.connections.admit(peer.ip()).map_err(|why| match why {
                Refusal::PerAddress => (why, REASON_PER_ADDRESS),
                Refusal::Capacity => (why, REASON_CAPACITY),
            }),
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            shard.sessions.set(shard.sessions.get() + 1);
            match admitted {
                Ok(ticket) => {
                    let client = super::Client { peer, ticket };
                    Box::pin(serve(&shard, stream, service, client)).await
                }
                Err((why, reason)) => {
                    crate::metrics::bump_one(&shard.metrics.connections_refused, reason);
                    let text = REFUSAL_LOG_REASONS.get(reason).copied().unwrap_or("limit");
                    shard.refusals.refused(peer.ip(), service.name(), text);
                    Box::pin(refuse(&shard, stream, service, why)).await
                }
            }
            shard.sessions.set(shard.sessions.get() - 1);
        })
        .detach();
    }
}

async fn serve(shard: &Rc<Shard>, stream: TcpStream, service: Service, client: super::Client) {
    let family = service.family();
    if let Some(f) = family {
        shard.count_family(f, 1);
    }
    // Each protocol's future is boxed: a connection's task holds only its own
    // protocol's state, not the largest of the four (idle connections stay small).
    match service {
        Service::Smtp(port) => Box::pin(super::smtp::run(shard, stream, port, client)).await,
        Service::Pop3 { implicit_tls } => {
            Box::pin(super::pop3::run(shard, stream, implicit_tls, client)).await
        }
        Service::Imap { implicit_tls } => {
            Box::pin(super::imap::run(shard, stream, implicit_tls, client)).await
        }
        Service::Metrics => {
            drop(client);
            Box::pin(super::metrics_http::serve_one(shard, stream)).await
        }
    }
    if let Some(f) = family {
        shard.count_family(f, -1);
    }
}

async fn refuse(shard: &Rc<Shard>, tcp: TcpStream, service: Service, why: Refusal) {
    if shard.refusing.get() >= REFUSALS_IN_FLIGHT_MAX {
        return; // dropped: closed without a reply
    }
    shard.refusing.set(shard.refusing.get() + 1);
    let mut stream = Stream::Plain(tcp);
    let ready = !service.implicit_tls()
        || stream
            .upgrade(&shard.tls(), REFUSAL_HANDSHAKE_TIMEOUT)
            .await
            .is_ok();
    if ready {
        let reply = service.refusal(why, &shard.config().hostname);
        let _ = super::conn::with_timeout(
            REFUSAL_HANDSHAKE_TIMEOUT,
            stream.write_all(reply.as_bytes()),
        )
        .await;
        stream.close().await;
    }
    shard.refusing.set(shard.refusing.get() - 1);
}
