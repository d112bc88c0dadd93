//! Shard-to-shard messages and the delivery fan-out (DESIGN.md §1 "delivery goes to the data").
//!
//! Only owned values cross shards: the message is one refcounted `Bytes` shared by
//! every owner, never copied per shard. A delivery is acknowledged to the SMTP client
//! only when every owning partition has made it durable; any failure is a `451`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

use super::Shard;
use crate::proto::smtp::{DeliveryError, Recipient};
use crate::store::{self, StoredMessage, Summary};

/// Larger messages are MIME-parsed off the reactor (256 KiB parse in ~0.5 ms, within
/// `server.step_budget_us`).
const SUMMARY_ON_REACTOR_BYTES_MAX: usize = 256 << 10;

/// Messages in flight per shard pair before senders wait (bounded memory).
pub const CHANNEL_DEPTH: usize = 1024;

/// What shards say to each other. Everything here is owned and `Send`.
#[derive(Debug)]
pub enum ShardMsg {
    /// Store `message` in `mailbox` of each account (all in `partition`), then answer.
    Deliver {
        request: u64,
        from: usize,
        partition: u32,
        accounts: Vec<u64>,
        mailbox: u32,
        message: StoredMessage,
        summary: Bytes,
        internal_date: i64,
    },
    /// Answer to `Deliver`: durable, or why not.
    Delivered { request: u64, outcome: Stored },
    /// A logged-in POP3 connection moving to the shard that owns its account.
    AdoptPop3(Box<Handoff<crate::proto::pop3::Session>>),
    /// A logged-in IMAP connection moving to the shard that owns its account.
    AdoptImap(Box<Handoff<crate::proto::imap::session::Session>>),
    /// A metrics scrape wants this shard's numbers.
    MetricsRequest { request: u64, from: usize },
    MetricsReply {
        request: u64,
        snapshot: Box<crate::metrics::Snapshot>,
    },
}

/// What became of a delivery to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Durable,
    /// No room (disk full, or below `store.reserve_free_bytes`): temporary.
    NoSpace,
    Failed,
}

impl Stored {
    fn of(result: Result<(), store::StoreError>) -> Stored {
        match result {
            Ok(()) => Stored::Durable,
            Err(e) if e.is_no_space() => Stored::NoSpace,
            Err(e) => {
                tracing::warn!(error = %e, "delivery to a partition failed");
                Stored::Failed
            }
        }
    }
}

/// The SMTP reply for a full disk (RFC 3463 4.3.1; never a path).
const NO_SPACE_REPLY: &str = "452 4.3.1 Insufficient system storage; try again later";

/// This shard's end of the mesh.
pub struct Mesh {
    senders: Senders<ShardMsg>,
    receivers: RefCell<Option<glommio::channels::channel_mesh::Receivers<ShardMsg>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Stored>>>,
    pending_metrics: RefCell<HashMap<u64, oneshot::Sender<crate::metrics::Snapshot>>>,
    next_request: Cell<u64>,
}

impl Mesh {
    pub async fn join(builder: MeshBuilder<ShardMsg, Full>) -> Result<Mesh, String> {
        let (senders, receivers) = builder
            .join()
            .await
            .map_err(|e| format!("cannot join the shard mesh: {e}"))?;
        Ok(Mesh {
            senders,
            receivers: RefCell::new(Some(receivers)),
            pending: RefCell::new(HashMap::new()),
            pending_metrics: RefCell::new(HashMap::new()),
            next_request: Cell::new(0),
        })
    }

    /// This shard's index in the mesh, which is its shard id.
    pub fn peer_id(&self) -> usize {
        self.senders.peer_id()
    }

    /// Every other shard's metrics snapshot (shards that do not answer are skipped).
    pub async fn gather_metrics(&self) -> Vec<crate::metrics::Snapshot> {
        let me = self.peer_id();
        let mut waits = Vec::new();
        for peer in (0..self.senders.nr_consumers()).filter(|p| *p != me) {
            let request = self.next_request.get() + 1;
            self.next_request.set(request);
            let (tx, rx) = oneshot::channel();
            self.pending_metrics.borrow_mut().insert(request, tx);
            if self
                .senders
                .send_to(peer, ShardMsg::MetricsRequest { request, from: me })
                .await
                .is_ok()
            {
                waits.push(rx);
            } else {
                self.pending_metrics.borrow_mut().remove(&request);
            }
        }
        let mut out = Vec::new();
        for rx in waits {
            if let Ok(Ok(s)) =
                super::conn::with_timeout(std::time::Duration::from_secs(2), rx).await
            {
                out.push(s);
            }
        }
        out
    }

