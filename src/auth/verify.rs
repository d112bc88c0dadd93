//! SPF, DKIM, ARC and DMARC verification with mail-auth, on the auth worker's tokio
//! runtime only (mail-auth's DNS is hickory on tokio).
//!
//! Owned bytes in, owned verdicts out: mail-auth's results borrow the message, so
//! everything that crosses back to a shard is converted here ([`SpfVerdict`] keeps the
//! owned `SpfOutput`s; [`MessageVerdict`] carries the finished header text). The DNS
//! cache is ours ([`DnsCache`], bounded by `dns.cache_entries`) so tests can pre-fill it
//! and no query ever leaves the machine. Never called on a shard.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use mail_auth::common::resolver::ToFqdn;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    Parameters, RecordSet, ResolverCache, SpfOutput, SpfResult, Txt, MX,
};

use super::policy::{DmarcKind, MessageVerdict, PublishedPolicy, SpfKind};

/// The resolver: `servers` (`dns.servers`) or, when empty, the system's resolv.conf.
pub fn authenticator(
    servers: &[std::net::SocketAddr],
    timeout: std::time::Duration,
) -> Result<MessageAuthenticator, String> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    if servers.is_empty() {
        // The system's resolvers, with our timeout (mail-auth's own system constructor
        // would keep resolv.conf's options and ignore dns.timeout).
        let (config, mut opts) = mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("dns.servers is empty and /etc/resolv.conf is unusable: {e}"))?;
        opts.timeout = timeout;
        opts.attempts = 2;
        return MessageAuthenticator::new(config, opts)
            .map_err(|e| format!("cannot build a resolver from /etc/resolv.conf: {e}"));
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 2;
    let servers = servers
        .iter()
        .map(|addr| {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            ns
        })
        .collect();
    MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), opts)
        .map_err(|e| format!("dns.servers: cannot build a resolver: {e}"))
}

/// A bounded TTL cache for one record type. Single-threaded (the worker's LocalSet).
pub struct DnsCache<K, V> {
    entries: RefCell<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> DnsCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        DnsCache {
            entries: RefCell::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for DnsCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.borrow_mut();
        match entries.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.borrow_mut().remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= self.capacity {
            // Full: drop what has expired; if that frees nothing, drop half. Bounded
            // memory matters more than the hit rate of a cache this simple.
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                let mut n = 0;
                entries.retain(|_, _| {
                    n += 1;
                    n % 2 == 0
                });
            }
        }
        entries.insert(key, (value, valid_until));
    }
}

/// The shared caches of the auth worker (one per record type).
pub struct Caches {
    pub txt: DnsCache<Box<str>, Txt>,
    pub mx: DnsCache<Box<str>, RecordSet<MX>>,
    pub ipv4: DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub ipv6: DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    pub ptr: DnsCache<IpAddr, RecordSet<Box<str>>>,
}

type CachedParameters<'x, P> = Parameters<
    'x,
    P,
    DnsCache<Box<str>, Txt>,
    DnsCache<Box<str>, RecordSet<MX>>,
    DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    DnsCache<IpAddr, RecordSet<Box<str>>>,
>;

impl Caches {
    /// `entries` bounds each record type's cache.
    pub fn new(entries: usize) -> Caches {
        Caches {
            txt: DnsCache::new(entries),
            mx: DnsCache::new(entries),
            ipv4: DnsCache::new(entries),
            ipv6: DnsCache::new(entries),
            ptr: DnsCache::new(entries),
        }
    }

    fn params<P>(&self, params: P) -> CachedParameters<'_, P> {
        Parameters {
            params,
            cache_txt: Some(&self.txt),
            cache_mx: Some(&self.mx),
            cache_ptr: Some(&self.ptr),
            cache_ipv4: Some(&self.ipv4),
            cache_ipv6: Some(&self.ipv6),
        }
    }

    /// Pre-fills a TXT record (tests, and a closed world without DNS).
    pub fn add_txt(&self, name: &str, value: impl Into<Txt>, valid_until: Instant) {
        let key = name.to_fqdn().into_owned().into_boxed_str();
        self.txt.insert(key, value.into(), valid_until);
    }

    /// Pre-fills an A record set.
    pub fn add_ipv4(&self, name: &str, ips: Vec<Ipv4Addr>, valid_until: Instant) {
        let key = name.to_fqdn().into_owned().into_boxed_str();
        let set = RecordSet {
            rrset: ips.into_boxed_slice().into(),
            dnssec_status: mail_auth::DnssecStatus::Indeterminate,
        };
        self.ipv4.insert(key, set, valid_until);
    }

    /// Pre-fills the PTR names of an address.
    pub fn add_ptr(&self, ip: IpAddr, names: &[&str], valid_until: Instant) {
        let names: Vec<Box<str>> = names.iter().map(|n| Box::from(*n)).collect();
        let set = RecordSet {
            rrset: names.into_boxed_slice().into(),
            dnssec_status: mail_auth::DnssecStatus::Indeterminate,
        };
        self.ptr.insert(ip, set, valid_until);
    }
}

