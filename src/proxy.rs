//! The data plane: OpenAI-compatible front door, route selection, and serving a request through
//! the route's targets.

pub mod admit;
pub mod ask;
pub mod attempt;
pub mod classify;
mod client_auth;
mod client_headers;
pub mod emit;
pub mod failover;
pub mod forward;
pub mod idem;
mod intake;
mod models;
pub mod peek;
pub mod record;
pub mod request;
mod respond;
pub mod resume;
pub mod spend;
mod stream_end;
pub mod tiers;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::time::Instant;

use crate::body::Body;
use crate::error::{Dialect, ErrorCode, GatewayError};
use crate::gateway::Gateway;
use crate::runtime::{RouteRuntime, Snapshot};
use ask::{Ask, Prepared};
use client_headers::{client_timeout, pass_on, request_id};
use failover::Plan;
use record::RequestRecord;
use request::{ChatRequest, EmbeddingsRequest, MessagesRequest};

/// What the path asks for, after any `/r/{route}` prefix.
enum Call<'a> {
    Chat,
    Messages,
    Embeddings,
    Models,
    Model(&'a str),
}

/// Splits `/r/{route}/v1/...` into the route and the API path.
fn split_route_prefix(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/r/") {
        // The API path keeps its leading slash: it starts where the route name ends.
        let end = rest.find('/').unwrap_or(rest.len());
        return (Some(&rest[..end]), &rest[end..]);
    }
    (None, path)
}

/// The endpoint `path` (the part after any `/r/{route}` prefix) names; `full` is the request's
/// whole path, for the error.
fn resolve<'a>(method: &Method, path: &'a str, full: &str) -> Result<Call<'a>, GatewayError> {
    let call = match path {
        "/v1/chat/completions" => (Method::POST, Call::Chat),
        "/v1/messages" => (Method::POST, Call::Messages),
        "/v1/embeddings" => (Method::POST, Call::Embeddings),
        "/v1/models" => (Method::GET, Call::Models),
        p => match p.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() => (Method::GET, Call::Model(id)),
            _ => {
                let shown = crate::error::clip(if full.is_empty() { "(no path)" } else { full });
                return Err(GatewayError::new(
                    ErrorCode::NotFound,
                    format!("no endpoint at {shown}"),
                ));
            }
        },
    };
    // HEAD wherever GET is (hyper sends the head without the body).
    if *method != call.0 && !(call.0 == Method::GET && *method == Method::HEAD) {
        let allow = if call.0 == Method::GET { "GET, HEAD" } else { "POST" };
        return Err(GatewayError::new(
            ErrorCode::MethodNotAllowed,
            format!("{path} accepts {} only", call.0),
        )
        .with_allow(allow));
    }
    Ok(call.1)
}

/// Header names used per request, built once (a name given as `&str` is parsed per use).
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const ANTHROPIC_REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tidegate-route");
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-tidegate-attempts");
const CONFIG_VERSION: HeaderName = HeaderName::from_static("x-tidegate-config-version");
const CONFIG_LABEL: HeaderName = HeaderName::from_static("x-tidegate-config-label");

/// When a request's answer is due.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    /// The answer must begin by then: a whole answer, or a stream's first bytes (every attempt,
    /// backoff and wait included): the route's `timeouts.total`, or the client's read timeout
    /// when sooner.
    pub begin: Instant,
    /// A stream must end by then: the route's `timeouts.total` (a client's read timeout bounds
    /// the gaps between its bytes, not its length).
    pub end: Instant,
    /// The longest gap between a stream's events: `timeouts.idle`, or the client's read
    /// timeout when shorter.
    pub idle: Duration,
    /// `begin` is the client's read timeout (sooner than the route's total).
    pub client_bound: bool,
}

impl Deadlines {
    fn new(route: &RouteRuntime, start: Instant, client: Option<Duration>, stream: bool) -> Self {
        let t = &route.route.timeouts;
        let end = start + t.total;
        let begin = client.map_or(end, |c| end.min(start + c));
        let idle = client.map_or(t.idle, |c| t.idle.min(c));
        let client_bound = begin < end;
        Self { begin, end: if stream { end } else { begin }, idle, client_bound }
    }
}

