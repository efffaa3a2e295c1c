//! Anthropic Messages event stream → OpenAI `chat.completion.chunk`s.
//!
//! Event by event (docs.claude.com streaming; wire-and-ops §2.3, §2.5):
//! * `message_start` → the first chunk, `delta: {role: "assistant", content: ""}`; its `id`
//!   (`chatcmpl-` + the message id, as non-stream) and `model` go on every chunk.
//! * `content_block_start`: `text` → nothing (or its text, if the block starts non-empty);
//!   `tool_use` → a `tool_calls` delta `{index, id, type: "function", function: {name,
//!   arguments: ""}}` where `index` is the **ordinal of the tool_use block** among tool_use blocks,
//!   not Anthropic's content index (text or thinking blocks before it would shift it).
//! * `content_block_delta`: `text_delta` → `delta.content`; `input_json_delta` on a tool_use
//!   block → `tool_calls[{index, function: {arguments}}]` (empty fragments skipped); thinking,
//!   signature, citations deltas and deltas of server-tool blocks → nothing.
//! * `message_delta`: `usage` is **cumulative**: the latest value replaces the previous one, never
//!   summed. The first non-null `stop_reason` → a chunk `{delta: {}, finish_reason}`.
//! * `message_stop` → (a `finish_reason: "stop"` chunk if none was sent), then with
//!   `include_usage` a final chunk with `choices: []` and the usage (tidegate's estimate when
//!   the caller set one: the upstream reported none), then [`StreamOut::Done`].
//! * `content_block_stop` of a tool_use block that sent no arguments → its arguments `{}` (as a
//!   non-stream answer's, and OpenAI's own; `""` is not JSON); otherwise nothing.
//! * `ping` and unknown event types → nothing. `error` →
//!   [`StreamOut::UpstreamError`] with the OpenAI-style type (see
//!   [`crate::translate::openai_error_from_anthropic`]); later events are ignored.
//! * Malformed JSON, or content before `message_start`, → [`TranslateError`] (a broken upstream).
//!
//! With `include_usage`, chunks before the usage chunk carry `usage: null`, as OpenAI's do; without
//! it they have no `usage` key. Every chunk's choice carries `logprobs: null`, as OpenAI's do.
//!
//! `content_block_delta` events, nearly all of a stream, take a faster road to the same bytes:
//! read into borrowing structs instead of a `Value`, their chunk written into the serialized
//! chunk around its `delta` (the rest is the same for every chunk of the stream). An event
//! that road cannot read exactly (not an object, a field it does not read, a field of an
//! unexpected type, a duplicate key) takes the general one, which decides as before; tests run
//! both on mutated streams and on odd deltas and compare their bytes.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::reply::chat_id;
use crate::translate::errors::openai_error_from_anthropic;
use crate::translate::finish::openai_finish_reason;
use crate::translate::{Str, TranslateError, Usage};

/// What to send the OpenAI client for one upstream event.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOut {
    /// One OpenAI `chat.completion.chunk`, serialized, to send as `data: <json>`.
    Chunk(String),
    /// Send `data: [DONE]`: the stream ended cleanly.
    Done,
    /// The upstream sent `event: error`: end the client stream with `data: {"error":{...}}` and no
    /// `[DONE]`. `error_type` is already in OpenAI's vocabulary.
    UpstreamError { error_type: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// `args`: some of its arguments were sent (a call with none gets `{}` at its end).
    Tool {
        ordinal: u64,
        args: bool,
    },
    Other,
}

/// Stateful translator for one Anthropic stream.
#[derive(Debug, Clone)]
pub struct StreamTranslator {
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    started: bool,
    /// (Anthropic content index, kind), in arrival order.
    blocks: Vec<(u64, Block)>,
    tools: u64,
    /// The latest value of every Anthropic usage field seen (`message_start`, then each
    /// `message_delta` overwriting the fields it carries).
    usage: Map<String, Value>,
    finish_sent: bool,
    finished: bool,
    failed: bool,
    /// A content chunk serialized around its `delta`: the text before and after it. Made at
    /// `message_start`, which fixes everything else in a chunk (id, model).
    frame: Option<(String, String)>,
    /// Whether content chunks take the fast road (tests turn it off to compare).
    fast: bool,
    /// tidegate's estimate for the usage chunk, set by the caller when the upstream reported
    /// no usage (some Anthropic-compatible servers): the count it bills, not a confident 0.
    estimate: Option<Usage>,
}

