//! `[milter]`, validated: where each content filter listens and how it is asked.
//!
//! Owns the address syntax (Postfix's `inet:host:port` and `unix:/path`). Never
//! resolves a host name: a milter is addressed by IP (or `localhost`), so reading the
//! configuration does no DNS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{self, MilterDefault};
use super::{err, ConfigError};

/// `[milter]`.
#[derive(Debug, Clone, Default)]
pub struct Milter {
    pub servers: Vec<MilterServer>,
}

/// One milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterServer {
    pub address: MilterAddress,
    /// The address as configured, for logs and replies.
    pub name: String,
    pub timeout: Duration,
    pub default_action: MilterDefault,
    /// Conversations at once, all shards together.
    pub concurrency: u32,
}

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MilterAddress {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// At most this many milters: each is a conversation per message.
const MILTERS_MAX: usize = 8;

pub(super) fn validate_milter(raw: &raw::RawMilter) -> Result<Milter, ConfigError> {
    if raw.servers.len() > MILTERS_MAX {
        return Err(err(
            "milter.servers",
            format!("at most {MILTERS_MAX} milters (each is asked about every message)"),
        ));
    }
    let mut servers = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        let key = format!("milter.servers[{i}]");
        let address = parse_address(s.address.trim()).ok_or_else(|| {
            err(
                &format!("{key}.address"),
                "expected inet:IP:PORT (inet:127.0.0.1:11332, inet:[::1]:11332) \
                 or unix:/absolute/path",
            )
        })?;
        let timeout = s.timeout.value(&format!("{key}.timeout"))?;
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
            return Err(err(&format!("{key}.timeout"), "between 100ms and 10m"));
        }
        if s.concurrency == 0 || s.concurrency > 10_000 {
            return Err(err(&format!("{key}.concurrency"), "between 1 and 10000"));
        }
        servers.push(MilterServer {
            address,
            name: s.address.trim().to_string(),
            timeout,
            default_action: s.default_action,
            concurrency: s.concurrency,
        });
    }
    Ok(Milter { servers })
}

fn parse_address(text: &str) -> Option<MilterAddress> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        return path.is_absolute().then_some(MilterAddress::Unix(path));
    }
    let rest = text.strip_prefix("inet:").unwrap_or(text);
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    Some(MilterAddress::Inet(SocketAddr::new(ip, port)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn postfix_address_syntax() {
        let inet = |s: &str| MilterAddress::Inet(s.parse().unwrap());
        assert_eq!(
            parse_address("inet:127.0.0.1:11332"),
            Some(inet("127.0.0.1:11332"))
        );
        assert_eq!(parse_address("inet:[::1]:11332"), Some(inet("[::1]:11332")));
        assert_eq!(
            parse_address("inet:localhost:8891"),
            Some(inet("127.0.0.1:8891"))
        );
        assert_eq!(
            parse_address("127.0.0.1:8891"),
            Some(inet("127.0.0.1:8891"))
        );
        assert_eq!(
            parse_address("unix:/run/rspamd/milter.sock"),
            Some(MilterAddress::Unix("/run/rspamd/milter.sock".into()))
        );
        for bad in [
            "unix:relative",
            "inet:rspamd.example:11332",
            "inet:127.0.0.1",
            "inet:127.0.0.1:0",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }
}
