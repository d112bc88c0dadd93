//! Where a domain's mail goes: the relay host, a transport override, or the domain's
//! MX hosts and their addresses from the DNS worker. Decides nothing about TLS beyond
//! what the configuration requires; never opens a connection.

use std::net::{IpAddr, SocketAddr};

use super::super::Shard;
use crate::auth::verify::RouteError;
use crate::config::Relay;

/// What the message asks of TLS on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsRequest {
    /// The operator's policy (`queue.tls_required`, the relay's `require_tls`).
    Policy,
    /// REQUIRETLS (RFC 8689): verified TLS to a server offering REQUIRETLS, on a route
    /// we can authenticate, or a bounce with 5.7.10.
    Required,
    /// `TLS-Required: No` (RFC 8689 §5): the sender puts delivery first, so the
    /// recipient domain's TLS policy is not enforced (the relay's still is).
    NotRequired,
}

/// Where to connect for a domain.
pub(super) struct Destination {
    /// Host names and their addresses, in the order to try them.
    pub hosts: Vec<(String, Vec<SocketAddr>)>,
    /// TLS with a verified certificate (web PKI and `queue.tls_ca_file`), or nothing.
    pub verify_tls: bool,
    /// Through the relay host: its AUTH and its own TLS rule apply.
    pub relay: Option<Relay>,
}

pub(super) async fn destination(
    shard: &Shard,
    domain: &str,
    tls: TlsRequest,
) -> Result<Destination, RouteError> {
    let q = &shard.config().queue;
    if let Some(relay) = &q.relay {
        let addrs = match resolve_host_port(shard, &relay.host).await {
            Ok(addrs) => addrs,
            // The relay is ours to fix: never a bounce.
            Err(RouteError::Temporary(r) | RouteError::Permanent { reason: r, .. }) => {
                return Err(RouteError::Temporary(format!("relay host: {r}")));
            }
        };
        return Ok(Destination {
            hosts: vec![(host_of(&relay.host), addrs)],
            verify_tls: tls == TlsRequest::Required,
            relay: Some(relay.clone()),
        });
    }
    let verify_tls = match tls {
        TlsRequest::Policy => q.tls_required.iter().any(|d| d == domain),
        TlsRequest::Required => true,
        TlsRequest::NotRequired => false,
    };
    if let Some(target) = q.transports.get(domain) {
        let addrs = resolve_host_port(shard, target).await?;
        return Ok(Destination {
            hosts: vec![(host_of(target), addrs)],
            verify_tls,
            relay: None,
        });
    }
    if tls == TlsRequest::Required {
        // RFC 8689 §4.2.1: the MX hosts must come from DNSSEC or an MTA-STS policy;
        // neither is implemented yet, so only configured routes qualify.
        return Err(RouteError::Permanent {
            status: "5.7.10",
            reason: format!(
                "REQUIRETLS: the mail servers of {domain} cannot be authenticated (no \
                 MTA-STS or DANE support yet; queue.relay_host or queue.transports can route it)"
            ),
        });
    }
    let Some(auth) = shard.auth.as_ref() else {
        return Err(RouteError::Temporary("no DNS worker".into()));
    };
    let mx = auth.route(domain).await?;
    let hosts = mx
        .into_iter()
        .map(|h| {
            (
                h.name,
                h.addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, q.remote_port))
                    .collect(),
            )
        })
        .collect();
    Ok(Destination {
        hosts,
        verify_tls,
        relay: None,
    })
}

fn host_of(host_port: &str) -> String {
    host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_string()
}

async fn resolve_host_port(shard: &Shard, target: &str) -> Result<Vec<SocketAddr>, RouteError> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| RouteError::Temporary(format!("bad host:port {target}")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| RouteError::Temporary(format!("bad port in {target}")))?;
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let auth = shard
        .auth
        .as_ref()
        .ok_or_else(|| RouteError::Temporary("no DNS worker".into()))?;
    // A host name: route() on it yields its addresses (implicit MX = the host).
    let hosts = auth.route(host).await?;
    Ok(hosts
        .into_iter()
        .flat_map(|h| h.addrs)
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}
