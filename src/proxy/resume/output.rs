//! What the client receives of a resumed answer: an OpenAI client's chunks in the shape of
//! the ones it already has, an Anthropic client's text in its open block, and the close with
//! the whole request's usage.

use bytes::Bytes;
use serde_json::{Value, json};

use super::Resumed;
use crate::error::Dialect;
use crate::proxy::forward::Forward;
use crate::proxy::peek;
use crate::sse::encode_event;
use crate::translate::finish::anthropic_stop_reason;

/// What an OpenAI client's resumed chunks look like: the `id` and `created` of the chunks it
/// already has (one seamless stream), the resuming target's model, and a `usage` of `null`
/// on each when the client asked for usage (as OpenAI sends them).
pub(super) struct Shape<'a> {
    id: String,
    created: u64,
    model: &'a str,
    include_usage: bool,
}

impl<'a> Shape<'a> {
    /// Reads `id` and `created` from the first chunk the client received (`first_out`: SSE
    /// frames); a fresh id and the time now when there is none to read.
    pub(super) fn new(first_out: Option<&Bytes>, model: &'a str, include_usage: bool) -> Self {
        #[derive(serde::Deserialize)]
        struct Head {
            id: String,
            created: u64,
        }
        // The first chunk with an id (Azure's first chunk, its prompt filter results, has "").
        let head = first_out.and_then(|out| {
            out.split(|&b| b == b'\n')
                .filter_map(|line| {
                    serde_json::from_slice::<Head>(line.strip_prefix(b"data: ")?).ok()
                })
                .find(|h| !h.id.is_empty())
        });
        let (id, created) = head.map_or_else(
            || {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                ("chatcmpl-tidegate-resume".to_owned(), now.map_or(0, |d| d.as_secs()))
            },
            |h| (h.id, h.created),
        );
        Self { id, created, model, include_usage }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let mut c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        crate::sse::encode_data(c.to_string().as_bytes())
    }

    fn usage_chunk(&self, u: peek::Usage) -> Bytes {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [],
            "usage": {"prompt_tokens": u.input, "completion_tokens": u.output, "total_tokens": u.input.saturating_add(u.output)}});
        crate::sse::encode_data(c.to_string().as_bytes())
    }
}

/// One piece of resumed text in the client's dialect. An Anthropic client gets it in its open
/// text block, or in a new one after the last block it saw.
pub(super) fn emit_text(fwd: &mut Forward, shape: &Shape<'_>, piece: &str) {
    fwd.rec.spend.streamed_bytes += piece.len() as u64;
    match fwd.dialect {
        Dialect::OpenAi => fwd.out.extend_from_slice(&shape.chunk(json!({"content": piece}), None)),
        Dialect::Anthropic => {
            let index = fwd.blocks_started.saturating_sub(1);
            let index = if fwd.blocks_started > fwd.blocks_stopped {
                index
            } else {
                let start = json!({"type": "content_block_start", "index": fwd.blocks_started, "content_block": {"type": "text", "text": ""}});
                fwd.out.extend_from_slice(&encode_event(
                    "content_block_start",
                    start.to_string().as_bytes(),
                ));
                fwd.blocks_started += 1;
                fwd.blocks_started - 1
            };
            let delta = json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}});
            fwd.out.extend_from_slice(&encode_event(
                "content_block_delta",
                delta.to_string().as_bytes(),
            ));
        }
    }
}

/// Closes a resumed answer in the client's dialect with the whole request's usage; `Err` if
/// a splice's restarted answer ended before it covered what the client already has.
pub(super) async fn close(
    fwd: &mut Forward,
    shape: &Shape<'_>,
    finish: &str,
    usage: Option<peek::Usage>,
    still_splicing: bool,
) -> Result<Resumed, &'static str> {
    if still_splicing {
        // The restarted answer ended before it covered what the client already has.
        return Err("diverged");
    }
    // The resumed answer arrived whole: its usage, if reported, is final.
    fwd.rec.spend.complete = true;
    // Every attempt's tokens: the broken ones' output at least the text they streamed.
    fwd.rec.usage = Some(fwd.rec.spend.request_usage(usage.as_ref()));
    if fwd.dialect == Dialect::Anthropic {
        if fwd.blocks_started > fwd.blocks_stopped {
            let stop = json!({"type": "content_block_stop", "index": fwd.blocks_started - 1});
            fwd.out.extend_from_slice(&encode_event(
                "content_block_stop",
                stop.to_string().as_bytes(),
            ));
        }
        // The whole request's counts (message_start had the first attempt's input only).
        let u = fwd.rec.usage.unwrap_or_default();
        let usage = json!({"input_tokens": u.input.saturating_sub(u.cached_input), "cache_read_input_tokens": u.cached_input, "output_tokens": u.output});
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": anthropic_stop_reason(finish), "stop_sequence": null}, "usage": usage});
        fwd.out.extend_from_slice(&encode_event("message_delta", delta.to_string().as_bytes()));
        fwd.out.extend_from_slice(&encode_event("message_stop", br#"{"type":"message_stop"}"#));
        fwd.rec.finish = Some(finish.to_owned());
        return Ok(if fwd.flush().await { Resumed::Complete } else { Resumed::ClientGone });
    }
    fwd.out.extend_from_slice(&shape.chunk(json!({}), Some(finish)));
    if shape.include_usage {
        fwd.out.extend_from_slice(&shape.usage_chunk(fwd.rec.usage.unwrap_or_default()));
    }
    fwd.rec.finish = Some(finish.to_owned());
    fwd.out.extend_from_slice(crate::sse::DONE);
    Ok(if fwd.flush().await { Resumed::Complete } else { Resumed::ClientGone })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_stream_keeps_the_first_chunk_id_it_can_read() {
        // Azure sends its prompt filter results first, with an empty id and created 0.
        let out = Bytes::from_static(
            b"data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"choices\":[],\"prompt_filter_results\":[]}\n\ndata: {\"id\":\"chatcmpl-1\",\"created\":17,\"choices\":[]}\n\n",
        );
        let s = Shape::new(Some(&out), "m", false);
        assert_eq!((s.id.as_str(), s.created), ("chatcmpl-1", 17));
        // Nothing readable: a fresh id.
        let s = Shape::new(Some(&Bytes::from_static(b"data: [DONE]\n\n")), "m", true);
        assert_eq!(s.id, "chatcmpl-tidegate-resume");
        let chunk = s.chunk(json!({"content": "x"}), None);
        let v: Value = serde_json::from_slice(&chunk["data: ".len()..]).unwrap();
        assert_eq!((&v["usage"], &v["choices"][0]["logprobs"]), (&Value::Null, &Value::Null));
        assert!(v.as_object().unwrap().contains_key("usage"));
    }
}
