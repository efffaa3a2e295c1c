//! Requests waiting for a connection another request is making: a connection that may turn
//! out HTTP/2 is made once for as many requests of the thread as it will carry (see
//! [`connect`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::Notify;

use super::{SLOTS, Speaks, with_slot};

/// Notes that endpoint `id` answered a new connection with HTTP/1.1: later connections to it
/// are made without waiting for each other.
pub fn speaks_http1(id: usize) {
    with_slot(id, |slot| slot.speaks = Speaks::Http1);
}

/// What a request that found no idle connection does.
pub enum Connect {
    /// Connects; requests of this thread that need a connection to the endpoint meanwhile
    /// wait for this one, until the guard is finished or dropped.
    Lead(Leader),
    /// Waits for the connection another request is making ([`Claim::wait`]), then looks
    /// for an idle connection again.
    Follow(Claim),
    /// Connects on its own: the endpoint speaks HTTP/1, so every concurrent request needs a
    /// connection of its own anyway.
    Alone,
}

/// Decides how a request to endpoint `id` that found no idle connection gets one. Connections
/// that may turn out HTTP/2 (one that did last time, or an `https` endpoint never connected
/// from this thread) are shared: a request waits for one being made that it would get a stream
/// of (fewer than `max_streams` requests lead or wait for it), and otherwise makes the next one,
/// at the same time. A burst of requests would otherwise open a TLS connection each, of which
/// the pool keeps one; and a burst larger than one connection carries would otherwise make its
/// connections one after another, each wave waiting for the last one's handshake.
pub fn connect(id: usize, https: bool, max_streams: usize) -> Connect {
    with_slot(id, |slot| {
        let shared = match slot.speaks {
            Speaks::Http2 => true,
            Speaks::Unknown => https,
            Speaks::Http1 => false,
        };
        if !shared {
            return Connect::Alone;
        }
        // Ended ones may linger here when their leader was dropped on another thread.
        slot.connecting.retain(|c| c.upgrade().is_some_and(|c| c.ended.get().is_none()));
        for c in slot.connecting.iter().filter_map(Weak::upgrade) {
            if c.claims.load(Ordering::Relaxed) < max_streams {
                c.claims.fetch_add(1, Ordering::Relaxed);
                return Connect::Follow(Claim(c));
            }
        }
        let connecting = Arc::new(Connecting { claims: AtomicUsize::new(1), ..Default::default() });
        slot.connecting.push(Arc::downgrade(&connecting));
        Connect::Lead(Leader { id, connecting })
    })
}

/// A connection being made, as the requests waiting for it see it.
#[derive(Default)]
pub struct Connecting {
    notify: Notify,
    /// The requests that would take a stream of it: its leader and its waiters.
    claims: AtomicUsize,
    /// How it ended; set once, before the waiters are woken.
    ended: OnceLock<Ended>,
}

/// How the making of a connection others waited for ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Ended {
    /// Made: an HTTP/2 one is now idle in the pool; an HTTP/1 one is its leader's, and each
    /// waiter connects on its own.
    Made,
    /// Failed, for this reason: the waiters fail with it rather than each try again.
    Failed(Arc<str>),
    /// The leading request went away first (its client left, its deadline passed): a waiter
    /// takes its place.
    Abandoned,
}

/// A request's place among those waiting for a connection being made; given up when dropped.
pub struct Claim(Arc<Connecting>);

impl Claim {
    /// Waits until the connection is made, has failed or was abandoned, until `deadline` at
    /// most (`None` when that passed first).
    pub async fn wait(&self, deadline: tokio::time::Instant) -> Option<Ended> {
        // A `Notified` hears `notify_waiters` from its creation on, so an end between here
        // and the check below is not missed.
        let notified = self.0.notify.notified();
        if let Some(ended) = self.0.ended.get() {
            return Some(ended.clone());
        }
        tokio::time::timeout_at(deadline, notified).await.ok()?;
        self.0.ended.get().cloned()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.claims.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request making a connection others wait for; [`Leader::finish`] or dropping it
/// (abandoned) wakes them.
pub struct Leader {
    id: usize,
    connecting: Arc<Connecting>,
}

impl Leader {
    /// Ends the wait: the connection is made (and, if HTTP/2, shared), or it failed for
    /// `error`.
    pub fn finish(self, error: Option<String>) {
        let _ = self.connecting.ended.set(error.map_or(Ended::Made, |e| Ended::Failed(e.into())));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.connecting.ended.set(Ended::Abandoned);
        let _ = SLOTS.try_with(|slots| {
            let mut slots = slots.borrow_mut();
            let me = Arc::as_ptr(&self.connecting);
            slots.slot(self.id).connecting.retain(|c| c.as_ptr() != me);
        });
        self.connecting.notify.notify_waiters();
    }
}
