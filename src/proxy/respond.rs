//! The winning attempt (or the upstream's refusal) as the client's response, in the client's
//! dialect: bytes passed through when the upstream speaks it, translated when not.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Response, header};
use serde_json::Value;
use tokio::sync::mpsc;

use super::ask::Prepared;
use super::attempt::Opened;
use super::classify::Passthrough;
use super::emit::Emitter;
use super::failover::{Failed, Served};
use super::forward::{Capture, Forward};
use super::record::RequestRecord;
use super::resume::ResumeKit;
use crate::body::Body;
use crate::cache::CachedAnswer;
use crate::config::Wire;
use crate::error::{Dialect, ErrorCode, GatewayError};
use crate::gateway::Gateway;
use crate::limits::prices::format_usd;
use crate::runtime::{RouteRuntime, Snapshot};
use crate::translate::{self, anthropic_to_openai, openai_to_anthropic};

/// Response header names, built once (a name given as `&str` is parsed and copied per use).
const ROUTE: HeaderName = HeaderName::from_static("x-tidegate-route");
const PROVIDER: HeaderName = HeaderName::from_static("x-tidegate-provider");
const MODEL: HeaderName = HeaderName::from_static("x-tidegate-model");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-tidegate-attempts");
const FALLBACK: HeaderName = HeaderName::from_static("x-tidegate-fallback");
const COST: HeaderName = HeaderName::from_static("x-tidegate-cost-usd");
const COST_ESTIMATED: HeaderName = HeaderName::from_static("x-tidegate-cost-estimated");
const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// `x-tidegate-attempts`; the usual counts are static values (no allocation).
fn attempts_value(n: u32) -> HeaderValue {
    const SMALL: [HeaderValue; 4] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
    ];
    SMALL.get(n as usize).cloned().unwrap_or_else(|| HeaderValue::from(n))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A non-stream answer in the client's dialect.
fn translate_body(body: Bytes, client: Dialect, wire: Wire) -> Result<Bytes, GatewayError> {
    let translated = match (client, wire) {
        (Dialect::OpenAi, Wire::OpenAi) | (Dialect::Anthropic, Wire::Anthropic) => return Ok(body),
        // `parse_json`: one UTF-8 check, then serde_json's `&str` reader (a `Value` keeps every
        // string, so invalid UTF-8 anywhere fails either way).
        (Dialect::OpenAi, Wire::Anthropic) => {
            let created = unix_now();
            let fast = std::str::from_utf8(&body)
                .ok()
                .and_then(|text| openai_to_anthropic::response_bytes(text, created));
            if let Some(bytes) = fast {
                return Ok(Bytes::from(bytes));
            }
            crate::translate::parse_json(&body)
                .ok()
                .map(|v| openai_to_anthropic::response(&v, created))
        }
        (Dialect::Anthropic, Wire::OpenAi) => {
            let fast =
                std::str::from_utf8(&body).ok().and_then(anthropic_to_openai::response_bytes);
            if let Some(bytes) = fast {
                return Ok(Bytes::from(bytes));
            }
            crate::translate::parse_json(&body).ok().map(|v| anthropic_to_openai::response(&v))
        }
    };
    match translated {
        Some(Ok(v)) => Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default())),
        Some(Err(e)) => Err(GatewayError::new(
            ErrorCode::UpstreamUnavailable,
            format!("the upstream answer could not be translated: {e}"),
        )),
        None => Err(GatewayError::new(
            ErrorCode::UpstreamUnavailable,
            "the upstream answer is not JSON",
        )),
    }
}

