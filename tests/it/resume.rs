//! Streams broken after the commit point are finished by continuation or splice (SPEC §5), so
//! the client sees one complete answer; when neither works, the error event and no `[DONE]`.

use crate::common::*;

fn full(n: usize) -> String {
    ["The", " tide", " rises", " and", " the", " gate", " holds", " steady"][..n].concat()
}

#[tokio::test(start_paused = true)]
async fn continuation_on_the_same_target() {
    // The first call breaks after 2 words; the continuation (prefill = "The tide") heals.
    let gw = gateway(&single("p+chunks=6+cut=2+fail_first=1", ""));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    assert!(!got.text().contains("\"error\""));
    assert_eq!(gw.mock_stats("sim").get("p+chunks=6+cut=2+fail_first=1").calls, 2);
    assert_eq!(
        metric(
            &gw,
            "tidegate_fallbacks_total{reason=\"stream_resume\",route=\"r\",tier=\"continuation\"}"
        ),
        1.0
    );
    let log = gw.log_sink.lines().join("\n");
    assert!(log.contains("resume by continuation") && log.contains("\"outcome\":\"ok\""), "{log}");
    // The metric says what the log says (helper-51: it counted the finishing attempt as ok/ok).
    let attempts = |outcome: &str, reason: &str| {
        metric(
            &gw,
            &format!(
                "tidegate_upstream_attempts_total{{model=\"p+chunks=6+cut=2+fail_first=1\",outcome=\"{outcome}\",provider=\"sim\",reason=\"{reason}\"}}"
            ),
        )
    };
    let got = [attempts("error", "cut"), attempts("ok", "stream_resume"), attempts("ok", "ok")];
    assert_eq!(got, [1.0, 1.0, 0.0]);
}

