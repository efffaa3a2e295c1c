//! Accept loops: HTTP/1.1 and HTTP/2 (auto-detected) on plain TCP with `TCP_NODELAY`, a header
//! read timeout against slow clients, panic containment, and graceful shutdown that lets
//! in-flight requests and streams finish up to a grace period. The data plane runs on worker
//! threads that each own their connections ([`serve_on_workers`]).

pub mod admin;
pub mod mock;
mod worker;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::{Body, Broken};
use crate::error::{Dialect, ErrorCode, GatewayError};
use crate::gateway::Gateway;

/// Answers one request. Implemented by every `Fn(Request) -> impl Future` closure; a trait of its
/// own so that a handler can be returned as `impl Handler` with its future type left unboxed:
/// hyper keeps a connection's in-flight future in one allocation made per connection, so an
/// unboxed future costs no allocation (and no copy to the heap) per request.
pub trait Handler: Clone + Send + Sync + 'static {
    type Fut: Future<Output = Result<Response<Body>, Broken>> + Send + 'static;
    fn call(&self, req: Request<Incoming>) -> Self::Fut;
}

impl<H, F> Handler for H
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Broken>> + Send + 'static,
{
    type Fut = F;
    fn call(&self, req: Request<Incoming>) -> F {
        self(req)
    }
}

/// How a listener's connections are served.
#[derive(Clone)]
pub struct ConnOptions {
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
    /// Cancelled when `grace` ends with connections still open (the data plane's
    /// `Gateway::stop_streams`): their streams end with an error event and their records are
    /// written, within [`ABORT_WAIT`], before the connections are dropped.
    pub stop_streams: Option<tokio_util::sync::CancellationToken>,
}

