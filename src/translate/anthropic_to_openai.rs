//! An Anthropic Messages client (`/v1/messages`) served by an OpenAI-style chat upstream.
//!
//! [`request`] turns a Messages request into a chat request; [`response`] turns the
//! `chat.completion` into a Messages `message`; [`StreamTranslator`] turns chat chunks into the
//! Messages event stream.
//!
//! Request choices (the goldens in `tests/fixtures/translate/a2o_*` pin them down):
//! * `system` (a string, or text blocks joined with a blank line `"\n\n"`) → a leading `system`
//!   message with string content (the form every OpenAI-compatible server accepts).
//! * `max_tokens` → `max_completion_tokens` (the gateway core renames it back to `max_tokens`
//!   for providers other than `kind: openai`).
//! * `stop_sequences` → `stop`; `temperature`, `top_p` pass (Anthropic's 0–1 range fits in
//!   OpenAI's 0–2); `metadata.user_id` → `user`.
//! * `stream: true` → `stream: true` + `stream_options: {include_usage: true}` (SPEC §3: tidegate
//!   always accounts usage; the Anthropic client never sees the extra chunk).
//! * `output_config.format` (`json_schema`) → `response_format: {type: json_schema, json_schema:
//!   {name: "output", schema, strict: true}}`.
//! * **dropped silently** (hints that do not change what the answer may contain): `thinking`
//!   (extended-thinking budget; OpenAI-style models reason on their own or not at all),
//!   `output_config.effort`, `service_tier` (Anthropic's `auto`/`standard_only` have no OpenAI
//!   meaning), `cache_control` at the top level (automatic caching) and on blocks, tools and
//!   system blocks (a caching hint; OpenAI caches prefixes automatically), `metadata` keys other
//!   than `user_id`.
//! * **rejected** (400 naming the field, or dropped with `drop_unsupported_params`): `top_k`,
//!   server tools (`tools[i]` with a `type` other than `custom`), document/search-result/server-tool
//!   blocks, images inside tool results, and every unknown field (`container`, `mcp_servers`,
//!   `context_management`, ...).
//! * **always rejected**, whatever the route says: `thread` (a stored conversation the upstream
//!   does not have), with `error.details.error_code: thread_unsupported_request` so the
//!   anthropic SDK re-sends the turn with the full history and no thread.
//! * Message rules are in `anthropic_to_openai/messages.rs`.

mod messages;
mod reply;
mod stream;

use serde_json::{Map, Value, json};

use super::util::{
    array, body_object, boolean, given, number, object, positive_int, string, unsupported,
};
use super::{RequestOptions, TranslateError};

pub use reply::{response, response_bytes};
pub use stream::{AnthropicEvent, StreamTranslator};

const TARGET: &str = "OpenAI chat completions";

/// Translate an Anthropic Messages request body into an OpenAI chat-completions request body.
pub fn request(body: &Value, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let obj = body_object(body, "request body")?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(opts.upstream_model.clone()));

    let mut chat = Vec::new();
    if let Some(system) = given(obj.get("system")) {
        let text = messages::system_text(system, opts)?;
        if !text.is_empty() {
            chat.push(json!({ "role": "system", "content": text }));
        }
    }
    match given(obj.get("messages")) {
        Some(m) => messages::convert(m, opts, &mut chat)?,
        None => {
            return Err(TranslateError::field("messages", "required field is missing"));
        }
    }
    out.insert("messages".into(), Value::Array(chat));

    let mut tools = Vec::new();
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "messages" | "system" | "tool_choice" => {}
            "max_tokens" => {
                out.insert(
                    "max_completion_tokens".into(),
                    json!(positive_int(value, "max_tokens")?),
                );
            }
            "stop_sequences" => {
                let items = array(value, "stop_sequences")?;
                let mut stops = Vec::with_capacity(items.len());
                for (i, s) in items.iter().enumerate() {
                    stops.push(json!(string(s, &format!("stop_sequences[{i}]"))?));
                }
                if !stops.is_empty() {
                    out.insert("stop".into(), Value::Array(stops));
                }
            }
            "temperature" | "top_p" => {
                out.insert(key.clone(), number(value, key)?);
            }
            "stream" => {
                let stream = boolean(value, "stream")?;
                out.insert("stream".into(), Value::Bool(stream));
                if stream {
                    out.insert("stream_options".into(), json!({ "include_usage": true }));
                }
            }
            "metadata" => {
                if let Some(user) = given(object(value, "metadata")?.get("user_id")) {
                    out.insert("user".into(), json!(string(user, "metadata.user_id")?));
                }
            }
            "tools" => tools = tool_defs(value, opts)?,
            "output_config" => {
                if let Some(format) = output_format(value, opts)? {
                    out.insert("response_format".into(), format);
                }
            }
            "thinking" | "service_tier" | "cache_control" => {}
            "thread" => return Err(thread_unsupported()),
            other => unsupported(opts, other, TARGET)?,
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = given(obj.get("tool_choice")) {
            tool_choice(choice, &mut out)?;
        }
    }
    Ok(Value::Object(out))
}

