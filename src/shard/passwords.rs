//! Password verification shared by every shard: a pool of threads for argon2 and the
//! verified-login cache.
//!
//! [`Passwords`] owns a few OS threads (`limits.password_threads`, default one per
//! core), so never more argon2 runs at once than the host has cores, whatever the
//! number of shards or connections. Jobs wait in a fair queue: each client source (an
//! IPv4 address, an IPv6 /64) has its own line and the threads serve the lines in
//! turn, so one address's burst of logins waits behind itself and not in front of
//! everyone else's. The queue is bounded in all (`PASSWORD_QUEUE_MAX`) and per source
//! (`PASSWORD_QUEUE_PER_SOURCE_MAX`); past either, a login is answered "try later"
//! without computing a hash. Shards await a oneshot, so a reactor never blocks here.
//!
//! Logins of one account that arrive while its password is being verified wait for
//! that run and look in the cache again, so a client opening several connections at
//! once costs one argon2 run. The cache (`limits.auth_cache_secs`) remembers a verified login as an HMAC, under
//! a key made at start-up, of the account, its stored hash and the password: memory
//! never holds a password or anything that can be checked offline, and a changed
//! password (a different stored hash) or a deleted account misses at once.
//!
//! Never parses a protocol, never touches the user database or the store.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_channel::oneshot;

/// Logins waiting for a verification thread, in all.
pub const PASSWORD_QUEUE_MAX: usize = 4096;
/// Logins of one source waiting for a verification thread.
pub const PASSWORD_QUEUE_PER_SOURCE_MAX: usize = 64;
/// Logins of one account waiting for its running verification; more verify on their
/// own (the list is bounded, the pool's queue still bounds the work).
pub const WAITING_PER_ACCOUNT_MAX: usize = 64;
/// Verified logins the cache remembers before it starts over (bounded memory).
pub const AUTH_CACHE_ENTRIES_MAX: usize = 100_000;

/// One source's line in the queue.
type Source = (u8, u128);

/// The answer to one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Match,
    Mismatch,
    /// The queue was full: no hash was computed; the client should try later.
    Busy,
}

struct Job {
    hash: String,
    password: String,
    reply: oneshot::Sender<bool>,
}

#[derive(Default)]
struct Queue {
    lines: HashMap<Source, VecDeque<Job>>,
    /// Sources with waiting jobs, in the order they are served.
    turn: VecDeque<Source>,
    waiting: usize,
    closed: bool,
}

impl Queue {
    fn push(&mut self, source: Source, job: Job) -> Result<(), Job> {
        let line = self.lines.entry(source).or_default();
        if self.waiting >= PASSWORD_QUEUE_MAX || line.len() >= PASSWORD_QUEUE_PER_SOURCE_MAX {
            return Err(job);
        }
        if line.is_empty() {
            self.turn.push_back(source);
        }
        line.push_back(job);
        self.waiting += 1;
        Ok(())
    }