/// How long streams cut at the end of the grace get to send their error event and finish.
pub const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` turns true, then drains open connections for up to
/// `opts.grace`. An `Err` from `handler` (or a panic in it) closes the connection without a
/// response. Everything runs on the caller's runtime.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    opts: ConnOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let conns = Connections::new(handler, opts.clone());
    while let Some(stream) = accept(&listener, &mut shutdown).await {
        conns.serve(stream);
    }
    drop(listener);
    conns.drain().await;
}

/// The next accepted connection, or `None` once `shutdown` turns true.
async fn accept(listener: &TcpListener, shutdown: &mut watch::Receiver<bool>) -> Option<TcpStream> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves connections on the current runtime and drains them at shutdown.
struct Connections<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    grace: Duration,
    /// A connection with no request yet, or none for this long, is closed (see
    /// [`Connections::serve_then`]).
    idle: Duration,
    stop_streams: Option<tokio_util::sync::CancellationToken>,
    /// Turns true when the drain begins. Each open connection's task holds a receiver, so the
    /// drain waits on [`watch::Sender::closed`] for the last one.
    closing: watch::Sender<bool>,
}

/// What a connection's requests tell the task that drives it.
#[derive(Default)]
struct Activity {
    /// Requests begun on the connection (their heads read).
    requests: std::sync::atomic::AtomicU64,
    /// Told once, by the first request.
    first: tokio::sync::Notify,
    /// The connection speaks HTTP/2 (its requests say so).
    h2: std::sync::atomic::AtomicBool,
    /// HTTP/2 requests whose response has not ended (or been dropped) yet.
    open: std::sync::atomic::AtomicUsize,
}

/// Counts one HTTP/2 request as open until its response body is finished or dropped.
struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<H: Handler> Connections<H> {
    fn new(handler: H, opts: ConnOptions) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        Self {
            builder: Arc::new(builder),
            handler,
            grace: opts.grace,
            idle: opts.header_read_timeout,
            stop_streams: opts.stop_streams,
            closing: watch::channel(false).0,
        }
    }

    /// Serves one connection in its own task; `done` runs when the connection closes.
    ///
    /// hyper times out an HTTP/1 request head only once its first byte has come, and an idle
    /// keep-alive connection at `header_read_timeout`; the auto builder's protocol detection
    /// read and HTTP/2 have no such limit, so a client could hold sockets open for good (and
    /// with them the process's file descriptors). So, on top of hyper's rules:
    /// - a connection whose first request's head has not arrived within `header_read_timeout`
    ///   of its accept is closed, and so is one with no request yet when the drain begins;
    /// - an HTTP/2 connection is shut down gracefully (GOAWAY) once a whole
    ///   `header_read_timeout` period passes with no request begun and none open (a long
    ///   stream keeps its connection). HTTP/1 keep-alive connections are left to hyper, which
    ///   closes them at that time after their last response: shutting one down from here while
    ///   a request runs would close it after the response without saying so
    ///   (`connection: close`), and the client might send its next request into it.
    fn serve_then(&self, stream: TcpStream, done: impl FnOnce() + Send + 'static) {
        use std::sync::atomic::Ordering::Relaxed;
        let h = self.handler.clone();
        let activity = Arc::new(Activity::default());
        let seen = activity.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            if seen.requests.fetch_add(1, Relaxed) == 0 {
                seen.first.notify_one();
            }
            // HTTP/2 only (an HTTP/1 request pays nothing for it): counted open until its
            // response body is done.
            let open = (req.version() == http::Version::HTTP_2).then(|| {
                seen.h2.store(true, Relaxed);
                seen.open.fetch_add(1, Relaxed);
                OpenStream(seen.clone())
            });
            let fut = h.call(req);
            async move {
                let r: Result<Response<Body>, Broken> =
                    match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(r) => r,
                        Err(_) => Err(Broken("handler panicked".into())),
                    };
                match open {
                    Some(open) => r.map(|resp| resp.map(|b| b.with_guard(Box::new(open)))),
                    None => r,
                }
            }
        });
        let conn =
            self.builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
        let mut closing = self.closing.subscribe();
        let idle = self.idle;
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let requested = tokio::select! {
                biased;
                _ = &mut conn => false,
                () = activity.first.notified() => true,
                _ = closing.wait_for(|c| *c) => false,
                () = tokio::time::sleep(idle) => false,
            };
            if requested {
                drive(conn, &activity, &mut closing, idle).await;
            }
            done();
        });
    }

    fn serve(&self, stream: TcpStream) {
        self.serve_then(stream, || {});
    }

    /// Lets open connections finish for up to the grace period. Streams still open then are
    /// cut (`stop_streams`): each sends its error event and writes its record, and the
    /// connection closes cleanly, within [`ABORT_WAIT`].
    async fn drain(self) {
        self.closing.send_replace(true);
        let shutdown = self.closing.closed();
        tokio::pin!(shutdown);
        if tokio::time::timeout(self.grace, &mut shutdown).await.is_ok() {
            return;
        }
        let Some(stop) = &self.stop_streams else {
            tracing::warn!("shutdown grace of {:?} passed with connections still open", self.grace);
            return;
        };
        tracing::warn!(
            "shutdown grace of {:?} passed with connections still open: cutting their streams",
            self.grace
        );
        stop.cancel();
        if tokio::time::timeout(ABORT_WAIT, &mut shutdown).await.is_err() {
            tracing::warn!("connections still open after their streams were cut: closing them");
        }
    }
}

/// Polls a connection that has had a request until it closes: shut down gracefully when the
/// drain begins or, for HTTP/2, when it has been idle (no request begun, none open) for a
/// whole `idle` period.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    activity: &Activity,
    closing: &mut watch::Receiver<bool>,
    idle: Duration,
) where
    C: Future + GracefulConnection,
{
    let count = || activity.requests.load(std::sync::atomic::Ordering::Relaxed);
    let mut seen = count();
    let tick = tokio::time::sleep(idle);
    tokio::pin!(tick);
    let mut shut = false;
    loop {
        tokio::select! {
            biased;
            _ = conn.as_mut() => return,
            _ = closing.wait_for(|c| *c), if !shut => {
                conn.as_mut().graceful_shutdown();
                shut = true;
            }
            () = &mut tick, if !shut => {
                let now = count();
                let h2 = activity.h2.load(std::sync::atomic::Ordering::Relaxed);
                let open = activity.open.load(std::sync::atomic::Ordering::Relaxed);
                if h2 && open == 0 && now == seen {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                } else {
                    seen = now;
                    tick.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
        }
    }
}

/// Serves `listener` like [`serve`], but on `workers` threads, each a single-threaded runtime
/// that owns the connections handed to it: a request, its upstream connection and that
/// connection's task never leave their thread, so no request pays for waking another thread.
/// The caller's runtime only accepts, and hands each connection to the worker with the fewest
/// open connections. Returns when every worker has drained.
pub async fn serve_on_workers<H: Handler>(
    listener: TcpListener,
    handler: H,
    opts: ConnOptions,
    mut shutdown: watch::Receiver<bool>,
    workers: usize,
) {
    let mut pool = Vec::with_capacity(workers);
    let mut finished = Vec::with_capacity(workers);
    let draining = worker::Draining::new();
    for i in 0..workers {
        match worker::spawn(i, handler.clone(), opts.clone(), &draining) {
            Ok((w, done)) => {
                pool.push(w);
                finished.push(done);
            }
            Err(e) => tracing::error!("cannot start data-plane worker {i}: {e}"),
        }
    }
    if pool.is_empty() {
        tracing::error!("no data-plane worker started: serving on the main thread");
        return serve(listener, handler, opts, shutdown).await;
    }
    while let Some(stream) = accept(&listener, &mut shutdown).await {
        if let Err(lost) = worker::hand_over(&mut pool, stream) {
            tracing::error!("{lost}: serving on the main thread from now on");
            return serve(listener, handler, opts, shutdown).await;
        }
    }
    drop(listener);
    // Closing the workers' channels starts their drain once they have taken what was sent.
    drop(pool);
    for done in finished {
        let _ = done.await;
    }
}

type Handled<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Broken>> + Send>>;

/// The data-plane handler for [`serve`]: a panic while serving a request becomes a 500 in the
/// SPEC's error shape rather than a dropped connection.
pub fn data_plane(gw: Arc<Gateway>) -> impl Handler {
    move |req: Request<Incoming>| {
        let gw = gw.clone();
        async move {
            match AssertUnwindSafe(gw.handle(req)).catch_unwind().await {
                Ok(r) => Ok(r),
                Err(_) => {
                    tracing::error!("request handler panicked");
                    let mut r = GatewayError::new(ErrorCode::UpstreamUnavailable, "internal error")
                        .into_response(Dialect::OpenAi);
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(r)
                }
            }
        }
    }
}
