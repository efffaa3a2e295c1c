//! OpenAI `chat.completion` → Anthropic `message` (non-stream).
//!
//! * `id`: `msg_` + the upstream id (`chatcmpl-abc` → `msg_chatcmpl-abc`); `model`: the upstream's.
//! * `content`: a text block (when the text is non-empty), then one `tool_use` block per function
//!   tool call (or for the deprecated `message.function_call`, when there are no `tool_calls`). A `refusal` string becomes the text when there is no other text, and sets
//!   `stop_reason: refusal`. Non-standard `reasoning_content` is dropped (an unsigned thinking block
//!   could not be sent back to Anthropic).
//! * Tool-call `arguments` are parsed into `input`. An empty string means `{}`. Arguments that are
//!   not a JSON object (the model produced broken JSON, or the stream was cut) are kept, not lost:
//!   `input` becomes `{"_raw_arguments": "<the string>"}`, so the client sees what the model
//!   produced and can fail its own validation; inventing `{}` would run the tool with no input.
//! * Tool-call ids are kept, with characters Anthropic rejects mapped to `_`; a missing id becomes
//!   `toolu_<response id>_<ordinal>`.
//! * `stop_reason`: see [`crate::translate::finish`] (`tool_use` whenever there are tool_use
//!   blocks and the finish reason is `stop` or missing); `stop_sequence` is always `null` (OpenAI
//!   does not say which sequence matched). `usage`: `input_tokens = prompt_tokens - cached -
//!   cache writes`, `cache_read_input_tokens = cached_tokens`, `output_tokens = completion_tokens`.
//!
//! A plain text answer, nearly every one, takes a faster road to the same bytes
//! ([`response_bytes`]): read into borrowing structs and written out directly, instead of a
//! `Value` in and a `Value` out. An answer that road cannot read exactly (a field it does not
//! read, a field of an unexpected type, a duplicate key, tool calls, content parts) takes the
//! general one; tests run both on mutated answers and compare their bytes.

use std::io::Write;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::translate::finish::{anthropic_stop_reason, anthropic_stop_reason_for};
use crate::translate::util::{anthropic_tool_id, body_object, prefixed};
use crate::translate::{Nothing, Object, Str, TranslateError, Usage};

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
    // The deprecated `function_call` (older compatible servers) is one call without an id.
    let legacy =
        message.get("function_call").filter(|f| f.is_object()).map(|f| json!([{ "function": f }]));
    if let Some(calls) = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .filter(|calls| !calls.is_empty())
        .or(legacy.as_ref().and_then(Value::as_array))
    {
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
    let has_tool_use = content.iter().any(|b| b.get("type") == Some(&json!("tool_use")));
    let stop_reason = match refusal {
        Some(_) => "refusal",
        None => anthropic_stop_reason_for(finish, has_tool_use),
    };
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

/// `arguments` → `input` (see the module doc for broken arguments); the stream road's rule too.
pub(super) fn tool_input(arguments: Option<&Value>) -> Value {
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

/// An OpenAI chat completion as the fast road reads it: the fields a plain text answer carries
/// (OpenAI's, and the nulls vLLM adds), typed so that anything a `Value` would read
/// differently fails here instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct CompletionWire<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    object: Option<Str<'a>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Object<ChoiceWire<'a>>>>,
    #[serde(default)]
    usage: Option<Object<UsageWire>>,
    #[serde(default, borrow)]
    system_fingerprint: Option<Str<'a>>,
    #[serde(default, borrow)]
    service_tier: Option<Str<'a>>,
    #[serde(default)]
    error: Option<Nothing>,
    #[serde(default)]
    prompt_logprobs: Option<Nothing>,
    #[serde(default)]
    kv_transfer_params: Option<Nothing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct ChoiceWire<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    message: Option<Object<MessageWire<'a>>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
    #[serde(default)]
    logprobs: Option<Nothing>,
    /// vLLM's matched stop string or token, when none matched.
    #[serde(default)]
    stop_reason: Option<Nothing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct MessageWire<'a> {
    #[serde(default, borrow)]
    role: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, borrow)]
    refusal: Option<Str<'a>>,
    /// Only when empty: tool calls take the general road.
    #[serde(default)]
    tool_calls: Option<Vec<Nothing>>,
    #[serde(default)]
    annotations: Option<Vec<Nothing>>,
    #[serde(default)]
    function_call: Option<Nothing>,
    #[serde(default)]
    audio: Option<Nothing>,
    #[serde(default)]
    reasoning_content: Option<Nothing>,
}

/// Counts as non-negative integers only (others take the general road, which reads them
/// leniently).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Object<PromptDetailsWire>>,
    #[serde(default)]
    completion_tokens_details: Option<Object<CompletionDetailsWire>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct PromptDetailsWire {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct CompletionDetailsWire {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
    #[serde(default)]
    accepted_prediction_tokens: Option<u64>,
    #[serde(default)]
    rejected_prediction_tokens: Option<u64>,
}

/// [`response`] serialized, for an answer the fast road reads exactly (see the module docs);
/// `None` sends it to the general road.
pub fn response_bytes(text: &str) -> Option<Vec<u8>> {
    let Object(c): Object<CompletionWire<'_>> = serde_json::from_str(text).ok()?;
    let choices = c.choices.as_ref()?;
    let choice = choices.iter().find(|c| c.index == Some(0)).or_else(|| choices.first())?;
    let message = choice.message.as_ref();
    let refusal = message.and_then(|m| m.refusal.as_deref()).filter(|r| !r.is_empty());
    let mut answer = message.and_then(|m| m.content.as_deref()).unwrap_or("");
    if let (true, Some(r)) = (answer.is_empty(), refusal) {
        answer = r;
    }
    let finish = choice.finish_reason.as_deref().unwrap_or("stop");
    let stop_reason = if refusal.is_some() { "refusal" } else { anthropic_stop_reason(finish) };
    let usage = c.usage.as_ref().map_or_else(Usage::default, |u| {
        let details = u.prompt_tokens_details.as_ref();
        Usage {
            input: u.prompt_tokens.unwrap_or(0),
            output: u.completion_tokens.unwrap_or(0),
            cached_input: details.and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_creation: details.and_then(|d| d.cache_write_tokens).unwrap_or(0),
        }
    });
    let id = prefixed("msg_", c.id.as_deref().filter(|s| !s.is_empty()).unwrap_or("unknown"));
    // Keys in the order serde_json writes a `Value`'s (sorted).
    let mut out = Vec::with_capacity(text.len() + 160);
    if answer.is_empty() {
        out.extend_from_slice(br#"{"content":[],"id":"#);
    } else {
        out.extend_from_slice(br#"{"content":[{"text":"#);
        serde_json::to_writer(&mut out, answer).ok()?;
        out.extend_from_slice(br#","type":"text"}],"id":"#);
    }
    serde_json::to_writer(&mut out, &id).ok()?;
    out.extend_from_slice(br#","model":"#);
    serde_json::to_writer(&mut out, c.model.as_deref().unwrap_or("")).ok()?;
    write!(
        out,
        r#","role":"assistant","stop_reason":"{stop_reason}","stop_sequence":null,"type":"message","usage":{{"cache_creation_input_tokens":{},"cache_read_input_tokens":{},"input_tokens":{},"output_tokens":{}}}}}"#,
        usage.cache_creation,
        usage.cached_input,
        usage.uncached_input(),
        usage.output
    )
    .ok()?;
    Some(out)
}
