//! Tool calls from an OpenAI-wire upstream as an Anthropic client sees them, non-stream and
//! stream alike: the stop reason that makes a tool runner run them, broken or object-typed
//! arguments, late names, and the deprecated `function_call`. Each stream is assembled the way
//! the anthropic SDK's stream helper does, which parses every tool block's JSON.

use serde_json::{Value, json};

use crate::translate::anthropic_to_openai::{self, StreamTranslator};

/// A non-stream answer with `message` and `finish_reason` (`None`: the key is absent).
fn reply(message: Value, finish: Option<&str>) -> Value {
    let mut choice = json!({ "index": 0, "message": message });
    if let Some(f) = finish {
        choice["finish_reason"] = json!(f);
    }
    let body = json!({ "id": "c1", "model": "m", "choices": [choice] });
    anthropic_to_openai::response(&body).unwrap()
}

/// One chunk whose choice carries `delta` (and `finish_reason` when given).
fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({ "id": "c1", "model": "m", "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
}

/// The chunks through a translator and `[DONE]`, assembled as the anthropic SDK's stream
/// helper does: `(content, stop_reason)`. A tool block's JSON must parse to an object (the
/// SDK raises otherwise).
fn streamed(chunks: &[Value]) -> (Vec<Value>, Value) {
    let mut t = StreamTranslator::new(5);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(t.on_chunk(c.to_string().as_bytes()).unwrap());
    }
    events.extend(t.finish().unwrap());
    let mut content: Vec<Value> = Vec::new();
    let mut json_parts: Vec<String> = Vec::new();
    let mut stop = Value::Null;
    for e in &events {
        let d = &e.data;
        match e.event {
            "content_block_start" => {
                content.push(d["content_block"].clone());
                json_parts.push(String::new());
            }
            "content_block_delta" => {
                let i = d["index"].as_u64().unwrap() as usize;
                match d["delta"]["type"].as_str().unwrap() {
                    "text_delta" => {
                        let text = content[i]["text"].as_str().unwrap().to_owned();
                        content[i]["text"] = json!(text + d["delta"]["text"].as_str().unwrap());
                    }
                    "input_json_delta" => {
                        json_parts[i].push_str(d["delta"]["partial_json"].as_str().unwrap())
                    }
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let i = d["index"].as_u64().unwrap() as usize;
                if content[i]["type"] == "tool_use" && !json_parts[i].is_empty() {
                    let input: Value = serde_json::from_str(&json_parts[i])
                        .unwrap_or_else(|e| panic!("tool JSON {:?}: {e}", json_parts[i]));
                    assert!(input.is_object(), "{input}");
                    content[i]["input"] = input;
                }
            }
            "message_delta" => stop = d["delta"]["stop_reason"].clone(),
            _ => {}
        }
    }
    (content, stop)
}

fn call(id: &str, name: &str, arguments: Value) -> Value {
    json!({ "id": id, "type": "function", "function": { "name": name, "arguments": arguments } })
}

/// OpenAI answers a forced tool choice (`required`, a named function: what an Anthropic
/// client's `any` and `tool` map to) with `finish_reason: stop`, as do vLLM and SGLang. The
/// Anthropic dialect ends a message with tool_use blocks with `tool_use`; with `end_turn` the
/// SDK's tool runner treats it as final and never runs the tool.
#[test]
fn tool_calls_end_with_tool_use_whatever_the_finish_reason() {
    let message = json!({ "role": "assistant", "content": null,
        "tool_calls": [call("call_a", "get_weather", json!("{\"city\":\"Paris\"}"))] });
    for finish in [Some("stop"), None, Some("tool_calls")] {
        let v = reply(message.clone(), finish);
        assert_eq!(v["stop_reason"], "tool_use", "{finish:?}: {v}");
        let mut chunks = vec![chunk(
            json!({ "tool_calls": [{ "index": 0, "id": "call_a", "type": "function",
                "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } }] }),
            None,
        )];
        if let Some(f) = finish {
            chunks.push(chunk(json!({}), Some(f)));
        }
        let (content, stop) = streamed(&chunks);
        assert_eq!(stop, "tool_use", "{finish:?}: {content:?}");
        assert_eq!(content[0]["input"], json!({ "city": "Paris" }));
    }
    // A cut answer stays cut; a plain answer stays a plain answer.
    assert_eq!(reply(message, Some("length"))["stop_reason"], "max_tokens");
    let (_, stop) = streamed(&[chunk(json!({ "content": "hi" }), Some("stop"))]);
    assert_eq!(stop, "end_turn");
}

/// OpenAI's `arguments` "is not guaranteed to be valid JSON". The non-stream road keeps broken
/// ones as `{"_raw_arguments": ...}`; the stream road streamed them raw, and the SDK's stream
/// helper raised mid-stream, losing the text already received. Each tool block's arguments
/// now arrive as one `input_json_delta` at its close, JSON that always parses to an object.
#[test]
fn streamed_tool_arguments_always_assemble_to_an_object() {
    let frag = |i: u64, id: Option<&str>, name: Option<&str>, args: Value| {
        let mut f = json!({ "index": i, "function": { "arguments": args } });
        if let Some(id) = id {
            f["id"] = json!(id);
        }
        if let Some(name) = name {
            f["function"]["name"] = json!(name);
        }
        chunk(json!({ "tool_calls": [f] }), None)
    };
    let (content, stop) = streamed(&[
        chunk(json!({ "content": "Let me check." }), None),
        frag(0, Some("call_a"), Some("get_weather"), json!("{city:")),
        frag(0, None, None, json!(" Paris}")),
        frag(1, Some("call_b"), Some("get_time"), json!("{\"tz\":")),
        frag(1, None, None, json!(" \"CET\"}")),
        chunk(json!({}), Some("tool_calls")),
    ]);
    assert_eq!(stop, "tool_use");
    assert_eq!(content[0]["text"], "Let me check.");
    assert_eq!(content[1]["input"], json!({ "_raw_arguments": "{city: Paris}" }));
    assert_eq!(content[2]["input"], json!({ "tz": "CET" }));
    // The same broken arguments non-stream: the two roads agree.
    let v = reply(
        json!({ "role": "assistant", "tool_calls": [call("call_a", "get_weather", json!("{city: Paris}"))] }),
        Some("tool_calls"),
    );
    assert_eq!(v["content"][0]["input"], content[1]["input"]);
    // Valid JSON that is not an object, and arguments cut by the end of the stream.
    for (args, want) in [
        ("[1, 2]", json!({ "_raw_arguments": "[1, 2]" })),
        ("{\"a\": 1", json!({ "_raw_arguments": "{\"a\": 1" })),
        ("", json!({})),
    ] {
        let (content, _) = streamed(&[frag(0, Some("x"), Some("f"), json!(args))]);
        assert_eq!(content[0]["input"], want, "{args:?}");
    }
}

/// Two fragment shapes some servers send, which the non-stream road already reads: `arguments`
/// as an object, and the function name in a later fragment than the first.
#[test]
fn object_arguments_and_late_names_stream_as_non_stream() {
    let (content, _) = streamed(&[chunk(
        json!({ "tool_calls": [{ "index": 0, "id": "x", "function": { "name": "f", "arguments": { "a": 1 } } }] }),
        Some("tool_calls"),
    )]);
    assert_eq!(content[0]["input"], json!({ "a": 1 }));
    let v = reply(json!({ "tool_calls": [call("x", "f", json!({ "a": 1 }))] }), Some("tool_calls"));
    assert_eq!(v["content"][0]["input"], content[0]["input"]);

    let (content, _) = streamed(&[
        chunk(
            json!({ "tool_calls": [{ "index": 0, "id": "x", "function": { "arguments": "" } }] }),
            None,
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "name": "get_weather" } }] }),
            None,
        ),
        chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{}" } }] }), None),
    ]);
    assert_eq!(content[0]["name"], "get_weather", "{content:?}");
    assert_eq!(content[0]["id"], "x");
    assert_eq!(content.len(), 1);
}

