//! Targeted stream cases: cumulative usage, tool ordinals, protocol violations, index-less and
//! interleaved tool-call fragments.

use serde_json::{Value, json};

use crate::translate::Usage;
use crate::translate::anthropic_to_openai::{self, AnthropicEvent};
use crate::translate::openai_to_anthropic::{self, StreamOut};

fn o2a_chunks(
    include_usage: bool,
    events: &[(&str, Value)],
) -> (Vec<StreamOut>, openai_to_anthropic::StreamTranslator) {
    let mut t = openai_to_anthropic::StreamTranslator::new(include_usage, 9);
    let mut out = Vec::new();
    for (event, data) in events {
        out.extend(t.on_event(event, data.to_string().as_bytes()).unwrap());
    }
    (out, t)
}

fn start() -> (&'static str, Value) {
    (
        "message_start",
        json!({ "type": "message_start", "message": { "id": "msg_1", "model": "claude", "usage": { "input_tokens": 7, "output_tokens": 1 } } }),
    )
}

#[test]
fn cumulative_usage_is_kept_not_summed() {
    let delta = |n: u64| {
        (
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": null }, "usage": { "output_tokens": n } }),
        )
    };
    let (out, t) = o2a_chunks(
        true,
        &[
            start(),
            delta(5),
            delta(12),
            delta(20),
            ("message_stop", json!({ "type": "message_stop" })),
        ],
    );
    assert_eq!(t.usage(), Usage { input: 7, output: 20, cached_input: 0, cache_creation: 0 });
    let StreamOut::Chunk(usage_chunk) = &out[out.len() - 2] else {
        panic!("expected the usage chunk")
    };
    let usage_chunk: Value = serde_json::from_str(usage_chunk).unwrap();
    assert_eq!(usage_chunk["usage"]["completion_tokens"], json!(20));
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(out.last(), Some(&StreamOut::Done));
    assert!(t.finished());
}