impl Gateway {
    /// Serves one data-plane request. Never fails: every error becomes a response here.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::error::Error + 'static,
    {
        let snap = self.snapshot();
        let rid = request_id(req.headers());
        // Anything under the Messages API answers in its shape (an unknown sub-path such as
        // `/v1/messages/count_tokens` too).
        let path = split_route_prefix(req.uri().path()).1;
        let dialect = if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        };
        let mut rec = RequestRecord::new(
            self.metrics.clone(),
            self.log_sink.clone(),
            rid.clone(),
            snap.version.clone(),
            snap.retired.clone(),
            snap.config.logging.sample_rate,
        );
        rec.shutdown = Some(self.stop_streams.clone());
        let dispatched = self.dispatch(req, &snap, &mut rec).await;
        // Handled (a stream's record, if any, went to its task, which sets its own).
        rec.ended = true;
        let mut resp = match dispatched {
            Ok(r) => r,
            Err(e) => {
                rec.outcome = outcome_of(e.code);
                rec.status = e.code.status().as_u16();
                rec.error = Some(e.message.clone());
                let e_code = e.code;
                let mut resp = e.into_response(dialect);
                // SPEC §3: `x-tidegate-route` once a route is selected, errors included; the
                // attempts made, when upstreams were called. Not to a client refused the route
                // (a model alias would tell it the name of a route it may not use); its
                // refusal is still counted and logged under the route.
                let h = resp.headers_mut();
                let refused = e_code == ErrorCode::Unauthorized;
                if let Some(r) = &rec.route
                    && !refused
                    && let Ok(v) = HeaderValue::from_str(&r.name)
                {
                    h.insert(ROUTE_HEADER, v);
                }
                if !rec.attempts.is_empty() {
                    h.insert(ATTEMPTS_HEADER, HeaderValue::from(rec.attempts.len()));
                }
                // Every error here is a JSON answer, a stream request's refused before its
                // stream began too: it says what the request cost (SPEC §3, §6).
                if rec.route.is_some() && !refused {
                    respond::cost_headers(&mut rec, h);
                }
                resp
            }
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&rid) {
            // The Anthropic SDK reads its request id (`_request_id`, error objects) from
            // `request-id`.
            if dialect == Dialect::Anthropic {
                h.insert(ANTHROPIC_REQUEST_ID, v.clone());
            }
            h.insert(REQUEST_ID, v);
        }
        h.insert(CONFIG_VERSION, snap.version_header.clone());
        if let Some(l) = &snap.label_header {
            h.insert(CONFIG_LABEL, l.clone());
        }
        resp
    }

    async fn dispatch<B>(
        self: &Arc<Self>,
        req: Request<B>,
        snap: &Arc<Snapshot>,
        rec: &mut RequestRecord,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::error::Error + 'static,
    {
        let (parts, body) = req.into_parts();
        let (path_route, api_path) = split_route_prefix(parts.uri.path());
        let call = resolve(&parts.method, api_path, parts.uri.path())?;
        // With `auth.keys`, nothing is read or selected for a caller without a listed key.
        let client = client_auth::identify(snap, &parts.headers)?;
        rec.client = client.as_ref().map(|c| c.name.clone());
        let header_route = header_route(&parts.headers)?;
        // A route named by header or path must exist, on the models endpoints too (a mistyped
        // per-route base URL must not look fine to `models.list()`).
        let fixed = match (header_route, path_route) {
            (None, None) => None,
            _ => Some(snap.select(header_route, path_route, None)?),
        };
        // A route named by header or path is selected before the body is read, so a request
        // refused for its body (or a models call under the route's base URL) is counted,
        // logged and answered under its route too.
        if let Some(r) = fixed {
            rec.set_route(&r.series);
            client_auth::allow(client.as_deref(), r)?;
        }
        match call {
            Call::Models => {
                let shape = models::Shape::of(&parts.headers);
                return Ok(models::list(snap, fixed, client.as_deref(), shape, rec));
            }
            Call::Model(id) => {
                let shape = models::Shape::of(&parts.headers);
                return models::one(snap, id, fixed, client.as_deref(), shape, rec);
            }
            Call::Chat | Call::Messages | Call::Embeddings => {}
        }
        let permit = self.limiter.clone().try_acquire_owned().map_err(|_| {
            GatewayError::new(
                ErrorCode::Overloaded,
                "tidegate is at its concurrency limit; retry shortly",
            )
            .with_retry_after(Duration::from_secs(1))
        })?;
        let bytes = intake::read_body(&parts.headers, body, self.body_limits, rec.start).await?;
        if snap.config.logging.content {
            rec.log_content = true;
            rec.prompt = Some(String::from_utf8_lossy(&bytes).into_owned());
        }
        let client_wait = client_timeout(&parts.headers);
        let ask = match call {
            Call::Chat => Ask::Chat(ChatRequest::parse(&bytes)?),
            Call::Messages => Ask::Messages(MessagesRequest::parse(&bytes)?),
            _ => Ask::Embeddings(EmbeddingsRequest::parse(&bytes)?),
        };
        let mut ask = Prepared::new(ask, &bytes)?;
        ask.pass_on = pass_on(&parts.headers, matches!(call, Call::Messages));
        let route = match fixed {
            Some(r) => r,
            None => {
                let r = snap.select(None, None, ask.model())?;
                rec.set_route(&r.series);
                client_auth::allow(client.as_deref(), r)?;
                r
            }
        };
        rec.stream = ask.stream();
        rec.spend.body_bytes = bytes.len() as u64;
        ask.clamp_output(route.route.limits.max_output_tokens);
        let due = Deadlines::new(route, rec.start, client_wait, ask.stream());
        let endpoint = match call {
            Call::Chat => "chat",
            Call::Messages => "messages",
            _ => "embeddings",
        };
        let begin = idem::begin(
            &self.shared,
            &self.metrics,
            route,
            idem::Caller { headers: &parts.headers, client: client.as_ref().map(|c| &*c.name) },
            &bytes,
            endpoint,
            due.begin,
        );
        match begin.await? {
            idem::Begin::Answer(resp) => {
                // As the answer it replays was counted (helper-49: a stored 400 counted ok).
                rec.outcome = match resp.status().as_u16() {
                    200..=299 => "ok",
                    400..=499 => "client_error",
                    _ => "upstream_error",
                };
                rec.status = resp.status().as_u16();
                return Ok(resp);
            }
            idem::Begin::Run(capture) => rec.idem = capture,
        }
        admit::request(route, &ask, &self.shared, rec).await?;
        let resp = self.serve(snap, route, &ask, due, rec).await;
        if let (Some(c), Ok(r)) = (rec.idem.as_mut(), &resp) {
            c.record_response(r.status(), r.headers(), r.body().full_bytes());
        }
        resp.map(|r| r.map(|b| b.with_permit(Some(permit))))
    }

    async fn serve(
        self: &Arc<Self>,
        snap: &Arc<Snapshot>,
        route: &RouteRuntime,
        ask: &Prepared<'_>,
        due: Deadlines,
        rec: &mut RequestRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let drop_unsupported = route.route.drop_unsupported_params;
        let plan = Plan {
            ask,
            shared: &self.shared,
            config: &snap.config,
            health: &self.shared.health,
            retry_budget: &self.shared.retry_budget,
            route,
            endpoint: ask.endpoint(),
            stream: ask.stream(),
            deadline: due.begin,
            client_bound: due.client_bound,
            body_for: |t: &crate::runtime::TargetRuntime| {
                ask.body_for(t, &snap.config, drop_unsupported)
            },
        };
        match plan.run(rec).await {
            Ok(served) => self.respond(snap, route, served, ask, due, rec),
            Err(failover::Failed::Exhausted { error, reason }) => {
                let attempts = rec.attempts.len() as u32;
                match tiers::serve(&self.shared.answers, route, ask, reason, attempts, rec) {
                    Some(resp) => Ok(resp),
                    None => Err(error),
                }
            }
            Err(f) => respond::failed(f, ask.dialect(), route, rec),
        }
    }
}