/// What the SMTP transaction knows about the client when MAIL FROM arrives.
#[derive(Debug, Clone)]
pub struct SpfCheck {
    pub ip: IpAddr,
    pub helo: String,
    /// Empty for the null reverse path.
    pub mail_from: String,
}

/// SPF results for HELO and MAIL FROM (owned; kept until the message is checked).
#[derive(Debug, Clone)]
pub struct SpfVerdict {
    pub check: SpfCheck,
    pub helo: SpfOutput,
    pub mail_from: SpfOutput,
}

impl SpfVerdict {
    /// The result the policy acts on (MAIL FROM's, RFC 7208 §2.4).
    pub fn kind(&self) -> SpfKind {
        spf_kind(self.mail_from.result())
    }

    /// The identity SPF checked for MAIL FROM (postmaster@HELO for the null sender).
    pub fn sender(&self) -> String {
        if self.check.mail_from.is_empty() {
            format!("postmaster@{}", self.check.helo)
        } else {
            self.check.mail_from.clone()
        }
    }
}

pub fn spf_kind(r: SpfResult) -> SpfKind {
    match r {
        SpfResult::Pass => SpfKind::Pass,
        SpfResult::Fail => SpfKind::Fail,
        SpfResult::SoftFail => SpfKind::SoftFail,
        SpfResult::Neutral => SpfKind::Neutral,
        SpfResult::TempError => SpfKind::TempError,
        SpfResult::PermError => SpfKind::PermError,
        SpfResult::None => SpfKind::None,
    }
}

/// SPF for the HELO identity and for MAIL FROM (RFC 7208 §2.3, §2.4).
pub async fn check_spf(
    auth: &MessageAuthenticator,
    caches: &Caches,
    hostname: &str,
    check: SpfCheck,
) -> SpfVerdict {
    let helo = auth
        .verify_spf(caches.params(SpfParameters::verify_ehlo(check.ip, &check.helo, hostname)))
        .await;
    let sender = if check.mail_from.is_empty() {
        format!("postmaster@{}", check.helo)
    } else {
        check.mail_from.clone()
    };
    let mail_from = auth
        .verify_spf(caches.params(SpfParameters::verify_mail_from(
            check.ip,
            &check.helo,
            hostname,
            &sender,
        )))
        .await;
    SpfVerdict {
        check,
        helo,
        mail_from,
    }
}

