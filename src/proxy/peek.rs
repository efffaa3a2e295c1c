//! Just-enough parsing of OpenAI-style upstream answers: is it an error, does it carry content,
//! how did it finish, what usage did it report. Typed borrowing structs skip everything else, so
//! the bytes can be forwarded as they came.
//! Usage is read leniently (`peek/lenient.rs`): odd counts are accounting trouble, not a malformed
//! answer.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::translate::{Object, Str};

mod lenient;
use lenient::{Count, Lenient};

/// Token usage as tidegate accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// The part of `input` served from the provider's prompt cache.
    pub cached_input: u64,
}

/// OpenAI usage, read leniently (see [`lenient`]).
#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
    #[serde(default)]
    prompt_tokens_details: Lenient<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Count,
}

impl UsageWire {
    /// The usage, if it has a count to read (else the request's estimate is billed).
    fn usage(self) -> Option<Usage> {
        if self.prompt_tokens.0.is_none() && self.completion_tokens.0.is_none() {
            return None;
        }
        Some(Usage {
            input: self.prompt_tokens.or_zero(),
            output: self.completion_tokens.or_zero(),
            cached_input: self.prompt_tokens_details.0.map_or(0, |d| d.cached_tokens.or_zero()),
        })
    }
}

#[derive(Deserialize)]
struct ErrorWire<'a> {
    #[serde(default, borrow)]
    message: Option<Str<'a>>,
}

/// What an upstream's error event says of its kind (read only when one came): overloaded and
/// rate-limited upstreams keep their meaning for the client, whose SDK tells them from a real
/// failure by `error.type`; anything else is `upstream_unavailable`. Either wire's event is
/// classed as the dialect translation classes it
/// ([`crate::translate::errors::anthropic_error_from_openai`] reads both shapes).
pub fn error_code(data: &[u8]) -> crate::error::ErrorCode {
    use crate::error::ErrorCode;
    let v: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    match crate::translate::errors::anthropic_error_from_openai(&v).0.as_str() {
        "overloaded_error" => ErrorCode::Overloaded,
        "rate_limit_error" => ErrorCode::RateLimited,
        _ => ErrorCode::UpstreamUnavailable,
    }
}

/// One `data:` payload of an OpenAI chat stream.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkPeek<'a> {
    /// `[DONE]`.
    Done,
    /// `{"error": ...}`: the upstream failed after its 200.
    Error(String),
    /// A chunk. `content` is true when it carries anything the client must see as the answer
    /// (text, tool calls, refusal, a finish reason).
    Chunk {
        content: bool,
        finish: Option<String>,
        usage: Option<Usage>,
        usage_only: bool,
        /// Answer text this event adds (for stream resume), borrowed from the event's bytes.
        text: Option<Cow<'a, str>>,
        /// The event is part of a tool call (resume never splices inside one).
        tool: bool,
        /// Choices this event finishes (a `finish_reason` each; `n > 1` streams finish one
        /// choice at a time).
        finishes: u32,
    },
}

#[derive(Deserialize)]
struct ChunkWire<'a> {
    #[serde(default, borrow)]
    error: Option<ErrorWire<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceWire<'a>>>,
    /// `Some` for any value but `null`: a chunk with no choices and a usage, even one that
    /// cannot be read, is the usage chunk (stripped when the client did not ask for it).
    #[serde(default)]
    usage: Option<Lenient<UsageWire>>,
}

#[derive(Deserialize)]
struct ChoiceWire<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaWire<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct DeltaWire<'a> {
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<Str<'a>>,
    #[serde(default, borrow)]
    function_call: Option<&'a RawValue>,
}

/// `data` parsed as `T`. Valid UTF-8 (nearly every answer) is checked once for the whole text
/// and read with serde_json's `&str` reader; its slice reader validates every string it reads
/// again (about 2% of a proxied request's instructions). Anything else falls back to the slice
/// reader, which skips the fields we do not read without checking them: invalid UTF-8 in an
/// answer's `id` or message text is not ours to judge, so it must not make the answer malformed.
///
/// Only a JSON object reads as `T` (a derived struct would also read an array, element by
/// element): an upstream that answers `[...]` sent no answer.
fn parse<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Option<T> {
    let read: Option<Object<T>> = match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str(text).ok(),
        Err(_) => serde_json::from_slice(data).ok(),
    };
    read.map(|Object(t)| t)
}

