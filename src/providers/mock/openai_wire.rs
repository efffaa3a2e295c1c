//! The mock's OpenAI wire format: chat completions (plain and SSE), embeddings and errors.

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use super::{Behaviour, MockBody, Script, Step};

/// The words of the mock's fixed answer, cycled as needed.
const WORDS: &[&str] = &[
    "The", "tide", "rises", "and", "the", "gate", "holds", "steady", "while", "every", "model",
    "call", "stays", "boring", "and", "bounded.",
];

const CREATED: u64 = 1_700_000_000;

/// A rough chat token count (4 bytes a token plus per-message overhead), as a fake provider's
/// own tokenizer would report it.
/// A trailing assistant message is a prefill: a well-behaved model continues right after it.
/// When the prefill is a prefix of this answer at a piece boundary, only the rest is answered.
fn continue_after_prefill(req: &Value, pieces: Vec<String>) -> Vec<String> {
    let last = req.get("messages").and_then(Value::as_array).and_then(|m| m.last());
    let Some(prefill) =
        last.filter(|m| m["role"] == "assistant").map(|m| text_of(m.get("content")))
    else {
        return pieces;
    };
    let mut covered = String::new();
    for (i, p) in pieces.iter().enumerate() {
        if covered == prefill {
            return pieces[i..].to_vec();
        }
        covered.push_str(p);
    }
    if covered == prefill { Vec::new() } else { pieces }
}

pub(crate) fn prompt_tokens(req: &Value) -> u64 {
    let msgs = req.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let mut n = 3;
    for m in msgs {
        n += 3 + text_of(m.get("content")).len().div_ceil(4) as u64;
    }
    n
}

/// The conversation already ends with a tool result (OpenAI `tool` message or an Anthropic user
/// message holding a `tool_result` block): time for a text answer.
pub(crate) fn after_tool_result(req: &Value) -> bool {
    let Some(last) = req.get("messages").and_then(Value::as_array).and_then(|m| m.last()) else {
        return false;
    };
    last["role"] == "tool"
        || last["content"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

/// The arguments every mock tool call carries.
pub(crate) const TOOL_ARGS: &str = r#"{"city":"Paris"}"#;

pub(crate) fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The answer's pieces: one word (with its leading space) per chunk.
pub(crate) fn answer_pieces(req: &Value, b: &Behaviour) -> (Vec<String>, &'static str) {
    let words: Vec<String> = if b.echo {
        let msgs = req.get("messages").and_then(Value::as_array);
        let last_user = msgs.and_then(|m| m.iter().rev().find(|m| m["role"] == "user"));
        text_of(last_user.and_then(|m| m.get("content")))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    } else {
        (0..b.chunks as usize).map(|i| WORDS[i % WORDS.len()].to_owned()).collect()
    };
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64))
        .unwrap_or(u64::MAX);
    let pieces: Vec<String> = words
        .into_iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w } else { format!(" {w}") })
        .collect();
    // A prefill is continued first: the limit counts what is generated after it.
    let mut pieces = continue_after_prefill(req, pieces);
    let finish = if (pieces.len() as u64) > cap { "length" } else { "stop" };
    pieces.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    (pieces, finish)
}

