//! The MX port's checks before the greeting, like Postfix's postscreen: the connection
//! rate limit (`antispam.rate_limits`, `count = "connections"`), DNS block- and
//! allowlists (`antispam.dnsbl`, looked up through the DNS worker while the greeting
//! delay runs), and with `antispam.greet_delay_ms` a client that talks before the
//! greeting (spamware does; RFC 5321 §4.3.1 clients wait).
//!
//! Owns the refusals written before a session exists and the score a session starts
//! with. Never blocks the shard: the lookups run on the worker, the waits are timers.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use super::conn::{with_timeout, Stream};
use super::Shard;
use crate::auth::verify::Fcrdns;
use crate::config::raw::{DnsblLookup, RateCount};
use crate::config::Dnsbl;
use crate::proto::smtp::{Port, RateEvent};

/// How long a refusal before the greeting may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the checks found about a client that may go on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screened {
    /// The DNS lists' weights added up (negative: allowlisted).
    pub score: i64,
    /// The lists that matched, comma-separated (for headers and the log); `fcrdns`
    /// when the missing reverse DNS added to the score.
    pub lists: String,
    /// The client's forward-confirmed host name.
    pub client_name: Option<String>,
    /// The reverse DNS verdict: `pass`, `fail`, `temperror`, or `-` (not checked).
    pub fcrdns: &'static str,
    /// The client was screened (MX port, outside `antispam.exempt_networks`): the
    /// domain lists apply to its mail too.
    pub checked: bool,
}

impl Screened {
    /// An unchecked client (exempt, or not on the MX port).
    pub fn unchecked() -> Screened {
        Screened {
            fcrdns: "-",
            ..Screened::default()
        }
    }

    /// Adds another check's score and lists.
    pub fn add(&mut self, other: &Screened) {
        if !other.lists.is_empty() {
            self.listed(&other.lists, other.score);
        }
    }

    fn listed(&mut self, name: &str, weight: i64) {
        self.score += weight;
        if !self.lists.is_empty() {
            self.lists.push(',');
        }
        self.lists.push_str(name);
    }
}

/// Runs the checks; `None`: refused (the reply is written).
pub async fn screen(shard: &Rc<Shard>, stream: &mut Stream, ip: IpAddr) -> Option<Screened> {
    let event = RateEvent {
        count: RateCount::Connections,
        ip,
        port: Port::Mx,
        user: None,
        sender: "",
        recipient: None,
    };
    if let Some(reply) = super::ratelimit::check(shard, &event) {
        refuse(stream, &reply).await;
        return None;
    }
    let config = shard.config();
    let antispam = &config.antispam;
    if antispam.exempts(ip) {
        return Some(Screened::unchecked());
    }
    let lookups = futures_lite::future::zip(lookup(shard, ip), reverse(shard, ip));
    let (talked_first, (mut screened, reversed)) =
        futures_lite::future::zip(talks_first(stream, antispam.greet_delay), lookups).await;
    screened.checked = true;
    screened.fcrdns = reversed.as_ref().map_or("-", |r| r.name());
    if let Some(r) = &reversed {
        let index = match r {
            Fcrdns::Pass(_) => 0,
            Fcrdns::Fail => 1,
            Fcrdns::TempError => 2,
        };
        crate::metrics::bump_one(&shard.metrics.fcrdns, index);
    }
    match reversed {
        Some(Fcrdns::Pass(name)) => screened.client_name = Some(name),
        Some(Fcrdns::Fail) if antispam.fcrdns_fail_score != 0 => {
            screened.listed("fcrdns", antispam.fcrdns_fail_score);
        }
        _ => {}
    }
    match talked_first {
        Some(true) => {
            crate::metrics::add(&shard.metrics.pregreet, 1);
            tracing::info!(
                target: "shardmail::antispam",
                check = "pregreet",
                ip = %ip,
                delay_ms = antispam.greet_delay.as_millis() as u64,
                "client talked before the greeting; refused"
            );
            let reply = format!(
                "554 5.7.1 {} Protocol error: you talked before my greeting \
                 (antispam.greet_delay_ms)",
                config.hostname
            );
            refuse(stream, &reply).await;
            return None;
        }
        None => return None, // gone
        Some(false) => {}
    }
    if screened.lists.is_empty() {
        return Some(screened);
    }
    let refused = screened.score >= antispam.reject_score;
    tracing::info!(
        target: "shardmail::antispam",
        check = "dnsbl",
        ip = %ip,
        score = screened.score,
        lists = screened.lists.as_str(),
        refused,
        "client listed"
    );
    if !refused {
        return Some(screened);
    }
    crate::metrics::add(&shard.metrics.dnsbl_rejected, 1);
    let reply = format!(
        "554 5.7.1 {} Service unavailable; client [{ip}] blocked using {} (antispam.dnsbl)",
        config.hostname, screened.lists
    );
    refuse(stream, &reply).await;
    None
}