    /// Sends a one-way message to shard `to`.
    pub async fn send(&self, to: usize, msg: ShardMsg) -> Result<(), String> {
        self.senders
            .send_to(to, msg)
            .await
            .map_err(|e| e.to_string())
    }

    async fn request(&self, owner: usize, make: impl FnOnce(u64) -> ShardMsg) -> Stored {
        let request = self.next_request.get() + 1;
        self.next_request.set(request);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(request, tx);
        if self.senders.send_to(owner, make(request)).await.is_err() {
            self.pending.borrow_mut().remove(&request);
            return Stored::Failed;
        }
        rx.await.unwrap_or(Stored::Failed)
    }
}

/// Starts one task per peer that serves its requests and completes our requests.
pub fn serve(shard: Rc<Shard>) {
    let Some(mut receivers) = shard.mesh.receivers.borrow_mut().take() else {
        return;
    };
    for (_peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = receiver.recv().await {
                handle(&shard, msg);
            }
        })
        .detach();
    }
}

fn handle(shard: &Rc<Shard>, msg: ShardMsg) {
    match msg {
        ShardMsg::Deliver {
            request,
            from,
            partition,
            accounts,
            mailbox,
            message,
            summary,
            internal_date,
        } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let outcome = match shard.partition(partition) {
                    Some(p) => Stored::of(
                        p.deliver_message(&accounts, mailbox, &message, &summary, internal_date)
                            .await,
                    ),
                    None => {
                        tracing::error!(
                            partition,
                            shard = shard.id,
                            "delivery to a partition this shard does not own"
                        );
                        Stored::Failed
                    }
                };
                let reply = ShardMsg::Delivered { request, outcome };
                if shard.mesh.senders.send_to(from, reply).await.is_err() {
                    tracing::error!(peer = from, "cannot answer a delivery request");
                }
            })
            .detach();
        }
        ShardMsg::Delivered { request, outcome } => {
            if let Some(tx) = shard.mesh.pending.borrow_mut().remove(&request) {
                let _ = tx.send(outcome);
            }
        }
        ShardMsg::MetricsRequest { request, from } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let snapshot = Box::new(super::metrics_snapshot(&shard));
                let _ = shard
                    .mesh
                    .senders
                    .send_to(from, ShardMsg::MetricsReply { request, snapshot })
                    .await;
            })
            .detach();
        }
        ShardMsg::MetricsReply { request, snapshot } => {
            if let Some(tx) = shard.mesh.pending_metrics.borrow_mut().remove(&request) {
                let _ = tx.send(*snapshot);
            }
        }
        ShardMsg::AdoptPop3(handoff) => {
            glommio::spawn_local(super::pop3::adopt(shard.clone(), *handoff)).detach();
        }
        ShardMsg::AdoptImap(handoff) => {
            glommio::spawn_local(super::imap::adopt(shard.clone(), *handoff)).detach();
        }
    }
}

/// The message as stored (`head` then `body`) and its MIME summary, encoded for the
/// log (SMTP delivery, IMAP APPEND). mail-parser does ~0.5 GB/s: a large message is
/// summarized (and its checksum taken) on the blocking pool, so it does not stall
/// every other session of this shard, and is never copied to join head and body.
pub async fn summarize(head: Vec<u8>, body: Bytes) -> (StoredMessage, Vec<u8>) {
    if head.len() + body.len() <= SUMMARY_ON_REACTOR_BYTES_MAX {
        let mut whole = head;
        whole.extend_from_slice(&body);
        let summary = Summary::parse(&whole).to_bytes();
        (
            StoredMessage::new(Bytes::new(), Bytes::from(whole)),
            summary,
        )
    } else {
        glommio::executor()
            .spawn_blocking(move || {
                let summary = Summary::parse_after_head(head.len(), &body).to_bytes();
                (StoredMessage::new(Bytes::from(head), body), summary)
            })
            .await
    }
}