impl Gateway {
    /// Turns the winning attempt into the client's response.
    pub(super) fn respond(
        self: &Arc<Self>,
        snap: &Arc<Snapshot>,
        route: &RouteRuntime,
        served: Served,
        ask: &Prepared<'_>,
        due: super::Deadlines,
        rec: &mut RequestRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let t = &route.targets[served.target];
        let wire = t.provider.spec.wire;
        let dialect = ask.dialect();
        rec.served_by = Some(t.series.clone());
        rec.outcome = if served.target > 0 { "fallback" } else { "ok" };
        // Headers go straight into a map: `Response::builder` moves its parts on every call.
        let mut headers = HeaderMap::with_capacity(12);
        headers.insert(ROUTE, route.name_header.clone());
        headers.insert(PROVIDER, t.provider_header.clone());
        headers.insert(MODEL, t.model_header.clone());
        headers.insert(ATTEMPTS, attempts_value(served.attempts));
        if let Some(reason) = served.fallback_reason
            && let Some(v) = rec.fallback(&route.route.name, "target", reason)
        {
            headers.insert(FALLBACK, v);
        }
        match served.opened {
            Opened::Complete { body, usage, finish } => {
                rec.usage = usage;
                rec.finish = finish;
                rec.spend.complete = true;
                if usage.is_none()
                    && let Some((text, _)) = super::tiers::text_of_body(&body, wire)
                {
                    rec.spend.streamed_bytes = text.len() as u64;
                }
                cost_headers(rec, &mut headers);
                if let Some(key) = capture_key(route, ask)
                    && let Some((text, model)) = super::tiers::text_of_body(&body, wire)
                {
                    self.shared.answers.put(key, CachedAnswer { text, model });
                }
                let mut body = translate_body(body, dialect, wire)?;
                if usage.is_none() && (dialect == Dialect::Anthropic || wire == Wire::Anthropic) {
                    body = with_usage(body, dialect, rec.spend.request_usage(None));
                }
                if rec.log_content {
                    rec.completion = Some(String::from_utf8_lossy(&body).into_owned());
                }
                rec.status = 200;
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(with_headers(Body::full(body), headers))
            }
            Opened::Stream(stream) => {
                let (tx, rx) = mpsc::channel(16);
                let abort = crate::body::Abort::default();
                let emitter = Emitter::new(
                    dialect,
                    wire,
                    ask.include_usage(),
                    ask.input_estimate(),
                    unix_now(),
                );
                let capture = capture_key(route, ask).map(|key| Capture {
                    cache: self.shared.answers.clone(),
                    key,
                    text: String::new(),
                    model: t.target.model.clone(),
                    tainted: false,
                });
                // Resuming continues one text: never with `n > 1` choices.
                let resume = (route.route.resume && ask.n() == 1).then(|| ResumeKit {
                    snap: snap.clone(),
                    route: route.index,
                    target: served.target,
                    raw: ask.raw_owned.clone(),
                    include_usage: ask.include_usage(),
                    pass_on: ask.pass_on.clone(),
                });
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                if let Some(c) = rec.idem.as_mut() {
                    c.record_stream(&headers);
                }
                let mut forward = Box::new(Forward {
                    resume,
                    sent_text: String::new(),
                    first_out: None,
                    last_sent: tokio::time::Instant::now(),
                    in_tool: false,
                    blocks_started: 0,
                    blocks_stopped: 0,
                    capture,
                    stream: *stream,
                    tx,
                    rec: rec.take(),
                    deadline: due.end,
                    idle: due.idle,
                    wire,
                    emitter,
                    dialect,
                    out: BytesMut::with_capacity(4096),
                    primed: None,
                    gw: self.clone(),
                    client_idle: due.idle < route.route.timeouts.idle,
                    key: t.provider.key().cloned(),
                    abort: abort.clone(),
                    stalled: false,
                    first_chunk: None,
                    choices: u32::try_from(ask.n()).unwrap_or(u32::MAX),
                    finished: 0,
                });
                forward.prime();
                tokio::spawn(forward.run());
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                headers.insert(ACCEL_BUFFERING, HeaderValue::from_static("no"));
                Ok(with_headers(Body::channel(rx, abort), headers))
            }
        }
    }
}

/// A translated answer whose upstream reported no usage, with tidegate's estimate (the one it
/// bills) in its `usage`: the translation's 0/0 would undercount for clients that meter from
/// it (Anthropic's `usage` is required; an OpenAI client's answer from an Anthropic-wire
/// upstream has one too, counted by tidegate).
fn with_usage(body: Bytes, dialect: Dialect, estimate: crate::proxy::peek::Usage) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else { return body };
    let Some(usage) = v.get_mut("usage").and_then(Value::as_object_mut) else { return body };
    let (input, output) = match dialect {
        Dialect::Anthropic => ("input_tokens", "output_tokens"),
        Dialect::OpenAi => ("prompt_tokens", "completion_tokens"),
    };
    usage.insert(input.into(), estimate.input.into());
    usage.insert(output.into(), estimate.output.into());
    if dialect == Dialect::OpenAi {
        usage.insert("total_tokens".into(), estimate.input.saturating_add(estimate.output).into());
    }
    serde_json::to_vec(&v).map_or(body, Bytes::from)
}

