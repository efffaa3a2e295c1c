//! Idle upstream connections, kept per thread and per endpoint.
//!
//! hyper's connection API hands out a sender per connection; this module keeps the idle ones
//! so the next request to the same endpoint reuses them. It replaces hyper-util's pool on the
//! request path, which hashes its `(scheme, authority)` key with SipHash byte by byte three
//! times per request, goes through a lock, and spawns a task per request to put a connection
//! back once its response body is done (about 8% of a proxied request's instructions). Here:
//! - every endpoint has a small integer id, assigned when a config is loaded
//!   ([`super::client::ClientCache`]), and each thread keeps a `Vec` of slots indexed by it:
//!   no hashing and no lock, because a data-plane worker serves its requests and drives its
//!   upstream connections on its own thread;
//! - an HTTP/1 connection is lent to one request ([`Lease`]) and comes back when its response
//!   body has been read to the end. A stream that ends at its last event (`[DONE]`) marks its
//!   body complete, and the chunked terminator that often follows in its own packet is waited
//!   for ([`TAIL_WAIT`]) so the connection is kept; any other body dropped early takes the
//!   connection with it (hyper closes it, since the rest of the answer is still in flight);
//! - an HTTP/2 connection (ALPN) is shared by the thread's requests to that endpoint, up to
//!   the provider's `http2_max_streams` at once ([`Stream`] counts them); one more request
//!   opens another connection rather than queue behind the upstream's stream limit, and
//!   requests arriving while a connection is being made wait for it, as many as it will
//!   carry, while the next ones make the next connection at the same time ([`connect`]);
//! - idle connections are kept [`IDLE_TIMEOUT`] at most (an HTTP/2 one counted from when its
//!   last request began, and kept while any is in flight), [`MAX_IDLE`] HTTP/1 ones per
//!   endpoint and thread, handed out newest first (the warmest socket, and the oldest age
//!   out); a thread's slots are swept for expired and closed connections on its worker's tick
//!   and, at most once a second, when it sends.

use std::cell::RefCell;
use std::sync::Weak;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};

use connecting::Connecting;
pub use connecting::{Claim, Connect, Ended, Leader, connect, speaks_http1};

/// How long an idle connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1 connections kept per endpoint and thread; more are closed when they come back.
pub const MAX_IDLE: usize = 256;

pub type H1 = http1::SendRequest<Full<Bytes>>;
pub type H2 = http2::SendRequest<Full<Bytes>>;

/// One endpoint's idle connections on this thread.
#[derive(Default)]
struct Slot {
    /// Idle HTTP/1 connections and when each came back, oldest first.
    idle: Vec<(H1, Instant)>,
    /// The shared HTTP/2 connections, if the endpoint speaks it, oldest first.
    h2: Vec<SharedH2>,
    /// What the endpoint's last connection from this thread negotiated.
    speaks: Speaks,
    /// Connections being made that may turn out HTTP/2, which requests needing one wait for.
    /// Weak: only their [`Leader`] and the waiters hold them; one that has ended is ignored
    /// (its leader may have been dropped on another thread, which cannot clear this).
    connecting: Vec<Weak<Connecting>>,
}

/// What an endpoint was last seen to speak (ALPN decides on https).
#[derive(Clone, Copy, Default, PartialEq, Debug)]
enum Speaks {
    #[default]
    Unknown,
    Http1,
    Http2,
}

/// An HTTP/2 connection shared by the requests of one thread.
struct SharedH2 {
    tx: H2,
    /// When a request last took a stream of it.
    used: Instant,
    /// Cloned into each request's [`Stream`]: the streams in flight are its other holders.
    streams: std::sync::Arc<()>,
}

impl SharedH2 {
    fn in_flight(&self) -> usize {
        std::sync::Arc::strong_count(&self.streams) - 1
    }

    fn stream(&mut self, now: Instant) -> Idle {
        self.used = now;
        Idle::H2(self.tx.clone(), Stream { _held: self.streams.clone() })
    }
}

/// A request's stream on a shared HTTP/2 connection, counted against the provider's
/// `http2_max_streams` until dropped (with the response body, or the request that failed).
pub struct Stream {
    _held: std::sync::Arc<()>,
}

impl Slot {
    fn expire(&mut self, now: Instant) {
        // Oldest first: everything before the first fresh one has expired.
        let fresh = self.idle.partition_point(|(_, at)| now.duration_since(*at) > IDLE_TIMEOUT);
        self.idle.drain(..fresh);
        self.idle.retain(|(tx, _)| !tx.is_closed());
        // One carrying a stream is never idle, however long ago that stream began.
        self.h2.retain(|c| {
            !c.tx.is_closed() && (c.in_flight() > 0 || now.duration_since(c.used) <= IDLE_TIMEOUT)
        });
    }

