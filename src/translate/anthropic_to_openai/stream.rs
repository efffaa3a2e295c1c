//! OpenAI `chat.completion.chunk`s → the Anthropic Messages event stream.
//!
//! * The first chunk with an `id` or a choice → `message_start` with `id` `msg_` + the chunk id,
//!   the chunk's `model`, empty `content`, and `usage.input_tokens` = tidegate's own estimate given to
//!   [`StreamTranslator::new`] (the upstream reports input only at the end), `output_tokens: 0`.
//! * `delta.content` (and `delta.refusal`, which also makes the stop reason `refusal`) → a text
//!   block: `content_block_start` on the first fragment, then `text_delta`s.
//! * `delta.tool_calls[]`: a fragment for a new tool call closes the open block and starts a
//!   `tool_use` block (`id`, `name`, `input: {}`), once a fragment has named it (at its close if
//!   none does). Its `arguments` fragments (strings, or objects, merged) are held and sent as one
//!   `input_json_delta` at the block's close: the JSON when it parses to an object, else
//!   `{"_raw_arguments": "<the text>"}` as the non-stream road does (the SDK's stream helper
//!   parses each tool block's JSON and raises on anything else; OpenAI's arguments are not
//!   guaranteed to be JSON). The deprecated `delta.function_call` fragments are one such call.
//!   Content indexes are assigned sequentially across text and tool blocks. A fragment without
//!   `index` belongs to the open tool call unless it carries a different `id`. A fragment for a tool
//!   call whose block was already closed cannot be expressed (Anthropic blocks are sequential) and
//!   is an error.
//! * `finish_reason` is remembered; `usage` (the `choices: []` chunk, or usage on any chunk) keeps
//!   the latest value.
//! * [`StreamTranslator::finish`] (on a clean `[DONE]`) closes the open block and emits
//!   `message_delta` (`stop_reason`, and usage: the upstream's final counts, SPEC §3, or when
//!   it reported none tidegate's estimate, the one it bills: never a confident 0) and
//!   `message_stop`. A stream that never sent a `finish_reason` ends with `end_turn` (some
//!   OpenAI-compatible servers omit it; `[DONE]` is the clean-end signal), or `tool_use` when it
//!   streamed tool calls, as does one that finished with `stop` (a forced tool choice). A stream with no chunk
//!   at all is an error.
//! * A chunk with an `error` key → an `error` event (`{"type":"error","error":{type, message}}`,
//!   type mapped by [`crate::translate::anthropic_error_from_openai`]); the caller sends it and
//!   closes the stream without `message_stop`. Later chunks are ignored. [`StreamTranslator::
//!   upstream_error`] tells the caller it happened.
//!
//! A chunk that only adds text to the open text block, nearly every chunk of a stream, can take
//! a faster road to the same event ([`StreamTranslator::text_delta`]): read into borrowing
//! structs instead of a `Value`, the event written directly. A chunk that road cannot read
//! exactly (a field it does not read, a field of an unexpected type, a duplicate key, anything
//! besides text) takes the general one; tests run both on mutated streams and compare.

use std::io::Write;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::reply::{message_id, tool_id};
use crate::translate::errors::{anthropic_error_body, anthropic_error_from_openai};
use crate::translate::finish::anthropic_stop_reason;
use crate::translate::{Nothing, Object, Str, TranslateError, Usage};

/// One Anthropic SSE event: `event: <event>` + `data: <json>`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicEvent {
    pub event: &'static str,
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Open {
    Text {
        index: u64,
    },
    /// What is known of it is in [`StreamTranslator::tool`].
    Tool {
        key: ToolKey,
    },
}

/// The tool call whose block is open. Its arguments are held and sent whole at its close, as
/// JSON that parses to an object (the Anthropic SDK parses every tool block's JSON and raises
/// on anything else); its `content_block_start` waits for a name (some servers send it in a
/// later fragment than the first).
#[derive(Debug, Clone, Default)]
struct OpenTool {
    /// The block's content index, once its `content_block_start` was sent.
    index: Option<u64>,
    id: String,
    name: String,
    args: String,
    /// `arguments` sent as an object (a server quirk the non-stream road reads too), merged.
    args_object: Map<String, Value>,
}