/// `x-tidegate-cost-usd`, and `x-tidegate-cost-estimated: true` when estimated: the request's
/// settled cost (every attempt's), the log line's `cost_usd`. For JSON responses, whose cost is
/// known before their head is sent: answers, upstream refusals passed through, and gateway
/// errors once a route was selected (a stream request's too, when its stream never began).
pub(super) fn cost_headers(rec: &mut RequestRecord, headers: &mut HeaderMap) {
    let (cost, estimated) = rec.cost();
    if let Ok(v) = HeaderValue::try_from(format_usd(cost)) {
        headers.insert(COST, v);
    }
    if estimated {
        headers.insert(COST_ESTIMATED, HeaderValue::from_static("true"));
    }
}

fn with_headers(body: Body, headers: HeaderMap) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers;
    resp
}

/// The cache key when the route has a cache tier (only then are answers captured).
fn capture_key(route: &RouteRuntime, ask: &Prepared<'_>) -> Option<[u8; 32]> {
    let cached =
        route.route.free_tiers.iter().any(|t| matches!(t, crate::config::FreeTier::Cache { .. }));
    if cached { ask.cache_key(&route.route.name) } else { None }
}

/// An upstream error body in the client's dialect.
fn error_in_dialect(p: &Passthrough, client: Dialect, wire: Wire) -> Bytes {
    let v: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
    let converted = match (client, wire) {
        (Dialect::OpenAi, Wire::OpenAi) | (Dialect::Anthropic, Wire::Anthropic) => {
            return p.body.clone();
        }
        (Dialect::OpenAi, Wire::Anthropic) => {
            let (kind, message) = translate::openai_error_from_anthropic(&v);
            // Claude's "prompt is too long" is OpenAI's `context_length_exceeded`: clients
            // that trim their history on that code must see it whichever target refused.
            let (param, code) = if super::classify::is_context_length(&p.body) {
                (Some("messages"), Some("context_length_exceeded"))
            } else {
                (None, None)
            };
            translate::openai_error_body(&kind, &message, param, code)
        }
        (Dialect::Anthropic, Wire::OpenAi) => {
            let (kind, message) =
                translate::anthropic_error_from_openai_response(p.status.as_u16(), &v);
            translate::anthropic_error_body(&kind, &message)
        }
    };
    Bytes::from(serde_json::to_vec(&converted).unwrap_or_default())
}

/// A failed plan as the client's answer: a gateway error, or the upstream's own refusal.
pub(super) fn failed(
    f: Failed,
    client: Dialect,
    route: &RouteRuntime,
    rec: &mut RequestRecord,
) -> Result<Response<Body>, GatewayError> {
    match f {
        Failed::Gateway(e) | Failed::Exhausted { error: e, .. } => Err(e),
        Failed::Passthrough(p, wire, refused) => {
            rec.outcome = "client_error";
            rec.status = p.status.as_u16();
            let mut resp = Response::new(Body::full(error_in_dialect(&p, client, wire)));
            *resp.status_mut() = p.status;
            *resp.headers_mut() = p.headers;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let t = &route.targets[refused.target];
            let h = resp.headers_mut();
            h.insert(ROUTE, route.name_header.clone());
            h.insert(PROVIDER, t.provider_header.clone());
            h.insert(MODEL, t.model_header.clone());
            h.insert(ATTEMPTS, attempts_value(refused.attempts));
            if let Some(reason) = refused.fallback_reason
                && let Some(v) = rec.fallback(&route.route.name, "target", reason)
            {
                h.insert(FALLBACK, v);
            }
            // A JSON answer, a stream request's too (its stream never began).
            cost_headers(rec, h);
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_counts_read_as_decimal() {
        for n in [0u32, 1, 2, 3, 4, 10, 4_000_000_000] {
            assert_eq!(attempts_value(n), n.to_string().as_str());
        }
    }
}