/// A `content_block_delta` event as the fast road reads it. Only the fields it reads are
/// allowed: serde skips an unknown field's value without the checks a `Value` makes (number
/// range, nesting depth, lone surrogates), so an event with one takes the general road.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaEvent<'a> {
    #[serde(default, rename = "type", borrow)]
    _kind: Option<Str<'a>>,
    index: u64,
    /// Raw, then read as a [`DeltaBody`] only if it is an object: serde reads a struct from an
    /// array too, and the general road finds nothing in an array.
    #[serde(borrow)]
    delta: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaBody<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    partial_json: Option<Str<'a>>,
}

fn field<'b>(f: &'b Option<Str<'_>>) -> &'b str {
    f.as_deref().unwrap_or("")
}

impl StreamTranslator {
    /// `include_usage`: the client asked for `stream_options.include_usage`.
    pub fn new(include_usage: bool, created_unix: u64) -> Self {
        Self {
            include_usage,
            created: created_unix,
            id: String::new(),
            model: String::new(),
            started: false,
            blocks: Vec::new(),
            tools: 0,
            usage: Map::new(),
            finish_sent: false,
            finished: false,
            failed: false,
            frame: None,
            fast: true,
            estimate: None,
        }
    }

    /// The same translator without the fast road for deltas (tests compare the two).
    #[cfg(test)]
    pub(crate) fn general_only(mut self) -> Self {
        self.fast = false;
        self
    }

    /// Usage so far (input from `message_start`, updated by later cumulative counts).
    pub fn usage(&self) -> Usage {
        Usage::from_anthropic(&Value::Object(self.usage.clone()))
    }

    /// The usage the final chunk reports instead of the upstream's, which reported none.
    pub fn set_usage_estimate(&mut self, usage: Usage) {
        self.estimate = Some(usage);
    }

    /// True once `message_stop` arrived (a clean end); false after an upstream error.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Translate one SSE event (`event:` name and the raw `data:` bytes).
    pub fn on_event(&mut self, event: &str, data: &[u8]) -> Result<Vec<StreamOut>, TranslateError> {
        if self.finished || self.failed {
            return Ok(Vec::new());
        }
        let known = matches!(
            event,
            "message_start"
                | "content_block_start"
                | "content_block_delta"
                | "message_delta"
                | "message_stop"
                | "error"
        );
        if event == "content_block_stop" {
            // Read leniently: it only closes a tool call that sent no arguments.
            let data = serde_json::from_slice::<Value>(data).unwrap_or_default();
            return Ok(if self.started { self.block_stop(&data) } else { Vec::new() });
        }
        if !known {
            return Ok(Vec::new()); // ping, unknown (versioning policy)
        }
        if self.fast
            && self.started
            && event == "content_block_delta"
            && let Some(out) = self.fast_delta(data)
        {
            return Ok(out);
        }
        let data: Value = crate::translate::parse_json(data).map_err(|e| {
            TranslateError::body(format!("malformed upstream `{event}` event: {e}"))
        })?;
        if !data.is_object() {
            return Err(TranslateError::body(format!(
                "upstream `{event}` event is not a JSON object"
            )));
        }
        if event == "error" {
            self.failed = true;
            let (error_type, message) = openai_error_from_anthropic(&data);
            return Ok(vec![StreamOut::UpstreamError { error_type, message }]);
        }
        if event == "message_start" {
            return Ok(self.message_start(&data));
        }
        if !self.started {
            return Err(TranslateError::body(format!(
                "upstream sent `{event}` before `message_start`"
            )));
        }
        Ok(match event {
            "content_block_start" => self.block_start(&data)?,
            "content_block_delta" => self.block_delta(&data)?,
            "message_delta" => self.message_delta(&data),
            _ => self.message_stop(),
        })
    }

