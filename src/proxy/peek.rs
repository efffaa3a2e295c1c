//! Just-enough parsing of OpenAI-style upstream answers: is it an error, does it carry content,
//! how did it finish, what usage did it report. Typed borrowing structs skip everything else, so
//! the bytes can be forwarded as they came.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Token usage as tidegate accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// The part of `input` served from the provider's prompt cache.
    pub cached_input: u64,
}

#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<UsageWire> for Usage {
    fn from(u: UsageWire) -> Self {
        Usage {
            input: u.prompt_tokens,
            output: u.completion_tokens,
            cached_input: u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct ErrorWire<'a> {
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// One `data:` payload of an OpenAI chat stream.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkPeek {
    /// `[DONE]`.
    Done,
    /// `{"error": ...}`: the upstream failed after its 200.
    Error(String),
    /// A chunk. `content` is true when it carries anything the client must see as the answer
    /// (text, tool calls, refusal, a finish reason).
    Chunk { content: bool, finish: Option<String>, usage: Option<Usage>, usage_only: bool },
}

#[derive(Deserialize)]
struct ChunkWire<'a> {
    #[serde(default, borrow)]
    error: Option<ErrorWire<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceWire<'a>>>,
    #[serde(default)]
    usage: Option<UsageWire>,
}

#[derive(Deserialize)]
struct ChoiceWire<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaWire<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaWire<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function_call: Option<&'a RawValue>,
}

/// Parses one stream payload; `None` if it is not valid JSON of the expected shape.
pub fn chunk(data: &[u8]) -> Option<ChunkPeek> {
    if data == b"[DONE]" {
        return Some(ChunkPeek::Done);
    }
    let w: ChunkWire<'_> = serde_json::from_slice(data).ok()?;
    if let Some(e) = w.error {
        return Some(ChunkPeek::Error(
            e.message.map_or_else(|| "upstream stream error".to_owned(), Cow::into_owned),
        ));
    }
    let choices = w.choices?;
    let mut content = false;
    let mut finish = None;
    for c in &choices {
        if let Some(d) = &c.delta {
            content |= d.content.as_deref().is_some_and(|s| !s.is_empty())
                || d.refusal.as_deref().is_some_and(|s| !s.is_empty())
                || d.tool_calls.is_some_and(|r| r.get() != "null")
                || d.function_call.is_some_and(|r| r.get() != "null");
        }
        if let Some(f) = &c.finish_reason {
            content = true;
            finish = Some(f.clone().into_owned());
        }
    }
    Some(ChunkPeek::Chunk {
        content,
        finish,
        usage_only: choices.is_empty() && w.usage.is_some(),
        usage: w.usage.map(Usage::from),
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
    usage: Option<UsageWire>,
}

#[derive(Deserialize)]
struct FinishWire<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

/// Parses a chat completion (`embeddings == false`) or an embeddings list; `None` if the body
/// is not the expected shape.
pub fn body(data: &[u8], embeddings: bool) -> Option<BodyPeek> {
    let w: CompletionWire<'_> = serde_json::from_slice(data).ok()?;
    if let Some(e) = w.error {
        return Some(BodyPeek::Error(
            e.message.map_or_else(|| "upstream error".to_owned(), Cow::into_owned),
        ));
    }
    let finish = if embeddings {
        w.data.filter(|d| d.get().starts_with('['))?;
        None
    } else {
        let choices = w.choices?;
        choices.first().and_then(|c| c.finish_reason.as_deref().map(str::to_owned))
    };
    Some(BodyPeek::Ok { usage: w.usage.map(Usage::from), finish })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_kinds() {
        assert_eq!(chunk(b"[DONE]"), Some(ChunkPeek::Done));
        assert!(
            matches!(chunk(br#"{"error":{"message":"boom"}}"#), Some(ChunkPeek::Error(m)) if m == "boom")
        );
        let role = chunk(br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#);
        assert!(matches!(role, Some(ChunkPeek::Chunk { content: false, .. })));
        let text = chunk(br#"{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#);
        assert!(matches!(text, Some(ChunkPeek::Chunk { content: true, usage: None, .. })));
        let tool = chunk(br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#);
        assert!(matches!(tool, Some(ChunkPeek::Chunk { content: true, .. })));
        let usage = chunk(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}"#);
        assert_eq!(
            usage,
            Some(ChunkPeek::Chunk {
                content: false,
                finish: None,
                usage: Some(Usage { input: 3, output: 4, cached_input: 1 }),
                usage_only: true
            })
        );
        assert_eq!(chunk(b"{\"choi"), None);
        assert_eq!(chunk(b"{}"), None);
    }

    #[test]
    fn bodies() {
        assert!(matches!(body(br#"{"error":{"message":"x"}}"#, false), Some(BodyPeek::Error(_))));
        assert_eq!(body(br#"{"id":"x"}"#, false), None);
        assert_eq!(body(b"<html>", false), None);
        let ok = body(br#"{"choices":[{"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#, false);
        assert_eq!(
            ok,
            Some(BodyPeek::Ok {
                usage: Some(Usage { input: 1, output: 2, cached_input: 0 }),
                finish: Some("length".into())
            })
        );
        assert!(matches!(
            body(br#"{"data":[],"usage":{"prompt_tokens":1}}"#, true),
            Some(BodyPeek::Ok { .. })
        ));
        assert_eq!(body(br#"{"data":{}}"#, true), None);
    }
}
