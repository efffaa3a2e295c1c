//! Translation micro-benchmark: OpenAI<->Anthropic request and response translation and
//! per-event stream translation, in ns per operation (median of rounds).
//!
//! `cargo bench --bench translate`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use serde_json::{Value, json};
use tidegate::translate::{RequestOptions, anthropic_to_openai, openai_to_anthropic};

fn measure(name: &str, mut f: impl FnMut()) {
    let iters = 20_000;
    for _ in 0..iters / 10 {
        f();
    }
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    println!("{name:<48} {:>9.0} ns/op", rounds[3]);
}

fn main() {
    let opts = RequestOptions {
        default_max_tokens: 1024,
        drop_unsupported_params: false,
        upstream_model: "claude-haiku-4-5".into(),
    };
    let chat: Value = json!({"model": "gpt-4o-mini", "max_completion_tokens": 200, "temperature": 0.2,
        "messages": [{"role": "system", "content": "You summarize support tickets."},
                     {"role": "user", "content": "Customer cannot log in after the password reset; error 403 on /login."}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]});
    let messages: Value = json!({"model": "claude-haiku-4-5", "max_tokens": 200, "system": "You summarize support tickets.",
        "messages": [{"role": "user", "content": "Customer cannot log in after the password reset; error 403 on /login."}]});
    let anthropic_reply: Value = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Login fails with 403 after a password reset; likely a stale session."}],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": {"input_tokens": 40, "output_tokens": 18}});
    let openai_reply: Value = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Login fails with 403 after a password reset."}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}});
    let delta = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"stale "}}"#;
    let chunk = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"stale "},"finish_reason":null}]}"#;

    println!("translation micro-benchmark (median of 7 rounds x 20000)");
    measure("request  openai -> anthropic", || {
        drop(black_box(openai_to_anthropic::request(black_box(&chat), &opts).unwrap()))
    });
    measure("request  anthropic -> openai", || {
        drop(black_box(anthropic_to_openai::request(black_box(&messages), &opts).unwrap()))
    });
    measure("response anthropic message -> chat.completion", || {
        drop(black_box(openai_to_anthropic::response(black_box(&anthropic_reply), 1).unwrap()))
    });
    measure("response chat.completion -> anthropic message", || {
        drop(black_box(anthropic_to_openai::response(black_box(&openai_reply)).unwrap()))
    });
    let mut o2a = openai_to_anthropic::StreamTranslator::new(false, 1);
    o2a.on_event("message_start", br#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3}}}"#).unwrap();
    o2a.on_event(
        "content_block_start",
        br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    )
    .unwrap();
    measure("stream event anthropic delta -> openai chunk", || {
        drop(black_box(o2a.on_event("content_block_delta", black_box(delta)).unwrap()))
    });
    let mut a2o = anthropic_to_openai::StreamTranslator::new(10);
    a2o.on_chunk(chunk).unwrap();
    measure("stream event openai chunk -> anthropic delta", || {
        drop(black_box(a2o.on_chunk(black_box(chunk)).unwrap()))
    });
}