/// The deprecated `function_call` (older compatible servers) is one tool call: it was dropped,
/// leaving `stop_reason: tool_use` with no tool_use block to run.
#[test]
fn a_legacy_function_call_is_one_tool_use_block() {
    let v = reply(
        json!({ "role": "assistant", "content": null,
            "function_call": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } }),
        Some("function_call"),
    );
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(v["content"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["name"], "get_weather");
    assert_eq!(v["content"][0]["input"], json!({ "city": "Paris" }));
    assert!(v["content"][0]["id"].as_str().unwrap().starts_with("toolu_"), "{v}");

    let (content, stop) = streamed(&[
        chunk(
            json!({ "role": "assistant", "function_call": { "name": "get_weather", "arguments": "" } }),
            None,
        ),
        chunk(json!({ "function_call": { "arguments": "{\"city\":" } }), None),
        chunk(json!({ "function_call": { "arguments": "\"Paris\"}" } }), None),
        chunk(json!({}), Some("function_call")),
    ]);
    assert_eq!(stop, "tool_use");
    assert_eq!(content.len(), 1, "{content:?}");
    assert_eq!(content[0]["name"], "get_weather");
    assert_eq!(content[0]["input"], json!({ "city": "Paris" }));
    assert_eq!(content[0]["id"], v["content"][0]["id"], "both roads make the same id");
}