impl OpenTool {
    /// The block's `input` as JSON, as the non-stream road reads `arguments`: none (`{}`) when
    /// empty, the text when it parses to an object, else `{"_raw_arguments": <the text>}`.
    fn input_json(&self) -> Option<String> {
        let args = self.args.trim();
        if args.is_empty() {
            return (!self.args_object.is_empty())
                .then(|| Value::Object(self.args_object.clone()).to_string());
        }
        let text = Value::String(self.args.clone());
        Some(super::reply::tool_input(Some(&text)).to_string())
    }
}

/// Identity of an OpenAI tool call within the stream: its `index`, or a synthetic number for
/// servers that omit it.
#[derive(Debug, Clone, PartialEq)]
enum ToolKey {
    Index(u64),
    Synthetic(usize),
}

/// Stateful translator for one OpenAI stream.
#[derive(Debug, Clone)]
pub struct StreamTranslator {
    input_estimate: u64,
    id: Option<String>,
    next_index: u64,
    open: Option<Open>,
    open_tool_id: Option<String>,
    tool: OpenTool,
    tools_seen: Vec<ToolKey>,
    stop_reason: Option<&'static str>,
    refusal: bool,
    usage: Option<Usage>,
    error: Option<(String, String)>,
    finished: bool,
    /// Bytes of answer text streamed: the output estimate when the upstream reports no usage
    /// (3 bytes a token, counted as tidegate bills it: the text, not tool arguments).
    streamed: u64,
}

impl StreamTranslator {
    /// `input_tokens_estimate`: tidegate's own count of the prompt, shown in `message_start`.
    pub fn new(input_tokens_estimate: u64) -> Self {
        Self {
            input_estimate: input_tokens_estimate,
            id: None,
            next_index: 0,
            open: None,
            open_tool_id: None,
            tool: OpenTool::default(),
            tools_seen: Vec::new(),
            stop_reason: None,
            refusal: false,
            usage: None,
            error: None,
            finished: false,
            streamed: 0,
        }
    }

