//! Stream events into the client's dialect.
//!
//! Same dialect on both sides: the event is re-framed as it came (payload bytes untouched). Across
//! dialects: the translators of [`crate::translate`] turn each upstream event into the client's
//! events. Either way the output is appended to one buffer per upstream read.

use bytes::BytesMut;

use crate::config::Wire;
use crate::error::Dialect;
use crate::translate::{anthropic_to_openai, openai_to_anthropic};

/// How one stream's events reach the client.
pub enum Emitter {
    /// OpenAI upstream, OpenAI client: strip the usage chunk tidegate asked for unless the
    /// client asked too.
    OpenAiPass { include_usage: bool },
    /// Anthropic upstream, Anthropic client.
    AnthropicPass,
    /// Anthropic upstream, OpenAI client.
    OpenAiFromAnthropic(Box<openai_to_anthropic::StreamTranslator>),
    /// OpenAI upstream, Anthropic client.
    AnthropicFromOpenAi(Box<anthropic_to_openai::StreamTranslator>),
}

/// The upstream failed inside an event the emitter could not turn into client output.
pub struct EmitError(pub String);

fn frame_data(out: &mut BytesMut, payload: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

fn frame_event(out: &mut BytesMut, name: &str, payload: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    frame_data(out, payload);
}

/// `data: <json>\n\n`, the JSON written straight into `out` (no `Display` detour through a
/// `String`: a translated stream spent a tenth of its CPU there).
fn frame_json(out: &mut BytesMut, v: &serde_json::Value) {
    out.extend_from_slice(b"data: ");
    // Writing a `Value` into memory cannot fail.
    let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), v);
    out.extend_from_slice(b"\n\n");
}

fn frame_event_json(out: &mut BytesMut, name: &str, v: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    frame_json(out, v);
}

/// An OpenAI usage chunk (`choices: []`) for `usage`, with the id, `created` and model of the
/// stream's `first` chunk: what an OpenAI client that asked for usage gets when the upstream
/// reported none.
pub fn usage_chunk(first: &[u8], usage: crate::proxy::peek::Usage, out: &mut BytesMut) {
    let first: serde_json::Value = serde_json::from_slice(first).unwrap_or_default();
    let chunk = serde_json::json!({
        "id": first.get("id").cloned().unwrap_or_else(|| "chatcmpl-tidegate".into()),
        "object": "chat.completion.chunk",
        "created": first.get("created").cloned().unwrap_or(0.into()),
        "model": first.get("model").cloned().unwrap_or_else(|| "".into()),
        "choices": [],
        "usage": {
            "prompt_tokens": usage.input,
            "completion_tokens": usage.output,
            "total_tokens": usage.input.saturating_add(usage.output),
        },
    });
    frame_json(out, &chunk);
}

impl Emitter {
    /// Picks the emitter for a client dialect and an upstream wire.
    pub fn new(
        client: Dialect,
        upstream: Wire,
        include_usage: bool,
        input_estimate: u64,
        created: u64,
    ) -> Self {
        match (client, upstream) {
            (Dialect::OpenAi, Wire::OpenAi) => Self::OpenAiPass { include_usage },
            (Dialect::Anthropic, Wire::Anthropic) => Self::AnthropicPass,
            (Dialect::OpenAi, Wire::Anthropic) => Self::OpenAiFromAnthropic(Box::new(
                openai_to_anthropic::StreamTranslator::new(include_usage, created),
            )),
            (Dialect::Anthropic, Wire::OpenAi) => Self::AnthropicFromOpenAi(Box::new(
                anthropic_to_openai::StreamTranslator::new(input_estimate),
            )),
        }
    }

    /// One upstream event. `usage_only` marks OpenAI's usage chunk. OpenAI's `[DONE]` emits
    /// nothing here: [`Emitter::finish`] closes the stream.
    pub fn event(
        &mut self,
        name: Option<&str>,
        data: &[u8],
        usage_only: bool,
        out: &mut BytesMut,
    ) -> Result<(), EmitError> {
        match self {
            Self::OpenAiPass { include_usage } => {
                if data != b"[DONE]" && (*include_usage || !usage_only) {
                    frame_data(out, data);
                }
            }
            Self::AnthropicPass => frame_event(out, name.unwrap_or("message"), data),
            Self::OpenAiFromAnthropic(t) => {
                let outs =
                    t.on_event(name.unwrap_or(""), data).map_err(|e| EmitError(e.message))?;
                for o in outs {
                    match o {
                        openai_to_anthropic::StreamOut::Chunk(json) => {
                            frame_data(out, json.as_bytes())
                        }
                        openai_to_anthropic::StreamOut::Done => {
                            out.extend_from_slice(crate::sse::DONE)
                        }
                        openai_to_anthropic::StreamOut::UpstreamError { message, .. } => {
                            return Err(EmitError(message));
                        }
                    }
                }
            }
            Self::AnthropicFromOpenAi(t) => {
                if data == b"[DONE]" {
                    return Ok(());
                }
                if let Some(delta) = t.text_delta(data) {
                    frame_event(out, "content_block_delta", &delta);
                    return Ok(());
                }
                let events = t.on_chunk(data).map_err(|e| EmitError(e.message))?;
                if let Some((_, message)) = t.upstream_error() {
                    return Err(EmitError(message.to_owned()));
                }
                for e in events {
                    frame_event_json(out, e.event, &e.data);
                }
            }
        }
        Ok(())
    }

    /// The upstream reported no usage: an OpenAI client served by an Anthropic-wire upstream
    /// gets `usage` (tidegate's estimate, what it bills) in its usage chunk.
    pub fn estimate_usage(&mut self, usage: crate::proxy::peek::Usage) {
        if let Self::OpenAiFromAnthropic(t) = self {
            t.set_usage_estimate(crate::translate::Usage {
                input: usage.input,
                output: usage.output,
                cached_input: usage.cached_input,
                ..Default::default()
            });
        }
    }

    /// The upstream ended cleanly (`[DONE]`, `message_stop`, or end of body after a finish
    /// reason): whatever closes the client's stream.
    pub fn finish(
        &mut self,
        upstream_sent_stop: bool,
        out: &mut BytesMut,
    ) -> Result<(), EmitError> {
        match self {
            Self::OpenAiPass { .. } => out.extend_from_slice(crate::sse::DONE),
            Self::AnthropicPass if !upstream_sent_stop => {
                frame_event(out, "message_stop", br#"{"type":"message_stop"}"#)
            }
            Self::AnthropicPass => {}
            Self::OpenAiFromAnthropic(t) => {
                if !t.finished() {
                    // The stream ended after its stop reason but without message_stop.
                    self.event(Some("message_stop"), br#"{"type":"message_stop"}"#, false, out)?;
                }
            }
            Self::AnthropicFromOpenAi(t) => {
                for e in t.finish().map_err(|e| EmitError(e.message))? {
                    frame_event_json(out, e.event, &e.data);
                }
            }
        }
        Ok(())
    }
}