#[tokio::test(start_paused = true)]
async fn continuation_on_the_next_target_with_usage() {
    let gw = gateway(&pair("p+chunks=6+cut=2", "b+chunks=6", ""));
    let body = r#"{"model":"x","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello there"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    // The primary's own continuation breaks again (it always cuts after 2 more words), then the
    // backup continues from the 4 words already sent with the last 2.
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    // One seamless stream: every chunk, the usage chunk too, has the first one's id and time.
    for c in &chunks {
        assert_eq!((&c["id"], &c["created"]), (&chunks[0]["id"], &chunks[0]["created"]), "{c}");
    }
    // Usage counts every attempt: the backup's reported 2 completion tokens, and the broken
    // attempts' (which reported none) estimated from the text each streamed at 3 bytes a token
    // ("The tide": 3, " rises and": 4), so the answer's six words are covered. The log line
    // counts the same, and the token metrics credit each attempt's tokens to its own target.
    let usage = &chunks.last().unwrap()["usage"];
    let (input, output) =
        (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert_eq!(output, 3 + 4 + 2, "{usage}");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!((&line["input_tokens"], &line["output_tokens"]), (&input.into(), &output.into()));
    let tokens = |p: &str, m: &str, kind: &str| {
        let s = format!(
            "tidegate_tokens_total{{model=\"{m}\",provider=\"{p}\",route=\"r\",type=\"{kind}\"}}"
        );
        metric(&gw, &s) as u64
    };
    assert_eq!(tokens("sim", "p+chunks=6+cut=2", "output"), 3 + 4);
    assert_eq!(tokens("backup", "b+chunks=6", "output"), 2);
    let sim_in = tokens("sim", "p+chunks=6+cut=2", "input");
    assert_eq!(sim_in + tokens("backup", "b+chunks=6", "input"), input);
    assert_eq!(gw.mock_stats("sim").get("p+chunks=6+cut=2").calls, 2);
    assert_eq!(gw.mock_stats("backup").get("b+chunks=6").calls, 1);
}

#[tokio::test(start_paused = true)]
async fn splice_when_the_fallback_rejects_prefill() {
    let config = "providers:\n  sim: {kind: mock, supports_prefill: false}\n  backup: {kind: mock}\nroutes:\n  r:\n    default: true\n    targets:\n      - {provider: sim, model: \"p+chunks=6+stall=2\"}\n      - {provider: backup, model: \"b+chunks=6+no_prefill\"}\n    timeouts: {idle: 1s}\n    retries: {total: 4}\n";
    let gw = gateway(config);
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    // The primary cannot continue, so it is restarted and spliced first, and stalls again; the
    // backup then refuses the prefill (400), is restarted and spliced, and finishes.
    assert_eq!(gw.mock_stats("backup").get("b+chunks=6+no_prefill").calls, 2);
    // The primary's two answers both stopped at "The tide" (8 bytes, 3 tokens at 3 bytes a
    // token): the restart's words were held back, not sent, but generated all the same.
    let series = "tidegate_tokens_total{model=\"p+chunks=6+stall=2\",provider=\"sim\",route=\"r\",type=\"output\"}";
    assert_eq!(metric(&gw, series), 6.0);
    // One fallback served the rest of the answer: counted once, however many tries it took.
    assert_eq!(
        metric(
            &gw,
            "tidegate_fallbacks_total{reason=\"stream_resume\",route=\"r\",tier=\"splice\"}"
        ),
        1.0
    );
}

/// `retries.total` caps every upstream call of the route, resumed ones included: with one, a
/// stream broken after content ends with the error event, and no second call is made.
#[tokio::test(start_paused = true)]
async fn retries_total_caps_resumed_attempts_too() {
    let model = "p+chunks=6+cut=2+fail_first=1";
    let gw = gateway(&single(model, "    retries: {per_target: 0, total: 1}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), full(2), "{}", got.text());
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert_eq!(gw.mock_stats("sim").get(model).calls, 1);
    // With two, but no retries per target, the target that broke is not called again
    // (helper-29: the continuation went back to it and used up the attempts).
    let gw = gateway(&single(model, "    retries: {per_target: 0, total: 2}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert_eq!(gw.mock_stats("sim").get(model).calls, 1);
    // With a retry allowed on it, the same break is healed by one continuation.
    let gw = gateway(&single(model, "    retries: {per_target: 1, total: 2}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    assert_eq!(gw.mock_stats("sim").get(model).calls, 2);
    // A route of two: the continuation goes to the next target, and finishes the answer.
    let backup = "b+chunks=6";
    let gw = gateway(&pair(model, backup, "    retries: {per_target: 0, total: 2}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    assert_eq!(gw.mock_stats("sim").get(model).calls, 1);
    assert_eq!(gw.mock_stats("backup").get(backup).calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_diverging_restart_is_not_spliced() {
    // The backup cannot continue and its restarted answer differs: the error event, no [DONE].
    let gw =
        gateway(&pair("p+chunks=6+cut=2", "b+echo+no_prefill", "    retries: {per_target: 0}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert!(got.stream_text().starts_with("The tide"));
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert!(!got.text().contains("[DONE]"));
}

#[tokio::test(start_paused = true)]
async fn anthropic_clients_get_a_resumed_stream_too() {
    let body = r#"{"model":"x","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    // Anthropic-wire upstream (pass-through) and OpenAI-wire upstream (translated).
    for api in ["anthropic", "openai"] {
        let config = format!(
            "providers:\n  sim: {{kind: mock, api: {api}}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: sim, model: \"p+chunks=6+cut=2+fail_first=1\"}}]\n"
        );
        let gw = gateway(&config);
        let got = post(&gw, "/v1/messages", body).await;
        let events = anthropic_events(&got);
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .filter_map(|(_, d)| d["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, full(6), "{api}: {}", got.text());
        // One text block, continued: every delta in block 0, one start, one stop, then the end.
        assert!(
            events.iter().filter(|(n, _)| n == "content_block_delta").all(|(_, d)| d["index"] == 0),
            "{api}"
        );
        assert_eq!(events.iter().filter(|(n, _)| n == "content_block_start").count(), 1, "{api}");
        assert_eq!(events.iter().filter(|(n, _)| n == "content_block_stop").count(), 1, "{api}");
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"], "{api}");
        assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "end_turn", "{api}");
        // The output counts both attempts: at least the six words the client has; the input
        // both attempts' prompts, as the log line does.
        let usage = &events[events.len() - 2].1["usage"];
        let output = usage["output_tokens"].as_u64().unwrap();
        assert!(output >= 6, "{api}: {output}");
        let line: serde_json::Value =
            serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
        assert_eq!(usage["input_tokens"], line["input_tokens"], "{api}: {line}");
        assert_eq!(usage["output_tokens"], line["output_tokens"], "{api}: {line}");
        assert!(!got.text().contains("event: error"), "{api}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upstream_is_cancelled_as_its_stream_resumes() {
    // The first call stalls after 2 words; the continuation finishes, a word every 100 ms. The
    // stalled call is let go (cancelled upstream) before the continuation's words reach the
    // client, not when the whole request ends.
    let model = "p+chunks=6+delay=100ms+stall=2+fail_first=1";
    let gw = gateway(&single(model, "    timeouts: {idle: 1s}\n"));
    let req = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat_stream("x"))))
        .unwrap();
    let mut body = gw.handle(req).await.into_body();
    let mut text = String::new();
    while !text.contains(" rises") {
        let frame = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let stats = gw.mock_stats("sim").get(model);
    assert_eq!((stats.calls, stats.cancels), (2, 1), "{text}");
    let rest = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
    assert_eq!(gw.mock_stats("sim").get(model).completed, 1);
}

/// A resumed stream was served in part by a fallback: its request counts as `fallback`, and its
/// log line names it (SPEC §5: every fallback is visible in the log), and the broken attempt
/// is logged with its cause.
#[tokio::test(start_paused = true)]
async fn a_resumed_stream_is_a_fallback_in_the_log_and_the_outcome() {
    let gw = gateway(&pair("p+chunks=6+cut=2", "b+chunks=6", "    retries: {per_target: 0}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["outcome"], "fallback");
    assert_eq!(line["fallback"], "continuation;reason=stream_resume");
    let reasons: Vec<&str> = line["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["cut", "stream_resume"]);
    let version = got.header("x-tidegate-config-version").to_owned();
    let fallback = format!(
        "tidegate_requests_total{{config_version=\"{version}\",outcome=\"fallback\",route=\"r\"}}"
    );
    assert_eq!(metric(&gw, &fallback), 1.0);
}

/// `timeouts.attempt` bounds a whole attempt, a stream's too (SPEC §5): a stream still going at
/// its attempt's limit is cut there and finished by the next target; with `resume: off`, the
/// client gets the error event at that limit. Either way the request is not held past it.
#[tokio::test(start_paused = true)]
async fn a_stream_longer_than_its_attempt_is_cut_there_and_resumed() {
    let slow = "p+chunks=6+delay=1s";
    let limits = "    timeouts: {attempt: 2500ms}\n    retries: {per_target: 0}\n";
    let gw = gateway(&pair(slow, "b+chunks=6", limits));
    let t0 = tokio::time::Instant::now();
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(t0.elapsed(), std::time::Duration::from_millis(2500));
    assert_eq!(got.stream_text(), full(6), "{}", got.text());
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["attempts"][0]["reason"], "timeout_attempt", "{line}");
    assert_eq!(line["attempts"][1]["provider"], "backup", "{line}");
    assert_eq!(line["outcome"], "fallback", "{line}");

    let gw = gateway(&pair(slow, "b+chunks=6", &format!("{limits}    resume: off\n")));
    let t0 = tokio::time::Instant::now();
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(t0.elapsed(), std::time::Duration::from_millis(2500));
    let last = got.events().last().cloned().unwrap_or_default();
    assert!(last.contains("\"error\"") && last.contains("timeout_attempt"), "{}", got.text());
    assert!(!got.text().contains("[DONE]"), "{}", got.text());
    assert_eq!(gw.mock_stats("backup").get("b+chunks=6").calls, 0);

    // A resumed attempt is bounded the same way, from its own start.
    let gw = gateway(&pair("p+chunks=6+cut=1", slow, limits));
    let t0 = tokio::time::Instant::now();
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert!(t0.elapsed() < std::time::Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(!got.text().contains("[DONE]"), "{}", got.text());
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["attempts"][1]["reason"], "timeout_attempt", "{line}");
}

/// A stream cut by `timeouts.attempt` is continued, never spliced: a restart would regenerate
/// everything already sent, about as long as the attempt that ran out, and be cut the same
/// way after a second paid generation (helper-41 R1). With no target taking a prefill, the
/// client gets the error event at the limit and nothing is called again.
#[tokio::test(start_paused = true)]
async fn a_stream_cut_by_its_attempt_limit_is_not_spliced() {
    let config = "providers:\n  sim: {kind: mock, supports_prefill: false}\n  backup: {kind: mock, supports_prefill: false}\nroutes:\n  r:\n    default: true\n    targets:\n      - {provider: sim, model: \"p+chunks=6+delay=1s\"}\n      - {provider: backup, model: \"b+chunks=6+delay=1s\"}\n    timeouts: {attempt: 2500ms}\n";
    let gw = gateway(config);
    let t0 = tokio::time::Instant::now();
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(t0.elapsed(), std::time::Duration::from_millis(2500));
    let last = got.events().last().cloned().unwrap_or_default();
    assert!(last.contains("timeout_attempt"), "{}", got.text());
    assert_eq!(gw.mock_stats("sim").get("p+chunks=6+delay=1s").calls, 1);
    assert_eq!(gw.mock_stats("backup").get("b+chunks=6+delay=1s").calls, 0);
}