    /// The upstream's usage when it reported one, else tidegate's estimate (what it bills):
    /// the prompt's count, and the output from the bytes streamed. Anthropic's `usage` is
    /// required, and a confident 0 would undercount for clients that meter from it.
    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            input: self.input_estimate,
            output: self.streamed.div_ceil(3),
            ..Usage::default()
        })
    }

    /// Whether the upstream reported usage (if not, [`Self::usage`] is an estimate).
    pub fn upstream_usage_seen(&self) -> bool {
        self.usage.is_some()
    }

    /// `(anthropic error type, message)` once the upstream sent an error chunk.
    pub fn upstream_error(&self) -> Option<(&str, &str)> {
        self.error.as_ref().map(|(t, m)| (t.as_str(), m.as_str()))
    }

    /// True once [`Self::finish`] emitted `message_stop`.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Translate one OpenAI `data:` payload (not `[DONE]`: call [`Self::finish`] for that).
    pub fn on_chunk(&mut self, data: &[u8]) -> Result<Vec<AnthropicEvent>, TranslateError> {
        if self.finished || self.error.is_some() {
            return Ok(Vec::new());
        }
        let chunk: Value = crate::translate::parse_json(data)
            .map_err(|e| TranslateError::body(format!("malformed upstream chunk: {e}")))?;
        if !chunk.is_object() {
            return Err(TranslateError::body("upstream chunk is not a JSON object"));
        }
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            let (kind, message) = anthropic_error_from_openai(&chunk);
            let data = anthropic_error_body(&kind, &message);
            self.error = Some((kind, message));
            return Ok(vec![ev("error", data)]);
        }
        let mut out = Vec::new();
        // Azure sends a first chunk with an empty id, no choices and only content-filter
        // results: wait for a chunk that identifies the message.
        let has_id = chunk.get("id").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        let has_choices =
            chunk.get("choices").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
        if self.id.is_none() && (has_id || has_choices) {
            out.push(self.message_start(&chunk));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage::from_openai(u));
        }
        let choice = chunk.get("choices").and_then(Value::as_array).and_then(|c| {
            c.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        let Some(choice) = choice else { return Ok(out) };
        if self.stop_reason.is_some() {
            return Ok(out); // nothing after finish_reason belongs to the message
        }
        if let Some(delta) = choice.get("delta") {
            for key in ["content", "refusal"] {
                if let Some(text) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty())
                {
                    self.refusal |= key == "refusal";
                    self.text(text, &mut out);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    self.tool_fragment(call, &mut out)?;
                }
            }
            if let Some(f) = delta.get("function_call").filter(|f| f.is_object()) {
                // The deprecated form: fragments of one call, without index or id.
                self.tool_fragment(&json!({ "function": f }), &mut out)?;
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(anthropic_stop_reason(reason));
        }
        Ok(out)
    }

    /// The `content_block_delta` event's data, serialized, that [`Self::on_chunk`] would give
    /// for `data` when it only adds text to the open text block (and changes nothing else);
    /// `None` for anything else, which then takes `on_chunk`.
    pub fn text_delta(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let Some(Open::Text { index }) = self.open else { return None };
        if self.id.is_none() || self.stop_reason.is_some() || self.finished || self.error.is_some()
        {
            return None;
        }
        let Object(chunk): Object<TextChunk<'_>> =
            serde_json::from_str(std::str::from_utf8(data).ok()?).ok()?;
        let [choice] = chunk.choices.as_slice() else { return None };
        let text = choice.delta.content.as_deref().filter(|t| !t.is_empty())?;
        if choice.index.is_some_and(|i| i != 0) {
            return None;
        }
        // Keys in the order serde_json writes a `Value`'s (sorted).
        let mut out = Vec::with_capacity(text.len() + 80);
        out.extend_from_slice(br#"{"delta":{"text":"#);
        serde_json::to_writer(&mut out, text).ok()?;
        write!(out, r#","type":"text_delta"}},"index":{index},"type":"content_block_delta"}}"#)
            .ok()?;
        self.streamed += text.len() as u64;
        Some(out)
    }

    /// Close the message after a clean `[DONE]`.
    pub fn finish(&mut self) -> Result<Vec<AnthropicEvent>, TranslateError> {
        if self.finished || self.error.is_some() {
            return Ok(Vec::new());
        }
        if self.id.is_none() {
            return Err(TranslateError::body("upstream stream ended without any message chunk"));
        }
        let mut out = Vec::new();
        self.close(&mut out);
        let stop = match (self.refusal, self.stop_reason) {
            (true, _) => "refusal",
            (false, None | Some("end_turn")) if !self.tools_seen.is_empty() => "tool_use",
            (false, reason) => reason.unwrap_or("end_turn"),
        };
        out.push(ev(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop, "stop_sequence": null },
                "usage": self.usage().to_anthropic(),
            }),
        ));
        out.push(ev("message_stop", json!({ "type": "message_stop" })));
        self.finished = true;
        Ok(out)
    }

    fn message_start(&mut self, chunk: &Value) -> AnthropicEvent {
        let id = message_id(chunk.get("id"));
        self.id = Some(id.clone());
        let usage = Usage { input: self.input_estimate, ..Usage::default() };
        ev(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": chunk.get("model").and_then(Value::as_str).unwrap_or(""),
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": usage.to_anthropic(),
                },
            }),
        )
    }

    fn text(&mut self, text: &str, out: &mut Vec<AnthropicEvent>) {
        self.streamed += text.len() as u64;
        let index = match self.open {
            Some(Open::Text { index }) => index,
            _ => {
                self.close(out);
                let index = self.start_block(json!({ "type": "text", "text": "" }), out);
                self.open = Some(Open::Text { index });
                index
            }
        };
        let delta = json!({ "type": "text_delta", "text": text });
        out.push(ev(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        ));
    }

    fn tool_fragment(
        &mut self,
        call: &Value,
        out: &mut Vec<AnthropicEvent>,
    ) -> Result<(), TranslateError> {
        let call_id = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let key = match call.get("index").and_then(Value::as_u64) {
            Some(i) => ToolKey::Index(i),
            None => match (&self.open, call_id) {
                (Some(Open::Tool { key, .. }), None) => key.clone(),
                (Some(Open::Tool { key, .. }), Some(id))
                    if self.open_tool_id.as_deref() == Some(id) =>
                {
                    key.clone()
                }
                _ => ToolKey::Synthetic(self.tools_seen.len()),
            },
        };
        if !matches!(&self.open, Some(Open::Tool { key: open }) if *open == key) {
            if self.tools_seen.contains(&key) {
                return Err(TranslateError::body(
                    "upstream interleaved tool call fragments; cannot translate",
                ));
            }
            self.close(out);
            let id =
                tool_id(call.get("id"), self.id.as_deref().unwrap_or(""), self.tools_seen.len());
            self.tools_seen.push(key.clone());
            self.open = Some(Open::Tool { key });
            self.open_tool_id = call_id.map(str::to_owned);
            self.tool = OpenTool { id, ..OpenTool::default() };
        }
        let func = call.get("function");
        if self.tool.index.is_none()
            && let Some(name) =
                func.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|n| !n.is_empty())
        {
            self.tool.name = name.to_owned();
            self.start_tool(out);
        }
        match func.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => self.tool.args.push_str(s),
            Some(Value::Object(o)) => {
                self.tool.args_object.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())))
            }
            _ => {}
        }
        Ok(())
    }

    /// `content_block_start` of the open tool call; its index.
    fn start_tool(&mut self, out: &mut Vec<AnthropicEvent>) -> u64 {
        let block =
            json!({ "type": "tool_use", "id": self.tool.id, "name": self.tool.name, "input": {} });
        let index = self.start_block(block, out);
        self.tool.index = Some(index);
        index
    }

    fn start_block(&mut self, block: Value, out: &mut Vec<AnthropicEvent>) -> u64 {
        let index = self.next_index;
        self.next_index += 1;
        out.push(ev(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
        ));
        index
    }

    fn close(&mut self, out: &mut Vec<AnthropicEvent>) {
        if let Some(open) = self.open.take() {
            let index = match open {
                Open::Text { index } => index,
                Open::Tool { .. } => {
                    let index = match self.tool.index {
                        Some(index) => index,
                        None => self.start_tool(out), // it never got a name
                    };
                    if let Some(json) = self.tool.input_json() {
                        let delta = json!({ "type": "input_json_delta", "partial_json": json });
                        out.push(ev(
                            "content_block_delta",
                            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
                        ));
                    }
                    index
                }
            };
            out.push(ev(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            ));
        }
    }
}

