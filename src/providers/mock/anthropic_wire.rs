//! The mock's Anthropic wire format: Messages (plain and event stream), tool use, and errors in
//! Anthropic's shape, with the same behaviours as the OpenAI wire.

use bytes::Bytes;
use serde_json::{Value, json};

use super::openai_wire::{
    FLUSH, TOOL_ARGS, after_tool_result, answer_pieces, prompt_tokens, sse_script, text_of,
};
use super::{Behaviour, Script, Step};
use crate::sse::encode_event;

/// An error response in Anthropic's shape.
pub(crate) fn error(status: u16, message: &str) -> http::Response<super::MockBody> {
    super::play(Default::default(), String::new(), error_script(status, message))
}

fn error_script(status: u16, message: &str) -> Script {
    let kind = crate::translate::anthropic_error_type_for_status(status);
    let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"});
    Script {
        status,
        headers: vec![("content-type", "application/json".into())],
        steps: vec![Step::Send(Bytes::from(body.to_string()))],
    }
}

fn prompt(req: &Value) -> u64 {
    prompt_tokens(req) + text_of(req.get("system")).len().div_ceil(4) as u64
}

fn fault(req: &Value, b: &Behaviour) -> Option<Script> {
    if let Some(status) = b.status {
        let mut s = error_script(status, &format!("mock error {status}"));
        if let Some(ra) = &b.retry_after {
            s.headers.push(("retry-after", ra.clone()));
        }
        return Some(s);
    }
    if let Some(ctx) = b.context {
        let n = prompt(req);
        if n > ctx {
            return Some(error_script(
                400,
                &format!("prompt is too long: {n} tokens > {ctx} maximum"),
            ));
        }
    }
    if b.filter {
        return Some(error_script(400, "Output blocked by content filtering policy"));
    }
    let last = req.get("messages").and_then(Value::as_array).and_then(|m| m.last());
    if b.no_prefill && last.is_some_and(|m| m["role"] == "assistant") {
        return Some(error_script(400, "This model does not support assistant message prefill."));
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let plain = |ct: &str, body: Bytes| Script {
        status: 200,
        headers: vec![("content-type", ct.to_owned())],
        steps: vec![Step::Sleep(b.ttft), Step::Send(body)],
    };
    let overloaded =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    match () {
        () if b.html => Some(plain(
            "text/html",
            Bytes::from_static(b"<html><body>502 Bad Gateway</body></html>"),
        )),
        () if b.empty => Some(Script {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            steps: vec![],
        }),
        () if b.garbage && stream => Some(plain(
            "text/event-stream",
            Bytes::from_static(b"event: message_start\ndata: {\"type\":\"mess\n\n"),
        )),
        () if b.garbage => Some(plain(
            "application/json",
            Bytes::from_static(b"{\"type\":\"message\",\"content\":["),
        )),
        () if b.error200 && stream => Some(plain(
            "text/event-stream",
            encode_event("error", overloaded.to_string().as_bytes()),
        )),
        () if b.error200 => Some(plain("application/json", Bytes::from(overloaded.to_string()))),
        () => None,
    }
}

/// `POST /v1/messages`.
pub(crate) fn messages(req: &Value, b: &Behaviour) -> Script {
    if let Some(s) = fault(req, b) {
        return s;
    }
    let model = req.get("model").cloned().unwrap_or(Value::Null);
    let input = prompt(req);
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let tool = b.tool.as_deref().filter(|_| !after_tool_result(req));
    let (pieces, finish) = answer_pieces(req, b);
    let stop = if finish == "length" { "max_tokens" } else { "end_turn" };
    if !stream {
        let (content, stop, output) = match tool {
            Some(name) => (
                json!([{"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"city": "Paris"}}]),
                "tool_use",
                7,
            ),
            None => (json!([{"type": "text", "text": pieces.concat()}]), stop, pieces.len() as u64),
        };
        let mut usage = json!({"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0});
        if b.no_usage {
            usage = json!({});
        }
        let body = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": null, "usage": usage});
        if let Some(broken) = super::openai_wire::broken_body(&body.to_string(), b) {
            return broken;
        }
        return Script {
            status: 200,
            headers: vec![
                ("content-type", "application/json".into()),
                ("request-id", "req_mock".into()),
            ],
            steps: vec![Step::Sleep(b.ttft), Step::Send(Bytes::from(body.to_string()))],
        };
    }
    let ev = |name: &str, v: Value| Step::Send(encode_event(name, v.to_string().as_bytes()));
    let start_usage = if b.no_usage {
        json!({})
    } else {
        json!({"input_tokens": input, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
    };
    let mut steps = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        ),
        Step::Sleep(b.ttft),
    ];
    if b.done_only {
        steps.truncate(1);
        steps.push(ev("message_stop", json!({"type": "message_stop"})));
        return sse_script(steps);
    }
    let (stop, output) = if let Some(name) = tool {
        steps.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}}})));
        let (a, z) = TOOL_ARGS.split_at(TOOL_ARGS.len() / 2);
        for part in [a, z] {
            steps.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}})));
        }
        ("tool_use", 7)
    } else {
        steps.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        steps.push(ev("ping", json!({"type": "ping"})));
        for (i, p) in pieces.iter().enumerate() {
            let sent = i as u32;
            if b.cut == Some(sent) {
                steps.extend([Step::Sleep(FLUSH), Step::Cut]);
                return sse_script(steps);
            }
            if b.stall == Some(sent) {
                steps.push(Step::Stall);
                return sse_script(steps);
            }
            if b.error_after == Some(sent) {
                steps.push(ev("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
                return sse_script(steps);
            }
            if i > 0 {
                steps.push(Step::Sleep(b.delay));
            }
            steps.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
        }
        (stop, pieces.len() as u64)
    };
    steps.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    let usage = if b.no_usage { json!({}) } else { json!({"output_tokens": output}) };
    steps.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage})));
    if let Some(tail) = b.after_finish {
        let error = json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}});
        let error = encode_event("error", error.to_string().as_bytes());
        return sse_script(super::openai_wire::after_finish(steps, tail, error));
    }
    if !b.no_done {
        steps.push(ev("message_stop", json!({"type": "message_stop"})));
    }
    sse_script(steps)
}