    /// A connection for one request: a stream of the oldest shared HTTP/2 connection with
    /// fewer than `max_streams` in flight, else the newest idle HTTP/1 one.
    fn checkout(&mut self, now: Instant, max_streams: usize) -> Option<Idle> {
        if !self.h2.is_empty() {
            self.h2.retain(|c| !c.tx.is_closed());
            if let Some(c) = self.h2.iter_mut().find(|c| c.in_flight() < max_streams) {
                return Some(c.stream(now));
            }
        }
        while let Some((tx, at)) = self.idle.pop() {
            if now.duration_since(at) > IDLE_TIMEOUT {
                // The rest are older still.
                self.idle.clear();
                return None;
            }
            // Not ready means closed, or busy in a way it will not recover from (an idle
            // connection is only put back ready).
            if tx.is_ready() {
                return Some(Idle::H1(tx));
            }
        }
        None
    }
}

/// The next endpoint id; ids index each thread's slots, so they stay small and dense.
static NEXT_ENDPOINT: AtomicUsize = AtomicUsize::new(0);

/// A new endpoint id.
pub fn new_endpoint() -> usize {
    NEXT_ENDPOINT.fetch_add(1, Ordering::Relaxed)
}

/// How often a thread that sends requests looks over all its slots for expired connections,
/// on top of its worker's tick (a thread that is not a worker has only this).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// This thread's slots, indexed by endpoint id, and when they were last swept.
struct Slots {
    slots: Vec<Slot>,
    swept: Option<Instant>,
}

thread_local! {
    static SLOTS: RefCell<Slots> = const { RefCell::new(Slots { slots: Vec::new(), swept: None }) };
}

impl Slots {
    fn slot(&mut self, id: usize) -> &mut Slot {
        if self.slots.len() <= id {
            self.slots.resize_with(id + 1, Slot::default);
        }
        &mut self.slots[id]
    }

    fn sweep(&mut self, now: Instant) {
        self.swept = Some(now);
        self.slots.iter_mut().for_each(|s| s.expire(now));
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            self.sweep(now);
        }
    }
}

fn with_slot<R>(id: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
    SLOTS.with_borrow_mut(|slots| f(slots.slot(id)))
}

/// A connection taken from the pool: an HTTP/1 one lent whole, or one stream of a shared
/// HTTP/2 one.
pub enum Idle {
    H1(H1),
    H2(H2, Stream),
}

/// A ready connection to endpoint `id`, if this thread holds one: a stream of a shared HTTP/2
/// connection with fewer than `max_streams` in flight, else the most recently returned HTTP/1
/// one.
pub fn checkout(id: usize, max_streams: usize) -> Option<Idle> {
    let now = Instant::now();
    SLOTS.with_borrow_mut(|slots| {
        slots.sweep_if_due(now);
        slots.slot(id).checkout(now, max_streams)
    })
}

/// Shares a new HTTP/2 connection with the thread's later requests to endpoint `id`, and
/// hands out its first stream.
pub fn share_h2(id: usize, tx: &H2) -> Idle {
    with_slot(id, |slot| {
        slot.speaks = Speaks::Http2;
        let now = Instant::now();
        let mut shared = SharedH2 { tx: tx.clone(), used: now, streams: Default::default() };
        let first = shared.stream(now);
        slot.h2.push(shared);
        first
    })
}

/// Forgets endpoint `id`'s HTTP/2 connections that are closing: one refused a request without
/// sending it. (Working ones, such as a new one another request shared meanwhile, stay.)
pub fn forget_h2(id: usize) {
    with_slot(id, |slot| slot.h2.retain(|c| !c.tx.is_closed() && c.tx.is_ready()));
}

/// Shared HTTP/2 connections this thread holds for endpoint `id` (tests).
pub fn h2_count(id: usize) -> usize {
    with_slot(id, |slot| slot.h2.len())
}

/// Closes this thread's expired and closed idle connections; a worker calls it every tick.
pub fn sweep() {
    SLOTS.with_borrow_mut(|slots| slots.sweep(Instant::now()));
}

/// Idle HTTP/1 connections this thread holds for endpoint `id` (tests).
pub fn idle_count(id: usize) -> usize {
    with_slot(id, |slot| slot.idle.len())
}

/// An HTTP/1 connection lent to one request. [`Lease::release`] puts it back once the
/// response body has been read to the end; dropping it instead closes the connection.
pub struct Lease {
    id: usize,
    tx: H1,
}

impl Lease {
    pub fn new(id: usize, tx: H1) -> Self {
        Self { id, tx }
    }

    /// Returns the connection to its thread's pool. hyper marks it ready within the poll that
    /// delivered the body's last bytes, so it nearly always is; one that is not yet is put
    /// back by a task once it is, within [`TAIL_WAIT`] (a closed one is dropped).
    pub fn release(self) {
        let Self { id, mut tx } = self;
        if tx.is_ready() {
            put(id, tx);
        } else if !tx.is_closed() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(TAIL_WAIT, tx.ready()).await {
                    put(id, tx);
                }
            });
        }
    }
}