/// A logged-in mailbox session (POP3 or IMAP) moving to the shard that owns its
/// account. All owned, all `Send`.
#[derive(Debug)]
pub struct Handoff<S> {
    pub parts: super::conn::StreamParts,
    pub session: Box<S>,
    /// Input the client pipelined behind its login.
    pub pending: Vec<u8>,
    pub account: u64,
    pub user: String,
    /// The peer and its admission slot (freed wherever the connection ends).
    pub client: super::Client,
}

/// Takes the connection apart and sends it with its session to `owner`, wrapped by
/// `wrap` into the protocol's message. Replies must have been flushed first, so the
/// owner's answer follows them on the wire.
#[allow(clippy::too_many_arguments)] // the session's whole state, one argument each
pub async fn hand_off<S>(
    shard: &Shard,
    owner: usize,
    stream: super::conn::Stream,
    session: S,
    pending: &[u8],
    account: u64,
    user: String,
    client: super::Client,
    wrap: fn(Box<Handoff<S>>) -> ShardMsg,
) {
    let parts = match stream.into_parts() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "cannot take the connection apart for a hand-off");
            return;
        }
    };
    let handoff = Handoff {
        parts,
        session: Box::new(session),
        pending: pending.to_vec(),
        account,
        user,
        client,
    };
    if shard
        .mesh
        .send(owner, wrap(Box::new(handoff)))
        .await
        .is_err()
    {
        tracing::error!(owner, "session hand-off failed; the connection is closed");
    }
}

/// Stores a message (`head` then `body`) in `mailbox` of every recipient, in each
/// recipient's partition; `Ok` once all are durable.
pub async fn store(
    shard: &Rc<Shard>,
    head: Vec<u8>,
    body: Bytes,
    recipients: &[Recipient],
    mailbox: u32,
    received_at: std::time::SystemTime,
) -> Result<(), DeliveryError> {
    // Parsed once here, on the accepting shard; owners only copy the cached bytes.
    let (message, summary) = summarize(head, body).await;
    let summary = Bytes::from(summary);
    let internal_date = received_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut by_partition: HashMap<u32, Vec<u64>> = HashMap::new();
    for r in recipients {
        let p = store::partition_of(r.account, shard.partitions_total);
        let accounts = by_partition.entry(p).or_default();
        if !accounts.contains(&r.account) {
            accounts.push(r.account);
        }
    }
    // One partition (the common single-recipient case): store inline; several: in
    // parallel, each owner in its own task.
    let outcomes: Vec<Stored> = if by_partition.len() == 1 {
        let mut only = by_partition.into_iter();
        match only.next() {
            Some((partition, accounts)) => vec![
                store_one(
                    shard.clone(),
                    partition,
                    accounts,
                    mailbox,
                    message,
                    summary,
                    internal_date,
                )
                .await,
            ],
            None => Vec::new(),
        }
    } else {
        let tasks: Vec<_> = by_partition
            .into_iter()
            .map(|(partition, accounts)| {
                let job = store_one(
                    shard.clone(),
                    partition,
                    accounts,
                    mailbox,
                    message.clone(),
                    summary.clone(),
                    internal_date,
                );
                glommio::spawn_local(job)
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await);
        }
        outcomes
    };
    if outcomes.iter().all(|o| *o == Stored::Durable) {
        Ok(())
    } else if outcomes.contains(&Stored::NoSpace) {
        Err(DeliveryError::Refused(NO_SPACE_REPLY.into()))
    } else {
        Err(DeliveryError::Temporary)
    }
}

/// Stores in one partition: locally if this shard owns it, else through its owner.
async fn store_one(
    shard: Rc<Shard>,
    partition: u32,
    accounts: Vec<u64>,
    mailbox: u32,
    message: StoredMessage,
    summary: Bytes,
    internal_date: i64,
) -> Stored {
    let owner = store::shard_of(partition, shard.config().shards);
    if owner == shard.id {
        let Some(p) = shard.partition(partition) else {
            return Stored::Failed;
        };
        return Stored::of(
            p.deliver_message(&accounts, mailbox, &message, &summary, internal_date)
                .await,
        );
    }
    let from = shard.id;
    let make = |request| ShardMsg::Deliver {
        request,
        from,
        partition,
        accounts,
        mailbox,
        message,
        summary,
        internal_date,
    };
    shard.mesh.request(owner, make).await
}