#[test]
fn tool_call_index_is_the_tool_ordinal_when_text_precedes() {
    let events = [
        start(),
        (
            "content_block_start",
            json!({ "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
        (
            "content_block_delta",
            json!({ "index": 0, "delta": { "type": "text_delta", "text": "hi" } }),
        ),
        (
            "content_block_start",
            json!({ "index": 1, "content_block": { "type": "tool_use", "id": "t1", "name": "f", "input": {} } }),
        ),
        (
            "content_block_delta",
            json!({ "index": 1, "delta": { "type": "input_json_delta", "partial_json": "{}" } }),
        ),
    ];
    let (out, _) = o2a_chunks(false, &events);
    let indexes: Vec<Value> = out
        .iter()
        .filter_map(|o| match o {
            StreamOut::Chunk(c) => {
                let c: Value = serde_json::from_str(c).unwrap();
                c["choices"][0]["delta"]["tool_calls"][0].get("index").cloned()
            }
            _ => None,
        })
        .collect();
    assert_eq!(indexes, vec![json!(0), json!(0)]);
}

/// A tool called with no arguments streams `{}` when its block ends, as its non-stream answer
/// says (helper-46: it streamed `""`, which the OpenAI SDK's parsing helpers reject); a call
/// that streamed arguments, or got them whole at its start, gets nothing more.
#[test]
fn a_tool_call_without_arguments_streams_an_empty_object() {
    let tool = |index: u64, id: &str, input: Value| {
        (
            "content_block_start",
            json!({ "index": index, "content_block": { "type": "tool_use", "id": id, "name": "f", "input": input } }),
        )
    };
    let fragment = |index: u64, json: &str| {
        (
            "content_block_delta",
            json!({ "index": index, "delta": { "type": "input_json_delta", "partial_json": json } }),
        )
    };
    let stop = |index: u64| ("content_block_stop", json!({ "index": index }));
    let events = [
        start(),
        tool(0, "none", json!({})),
        fragment(0, ""),
        stop(0),
        tool(1, "streamed", json!({})),
        fragment(1, "{\"a\":"),
        fragment(1, "1}"),
        stop(1),
        tool(2, "whole", json!({ "b": 2 })),
        stop(2),
    ];
    let (out, _) = o2a_chunks(false, &events);
    let mut args = vec![String::new(); 3];
    for o in &out {
        let StreamOut::Chunk(c) = o else { continue };
        let c: Value = serde_json::from_str(c).unwrap();
        if let Some(call) = c["choices"][0]["delta"]["tool_calls"].get(0) {
            let i = call["index"].as_u64().unwrap() as usize;
            args[i].push_str(call["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(args, vec!["{}", "{\"a\":1}", "{\"b\":2}"]);
}

#[test]
fn o2a_stream_protocol_violations_are_errors() {
    let mut t = openai_to_anthropic::StreamTranslator::new(false, 0);
    assert!(
        t.on_event(
            "content_block_delta",
            br#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#
        )
        .is_err()
    );
    assert!(t.on_event("message_start", b"{not json").is_err());
    let bad_utf8 = t.on_event("message_start", b"{\"message\":{\"id\":\"\xff\"}}").unwrap_err();
    assert!(bad_utf8.message.contains("invalid UTF-8 at byte 18"), "{}", bad_utf8.message);
    assert!(t.on_event("message_start", b"[]").is_err());
    assert_eq!(t.on_event("ping", b"garbage").unwrap(), vec![]);
    assert_eq!(t.on_event("content_block_stop", b"").unwrap(), vec![]);
    let (_, mut done) = o2a_chunks(false, &[start(), ("message_stop", json!({}))]);
    assert_eq!(
        done.on_event("message_start", br#"{"message":{}}"#).unwrap(),
        vec![],
        "nothing after message_stop"
    );
}

fn a2o_feed(
    t: &mut anthropic_to_openai::StreamTranslator,
    chunks: &[Value],
) -> Result<Vec<AnthropicEvent>, String> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend(t.on_chunk(c.to_string().as_bytes()).map_err(|e| e.message)?);
    }
    Ok(out)
}

fn delta(d: Value) -> Value {
    json!({ "id": "c", "model": "m", "choices": [{ "index": 0, "delta": d, "finish_reason": null }] })
}

#[test]
fn a2o_stream_tool_calls_without_index_and_interleaving() {
    // Servers that omit `index`: a new id starts a new tool call, fragments without id continue it.
    let mut t = anthropic_to_openai::StreamTranslator::new(1);
    let events = a2o_feed(&mut t, &[
        delta(json!({ "tool_calls": [{ "id": "x1", "function": { "name": "f", "arguments": "{\"a\"" } }] })),
        delta(json!({ "tool_calls": [{ "function": { "arguments": ":1}" } }] })),
        delta(json!({ "tool_calls": [{ "id": "x2", "function": { "name": "g", "arguments": "{}" } }] })),
    ])
    .unwrap();
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "content_block_start")
        .map(|e| &e.data["content_block"])
        .collect();
    assert_eq!(
        starts,
        vec![
            &json!({ "type": "tool_use", "id": "x1", "name": "f", "input": {} }),
            &json!({ "type": "tool_use", "id": "x2", "name": "g", "input": {} })
        ]
    );

    // Going back to a closed tool call cannot be expressed in Anthropic's sequential blocks.
    let mut t = anthropic_to_openai::StreamTranslator::new(1);
    let result = a2o_feed(
        &mut t,
        &[
            delta(
                json!({ "tool_calls": [{ "index": 0, "id": "a", "function": { "name": "f", "arguments": "" } }] }),
            ),
            delta(
                json!({ "tool_calls": [{ "index": 1, "id": "b", "function": { "name": "g", "arguments": "" } }] }),
            ),
            delta(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{}" } }] })),
        ],
    );
    assert!(result.is_err());
}

#[test]
fn a2o_stream_edges() {
    let mut empty = anthropic_to_openai::StreamTranslator::new(3);
    assert!(empty.finish().is_err(), "[DONE] without any chunk is a broken upstream");
    assert!(empty.on_chunk(b"{\"choices\":").is_err());

    let mut t = anthropic_to_openai::StreamTranslator::new(3);
    a2o_feed(&mut t, &[delta(json!({ "refusal": "No." })), delta(json!({ "content": null }))])
        .unwrap();
    let end = t.finish().unwrap();
    assert_eq!(end[1].data["delta"]["stop_reason"], json!("refusal"));
    assert!(t.finished());
    assert_eq!(t.finish().unwrap(), vec![], "finish is idempotent");
    assert!(!t.upstream_usage_seen());
}

#[test]
fn a2o_stream_waits_for_an_identified_chunk() {
    // Azure's first chunk: empty id, no choices, content-filter results only.
    let mut t = anthropic_to_openai::StreamTranslator::new(2);
    let prefilter = json!({ "id": "", "model": "", "choices": [], "prompt_filter_results": [] });
    assert_eq!(a2o_feed(&mut t, &[prefilter]).unwrap(), vec![]);
    let events = a2o_feed(&mut t, &[delta(json!({ "content": "x" }))]).unwrap();
    assert_eq!(events[0].event, "message_start");
    assert_eq!(events[0].data["message"]["id"], json!("msg_c"));
}

#[test]
fn wants_stream_usage_reads_stream_options() {
    let yes = json!({ "stream": true, "stream_options": { "include_usage": true } });
    assert!(openai_to_anthropic::wants_stream_usage(&yes));
    assert!(!openai_to_anthropic::wants_stream_usage(&json!({ "stream": true })));
    assert!(!openai_to_anthropic::wants_stream_usage(
        &json!({ "stream_options": { "include_usage": "yes" } })
    ));
}
