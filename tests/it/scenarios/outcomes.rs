//! What the client ends up with: invisible stream failover, a supplied `[DONE]`, context-window
//! failover, refusals passed through, the free tiers, the final 502, and failover across wires.

use super::*;

const NO_RETRY: &str = "    retries: {per_target: 0}\n";

/// Scenario 8: a stream cut before any content (and a non-stream body cut half-way) fails over
/// invisibly: the client gets the backup's whole answer with exactly one `[DONE]`.
#[tokio::test(start_paused = true)]
async fn s08_cut_before_content_is_an_invisible_failover() {
    let primary = "p+cut=0";
    for stream in [false, true] {
        let gw = gateway(&pair(primary, BACKUP, NO_RETRY));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "backup", BACKUP, PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=cut");
        // The mock pauses 5 ms before cutting so what it sent is flushed.
        assert!(took <= ms(5), "stream={stream}: {took:?}");
        assert_eq!(calls(&gw, "sim", primary), 1);
        assert_eq!(calls(&gw, "backup", BACKUP), 1);
    }
}

/// Scenario 8 on the Anthropic wire: a non-stream body cut half-way (and a stream cut before
/// content) fails over the same way (helper-36: the mock's Anthropic answers never broke).
#[tokio::test(start_paused = true)]
async fn s08b_a_cut_on_the_anthropic_wire_fails_over_too() {
    let primary = "p+cut=0";
    for stream in [false, true] {
        let gw = gateway(&route(&[("claude", primary), ("backup", BACKUP)], NO_RETRY));
        let (got, _) = timed(&gw, stream).await;
        assert_answered(&got, stream, "backup", BACKUP, PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=cut", "stream={stream}");
        assert_eq!(calls(&gw, "claude", primary), 1);
    }
}

/// Scenario 11: a stream that ends after its finish (and usage) without `[DONE]` is a complete
/// answer: tidegate supplies the one `[DONE]`; nothing is retried.
#[tokio::test(start_paused = true)]
async fn s11_missing_done_after_finish_is_supplied() {
    let primary = "p+chunks=3+no_done";
    let gw = gateway(&pair(primary, BACKUP, ""));
    let (got, took) = timed(&gw, true).await;
    assert_answered(&got, true, "sim", primary, PROMPT);
    assert_eq!(got.header("x-tidegate-attempts"), "1");
    assert_eq!(took, Duration::ZERO);
    assert_eq!(calls(&gw, "sim", primary), 1);
    assert_eq!(calls(&gw, "backup", BACKUP), 0);
}

/// helper-49: a stream whose connection breaks (or goes silent, or sends an error or garbage:
/// review-54) after its finish, before its usage and `[DONE]` (an Anthropic stream: after
/// `message_delta`), is a complete answer too,
/// on either wire. It was taken for a stream broken mid-answer and resumed: the client got more
/// text after its finish and a second finish (with `resume: off`, an error event).
#[tokio::test(start_paused = true)]
async fn s11b_a_break_after_the_finish_is_a_complete_answer() {
    for provider in ["sim", "claude"] {
        for (tail, resume) in [
            ("cut", "auto"),
            ("stall", "auto"),
            ("error", "auto"),
            ("garbage", "auto"),
            ("cut", "off"),
            ("error", "off"),
        ] {
            let primary = format!("p+chunks=3+after_finish={tail}");
            let extra = format!("    resume: {resume}\n    timeouts: {{idle: 2s}}\n");
            let gw = gateway(&route(&[(provider, &primary), ("backup", BACKUP)], &extra));
            let got = post(&gw, "/v1/chat/completions", &request(true)).await;
            let ctx = format!("{provider} {tail} resume {resume}: {}", got.text());
            assert_eq!(got.status, 200, "{ctx}");
            let events = got.events();
            assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1, "{ctx}");
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{ctx}");
            assert_eq!(got.stream_text(), ANSWER, "{ctx}");
            let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            assert!(chunks.iter().all(|c| c.get("error").is_none()), "{ctx}");
            let finish = chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str());
            assert_eq!(finish.collect::<Vec<_>>(), ["stop"], "{ctx}");
            assert_eq!(calls(&gw, "backup", BACKUP), 0, "{ctx}");
            let line: serde_json::Value =
                serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
            assert_eq!(line["outcome"], "ok", "{ctx}");
        }
    }
}

