//! The deterministic tiers (`cache`, `template`): answers tidegate gives itself when every
//! provider target failed, rendered as a normal completion in the client's dialect, stream or
//! not, and always visible (`x-tidegate-fallback`, `tidegate_fallbacks_total`, the log line).

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use serde_json::{Value, json};

use super::ask::Prepared;
use super::record::RequestRecord;
use crate::body::Body;
use crate::cache::{AnswerCache, CachedAnswer};
use crate::config::{FreeTier, Wire};
use crate::error::Dialect;
use crate::runtime::RouteRuntime;
use crate::sse::{encode_data, encode_event};

/// The model name a template answer reports.
const TEMPLATE_MODEL: &str = "tidegate-template";

/// The first free tier that can answer, rendered; `None` if none can.
pub fn serve(
    cache: &AnswerCache,
    route: &RouteRuntime,
    ask: &Prepared<'_>,
    reason: &'static str,
    attempts: u32,
    rec: &mut RequestRecord,
) -> Option<Response<Body>> {
    for tier in &route.route.free_tiers {
        let answer = match tier {
            FreeTier::Cache { max_age } => {
                let Some(key) = ask.cache_key(&route.route.name) else { continue };
                let Some(a) = cache.get(&key, *max_age) else { continue };
                a
            }
            FreeTier::Template(text) => {
                CachedAnswer { text: text.clone(), model: TEMPLATE_MODEL.into() }
            }
        };
        let name = tier.name();
        let fallback = rec.fallback(&route.route.name, name, reason);
        rec.outcome = "fallback";
        rec.status = 200;
        rec.error = None;
        rec.finish = Some("stop".into());
        let mut resp = render(&answer, ask);
        let h = resp.headers_mut();
        if ask.stream() {
            // As on every stream tidegate sends: no caching, no proxy buffering.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        h.insert("x-tidegate-route", route.name_header.clone());
        h.insert("x-tidegate-attempts", HeaderValue::from(attempts));
        if let Some(v) = fallback {
            h.insert("x-tidegate-fallback", v);
        }
        if let Ok(v) = HeaderValue::from_str(&answer.model) {
            h.insert("x-tidegate-model", v);
        }
        if !ask.stream() {
            // What the failed attempts before the free tier were charged (often nothing).
            super::respond::cost_headers(rec, h);
        }
        return Some(resp);
    }
    None
}

fn render(a: &CachedAnswer, ask: &Prepared<'_>) -> Response<Body> {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (body, content_type) = match (ask.dialect(), ask.stream()) {
        (Dialect::OpenAi, false) => (
            Bytes::from(json!({"id": "chatcmpl-tidegate", "object": "chat.completion", "created": created, "model": a.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}).to_string()),
            "application/json",
        ),
        (Dialect::Anthropic, false) => (
            Bytes::from(json!({"id": "msg_tidegate", "type": "message", "role": "assistant", "model": a.model,
                "content": [{"type": "text", "text": a.text}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}).to_string()),
            "application/json",
        ),
        (Dialect::OpenAi, true) => {
            let chunk = |delta: Value, finish: Value| {
                encode_data(json!({"id": "chatcmpl-tidegate", "object": "chat.completion.chunk", "created": created, "model": a.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string().as_bytes())
            };
            let mut out = BytesMut::new();
            out.extend_from_slice(&chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            out.extend_from_slice(&chunk(json!({"content": a.text}), Value::Null));
            out.extend_from_slice(&chunk(json!({}), json!("stop")));
            if ask.include_usage() {
                let usage = json!({"id": "chatcmpl-tidegate", "object": "chat.completion.chunk", "created": created, "model": a.model,
                    "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}});
                out.extend_from_slice(&encode_data(usage.to_string().as_bytes()));
            }
            out.extend_from_slice(crate::sse::DONE);
            (out.freeze(), "text/event-stream")
        }
        (Dialect::Anthropic, true) => {
            let ev = |name: &str, v: Value| encode_event(name, v.to_string().as_bytes());
            let mut out = BytesMut::new();
            for b in [
                ev("message_start", json!({"type": "message_start", "message": {"id": "msg_tidegate", "type": "message", "role": "assistant",
                    "model": a.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}})),
                ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
                ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": a.text}})),
                ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 0}})),
                ev("message_stop", json!({"type": "message_stop"})),
            ] {
                out.extend_from_slice(&b);
            }
            (out.freeze(), "text/event-stream")
        }
    };
    let mut resp = Response::new(Body::full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The answer text of a successful non-stream upstream body, if it is a plain text answer.
pub fn text_of_body(body: &[u8], wire: Wire) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let model = v.get("model")?.as_str()?.to_owned();
    let text = match wire {
        Wire::OpenAi => {
            let msg = v.pointer("/choices/0/message")?;
            if msg.get("tool_calls").is_some_and(|t| !t.is_null()) {
                return None;
            }
            msg.get("content")?.as_str()?.to_owned()
        }
        Wire::Anthropic => {
            let blocks = v.get("content")?.as_array()?;
            if blocks.iter().any(|b| b["type"] != "text") {
                return None;
            }
            blocks.iter().filter_map(|b| b["text"].as_str()).collect()
        }
    };
    Some((text, model))
}
