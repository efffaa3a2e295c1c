//! The deterministic tiers: a cached answer, then a template, when every provider fails; in
//! both dialects, stream and not; and visible as fallbacks.

use crate::common::*;

/// One provider target and the given free tiers. Tests that need "good, then down" install a
/// second config version, which also shows the cache outlives reloads.
fn route(model: &str, tiers: &str) -> String {
    format!(
        "providers:\n  sim: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets:\n      - {{provider: sim, model: \"{model}\"}}\n{tiers}"
    )
}

const TIERS: &str = "      - {cache: {max_age: 1h}}\n      - {template: \"Summary unavailable; a human will review this ticket.\"}\n";

#[tokio::test(start_paused = true)]
async fn template_answers_when_everything_fails() {
    let gw = gateway(&route("p+status=503", "      - {template: \"Summary unavailable.\"}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-fallback"), "template;reason=status_5xx");
    assert_eq!(got.header("x-tidegate-attempts"), "1");
    let v = got.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Summary unavailable.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streamed, and to an Anthropic client, it is a normal answer of their dialect.
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), "Summary unavailable.");
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    // With the headers of any stream tidegate sends, and its finish reason in the log.
    assert_eq!(got.header("cache-control"), "no-cache");
    assert_eq!(got.header("x-accel-buffering"), "no");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["finish_reason"], "stop", "{line}");
    let got = post(
        &gw,
        "/v1/messages",
        r#"{"model":"x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(got.json()["content"][0]["text"], "Summary unavailable.");
    assert_eq!(got.json()["stop_reason"], "end_turn");
    assert_eq!(
        metric(
            &gw,
            "tidegate_fallbacks_total{reason=\"status_5xx\",route=\"r\",tier=\"template\"}"
        ),
        3.0
    );
}

#[tokio::test(start_paused = true)]
async fn cache_serves_the_last_good_answer_then_expires_to_template() {
    // A good answer is cached on the way out...
    let good = gateway(&route("p+echo", TIERS));
    let body = r#"{"model":"x","messages":[{"role":"user","content":"remember this answer"}]}"#;
    assert_eq!(post(&good, "/v1/chat/completions", body).await.status, 200);
    // ...and served when the same request later finds every provider down. (Same process,
    // new config version: the cache outlives reloads.)
    let down = tidegate::config::Config::from_bytes(
        std::path::Path::new("t.yaml"),
        route("p+status=500", TIERS).as_bytes(),
    )
    .unwrap();
    good.install(good.prepare(down).unwrap());
    let stream_body = body.replace("\"messages\"", "\"stream\":true,\"messages\"");
    let got = post(&good, "/v1/chat/completions", &stream_body).await;
    assert_eq!(got.header("x-tidegate-fallback"), "cache;reason=status_5xx", "{}", got.text());
    assert_eq!(got.stream_text(), "remember this answer");
    // A different request has no cache entry: the template answers.
    let other = post(&good, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(other.header("x-tidegate-fallback"), "template;reason=status_5xx");
    // After max_age the entry is stale.
    tokio::time::advance(std::time::Duration::from_secs(3601)).await;
    let stale = post(&good, "/v1/chat/completions", body).await;
    assert_eq!(stale.header("x-tidegate-fallback"), "template;reason=status_5xx");
}

#[tokio::test(start_paused = true)]
async fn streamed_answers_are_cached_too_but_not_tool_calls() {
    let gw = gateway(&route("p+chunks=3", TIERS));
    let body = r#"{"model":"x","stream":true,"messages":[{"role":"user","content":"stream me"}]}"#;
    assert_eq!(post(&gw, "/v1/chat/completions", body).await.stream_text(), "The tide rises");
    let down = tidegate::config::Config::from_bytes(
        std::path::Path::new("t.yaml"),
        route("p+status=500", TIERS).as_bytes(),
    )
    .unwrap();
    gw.install(gw.prepare(down).unwrap());
    let plain = body.replace("\"stream\":true,", "");
    let got = post(&gw, "/v1/chat/completions", &plain).await;
    assert_eq!(got.header("x-tidegate-fallback"), "cache;reason=status_5xx");
    assert_eq!(got.json()["choices"][0]["message"]["content"], "The tide rises");

    let tools = gateway(&route("p+tool=get_weather", TIERS));
    assert_eq!(post(&tools, "/v1/chat/completions", &chat("x")).await.status, 200);
    assert!(tools.shared.answers.is_empty(), "a tool call is not a cacheable answer");
}

#[tokio::test(start_paused = true)]
async fn no_free_tier_means_the_502() {
    let gw = gateway(&route("p+status=503", ""));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.error_code(), "upstream_unavailable");
}

#[test]
fn free_tiers_must_follow_the_providers() {
    let bad = "providers:\n  sim: {kind: mock}\nroutes:\n  r:\n    targets:\n      - {template: \"x\"}\n      - {provider: sim, model: m}\n";
    let e = tidegate::config::Config::from_bytes(std::path::Path::new("t.yaml"), bad.as_bytes())
        .unwrap_err();
    assert_eq!(e.path, "routes.r.targets[1]");
    let both = "providers:\n  sim: {kind: mock}\nroutes:\n  r:\n    targets:\n      - {provider: sim, model: m, template: \"x\"}\n";
    assert!(
        tidegate::config::Config::from_bytes(std::path::Path::new("t.yaml"), both.as_bytes())
            .is_err()
    );
}