/// DKIM (every signature), ARC and DMARC of a received message, with the SPF verdict of
/// its transaction; returns the decision inputs and the `Authentication-Results:` text.
pub async fn check_message(
    auth: &MessageAuthenticator,
    caches: &Caches,
    hostname: &str,
    spf: &SpfVerdict,
    message: &[u8],
) -> MessageVerdict {
    let ip = spf.check.ip;
    let sender = spf.sender();
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        // Not a parseable RFC 5322 message: nothing to verify beyond SPF.
        let header = AuthenticationResults::new(hostname)
            .with_spf_ehlo_result(&spf.helo, ip, &spf.check.helo)
            .with_spf_mailfrom_result(&spf.mail_from, ip, &sender, &spf.check.helo);
        return MessageVerdict {
            dmarc: DmarcKind::None,
            published: PublishedPolicy::None,
            from_domain: String::new(),
            dkim_temperror: false,
            dkim: "none",
            dkim_domains: Vec::new(),
            header: header_text(&header),
        };
    };
    let dkim = auth.verify_dkim(caches.params(&parsed)).await;
    let arc = auth.verify_arc(caches.params(&parsed)).await;
    let mail_from_domain = sender
        .rsplit_once('@')
        .map_or(spf.check.helo.as_str(), |(_, d)| d);
    let dmarc = auth
        .verify_dmarc(caches.params(DmarcParameters::new(
            &parsed,
            &dkim,
            mail_from_domain,
            &spf.mail_from,
        )))
        .await;
    let header_from = parsed.from();
    let header = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, header_from)
        .with_spf_ehlo_result(&spf.helo, ip, &spf.check.helo)
        .with_spf_mailfrom_result(&spf.mail_from, ip, &sender, &spf.check.helo)
        .with_arc_result(&arc, ip)
        .with_dmarc_result(&dmarc);
    let kind = match dmarc.result() {
        DmarcResult::Pass => DmarcKind::Pass,
        DmarcResult::Fail(_) => DmarcKind::Fail,
        DmarcResult::TempError(_) => DmarcKind::TempError,
        DmarcResult::PermError(_) => DmarcKind::PermError,
        DmarcResult::None => DmarcKind::None,
    };
    let published = match dmarc.policy() {
        mail_auth::dmarc::Policy::Reject => PublishedPolicy::Reject,
        mail_auth::dmarc::Policy::Quarantine => PublishedPolicy::Quarantine,
        _ => PublishedPolicy::None,
    };
    MessageVerdict {
        dmarc: kind,
        published,
        from_domain: dmarc.domain().to_string(),
        dkim_temperror: dkim
            .iter()
            .any(|d| matches!(d.result(), DkimResult::TempError(_))),
        dkim: dkim_summary(dkim.iter().map(|d| d.result())),
        dkim_domains: passing_domains(&dkim),
        header: header_text(&header),
    }
}

/// The `d=` of each signature that passed, lowercase, once each.
fn passing_domains(dkim: &[mail_auth::DkimOutput<'_>]) -> Vec<String> {
    let mut domains: Vec<String> = dkim
        .iter()
        .filter(|d| matches!(d.result(), DkimResult::Pass))
        .filter_map(|d| d.signature().map(|s| s.d.to_ascii_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

/// One word for a message's DKIM results (see [`MessageVerdict::dkim`]).
fn dkim_summary<'r>(results: impl Iterator<Item = &'r DkimResult>) -> &'static str {
    let mut first = "none";
    for r in results {
        let name = match r {
            DkimResult::Pass => return "pass",
            DkimResult::TempError(_) => "temperror",
            DkimResult::PermError(_) => "permerror",
            DkimResult::Neutral(_) => "neutral",
            DkimResult::None => "none",
            _ => "fail",
        };
        if first == "none" {
            first = name;
        }
    }
    first
}

fn header_text(results: &AuthenticationResults<'_>) -> String {
    use mail_auth::common::headers::HeaderWriter;
    results.to_header()
}

/// One host to try for a destination, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a destination has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Final: bounce with this status and reason (null MX, no such domain).
    Permanent {
        status: &'static str,
        reason: String,
    },
    /// Try again later (DNS failure, no reachable address yet).
    Temporary(String),
}

fn not_found(e: &mail_auth::Error) -> bool {
    matches!(
        e,
        mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))
    )
}

/// Forward-confirmed reverse DNS of a client (RFC 8601 `iprev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fcrdns {
    /// A PTR name whose A/AAAA records include the address (the name, no trailing dot).
    Pass(String),
    /// No PTR record, or none of its names points back.
    Fail,
    /// A lookup failed or timed out: no verdict.
    TempError,
}

impl Fcrdns {
    pub fn name(&self) -> &'static str {
        match self {
            Fcrdns::Pass(_) => "pass",
            Fcrdns::Fail => "fail",
            Fcrdns::TempError => "temperror",
        }
    }
}