/// The route named by `x-tidegate-route`, if any: sent once, in ASCII.
fn header_route(headers: &http::HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut named = headers.get_all(ROUTE_HEADER).iter();
    match (named.next(), named.next()) {
        // Which one was meant is not ours to guess (as for `Idempotency-Key`).
        (Some(_), Some(_)) => Err(GatewayError::invalid(
            "send one x-tidegate-route header, not several",
            Some("x-tidegate-route"),
        )),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| {
            GatewayError::invalid("x-tidegate-route is not valid ASCII", Some("x-tidegate-route"))
        }),
        _ => Ok(None),
    }
}

fn outcome_of(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::RequestTooLarge
        | ErrorCode::InputTokensExceeded
        | ErrorCode::CostCeilingExceeded
        | ErrorCode::IdempotencyKeyReused
        | ErrorCode::MethodNotAllowed
        | ErrorCode::RequestTimeout => "invalid",
        ErrorCode::ModelNotFound | ErrorCode::NotFound => "not_found",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::BudgetExhausted
        | ErrorCode::RateLimited
        | ErrorCode::Overloaded
        | ErrorCode::IdempotencyInFlight => "rejected",
        ErrorCode::ContractViolation | ErrorCode::UpstreamUnavailable => "upstream_error",
        ErrorCode::DeadlineExceeded => "timeout",
        ErrorCode::ClientClosed => "aborted",
    }
}

pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