/// Scenario 12: a context-length 400 is never resent to the same target; the next target with the
/// same (known) window is skipped without a call; the one with a larger window answers.
#[tokio::test(start_paused = true)]
async fn s12_context_length_skips_small_windows() {
    let targets = [("sim", "p+context=10"), ("backup", "b+context=10"), ("third", "c+chunks=3")];
    let extra = "models:\n  \"p+context=10\": {input: 1, output: 1, context: 10}\n  \"b+context=10\": {input: 1, output: 1, context: 10}\n  \"c+chunks=3\": {input: 1, output: 1, context: 1000}\n";
    // 41 bytes: 3 + 3 + 11 = 17 prompt tokens, over the 10-token window.
    let content = "Please summarise this long support ticket";
    for stream in [false, true] {
        let gw = gateway(&route(&targets, extra));
        let (got, took) = timed_body(&gw, &request_saying(content, stream)).await;
        assert_answered(&got, stream, "third", "c+chunks=3", 17);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=context_length");
        assert_eq!(got.header("x-tidegate-attempts"), "2");
        assert_eq!(took, Duration::ZERO);
        assert_eq!(calls(&gw, "sim", "p+context=10"), 1, "never resent (per_target is 1)");
        assert_eq!(calls(&gw, "backup", "b+context=10"), 0, "window not larger: skipped");
        assert_eq!(calls(&gw, "third", "c+chunks=3"), 1);
        // With no larger window on the route, the prompt is the problem: the client gets the
        // upstream's context-length 400 (its SDK's BadRequestError), not a 502.
        let gw = gateway(&route(&targets[..2], extra));
        let (got, _) = timed_body(&gw, &request_saying(content, stream)).await;
        assert_eq!(got.status, 400, "{}", got.text());
        assert_eq!(got.json()["error"]["code"], "context_length_exceeded", "{}", got.text());
        assert_eq!(got.header("x-tidegate-provider"), "sim");
        assert_eq!(calls(&gw, "backup", "b+context=10"), 0);
        // Not when a larger window was left untried (here: no attempts left), nor when the
        // route has a free tier to answer.
        let capped = format!("    retries: {{total: 1}}\n{extra}");
        let gw = gateway(&route(&[targets[0], targets[2]], &capped));
        let (got, _) = timed_body(&gw, &request_saying(content, stream)).await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(calls(&gw, "third", "c+chunks=3"), 0);
        let tier = format!("      - {{template: \"Too long.\"}}\n{extra}");
        let gw = gateway(&route(&targets[..2], &tier));
        let (got, _) = timed_body(&gw, &request_saying(content, stream)).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-tidegate-fallback"), "template;reason=context_length");
    }
}

/// Scenario 13: a content-filter refusal is the request's fault: the upstream's 400 goes to the
/// client as it came, nothing is retried or failed over.
#[tokio::test(start_paused = true)]
async fn s13_content_filter_refusal_passes_through() {
    let gw = gateway(&pair("p+filter", BACKUP, ""));
    for (n, stream) in [(1, false), (2, true)] {
        let (got, took) = timed(&gw, stream).await;
        assert_eq!(got.status, 400, "{}", got.text());
        assert_eq!(got.header("content-type"), "application/json", "a JSON error, stream or not");
        let v = got.json();
        assert_eq!(v["error"]["code"], "content_filter");
        assert_eq!(v["error"]["param"], "prompt");
        assert!(v["error"]["message"].as_str().unwrap().contains("content management policy"));
        // The upstream's own refusal keeps its own retry hints (the mock sends no
        // `x-should-retry`); it is not a tidegate error code, but it says who refused.
        assert_eq!(got.header("x-should-retry"), "");
        assert_eq!(got.header("x-tidegate-error-code"), "");
        assert_eq!(got.header("x-tidegate-provider"), "sim");
        assert_eq!(took, Duration::ZERO);
        assert_eq!(calls(&gw, "sim", "p+filter"), n, "one call per request");
        assert_eq!(calls(&gw, "backup", BACKUP), 0);
    }
}

/// Scenario 14: a fallback that rejects the request itself: SPEC §5 "not retryable, not failed
/// over" applies to the fallback too, so the client gets that 400, not a 502.
#[tokio::test(start_paused = true)]
async fn s14_a_fallback_rejecting_the_request_is_passed_through() {
    for stream in [false, true] {
        let gw = gateway(&pair("p+status=503", "b+status=400", NO_RETRY));
        let (got, took) = timed(&gw, stream).await;
        assert_eq!(got.status, 400, "{}", got.text());
        assert_eq!(got.json()["error"]["message"], "mock error 400");
        assert_eq!(got.json()["error"]["type"], "invalid_request_error");
        // SPEC §5 "Every fallback is visible": the refusal came from the backup after the
        // primary's 503, and says so.
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=status_5xx");
        assert_eq!(got.header("x-tidegate-provider"), "backup");
        assert_eq!(got.header("x-tidegate-model"), "b+status=400");
        assert_eq!(got.header("x-tidegate-attempts"), "2");
        let series = "tidegate_fallbacks_total{reason=\"status_5xx\",route=\"r\",tier=\"target\"}";
        assert_eq!(metric(&gw, series), 1.0);
        assert_eq!(took, Duration::ZERO);
        assert_eq!(calls(&gw, "sim", "p+status=503"), 1);
        assert_eq!(calls(&gw, "backup", "b+status=400"), 1);
    }
}