    /// The first job of the source whose turn it is; that source goes to the back.
    fn pop(&mut self) -> Option<Job> {
        let source = self.turn.pop_front()?;
        let line = self.lines.get_mut(&source)?;
        let job = line.pop_front();
        if line.is_empty() {
            self.lines.remove(&source);
        } else {
            self.turn.push_back(source);
        }
        if job.is_some() {
            self.waiting -= 1;
        }
        job
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Verification threads, their queue and the verified-login cache.
pub struct Passwords {
    shared: Arc<Shared>,
    cache: Mutex<HashMap<String, (ring::hmac::Tag, Instant)>>,
    /// Accounts whose password is being verified now, with the logins waiting to
    /// look in the cache when that ends (a mail client opening five connections at
    /// once pays one argon2 run, not five).
    pending: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Made at start-up: cached tags mean nothing outside this process.
    cache_key: ring::hmac::Key,
}

impl Passwords {
    /// Starts `threads` verification threads (0 = one per core).
    pub fn start(threads: usize) -> Result<Arc<Passwords>, String> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("passwords-{i}"))
                .spawn(move || serve(&shared))
                .map_err(|e| format!("cannot start a password thread: {e}"))?;
        }
        let cache_key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .map_err(|_| "cannot generate the login cache key".to_string())?;
        Ok(Arc::new(Passwords {
            shared,
            cache: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            cache_key,
        }))
    }

    /// Checks `password` against the PHC string `hash` on a pool thread, queued in
    /// `ip`'s line.
    pub async fn verify(&self, ip: IpAddr, hash: String, password: String) -> Verified {
        let (reply, answer) = oneshot::channel();
        let source = super::admission::network(ip, 32, 64);
        {
            let mut queue = lock(&self.shared.queue);
            if queue.closed
                || queue
                    .push(
                        source,
                        Job {
                            hash,
                            password,
                            reply,
                        },
                    )
                    .is_err()
            {
                return Verified::Busy;
            }
        }
        self.shared.ready.notify_one();
        match answer.await {
            Ok(true) => Verified::Match,
            Ok(false) => Verified::Mismatch,
            Err(_) => Verified::Busy, // the pool is shutting down
        }
    }

    /// What a cache entry signs: the three parts, each with its length (so no two
    /// different triples sign the same bytes).
    fn message(user: &str, stored_hash: &str, password: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(24 + user.len() + stored_hash.len() + password.len());
        for part in [user, stored_hash, password] {
            m.extend_from_slice(&(part.len() as u64).to_le_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        m
    }

    /// Whether `user` (whose stored hash is `stored_hash`) logged in with `password`
    /// less than `limits.auth_cache_secs` ago.
    pub fn cached(&self, user: &str, stored_hash: &str, password: &str) -> bool {
        let entry = lock(&self.cache).get(user).cloned();
        let Some((tag, until)) = entry else {
            return false;
        };
        let message = Self::message(user, stored_hash, password);
        until > Instant::now()
            && ring::hmac::verify(&self.cache_key, &message, tag.as_ref()).is_ok()
    }

    /// Remembers a verified login for `ttl`.
    pub fn remember(&self, user: &str, stored_hash: &str, password: &str, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let tag = ring::hmac::sign(&self.cache_key, &Self::message(user, stored_hash, password));
        let mut cache = lock(&self.cache);
        if cache.len() >= AUTH_CACHE_ENTRIES_MAX {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= AUTH_CACHE_ENTRIES_MAX {
                cache.clear(); // the next logins refill it
            }
        }
        cache.insert(user.to_string(), (tag, Instant::now() + ttl));
    }

    /// Either joins a verification of `user` already running (the receiver fires when
    /// it ends: look in the cache again) or, if none is, marks this caller as the one
    /// running it until the returned [`Pending`] is dropped.
    pub fn join_or_lead<'p>(&'p self, user: &str) -> Result<Pending<'p>, oneshot::Receiver<()>> {
        let mut pending = lock(&self.pending);
        if let Some(waiting) = pending.get_mut(user) {
            if waiting.len() < WAITING_PER_ACCOUNT_MAX {
                let (done, wait) = oneshot::channel();
                waiting.push(done);
                return Err(wait);
            }
            // Many waiting already: this one verifies on its own (bounded list).
            return Ok(Pending { owner: None });
        }
        pending.insert(user.to_string(), Vec::new());
        Ok(Pending {
            owner: Some((self, user.to_string())),
        })
    }

    /// Forgets every cached login (the user database or the settings changed).
    pub fn forget_all(&self) {
        lock(&self.cache).clear();
    }

    /// Stops the threads once the queue is empty; later logins get [`Verified::Busy`].
    pub fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }
}

