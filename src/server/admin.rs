//! The admin plane: `/metrics`, `/healthz` (process alive), `/readyz` (config loaded and not
//! draining; never provider health, since a sidecar's readiness gates its whole pod), and the
//! config lifecycle API under `/admin` (`config_api.rs`), the only part behind the admin token.

pub mod config_api;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::Handled;
use crate::body::Body;
use crate::gateway::Gateway;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Answers one admin request.
pub async fn handle(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    // HEAD is answered as GET (hyper sends the head without the body).
    let method = if req.method() == Method::HEAD { &Method::GET } else { req.method() };
    match (method, req.uri().path()) {
        (&Method::GET, "/metrics") => {
            gw.refresh_budget_gauges().await;
            let mut r = Response::new(Body::full(gw.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if gw.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (_, "/metrics" | "/healthz" | "/readyz") => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The admin handler for [`super::serve`].
pub fn admin_plane(
    gw: Arc<Gateway>,
    api: Arc<config_api::ConfigApi>,
) -> impl Fn(Request<Incoming>) -> Handled<Body> + Clone + Send + Sync + 'static {
    move |req| {
        let gw = gw.clone();
        let api = api.clone();
        Box::pin(async move {
            let p = req.uri().path();
            if p == "/admin" || p.starts_with("/admin/") {
                return Ok(api.handle(req).await);
            }
            Ok(handle(&gw, &req).await)
        })
    }
}
