//! The circuit breaker and the retry budget in the request path (paused time).

use std::time::Duration;

use crate::common::*;

#[tokio::test(start_paused = true)]
async fn a_failing_primary_trips_the_breaker_then_a_probe_closes_it() {
    // The primary fails its first 6 calls, then recovers.
    let gw = gateway(&pair("p+status=500+fail_first=6", "b", "    retries: {per_target: 0}\n"));
    let primary = || gw.mock_stats("sim").get("p+status=500+fail_first=6").calls;
    let open = "tidegate_circuit_open{model=\"p+status=500+fail_first=6\",provider=\"sim\"}";
    // Every target's series exists from the start, at 0.
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(text.contains(&format!("{open} 0\n")), "{text}");
    for _ in 0..5 {
        let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
        assert_eq!(got.header("x-tidegate-provider"), "backup");
    }
    assert_eq!(primary(), 5);
    assert_eq!(metric(&gw, open), 1.0);
    // Open: the primary is skipped without a call.
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=circuit_open");
    assert_eq!(got.header("x-tidegate-attempts"), "1");
    assert_eq!(primary(), 5);
    // After 30 s one probe goes through; it fails (6th call): open again, now for 60 s.
    tokio::time::advance(Duration::from_secs(30)).await;
    post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(primary(), 6);
    tokio::time::advance(Duration::from_secs(30)).await;
    post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(primary(), 6, "still open after 30 of 60 s");
    // After 60 s the next probe succeeds and closes the breaker: the primary serves again.
    tokio::time::advance(Duration::from_secs(30)).await;
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-provider"), "sim");
    assert_eq!(metric(&gw, open), 0.0);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-provider"), "sim");
}

