//! Validation helpers of [`super::Config::validate`]: each turns one raw table or value
//! into its checked form, or an error naming the key. Pure functions of their input.

use std::net::SocketAddr;

use super::raw;
use super::*;

pub(super) fn ratio(key: &str, value: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            key: key.into(),
            reason: format!("{value} is not a share between 0.0 and 1.0"),
        })
    }
}

pub(super) fn host_port(key: &str, value: &str) -> Result<String, ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok {
        Ok(value.to_string())
    } else {
        Err(err(key, format!("`{value}` is not host:port")))
    }
}

pub(super) fn validate_queue(raw: &raw::RawQueue) -> Result<Queue, ConfigError> {
    let retry_min = raw.retry_min.value("queue.retry_min")?;
    let retry_max = raw.retry_max.value("queue.retry_max")?;
    if retry_min.is_zero() || retry_max < retry_min {
        return Err(err(
            "queue.retry_max",
            "must be at least queue.retry_min, which must be > 0",
        ));
    }
    let delay_notice = raw.delay_notice.value("queue.delay_notice")?;
    if raw.connections_max == 0 || raw.connections_per_destination_max == 0 {
        return Err(err(
            "queue.connections_max",
            "connection limits must be at least 1",
        ));
    }
    let relay = match raw.relay_host.as_deref().filter(|h| !h.is_empty()) {
        None => None,
        Some(host) => {
            let require_tls = match raw.relay_tls.as_str() {
                "required" => true,
                "none" => false,
                other => {
                    return Err(err(
                        "queue.relay_tls",
                        format!("`{other}`: expected \"required\" or \"none\""),
                    ))
                }
            };
            let auth = match (&raw.relay_username, &raw.relay_password) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                (None, None) => None,
                _ => {
                    return Err(err(
                        "queue.relay_password",
                        "set both queue.relay_username and queue.relay_password, or neither",
                    ))
                }
            };
            Some(Relay {
                host: host_port("queue.relay_host", host)?,
                auth,
                require_tls,
            })
        }
    };
    let mut transports = std::collections::HashMap::new();
    for (domain, target) in &raw.transports {
        let key = format!("queue.transports.\"{domain}\"");
        transports.insert(domain.to_ascii_lowercase(), host_port(&key, target)?);
    }
    Ok(Queue {
        retry_min,
        retry_max,
        max_age: raw.max_age.value("queue.max_age")?,
        delay_notice: (!delay_notice.is_zero()).then_some(delay_notice),
        remote_port: raw.remote_port,
        connections_max: raw.connections_max,
        connections_per_destination_max: raw.connections_per_destination_max,
        relay,
        transports,
        tls_required: raw
            .tls_required
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        tls_ca: match &raw.tls_ca_file {
            Some(path) => crate::tls::extra_roots(path).map_err(|e| err("queue.tls_ca_file", e))?,
            None => Vec::new(),
        },
    })
}

/// Range checks of the limits that bound abuse (DESIGN.md §10).
pub(super) fn check_new_limits(l: &Limits) -> Result<(), ConfigError> {
    if !(512..=16 << 20).contains(&l.preauth_literal_bytes_max) {
        return Err(err(
            "limits.preauth_literal_bytes_max",
            "must be between 512 bytes and 16MiB",
        ));
    }
    if !(16 * 1024..=64 << 20).contains(&l.output_buffer_bytes_max) {
        return Err(err(
            "limits.output_buffer_bytes_max",
            "must be between 16KiB and 64MiB",
        ));
    }
    for (key, value) in [
        (
            "limits.mailboxes_per_account_max",
            l.mailboxes_per_account_max,
        ),
        (
            "limits.keywords_per_mailbox_max",
            l.keywords_per_mailbox_max,
        ),
        ("limits.connections_per_ip_max", l.connections_per_ip_max),
        ("limits.sessions_per_user_max", l.sessions_per_user_max),
    ] {
        if value == 0 {
            return Err(err(key, "must be at least 1"));
        }
    }
    if l.mailboxes_per_account_max < crate::store::index::DEFAULT_MAILBOXES.len() {
        return Err(err(
            "limits.mailboxes_per_account_max",
            "must leave room for the 5 default mailboxes",
        ));
    }
    for (key, value) in [
        ("limits.preauth_timeout_secs", l.preauth_timeout),
        ("limits.command_timeout_secs", l.command_timeout),
        ("limits.login_backoff_max_secs", l.login_backoff_max),
    ] {
        if value < Duration::from_secs(1) {
            return Err(err(key, "must be at least 1"));
        }
    }
    Ok(())
}

pub(super) fn parse_networks(key: &str, raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, n)| {
            IpNet::parse(n).ok_or_else(|| {
                err(
                    &format!("{key}[{i}]"),
                    format!("`{n}` is not an address or ip/prefix"),
                )
            })
        })
        .collect()
}

/// `store.reserve_free_bytes`: a size, `"N%"` or `"auto"`.
pub(super) fn parse_reserve(raw: &raw::Size) -> Result<Reserve, ConfigError> {
    let key = "store.reserve_free_bytes";
    if let raw::Size::Text(t) = raw {
        let t = t.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Reserve::Auto);
        }
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if p <= 50 => Ok(Reserve::Percent(p)),
                _ => Err(err(key, "a percentage must be between 0% and 50%")),
            };
        }
    }
    raw.bytes(key)
        .map(|b| Reserve::Bytes(b as u64))
        .map_err(|_| {
            err(
                key,
                "expected \"auto\", a percentage such as \"5%\" or a size such as \"1GiB\"",
            )
        })
}

