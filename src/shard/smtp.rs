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

use super::conn::{
    await_input, flush, start_tls, Deadlines, InputBuffer, Interruptible, Phase, Stream,
};
use super::delivery_log::{self, Status};
use super::spool::Spooler;
use super::{deliver, Client, LoginAttempt, LoginCheck, Shard};
use crate::auth::verify::SpfCheck;
use crate::metrics;
use crate::proto::smtp::session::delivery_reply;
use crate::proto::smtp::{Action, DeliveryError, Envelope, Outbox, Port, Session};

/// Input buffer size: a full command line plus room for pipelined commands and bulk
/// DATA reads.
fn input_capacity(shard: &Shard) -> usize {
    (shard.config().limits.line_bytes_max * 2).max(64 * 1024)
}

/// A connection admitted by `listen::accept_loop` (its ticket is held until the end).
pub async fn run(shard: &Rc<Shard>, tcp: TcpStream, port: Port, client: Client) {
    let peer = client.peer;
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if port == Port::Submissions {
        if let Err(e) = Box::pin(super::conn::handshake(shard, &mut stream)).await {
            debug!(%peer, error = %e, "implicit TLS handshake failed");
            return;
        }
    }
    let screened = if port == Port::Mx {
        match Box::pin(super::screen::screen(shard, &mut stream, peer.ip())).await {
            Some(s) => s,
            None => {
                stream.close().await;
                return;
            }
        }
    } else {
        super::screen::Screened::unchecked()
    };
    shard.refresh_users();
    let id = shard.next_session_id();
    let span = tracing::debug_span!("smtp", shard = shard.id, session = id, %peer, ?port);
    drive(shard, stream, port, peer.ip(), id, screened)
        .instrument(span)
        .await;
    drop(client);
}

async fn drive(
    shard: &Rc<Shard>,
    mut stream: Stream,
    port: Port,
    peer: IpAddr,
    id: u64,
    screened: super::screen::Screened,
) {
    let limits = &shard.config().limits;
    metrics::add(&shard.metrics.smtp.connections, 1);
    let mut commands_counted = 0;
    let mut deadlines = Deadlines::new(limits, limits.idle_timeout, false);
    let mut spooler = Spooler::new(
        &shard.config().data_dir,
        shard.config().store.spool_threshold_bytes,
        shard.connections.clone(),
    );
    let mut session = Session::new(shard.smtp_config(port), peer, id, port == Port::Submissions);
    session.set_client_name(screened.client_name.clone());
    session.verify_senders(
        port == Port::Mx && shard.auth.is_some() && shard.config().auth.checks(peer),
    );
    if port == Port::Mx && !shard.config().antispam.exempts(peer) {
        if let Some(local) = stream.local_ip() {
            session.refuse_own_helo(local);
        }
    }
    let mut out = Outbox::default();
    session.greet(&mut out);
    let mut input = InputBuffer::new(input_capacity(shard));
    // The SPF verdict of the current transaction, for DMARC when its message completes.
    let mut spf = None;
    loop {
        let used = session.receive(input.data(), SystemTime::now(), shard.as_ref(), &mut out);
        input.consume(used);
        log_refused(&shard.metrics, &mut session, &stream, peer);
        deadlines.consumed(used, input.is_empty());
        spooler.tend(session.incoming_mut());
        let commands = session.commands();
        metrics::add(&shard.metrics.smtp.commands, commands - commands_counted);
        commands_counted = commands;
        let actions = std::mem::take(&mut out.actions);
        let acted = !actions.is_empty();
        for action in actions {
            match action {
                Action::StartTls => {
                    if !Box::pin(start_tls(shard, &mut stream, &mut input, &mut out.reply)).await {
                        return;
                    }
                    session.tls_established();
                }
                Action::SaslCredentials { username } => {
                    let verifier = shard.scram_verifier(&username);
                    let channel = shard.channel_binding(&stream);
                    session.sasl_credentials(verifier, &channel, &mut out);
                }
                Action::Authenticate {
                    mechanism,
                    username,
                    secret,
                } => {
                    // (checked_login reads users.json afresh itself)
                    let failures = &shard.metrics.smtp.auth_failures;
                    let attempt = LoginAttempt {
                        protocol: "smtp",
                        mechanism,
                        username,
                        secret,
                        ip: peer,
                    };
                    match Box::pin(shard.checked_login(attempt, failures)).await {
                        LoginCheck::Ok(user) => session.auth_result(Some(user), &mut out),
                        LoginCheck::Refused => session.auth_result(None, &mut out),
                        LoginCheck::Throttled => session.auth_throttled(&mut out),
                        LoginCheck::Busy => session.auth_busy(&mut out),
                    }
                }
                Action::CheckSpf {
                    ip,
                    helo,
                    mail_from,
                } => {
                    let check = SpfCheck {
                        ip,
                        helo,
                        mail_from,
                    };
                    let verdict = match shard.auth.as_ref() {
                        Some(auth) => Box::pin(auth.spf(check)).await.ok(),
                        None => None,
                    };
                    match verdict {
                        Some(v) => {
                            session.spf_checked(v.kind(), &mut out);
                            spf = Some(v); // kept for DMARC at the end of this transaction
                        }
                        None => session.checks_unavailable(&mut out),
                    }
                }
                Action::Deliver(mut envelope) => {
                    let id = envelope.id.clone();
                    let (started, bytes) = (std::time::Instant::now(), envelope.message.len());
                    let body = std::mem::take(&mut envelope.message);
                    let logged = Logged::of(&envelope, &session, &stream, peer);
                    let mut notes = deliver::Notes::default();
                    let result = match spooler.finish(body) {
                        Ok(message) => {
                            let spf = spf.take();
                            let job = deliver::accept(
                                shard,
                                envelope,
                                message,
                                deliver::Context {
                                    spf,
                                    screened: &screened,
                                    client: &logged.client,
                                },
                                &mut notes,
                            );
                            Box::pin(job).await
                        }
                        Err(e) => Err(DeliveryError::Refused(e.smtp_reply())),
                    };
                    logged.log(
                        &shard.metrics,
                        &id,
                        bytes,
                        &notes,
                        &result,
                        started.elapsed(),
                    );
                    let m = &shard.metrics;
                    if result.is_ok() {
                        metrics::add(&m.messages_accepted, 1);
                        metrics::add(&m.bytes_received, bytes);
                        let us = started.elapsed().as_micros().max(1) as u64;
                        let _ = m.accept_latency.borrow_mut().record(us);
                    } else {
                        metrics::add(&m.messages_rejected, 1);
                    }
                    session.delivered(&id, &result, &mut out);
                }
                Action::Close => {
                    let _ = flush(&mut stream, &mut out.reply).await;
                    stream.close().await;
                    return;
                }
            }
        }
        if acted {
            continue; // pipelined input may be waiting behind the action
        }
        if !await_input(
            &mut stream,
            &mut input,
            &mut session,
            &mut out,
            shard,
            &mut deadlines,
        )
        .await
        {
            return;
        }
    }
}

