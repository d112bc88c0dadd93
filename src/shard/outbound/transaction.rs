//! One delivery attempt for one domain's recipients: find where the domain's mail
//! goes, try its hosts in order over pooled connections, and turn the client
//! session's typed results into an outcome per recipient. Never writes the queue:
//! the attempt in `mod.rs` records what happened.

use std::rc::Rc;

use super::pool::{self, ConnError, Target};
use super::route::{self, Destination, TlsRequest};
use super::Outcome;
use crate::auth::verify::RouteError;
use crate::proto::smtp::client::{Envelope, RcptResult};
use crate::proto::smtp::notify::{MessageDsn, RcptDsn};
use crate::shard::Shard;

/// One SMTP transaction per domain; an outcome per recipient, in order, and where it
/// went (`host[addr] tls=…`, or `-`). The sender's DSN request goes along to a host
/// that offers DSN.
pub(super) async fn deliver_domain(
    shard: &Rc<Shard>,
    domain: &str,
    from: &str,
    rcpts: &[(String, RcptDsn)],
    dsn: &MessageDsn,
    tls: TlsRequest,
    message: &bytes::Bytes,
) -> (Vec<Outcome>, String) {
    let all = |o: Outcome| (vec![o; rcpts.len()], "-".to_string());
    let dest = match route::destination(shard, domain, tls).await {
        Ok(d) => d,
        Err(RouteError::Permanent { status, reason }) => {
            return all(Outcome::Permanent {
                status: status.into(),
                reason,
                mta: None,
            })
        }
        Err(RouteError::Temporary(reason)) => return all(Outcome::Temporary { reason, mta: None }),
    };
    let Destination {
        hosts,
        verify_tls,
        relay,
    } = dest;
    let envelope = Envelope {
        from: from.to_string(),
        rcpts: rcpts.to_vec(),
        message: message.clone(),
        dsn: dsn.clone(),
        require_tls: tls == TlsRequest::Required,
    };
    let mut last = String::from("no address to connect to");
    for (host, addrs) in &hosts {
        for &addr in addrs {
            let target = Target {
                addr,
                host,
                verify_tls,
                relay: relay.as_ref(),
            };
            match attempt_host(shard, target, &envelope).await {
                Ok((results, tls, dsn_passed)) => {
                    // The record RFC 7435 asks for: which transactions went without TLS.
                    tracing::info!(%host, %addr, %tls, rcpts = rcpts.len(), "SMTP transaction done");
                    let outcomes = results
                        .into_iter()
                        .map(|r| outcome(r, host, dsn_passed))
                        .collect();
                    return (outcomes, format!("{host}[{addr}] tls={tls}"));
                }
                Err(e) => {
                    tracing::debug!(%host, %addr, error = %e, "cannot deliver through this host");
                    last = format!("{host} [{addr}]: {e}");
                }
            }
        }
    }
    all(Outcome::Temporary {
        reason: last,
        mta: None,
    })
}

/// The transaction on one host, on a pooled connection or a fresh one; the
/// connection goes back to the pool after a result, and is dropped after an error.
async fn attempt_host(
    shard: &Rc<Shard>,
    target: Target<'_>,
    envelope: &Envelope,
) -> Result<(Vec<RcptResult>, String, bool), ConnError> {
    let mut conn = pool::checkout(shard, target).await?;
    let mut result = conn.transaction(envelope.clone()).await;
    if result.is_err() && conn.reused {
        // The idle connection went stale: once more on a fresh one.
        pool::release(shard, target.addr);
        conn = pool::checkout(shard, target).await?;
        result = conn.transaction(envelope.clone()).await;
    }
    match result {
        Ok(results) => {
            let tls = conn.tls.clone().unwrap_or_else(|| "none".into());
            let dsn = conn.session.capabilities().dsn;
            pool::checkin(shard, target.addr, conn);
            Ok((results, tls, dsn))
        }
        Err(e) => {
            pool::release(shard, target.addr);
            Err(e)
        }
    }
}

/// What the queue records for one recipient's result from `host`.
fn outcome(result: RcptResult, host: &str, dsn_passed: bool) -> Outcome {
    let failure = match result {
        Ok(reply) => {
            let mta = host.to_string();
            return Outcome::Delivered {
                reply,
                mta,
                dsn_passed,
            };
        }
        Err(f) => f,
    };
    let mta = Some(host.to_string());
    // Our own decisions name the server; a server's reply speaks for itself.
    let reason = match failure.code {
        Some(_) => failure.text.clone(),
        None => format!("{host}: {}", failure.text),
    };
    if failure.is_permanent() {
        Outcome::Permanent {
            status: failure.status,
            reason,
            mta,
        }
    } else {
        Outcome::Temporary { reason, mta }
    }
}