/// Parses one stream payload; `None` if it is not valid JSON of the expected shape.
pub fn chunk(data: &[u8]) -> Option<ChunkPeek<'_>> {
    if data == b"[DONE]" {
        return Some(ChunkPeek::Done);
    }
    let w: ChunkWire<'_> = parse(data)?;
    if let Some(e) = w.error {
        return Some(ChunkPeek::Error(
            e.message.map_or_else(|| "upstream stream error".to_owned(), Str::owned),
        ));
    }
    let choices = w.choices?;
    let usage_only = choices.is_empty() && w.usage.is_some();
    let mut content = false;
    let mut finish = None;
    let mut text = None;
    let mut tool = false;
    let mut finishes = 0;
    for c in choices {
        if let Some(d) = c.delta {
            tool |= d.tool_calls.is_some_and(|r| r.get() != "null")
                || d.function_call.is_some_and(|r| r.get() != "null");
            content |= d.content.as_deref().is_some_and(|s| !s.is_empty())
                || d.refusal.as_deref().is_some_and(|s| !s.is_empty())
                || tool;
            if let Some(t) = d.content.filter(|t| !t.is_empty()) {
                text = Some(t.cow());
            }
        }
        if let Some(f) = c.finish_reason {
            content = true;
            finish = Some(f.owned());
            finishes += 1;
        }
    }
    Some(ChunkPeek::Chunk {
        content,
        finish,
        usage_only,
        usage: w.usage.and_then(|u| u.0).and_then(UsageWire::usage),
        text,
        tool,
        finishes,
    })
}

/// A whole non-stream answer.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyPeek {
    Error(String),
    Ok { usage: Option<Usage>, finish: Option<String> },
}

#[derive(Deserialize)]
struct CompletionWire<'a> {
    #[serde(default, borrow)]
    error: Option<ErrorWire<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<FinishWire<'a>>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    usage: Lenient<UsageWire>,
}

#[derive(Deserialize)]
struct FinishWire<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
}

/// Parses a chat completion (`embeddings == false`) or an embeddings list; `None` if the body
/// is not the expected shape.
pub fn body(data: &[u8], embeddings: bool) -> Option<BodyPeek> {
    let w: CompletionWire<'_> = parse(data)?;
    if let Some(e) = w.error {
        return Some(BodyPeek::Error(
            e.message.map_or_else(|| "upstream error".to_owned(), Str::owned),
        ));
    }
    let finish = if embeddings {
        w.data.filter(|d| d.get().starts_with('['))?;
        None
    } else {
        let choices = w.choices?;
        choices.first().and_then(|c| c.finish_reason.as_deref().map(str::to_owned))
    };
    Some(BodyPeek::Ok { usage: w.usage.0.and_then(UsageWire::usage), finish })
}

#[derive(Deserialize)]
struct AnthropicUsageWire {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default)]
    cache_read_input_tokens: Count,
    #[serde(default)]
    cache_creation_input_tokens: Count,
}

impl AnthropicUsageWire {
    /// In tidegate's terms: input includes cache reads and writes (Anthropic's excludes them).
    /// In tidegate's terms, if it has a count to read (else the estimate is billed).
    fn usage(&self) -> Option<Usage> {
        let counts = [
            self.input_tokens,
            self.output_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
        ];
        if counts.iter().all(|c| c.0.is_none()) {
            return None;
        }
        let cached = self.cache_read_input_tokens.or_zero();
        Some(Usage {
            input: self
                .input_tokens
                .or_zero()
                .saturating_add(cached)
                .saturating_add(self.cache_creation_input_tokens.or_zero()),
            output: self.output_tokens.or_zero(),
            cached_input: cached,
        })
    }
}

