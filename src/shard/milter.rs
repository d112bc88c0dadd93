//! Asks the content filters of `milter.servers` (rspamd's milter proxy, OpenDKIM,
//! any libmilter filter) about each message once its DATA is complete, in order, each
//! seeing the changes of the one before.
//!
//! Owns the milter connections: one per message and milter, non-blocking on the
//! shard, every read and write under `timeout`, the whole conversation under
//! [`CONVERSATION_TIMEOUTS`] of them, and at most `concurrency` conversations per
//! milter across all shards (each shard holds its share of the permits). A milter
//! that cannot be asked gets its `default_action`; it never stalls a shard or loses
//! a message: the client is told to try again (`451`) unless the operator chose
//! `accept`.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpStream, UnixStream};

use super::conn::with_timeout;
use super::Shard;
use crate::config::{MilterAddress, MilterDefault, MilterServer};
use crate::proto::milter::{self, Conversation, Flow, Outcome, Transaction, Verdict};
use crate::proto::smtp::DeliveryError;

/// A whole conversation may take this many `timeout`s (a milter that keeps sending
/// "progress" must end some time).
const CONVERSATION_TIMEOUTS: u32 = 4;

/// Bytes of replies that need no answer (headers, body chunks) gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// What a milter failure tells the client when the milter's default is `tempfail`.
const UNAVAILABLE: &str = "451 4.7.1 Service unavailable - try again later (content filter)";

/// The milters' decision on a message they let through.
#[derive(Debug, Default)]
pub struct Filtered {
    /// The message with the milters' changes; `None`: unchanged.
    pub message: Option<Bytes>,
    /// A milter's quarantine reason (the message goes to Junk).
    pub quarantine: Option<String>,
    /// The milter that had the message discarded: accepted, stored nowhere.
    pub discarded_by: Option<String>,
}

/// Runs `message` past every configured milter; `Err` carries the reply for the client.
pub async fn filter(
    shard: &Rc<Shard>,
    tx: &Transaction,
    message: Bytes,
) -> Result<Filtered, DeliveryError> {
    let config = shard.config();
    let mut filtered = Filtered::default();
    let mut current = message;
    for server in &config.milter.servers {
        let outcome = ask(shard, server, tx, current.clone()).await;
        let m = &shard.metrics;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(reason) => {
                crate::metrics::bump_one(&m.milter, crate::metrics::MILTER_ERROR);
                tracing::warn!(
                    target: "shardmail::antispam",
                    check = "milter",
                    milter = %server.name,
                    id = %tx.queue_id,
                    reason = reason.as_str(),
                    default_action = ?server.default_action,
                    "milter could not be asked"
                );
                match server.default_action {
                    MilterDefault::Tempfail => {
                        return Err(DeliveryError::Refused(UNAVAILABLE.into()));
                    }
                    MilterDefault::Accept => continue,
                }
            }
        };
        let verdict = verdict_name(&outcome);
        crate::metrics::bump_one(&m.milter, crate::metrics::milter_index(verdict));
        log_verdict(server, tx, &outcome, verdict);
        match outcome.verdict {
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                return Err(DeliveryError::Refused(sanitized(&reply)));
            }
            Verdict::Discard => {
                filtered.discarded_by = Some(server.name.clone());
                return Ok(filtered);
            }
            Verdict::Accept => {}
        }
        if let Some(reason) = outcome.quarantine {
            filtered.quarantine = Some(reason);
        }
        if !outcome.edits.is_empty() {
            let (edited, refused) = milter::edit::apply(&current, &outcome.edits);
            if refused > 0 {
                tracing::info!(
                    target: "shardmail::antispam",
                    milter = %server.name,
                    id = %tx.queue_id,
                    refused,
                    "milter header changes with invalid names ignored"
                );
            }
            current = Bytes::from(edited);
            filtered.message = Some(current.clone());
        }
    }
    Ok(filtered)
}

fn verdict_name(outcome: &Outcome) -> &'static str {
    match &outcome.verdict {
        Verdict::Accept if outcome.quarantine.is_some() => "quarantine",
        Verdict::Accept => "accept",
        Verdict::Reject(_) => "reject",
        Verdict::Tempfail(_) => "tempfail",
        Verdict::Discard => "discard",
    }
}

