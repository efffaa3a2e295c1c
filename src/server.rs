//! Accept loops: HTTP/1.1 and HTTP/2 (auto-detected) on plain TCP with `TCP_NODELAY`, a header
//! read timeout against slow clients, panic containment, and graceful shutdown that lets
//! in-flight requests and streams finish up to a grace period.

pub mod admin;
pub mod mock;

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Body, Broken};
use crate::error::{Dialect, ErrorCode, GatewayError};
use crate::gateway::Gateway;

/// How a listener's connections are served.
#[derive(Clone, Copy)]
pub struct ConnOptions {
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
}

/// Serves `listener` until `shutdown` turns true, then drains open connections for up to
/// `opts.grace`. An `Err` from `handler` (or a panic in it) closes the connection without a
/// response.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    opts: ConnOptions,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Broken>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let svc = service_fn(move |req| {
            let fut = h(req);
            async move {
                let r: Result<Response<Body>, Broken> =
                    match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(r) => r,
                        Err(_) => Err(Broken("handler panicked".into())),
                    };
                r
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown grace of {:?} passed with connections still open", opts.grace);
    }
}

type Handled<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Broken>> + Send>>;

/// The data-plane handler for [`serve`]: a panic while serving a request becomes a 500 in the
/// SPEC's error shape rather than a dropped connection.
pub fn data_plane(
    gw: Arc<Gateway>,
) -> impl Fn(Request<Incoming>) -> Handled<Body> + Clone + Send + Sync + 'static {
    move |req| {
        let gw = gw.clone();
        Box::pin(async move {
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
        })
    }
}