/// Whether the client sent anything within `delay` (`Some(false)` at once when
/// `delay` is zero); `None` when it went away.
async fn talks_first(stream: &mut Stream, delay: Duration) -> Option<bool> {
    if delay.is_zero() {
        return Some(false);
    }
    let mut probe = [0u8; 64];
    match with_timeout(delay, stream.read(&mut probe)).await {
        Err(_) => Some(false), // quiet for the whole delay: a well-behaved client
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(_)) => Some(true),
    }
}

/// Every client-address list's verdict on `ip`, added up.
async fn lookup(shard: &Shard, ip: IpAddr) -> Screened {
    let reversed = reversed(ip);
    let (screened, _) = ask_lists(shard, DnsblLookup::ClientIp, &[reversed]).await;
    screened
}

/// The verdicts of the lists of kind `lookup` on each of `labels` (`4.3.2.1`,
/// `sender.example`), added up; also the labels an allowlist (a negative weight)
/// listed. A lookup that fails lists nobody.
pub async fn ask_lists(
    shard: &Shard,
    lookup: DnsblLookup,
    labels: &[String],
) -> (Screened, Vec<String>) {
    let config = shard.config();
    let lists: Vec<_> = config
        .antispam
        .dnsbl
        .iter()
        .filter(|l| l.lookup == lookup)
        .collect();
    let mut screened = Screened::default();
    let mut allowed = Vec::new();
    let Some(auth) = shard.auth.as_ref() else {
        return (screened, allowed);
    };
    if lists.is_empty() || labels.is_empty() {
        return (screened, allowed);
    }
    let pairs: Vec<(&Dnsbl, &String)> = labels
        .iter()
        .flat_map(|label| lists.iter().map(move |list| (*list, label)))
        .collect();
    let names = pairs
        .iter()
        .map(|(list, label)| format!("{label}.{}.", list.zone))
        .collect();
    let Ok(answers) = auth.dnsbl(names).await else {
        return (screened, allowed); // the worker is busy: nobody is listed
    };
    for ((list, label), answer) in pairs.into_iter().zip(answers) {
        if list.lists(&answer) {
            if lookup == DnsblLookup::ClientIp {
                screened.listed(&list.zone, list.weight);
            } else {
                screened.listed(&format!("{label}@{}", list.zone), list.weight);
            }
            if list.weight < 0 {
                allowed.push(label.clone());
            }
        }
    }
    (screened, allowed)
}

/// The client's forward-confirmed reverse DNS; `None` without the DNS worker or
/// when it is busy.
async fn reverse(shard: &Shard, ip: IpAddr) -> Option<Fcrdns> {
    shard.auth.as_ref()?.fcrdns(ip).await.ok()
}

/// The DNS list query label of `ip` (RFC 5782 §2.1, §2.4): `4.3.2.1` for 1.2.3.4, the
/// 32 nibbles in reverse for IPv6.
pub fn reversed(ip: IpAddr) -> String {
    match super::admission::canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.join(".")
        }
    }
}

async fn refuse(stream: &mut Stream, reply: &str) {
    let line = format!("{reply}\r\n");
    let _ = with_timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_labels_follow_rfc_5782() {
        assert_eq!(reversed("192.0.2.99".parse().expect("ip")), "99.2.0.192");
        assert_eq!(
            reversed("::ffff:192.0.2.1".parse().expect("ip")),
            "1.2.0.192"
        );
        assert_eq!(
            reversed("2001:db8:1:2:3:4:567:89ab".parse().expect("ip")),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
        );
    }
}