fn log_verdict(server: &MilterServer, tx: &Transaction, outcome: &Outcome, verdict: &str) {
    let reply = match &outcome.verdict {
        Verdict::Reject(r) | Verdict::Tempfail(r) => r.as_str(),
        _ => "-",
    };
    let level_info = verdict != "accept";
    let reason = outcome.quarantine.as_deref().unwrap_or("-");
    if level_info {
        tracing::info!(
            target: "shardmail::antispam",
            check = "milter",
            milter = %server.name,
            id = %tx.queue_id,
            verdict,
            reply,
            reason,
            changes = outcome.edits.len(),
            "milter verdict"
        );
    } else {
        tracing::debug!(
            target: "shardmail::antispam",
            check = "milter",
            milter = %server.name,
            id = %tx.queue_id,
            verdict,
            changes = outcome.edits.len(),
            ignored = outcome.ignored,
            "milter verdict"
        );
    }
}

/// A milter's reply made safe to send on: printable ASCII only, bounded.
fn sanitized(reply: &str) -> String {
    reply
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect()
}

/// One conversation with `server` under its concurrency limit and time budget.
async fn ask(
    shard: &Shard,
    server: &MilterServer,
    tx: &Transaction,
    message: Bytes,
) -> Result<Outcome, String> {
    let budget = server.timeout * CONVERSATION_TIMEOUTS;
    let gate = shard.milter_gate(server);
    let work = async {
        let _permit = gate
            .acquire_permit(1)
            .await
            .map_err(|e| format!("concurrency gate: {e}"))?;
        let edit_max = shard.config().limits.message_size_max;
        match &server.address {
            MilterAddress::Inet(addr) => {
                let stream = TcpStream::connect_timeout(*addr, server.timeout)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let _ = stream.set_nodelay(true);
                converse(stream, server.timeout, tx, message, edit_max).await
            }
            MilterAddress::Unix(path) => {
                let stream = with_timeout(server.timeout, UnixStream::connect(path))
                    .await
                    .map_err(|_| "connect: timed out".to_string())?
                    .map_err(|e| format!("connect: {e}"))?;
                converse(stream, server.timeout, tx, message, edit_max).await
            }
        }
    };
    with_timeout(budget, work)
        .await
        .map_err(|_| format!("no verdict within {}s", budget.as_secs()))?
}

/// Drives one [`Conversation`] over `stream`.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    timeout: Duration,
    tx: &Transaction,
    message: Bytes,
    edit_max: usize,
) -> Result<Outcome, String> {
    let mut conversation = Conversation::new(tx.clone(), message, edit_max);
    let mut decoder = milter::Decoder::default();
    let mut input = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    loop {
        let mut awaiting = false;
        while let Some(out) = conversation.next_packet() {
            pending.extend_from_slice(&out.bytes);
            awaiting = out.await_reply;
            if awaiting || pending.len() >= WRITE_BATCH {
                send(&mut stream, timeout, &mut pending).await?;
            }
            if awaiting {
                break;
            }
        }
        if !awaiting {
            send(&mut stream, timeout, &mut pending).await?;
            return Err("conversation ended without a verdict".into());
        }
        loop {
            let Some(reply) = decoder.next_reply().map_err(|e| e.to_string())? else {
                let n = with_timeout(timeout, stream.read(&mut input))
                    .await
                    .map_err(|_| format!("no reply within {}ms", timeout.as_millis()))?
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("milter closed the connection".into());
                }
                decoder.feed(input.get(..n).unwrap_or(&[]));
                continue;
            };
            match conversation.reply(reply).map_err(|e| e.to_string())? {
                Flow::Next => break,
                Flow::Wait => {}
                Flow::Done => {
                    let mut quit = milter::quit();
                    let _ = send(&mut stream, timeout, &mut quit).await;
                    let _ = stream.close().await;
                    return conversation
                        .outcome()
                        .ok_or_else(|| "no verdict".to_string());
                }
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    timeout: Duration,
    pending: &mut Vec<u8>,
) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    with_timeout(timeout, stream.write_all(pending))
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| format!("write: {e}"))?;
    pending.clear();
    Ok(())
}

/// Each shard's share of a milter's `concurrency`, at least one.
pub fn permits_per_shard(concurrency: u32, shards: usize) -> u64 {
    u64::from(concurrency).div_ceil(shards.max(1) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_split_over_shards() {
        assert_eq!(permits_per_shard(32, 2), 16);
        assert_eq!(permits_per_shard(3, 2), 2);
        assert_eq!(permits_per_shard(1, 8), 1);
    }

    #[test]
    fn replies_from_milters_are_made_safe() {
        assert_eq!(sanitized("550 5.7.1 spam\r\nX"), "550 5.7.1 spam??X");
        assert_eq!(sanitized("550 5.7.1 ünïcode"), "550 5.7.1 ?n?code");
    }
}
