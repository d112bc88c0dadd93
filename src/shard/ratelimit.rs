//! `antispam.rate_limits`: counters per client address, network, user, sender domain
//! or recipient, shared by every shard (one client's connections land on different
//! shards), bounded in memory, forgotten at restart.
//!
//! Each rule counts in fixed windows and estimates the sliding window from the current
//! and the previous one (the previous one weighted by how much of it still overlaps),
//! which is within a few per cent of exact and needs two numbers per key. Keys are
//! hashed with this process's random key, so a client cannot aim collisions at another
//! client's counter. At [`ENTRIES_MAX`] keys the expired ones go first, then half of
//! the rest: an attacker spraying new keys makes counting approximate, never unbounded.
//! Attempts over the limit are counted too, so a client that keeps trying stays
//! refused until it slows down. `Send + Sync`; never blocks beyond one short lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::admission::network;
use crate::config::raw::{RateCount, RateKey};
use crate::config::RateLimit;
use crate::proto::smtp::{Port, RateEvent};

/// Keys tracked in all (each ~48 bytes): a few MiB at most.
pub const ENTRIES_MAX: usize = 200_000;
const PARTS: usize = 16;

/// Who an event is about; a key that does not apply is `None` (no user before AUTH).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub user: Option<&'a str>,
    pub sender_domain: Option<&'a str>,
    pub recipient: Option<&'a str>,
    /// `antispam.exempt_networks`: only `auth_user` rules apply.
    pub exempt: bool,
}

/// A limit that was passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub rule: RateLimit,
    /// The first refusal of this key in this window (log it; later ones are counted).
    pub first: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    current: u64,
    previous: u64,
    logged: bool,
}