/// Scenario 15: every paid target down: a cached answer for the same request when there is one
/// (with the model that gave it), the template otherwise.
#[tokio::test(start_paused = true)]
async fn s15_all_paid_targets_down_cache_then_template() {
    let tiers = format!(
        "      - {{cache: {{max_age: 1h}}}}\n      - {{template: \"Try again later.\"}}\n{NO_RETRY}"
    );
    let up = [("sim", "p+chunks=3"), ("backup", BACKUP)];
    let gw = gateway(&route(&up, &tiers));
    assert_answered(&timed(&gw, false).await.0, false, "sim", "p+chunks=3", PROMPT);
    let down = [("sim", "p+status=503"), ("backup", "b+reset")];
    gw.install(gw.prepare(config(&route(&down, &tiers))).unwrap());
    for (n, stream) in [(1, false), (2, true)] {
        let (got, took) = timed(&gw, stream).await;
        assert_eq!(got.header("x-tidegate-fallback"), "cache;reason=status_5xx");
        assert_eq!(got.header("x-tidegate-model"), "p+chunks=3");
        assert_eq!(got.header("x-tidegate-attempts"), "2");
        let text = if stream {
            assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
            got.stream_text()
        } else {
            got.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
        };
        assert_eq!(text, ANSWER, "stream={stream}");
        assert_eq!(took, Duration::ZERO);
        assert_eq!(calls(&gw, "sim", "p+status=503"), n);
        assert_eq!(calls(&gw, "backup", "b+reset"), n);
    }
    let (got, _) = timed_body(&gw, &request_saying("Something new", false)).await;
    assert_eq!(got.header("x-tidegate-fallback"), "template;reason=status_5xx");
    assert_eq!(got.json()["choices"][0]["message"]["content"], "Try again later.");
}

/// Scenario 16: every target down and no free tier: a 502 listing every attempt, within the total
/// deadline (here 5 s: the backup's two hangs of `first_token` plus two backoffs).
#[tokio::test(start_paused = true)]
async fn s16_all_down_is_a_502_within_the_total_deadline() {
    let extra = "    timeouts: {first_token: 2s, total: 5s}\n    retries: {per_target: 1, total: 4, backoff: 100ms}\n";
    for stream in [false, true] {
        let gw = gateway(&pair("p+status=503", "b+hang", extra));
        let (got, took) = timed(&gw, stream).await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.error_code(), "upstream_unavailable");
        assert_eq!(got.header("x-should-retry"), "false");
        let msg = got.json()["error"]["message"].as_str().unwrap().to_owned();
        assert_eq!(msg.matches("sim/p+status=503: status_5xx (status 503)").count(), 2, "{msg}");
        assert_eq!(msg.matches("backup/b+hang: timeout_first_token").count(), 2, "{msg}");
        assert!(took >= ms(4100) && took <= ms(4200), "stream={stream}: {took:?}");
        assert_eq!(calls(&gw, "sim", "p+status=503"), 2);
        assert_eq!(calls(&gw, "backup", "b+hang"), 2);
        assert_eq!(cancels(&gw, "backup", "b+hang").await, 2);
    }
}

/// Failover across dialects: an OpenAI-wire primary fails, an Anthropic-wire backup answers the
/// OpenAI client in its own dialect, with the backup's model and usage.
#[tokio::test(start_paused = true)]
async fn failover_from_an_openai_wire_to_an_anthropic_wire() {
    let targets = [("sim", "o+status=503"), ("claude", "c+chunks=3")];
    for stream in [false, true] {
        let gw = gateway(&route(&targets, NO_RETRY));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "claude", "c+chunks=3", PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=status_5xx");
        if !stream {
            assert_eq!(got.json()["object"], "chat.completion");
        }
        assert_eq!(took, Duration::ZERO);
        assert_eq!(calls(&gw, "sim", "o+status=503"), 1);
        assert_eq!(calls(&gw, "claude", "c+chunks=3"), 1);
    }
}

/// SPEC §3, §6: a non-stream answer carries the request's settled cost, errors included, as its
/// log line says it: the 504 of the deadline and the 502 of a billable failure (each attempt
/// charged its input, estimated), and an upstream refusal passed through (nothing charged).
#[tokio::test(start_paused = true)]
async fn non_stream_errors_carry_the_settled_cost() {
    // A stream request refused before its stream began gets a JSON answer too, with its cost
    // (helper-42).
    let cases = [
        ("p+ttft=3s", "    timeouts: {total: 1s}\n", 504, true, false),
        ("p+ttft=3s", "    timeouts: {total: 1s}\n", 504, true, true),
        ("p+cut=1", NO_RETRY, 502, true, false),
        ("p+status=422", "", 422, false, false),
        ("p+status=422", "", 422, false, true),
    ];
    for (model, route_keys, status, charged, stream) in cases {
        let prices = format!("models:\n  \"{model}\": {{input: 1000, output: 1000}}\n");
        let gw = gateway(&route(&[("sim", model)], &format!("{route_keys}{prices}")));
        let got = post(&gw, "/v1/chat/completions", &request(stream)).await;
        assert_eq!(got.status, status, "{model}: {}", got.text());
        let line: serde_json::Value =
            serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
        assert_eq!(got.header("x-tidegate-cost-usd"), line["cost_usd"], "{model}: {line}");
        let estimated = if charged { "true" } else { "" };
        assert_eq!(got.header("x-tidegate-cost-estimated"), estimated, "{model}: {line}");
        assert_eq!(got.header("x-tidegate-cost-usd") != "0.000000", charged, "{model}: {line}");
    }
}
