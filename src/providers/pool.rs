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
//!   body has been read to the end; a body dropped early takes the connection with it (hyper
//!   closes it, since the rest of the answer is still in flight);
//! - an HTTP/2 connection (ALPN) is shared by every request of the thread to that endpoint;
//! - idle connections are kept [`IDLE_TIMEOUT`] at most, [`MAX_IDLE`] per endpoint and thread,
//!   newest first (the warmest socket, and the oldest age out); [`sweep`] closes the expired
//!   ones of a thread that stopped sending.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};

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
    /// The shared HTTP/2 connection, if the endpoint speaks it.
    h2: Option<H2>,
}

impl Slot {
    fn expire(&mut self, now: Instant) {
        // Oldest first: everything before the first fresh one has expired.
        let fresh = self.idle.partition_point(|(_, at)| now.duration_since(*at) > IDLE_TIMEOUT);
        self.idle.drain(..fresh);
        self.idle.retain(|(tx, _)| !tx.is_closed());
        if self.h2.as_ref().is_some_and(H2::is_closed) {
            self.h2 = None;
        }
    }
}

/// The next endpoint id; ids index each thread's slots, so they stay small and dense.
static NEXT_ENDPOINT: AtomicUsize = AtomicUsize::new(0);

/// A new endpoint id.
pub fn new_endpoint() -> usize {
    NEXT_ENDPOINT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// This thread's slots, indexed by endpoint id.
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

fn with_slot<R>(id: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
    SLOTS.with_borrow_mut(|slots| {
        if slots.len() <= id {
            slots.resize_with(id + 1, Slot::default);
        }
        f(&mut slots[id])
    })
}

/// A connection taken from the pool.
pub enum Idle {
    H1(H1),
    H2(H2),
}

/// A ready connection to endpoint `id`, if this thread holds one: the shared HTTP/2 one, else
/// the most recently returned HTTP/1 one.
pub fn checkout(id: usize) -> Option<Idle> {
    with_slot(id, |slot| {
        if let Some(h2) = &slot.h2 {
            if !h2.is_closed() {
                return Some(Idle::H2(h2.clone()));
            }
            slot.h2 = None;
        }
        let now = Instant::now();
        while let Some((tx, at)) = slot.idle.pop() {
            if now.duration_since(at) > IDLE_TIMEOUT {
                // The rest are older still.
                slot.idle.clear();
                return None;
            }
            // Not ready means closed, or busy in a way it will not recover from (an idle
            // connection is only put back ready).
            if tx.is_ready() {
                return Some(Idle::H1(tx));
            }
        }
        None
    })
}

/// Shares a new HTTP/2 connection with the thread's later requests to endpoint `id`.
pub fn share_h2(id: usize, tx: &H2) {
    with_slot(id, |slot| slot.h2 = Some(tx.clone()));
}

/// Forgets endpoint `id`'s HTTP/2 connection: it refused a request without sending it.
pub fn forget_h2(id: usize) {
    with_slot(id, |slot| slot.h2 = None);
}

/// Closes this thread's expired and closed idle connections; a worker calls it every tick.
pub fn sweep() {
    let now = Instant::now();
    SLOTS.with_borrow_mut(|slots| slots.iter_mut().for_each(|s| s.expire(now)));
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
    /// back by a task once it is (a closed one is dropped).
    pub fn release(self) {
        let Self { id, mut tx } = self;
        if tx.is_ready() {
            put(id, tx);
        } else if !tx.is_closed() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                if tx.ready().await.is_ok() {
                    put(id, tx);
                }
            });
        }
    }
}

fn put(id: usize, tx: H1) {
    with_slot(id, |slot| {
        if slot.idle.len() < MAX_IDLE {
            slot.idle.push((tx, Instant::now()));
        }
    });
}

/// An upstream response body that puts its HTTP/1 connection back in the pool once read to
/// the end (the last frame, or the end of the stream).
pub struct PooledBody {
    body: hyper::body::Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    pub fn new(body: hyper::body::Incoming, lease: Option<Lease>) -> Self {
        Self { body, lease }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
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
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => this.release(),
            std::task::Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // An error leaves the connection broken: it goes with the lease.
            std::task::Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{Request, Response};
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A connection to an in-memory HTTP/1 server answering every request with `answer`
    /// bytes, and the server's task.
    async fn connected(answer: usize, buffer: usize) -> (H1, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(buffer);
        let served = tokio::spawn(async move {
            let svc = service_fn(move |_req| async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; answer]))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (tx, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        (tx, served)
    }

    async fn ask(id: usize, mut tx: H1) -> Response<PooledBody> {
        let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
        let resp = tx.try_send_request(req).await.map_err(|e| e.into_error()).unwrap();
        resp.map(|b| PooledBody::new(b, Some(Lease::new(id, tx))))
    }

    #[tokio::test]
    async fn a_body_read_to_the_end_returns_its_connection() {
        let id = new_endpoint();
        let (tx, _server) = connected(10, 4096).await;
        let body = ask(id, tx).await.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10);
        assert_eq!(idle_count(id), 1);
        // Handed out again, and it answers.
        let Some(Idle::H1(tx)) = checkout(id) else { panic!("no idle connection") };
        assert_eq!(idle_count(id), 0);
        let body = ask(id, tx).await.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10);
        assert_eq!(idle_count(id), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_early_takes_its_connection() {
        let id = new_endpoint();
        // The answer does not fit the pipe, so it cannot have arrived whole.
        let (tx, _server) = connected(1 << 20, 1024).await;
        let mut body = ask(id, tx).await.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        assert_eq!(idle_count(id), 0);
        assert!(checkout(id).is_none());
    }

    #[tokio::test]
    async fn closed_and_expired_connections_are_not_handed_out() {
        let id = new_endpoint();
        let (tx, server) = connected(1, 4096).await;
        ask(id, tx).await.into_body().collect().await.unwrap();
        // The upstream goes away: its idle connection is skipped once hyper sees it close.
        server.abort();
        for _ in 0..100 {
            let closed = with_slot(id, |s| s.idle.iter().all(|(tx, _)| tx.is_closed()));
            if closed {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(checkout(id).is_none());
        assert_eq!(idle_count(id), 0);

        // Expired by age, on checkout and on the sweep.
        let (tx, _server) = connected(1, 4096).await;
        ask(id, tx).await.into_body().collect().await.unwrap();
        let (tx, _server2) = connected(1, 4096).await;
        ask(id, tx).await.into_body().collect().await.unwrap();
        assert_eq!(idle_count(id), 2);
        let later = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1);
        with_slot(id, |s| s.expire(later));
        assert_eq!(idle_count(id), 0);
        let (tx, _server3) = connected(1, 4096).await;
        ask(id, tx).await.into_body().collect().await.unwrap();
        with_slot(id, |s| {
            let old = Instant::now().checked_sub(IDLE_TIMEOUT + Duration::from_secs(1));
            s.idle[0].1 = old.unwrap();
        });
        assert!(checkout(id).is_none());
        assert_eq!(idle_count(id), 0);
    }
}
