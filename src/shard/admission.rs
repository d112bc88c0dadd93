//! Who may connect and who may try a password: limits shared by every shard.
//!
//! [`Connections`] counts open connections per client address and in all (against the
//! capacity the open-file limit allows); a [`Ticket`] is one admitted connection and
//! gives its slot back when dropped, on whichever shard the connection ends (it
//! travels with a hand-off). [`LoginThrottle`] counts failed logins per client network
//! (an IPv4 address, an IPv6 /64) and per account, with exponential back-off. A
//! source or account with a recent failure has at most one verification running at
//! a time, so a flood of guesses cannot queue ahead of other users' logins; a clean
//! one (an office behind one NAT address, a user's eight sync channels) may run up
//! to [`LOGIN_PARALLEL_CLEAN`] at once.
//!
//! This is the one place where shards share mutable state (DESIGN.md §1 has none):
//! a per-address limit means nothing if each shard counts only its own share. It is
//! touched once when a connection opens, once when it closes, and twice per login
//! attempt, never per command; the maps are split into independently locked parts and
//! every lock is held for a few hash-map operations only. Never does IO.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::IpNet;

/// Independently locked parts of each map (contention stays low with many shards).
const PARTS: usize = 16;

/// Verifications that may run at once for a source or account with no recent
/// failure (one with a failure runs one at a time). The password pool bounds the CPU.
pub const LOGIN_PARALLEL_CLEAN: u32 = 16;

/// Addresses and accounts remembered by the throttle before the oldest are dropped.
const THROTTLE_ENTRIES_MAX: usize = 200_000;

/// A client address as the limits see it: IPv4-mapped IPv6 is IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The network of `ip`: its first `v4_bits` (IPv4, IPv4-mapped IPv6 included) or
/// `v6_bits` (IPv6), tagged with the family so the two never collide. One client is
/// an IPv4 address or an IPv6 /64; one network a /24 or a /48.
pub fn network(ip: IpAddr, v4_bits: u32, v6_bits: u32) -> (u8, u128) {
    let mask_v4 = u32::MAX.checked_shl(32 - v4_bits.min(32)).unwrap_or(0);
    let mask_v6 = u128::MAX.checked_shl(128 - v6_bits.min(128)).unwrap_or(0);
    match canonical(ip) {
        IpAddr::V4(a) => (4, u128::from(u32::from(a) & mask_v4)),
        IpAddr::V6(a) => (6, u128::from(a) & mask_v6),
    }
}

