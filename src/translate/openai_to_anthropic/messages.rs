//! OpenAI `messages` → Anthropic `system` + `messages`.
//!
//! * `system`/`developer` messages → top-level `system` (see the module doc of the parent).
//! * `user` content: a string stays a string; parts become blocks: `text` → text,
//!   `image_url` with an `http(s)` URL → `{type:image, source:{type:url,url}}`, with a
//!   `data:<media>;base64,<data>` URL → `{type:image, source:{type:base64, media_type, data}}`
//!   (`detail` has no counterpart and is dropped); `input_audio`, `file` and other parts are
//!   untranslatable.
//! * `assistant`: text (and `refusal`) parts → text blocks, empty text skipped (Anthropic rejects
//!   empty text blocks); `tool_calls` → `tool_use` blocks with `arguments` parsed into `input`
//!   (invalid JSON, or JSON that is not an object, is a 400 naming the field; an empty string
//!   means `{}`). An assistant message left with no blocks is omitted.
//! * `tool` messages → `tool_result` blocks (`tool_use_id` = `tool_call_id`) in a user message.
//! * Consecutive messages of the same Anthropic role are merged into one message (consecutive
//!   `tool` messages, and a user message right after tool results, become one user message), and
//!   `tool_result` blocks are moved to the front of a user message: Anthropic requires tool results
//!   to come first in the turn after the `tool_use`.
//! * `name` on a message has no counterpart and is ignored, as are response-only keys that SDKs
//!   echo back (`annotations`, ...); a non-null `function_call` or `audio` is untranslatable.

use serde_json::{Value, json};

use super::TARGET;
use crate::translate::util::{
    Obj, anthropic_tool_id, array, given, object, required_str, string, unsupported,
};
use crate::translate::{RequestOptions, TranslateError};

pub(super) struct Converted {
    pub(super) system: Option<Value>,
    pub(super) messages: Vec<Value>,
}

/// One Anthropic message being built. `plain`: it is a single string-content message, which is
/// sent back as a string.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
    plain: bool,
}

pub(super) fn convert(
    messages: Option<&Value>,
    opts: &RequestOptions,
) -> Result<Converted, TranslateError> {
    let Some(messages) = messages else {
        return Err(TranslateError::field("messages", "required field is missing"));
    };
    let items = array(messages, "messages")?;
    let mut system: Vec<String> = Vec::new();
    let mut system_messages = 0usize;
    let mut system_plain = true;
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in items.iter().enumerate() {
        let p = format!("messages[{i}]");
        let message = object(message, &p)?;
        let role = required_str(message, "role", &format!("{p}.role"))?;
        match role {
            "system" | "developer" => {
                system_messages += 1;
                let content = content_of(message, &p)?;
                system_plain &= content.is_string();
                system.extend(text_only(content, &format!("{p}.content"), opts)?);
            }
            "user" => {
                let content = content_of(message, &p)?;
                let plain = content.is_string();
                push(&mut turns, "user", user_blocks(content, &p, opts)?, plain);
            }
            "assistant" => {
                let blocks = assistant_blocks(message, &p, opts)?;
                let plain = message.get("content").is_some_and(Value::is_string);
                if !blocks.is_empty() {
                    push(&mut turns, "assistant", blocks, plain);
                }
            }
            "tool" => {
                let id = required_str(message, "tool_call_id", &format!("{p}.tool_call_id"))?;
                let content = match content_of(message, &p)? {
                    Value::String(s) => Value::String(s.clone()),
                    other => {
                        let texts = text_only(other, &format!("{p}.content"), opts)?;
                        Value::Array(
                            texts
                                .into_iter()
                                .map(|t| json!({ "type": "text", "text": t }))
                                .collect(),
                        )
                    }
                };
                let block = json!({ "type": "tool_result", "tool_use_id": anthropic_tool_id(id), "content": content });
                push(&mut turns, "user", vec![block], false);
            }
            "function" => {
                return Err(TranslateError::field(
                    format!("{p}.role"),
                    "the deprecated `function` role cannot be translated; use `tool` messages",
                ));
            }
            _ => return Err(TranslateError::field(format!("{p}.role"), "unknown role")),
        }
    }
    let system = match (system_messages, system_plain, system.len()) {
        (_, _, 0) => None,
        (1, true, 1) => system.pop().map(Value::String),
        _ => Some(Value::Array(
            system.into_iter().map(|t| json!({ "type": "text", "text": t })).collect(),
        )),
    };
    let messages = turns.into_iter().map(finish_turn).collect();
    Ok(Converted { system, messages })
}

fn push(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>, plain: bool) {
    match turns.last_mut() {
        Some(last) if last.role == role => {
            last.blocks.extend(blocks);
            last.plain = false;
        }
        _ => turns.push(Turn { role, blocks, plain }),
    }
}

fn finish_turn(mut turn: Turn) -> Value {
    if let (true, [only]) = (turn.plain, turn.blocks.as_slice())
        && let Some(Value::String(text)) = only.get("text")
    {
        return json!({ "role": turn.role, "content": text });
    }
    // Stable: tool results first, everything else after, each in its original order.
    turn.blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
    json!({ "role": turn.role, "content": turn.blocks })
}

fn content_of<'a>(message: &'a Obj, p: &str) -> Result<&'a Value, TranslateError> {
    match given(message.get("content")) {
        Some(c) if c.is_string() || c.is_array() => Ok(c),
        Some(_) => Err(TranslateError::field(
            format!("{p}.content"),
            "expected a string or an array of parts",
        )),
        None => Err(TranslateError::field(format!("{p}.content"), "required field is missing")),
    }
}