/// A verification other logins of the same account may be waiting for; dropping it
/// (after the result is in the cache, or when the login went away) wakes them.
pub struct Pending<'p> {
    owner: Option<(&'p Passwords, String)>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some((passwords, user)) = self.owner.take() {
            let waiting = lock(&passwords.pending).remove(&user).unwrap_or_default();
            for done in waiting {
                let _ = done.send(());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One verification thread: takes the next job in turn, answers it, until closed.
fn serve(shared: &Shared) {
    loop {
        let job = {
            let mut queue = lock(&shared.queue);
            loop {
                if let Some(job) = queue.pop() {
                    break job;
                }
                if queue.closed {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        // The waiting login may have gone away (its connection closed): skip the work.
        if job.reply.is_canceled() {
            continue;
        }
        let ok = crate::users::verify_password(&job.hash, &job.password);
        let _ = job.reply.send(ok);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn job() -> (Job, oneshot::Receiver<bool>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                hash: String::new(),
                password: String::new(),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn sources_are_served_in_turn() {
        let mut q = Queue::default();
        let (a, b) = ((4, 1), (4, 2));
        let mut keep = Vec::new();
        for (source, tag) in [(a, "a1"), (a, "a2"), (a, "a3"), (b, "b1")] {
            let (mut j, rx) = job();
            j.hash = tag.to_string();
            q.push(source, j).map_err(|_| ()).unwrap();
            keep.push(rx);
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|j| j.hash).collect();
        assert_eq!(order, ["a1", "b1", "a2", "a3"]);
        assert_eq!(q.waiting, 0);
        assert!(q.lines.is_empty() && q.turn.is_empty());
    }

    #[test]
    fn a_source_cannot_fill_the_queue() {
        let mut q = Queue::default();
        let mut keep = Vec::new();
        for _ in 0..PASSWORD_QUEUE_PER_SOURCE_MAX {
            let (j, rx) = job();
            assert!(q.push((4, 7), j).is_ok());
            keep.push(rx);
        }
        let (j, _rx) = job();
        assert!(q.push((4, 7), j).is_err(), "past the per-source bound");
        let (j, _rx2) = job();
        assert!(q.push((4, 8), j).is_ok(), "another source still gets in");
    }

    #[test]
    fn the_cache_misses_on_a_new_password_or_stored_hash() {
        let p = Passwords::start(1).unwrap();
        p.remember("a@x.example", "$h1", "pw", Duration::from_secs(60));
        assert!(p.cached("a@x.example", "$h1", "pw"));
        assert!(!p.cached("a@x.example", "$h1", "other"));
        assert!(!p.cached("a@x.example", "$h2", "pw"), "password changed");
        assert!(!p.cached("b@x.example", "$h1", "pw"));
        p.remember("c@x.example", "$h", "pw", Duration::ZERO);
        assert!(!p.cached("c@x.example", "$h", "pw"), "ttl 0 = off");
        p.forget_all();
        assert!(!p.cached("a@x.example", "$h1", "pw"));
        p.close();
    }

    #[test]
    fn concurrent_logins_of_one_account_wait_for_the_first() {
        let p = Passwords::start(1).unwrap();
        let lead = p.join_or_lead("a@x.example").ok().unwrap();
        let mut wait = p.join_or_lead("a@x.example").err().unwrap();
        assert!(
            p.join_or_lead("b@x.example").is_ok(),
            "another account leads its own"
        );
        assert_eq!(wait.try_recv(), Ok(None), "still running");
        drop(lead);
        assert_eq!(wait.try_recv(), Ok(Some(())));
        assert!(
            p.join_or_lead("a@x.example").is_ok(),
            "over: the next one leads"
        );
        p.close();
    }

    #[test]
    fn verifies_on_the_pool() {
        let p = Passwords::start(2).unwrap();
        let hash = crate::users::hash_password("s3cret").unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let ok = futures_lite::future::block_on(p.verify(ip, hash.clone(), "s3cret".into()));
        let bad = futures_lite::future::block_on(p.verify(ip, hash, "nope".into()));
        assert_eq!((ok, bad), (Verified::Match, Verified::Mismatch));
        p.close();
        let late = futures_lite::future::block_on(p.verify(ip, "$x".into(), "y".into()));
        assert_eq!(late, Verified::Busy);
    }
}
