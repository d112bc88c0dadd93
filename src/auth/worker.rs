//! The auth worker: one thread running a tokio current-thread runtime that serves
//! every shard's SPF/DKIM/ARC/DMARC jobs concurrently, with one shared DNS cache.
//!
//! Shards hand over owned jobs in batches (everything a shard submitted in one reactor
//! tick goes in one channel message) and await a oneshot; the worker's answer wakes
//! the glommio task from this thread (glommio supports foreign wakers). The number of
//! jobs in flight is bounded by `auth.queue_depth_max`: past it a shard gets
//! [`Unavailable::Busy`] at once and answers `451 4.3.2`, so memory never grows with
//! the backlog. This thread never touches a shard's state.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use mail_auth::MessageAuthenticator;
use tokio::sync::mpsc;

use super::policy::MessageVerdict;
use super::verify::{self, Caches, MxHost, RouteError, SpfCheck, SpfVerdict};

/// How the worker resolves and how much it holds.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// authserv-id of our Authentication-Results (`server.hostname`).
    pub hostname: String,
    /// `dns.servers`; empty = the system's resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub dns_timeout: Duration,
    pub cache_entries: usize,
    pub queue_depth_max: usize,
}

/// Pre-fills the worker's DNS cache before it serves (closed-world tests).
pub type Prefill = Box<dyn FnOnce(&Caches) + Send>;

/// One unit of work, with where to send its answer.
pub enum Job {
    Spf {
        check: SpfCheck,
        reply: oneshot::Sender<SpfVerdict>,
    },
    Message {
        spf: Box<SpfVerdict>,
        message: Bytes,
        reply: oneshot::Sender<MessageVerdict>,
    },
    /// A records of DNS list names (`antispam.dnsbl`), one answer list per name.
    Dnsbl {
        names: Vec<String>,
        reply: oneshot::Sender<Vec<Vec<std::net::Ipv4Addr>>>,
    },
    /// Forward-confirmed reverse DNS of an MX client.
    Fcrdns {
        ip: std::net::IpAddr,
        reply: oneshot::Sender<verify::Fcrdns>,
    },
    /// MX routing for the outbound queue.
    Route {
        domain: String,
        reply: oneshot::Sender<Result<Vec<MxHost>, RouteError>>,
    },
}

/// Why a check could not be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// `auth.queue_depth_max` jobs are already in flight.
    Busy,
    /// The worker thread is gone.
    Stopped,
}

/// The process-wide handle to the worker (shared by every shard).
pub struct AuthService {
    batches: mpsc::UnboundedSender<Vec<Job>>,
    in_flight: AtomicUsize,
    depth_max: usize,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl AuthService {
    /// Starts the worker thread. `caches` lets tests pre-fill DNS answers.
    pub fn start(
        config: WorkerConfig,
        prefill: Option<Prefill>,
    ) -> Result<Arc<AuthService>, String> {
        let authenticator = verify::authenticator(&config.dns_servers, config.dns_timeout)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let service = Arc::new(AuthService {
            batches: tx,
            in_flight: AtomicUsize::new(0),
            depth_max: config.queue_depth_max,
        });
        let me = service.clone();
        std::thread::Builder::new()
            .name("auth".into())
            .spawn(move || run(config, authenticator, rx, me, prefill))
            .map_err(|e| format!("cannot start the auth worker thread: {e}"))?;
        Ok(service)
    }

    /// Reserves room for one job; `false` when the queue is full.
    fn reserve(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.depth_max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Jobs currently queued or running (for metrics and tests).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

fn run(
    config: WorkerConfig,
    authenticator: MessageAuthenticator,
    mut batches: mpsc::UnboundedReceiver<Vec<Job>>,
    service: Arc<AuthService>,
    prefill: Option<Prefill>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "auth worker cannot start its runtime; checks will defer");
            return;
        }
    };
    let caches = Rc::new(Caches::new(config.cache_entries));
    if let Some(fill) = prefill {
        fill(&caches);
    }
    let hostname: Rc<str> = Rc::from(config.hostname.as_str());
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        while let Some(batch) = batches.recv().await {
            for job in batch {
                let (auth, caches, hostname, service) = (
                    authenticator.clone(),
                    caches.clone(),
                    hostname.clone(),
                    service.clone(),
                );
                tokio::task::spawn_local(async move {
                    match job {
                        Job::Spf { check, reply } => {
                            let v = verify::check_spf(&auth, &caches, &hostname, check).await;
                            let _ = reply.send(v);
                        }
                        Job::Message {
                            spf,
                            message,
                            reply,
                        } => {
                            let v =
                                verify::check_message(&auth, &caches, &hostname, &spf, &message)
                                    .await;
                            let _ = reply.send(v);
                        }
                        Job::Route { domain, reply } => {
                            let _ = reply.send(verify::route(&auth, &caches, &domain).await);
                        }
                        Job::Dnsbl { names, reply } => {
                            let _ = reply.send(verify::dnsbl(&auth, &caches, &names).await);
                        }
                        Job::Fcrdns { ip, reply } => {
                            let _ = reply.send(verify::fcrdns(&auth, &caches, ip).await);
                        }
                    }
                    service.release();
                });
            }
        }
    });
}

