//! OpenAI `chat.completion` → Anthropic `message` (non-stream).
//!
//! * `id`: `msg_` + the upstream id (`chatcmpl-abc` → `msg_chatcmpl-abc`); `model`: the upstream's.
//! * `content`: a text block (when the text is non-empty), then one `tool_use` block per function
//!   tool call. A `refusal` string becomes the text when there is no other text, and sets
//!   `stop_reason: refusal`. Non-standard `reasoning_content` is dropped (an unsigned thinking block
//!   could not be sent back to Anthropic).
//! * Tool-call `arguments` are parsed into `input`. An empty string means `{}`. Arguments that are
//!   not a JSON object (the model produced broken JSON, or the stream was cut) are kept, not lost:
//!   `input` becomes `{"_raw_arguments": "<the string>"}`, so the client sees what the model
//!   produced and can fail its own validation; inventing `{}` would run the tool with no input.
//! * Tool-call ids are kept, with characters Anthropic rejects mapped to `_`; a missing id becomes
//!   `toolu_<response id>_<ordinal>`.
//! * `stop_reason`: see [`crate::translate::finish`]; `stop_sequence` is always `null` (OpenAI
//!   does not say which sequence matched). `usage`: `input_tokens = prompt_tokens - cached -
//!   cache writes`, `cache_read_input_tokens = cached_tokens`, `output_tokens = completion_tokens`.

use serde_json::{Map, Value, json};

use crate::translate::finish::anthropic_stop_reason;
use crate::translate::util::{anthropic_tool_id, body_object, prefixed};
use crate::translate::{TranslateError, Usage};

/// Translate an OpenAI chat-completions response body into an Anthropic `message`.
pub fn response(body: &Value) -> Result<Value, TranslateError> {
    let obj = body_object(body, "upstream response")?;
    if given_object(obj, "error") {
        return Err(TranslateError::body("upstream returned an error body"));
    }
    let Some(choices) = obj.get("choices").and_then(Value::as_array) else {
        return Err(TranslateError::body("upstream response has no choices array"));
    };
    let choice = choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64) == Some(0))
        .or_else(|| choices.first())
        .ok_or_else(|| TranslateError::body("upstream response has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let id = message_id(obj.get("id"));

    let mut text = content_text(message.get("content"));
    let refusal = message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty());
    if let (true, Some(r)) = (text.is_empty(), refusal) {
        text = r.to_owned();
    }
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(json!({ "type": "text", "text": text }));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            if let Some(func) = call.get("function") {
                let ordinal =
                    content.iter().filter(|b| b.get("type") == Some(&json!("tool_use"))).count();
                content.push(json!({
                    "type": "tool_use",
                    "id": tool_id(call.get("id"), &id, ordinal),
                    "name": func.get("name").and_then(Value::as_str).unwrap_or(""),
                    "input": tool_input(func.get("arguments")),
                }));
            }
        }
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let stop_reason = if refusal.is_some() { "refusal" } else { anthropic_stop_reason(finish) };
    Ok(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": obj.get("model").and_then(Value::as_str).unwrap_or(""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": Usage::from_openai(obj.get("usage").unwrap_or(&Value::Null)).to_anthropic(),
    }))
}

fn given_object(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(|v| !v.is_null())
}

/// `msg_` + the upstream id (`msg_unknown` when there is none).
pub(super) fn message_id(id: Option<&Value>) -> String {
    prefixed("msg_", id.and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("unknown"))
}

/// A tool-use id Anthropic accepts: the upstream's, sanitized, or a generated one.
pub(super) fn tool_id(id: Option<&Value>, message_id: &str, ordinal: usize) -> String {
    match id.and_then(Value::as_str).map(anthropic_tool_id).filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => anthropic_tool_id(&format!("toolu_{message_id}_{ordinal}")),
    }
}

/// `message.content`: a string, or (some compatible servers) an array of text parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
        }
        _ => String::new(),
    }
}

/// `arguments` → `input` (see the module doc for broken arguments).
fn tool_input(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Value::Object(o),
            _ => json!({ "_raw_arguments": s }),
        },
        _ => json!({}),
    }
}