/// What the delivery log needs of a transaction, taken before the envelope is handed
/// over.
struct Logged {
    client: delivery_log::Client,
    from: String,
    /// Address as given, and whether it is relayed.
    recipients: Vec<(String, bool)>,
}

impl Logged {
    fn of(envelope: &Envelope, session: &Session, stream: &Stream, peer: IpAddr) -> Logged {
        Logged {
            client: client_of(session, stream, peer, envelope.authenticated.as_deref()),
            from: envelope.mail_from.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| (r.address.clone(), r.remote))
                .collect(),
        }
    }

    /// One line per recipient for the end of this transaction.
    fn log(
        &self,
        metrics: &crate::metrics::Metrics,
        id: &str,
        size: u64,
        notes: &deliver::Notes,
        result: &Result<(), DeliveryError>,
        delay: std::time::Duration,
    ) {
        let reply = delivery_reply(id, result);
        let queued = notes
            .queue_id
            .as_ref()
            .map(|q| format!("queue:{q}"))
            .unwrap_or_else(|| "queue".into());
        let mailbox = format!("mailbox:{}", notes.mailbox);
        let discarded = format!("milter:{}", notes.discarded_by.as_deref().unwrap_or("-"));
        for (to, remote) in &self.recipients {
            let (status, relay) = match result {
                Ok(()) if notes.discarded_by.is_some() => (Status::Discarded, discarded.as_str()),
                Ok(()) if *remote => (Status::Queued, queued.as_str()),
                Ok(()) => (Status::Delivered, mailbox.as_str()),
                Err(_) => (Status::of_refusal(&reply), "-"),
            };
            delivery_log::log(
                metrics,
                &delivery_log::Attempt {
                    direction: "in",
                    id,
                    client: &self.client,
                    from: &self.from,
                    to,
                    size,
                    verdicts: notes.verdicts,
                    relay,
                    status,
                    reply: &reply,
                    delay,
                    attempt: 1,
                },
            );
        }
    }
}

fn client_of(
    session: &Session,
    stream: &Stream,
    peer: IpAddr,
    user: Option<&str>,
) -> delivery_log::Client {
    delivery_log::Client {
        ip: Some(peer),
        helo: session.helo().unwrap_or_default().to_string(),
        tls: stream.tls_description().unwrap_or_default(),
        user: user.unwrap_or_default().to_string(),
        port: stream.peer_port().unwrap_or(0),
        name: session.client_name().unwrap_or_default().to_string(),
    }
}

/// A line for each recipient refused at RCPT since the last call.
fn log_refused(
    metrics: &crate::metrics::Metrics,
    session: &mut Session,
    stream: &Stream,
    peer: IpAddr,
) {
    if let Some(helo) = session.take_refused_helo() {
        metrics::add(&metrics.helo_refused, 1);
        tracing::info!(
            target: "shardmail::antispam",
            check = "helo",
            ip = %peer,
            helo = helo.as_str(),
            "HELO naming us refused"
        );
    }
    let refused = session.take_refused();
    if refused.is_empty() {
        return;
    }
    let client = client_of(session, stream, peer, session.authenticated());
    for r in refused {
        delivery_log::log(
            metrics,
            &delivery_log::Attempt {
                direction: "in",
                id: "-",
                client: &client,
                from: &r.mail_from,
                to: &r.address,
                size: 0,
                verdicts: delivery_log::Verdicts::default(),
                relay: "-",
                status: Status::of_refusal(&r.reply),
                reply: &r.reply,
                delay: std::time::Duration::ZERO,
                attempt: 1,
            },
        );
    }
}

impl Interruptible for Session {
    type Action = crate::proto::smtp::Action;
    fn is_idle(&self) -> bool {
        Session::is_idle(self)
    }
    fn phase(&self) -> Phase {
        if self.receiving_body() {
            Phase::Transfer
        } else {
            Phase::Commands
        }
    }
    fn shutdown(&mut self, out: &mut crate::proto::smtp::Outbox) {
        Session::shutdown(self, out)
    }
    fn timed_out(&mut self, out: &mut crate::proto::smtp::Outbox) {
        Session::timed_out(self, out)
    }
}
