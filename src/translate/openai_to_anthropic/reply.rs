//! Anthropic `message` → OpenAI `chat.completion` (non-stream).
//!
//! * `id`: the Anthropic id prefixed with `chatcmpl-` (`msg_01X` → `chatcmpl-msg_01X`): clients
//!   see the shape they expect and logs can still find the upstream id.
//! * `model`: the upstream's `model` from the body (SPEC §3: the model that answered).
//! * `content`: text blocks joined in order; `null` when there is no text but there are tool
//!   calls (as OpenAI does), else `""` at least. `thinking` / `redacted_thinking` blocks are
//!   **dropped**: OpenAI's chat API has no reasoning field (a non-standard `reasoning_content` would
//!   surprise strict clients), and their tokens are still counted in `completion_tokens`. Server-tool
//!   blocks and other unknown blocks are dropped too.
//! * `tool_use` → `tool_calls[{id, type:function, function:{name, arguments}}]` with `input`
//!   serialized as compact JSON.
//! * `finish_reason`: see [`crate::translate::finish`]. `usage`: `prompt_tokens = input +
//!   cache_read + cache_creation`, `cached_tokens = cache_read` (see [`Usage`]).
//!
//! A plain text answer, nearly every one, takes a faster road to the same bytes
//! ([`response_bytes`]): read into borrowing structs and written out directly, instead of a
//! `Value` in and a `Value` out. An answer that road cannot read exactly (a field it does not
//! read, a field of an unexpected type, a duplicate key, a tool call) takes the general one;
//! tests run both on mutated answers and compare their bytes.

use std::io::Write;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::translate::finish::openai_finish_reason;
use crate::translate::util::{body_object, prefixed, to_json_string};
use crate::translate::{Nothing, Object, Str, TranslateError, Usage};

/// Translate an Anthropic Messages response body into an OpenAI `chat.completion`.
pub fn response(body: &Value, created_unix: u64) -> Result<Value, TranslateError> {
    let obj = body_object(body, "upstream response")?;
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        return Err(TranslateError::body("upstream returned an error body"));
    }
    let Some(blocks) = obj.get("content").and_then(Value::as_array) else {
        return Err(TranslateError::body("upstream response has no content array"));
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": to_json_string(&input)?,
                    },
                }));
            }
            _ => {}
        }
    }
    let content =
        if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) };
    let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
    if !tool_calls.is_empty()
        && let Some(m) = message.as_object_mut()
    {
        m.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let stop = obj.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    Ok(json!({
        "id": chat_id(obj.get("id")),
        "object": "chat.completion",
        "created": created_unix,
        "model": obj.get("model").and_then(Value::as_str).unwrap_or(""),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": openai_finish_reason(stop),
        }],
        "usage": Usage::from_anthropic(obj.get("usage").unwrap_or(&Value::Null)).to_openai(),
    }))
}

/// `chatcmpl-` + the Anthropic message id (`chatcmpl-unknown` when the upstream sent none).
pub(super) fn chat_id(id: Option<&Value>) -> String {
    prefixed("chatcmpl-", id.and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("unknown"))
}

/// An Anthropic `message` as the fast road reads it: every field it may carry in a plain text
/// answer, typed so that anything a `Value` would read differently fails here instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageWire<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    #[expect(dead_code, reason = "read to check its type")]
    role: Option<Str<'a>>,
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Option<Vec<Object<BlockWire<'a>>>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
    #[serde(default, borrow)]
    #[expect(dead_code, reason = "read to check its type")]
    stop_sequence: Option<Str<'a>>,
    #[serde(default, borrow)]
    usage: Option<Object<UsageWire<'a>>>,
    /// Sent as `null` unless a server tool ran.
    #[serde(default)]
    #[expect(dead_code, reason = "read to check it is null")]
    container: Option<Nothing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockWire<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    /// A text block's citations, when there are none.
    #[serde(default)]
    #[expect(dead_code, reason = "read to check it is null")]
    citations: Option<Nothing>,
}

/// Counts as non-negative integers only (others take the general road, which reads them
/// leniently).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageWire<'a> {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    #[expect(dead_code, reason = "read to check its type")]
    cache_creation: Option<Object<CacheCreationWire>>,
    #[serde(default, borrow)]
    #[expect(dead_code, reason = "read to check its type")]
    service_tier: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "read to check their types")]
struct CacheCreationWire {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

/// [`response`] serialized, for an answer the fast road reads exactly (see the module docs);
/// `None` sends it to the general road.
pub fn response_bytes(text: &str, created_unix: u64) -> Option<Vec<u8>> {
    let Object(m): Object<MessageWire<'_>> = serde_json::from_str(text).ok()?;
    if m.kind.as_deref() == Some("error") {
        return None;
    }
    let mut answer = String::new();
    for block in m.content.as_ref()? {
        match block.kind.as_deref() {
            Some("text") => answer.push_str(block.text.as_deref().unwrap_or("")),
            Some("tool_use") => return None,
            _ => {}
        }
    }
    let usage = m.usage.as_ref().map_or_else(Usage::default, |u| {
        let uncached = u.input_tokens.unwrap_or(0);
        let cached_input = u.cache_read_input_tokens.unwrap_or(0);
        let cache_creation = u.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input: uncached.saturating_add(cached_input).saturating_add(cache_creation),
            output: u.output_tokens.unwrap_or(0),
            cached_input,
            cache_creation,
        }
    });
    let finish = openai_finish_reason(m.stop_reason.as_deref().unwrap_or("end_turn"));
    let id = prefixed("chatcmpl-", m.id.as_deref().filter(|s| !s.is_empty()).unwrap_or("unknown"));
    // Keys in the order serde_json writes a `Value`'s (sorted).
    let mut out = Vec::with_capacity(text.len() + 160);
    out.extend_from_slice(br#"{"choices":[{"finish_reason":""#);
    out.extend_from_slice(finish.as_bytes());
    out.extend_from_slice(br#"","index":0,"logprobs":null,"message":{"content":"#);
    serde_json::to_writer(&mut out, &answer).ok()?;
    out.extend_from_slice(br#","refusal":null,"role":"assistant"}}],"created":"#);
    write!(out, "{created_unix},\"id\":").ok()?;
    serde_json::to_writer(&mut out, &id).ok()?;
    out.extend_from_slice(br#","model":"#);
    serde_json::to_writer(&mut out, m.model.as_deref().unwrap_or("")).ok()?;
    write!(
        out,
        r#","object":"chat.completion","usage":{{"completion_tokens":{},"prompt_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}},"total_tokens":{}}}}}"#,
        usage.output,
        usage.input,
        usage.cached_input,
        usage.total()
    )
    .ok()?;
    Some(out)
}