fn ev(event: &'static str, data: Value) -> AnthropicEvent {
    AnthropicEvent { event, data }
}

/// An OpenAI chunk as [`StreamTranslator::text_delta`] reads it: OpenAI's fields and vLLM's,
/// typed so that anything a `Value` would read differently fails here instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct TextChunk<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    object: Option<Str<'a>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    system_fingerprint: Option<Str<'a>>,
    #[serde(default, borrow)]
    service_tier: Option<Str<'a>>,
    /// OpenAI's random padding against length side channels.
    #[serde(default, borrow)]
    obfuscation: Option<Str<'a>>,
    #[serde(borrow)]
    choices: Vec<Object<TextChoice<'a>>>,
    #[serde(default)]
    usage: Option<Nothing>,
    #[serde(default)]
    error: Option<Nothing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct TextChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow)]
    delta: Object<TextDelta<'a>>,
    #[serde(default)]
    logprobs: Option<Nothing>,
    #[serde(default)]
    finish_reason: Option<Nothing>,
    /// vLLM's matched stop string or token, when none matched.
    #[serde(default)]
    stop_reason: Option<Nothing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields read only to check their types")]
struct TextDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, borrow)]
    role: Option<Str<'a>>,
    #[serde(default)]
    refusal: Option<Nothing>,
    /// Only when empty.
    #[serde(default)]
    tool_calls: Option<Vec<Nothing>>,
    #[serde(default)]
    function_call: Option<Nothing>,
    #[serde(default)]
    reasoning_content: Option<Nothing>,
}