/// A shard's end: batches the jobs of one reactor tick into one channel message.
pub struct AuthClient {
    service: Arc<AuthService>,
    pending: Rc<RefCell<Vec<Job>>>,
    scheduled: Rc<Cell<bool>>,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("service", &self.service)
            .finish()
    }
}

impl AuthClient {
    pub fn new(service: Arc<AuthService>) -> AuthClient {
        AuthClient {
            service,
            pending: Rc::default(),
            scheduled: Rc::default(),
        }
    }

    fn submit(&self, job: Job) {
        self.pending.borrow_mut().push(job);
        if self.scheduled.replace(true) {
            return;
        }
        let (pending, scheduled, service) = (
            self.pending.clone(),
            self.scheduled.clone(),
            self.service.clone(),
        );
        glommio::spawn_local(async move {
            // Let every task that is ready this tick add its job, then send them as one.
            futures_lite::future::yield_now().await;
            scheduled.set(false);
            let batch = std::mem::take(&mut *pending.borrow_mut());
            if let Err(mpsc::error::SendError(lost)) = service.batches.send(batch) {
                for _ in lost {
                    service.release(); // dropping the jobs drops their reply senders
                }
            }
        })
        .detach();
    }

    /// SPF for HELO and MAIL FROM.
    pub async fn spf(&self, check: SpfCheck) -> Result<SpfVerdict, Unavailable> {
        if !self.service.reserve() {
            return Err(Unavailable::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Spf { check, reply });
        answer.await.map_err(|_| Unavailable::Stopped)
    }

    /// The mail servers of `domain`, in the order to try them.
    pub async fn route(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        if !self.service.reserve() {
            return Err(RouteError::Temporary("DNS worker busy".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Route {
            domain: domain.to_string(),
            reply,
        });
        answer
            .await
            .unwrap_or_else(|_| Err(RouteError::Temporary("DNS worker stopped".into())))
    }

    /// The A records of each DNS list query name (empty where not listed or the
    /// lookup failed: a list that cannot answer lists nobody).
    pub async fn dnsbl(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<Vec<std::net::Ipv4Addr>>, Unavailable> {
        if !self.service.reserve() {
            return Err(Unavailable::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Dnsbl { names, reply });
        answer.await.map_err(|_| Unavailable::Stopped)
    }

    /// Forward-confirmed reverse DNS of `ip`.
    pub async fn fcrdns(&self, ip: std::net::IpAddr) -> Result<verify::Fcrdns, Unavailable> {
        if !self.service.reserve() {
            return Err(Unavailable::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Fcrdns { ip, reply });
        answer.await.map_err(|_| Unavailable::Stopped)
    }

    /// DKIM, ARC and DMARC of a received message.
    pub async fn message(
        &self,
        spf: SpfVerdict,
        message: Bytes,
    ) -> Result<MessageVerdict, Unavailable> {
        if !self.service.reserve() {
            return Err(Unavailable::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Message {
            spf: Box::new(spf),
            message,
            reply,
        });
        answer.await.map_err(|_| Unavailable::Stopped)
    }
}