#[derive(Deserialize)]
struct AnthropicEventWire<'a> {
    #[serde(default, borrow)]
    message: Option<AnthropicMessageWire<'a>>,
    #[serde(default, borrow)]
    delta: Option<AnthropicDeltaWire<'a>>,
    #[serde(default, borrow)]
    content_block: Option<AnthropicBlockWire<'a>>,
    #[serde(default)]
    usage: Lenient<AnthropicUsageWire>,
    #[serde(default, borrow)]
    error: Option<ErrorWire<'a>>,
}

#[derive(Deserialize)]
struct AnthropicMessageWire<'a> {
    #[serde(default)]
    usage: Lenient<AnthropicUsageWire>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDeltaWire<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    partial_json: Option<Str<'a>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct AnthropicBlockWire<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
}

/// Classifies one Anthropic stream event. Usage in `message_delta` is cumulative output only;
/// the caller merges it with the input counts of `message_start`. `None`: malformed.
pub fn anthropic_event<'a>(name: Option<&str>, data: &'a [u8]) -> Option<ChunkPeek<'a>> {
    let w: AnthropicEventWire<'_> = parse(data)?;
    let chunk = |content, finish: Option<String>, usage| {
        Some(ChunkPeek::Chunk {
            content,
            finishes: u32::from(finish.is_some()),
            finish,
            usage,
            usage_only: false,
            text: None,
            tool: false,
        })
    };
    match name.unwrap_or("") {
        "error" => Some(ChunkPeek::Error(
            w.error
                .and_then(|e| e.message.map(Str::owned))
                .unwrap_or_else(|| "upstream stream error".into()),
        )),
        "message_stop" => Some(ChunkPeek::Done),
        "message_start" => chunk(false, None, w.message?.usage.0.and_then(|u| u.usage())),
        "content_block_start" => {
            let tool = w.content_block.and_then(|b| b.kind).is_some_and(|k| &*k == "tool_use");
            Some(ChunkPeek::Chunk {
                finishes: 0,
                content: tool,
                finish: None,
                usage: None,
                usage_only: false,
                text: None,
                tool,
            })
        }
        "content_block_delta" => {
            let d = w.delta?;
            let tool =
                d.partial_json.is_some() || d.kind.is_some_and(|k| &*k == "input_json_delta");
            let text = d.text.filter(|t| !t.is_empty()).map(Str::cow);
            Some(ChunkPeek::Chunk {
                finishes: 0,
                content: tool || text.is_some(),
                finish: None,
                usage: None,
                usage_only: false,
                text,
                tool,
            })
        }
        "message_delta" => {
            let finish = w.delta.and_then(|d| d.stop_reason).map(Str::owned);
            chunk(finish.is_some(), finish, w.usage.0.and_then(|u| u.usage()))
        }
        // ping, content_block_stop, and event types added later: nothing the client waits for.
        _ => chunk(false, None, None),
    }
}

/// Parses an Anthropic Messages answer; `None` if it is not one.
pub fn anthropic_body(data: &[u8]) -> Option<BodyPeek> {
    let w: AnthropicEventWire<'_> = parse(data)?;
    if let Some(e) = w.error {
        return Some(BodyPeek::Error(
            e.message.map_or_else(|| "upstream error".to_owned(), Str::owned),
        ));
    }
    // The message is the top-level object: re-read it as one.
    let m: AnthropicMessageWire<'_> = parse(data)?;
    if m.kind.as_deref() != Some("message") {
        return None;
    }
    Some(BodyPeek::Ok {
        usage: m.usage.0.and_then(|u| u.usage()),
        finish: m.stop_reason.map(Str::owned),
    })
}

/// Folds a new usage report into what was seen: zero fields keep earlier values (Anthropic's
/// `message_delta` reports output only; its counts are cumulative, so the latest wins).
pub fn merge_usage(old: Option<Usage>, new: Option<Usage>) -> Option<Usage> {
    match (old, new) {
        (Some(o), Some(n)) => Some(Usage {
            input: if n.input > 0 { n.input } else { o.input },
            output: if n.output > 0 { n.output } else { o.output },
            cached_input: if n.cached_input > 0 { n.cached_input } else { o.cached_input },
        }),
        (o, n) => n.or(o),
    }
}

#[cfg(test)]
mod tests;