/// The texts of a string or an array of `text` parts (system, developer and tool content);
/// empty texts are skipped.
fn text_only(
    content: &Value,
    p: &str,
    opts: &RequestOptions,
) -> Result<Vec<String>, TranslateError> {
    if let Value::String(s) = content {
        return Ok(if s.is_empty() { Vec::new() } else { vec![s.clone()] });
    }
    let mut out = Vec::new();
    for (j, part) in array(content, p)?.iter().enumerate() {
        let pp = format!("{p}[{j}]");
        let part = object(part, &pp)?;
        if part.get("type").and_then(Value::as_str) == Some("text") {
            let text = required_str(part, "text", &format!("{pp}.text"))?;
            if !text.is_empty() {
                out.push(text.to_owned());
            }
        } else {
            unsupported(opts, &pp, TARGET)?;
        }
    }
    Ok(out)
}

fn user_blocks(
    content: &Value,
    p: &str,
    opts: &RequestOptions,
) -> Result<Vec<Value>, TranslateError> {
    if let Value::String(s) = content {
        return Ok(vec![json!({ "type": "text", "text": s })]);
    }
    let mut out = Vec::new();
    for (j, part) in array(content, &format!("{p}.content"))?.iter().enumerate() {
        let pp = format!("{p}.content[{j}]");
        let part = object(part, &pp)?;
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                out.push(json!({ "type": "text", "text": required_str(part, "text", &format!("{pp}.text"))? }));
            }
            Some("image_url") => out.push(image(part, &pp)?),
            _ => unsupported(opts, &pp, TARGET)?,
        }
    }
    Ok(out)
}

fn image(part: &Obj, pp: &str) -> Result<Value, TranslateError> {
    let url = match given(part.get("image_url")) {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => required_str(o, "url", &format!("{pp}.image_url.url"))?,
        Some(_) => {
            return Err(TranslateError::field(
                format!("{pp}.image_url"),
                "expected an object with a url",
            ));
        }
        None => {
            return Err(TranslateError::field(
                format!("{pp}.image_url"),
                "required field is missing",
            ));
        }
    };
    let param = format!("{pp}.image_url.url");
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((header, data)) = rest.split_once(',') else {
            return Err(TranslateError::field(param, "malformed data URL"));
        };
        let Some(media_type) = header.strip_suffix(";base64") else {
            return Err(TranslateError::field(param, "only base64 data URLs can be translated"));
        };
        let media_type = media_type.split(';').next().unwrap_or(media_type);
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(TranslateError::field(param, "expected an http(s) URL or a base64 data URL"))
}

fn assistant_blocks(
    message: &Obj,
    p: &str,
    opts: &RequestOptions,
) -> Result<Vec<Value>, TranslateError> {
    fn text(t: &str, out: &mut Vec<Value>) {
        if !t.is_empty() {
            out.push(json!({ "type": "text", "text": t }));
        }
    }
    let mut out = Vec::new();
    match given(message.get("content")) {
        None => {}
        Some(Value::String(s)) => text(s, &mut out),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{p}.content[{j}]");
                let part = object(part, &pp)?;
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text(required_str(part, "text", &format!("{pp}.text"))?, &mut out)
                    }
                    Some("refusal") => {
                        text(required_str(part, "refusal", &format!("{pp}.refusal"))?, &mut out)
                    }
                    _ => unsupported(opts, &pp, TARGET)?,
                }
            }
        }
        Some(_) => {
            return Err(TranslateError::field(
                format!("{p}.content"),
                "expected a string or an array of parts",
            ));
        }
    }
    if let Some(r) = given(message.get("refusal")) {
        text(string(r, &format!("{p}.refusal"))?, &mut out);
    }
    for key in ["function_call", "audio"] {
        if given(message.get(key)).is_some() {
            unsupported(opts, &format!("{p}.{key}"), TARGET)?;
        }
    }
    if let Some(calls) = given(message.get("tool_calls")) {
        for (j, call) in array(calls, &format!("{p}.tool_calls"))?.iter().enumerate() {
            let pc = format!("{p}.tool_calls[{j}]");
            let call = object(call, &pc)?;
            if !matches!(call.get("type").and_then(Value::as_str), Some("function") | None) {
                unsupported(opts, &pc, TARGET)?;
                continue;
            }
            out.push(tool_use(call, &pc)?);
        }
    }
    Ok(out)
}

fn tool_use(call: &Obj, pc: &str) -> Result<Value, TranslateError> {
    let id = required_str(call, "id", &format!("{pc}.id"))?;
    let func = match given(call.get("function")) {
        Some(f) => object(f, &format!("{pc}.function"))?,
        None => {
            return Err(TranslateError::field(
                format!("{pc}.function"),
                "required field is missing",
            ));
        }
    };
    let name = required_str(func, "name", &format!("{pc}.function.name"))?;
    let param = format!("{pc}.function.arguments");
    let input = match given(func.get("arguments")) {
        None => json!({}),
        Some(Value::Object(o)) => Value::Object(o.clone()),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Value::Object(o),
            Ok(_) => {
                return Err(TranslateError::field(
                    param,
                    "tool call arguments must be a JSON object",
                ));
            }
            Err(_) => {
                return Err(TranslateError::field(param, "tool call arguments are not valid JSON"));
            }
        },
        Some(_) => return Err(TranslateError::field(param, "expected a JSON string")),
    };
    Ok(json!({ "type": "tool_use", "id": anthropic_tool_id(id), "name": name, "input": input }))
}
