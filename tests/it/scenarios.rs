//! Issue 4's scenario suite: SPEC §5 failure semantics end to end, one misbehaving primary (or
//! several) in front of a healthy fallback, on paused tokio time so every wait is exact.
//!
//! Each scenario asserts the upstream calls (the mock's counters), the elapsed virtual time, what
//! the client received (status, text, `[DONE]` or not) and the model and usage it was told.
//! Retries and backoff are in `retries.rs`, timeouts in `timeouts.rs`, streams, refusals, context
//! windows, free tiers and dialects in `outcomes.rs`.

mod outcomes;
mod retries;
mod timeouts;

use std::sync::Arc;
use std::time::Duration;

use tidegate::gateway::Gateway;
use tokio::time::Instant;

use crate::common::*;

/// The healthy backup of most scenarios, and what every `chunks=3` mock answers.
const BACKUP: &str = "b+chunks=3";
const ANSWER: &str = "The tide rises";
/// Prompt tokens of [`request`] as the mock counts them (3 + 3 per message + 4 bytes a token).
const PROMPT: u64 = 9;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A chat request saying `content`; streamed requests ask for usage so the client sees it.
fn request_saying(content: &str, stream: bool) -> String {
    let opts =
        if stream { r#""stream":true,"stream_options":{"include_usage":true},"# } else { "" };
    format!(r#"{{"model":"x",{opts}"messages":[{{"role":"user","content":"{content}"}}]}}"#)
}

fn request(stream: bool) -> String {
    request_saying("Hello there", stream)
}

/// Sends `body` and measures the virtual time until the whole response was read.
async fn timed_body(gw: &Arc<Gateway>, body: &str) -> (Got, Duration) {
    let t0 = Instant::now();
    let got = post(gw, "/v1/chat/completions", body).await;
    (got, t0.elapsed())
}

async fn timed(gw: &Arc<Gateway>, stream: bool) -> (Got, Duration) {
    timed_body(gw, &request(stream)).await
}

/// The mock's call counter for one provider and model name.
fn calls(gw: &Gateway, provider: &str, model: &str) -> u64 {
    gw.mock_stats(provider).get(model).calls
}

/// Cancels counted by the mock, after letting dropped upstream tasks notice.
async fn cancels(gw: &Gateway, provider: &str, model: &str) -> u64 {
    tokio::task::yield_now().await;
    gw.mock_stats(provider).get(model).cancels
}

/// A route `r` over mock providers `sim`, `backup`, `third` (OpenAI wire) and `claude` (Anthropic
/// wire); `extra` follows the target list (more list items, then route keys, then top-level keys).
fn route(targets: &[(&str, &str)], extra: &str) -> String {
    let mut y = String::from(
        "providers:\n  sim: {kind: mock}\n  backup: {kind: mock}\n  third: {kind: mock}\n  claude: {kind: mock, api: anthropic}\nroutes:\n  r:\n    default: true\n    targets:\n",
    );
    for (p, m) in targets {
        y.push_str(&format!("      - {{provider: {p}, model: \"{m}\"}}\n"));
    }
    y + extra
}

/// Asserts a complete 200 answer of `ANSWER` (3 completion tokens) served by `provider`/`model`,
/// as the client saw it: headers, body `model` (every chunk's), usage, and for a stream exactly
/// one `[DONE]`, last, with no error event.
fn assert_answered(got: &Got, stream: bool, provider: &str, model: &str, prompt: u64) {
    let ctx = format!("stream={stream}: {}", got.text());
    assert_eq!(got.status, 200, "{ctx}");
    assert_eq!(got.header("x-tidegate-provider"), provider, "{ctx}");
    assert_eq!(got.header("x-tidegate-model"), model, "{ctx}");
    let usage = if stream {
        let events = got.events();
        assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1, "{ctx}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{ctx}");
        assert_eq!(got.stream_text(), ANSWER, "{ctx}");
        let chunks: Vec<serde_json::Value> =
            events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert!(chunks.iter().all(|c| c.get("error").is_none() && c["model"] == model), "{ctx}");
        let finish = chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish.collect::<Vec<_>>(), ["stop"], "{ctx}");
        chunks.last().unwrap()["usage"].clone()
    } else {
        let v = got.json();
        assert_eq!(v["model"], model, "{ctx}");
        assert_eq!(v["choices"][0]["message"]["content"], ANSWER, "{ctx}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{ctx}");
        v["usage"].clone()
    };
    assert_eq!(usage["prompt_tokens"], prompt, "{ctx}");
    assert_eq!(usage["completion_tokens"], 3, "{ctx}");
    assert_eq!(usage["total_tokens"], prompt + 3, "{ctx}");
}