fn put(id: usize, tx: H1) {
    // During thread teardown the slots may be gone already: the connection just closes.
    let _ = SLOTS.try_with(|slots| {
        let mut slots = slots.borrow_mut();
        let idle = &mut slots.slot(id).idle;
        if idle.len() == MAX_IDLE {
            // The oldest goes: it is the likeliest to have been closed by the upstream.
            idle.remove(0);
        }
        idle.push((tx, Instant::now()));
    });
}

/// How long a complete answer's body may take to end (an SSE stream's chunked terminator
/// often comes in its own packet after `[DONE]`) before its connection is closed instead.
pub const TAIL_WAIT: Duration = Duration::from_secs(1);
/// Bytes a complete answer's body may still carry before its connection is closed instead.
pub const TAIL_MAX: usize = 16 * 1024;

/// What a [`PooledBody`] holds of its connection (one enum, no larger than the lease alone:
/// the data plane's futures carry the body).
enum Hold {
    Nothing,
    /// An HTTP/1 connection, to put back once the body is read.
    Lease(Lease),
    /// A stream of a shared HTTP/2 connection, freed at the body's end.
    Stream(#[expect(dead_code, reason = "held to be dropped")] Stream),
}

/// An upstream response body that puts its HTTP/1 connection back in the pool once read to
/// the end (the last frame, or the end of the stream). Dropped before that, the connection
/// comes back only if hyper can finish the body from what it already holds, or, for an
/// answer marked [`complete`](Self::mark_complete), if the rest arrives within
/// [`TAIL_WAIT`]; otherwise hyper closes it.
pub struct PooledBody {
    body: Option<hyper::body::Incoming>,
    /// The connection, or the HTTP/2 stream, the body arrives on.
    hold: Hold,
    complete: bool,
}

impl PooledBody {
    pub fn new(body: hyper::body::Incoming, lease: Option<Lease>) -> Self {
        let hold = lease.map_or(Hold::Nothing, Hold::Lease);
        Self { body: Some(body), hold, complete: false }
    }

    /// A body that has ended.
    pub fn empty() -> Self {
        Self { body: None, hold: Hold::Nothing, complete: false }
    }

    /// The body of an answer on a shared HTTP/2 connection's `stream`.
    pub fn on_stream(body: hyper::body::Incoming, stream: Stream) -> Self {
        Self { body: Some(body), hold: Hold::Stream(stream), complete: false }
    }

    fn lease(&mut self) -> Option<Lease> {
        match std::mem::replace(&mut self.hold, Hold::Nothing) {
            Hold::Lease(lease) => Some(lease),
            // A stream is freed here, by dropping it.
            Hold::Stream(_) | Hold::Nothing => None,
        }
    }

    /// The answer is whole (a stream's last event came): what is left of the body is only its
    /// framing, worth waiting a moment for to keep the connection.
    pub fn mark_complete(&mut self) {
        self.complete = true;
        // An HTTP/2 stream's end is only its last frame now: its place is free for the next
        // request while this one's last bytes reach its client.
        if matches!(self.hold, Hold::Stream(_)) {
            self.hold = Hold::Nothing;
        }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease() {
            lease.release();
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(body) = &mut this.body else { return std::task::Poll::Ready(None) };
        let polled = std::pin::Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => this.release(),
            std::task::Poll::Ready(Some(Ok(_))) if body.is_end_stream() => this.release(),
            // An error leaves the connection broken: it goes with the lease.
            std::task::Poll::Ready(Some(Err(_))) => this.hold = Hold::Nothing,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

impl PooledBody {
    /// The rest of a [complete](Self::mark_complete) answer's body, still holding its
    /// connection, for the caller to [wait out](Tail::wait) on its own task once done with
    /// everything else (cheaper than the task a drop spawns for it). `None` when there is
    /// nothing to wait for; this body is left empty.
    pub fn take_tail(&mut self) -> Option<Tail> {
        if !self.complete || !matches!(self.hold, Hold::Lease(_)) {
            return None;
        }
        let body = self.body.take()?;
        Some(Tail(PooledBody::new(body, self.lease())))
    }
}

/// What is left of a complete answer's body; see [`PooledBody::take_tail`].
pub struct Tail(PooledBody);

impl Tail {
    /// Reads the rest of the body, for at most [`TAIL_WAIT`] and [`TAIL_MAX`] bytes: at its end
    /// the connection goes back to the pool, otherwise it is closed.
    pub async fn wait(mut self) {
        let _ = tokio::time::timeout(TAIL_WAIT, async {
            let mut seen = 0;
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut self.0).await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > TAIL_MAX {
                    break;
                }
            }
        })
        .await;
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(lease) = self.lease() else { return };
        let Some(body) = self.body.take() else { return };
        if http_body::Body::is_end_stream(&body) {
            return lease.release();
        }
        if !self.complete || tokio::runtime::Handle::try_current().is_err() {
            // hyper drains what it already holds of the body, or closes the connection; a
            // connection that comes out of that ready is put back by the lease's waiter.
            drop(body);
            return lease.release();
        }
        let tail = Tail(PooledBody::new(body, Some(lease)));
        tokio::spawn(tail.wait());
    }
}

mod connecting;
#[cfg(test)]
mod tests;
