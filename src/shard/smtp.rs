//! Drives one SMTP connection: socket bytes ⇄ [`proto::smtp::Session`], actions carried out.
//!
//! The loop: feed buffered input to the session; carry out its actions (TLS upgrade,
//! password check off the reactor, durable delivery); flush replies when the session
//! wants more input (which is what RFC 2920 pipelining asks); read with the idle
//! timeout. A connection that drops mid-DATA stores nothing: a message exists only
//! once the session emits `Deliver`.

use std::rc::Rc;
use std::time::SystemTime;

use glommio::net::TcpStream;
use std::net::IpAddr;
use tracing::{debug, Instrument};

use super::conn::{with_timeout, InputBuffer, Stream};
use super::{mesh, Shard};
use crate::proto::smtp::{session::TOO_MANY_SESSIONS, Action, Outbox, Port, Session};
use crate::users;

/// Input buffer size: a full command line plus room for pipelined commands and bulk
/// DATA reads.
fn input_capacity(shard: &Shard) -> usize {
    (shard.config.limits.line_bytes_max * 2).max(64 * 1024)
}

pub async fn run(shard: &Rc<Shard>, tcp: TcpStream, port: Port) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if shard.sessions.get() > shard.config.limits.sessions_per_shard_max {
        let _ = stream.write_all(TOO_MANY_SESSIONS).await;
        return;
    }
    let limits = &shard.config.limits;
    if port == Port::Submissions {
        if let Err(e) = stream.upgrade(&shard.tls, limits.idle_timeout).await {
            debug!(%peer, error = %e, "implicit TLS handshake failed");
            return;
        }
    }
    shard.refresh_users();
    let id = shard.next_session_id();
    let span = tracing::debug_span!("smtp", shard = shard.id, session = id, %peer, ?port);
    drive(shard, stream, port, peer.ip(), id)
        .instrument(span)
        .await;
}

async fn drive(shard: &Rc<Shard>, mut stream: Stream, port: Port, peer: IpAddr, id: u64) {
    let limits = &shard.config.limits;
    let mut session = Session::new(shard.smtp_config(port), peer, id, port == Port::Submissions);
    let mut out = Outbox::default();
    session.greet(&mut out);
    let mut input = InputBuffer::new(input_capacity(shard));
    loop {
        let used = session.receive(input.data(), SystemTime::now(), shard.as_ref(), &mut out);
        input.consume(used);
        let actions = std::mem::take(&mut out.actions);
        let acted = !actions.is_empty();
        for action in actions {
            match action {
                Action::StartTls => {
                    if flush(&mut stream, &mut out).await.is_err() {
                        return;
                    }
                    // Anything pipelined after STARTTLS came in clear: drop it
                    // (CVE-2011-0411, command injection).
                    input.clear();
                    if let Err(e) = stream.upgrade(&shard.tls, limits.idle_timeout).await {
                        debug!(error = %e, "STARTTLS handshake failed");
                        return;
                    }
                    session.tls_established();
                }
                Action::Authenticate { username, password } => {
                    shard.refresh_users();
                    let user = verify(shard, username, password).await;
                    if user.is_none() {
                        glommio::timer::sleep(limits.auth_failure_delay).await;
                    }
                    session.auth_result(user, &mut out);
                }
                Action::Deliver(envelope) => {
                    let id = envelope.id.clone();
                    let result = mesh::deliver(shard, envelope).await;
                    session.delivered(&id, result, &mut out);
                }
                Action::Close => {
                    let _ = flush(&mut stream, &mut out).await;
                    stream.close().await;
                    return;
                }
            }
        }
        if acted {
            continue; // pipelined input may be waiting behind the action
        }
        if flush(&mut stream, &mut out).await.is_err() {
            return;
        }
        if input.is_full() {
            // Cannot happen with input_capacity ≥ line_bytes_max; fail safe.
            return;
        }
        let idle = session.is_idle() && input.is_empty();
        if idle && shard.shutdown.is_fired() {
            session.shutdown(&mut out);
            continue;
        }
        let read = async {
            if idle {
                // Between commands a shutdown may interrupt the wait for the next one.
                futures_lite::future::or(input.fill(&mut stream), async {
                    shard.shutdown.wait().await;
                    Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "shutdown",
                    ))
                })
                .await
            } else {
                input.fill(&mut stream).await
            }
        };
        match with_timeout(limits.idle_timeout, read).await {
            Ok(Ok(0)) => return, // peer closed; an unfinished message is dropped
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                session.shutdown(&mut out);
            }
            Ok(Err(_)) => return,
            Err(_) => session.timed_out(&mut out),
        }
    }
}

async fn flush(stream: &mut Stream, out: &mut Outbox) -> std::io::Result<()> {
    if out.reply.is_empty() {
        return Ok(());
    }
    let result = stream.write_all(&out.reply).await;
    out.reply.clear();
    result
}

/// A hash with the cost of a real one, checked when the user does not exist, so the
/// reply time does not reveal which accounts exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hhcmRtYWlsZHVtbXk$2A4bxHvE6Ed0Nt1wTCgwLzXbTdxOQPLSp4XH1Sg1R3U";

/// Checks a password off the reactor; the account's canonical address if it matches.
pub async fn verify(shard: &Shard, username: String, password: String) -> Option<String> {
    let db = shard.users.borrow().clone();
    let name = users::normalize(&username);
    let hash = name
        .as_deref()
        .and_then(|n| db.users.get(n))
        .map(|u| u.password.clone());
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
    let ok = glommio::executor()
        .spawn_blocking(move || users::verify_password(&hash, &password))
        .await;
    (ok && known).then_some(name).flatten()
}