pub(crate) fn error(
    status: u16,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<MockBody> {
    super::play(Default::default(), String::new(), error_script(status, message, param, code))
}

fn error_script(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Script {
    let kind = match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    Script {
        status,
        headers: vec![("content-type", "application/json".into())],
        steps: vec![Step::Send(Bytes::from(body.to_string()))],
    }
}

/// Faults shared by every endpoint; `None` when the call should be answered normally.
pub(crate) fn fault(req: &Value, b: &Behaviour) -> Option<Script> {
    if let Some(status) = b.status {
        let mut s = error_script(status, &format!("mock error {status}"), None, None);
        if let Some(ra) = &b.retry_after {
            s.headers.push(("retry-after", ra.clone()));
        }
        if let Some(ms) = b.retry_after_ms {
            s.headers.push(("retry-after-ms", ms.to_string()));
        }
        return Some(s);
    }
    if let Some(ctx) = b.context {
        let n = prompt_tokens(req);
        if n > ctx {
            let msg = format!(
                "This model's maximum context length is {ctx} tokens. However, your messages resulted in {n} tokens. Please reduce the length of the messages."
            );
            return Some(error_script(
                400,
                &msg,
                Some("messages"),
                Some("context_length_exceeded"),
            ));
        }
    }
    if b.filter {
        let msg =
            "The response was filtered due to the prompt triggering content management policy.";
        return Some(error_script(400, msg, Some("prompt"), Some("content_filter")));
    }
    if b.no_prefill {
        let last = req.get("messages").and_then(Value::as_array).and_then(|m| m.last());
        if last.is_some_and(|m| m["role"] == "assistant") {
            let msg = "This model does not support assistant message prefill. The conversation must end with a user message.";
            return Some(error_script(400, msg, Some("messages"), None));
        }
    }
    let plain = |ct: &str, body: &'static [u8]| Script {
        status: 200,
        headers: vec![("content-type", ct.to_owned())],
        steps: vec![Step::Sleep(b.ttft), Step::Send(Bytes::from_static(body))],
    };
    if b.html {
        return Some(plain("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"));
    }
    if b.empty {
        return Some(Script {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            steps: vec![],
        });
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if b.garbage {
        return Some(if stream {
            plain("text/event-stream", b"data: {\"id\":\"x\",\"choi\n\ndata: \xff\xfe not json\n\n")
        } else {
            plain("application/json", b"{\"id\": \"chatcmpl-x\", \"choices\": [")
        });
    }
    if b.error200 {
        let err = br#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#;
        return Some(if stream {
            plain("text/event-stream", b"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n")
        } else {
            plain("application/json", err)
        });
    }
    None
}

pub(crate) fn chat(req: &Value, b: &Behaviour) -> Script {
    if let Some(s) = fault(req, b) {
        return s;
    }
    let model = req.get("model").cloned().unwrap_or(Value::Null);
    let (pieces, finish) = answer_pieces(req, b);
    let prompt = prompt_tokens(req);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": pieces.len(),
        "total_tokens": prompt + pieces.len() as u64,
        "prompt_tokens_details": {"cached_tokens": 0},
    });
    let id = "chatcmpl-mock";
    if let Some(tool) = b.tool.as_deref().filter(|_| !after_tool_result(req)) {
        return tool_call(req, id, &model, tool, prompt, b);
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage =
            req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        return stream(
            id,
            &model,
            &pieces,
            finish,
            (include_usage && !b.no_usage).then_some(usage),
            b,
        );
    }
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": pieces.concat(), "refusal": null},
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage,
        "system_fingerprint": "fp_mock",
    });
    if b.no_usage
        && let Some(o) = body.as_object_mut()
    {
        o.remove("usage");
    }
    let text = body.to_string();
    if let Some(broken) = broken_body(&text, b) {
        return broken;
    }
    Script {
        status: 200,
        headers: vec![
            ("content-type", "application/json".into()),
            ("x-request-id", "req_mock".into()),
        ],
        steps: vec![Step::Sleep(b.ttft), Step::Send(Bytes::from(text))],
    }
}

/// With `cut` or `stall`, a non-stream answer (either wire) that breaks (or stops) half-way
/// through its body `text`.
pub(crate) fn broken_body(text: &str, b: &Behaviour) -> Option<Script> {
    let end = match (b.cut, b.stall) {
        (Some(_), _) => Step::Cut,
        (None, Some(_)) => Step::Stall,
        (None, None) => return None,
    };
    let half = Bytes::copy_from_slice(&text.as_bytes()[..text.len() / 2]);
    Some(Script {
        status: 200,
        headers: vec![("content-type", "application/json".into())],
        steps: vec![Step::Sleep(b.ttft), Step::Send(half), Step::Sleep(FLUSH), end],
    })
}

/// A pause before a deliberate cut, so an HTTP server flushes what was sent before it breaks
/// the connection (hyper drops unflushed frames when a body errors).
pub(crate) const FLUSH: std::time::Duration = std::time::Duration::from_millis(5);

