//! The circuit breaker and the retry budget in the request path (paused time).

use std::time::Duration;

use crate::common::*;

#[tokio::test(start_paused = true)]
async fn a_failing_primary_trips_the_breaker_then_a_probe_closes_it() {
    // The primary fails its first 6 calls, then recovers.
    let gw = gateway(&pair("p+status=500+fail_first=6", "b", "    retries: {per_target: 0}\n"));
    let primary = || gw.mock_stats("sim").get("p+status=500+fail_first=6").calls;
    let open = "tidegate_circuit_open{model=\"p+status=500+fail_first=6\",provider=\"sim\"}";
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
