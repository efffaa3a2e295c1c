//! An OpenAI chat client (`/v1/chat/completions`) served by an Anthropic Messages upstream.
//!
//! [`request`] turns a chat request into a Messages request; [`response`] turns the Messages
//! answer into a `chat.completion`; [`StreamTranslator`] turns the Messages event stream into
//! `chat.completion.chunk`s.
//!
//! Request choices (the goldens in `tests/fixtures/translate/o2a_*` pin them down):
//! * **temperature**: OpenAI allows 0–2, Anthropic 0–1. Values above 1 are clamped to `1.0`;
//!   values in range pass unchanged (so the common 0–1 settings mean the same on both sides, which
//!   scaling by ½ would not give); invalid values (negative) pass for the upstream to reject.
//! * **max tokens**: `max_completion_tokens` or the deprecated `max_tokens` (both at once is a 400,
//!   SPEC §3) becomes the required `max_tokens`; neither → `RequestOptions::default_max_tokens`.
//! * **system / developer** messages anywhere are hoisted, in order, into the top-level `system`:
//!   a string when there is exactly one string-content system message, else text blocks.
//! * **response_format**: `json_schema` → `output_config.format` (Anthropic structured outputs;
//!   the schema's `name`, `description` and `strict` have no counterpart and are dropped);
//!   `json_object` → nothing: Anthropic has no JSON mode, and OpenAI rejects `json_object` unless
//!   the messages themselves ask for JSON, so the instruction is already in the prompt (only the
//!   guarantee is lost); `text` → nothing.
//! * **dropped silently** (hints with no effect on the answer's content): `store`, `metadata`
//!   (OpenAI's stored-completion tags, not Anthropic's `metadata`), `service_tier` (OpenAI's tiers
//!   do not exist there), `prompt_cache_key`, `prompt_cache_retention`, `stream_options` (tidegate
//!   reads `include_usage` itself), and `parallel_tool_calls: true`, `n: 1`, `logprobs: false`,
//!   `top_logprobs: 0`, `presence_penalty: 0`, `frequency_penalty: 0`, `logit_bias: {}` (defaults).
//! * **rejected** (400 naming the field, or dropped with `drop_unsupported_params`): any other
//!   value of `logprobs`, `top_logprobs`, `logit_bias`, `presence_penalty`, `frequency_penalty`;
//!   `seed`, `audio`, `modalities`, `prediction`, `reasoning_effort`, `verbosity`,
//!   `web_search_options`, `functions`, `function_call`, custom tools, unknown `response_format`
//!   types, and every unknown field. `n > 1` is always rejected (dropping it would silently return
//!   fewer choices than asked for).
//! * `user` (or else `safety_identifier`) → `metadata.user_id`; `stream` passes.
//! * Message-level rules are in `openai_to_anthropic/messages.rs`, tool rules in `tools.rs`.

mod messages;
mod reply;
mod stream;
mod tools;

use serde_json::{Map, Value, json};

use super::util::{array, body_object, boolean, given, number, positive_int, string, unsupported};
use super::{RequestOptions, TranslateError};

pub use reply::{response, response_bytes};
pub use stream::{StreamOut, StreamTranslator};

const TARGET: &str = "Anthropic Messages";

/// Translate an OpenAI chat-completions request body into an Anthropic Messages request body.
pub fn request(body: &Value, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let obj = body_object(body, "request body")?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(opts.upstream_model.clone()));

    let converted = messages::convert(given(obj.get("messages")), opts)?;
    if let Some(system) = converted.system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(converted.messages));
    out.insert("max_tokens".into(), json!(max_tokens(obj, opts)?));

    let mut user_id: Option<Value> = None;
    let mut safety_id: Option<Value> = None;
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            // handled above or below, together with the fields they depend on
            "model"
            | "messages"
            | "max_tokens"
            | "max_completion_tokens"
            | "tools"
            | "tool_choice"
            | "parallel_tool_calls" => {}
            "stream" => {
                out.insert("stream".into(), Value::Bool(boolean(value, "stream")?));
            }
            "stop" => {
                let stops = stop_sequences(value)?;
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(stops));
                }
            }
            "temperature" => {
                let t = number(value, "temperature")?;
                let clamped = if t.as_f64().is_some_and(|f| f > 1.0) { json!(1.0) } else { t };
                out.insert("temperature".into(), clamped);
            }
            "top_p" => {
                out.insert("top_p".into(), number(value, "top_p")?);
            }
            "n" => match value.as_u64() {
                Some(1) => {}
                _ => {
                    return Err(TranslateError::field(
                        "n",
                        "the Anthropic Messages API returns one choice per request; n must be 1",
                    ));
                }
            },
            "user" => user_id = Some(Value::String(string(value, "user")?.to_owned())),
            "safety_identifier" => {
                safety_id = Some(Value::String(string(value, "safety_identifier")?.to_owned()));
            }
            "response_format" => {
                if let Some(config) = tools::response_format(value, opts)? {
                    out.insert("output_config".into(), config);
                }
            }
            "store"
            | "metadata"
            | "service_tier"
            | "prompt_cache_key"
            | "prompt_cache_retention"
            | "stream_options" => {}
            "logprobs" if value == &Value::Bool(false) => {}
            "top_logprobs" if value.as_u64() == Some(0) => {}
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            "logit_bias" if value.as_object().is_some_and(Map::is_empty) => {}
            other => unsupported(opts, other, TARGET)?,
        }
    }
    if let Some(id) = user_id.or(safety_id) {
        out.insert("metadata".into(), json!({ "user_id": id }));
    }

    let tool_list = match given(obj.get("tools")) {
        Some(v) => tools::tools(v, opts)?,
        None => Vec::new(),
    };
    let choice = tools::tool_choice(
        given(obj.get("tool_choice")),
        given(obj.get("parallel_tool_calls")),
        opts,
    )?;
    if !tool_list.is_empty() {
        out.insert("tools".into(), Value::Array(tool_list));
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(Value::Object(out))
}

/// Whether an OpenAI chat request asks for the usage chunk (`stream_options.include_usage`):
/// the value to give [`StreamTranslator::new`].
pub fn wants_stream_usage(body: &Value) -> bool {
    body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool)
        == Some(true)
}

/// `max_completion_tokens` ‖ `max_tokens` ‖ the route's default.
fn max_tokens(obj: &Map<String, Value>, opts: &RequestOptions) -> Result<u64, TranslateError> {
    let completion = given(obj.get("max_completion_tokens"));
    let legacy = given(obj.get("max_tokens"));
    match (completion, legacy) {
        (Some(_), Some(_)) => Err(TranslateError::field(
            "max_tokens",
            "set either max_tokens or max_completion_tokens, not both",
        )),
        (Some(v), None) => positive_int(v, "max_completion_tokens"),
        (None, Some(v)) => positive_int(v, "max_tokens"),
        (None, None) => Ok(opts.default_max_tokens),
    }
}

/// `stop`: a string or an array of strings.
fn stop_sequences(value: &Value) -> Result<Vec<Value>, TranslateError> {
    if let Value::String(s) = value {
        return Ok(vec![Value::String(s.clone())]);
    }
    let items = array(value, "stop")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.push(Value::String(string(item, &format!("stop[{i}]"))?.to_owned()));
    }
    Ok(out)
}
