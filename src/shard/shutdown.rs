//! Graceful shutdown: a per-shard signal that accept loops and idle sessions await.
//!
//! SIGTERM/SIGINT set a process-wide flag (signal-hook); each shard polls it on a timer
//! and fires its local [`Shutdown`], waking every waiter (SIGHUP reloads: see
//! `reload`). Shard-local, `!Send`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often a shard looks at the process-wide stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Default, Clone)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    fired: Cell<bool>,
    /// Waiters by key; a waiter removes itself when dropped, so sessions that end
    /// before shutdown leave nothing behind.
    wakers: RefCell<HashMap<u64, Waker>>,
    next_key: Cell<u64>,
}

impl Shutdown {
    pub fn fire(&self) {
        self.inner.fired.set(true);
        let wakers: Vec<Waker> = self
            .inner
            .wakers
            .borrow_mut()
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.get()
    }

    /// Resolves once [`Shutdown::fire`] has been called.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        let key = self.inner.next_key.get() + 1;
        self.inner.next_key.set(key);
        Wait {
            shutdown: self,
            key,
        }
    }
}

struct Wait<'a> {
    shutdown: &'a Shutdown,
    key: u64,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_fired() {
            return Poll::Ready(());
        }
        self.shutdown
            .inner
            .wakers
            .borrow_mut()
            .insert(self.key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.shutdown.inner.wakers.borrow_mut().remove(&self.key);
    }
}

/// Fires `shutdown` once `stop` becomes true. One shard (`announce`) tells the
/// service manager, once.
pub fn watch(stop: Arc<AtomicBool>, announce: bool, shutdown: Shutdown) {
    glommio::spawn_local(async move {
        while !stop.load(Ordering::SeqCst) {
            glommio::timer::sleep(POLL_INTERVAL).await;
        }
        if announce {
            super::service::notify("STOPPING=1\nSTATUS=draining sessions");
        }
        shutdown.fire();
    })
    .detach();
}