/// The shared counters.
#[derive(Debug)]
pub struct RateLimiter {
    rules: RwLock<Arc<Vec<RateLimit>>>,
    parts: Vec<Mutex<HashMap<u64, Window>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    pub fn new(rules: Vec<RateLimit>) -> Arc<RateLimiter> {
        Arc::new(RateLimiter {
            rules: RwLock::new(Arc::new(rules)),
            parts: (0..PARTS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    /// A reload's rules. Counters of rules that stay keep counting (they are keyed by
    /// the rule itself).
    pub fn set_rules(&self, rules: Vec<RateLimit>) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    fn rules(&self) -> Arc<Vec<RateLimit>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts one `count` event for `subject` under every rule that applies, and
    /// returns the first rule now over its limit.
    pub fn hit(&self, count: RateCount, subject: &Subject<'_>, now: Instant) -> Option<Exceeded> {
        let mut exceeded = None;
        for rule in self.rules().iter().filter(|r| r.count == count) {
            if subject.exempt && rule.key != RateKey::AuthUser {
                continue;
            }
            let Some(key) = self.key_of(rule, subject) else {
                continue;
            };
            if let Some(first) = self.count(key, rule, now) {
                exceeded.get_or_insert(Exceeded { rule: *rule, first });
            }
        }
        exceeded
    }

    fn key_of(&self, rule: &RateLimit, s: &Subject<'_>) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        (rule.key, rule.count, rule.window, rule.limit).hash(&mut h);
        match rule.key {
            RateKey::ClientIp => network(s.ip, 32, 64).hash(&mut h),
            RateKey::ClientNet => network(s.ip, 24, 48).hash(&mut h),
            RateKey::AuthUser => hash_lowercase(s.user?, &mut h),
            RateKey::SenderDomain => hash_lowercase(s.sender_domain?, &mut h),
            RateKey::Recipient => hash_lowercase(s.recipient?, &mut h),
        }
        Some(h.finish())
    }

    /// Adds one; `Some(first refusal?)` when the estimate is over the limit.
    fn count(&self, key: u64, rule: &RateLimit, now: Instant) -> Option<bool> {
        let part = self.parts.get((key as usize) % PARTS)?;
        let mut map = part.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= ENTRIES_MAX / PARTS && !map.contains_key(&key) {
            make_room(&mut map, now);
        }
        let w = map.entry(key).or_insert(Window {
            start: now,
            current: 0,
            previous: 0,
            logged: false,
        });
        let elapsed = now.saturating_duration_since(w.start);
        if elapsed >= rule.window * 2 {
            *w = Window {
                start: now,
                current: 0,
                previous: 0,
                logged: false,
            };
        } else if elapsed >= rule.window {
            w.start += rule.window;
            w.previous = w.current;
            w.current = 0;
            w.logged = false;
        }
        w.current += 1;
        let into = now.saturating_duration_since(w.start).as_secs_f64() / rule.window.as_secs_f64();
        let estimate = w.current as f64 + w.previous as f64 * (1.0 - into).max(0.0);
        if estimate <= rule.limit as f64 {
            return None;
        }
        let first = !w.logged;
        w.logged = true;
        Some(first)
    }
}

/// Hashes `s` as if lowercased, without making the lowercase copy (once per RCPT).
fn hash_lowercase(s: &str, h: &mut impl Hasher) {
    for b in s.bytes() {
        h.write_u8(b.to_ascii_lowercase());
    }
}

/// Frees room: first the windows idle for two of the longest a rule may have (7 days;
/// such a window counts for nothing any more), then the older half.
fn make_room(map: &mut HashMap<u64, Window>, now: Instant) {
    let stale = Duration::from_secs(2 * 7 * 86_400);
    map.retain(|_, w| now.saturating_duration_since(w.start) < stale);
    if map.len() >= ENTRIES_MAX / PARTS {
        let mut starts: Vec<Instant> = map.values().map(|w| w.start).collect();
        starts.sort_unstable();
        if let Some(median) = starts.get(starts.len() / 2).copied() {
            map.retain(|_, w| w.start > median);
        }
    }
}

/// The shard's answer to a rate-limited event: `None` to go on, else the reply (and
/// the refusal is logged once per key and window, and counted).
pub fn check(shard: &super::Shard, e: &RateEvent<'_>) -> Option<String> {
    let config = shard.config();
    let antispam = &config.antispam;
    // Client, sender and recipient limits guard the MX port; authenticated users
    // have their own (auth_user) wherever they log in.
    let exempt = e.port != Port::Mx || antispam.exempts(e.ip);
    let sender_domain = e.sender.rsplit_once('@').map(|(_, d)| d);
    let subject = Subject {
        ip: e.ip,
        user: e.user,
        sender_domain,
        recipient: e.recipient,
        exempt,
    };
    let over = shard.rate.hit(e.count, &subject, Instant::now())?;
    crate::metrics::bump_one(&shard.metrics.rate_limited, e.count as usize);
    let rule = over.rule;
    if over.first {
        // A string field: quoted, as it holds spaces.
        let named = rule.to_string();
        tracing::info!(
            target: "shardmail::antispam",
            check = "rate_limit",
            rule = named.as_str(),
            ip = %e.ip,
            user = e.user.unwrap_or("-"),
            from = e.sender,
            to = e.recipient.unwrap_or("-"),
            "rate limit reached; refusing until the client slows down"
        );
    }
    Some(match e.count {
        RateCount::Messages | RateCount::Recipients => {
            format!("451 4.7.1 Rate limit reached ({rule}, antispam.rate_limits); try again later")
        }
        RateCount::Connections | RateCount::FailedCommands => format!(
            "421 4.7.0 {} Too many {} ({rule}, antispam.rate_limits); try again later",
            config.hostname,
            rule.count.name().replace('_', " ")
        ),
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(key: RateKey, count: RateCount, secs: u64, limit: u64) -> RateLimit {
        RateLimit {
            key,
            count,
            window: Duration::from_secs(secs),
            limit,
        }
    }

    fn from(ip: &str) -> Subject<'static> {
        Subject {
            ip: ip.parse().unwrap(),
            user: None,
            sender_domain: None,
            recipient: None,
            exempt: false,
        }
    }

    #[test]
    fn a_burst_is_cut_at_the_limit_and_other_clients_are_not() {
        let r = RateLimiter::new(vec![rule(RateKey::ClientIp, RateCount::Messages, 60, 10)]);
        let t = Instant::now();
        for i in 0..10 {
            assert_eq!(
                r.hit(RateCount::Messages, &from("192.0.2.1"), t),
                None,
                "{i}"
            );
        }
        let over = r.hit(RateCount::Messages, &from("192.0.2.1"), t).unwrap();
        assert!(over.first);
        assert!(
            !r.hit(RateCount::Messages, &from("192.0.2.1"), t)
                .unwrap()
                .first
        );
        assert_eq!(r.hit(RateCount::Messages, &from("192.0.2.2"), t), None);
        // Other counts are other rules.
        assert_eq!(r.hit(RateCount::Connections, &from("192.0.2.1"), t), None);
    }

    #[test]
    fn the_window_slides() {
        let r = RateLimiter::new(vec![rule(RateKey::ClientIp, RateCount::Messages, 60, 10)]);
        let t = Instant::now();
        for _ in 0..10 {
            r.hit(RateCount::Messages, &from("192.0.2.1"), t);
        }
        // Half a window later, half of the last window still counts: 5 + 1 > 10? no.
        let later = t + Duration::from_secs(90);
        for _ in 0..5 {
            assert_eq!(r.hit(RateCount::Messages, &from("192.0.2.1"), later), None);
        }
        assert!(r
            .hit(RateCount::Messages, &from("192.0.2.1"), later)
            .is_some());
        // Two windows of quiet forget everything.
        let much_later = later + Duration::from_secs(121);
        assert_eq!(
            r.hit(RateCount::Messages, &from("192.0.2.1"), much_later),
            None
        );
    }

    #[test]
    fn networks_and_ipv6_prefixes_share_a_counter() {
        let r = RateLimiter::new(vec![
            rule(RateKey::ClientNet, RateCount::Connections, 60, 2),
            rule(RateKey::ClientIp, RateCount::Messages, 60, 1),
        ]);
        let t = Instant::now();
        assert_eq!(r.hit(RateCount::Connections, &from("192.0.2.1"), t), None);
        assert_eq!(r.hit(RateCount::Connections, &from("192.0.2.200"), t), None);
        assert!(r
            .hit(RateCount::Connections, &from("192.0.2.9"), t)
            .is_some());
        assert_eq!(r.hit(RateCount::Connections, &from("192.0.3.1"), t), None);
        // One IPv6 /64 is one client.
        assert_eq!(r.hit(RateCount::Messages, &from("2001:db8::1"), t), None);
        assert!(r
            .hit(RateCount::Messages, &from("2001:db8::ffff:1"), t)
            .is_some());
        assert_eq!(
            r.hit(RateCount::Messages, &from("2001:db8:0:1::1"), t),
            None
        );
    }

    #[test]
    fn exempt_clients_keep_only_the_per_user_limits() {
        let r = RateLimiter::new(vec![
            rule(RateKey::ClientIp, RateCount::Messages, 60, 1),
            rule(RateKey::AuthUser, RateCount::Messages, 3600, 2),
        ]);
        let t = Instant::now();
        let s = Subject {
            user: Some("Alice@example.org"),
            exempt: true,
            ..from("127.0.0.1")
        };
        assert_eq!(r.hit(RateCount::Messages, &s, t), None);
        assert_eq!(r.hit(RateCount::Messages, &s, t), None);
        let over = r.hit(RateCount::Messages, &s, t).unwrap();
        assert_eq!(over.rule.key, RateKey::AuthUser);
        // The same user in other letters, from elsewhere, is the same user.
        let s2 = Subject {
            user: Some("alice@EXAMPLE.org"),
            ..from("192.0.2.1")
        };
        assert_eq!(
            r.hit(RateCount::Messages, &s2, t).unwrap().rule.key,
            RateKey::AuthUser
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_spray_of_keys() {
        let r = RateLimiter::new(vec![rule(RateKey::Recipient, RateCount::Recipients, 60, 5)]);
        let t = Instant::now();
        for i in 0..(ENTRIES_MAX + ENTRIES_MAX / 2) {
            let rcpt = format!("user{i}@example.org");
            let s = Subject {
                recipient: Some(&rcpt),
                ..from("192.0.2.1")
            };
            r.hit(
                RateCount::Recipients,
                &s,
                t + Duration::from_micros(i as u64),
            );
        }
        let total: usize = r.parts.iter().map(|p| p.lock().unwrap().len()).sum();
        assert!(total <= ENTRIES_MAX, "{total}");
    }
}