/// `thread` (the anthropic SDK's message threads, sent by `tool_runner()` by default): a
/// `continue` thread makes `messages` only the turn's new messages, and `system` and `tools`
/// are left out, so an OpenAI-wire upstream would answer without the conversation. Never
/// dropped, even with `drop_unsupported_params`; the SDK reads `error.details` and re-sends
/// the turn with the full history and no thread.
fn thread_unsupported() -> TranslateError {
    TranslateError::field(
        "thread",
        format!(
            "`thread` has no equivalent in the {TARGET} API (no upstream-stored conversation); \
             send the full message history without `thread`"
        ),
    )
    .with_details(json!({ "error_code": "thread_unsupported_request", "unsupported": ["thread"] }))
}

/// `{name, description?, input_schema}` → `{type: function, function: {name, description?, parameters}}`.
fn tool_defs(value: &Value, opts: &RequestOptions) -> Result<Vec<Value>, TranslateError> {
    let items = array(value, "tools")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let p = format!("tools[{i}]");
        let tool = object(tool, &p)?;
        if !matches!(given(tool.get("type")).and_then(Value::as_str), None | Some("custom")) {
            unsupported(opts, &p, TARGET)?; // a server tool (web search, code execution, ...)
            continue;
        }
        let mut func = Map::new();
        let name = match given(tool.get("name")) {
            Some(n) => string(n, &format!("{p}.name"))?,
            None => {
                return Err(TranslateError::field(
                    format!("{p}.name"),
                    "required field is missing",
                ));
            }
        };
        func.insert("name".into(), json!(name));
        if let Some(d) = given(tool.get("description")) {
            func.insert("description".into(), json!(string(d, &format!("{p}.description"))?));
        }
        let schema = match given(tool.get("input_schema")) {
            Some(s) => object(s, &format!("{p}.input_schema"))?.clone(),
            None => {
                return Err(TranslateError::field(
                    format!("{p}.input_schema"),
                    "required field is missing",
                ));
            }
        };
        func.insert("parameters".into(), Value::Object(schema));
        if let Some(strict) = given(tool.get("strict")) {
            func.insert("strict".into(), Value::Bool(boolean(strict, &format!("{p}.strict"))?));
        }
        out.push(json!({ "type": "function", "function": func }));
    }
    Ok(out)
}

/// `auto` → `"auto"`, `any` → `"required"`, `tool` → named function, `none` → `"none"`;
/// `disable_parallel_tool_use: true` → `parallel_tool_calls: false`.
fn tool_choice(value: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    let choice = object(value, "tool_choice")?;
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = match given(choice.get("name")) {
                Some(n) => string(n, "tool_choice.name")?,
                None => {
                    return Err(TranslateError::field(
                        "tool_choice.name",
                        "required field is missing",
                    ));
                }
            };
            json!({ "type": "function", "function": { "name": name } })
        }
        _ => {
            return Err(TranslateError::field(
                "tool_choice.type",
                "expected auto, any, tool or none",
            ));
        }
    };
    out.insert("tool_choice".into(), mapped);
    if let Some(d) = given(choice.get("disable_parallel_tool_use"))
        && boolean(d, "tool_choice.disable_parallel_tool_use")?
    {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

/// `output_config` → `response_format` (None: nothing to send).
fn output_format(value: &Value, opts: &RequestOptions) -> Result<Option<Value>, TranslateError> {
    let config = object(value, "output_config")?;
    let mut result = None;
    for (key, v) in config {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "effort" => {}
            "format" => {
                let format = object(v, "output_config.format")?;
                if format.get("type").and_then(Value::as_str) != Some("json_schema") {
                    unsupported(opts, "output_config.format.type", TARGET)?;
                    continue;
                }
                let schema = match given(format.get("schema")) {
                    Some(s) => object(s, "output_config.format.schema")?,
                    None => {
                        return Err(TranslateError::field(
                            "output_config.format.schema",
                            "required field is missing",
                        ));
                    }
                };
                result = Some(json!({
                    "type": "json_schema",
                    "json_schema": { "name": "output", "schema": schema, "strict": true },
                }));
            }
            other => unsupported(opts, &format!("output_config.{other}"), TARGET)?,
        }
    }
    Ok(result)
}