fn tool_call(
    req: &Value,
    id: &str,
    model: &Value,
    tool: &str,
    prompt: u64,
    b: &Behaviour,
) -> Script {
    let call_id = "call_mock_1";
    let usage =
        json!({"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7});
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let body = json!({
            "id": id, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": tool, "arguments": TOOL_ARGS}}]}}],
            "usage": usage,
        });
        return Script {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            steps: vec![Step::Sleep(b.ttft), Step::Send(Bytes::from(body.to_string()))],
        };
    }
    let (a, z) = TOOL_ARGS.split_at(TOOL_ARGS.len() / 2);
    let mut steps = vec![
        Step::Send(chunk(id, model, json!({"role": "assistant", "content": null}), None)),
        Step::Sleep(b.ttft),
    ];
    steps.push(Step::Send(chunk(id, model, json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": tool, "arguments": ""}}]}), None)));
    for part in [a, z] {
        steps.push(Step::Send(chunk(
            id,
            model,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
            None,
        )));
    }
    steps.push(Step::Send(chunk(id, model, json!({}), Some("tool_calls"))));
    if req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": [], "usage": usage});
        steps.push(Step::Send(crate::sse::encode_data(c.to_string().as_bytes())));
    }
    steps.push(Step::Send(Bytes::from_static(crate::sse::DONE)));
    sse_script(steps)
}

fn chunk(id: &str, model: &Value, delta: Value, finish: Option<&str>) -> Bytes {
    let c = json!({
        "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    crate::sse::encode_data(c.to_string().as_bytes())
}

fn stream(
    id: &str,
    model: &Value,
    pieces: &[String],
    finish: &str,
    usage: Option<Value>,
    b: &Behaviour,
) -> Script {
    if b.done_only {
        return sse_script(vec![Step::Send(Bytes::from_static(crate::sse::DONE))]);
    }
    let mut steps =
        vec![Step::Send(chunk(id, model, json!({"role": "assistant", "content": ""}), None))];
    steps.push(Step::Sleep(b.ttft));
    for (i, p) in pieces.iter().enumerate() {
        let sent = i as u32;
        if b.cut == Some(sent) {
            steps.push(Step::Sleep(FLUSH));
            steps.push(Step::Cut);
            return sse_script(steps);
        }
        if b.stall == Some(sent) {
            steps.push(Step::Stall);
            return sse_script(steps);
        }
        if b.error_after == Some(sent) {
            let e = br#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#;
            steps.push(Step::Send(crate::sse::encode_data(e)));
            return sse_script(steps);
        }
        if i > 0 {
            steps.push(Step::Sleep(b.delay));
        }
        steps.push(Step::Send(chunk(id, model, json!({"content": p}), None)));
    }
    let n = pieces.len() as u32;
    if b.cut.is_some_and(|c| c >= n) {
        steps.push(Step::Sleep(FLUSH));
        steps.push(Step::Cut);
        return sse_script(steps);
    }
    if b.stall.is_some_and(|c| c >= n) {
        steps.push(Step::Stall);
        return sse_script(steps);
    }
    steps.push(Step::Send(chunk(id, model, json!({}), Some(finish))));
    if let Some(tail) = b.after_finish {
        let error = br#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#;
        return sse_script(after_finish(steps, tail, crate::sse::encode_data(error)));
    }
    if let Some(u) = usage {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": [], "usage": u});
        steps.push(Step::Send(crate::sse::encode_data(c.to_string().as_bytes())));
    }
    if !b.no_done {
        steps.push(Step::Send(Bytes::from_static(crate::sse::DONE)));
    }
    sse_script(steps)
}

/// A stream's steps ended as `after_finish` says; `error` is the wire's error event.
pub(crate) fn after_finish(
    mut steps: Vec<Step>,
    tail: super::behaviour::Tail,
    error: Bytes,
) -> Vec<Step> {
    use super::behaviour::Tail;
    match tail {
        Tail::Cut => steps.extend([Step::Sleep(FLUSH), Step::Cut]),
        Tail::Stall => steps.push(Step::Stall),
        Tail::Error => steps.push(Step::Send(error)),
        Tail::Garbage => steps.push(Step::Send(Bytes::from_static(b"data: {not json\n\n"))),
    }
    steps
}

pub(crate) fn sse_script(steps: Vec<Step>) -> Script {
    Script {
        status: 200,
        headers: vec![
            ("content-type", "text/event-stream".into()),
            ("cache-control", "no-cache".into()),
        ],
        steps,
    }
}

pub(crate) fn embeddings(req: &Value, b: &Behaviour) -> Script {
    if let Some(s) = fault(req, b) {
        return s;
    }
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|v| v.to_string()).collect(),
        _ => return error_script(400, "'input' is a required property", Some("input"), None),
    };
    let dims = req.get("dimensions").and_then(Value::as_u64).unwrap_or(8).clamp(1, 4096) as usize;
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += text.len().div_ceil(4) as u64;
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let v: Vec<f64> = (0..dims)
                .map(|_| {
                    for byte in text.bytes() {
                        h = (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
                    }
                    h = h.rotate_left(17);
                    ((h % 2001) as f64 / 1000.0) - 1.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let body = json!({
        "object": "list", "data": data, "model": req.get("model").cloned().unwrap_or(Value::Null),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Script {
        status: 200,
        headers: vec![("content-type", "application/json".into())],
        steps: vec![Step::Sleep(b.ttft), Step::Send(Bytes::from(body.to_string()))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// helper-51: the limit was applied before the prefill was continued, so a prefill longer
    /// than `max_tokens` was no longer a prefix and the whole answer came back from its start.
    #[test]
    fn a_prefill_is_continued_then_limited() {
        let b = Behaviour::parse("m+chunks=8").unwrap();
        let ask = |max: Option<u64>| {
            let mut req = json!({"messages": [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "The tide rises"}]});
            if let Some(m) = max {
                req["max_tokens"] = m.into();
            }
            answer_pieces(&req, &b)
        };
        assert_eq!(ask(Some(2)), (vec![" and".to_owned(), " the".to_owned()], "length"));
        assert_eq!(ask(Some(5)).1, "stop");
        assert_eq!(ask(None).0.concat(), " and the gate holds steady");
    }
}
