//! Drives one IMAP connection and moves it to the shard that owns the account.
//!
//! Accepted on any shard (`listen.imap` with STARTTLS, `listen.imaps` with implicit
//! TLS). After the password checks out, the connection is taken apart (dup'd fd +
//! rustls state + session + unread input) and sent over the mesh to the owner shard
//! (DESIGN.md §1), exactly as POP3 does; from then on every mailbox operation is local
//! to that shard. The session reads the partition's index and mmap synchronously
//! through [`View`]; its writes run here, through the partition's group commit, and the
//! session hears the durable outcome before it answers. In IDLE the task also waits on
//! the partition's per-account change signal, so a delivery wakes it at once.

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument;

use super::conn::{
    await_input, flush, read_more, start_tls, Deadlines, InputBuffer, Interruptible, Phase,
    ReadOutcome, Stream,
};
use super::mesh::ShardMsg;
use super::spool::{SpoolError, Spooler};
use super::{Client, MailboxLogin, Shard, UserSlot};
use crate::metrics;
use crate::proto::imap::session::{
    self, Action, Bodies, LoginRefusal, Mailstore, NoStore, Outbox, Session, Write, WriteFailure,
    Written,
};
use crate::store::index::{AccountIndex, Index};
use crate::store::{self, Partition};

/// A IMAP session moving to the shard that owns its account.
pub type Handoff = super::mesh::Handoff<Session>;

/// The logged-in account as the session reads it: the index borrowed for one call,
/// message bytes from one map of the log.
struct View<'a> {
    index: std::cell::Ref<'a, Index>,
    account: u64,
    map: Option<Rc<memmap2::Mmap>>,
    quota: crate::users::Quota,
}

impl Mailstore for View<'_> {
    fn account(&self) -> Option<&AccountIndex> {
        self.index.accounts.get(&self.account)
    }
    fn log(&self) -> Option<&[u8]> {
        self.map.as_deref().map(|m| &m[..])
    }
    fn quota(&self) -> crate::users::Quota {
        self.quota
    }
}

impl Interruptible for Session {
    type Action = Action;
    fn is_idle(&self) -> bool {
        Session::is_idle(self)
    }
    fn phase(&self) -> Phase {
        if self.receiving_literal() {
            Phase::Transfer
        } else {
            Phase::Commands
        }
    }
    fn logged_in(&self) -> bool {
        self.user().is_some()
    }
    fn shutdown(&mut self, out: &mut Outbox) {
        Session::shutdown(self, out)
    }
    fn timed_out(&mut self, out: &mut Outbox) {
        Session::timed_out(self, out)
    }
}