pub(super) fn validate_antispam(raw: &raw::RawAntispam) -> Result<Antispam, ConfigError> {
    let mut rate_limits = Vec::new();
    for (i, r) in raw.rate_limits.iter().enumerate() {
        let key = format!("antispam.rate_limits[{i}]");
        let window = r.window.value(&format!("{key}.window"))?;
        if window < Duration::from_secs(1) || window > Duration::from_secs(7 * 86_400) {
            return Err(err(&format!("{key}.window"), "between 1s and 7 days"));
        }
        if r.limit == 0 {
            return Err(err(
                &format!("{key}.limit"),
                "at least 1 (remove the entry to have no limit)",
            ));
        }
        rate_limits.push(RateLimit {
            key: r.key,
            count: r.count,
            window,
            limit: r.limit,
        });
    }
    if raw.greet_delay_ms > 30_000 {
        return Err(err(
            "antispam.greet_delay_ms",
            "at most 30000 (clients give up)",
        ));
    }
    let mut dnsbl = Vec::new();
    for (i, d) in raw.dnsbl.iter().enumerate() {
        let key = format!("antispam.dnsbl[{i}]");
        let zone = d.zone.trim().trim_end_matches('.').to_ascii_lowercase();
        if zone.is_empty() || zone.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(err(&format!("{key}.zone"), "not a DNS zone name"));
        }
        let mut codes = Vec::new();
        for (j, c) in d.codes.iter().enumerate() {
            codes.push(c.trim().parse().map_err(|_| {
                err(
                    &format!("{key}.codes[{j}]"),
                    "expected an IPv4 answer such as \"127.0.0.2\"",
                )
            })?);
        }
        dnsbl.push(Dnsbl {
            zone,
            weight: d.weight,
            lookup: d.lookup,
            codes,
        });
    }
    if dnsbl.len() > 16 {
        return Err(err(
            "antispam.dnsbl",
            "at most 16 lists (each is a lookup per connection)",
        ));
    }
    Ok(Antispam {
        greet_delay: Duration::from_millis(raw.greet_delay_ms),
        exempt: parse_networks("antispam.exempt_networks", &raw.exempt_networks)?,
        rate_limits,
        dnsbl,
        reject_score: raw.reject_score,
        fcrdns_fail_score: raw.fcrdns_fail_score,
        allow_dkim_domains: raw
            .allow_dkim_domains
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect(),
        junk_score: raw.junk_score,
        greylist: if raw.greylist {
            let delay = raw.greylist_delay.value("antispam.greylist_delay")?;
            let ttl = raw.greylist_ttl.value("antispam.greylist_ttl")?;
            if delay.is_zero() || delay > Duration::from_secs(86_400) {
                return Err(err("antispam.greylist_delay", "between 1s and 1 day"));
            }
            if ttl < Duration::from_secs(86_400) {
                return Err(err("antispam.greylist_ttl", "at least 1 day"));
            }
            Some(Greylisting { delay, ttl })
        } else {
            None
        },
    })
}

pub(super) fn validate_log(raw: &raw::RawLog) -> Result<LogSettings, ConfigError> {
    let level = raw.level.trim().to_string();
    if level.is_empty() || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(err(
            "log.level",
            "not a log filter (e.g. \"info\", \"debug\", \"warn,shardmail::login=info\")",
        ));
    }
    Ok(LogSettings {
        level,
        format: raw.format,
    })
}

pub(super) fn validate_auth(raw: &raw::RawAuth) -> Result<Auth, ConfigError> {
    use crate::auth::policy::{Policies, Policy};
    let mut exempt_networks = Vec::new();
    for (i, n) in raw.exempt_networks.iter().enumerate() {
        let net = IpNet::parse(n).ok_or_else(|| {
            err(
                &format!("auth.exempt_networks[{i}]"),
                format!("`{n}` is not an address or ip/prefix"),
            )
        })?;
        exempt_networks.push(net);
    }
    if raw.queue_depth_max == 0 {
        return Err(err("auth.queue_depth_max", "must be at least 1"));
    }
    let default = Policy {
        spf_fail: raw.spf_fail,
        dmarc_reject: raw.dmarc_reject,
        dmarc_quarantine: raw.dmarc_quarantine,
        temperror: raw.temperror,
    };
    let mut domains = std::collections::HashMap::new();
    for (domain, over) in &raw.domains {
        domains.insert(
            domain.to_ascii_lowercase(),
            Policy {
                spf_fail: over.spf_fail.unwrap_or(default.spf_fail),
                dmarc_reject: over.dmarc_reject.unwrap_or(default.dmarc_reject),
                dmarc_quarantine: over.dmarc_quarantine.unwrap_or(default.dmarc_quarantine),
                temperror: over.temperror.unwrap_or(default.temperror),
            },
        );
    }
    let from_header_match = match raw.from_header_match.as_str() {
        "refuse" => FromHeaderMatch::Refuse,
        "unsigned" => FromHeaderMatch::Unsigned,
        "off" => FromHeaderMatch::Off,
        other => {
            return Err(err(
                "auth.from_header_match",
                format!("`{other}`: expected \"refuse\", \"unsigned\" or \"off\""),
            ))
        }
    };
    let from_header_domains = raw
        .from_header_domains
        .iter()
        .map(|(login, domains)| {
            (
                login.to_ascii_lowercase(),
                domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            )
        })
        .collect();
    Ok(Auth {
        enabled: raw.enabled,
        sender_login_match: raw.sender_login_match,
        exempt_networks,
        queue_depth_max: raw.queue_depth_max,
        policies: Policies { default, domains },
        from_header_match,
        from_header_domains,
    })
}

pub(super) fn parse_addrs(
    key: &str,
    value: &raw::OneOrMany,
) -> Result<Vec<SocketAddr>, ConfigError> {
    value
        .as_slice()
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| err(key, format!("`{s}` is not an ip:port address")))
        })
        .collect()
}