fn part_of<K: Hash>(key: &K) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % PARTS
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.connections_per_ip_max` connections from this address are open.
    PerAddress,
    /// The server is at the connection capacity its open-file limit allows.
    Capacity,
}

/// Open connections, per address and in all.
#[derive(Debug)]
pub struct Connections {
    per_ip: Vec<Mutex<HashMap<IpAddr, usize>>>,
    /// `limits.connections_per_ip_max` and `limits.ip_limit_exempt_networks`; replaced
    /// on reload.
    policy: RwLock<Arc<AddressPolicy>>,
    total: AtomicUsize,
    capacity: usize,
    /// IMAP sessions deflating now (each holds ~0.7 MiB of compressor state: loadtest/compress_probe.py).
    deflating: AtomicUsize,
}

/// The per-address part of admission.
#[derive(Debug)]
struct AddressPolicy {
    per_ip_max: usize,
    exempt: Vec<IpNet>,
}

/// One IMAP session's COMPRESS=DEFLATE slot; dropping it frees the slot. `Send`: it
/// travels with the session's deflate state when the session moves shards.
#[derive(Debug)]
pub struct DeflateTicket {
    table: Arc<Connections>,
}

impl Drop for DeflateTicket {
    fn drop(&mut self) {
        self.table.deflating.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub struct Ticket {
    table: Arc<Connections>,
    /// `None` for an address exempt from the per-address limit.
    ip: Option<IpAddr>,
}

impl Connections {
    /// `capacity`: connections the process can hold (open files minus a reserve).
    pub fn new(per_ip_max: usize, exempt: Vec<IpNet>, capacity: usize) -> Arc<Connections> {
        Arc::new(Connections {
            per_ip: (0..PARTS).map(|_| Mutex::new(HashMap::new())).collect(),
            policy: RwLock::new(Arc::new(AddressPolicy { per_ip_max, exempt })),
            total: AtomicUsize::new(0),
            capacity,
            deflating: AtomicUsize::new(0),
        })
    }

    /// A reload's new per-address limit and exempt networks: connections open now
    /// stay; new ones are admitted by the new policy.
    pub fn set_policy(&self, per_ip_max: usize, exempt: Vec<IpNet>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(AddressPolicy { per_ip_max, exempt });
    }

    fn policy(&self) -> Arc<AddressPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let ip = canonical(ip);
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Capacity);
        }
        let policy = self.policy();
        if policy.exempt.iter().any(|n| n.contains(ip)) {
            return Ok(Ticket {
                table: self.clone(),
                ip: None,
            });
        }
        let Some(part) = self.per_ip.get(part_of(&ip)) else {
            return Ok(Ticket {
                table: self.clone(),
                ip: None,
            });
        };
        let mut map = part.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= policy.per_ip_max {
            drop(map);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerAddress);
        }
        *count += 1;
        Ok(Ticket {
            table: self.clone(),
            ip: Some(ip),
        })
    }
}

/// One descriptor beyond a connection's socket (a spool file), counted against the
/// same capacity so that the open-file limit is never reached.
#[derive(Debug)]
pub struct FileTicket {
    table: Arc<Connections>,
}

impl Drop for FileTicket {
    fn drop(&mut self) {
        self.table.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// A COMPRESS=DEFLATE slot, if fewer than `max` sessions of the server deflate
    /// (`limits.imap_compress_sessions_max`).
    pub fn deflate(self: &Arc<Self>, max: usize) -> Option<DeflateTicket> {
        let taken = self
            .deflating
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        taken.ok().map(|_| DeflateTicket {
            table: self.clone(),
        })
    }

    /// A descriptor slot for a spool file, if the capacity allows.
    pub fn file(self: &Arc<Self>) -> Option<FileTicket> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(FileTicket {
            table: self.clone(),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.total.fetch_sub(1, Ordering::AcqRel);
        let Some(ip) = self.ip else { return };
        if let Some(part) = self.table.per_ip.get(part_of(&ip)) {
            let mut map = part.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = map.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// What the throttle keys on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// An IPv4 address, or the /64 of an IPv6 one (one subscriber's allocation).
    Source((u8, u128)),
    /// A lowercased login name (whether or not the account exists).
    Account(String),
}

fn source_key(ip: IpAddr) -> Key {
    Key::Source(network(ip, 32, 64))
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
    /// Verifications for this key running now (on any shard).
    in_flight: u32,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            last_failure: now,
            locked_until: None,
            in_flight: 0,
        }
    }

    /// Verifications this key may have running at once.
    fn parallel(&self) -> u32 {
        if self.failures > 0 {
            1
        } else {
            LOGIN_PARALLEL_CLEAN
        }
    }
}

/// Throttle settings (`limits.login_*`).
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub failures_before_backoff: u32,
    pub backoff_max: Duration,
    pub memory: Duration,
    /// Sources not throttled by address (the per-account limit still applies).
    pub exempt: Vec<IpNet>,
}

/// Failed-login counters shared by every shard and protocol.
#[derive(Debug)]
pub struct LoginThrottle {
    parts: Vec<Mutex<HashMap<Key, Record>>>,
    /// Replaced on reload; records already kept stay.
    config: RwLock<Arc<ThrottleConfig>>,
}

/// The throttle's answer before a password is checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Verify now; report the outcome with [`LoginThrottle::finished`].
    Go(Attempt),
    /// Another verification for this source or account is running: ask again soon.
    Wait,
    /// Locked out for this long: answer with a temporary failure, compute no hash.
    Locked(Duration),
}

/// A verification the throttle let through (its keys are marked in flight).
#[derive(Debug, PartialEq, Eq)]
pub struct Attempt {
    source: Option<Key>,
    account: Key,
}

/// An [`Attempt`] being verified: if it is dropped before [`InFlight::finish`] (the
/// task went away), its keys are released without counting a failure.
#[derive(Debug)]
pub struct InFlight<'t> {
    throttle: &'t LoginThrottle,
    attempt: Option<Attempt>,
}

impl<'t> InFlight<'t> {
    pub fn new(throttle: &'t LoginThrottle, attempt: Attempt) -> InFlight<'t> {
        InFlight {
            throttle,
            attempt: Some(attempt),
        }
    }

    pub fn finish(mut self, ok: bool, now: Instant) {
        if let Some(a) = self.attempt.take() {
            self.throttle.finished(a, ok, now);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.attempt.take() {
            self.throttle.release(a);
        }
    }
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> Arc<LoginThrottle> {
        Arc::new(LoginThrottle {
            parts: (0..PARTS).map(|_| Mutex::new(HashMap::new())).collect(),
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// A reload's new `limits.login_*` settings.
    pub fn set_config(&self, config: ThrottleConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    fn config(&self) -> Arc<ThrottleConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn with<T>(&self, key: &Key, f: impl FnOnce(&mut HashMap<Key, Record>) -> T) -> T {
        let part = self.parts.get(part_of(key)).unwrap_or_else(|| {
            // PARTS > 0, so part_of is always in range; keep a fallback anyway.
            &self.parts[0]
        });
        let mut map = part.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > THROTTLE_ENTRIES_MAX / PARTS {
            let memory = self.config().memory;
            let now = Instant::now();
            map.retain(|_, r| r.in_flight > 0 || now.duration_since(r.last_failure) < memory);
            if map.len() > THROTTLE_ENTRIES_MAX / PARTS {
                map.retain(|_, r| r.in_flight > 0);
            }
        }
        f(&mut map)
    }

    /// May `user` try a password from `ip` now?
    pub fn gate(&self, ip: IpAddr, user: &str, now: Instant) -> Gate {
        let exempt = self
            .config()
            .exempt
            .iter()
            .any(|n| n.contains(canonical(ip)));
        let source = (!exempt).then(|| source_key(ip));
        let account = Key::Account(user.to_ascii_lowercase());
        let memory = self.config().memory;
        let fresh = |r: &Record| now.duration_since(r.last_failure) < memory || r.in_flight > 0;
        // A source that never failed is not held back by the account's lock-out: a
        // flood of guesses against an account must not lock its owner out.
        let source_failures = match &source {
            Some(k) => self.with(k, |m| {
                m.get(k).filter(|r| fresh(r)).map_or(0, |r| r.failures)
            }),
            None => 1, // exempt sources: only the account counts
        };
        let mut keys: Vec<&Key> = Vec::new();
        if let Some(k) = &source {
            keys.push(k);
        }
        if source_failures > 0 {
            keys.push(&account);
        }
        for key in &keys {
            let state = self.with(key, |m| m.get(*key).copied());
            if let Some(r) = state.filter(|r| fresh(r)) {
                if let Some(until) = r.locked_until.filter(|u| *u > now) {
                    return Gate::Locked(until - now);
                }
                if r.in_flight >= r.parallel() {
                    return Gate::Wait;
                }
            }
        }
        // Mark every key in flight (the account too, so guesses from many sources
        // against one account run one at a time).
        let mut marked: Vec<&Key> = Vec::new();
        for key in source.iter().chain(std::iter::once(&account)) {
            let busy = self.with(key, |m| {
                let r = m.entry(key.clone()).or_insert_with(|| Record::new(now));
                if r.in_flight >= r.parallel() {
                    true
                } else {
                    r.in_flight += 1;
                    false
                }
            });
            if busy {
                for k in marked {
                    self.with(k, |m| {
                        if let Some(r) = m.get_mut(k) {
                            r.in_flight = r.in_flight.saturating_sub(1);
                        }
                    });
                }
                return Gate::Wait;
            }
            marked.push(key);
        }
        Gate::Go(Attempt { source, account })
    }

    /// Clears an attempt's in-flight marks without recording an outcome.
    fn release(&self, attempt: Attempt) {
        for key in attempt
            .source
            .iter()
            .chain(std::iter::once(&attempt.account))
        {
            self.with(key, |m| {
                if let Some(r) = m.get_mut(key) {
                    r.in_flight = r.in_flight.saturating_sub(1);
                }
            });
        }
    }

    /// The outcome of an attempt [`LoginThrottle::gate`] let through.
    pub fn finished(&self, attempt: Attempt, ok: bool, now: Instant) {
        let config = self.config();
        for key in attempt
            .source
            .iter()
            .chain(std::iter::once(&attempt.account))
        {
            self.with(key, |m| {
                if ok {
                    // A success forgives; others still running keep their count.
                    match m.get_mut(key) {
                        Some(r) if r.in_flight > 1 => {
                            r.in_flight -= 1;
                            r.failures = 0;
                            r.locked_until = None;
                        }
                        _ => {
                            m.remove(key);
                        }
                    }
                    return;
                }
                let r = m.entry(key.clone()).or_insert_with(|| Record::new(now));
                r.in_flight = r.in_flight.saturating_sub(1);
                if now.duration_since(r.last_failure) >= config.memory {
                    r.failures = 0;
                }
                r.failures = r.failures.saturating_add(1);
                r.last_failure = now;
                if r.failures >= config.failures_before_backoff {
                    let doublings = (r.failures - config.failures_before_backoff).min(30);
                    let backoff = Duration::from_secs(1u64 << doublings).min(config.backoff_max);
                    r.locked_until = Some(now + backoff);
                }
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn throttle() -> Arc<LoginThrottle> {
        LoginThrottle::new(ThrottleConfig {
            failures_before_backoff: 3,
            backoff_max: Duration::from_secs(60),
            memory: Duration::from_secs(600),
            exempt: Vec::new(),
        })
    }

    fn go(g: Gate) -> Attempt {
        match g {
            Gate::Go(a) => a,
            other => panic!("expected Go, got {other:?}"),
        }
    }

    #[test]
    fn backs_off_exponentially_and_forgives_a_success() {
        let t = throttle();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            let a = go(t.gate(ip, "bob@x", now));
            t.finished(a, false, now);
        }
        assert_eq!(
            t.gate(ip, "bob@x", now),
            Gate::Locked(Duration::from_secs(1))
        );
        // Another address of the same /64 is the same source (IPv6), another IPv4
        // address is not — and it never failed, so the account lock does not hold it.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = go(t.gate(other, "bob@x", now));
        t.finished(a, true, now);
        let later = now + Duration::from_secs(2);
        let a = go(t.gate(ip, "carol@x", later));
        t.finished(a, false, later);
        assert_eq!(
            t.gate(ip, "carol@x", later),
            Gate::Locked(Duration::from_secs(2))
        );
    }

    #[test]
    fn clean_sources_and_accounts_verify_in_parallel_up_to_a_bound() {
        let t = throttle();
        let now = Instant::now();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let running: Vec<Attempt> = (0..LOGIN_PARALLEL_CLEAN)
            .map(|_| go(t.gate(ip, "bob@x", now)))
            .collect();
        assert_eq!(t.gate(ip, "bob@x", now), Gate::Wait);
        for a in running {
            t.finished(a, true, now);
        }
        assert!(matches!(t.gate(ip, "bob@x", now), Gate::Go(_)));
    }

    #[test]
    fn one_verification_at_a_time_after_a_failure() {
        let t = throttle();
        let now = Instant::now();
        let first = go(t.gate("198.51.100.1".parse().unwrap(), "bob@x", now));
        t.finished(first, false, now);
        let a = go(t.gate("198.51.100.1".parse().unwrap(), "bob@x", now));
        assert_eq!(
            t.gate("198.51.100.2".parse().unwrap(), "bob@x", now),
            Gate::Wait
        );
        assert_eq!(
            t.gate("198.51.100.1".parse().unwrap(), "eve@x", now),
            Gate::Wait
        );
        t.finished(a, false, now);
        let b = go(t.gate("198.51.100.2".parse().unwrap(), "bob@x", now));
        t.finished(b, true, now);
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let t = throttle();
        let now = Instant::now();
        for i in 0..3 {
            let ip: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            let a = go(t.gate(ip, &format!("u{i}@x"), now));
            t.finished(a, false, now);
        }
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(matches!(t.gate(same_64, "new@x", now), Gate::Locked(_)));
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(matches!(t.gate(other_64, "new@x", now), Gate::Go(_)));
    }

    #[test]
    fn connections_per_address_and_capacity() {
        let c = Connections::new(2, vec![IpNet::parse("10.0.0.0/8").unwrap()], 4);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let t1 = c.admit(a).unwrap();
        let _t2 = c.admit("::ffff:192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(c.admit(a).unwrap_err(), Refusal::PerAddress);
        drop(t1);
        let _t3 = c.admit(a).unwrap();
        // Exempt addresses have no per-address limit but count toward capacity.
        let _e1 = c.admit("10.1.1.1".parse().unwrap()).unwrap();
        let _e2 = c.admit("10.1.1.1".parse().unwrap()).unwrap();
        assert_eq!(
            c.admit("10.1.1.1".parse().unwrap()).unwrap_err(),
            Refusal::Capacity
        );
        assert_eq!(c.open(), 4);
    }
}