/// Looks `ip` up in reverse, then the first two names forward (as mail-auth's
/// `iprev` does), through the caches.
pub async fn fcrdns(auth: &MessageAuthenticator, caches: &Caches, ip: IpAddr) -> Fcrdns {
    let names = match auth.ptr_lookup(ip, Some(&caches.ptr)).await {
        Ok(set) => set.rrset.clone(),
        Err(e) if not_found(&e) => return Fcrdns::Fail,
        Err(e) => {
            tracing::debug!(%ip, error = %e, "reverse DNS lookup failed");
            return Fcrdns::TempError;
        }
    };
    let mut temporary = false;
    for name in names.iter().take(2) {
        let found = match ip {
            IpAddr::V4(v4) => auth
                .ipv4_lookup(name.as_ref(), Some(&caches.ipv4))
                .await
                .map(|set| set.rrset.contains(&v4)),
            IpAddr::V6(v6) => auth
                .ipv6_lookup(name.as_ref(), Some(&caches.ipv6))
                .await
                .map(|set| set.rrset.contains(&v6)),
        };
        match found {
            Ok(true) => return Fcrdns::Pass(name.trim_end_matches('.').to_ascii_lowercase()),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(%ip, %name, error = %e, "forward lookup of the PTR name failed");
                temporary |= !not_found(&e);
            }
        }
    }
    if temporary {
        Fcrdns::TempError
    } else {
        Fcrdns::Fail
    }
}

/// How long a DNS list's "not listed" (NXDOMAIN) is remembered: short, so a newly
/// listed spammer is seen within a minute.
const DNSBL_NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The A records of each name, looked up together; a failed lookup is an empty list.
pub async fn dnsbl(
    auth: &MessageAuthenticator,
    caches: &Caches,
    names: &[String],
) -> Vec<Vec<Ipv4Addr>> {
    let lookups = names.iter().map(|name| async move {
        match auth.ipv4_lookup(name.as_str(), Some(&caches.ipv4)).await {
            Ok(set) => set.rrset.to_vec(),
            Err(e) if not_found(&e) => {
                // "Not listed" is the common answer: cached too (as no addresses), or
                // every connection would ask again. Nothing else looks these names up.
                caches.add_ipv4(name, Vec::new(), Instant::now() + DNSBL_NEGATIVE_TTL);
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(%name, error = %e, "DNS list lookup failed; counted as not listed");
                Vec::new()
            }
        }
    });
    futures_util::future::join_all(lookups).await
}

/// MX routing (RFC 5321 §5.1): hosts by ascending preference, equal preferences
/// shuffled; the domain itself when it has no MX; a null MX (RFC 7505) is final.
pub async fn route(
    auth: &MessageAuthenticator,
    caches: &Caches,
    domain: &str,
) -> Result<Vec<MxHost>, RouteError> {
    let mut names: Vec<(u16, String)> = match auth.mx_lookup(domain, Some(&caches.mx)).await {
        Ok(set) => {
            let mut names = Vec::new();
            for mx in set.rrset.iter() {
                for exchange in mx.exchanges.iter() {
                    names.push((mx.preference, exchange.trim_end_matches('.').to_string()));
                }
            }
            if names.iter().any(|(_, n)| n.is_empty()) {
                return Err(RouteError::Permanent {
                    status: "5.1.10",
                    reason: format!("{domain} does not accept mail (null MX, RFC 7505)"),
                });
            }
            names
        }
        Err(e) if not_found(&e) => vec![(0, domain.to_string())], // implicit MX
        Err(e) => {
            return Err(RouteError::Temporary(format!(
                "MX lookup for {domain} failed: {e}"
            )))
        }
    };
    {
        use rand::seq::SliceRandom;
        names.shuffle(&mut rand::thread_rng());
    }
    names.sort_by_key(|(pref, _)| *pref); // stable: equal preferences stay shuffled
    let mut hosts = Vec::new();
    let mut last_error = None;
    for (_, name) in names {
        let lookup = auth
            .ip_lookup(
                &name,
                mail_auth::IpLookupStrategy::Ipv4thenIpv6,
                10,
                Some(&caches.ipv4),
                Some(&caches.ipv6),
            )
            .await;
        match lookup {
            Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost { name, addrs }),
            Ok(_) => {}
            Err(e) => last_error = Some((not_found(&e), e.to_string())),
        }
    }
    if hosts.is_empty() {
        return Err(match last_error {
            Some((true, _)) => RouteError::Permanent {
                status: "5.1.2",
                reason: format!("no mail server found for {domain}"),
            },
            Some((false, e)) => {
                RouteError::Temporary(format!("address lookup for {domain} failed: {e}"))
            }
            None => RouteError::Temporary(format!("no address for the mail servers of {domain}")),
        });
    }
    Ok(hosts)
}
