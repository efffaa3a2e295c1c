//! Requests waiting for a connection another request is making: a connection that may turn
//! out HTTP/2 is made once for every request of the thread that needs one (see [`connect`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

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
    /// Waits for the connection another request is making ([`Connecting::wait`]), then looks
    /// for an idle connection again.
    Follow(Arc<Connecting>),
    /// Connects on its own: the endpoint speaks HTTP/1, so every concurrent request needs a
    /// connection of its own anyway.
    Alone,
}

/// Decides how a request to endpoint `id` that found no idle connection gets one. Connections
/// that may turn out HTTP/2 (one that did last time, or an `https` endpoint never connected
/// from this thread) are made once for every request waiting: a burst of requests would
/// otherwise open a TLS connection each, of which the pool keeps one.
pub fn connect(id: usize, https: bool) -> Connect {
    with_slot(id, |slot| {
        let shared = match slot.speaks {
            Speaks::Http2 => true,
            Speaks::Unknown => https,
            Speaks::Http1 => false,
        };
        if !shared {
            return Connect::Alone;
        }
        if let Some(c) = slot.connecting.as_ref().and_then(Weak::upgrade) {
            if c.outcome().is_none() {
                return Connect::Follow(c);
            }
        }
        let connecting = Arc::new(Connecting { notify: Notify::new(), outcome: AtomicU8::new(0) });
        slot.connecting = Some(Arc::downgrade(&connecting));
        Connect::Lead(Leader { id, connecting })
    })
}

/// A connection being made, as the requests waiting for it see it.
pub struct Connecting {
    notify: Notify,
    /// 0 while being made, then an [`Ended`] as `u8`.
    outcome: AtomicU8,
}

/// How the making of a connection others waited for ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ended {
    /// Made (an HTTP/2 one is now idle in the pool, an HTTP/1 one is its leader's) or failed.
    Finished = 1,
    /// The leading request went away first (its client left, its deadline passed): a waiter
    /// may take its place.
    Abandoned = 2,
}

impl Connecting {
    fn outcome(&self) -> Option<Ended> {
        match self.outcome.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Ended::Finished),
            _ => Some(Ended::Abandoned),
        }
    }

    /// Waits until the connection is made or has failed, for `within` at most (`None` when
    /// that passed first).
    pub async fn wait(&self, within: Duration) -> Option<Ended> {
        let mut notified = std::pin::pin!(self.notify.notified());
        // Registered before the check, so an end between the two is not missed.
        notified.as_mut().enable();
        if let Some(ended) = self.outcome() {
            return Some(ended);
        }
        tokio::time::timeout(within, notified).await.ok()?;
        self.outcome()
    }
}

/// The request making a connection others wait for; [`Leader::finish`] or dropping it
/// (cancelled) wakes them.
pub struct Leader {
    id: usize,
    connecting: Arc<Connecting>,
}

impl Leader {
    /// Ends the wait: the connection is made (and, if HTTP/2, shared) or has failed.
    pub fn finish(self) {
        self.connecting.outcome.store(Ended::Finished as u8, Ordering::Release);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.connecting.outcome.compare_exchange(
            0,
            Ended::Abandoned as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let _ = SLOTS.try_with(|slots| {
            let mut slots = slots.borrow_mut();
            let slot = slots.slot(self.id);
            if slot.connecting.as_ref().is_some_and(|c| c.as_ptr() == Arc::as_ptr(&self.connecting))
            {
                slot.connecting = None;
            }
        });
        self.connecting.notify.notify_waiters();
    }
}
