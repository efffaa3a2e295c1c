//! The data plane: OpenAI-compatible front door, route selection, and serving a request through
//! the route's targets.

pub mod admit;
pub mod ask;
pub mod attempt;
pub mod classify;
mod client_auth;
pub mod emit;
pub mod failover;
pub mod forward;
pub mod idem;
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
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::time::Instant;

use crate::body::{Body, ReadError, drain, read_limited};
use crate::error::{Dialect, ErrorCode, GatewayError};
use crate::gateway::Gateway;
use crate::runtime::{RouteRuntime, Snapshot};
use ask::{Ask, Prepared};
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

fn resolve<'a>(method: &Method, path: &'a str) -> Result<Call<'a>, GatewayError> {
    let call = match path {
        "/v1/chat/completions" => (Method::POST, Call::Chat),
        "/v1/messages" => (Method::POST, Call::Messages),
        "/v1/embeddings" => (Method::POST, Call::Embeddings),
        "/v1/models" => (Method::GET, Call::Models),
        p => match p.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() => (Method::GET, Call::Model(id)),
            _ => {
                return Err(GatewayError::new(
                    ErrorCode::NotFound,
                    format!("no endpoint at {path}"),
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
const READ_TIMEOUT: HeaderName = HeaderName::from_static("x-stainless-read-timeout");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// Request id: the client's if it is a sane header value, else a fresh one (`tg-` and 32 hex
/// digits).
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_owned();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"tg-00000000000000000000000000000000";
    let n = fastrand::u128(..);
    for (i, b) in id[3..].iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    String::from_utf8_lossy(&id).into_owned()
}

/// `x-stainless-read-timeout` (seconds, from the OpenAI and Anthropic SDKs): the longest the
/// client waits for a byte of the answer. It gives up then (and hangs up, which cancels the
/// work), so tidegate stops waiting [`CLIENT_MARGIN`] later: the client's own timeout always
/// fires first, and it sees the same error, with its own retries, every time.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let s = headers.get(READ_TIMEOUT)?.to_str().ok()?.trim().parse::<f64>().ok()?;
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)) + CLIENT_MARGIN)
}

/// The client's `anthropic-beta` flags: one header as sent, or several lines joined with commas
/// (the form the API takes).
fn anthropic_beta(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(ANTHROPIC_BETA).iter();
    let first = lines.next()?;
    let rest: Vec<&HeaderValue> = lines.collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let joined = std::iter::once(first).chain(rest).map(HeaderValue::as_bytes);
    HeaderValue::from_bytes(&joined.collect::<Vec<_>>().join(&b","[..])).ok()
}