/// The input buffer's maximum outside literals (it starts small and grows on demand).
fn input_capacity(shard: &Shard) -> usize {
    shard.config().limits.imap_command_bytes_max.max(16 * 1024)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A freshly accepted IMAP connection (`implicit_tls` for `listen.imaps`).
pub async fn run(
    shard: &Rc<Shard>,
    tcp: glommio::net::TcpStream,
    implicit_tls: bool,
    client: Client,
) {
    let Some((stream, peer)) = Box::pin(super::conn::accepted(shard, tcp, implicit_tls)).await
    else {
        return;
    };
    shard.refresh_users();
    metrics::add(&shard.metrics.imap.connections, 1);
    let session = Session::new(shard.imap_config(), implicit_tls);
    let mut out = Outbox::default();
    session.greet(&mut out);
    let input = InputBuffer::new(input_capacity(shard));
    let span = tracing::debug_span!("imap", shard = shard.id, %peer);
    drive(shard, stream, session, input, out, None, client)
        .instrument(span)
        .await;
}

/// A session handed over by another shard: open the account, answer the login, go on.
pub async fn adopt(shard: Rc<Shard>, handoff: Handoff) {
    shard.sessions.set(shard.sessions.get() + 1);
    let Handoff {
        parts,
        mut session,
        pending,
        account,
        user,
        client,
    } = handoff;
    shard.count_family(super::listen::Family::Imap, 1);
    let stream = Stream::from_parts(parts);
    let mut out = Outbox::default();
    let slot = open_account(&shard, &mut session, account, user, &mut out).await;
    let input = InputBuffer::with_pending(input_capacity(&shard), &pending);
    let span = tracing::debug_span!("imap", shard = shard.id, adopted = true);
    drive(&shard, stream, *session, input, out, slot, client)
        .instrument(span)
        .await;
    shard.count_family(super::listen::Family::Imap, -1);
    shard.sessions.set(shard.sessions.get() - 1);
}

fn partition_for(shard: &Shard, account: u64) -> Option<&Rc<Partition>> {
    shard.partition(store::partition_of(account, shard.partitions_total))
}

/// Takes a session slot for the account (`limits.sessions_per_user_max`), makes sure
/// it has its mailboxes (a first login before any mail) and answers the login.
async fn open_account(
    shard: &Rc<Shard>,
    session: &mut Session,
    account: u64,
    user: String,
    out: &mut Outbox,
) -> Option<UserSlot> {
    let Some(p) = partition_for(shard, account) else {
        tracing::error!(
            shard = shard.id,
            "IMAP login on a shard that does not own the account"
        );
        session.login_failed(LoginRefusal::Temporary, out);
        return None;
    };
    let Some(slot) = shard.user_slot(account) else {
        session.login_failed(LoginRefusal::TooManySessions, out);
        return None;
    };
    if let Err(e) = p.ensure_account(account, now()).await {
        tracing::warn!(error = %e, "cannot open an IMAP account");
        session.login_failed(LoginRefusal::Temporary, out);
        return None;
    }
    session.logged_in(user, out);
    Some(slot)
}

/// Runs `f` with the account's view (or an empty one before login).
/// The logged-in user's quota (looked up per call: `shardmail user quota` applies to
/// sessions already logged in).
fn quota_of(shard: &Shard, session: &Session) -> crate::users::Quota {
    // The session may have moved here from the shard that checked its password:
    // this shard's copy of the users must be as fresh (one stat a second at most).
    shard.refresh_users();
    session
        .user()
        .and_then(crate::users::normalize)
        .map(|address| shard.quota_of(&address))
        .unwrap_or_default()
}

/// The map of the account's log that a call plans with (and its splices are read
/// from: after a compaction swapped the log, offsets are only valid in this map).
fn log_map(shard: &Shard, account: Option<u64>) -> Option<Rc<memmap2::Mmap>> {
    partition_for(shard, account?)?.current_map()
}

fn with_view<T>(
    shard: &Shard,
    account: Option<u64>,
    quota: crate::users::Quota,
    map: Option<Rc<memmap2::Mmap>>,
    f: impl FnOnce(&dyn Mailstore) -> T,
) -> T {
    match account.and_then(|a| Some((a, partition_for(shard, a)?))) {
        Some((account, p)) => {
            let view = View {
                map,
                index: p.index(),
                account,
                quota,
            };
            f(&view)
        }
        None => f(&NoStore),
    }
}

async fn drive(
    shard: &Rc<Shard>,
    mut stream: Stream,
    mut session: Session,
    mut input: InputBuffer,
    mut out: Outbox,
    mut slot: Option<UserSlot>,
    client: Client,
) {
    let mut account = slot.as_ref().map(UserSlot::account);
    let limits = &shard.config().limits;
    let mut commands_counted = session.commands();
    let mut deadlines = Deadlines::new(limits, limits.imap_idle_timeout, true);
    let mut spooler = Spooler::new(
        &shard.config().data_dir,
        shard.config().store.spool_threshold_bytes,
        shard.connections.clone(),
    );
    // A whole command, literals included, must fit in the input buffer: at most one
    // literal at the limit plus the command's lines.
    let input_max = limits.message_size_max + input_capacity(shard) * 2;
    loop {
        let quota = quota_of(shard, &session);
        let map = log_map(shard, account);
        let used = with_view(shard, account, quota, map.clone(), |view| {
            session.receive(input.data(), view, now(), &mut out)
        });
        input.consume(used);
        deadlines.consumed(used, input.is_empty());
        spooler.tend(session.incoming_mut());
        let commands = session.commands();
        metrics::add(&shard.metrics.imap.commands, commands - commands_counted);
        commands_counted = commands;
        let actions = std::mem::take(&mut out.actions);
        let acted = actions.iter().any(|a| !matches!(a, Action::Splice { .. }));
        if send_splices(shard, &mut stream, &mut out.reply, &actions, map.as_deref())
            .await
            .is_err()
        {
            return;
        }
        for action in actions {
            match action {
                Action::Splice { .. } => {}
                Action::StartTls => {
                    metrics::add(&shard.metrics.bytes_sent_imap, out.reply.len() as u64);
                    if !Box::pin(start_tls(shard, &mut stream, &mut input, &mut out.reply)).await {
                        return;
                    }
                    session.tls_established();
                }
                Action::Compress => {
                    let max = shard.config().limits.imap_compress_sessions_max;
                    let slot = shard.connections.deflate(max);
                    session.compression_decided(slot.is_some(), &mut out);
                    // The OK goes out as it is; everything after it deflates, the
                    // input already read behind the command included.
                    if flush_counted(shard, &mut stream, &mut out.reply)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if let Some(slot) = slot {
                        let pipelined = input.data().to_vec();
                        input.consume(pipelined.len());
                        stream.compress(pipelined, slot);
                    }
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
                    let failures = &shard.metrics.imap.auth_failures;
                    let attempt = super::LoginAttempt {
                        protocol: "imap",
                        mechanism,
                        username,
                        secret,
                        ip: client.peer.ip(),
                    };
                    let (user, id, owner) = match shard.mailbox_login(attempt, failures).await {
                        MailboxLogin::Accepted {
                            user,
                            account,
                            owner,
                        } => (user, account, owner),
                        MailboxLogin::Refused => {
                            session.login_failed(LoginRefusal::BadCredentials, &mut out);
                            continue;
                        }
                        MailboxLogin::Throttled => {
                            session.login_failed(LoginRefusal::Throttled, &mut out);
                            continue;
                        }
                        MailboxLogin::Unavailable => {
                            session.login_failed(LoginRefusal::Temporary, &mut out);
                            continue;
                        }
                    };
                    if owner == shard.id {
                        slot =
                            Box::pin(open_account(shard, &mut session, id, user, &mut out)).await;
                        account = slot.as_ref().map(UserSlot::account);
                    } else {
                        // Replies so far go first, so the owner's answer follows them.
                        if flush_counted(shard, &mut stream, &mut out.reply)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        Box::pin(super::mesh::hand_off(
                            shard,
                            owner,
                            stream,
                            session,
                            input.data(),
                            id,
                            user,
                            client,
                            ShardMsg::AdoptImap,
                        ))
                        .await;
                        return;
                    }
                }
                Action::Write(write) => {
                    let result = match account {
                        Some(a) => Box::pin(execute(shard, a, write, &mut spooler)).await,
                        None => Written::Failed(WriteFailure::Cannot("Not logged in".into())),
                    };
                    let quota = quota_of(shard, &session);
                    let map = log_map(shard, account);
                    with_view(shard, account, quota, map, |view| {
                        session.written(result, view, &mut out)
                    });
                }
                Action::Unauthenticated => {
                    // Frees the session slot; the next login finds its owner anew.
                    drop(slot.take());
                    account = None;
                }
                Action::Close => {
                    let _ = flush_counted(shard, &mut stream, &mut out.reply).await;
                    stream.close().await;
                    return;
                }
            }
        }
        if acted {
            continue;
        }
        if session.wants_resume() {
            // A long reply in steps, or pipelined commands held back: send what is
            // queued (waiting while the peer does not read), let other sessions of
            // this shard run, then go on (DESIGN.md §10).
            if flush_counted(shard, &mut stream, &mut out.reply)
                .await
                .is_err()
            {
                return;
            }
            shard.pause_if_due().await;
            continue;
        }
        if input.is_full() {
            if input.max() >= input_max {
                return; // cannot happen within the framer's limits; fail safe
            }
            input.grow((input.max() * 2).min(input_max));
        }
        // IDLE, or NOTIFY between commands: wake on input or on a change to the
        // account (a partial command waits under its own deadline instead).
        if session.is_idling() || (session.notifying() && input.is_empty()) {
            if let Some(a) = account {
                if !Box::pin(idle_wait(
                    shard,
                    &mut stream,
                    &mut input,
                    &mut session,
                    &mut out,
                    a,
                ))
                .await
                {
                    return;
                }
                continue;
            }
        }
        metrics::add(&shard.metrics.bytes_sent_imap, out.reply.len() as u64);
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

/// Writes replies with the log bytes spliced in where the session asked (large FETCH
/// literals go from the map to the socket — or to rustls — without a copy into the
/// reply buffer); what follows the last splice stays in `reply`.
async fn send_splices(
    shard: &Shard,
    stream: &mut Stream,
    reply: &mut Vec<u8>,
    actions: &[Action],
    map: Option<&memmap2::Mmap>,
) -> std::io::Result<()> {
    let mut written = 0;
    for action in actions {
        let Action::Splice { at, offset, len } = action else {
            continue;
        };
        let head = reply.get(written..*at).unwrap_or(&[]);
        stream.write_all(head).await?;
        let start = *offset as usize;
        let bytes = map
            .and_then(|m| m.get(start..start + len))
            .ok_or_else(|| std::io::Error::other("spliced bytes are outside the log"))?;
        stream.write_all(bytes).await?;
        metrics::add(&shard.metrics.bytes_sent_imap, (head.len() + len) as u64);
        written = *at;
    }
    reply.drain(..written.min(reply.len()));
    Ok(())
}

async fn flush_counted(
    shard: &Shard,
    stream: &mut Stream,
    reply: &mut Vec<u8>,
) -> std::io::Result<()> {
    metrics::add(&shard.metrics.bytes_sent_imap, reply.len() as u64);
    flush(stream, reply).await
}

/// IDLE: waits for input or a change to the account, whichever comes first; a change
/// is reported at once. `false` when the connection is finished.
async fn idle_wait(
    shard: &Rc<Shard>,
    stream: &mut Stream,
    input: &mut InputBuffer,
    session: &mut Session,
    out: &mut Outbox,
    account: u64,
) -> bool {
    let Some(p) = partition_for(shard, account).cloned() else {
        return false;
    };
    if session.notifying() {
        // What changed while the last command ran (the wait below only sees later
        // changes): NOTIFY compares with what it last reported, so nothing repeats.
        let quota = quota_of(shard, session);
        let map = log_map(shard, Some(account));
        with_view(shard, Some(account), quota, map, |view| {
            session.changed(view, out)
        });
    }
    loop {
        if flush_counted(shard, stream, &mut out.reply).await.is_err() {
            return false;
        }
        if shard.shutdown.is_fired() {
            session.shutdown(out);
            return true;
        }
        let seen = p.generation(account);
        let limits = &shard.config().limits;
        enum Woke {
            Read(ReadOutcome),
            Changed,
        }
        let woke = futures_lite::future::or(
            async {
                Woke::Read(
                    read_more(
                        stream,
                        input,
                        &shard.shutdown,
                        limits.imap_idle_timeout,
                        true,
                    )
                    .await,
                )
            },
            async {
                p.changed(account, seen).await;
                Woke::Changed
            },
        )
        .await;
        match woke {
            Woke::Changed => {
                let quota = quota_of(shard, session);
                let map = log_map(shard, Some(account));
                with_view(shard, Some(account), quota, map, |view| {
                    session.changed(view, out)
                });
            }
            Woke::Read(ReadOutcome::Data) => return true,
            Woke::Read(ReadOutcome::Closed) => return false,
            Woke::Read(ReadOutcome::Shutdown) => {
                session.shutdown(out);
                return true;
            }
            Woke::Read(ReadOutcome::TimedOut) => {
                session.timed_out(out);
                return true;
            }
        }
    }
}

/// Runs one durable change for the session.
async fn execute(shard: &Rc<Shard>, account: u64, write: Write, spooler: &mut Spooler) -> Written {
    let Some(p) = partition_for(shard, account).cloned() else {
        tracing::error!(
            shard = shard.id,
            "IMAP write for an account this shard does not own"
        );
        return Written::Failed(WriteFailure::Unavailable);
    };
    let (change, bodies) = write.into_change();
    let mut stored = Vec::new();
    if let Some(bodies) = bodies {
        let whole = match spooler.finish(bodies.bytes) {
            Ok(whole) => whole,
            Err(SpoolError::NoSpace | SpoolError::NoDescriptor) => {
                return Written::Failed(WriteFailure::NoSpace)
            }
            Err(SpoolError::Io(e)) => {
                tracing::error!(error = %e, "cannot spool an APPEND");
                return Written::Failed(WriteFailure::Unavailable);
            }
        };
        // MULTIAPPEND's messages lie back to back in one spool: each is a slice of it
        // (no copy; the map lives until the last one is written).
        for range in Bodies::ranges(&bodies.lengths, whole.len()) {
            stored.push(super::mesh::summarize(Vec::new(), whole.slice(range)).await);
        }
    }
    let messages: Vec<_> = stored.iter().map(|(m, s)| (m, s.as_slice())).collect();
    match p.execute(account, change, now(), &messages).await {
        Ok(outcome) => outcome.into(),
        Err(e) => Written::Failed(write_failure(&e)),
    }
}

/// What the client hears of a store error (details go to the log only: they name
/// files and OS errors).
fn write_failure(e: &store::StoreError) -> WriteFailure {
    match e {
        store::StoreError::NoSpace(_) => {
            tracing::warn!(error = %e, "IMAP change refused: no disk space");
            WriteFailure::NoSpace
        }
        store::StoreError::Invalid(text) => WriteFailure::Cannot(text.clone()),
        _ => {
            tracing::error!(error = %e, "IMAP change failed");
            WriteFailure::Unavailable
        }
    }
}

/// The session settings from the configuration.
pub fn config(config: &crate::config::Config) -> session::ImapConfig {
    session::ImapConfig {
        hostname: config.hostname.clone(),
        tls_available: true,
        allow_plaintext_auth: config.allow_plaintext_auth,
        command_bytes_max: config.limits.imap_command_bytes_max,
        thread_messages_max: config.limits.imap_thread_messages_max,
        append_messages_max: config.limits.imap_append_messages_max,
        metadata_bytes_max: config.limits.imap_metadata_bytes_max,
        search_updates_max: config.limits.imap_search_updates_max,
        literal_bytes_max: config.limits.message_size_max as u64,
        depth_max: config.limits.imap_nesting_max,
        bad_commands_max: config.limits.bad_commands_max,
        auth_failures_max: config.limits.auth_failures_max,
        preauth_literal_bytes_max: config.limits.preauth_literal_bytes_max as u64,
        mailboxes_per_account_max: config.limits.mailboxes_per_account_max,
        keywords_per_mailbox_max: config.limits.keywords_per_mailbox_max,
        output_bytes_max: config.limits.output_buffer_bytes_max,
    }
}