#[tokio::test(start_paused = true)]
async fn a_429_cools_the_target_down_instead_of_opening_it() {
    let gw = gateway(&pair(
        "p+status=429+retry_after=10",
        "b",
        "    retries: {per_target: 1, max_retry_after: 2s}\n",
    ));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    // Retry-After 10 s is over max_retry_after: no same-target retry, straight to the backup.
    assert_eq!(got.header("x-tidegate-provider"), "backup");
    assert_eq!(got.header("x-tidegate-attempts"), "2");
    // Cooling down: skipped for the next 10 s without a call, and the breaker stays closed.
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=cooldown");
    assert_eq!(gw.mock_stats("sim").get("p+status=429+retry_after=10").calls, 1);
    assert_eq!(
        metric(
            &gw,
            "tidegate_circuit_open{model=\"p+status=429+retry_after=10\",provider=\"sim\"}"
        ),
        0.0
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(gw.mock_stats("sim").get("p+status=429+retry_after=10").calls, 2);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_a_retry_storm() {
    // Every request is rate-limited with a 1 ms Retry-After, which qualifies for one retry on
    // the same target (and cools the target down rather than opening its breaker). The budget
    // allows retries for 20% of requests plus 3 a second: over 200 requests in 0.4 s that is at
    // most 40 + 30, far fewer than the 200 an unbudgeted gateway would make.
    let model = "p+status=429+retry_after_ms=1";
    let gw = gateway(&single(model, "    retries: {per_target: 1, max_retry_after: 2s}\n"));
    for _ in 0..200 {
        let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
        assert_eq!(got.status, 502);
        tokio::time::advance(Duration::from_millis(2)).await;
    }
    let retries = gw.mock_stats("sim").get(model).calls - 200;
    assert!(retries <= 70, "{retries} retries for 200 requests");
    assert!(retries >= 30, "the budget's floor still allows retries: {retries}");
    assert_eq!(
        metric(&gw, "tidegate_retries_total{provider=\"sim\",reason=\"rate_limited\",route=\"r\"}"),
        retries as f64
    );
}

/// helper-49: a retry that is not made (its Retry-After over `max_retry_after`) must not spend
/// the process-wide retry budget: four such requests spent all of it (its floor, 3 a second over
/// 10 s), and another route's request could not make its two retries.
#[tokio::test(start_paused = true)]
async fn retries_not_made_leave_the_retry_budget_alone() {
    // Route a: 10 targets, each a 503 asking for 10 s: 40 retries not made in 4 requests, more
    // than the budget's floor (3 a second over 10 s).
    let retries = "    retries: {per_target: 2, total: 20, backoff: 0s, max_retry_after: 2s}\n";
    let targets: Vec<String> = (0..10)
        .map(|i| format!("{{provider: sim, model: \"p{i}+status=503+retry_after=10\"}}"))
        .collect();
    let gw = gateway(&format!(
        "providers:\n  sim: {{kind: mock}}\nroutes:\n  a:\n    default: true\n    targets: [{}]\n{retries}  b:\n    targets: [{{provider: sim, model: \"q+status=503+fail_first=2\"}}]\n{retries}",
        targets.join(", ")
    ));
    for _ in 0..4 {
        let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
        assert_eq!((got.status.as_u16(), got.header("x-tidegate-attempts")), (502, "10"));
    }
    let got = post(&gw, "/r/b/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-attempts"), "3");
}

/// A stream that breaks after the commit point is its target's failure: the attempt is logged
/// and counted with the cause (not `ok`), and five in a row open the breaker. Its logged
/// duration is the whole stream's, not the time to its headers.
#[tokio::test(start_paused = true)]
async fn streams_broken_after_the_commit_point_open_the_breaker() {
    let model = "p+chunks=8+delay=100ms+cut=3";
    let gw = gateway(&single(model, "    resume: off\n    retries: {per_target: 0}\n"));
    for _ in 0..5 {
        let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
        assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    }
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    let attempt = &line["attempts"][0];
    assert_eq!((&attempt["outcome"], &attempt["reason"]), (&"error".into(), &"cut".into()));
    assert!(attempt["duration_ms"].as_f64().unwrap() >= 200.0, "{attempt}");
    let series = |outcome: &str, reason: &str| {
        format!(
            "tidegate_upstream_attempts_total{{model=\"{model}\",outcome=\"{outcome}\",provider=\"sim\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(metric(&gw, &series("error", "cut")), 5.0);
    assert_eq!(metric(&gw, &series("ok", "ok")), 0.0);
    let open = format!("tidegate_circuit_open{{model=\"{model}\",provider=\"sim\"}}");
    assert_eq!(metric(&gw, &open), 1.0);
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(gw.mock_stats("sim").get(model).calls, 5, "skipped while open");
    // A stream to its end is a success: the upstream duration histogram sees all of it.
    let gw = gateway(&single("q+chunks=5+delay=100ms", ""));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    let sum =
        "tidegate_upstream_duration_seconds_sum{model=\"q+chunks=5+delay=100ms\",provider=\"sim\"}";
    assert!(metric(&gw, sum) >= 0.4, "{}", metric(&gw, sum));
}

/// A client that leaves before the answer began: the upstream call is in the log (aborted,
/// `client_gone`) and in the attempt metric; the wait was the upstream's, not overhead.
#[tokio::test(start_paused = true)]
async fn a_client_gone_before_the_answer_leaves_its_attempt_on_record() {
    let model = "p+chunks=3+ttft=5s";
    let gw = gateway(&single(model, ""));
    for body in [chat("x"), chat_stream("x")] {
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let gw2 = gw.clone();
        let call = tokio::spawn(async move { gw2.handle(req).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        call.abort();
        let _ = call.await;
        let line: serde_json::Value =
            serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
        assert_eq!(line["outcome"], "aborted");
        let attempt = &line["attempts"][0];
        assert_eq!(attempt["reason"], "client_gone", "{line}");
        assert!(attempt["duration_ms"].as_f64().unwrap() >= 1000.0, "{line}");
        assert!(line["overhead_ms"].as_f64().unwrap() < 100.0, "{line}");
    }
    let series = format!(
        "tidegate_upstream_attempts_total{{model=\"{model}\",outcome=\"aborted\",provider=\"sim\",reason=\"client_gone\"}}"
    );
    assert_eq!(metric(&gw, &series), 2.0);
    let aborts = "tidegate_stream_aborts_total{reason=\"disconnect\",route=\"r\",side=\"client\"}";
    assert_eq!(metric(&gw, aborts), 1.0, "the stream request only");
    assert_eq!(metric(&gw, "tidegate_inflight_requests{route=\"r\"}"), 0.0);
}

/// A stream cut short by the route's own `timeouts.total` is no failure of the target's: a
/// healthy target whose answers take longer than the route allows must not be taken out of
/// rotation (helper-33 R1).
#[tokio::test(start_paused = true)]
async fn the_routes_own_deadline_mid_stream_does_not_open_the_breaker() {
    let model = "p+chunks=30+delay=100ms";
    let gw = gateway(&single(model, "    resume: off\n    timeouts: {total: 1s}\n"));
    for i in 0..7 {
        let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        assert!(got.text().contains("deadline_exceeded"), "request {i}: {}", got.text());
    }
    assert_eq!(gw.mock_stats("sim").get(model).calls, 7, "never skipped");
    let open = format!("tidegate_circuit_open{{model=\"{model}\",provider=\"sim\"}}");
    assert_eq!(metric(&gw, &open), 0.0);
}

/// A half-open breaker's probe that is a stream closes the breaker once the answer begins, not
/// when the (long) stream ends: the target is back in rotation at once.
#[tokio::test(start_paused = true)]
async fn a_streamed_probe_closes_the_breaker_when_its_answer_begins() {
    let model = "p+chunks=50+delay=1s+status=500+fail_first=5";
    let gw = gateway(&pair(model, "b", "    retries: {per_target: 0}\n"));
    for _ in 0..5 {
        post(&gw, "/v1/chat/completions", &chat("x")).await;
    }
    let open = format!("tidegate_circuit_open{{model=\"{model}\",provider=\"sim\"}}");
    assert_eq!(metric(&gw, &open), 1.0);
    tokio::time::advance(Duration::from_secs(30)).await;
    // The probe: a 50 s stream. Read its head only; the breaker is closed already.
    let req = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat_stream("x"))))
        .unwrap();
    let resp = gw.handle(req).await;
    assert_eq!(resp.headers()["x-tidegate-provider"], "sim");
    assert_eq!(metric(&gw, &open), 0.0);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-provider"), "sim", "back in rotation during the probe");
    drop(resp);
}

/// A stream that went silent and stayed so until the route's deadline ended it had stalled:
/// that is the target's failure (helper-35: on a route whose `total` is shorter than `idle`, a
/// hanging target never opened its breaker).
#[tokio::test(start_paused = true)]
async fn a_stream_stalled_until_the_deadline_counts_against_its_target() {
    let model = "p+chunks=6+stall=2";
    let gw = gateway(&single(model, "    resume: off\n    timeouts: {total: 15s}\n"));
    for _ in 0..5 {
        let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
        assert!(got.text().contains("deadline_exceeded"), "{}", got.text());
    }
    let open = format!("tidegate_circuit_open{{model=\"{model}\",provider=\"sim\"}}");
    assert_eq!(metric(&gw, &open), 1.0);
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["attempts"][0]["reason"], "deadline_stalled", "{line}");
}

/// A resumed stream that is a half-open breaker's probe closes the breaker as its answer
/// begins, as a first attempt's does (helper-35).
#[tokio::test(start_paused = true)]
async fn a_resumed_probe_closes_the_breaker_when_its_answer_begins() {
    let slow = "b+chunks=50+delay=1s+status=500+fail_first=5";
    let yaml = format!(
        "providers:\n  sim: {{kind: mock}}\n  backup: {{kind: mock}}\nroutes:\n  rb:\n    targets: [{{provider: backup, model: \"{slow}\"}}]\n    retries: {{per_target: 0}}\n  r:\n    default: true\n    targets:\n      - {{provider: sim, model: \"p+chunks=6+cut=2\"}}\n      - {{provider: backup, model: \"{slow}\"}}\n    retries: {{per_target: 0}}\n"
    );
    let gw = gateway(&yaml);
    for _ in 0..5 {
        post(&gw, "/r/rb/v1/chat/completions", &chat("x")).await;
    }
    let open = format!("tidegate_circuit_open{{model=\"{slow}\",provider=\"backup\"}}");
    assert_eq!(metric(&gw, &open), 1.0);
    tokio::time::advance(Duration::from_secs(30)).await;
    // The primary breaks after two words; the resume probes the backup with a 50 s stream.
    let gw2 = gw.clone();
    let stream =
        tokio::spawn(async move { post(&gw2, "/v1/chat/completions", &chat_stream("x")).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!stream.is_finished());
    assert_eq!(metric(&gw, &open), 0.0, "closed while the probe still streams");
    let got = stream.await.unwrap();
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"), "{}", got.text());
}

/// `timeouts.attempt` cutting a stream that is still delivering is the route's limit, not the
/// target's failure, as with `total`; a stream silent up to that limit had stalled
/// (`timeout_attempt_stalled`), which is.
#[tokio::test(start_paused = true)]
async fn a_streams_attempt_limit_counts_against_its_target_only_if_it_stalled() {
    let model = "p+chunks=30+delay=100ms";
    let gw = gateway(&single(model, "    resume: off\n    timeouts: {attempt: 1s}\n"));
    for i in 0..7 {
        let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
        assert!(got.text().contains("timeout_attempt"), "request {i}: {}", got.text());
    }
    assert_eq!(gw.mock_stats("sim").get(model).calls, 7, "never skipped");
    let open = format!("tidegate_circuit_open{{model=\"{model}\",provider=\"sim\"}}");
    assert_eq!(metric(&gw, &open), 0.0);

    let model = "p+chunks=6+stall=2";
    let gw = gateway(&single(model, "    resume: off\n    timeouts: {attempt: 15s}\n"));
    for _ in 0..5 {
        let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
        assert!(got.text().contains("timeout_attempt_stalled"), "{}", got.text());
    }
    let open = format!("tidegate_circuit_open{{model=\"{model}\",provider=\"sim\"}}");
    assert_eq!(metric(&gw, &open), 1.0);
}