/// How long after a client's read timeout tidegate stops waiting for it (see
/// [`client_timeout`]).
const CLIENT_MARGIN: Duration = Duration::from_secs(1);

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
        B::Error: std::fmt::Display,
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
        let mut resp = match self.dispatch(req, &snap, &mut rec).await {
            Ok(r) => r,
            Err(e) => {
                rec.outcome = outcome_of(e.code);
                rec.status = e.code.status().as_u16();
                rec.error = Some(e.message.clone());
                let mut resp = e.into_response(dialect);
                // SPEC §3: `x-tidegate-route` once a route is selected, errors included; the
                // attempts made, when upstreams were called.
                let h = resp.headers_mut();
                if let Some(r) = &rec.route
                    && let Ok(v) = HeaderValue::from_str(&r.name)
                {
                    h.insert(ROUTE_HEADER, v);
                }
                if !rec.attempts.is_empty() {
                    h.insert(ATTEMPTS_HEADER, HeaderValue::from(rec.attempts.len()));
                }
                if rec.route.is_some() && !rec.stream {
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
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let (path_route, api_path) = split_route_prefix(parts.uri.path());
        let call = resolve(&parts.method, api_path)?;
        // With `auth.keys`, nothing is read or selected for a caller without a listed key.
        let client = client_auth::identify(snap, &parts.headers)?;
        rec.client = client.as_ref().map(|c| c.name.clone());
        let header_route = match parts.headers.get(ROUTE_HEADER) {
            Some(v) => Some(v.to_str().map_err(|_| {
                GatewayError::invalid(
                    "x-tidegate-route is not valid ASCII",
                    Some("x-tidegate-route"),
                )
            })?),
            None => None,
        };
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
                rec.outcome = "ok";
                rec.status = 200;
                // Under a route's base URL, that route is the one model.
                let visible = |i: usize| {
                    fixed.is_none_or(|r| r.index == i)
                        && client.as_ref().is_none_or(|c| c.may_use(i))
                };
                let mut resp = models_list(snap, visible);
                if let Some(r) = fixed {
                    resp.headers_mut().insert(ROUTE_HEADER, r.name_header.clone());
                }
                return Ok(resp);
            }
            Call::Model(id) => {
                // Under a route's base URL, the route is the one model there is.
                if let Some(r) = fixed
                    && r.route.name != id
                {
                    return Err(GatewayError::new(
                        ErrorCode::ModelNotFound,
                        format!("no model {id:?} under route {:?}'s base URL", r.route.name),
                    )
                    .with_param("model"));
                }
                if let Some(r) = snap.route_by_name(id) {
                    client_auth::allow(client.as_deref(), r)?;
                }
                let mut one = model_one(snap, id)?;
                if let Some(r) = fixed {
                    one.headers_mut().insert(ROUTE_HEADER, r.name_header.clone());
                }
                rec.outcome = "ok";
                rec.status = 200;
                return Ok(one);
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
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            let ok = ct
                .to_str()
                .is_ok_and(|s| s.trim_start().to_ascii_lowercase().starts_with("application/json"));
            if !ok {
                return Err(GatewayError::invalid(
                    "content-type must be application/json",
                    Some("content-type"),
                ));
            }
        }
        let (limit, within) = self.body_limits;
        let mut body = std::pin::pin!(body);
        let read = {
            let mut read = std::pin::pin!(read_limited(body.as_mut(), limit));
            // A body that is already here (nearly every one) is read without arming a timer.
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
            match polled {
                std::task::Poll::Ready(read) => read,
                std::task::Poll::Pending => tokio::time::timeout_at(rec.start + within, read)
                    .await
                    .unwrap_or(Err(ReadError::TimedOut)),
            }
        };
        let bytes = match read {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                // Read what the client is still sending (bounded) so it sees the 413, not a
                // reset; unless it waits to be asked for its body (`Expect: 100-continue`):
                // reading would ask for it, and the 413 alone tells it not to send it.
                let waits = parts.headers.get(header::EXPECT).is_some_and(|v| {
                    v.to_str().is_ok_and(|s| s.eq_ignore_ascii_case("100-continue"))
                });
                if !waits {
                    let bound = limit.saturating_mul(4).min(64 << 20);
                    drain(body.as_mut(), bound, Duration::from_secs(5)).await;
                }
                return Err(GatewayError::new(
                    ErrorCode::RequestTooLarge,
                    format!("request body exceeds the {limit}-byte limit"),
                ));
            }
            Err(ReadError::Broken(e)) => {
                return Err(GatewayError::invalid(
                    format!("could not read the request body: {e}"),
                    None,
                ));
            }
            Err(ReadError::TimedOut) => {
                return Err(GatewayError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {within:?} (server.body_read_timeout)"
                    ),
                ));
            }
        };
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
        ask.pass_on = crate::providers::PassOn::from_client(&parts.headers);
        if matches!(call, Call::Messages) {
            ask.pass_on.anthropic_beta = anthropic_beta(&parts.headers);
        }
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
                rec.outcome = "ok";
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
    }
}

fn models_list(snap: &Snapshot, visible: impl Fn(usize) -> bool) -> Response<Body> {
    let created = snap.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let data: Vec<serde_json::Value> = snap
        .config
        .routes
        .iter()
        .enumerate()
        .filter(|(i, _)| visible(*i))
        .map(|(_, r)| r)
        .map(|r| serde_json::json!({"id": r.name, "object": "model", "created": created, "owned_by": "tidegate"}))
        .collect();
    json_response(StatusCode::OK, &serde_json::json!({"object": "list", "data": data}))
}

fn model_one(snap: &Snapshot, id: &str) -> Result<Response<Body>, GatewayError> {
    let created = snap.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match snap.route_by_name(id) {
        Some(r) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"id": r.route.name, "object": "model", "created": created, "owned_by": "tidegate"}),
        )),
        None => Err(GatewayError::new(ErrorCode::ModelNotFound, format!("no route named {id:?}"))
            .with_param("model")),
    }
}

pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_clients_or_fresh_hex() {
        let fresh = request_id(&HeaderMap::new());
        assert_eq!(fresh.len(), 35, "{fresh}");
        assert!(fresh.starts_with("tg-"));
        assert!(fresh[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(fresh, request_id(&HeaderMap::new()));
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("client-7"));
        assert_eq!(request_id(&h), "client-7");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert!(request_id(&h).starts_with("tg-"));
        // The README's policy: 1 to 128 printable ASCII characters, no spaces.
        for (id, kept) in [
            ("a".repeat(128), true),
            ("a".repeat(129), false),
            ("a/b:c=d\"e\\f".into(), true),
            ("café".into(), false),
        ] {
            h.insert(REQUEST_ID, HeaderValue::from_bytes(id.as_bytes()).unwrap());
            assert_eq!(request_id(&h) == id, kept, "{id}");
        }
    }
}
