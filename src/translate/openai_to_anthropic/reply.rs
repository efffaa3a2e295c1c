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

use serde_json::{Value, json};

use crate::translate::finish::openai_finish_reason;
use crate::translate::util::{body_object, prefixed, to_json_string};
use crate::translate::{TranslateError, Usage};

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
