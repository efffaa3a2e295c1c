//! Anthropic `system` + `messages` → OpenAI `messages`.
//!
//! * A string `content` stays a string. Blocks:
//!   - `text` → a text part; `image` → an `image_url` part (`base64` source → a
//!     `data:<media_type>;base64,<data>` URL, `url` source → the URL; `file` sources are
//!     untranslatable). A user message of exactly one text block becomes a string.
//!   - `tool_result` (user) → its own `{role: tool, tool_call_id, content}` message, placed
//!     before the rest of the user turn (OpenAI requires tool messages right after the assistant's
//!     `tool_calls`); the turn's other blocks follow as one user message. The result's content is a
//!     string, its text blocks joined with `"\n"`. `is_error: true` has no OpenAI field, so the
//!     content is prefixed with `"Error: "` (just `"Error"` when empty) so the model still knows.
//!   - `tool_use` (assistant) → `tool_calls[{id, type: function, function: {name, arguments}}]`,
//!     `input` serialized as compact JSON; the assistant's text blocks are joined into `content`
//!     (`null` when there is no text but there are tool calls).
//!   - `thinking` / `redacted_thinking` (assistant) → dropped: only Anthropic can verify them.
//!   - `cache_control` and `citations` on any block → ignored.
//!   - `document`, `search_result`, server-tool blocks and unknown blocks → untranslatable.

use serde_json::{Map, Value, json};

use super::TARGET;
use crate::translate::util::{
    Obj, array, given, object, required_str, to_json_string, unsupported,
};
use crate::translate::{RequestOptions, TranslateError};

/// `system`: a string, or text blocks joined with `"\n\n"`.
pub(super) fn system_text(system: &Value, opts: &RequestOptions) -> Result<String, TranslateError> {
    if let Value::String(s) = system {
        return Ok(s.clone());
    }
    let mut texts = Vec::new();
    for (i, block) in array(system, "system")?.iter().enumerate() {
        let p = format!("system[{i}]");
        let block = object(block, &p)?;
        if block.get("type").and_then(Value::as_str) == Some("text") {
            let text = required_str(block, "text", &format!("{p}.text"))?;
            if !text.is_empty() {
                texts.push(text);
            }
        } else {
            unsupported(opts, &p, TARGET)?;
        }
    }
    Ok(texts.join("\n\n"))
}

/// Append the OpenAI messages for Anthropic `messages` to `out`.
pub(super) fn convert(
    messages: &Value,
    opts: &RequestOptions,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    for (i, message) in array(messages, "messages")?.iter().enumerate() {
        let p = format!("messages[{i}]");
        let message = object(message, &p)?;
        let role = required_str(message, "role", &format!("{p}.role"))?;
        if role != "user" && role != "assistant" {
            return Err(TranslateError::field(format!("{p}.role"), "expected user or assistant"));
        }
        let blocks = match given(message.get("content")) {
            Some(Value::String(s)) => {
                out.push(json!({ "role": role, "content": s }));
                continue;
            }
            Some(Value::Array(blocks)) => blocks,
            Some(_) => {
                return Err(TranslateError::field(
                    format!("{p}.content"),
                    "expected a string or an array of blocks",
                ));
            }
            None => {
                return Err(TranslateError::field(
                    format!("{p}.content"),
                    "required field is missing",
                ));
            }
        };
        if role == "user" {
            user(blocks, &p, opts, out)?;
        } else {
            out.push(assistant(blocks, &p, opts)?);
        }
    }
    Ok(())
}

fn user(
    blocks: &[Value],
    p: &str,
    opts: &RequestOptions,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let pb = format!("{p}.content[{j}]");
        let block = object(block, &pb)?;
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({ "type": "text", "text": required_str(block, "text", &format!("{pb}.text"))? })),
            Some("image") => {
                if let Some(part) = image(block, &pb, opts)? {
                    parts.push(part);
                }
            }
            Some("tool_result") => out.push(tool_result(block, &pb, opts)?),
            _ => unsupported(opts, &pb, TARGET)?,
        }
    }
    let content = match parts.as_slice() {
        [] if blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result")) =>
        {
            return Ok(());
        }
        [] => json!(""),
        [only] if only.get("type").and_then(Value::as_str) == Some("text") => {
            only.get("text").cloned().unwrap_or(json!(""))
        }
        _ => Value::Array(parts),
    };
    out.push(json!({ "role": "user", "content": content }));
    Ok(())
}

fn image(block: &Obj, pb: &str, opts: &RequestOptions) -> Result<Option<Value>, TranslateError> {
    let ps = format!("{pb}.source");
    let source = match given(block.get("source")) {
        Some(s) => object(s, &ps)?,
        None => return Err(TranslateError::field(ps, "required field is missing")),
    };
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = required_str(source, "media_type", &format!("{ps}.media_type"))?;
            let data = required_str(source, "data", &format!("{ps}.data"))?;
            format!("data:{media};base64,{data}")
        }
        Some("url") => required_str(source, "url", &format!("{ps}.url"))?.to_owned(),
        _ => {
            unsupported(opts, &ps, TARGET)?;
            return Ok(None);
        }
    };
    Ok(Some(json!({ "type": "image_url", "image_url": { "url": url } })))
}

fn tool_result(block: &Obj, pb: &str, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let id = required_str(block, "tool_use_id", &format!("{pb}.tool_use_id"))?;
    let mut text = match given(block.get("content")) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            let mut texts = Vec::new();
            for (k, inner) in array(other, &format!("{pb}.content"))?.iter().enumerate() {
                let pi = format!("{pb}.content[{k}]");
                let inner = object(inner, &pi)?;
                if inner.get("type").and_then(Value::as_str) == Some("text") {
                    texts.push(required_str(inner, "text", &format!("{pi}.text"))?);
                } else {
                    unsupported(opts, &pi, TARGET)?; // images, documents: a tool message is text only
                }
            }
            texts.join("\n")
        }
    };
    if let Some(flag) = given(block.get("is_error"))
        && flag
            .as_bool()
            .ok_or_else(|| TranslateError::field(format!("{pb}.is_error"), "expected a boolean"))?
    {
        text = if text.is_empty() { "Error".to_owned() } else { format!("Error: {text}") };
    }
    Ok(json!({ "role": "tool", "tool_call_id": id, "content": text }))
}

fn assistant(blocks: &[Value], p: &str, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let pb = format!("{p}.content[{j}]");
        let block = object(block, &pb)?;
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(required_str(block, "text", &format!("{pb}.text"))?),
            Some("tool_use") => {
                let input = match given(block.get("input")) {
                    Some(v) => to_json_string(v)?,
                    None => "{}".to_owned(),
                };
                calls.push(json!({
                    "id": required_str(block, "id", &format!("{pb}.id"))?,
                    "type": "function",
                    "function": { "name": required_str(block, "name", &format!("{pb}.name"))?, "arguments": input },
                }));
            }
            Some("thinking" | "redacted_thinking") => {}
            _ => unsupported(opts, &pb, TARGET)?,
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content =
        if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) };
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(message))
}