    fn message_start(&mut self, data: &Value) -> Vec<StreamOut> {
        if self.started {
            return Vec::new();
        }
        let message = data.get("message").unwrap_or(&Value::Null);
        self.started = true;
        self.id = chat_id(message.get("id"));
        self.model = message.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
        self.merge_usage(message.get("usage"));
        self.frame = self.make_frame();
        let role = json!({ "role": "assistant", "content": "" });
        // In the frame when there is one: the same bytes, a `Value` chunk fewer to build.
        match (&self.frame, serde_json::to_string(&role)) {
            (Some(frame), Ok(role)) if self.fast => vec![framed(frame, |out| out.push_str(&role))],
            _ => vec![self.chunk(role, Value::Null)],
        }
    }

    fn block_start(&mut self, data: &Value) -> Result<Vec<StreamOut>, TranslateError> {
        let index = block_index(data)?;
        let block = data.get("content_block").unwrap_or(&Value::Null);
        let mut out = Vec::new();
        let kind = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(text) =
                    block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty())
                {
                    out.push(self.chunk(json!({ "content": text }), Value::Null));
                }
                Block::Text
            }
            Some("tool_use") => {
                let ordinal = self.tools;
                self.tools += 1;
                // The input normally streams in later (`input_json_delta`); one given whole at
                // the start is sent as the arguments.
                let given = block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    .map(Value::to_string);
                let call = json!({
                    "index": ordinal,
                    "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": given.as_deref().unwrap_or(""),
                    },
                });
                out.push(self.chunk(json!({ "tool_calls": [call] }), Value::Null));
                Block::Tool { ordinal, args: given.is_some() }
            }
            _ => Block::Other,
        };
        self.blocks.push((index, kind));
        Ok(out)
    }

    /// The kind of the latest block with Anthropic content index `index`.
    fn block_kind(&self, index: u64) -> Option<Block> {
        self.blocks.iter().rev().find(|(i, _)| *i == index).map(|(_, k)| *k)
    }

    /// Notes that the latest tool block with index `index` has sent arguments.
    fn args_sent(&mut self, index: u64) {
        if let Some((_, Block::Tool { args, .. })) =
            self.blocks.iter_mut().rev().find(|(i, _)| *i == index)
        {
            *args = true;
        }
    }

    /// A tool call that ends having sent no arguments gets `{}`, as a non-stream answer's
    /// would (and OpenAI's own): `""` is not JSON, and SDKs that parse arguments fail on it.
    fn block_stop(&mut self, data: &Value) -> Vec<StreamOut> {
        let Ok(index) = block_index(data) else { return Vec::new() };
        match self.block_kind(index) {
            Some(Block::Tool { ordinal, args: false }) => {
                self.args_sent(index);
                let call = json!({ "index": ordinal, "function": { "arguments": "{}" } });
                vec![self.chunk(json!({ "tool_calls": [call] }), Value::Null)]
            }
            _ => Vec::new(),
        }
    }

    /// [`Self::block_delta`] for an event read into [`DeltaEvent`]; `None` when it cannot be
    /// read so (the general road then decides, errors included).
    fn fast_delta(&mut self, data: &[u8]) -> Option<Vec<StreamOut>> {
        let frame = self.frame.as_ref()?;
        let text = std::str::from_utf8(data).ok()?;
        // Serde reads a struct from an array too; the general road calls that malformed.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let event: DeltaEvent<'_> = serde_json::from_str(text).ok()?;
        if !event.delta.get().starts_with('{') {
            return None;
        }
        let delta: DeltaBody<'_> = serde_json::from_str(event.delta.get()).ok()?;
        Some(match (field(&delta.kind), self.block_kind(event.index)) {
            ("text_delta", Some(Block::Text) | None) if !field(&delta.text).is_empty() => {
                // `{"content": text}` as a `Value` would serialize: one key, no spaces.
                let text = serde_json::to_string(field(&delta.text)).ok()?;
                vec![framed(frame, |out| {
                    out.push_str(r#"{"content":"#);
                    out.push_str(&text);
                    out.push('}');
                })]
            }
            ("input_json_delta", Some(Block::Tool { ordinal, .. }))
                if !field(&delta.partial_json).is_empty() =>
            {
                let call = json!({ "index": ordinal, "function": { "arguments": field(&delta.partial_json) } });
                let delta = serde_json::to_string(&json!({ "tool_calls": [call] })).ok()?;
                let out = vec![framed(frame, |out| out.push_str(&delta))];
                self.args_sent(event.index);
                out
            }
            _ => Vec::new(),
        })
    }

    /// The text of a content chunk before and after its delta, split at its only
    /// `"delta":null` (inside the id or model string a quote is escaped, so the pattern cannot
    /// appear there). `None` would leave every delta to the general road.
    fn make_frame(&self) -> Option<(String, String)> {
        let whole = serde_json::to_string(&self.chunk_value(Value::Null, Value::Null)).ok()?;
        let (before, after) = whole.split_once(r#""delta":null"#)?;
        Some((format!(r#"{before}"delta":"#), after.to_owned()))
    }

    fn block_delta(&mut self, data: &Value) -> Result<Vec<StreamOut>, TranslateError> {
        let index = block_index(data)?;
        let kind = self.block_kind(index);
        let delta = data.get("delta").unwrap_or(&Value::Null);
        let field = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or("");
        Ok(match (delta.get("type").and_then(Value::as_str), kind) {
            (Some("text_delta"), Some(Block::Text) | None) if !field("text").is_empty() => {
                vec![self.chunk(json!({ "content": field("text") }), Value::Null)]
            }
            (Some("input_json_delta"), Some(Block::Tool { ordinal, .. }))
                if !field("partial_json").is_empty() =>
            {
                let call =
                    json!({ "index": ordinal, "function": { "arguments": field("partial_json") } });
                let out = vec![self.chunk(json!({ "tool_calls": [call] }), Value::Null)];
                self.args_sent(index);
                out
            }
            _ => Vec::new(),
        })
    }

    fn message_delta(&mut self, data: &Value) -> Vec<StreamOut> {
        self.merge_usage(data.get("usage"));
        match data.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str) {
            Some(reason) if !self.finish_sent => {
                self.finish_sent = true;
                vec![self.chunk(json!({}), json!(openai_finish_reason(reason)))]
            }
            _ => Vec::new(),
        }
    }

    fn message_stop(&mut self) -> Vec<StreamOut> {
        let mut out = Vec::new();
        if !self.finish_sent {
            self.finish_sent = true;
            out.push(self.chunk(json!({}), json!("stop")));
        }
        if self.include_usage {
            out.push(serialized(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.estimate.unwrap_or_else(|| self.usage()).to_openai(),
            })));
        }
        out.push(StreamOut::Done);
        self.finished = true;
        out
    }

    /// Usage counts are cumulative: each one seen replaces the previous value, never adds to it.
    fn merge_usage(&mut self, usage: Option<&Value>) {
        if let Some(fields) = usage.and_then(Value::as_object) {
            for (k, v) in fields {
                if v.is_number() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> StreamOut {
        serialized(&self.chunk_value(delta, finish_reason))
    }

    fn chunk_value(&self, delta: Value, finish_reason: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        if self.include_usage
            && let Some(c) = chunk.as_object_mut()
        {
            c.insert("usage".into(), Value::Null);
        }
        chunk
    }
}

/// A content chunk (no finish reason) whose serialized delta `write_delta` writes, in the
/// stream's `frame`: the same bytes [`StreamTranslator::chunk`] serializes.
fn framed(frame: &(String, String), write_delta: impl FnOnce(&mut String)) -> StreamOut {
    let (before, after) = frame;
    let mut out = String::with_capacity(before.len() + after.len() + 64);
    out.push_str(before);
    write_delta(&mut out);
    out.push_str(after);
    StreamOut::Chunk(out)
}

fn serialized(chunk: &Value) -> StreamOut {
    // Serializing a `Value` into a `String` cannot fail.
    StreamOut::Chunk(serde_json::to_string(chunk).unwrap_or_default())
}

fn block_index(data: &Value) -> Result<u64, TranslateError> {
    data.get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| TranslateError::body("upstream content block event without an index"))
}
