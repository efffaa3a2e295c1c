//! Retryable failures (SPEC §5): the same target again within `retries.per_target`, after a
//! `Retry-After` that fits or a jittered backoff, then the next target; `retries.total` caps all.

use super::*;

/// Scenario 1: a 429 whose `Retry-After` (1 s) fits `max_retry_after` (2 s) is retried on the same
/// target after exactly that delay, and the retry answers.
#[tokio::test(start_paused = true)]
async fn s01_short_retry_after_is_waited_out_on_the_same_target() {
    let primary = "p+chunks=3+status=429+retry_after=1+fail_first=1";
    for stream in [false, true] {
        let gw =
            gateway(&pair(primary, BACKUP, "    retries: {per_target: 1, max_retry_after: 2s}\n"));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "sim", primary, PROMPT);
        assert_eq!(got.header("x-tidegate-attempts"), "2");
        assert_eq!(got.header("x-tidegate-fallback"), "", "same target: not a fallback");
        assert_eq!(took, secs(1), "stream={stream}");
        assert_eq!(calls(&gw, "sim", primary), 2);
        assert_eq!(calls(&gw, "backup", BACKUP), 0);
    }
}

/// Scenario 2: a `Retry-After` longer than `max_retry_after`, or longer than what is left of the
/// total deadline, is not waited for: the backup answers at once.
#[tokio::test(start_paused = true)]
async fn s02_long_retry_after_fails_over_without_waiting() {
    for (primary, extra) in [
        ("p+status=429+retry_after=10", "    retries: {per_target: 1, max_retry_after: 2s}\n"),
        (
            "p+status=429+retry_after=3",
            "    retries: {per_target: 1, max_retry_after: 5s}\n    timeouts: {first_token: 2s, attempt: 2s, total: 2s}\n",
        ),
    ] {
        for stream in [false, true] {
            let gw = gateway(&pair(primary, BACKUP, extra));
            let (got, took) = timed(&gw, stream).await;
            assert_answered(&got, stream, "backup", BACKUP, PROMPT);
            assert_eq!(got.header("x-tidegate-fallback"), "target;reason=rate_limited");
            assert_eq!(took, Duration::ZERO, "{primary} stream={stream}");
            assert_eq!(calls(&gw, "sim", primary), 1, "{primary}");
            assert_eq!(calls(&gw, "backup", BACKUP), 1);
        }
    }
}

/// Scenario 2b: a persistent 429 without `Retry-After`.
#[tokio::test(start_paused = true)]
async fn s02b_persistent_429_without_retry_after() {
    let primary = "p+status=429";
    for stream in [false, true] {
        let gw = gateway(&pair(primary, BACKUP, "    retries: {per_target: 1, backoff: 100ms}\n"));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "backup", BACKUP, PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=rate_limited");
        // SPEC §5: 429 is retryable: the same target again after the jittered backoff
        // (50..100 ms for 100 ms), then the next target. Without a Retry-After there is no
        // cooldown to honour, so the retry is made.
        assert!(took >= ms(50) && took <= ms(100), "stream={stream}: {took:?}");
        assert_eq!(calls(&gw, "sim", primary), 2);
        assert_eq!(got.header("x-tidegate-attempts"), "3");
    }
}

/// Scenario 3: a 500 once; the retry on the same target, after a backoff within
/// [backoff/2, backoff], answers.
#[tokio::test(start_paused = true)]
async fn s03_one_500_is_retried_after_a_jittered_backoff() {
    let primary = "p+chunks=3+status=500+fail_first=1";
    for stream in [false, true] {
        let gw = gateway(&pair(primary, BACKUP, "    retries: {per_target: 1, backoff: 200ms}\n"));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "sim", primary, PROMPT);
        assert_eq!(got.header("x-tidegate-attempts"), "2");
        assert!(took >= ms(100) && took <= ms(200), "stream={stream}: {took:?}");
        assert_eq!(calls(&gw, "sim", primary), 2);
        assert_eq!(calls(&gw, "backup", BACKUP), 0);
    }
}

/// Scenario 4: a persistent 503 gets 1 + `per_target` calls (backoff doubling each time), then
/// the backup answers.
#[tokio::test(start_paused = true)]
async fn s04_persistent_503_fails_over_after_the_per_target_retries() {
    let primary = "p+status=503";
    for stream in [false, true] {
        let extra = "    retries: {per_target: 2, total: 5, backoff: 100ms}\n";
        let gw = gateway(&pair(primary, BACKUP, extra));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "backup", BACKUP, PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=status_5xx");
        assert_eq!(got.header("x-tidegate-attempts"), "4");
        // Backoffs: [50, 100] ms, then [100, 200] ms.
        assert!(took >= ms(150) && took <= ms(300), "stream={stream}: {took:?}");
        assert_eq!(calls(&gw, "sim", primary), 3);
        assert_eq!(calls(&gw, "backup", BACKUP), 1);
    }
}

/// Scenarios 5 and 10: a reset before headers, a malformed 200 and a 200 whose body (or first
/// event) is an error are retryable: one retry on the same target (default 50 ms backoff), then
/// the backup.
#[tokio::test(start_paused = true)]
async fn s05_s10_reset_garbage_and_error_200_are_retried_then_fail_over() {
    for (primary, reason) in
        [("p+reset", "reset"), ("p+garbage", "malformed"), ("p+error200", "error_body")]
    {
        for stream in [false, true] {
            let gw = gateway(&pair(primary, BACKUP, ""));
            let (got, took) = timed(&gw, stream).await;
            assert_answered(&got, stream, "backup", BACKUP, PROMPT);
            let reason = if stream && primary == "p+error200" { "error_event" } else { reason };
            assert_eq!(got.header("x-tidegate-fallback"), format!("target;reason={reason}"));
            assert_eq!(got.header("x-tidegate-attempts"), "3");
            assert!(took >= ms(25) && took <= ms(50), "{primary} stream={stream}: {took:?}");
            assert_eq!(calls(&gw, "sim", primary), 2, "{primary} stream={stream}");
            assert_eq!(calls(&gw, "backup", BACKUP), 1);
        }
    }
}

/// Scenario 18: `retries.total` caps attempts across targets: with a cap of 2, two failing targets
/// use it up and the healthy third one is never called.
#[tokio::test(start_paused = true)]
async fn s18_retries_total_caps_attempts_across_targets() {
    let targets = [("sim", "p+status=503"), ("backup", "b+status=503"), ("third", "c+chunks=3")];
    for stream in [false, true] {
        let gw = gateway(&route(&targets, "    retries: {per_target: 0, total: 2}\n"));
        let (got, took) = timed(&gw, stream).await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.error_code(), "upstream_unavailable");
        let msg = got.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("sim/p+status=503: status_5xx (status 503)"), "{msg}");
        assert!(msg.contains("backup/b+status=503: status_5xx (status 503)"), "{msg}");
        assert!(!msg.contains("third"), "{msg}");
        assert_eq!(took, Duration::ZERO);
        assert_eq!(calls(&gw, "sim", "p+status=503"), 1);
        assert_eq!(calls(&gw, "backup", "b+status=503"), 1);
        assert_eq!(calls(&gw, "third", "c+chunks=3"), 0);
    }
}

/// `tidegate_retries_total` counts retries made, not retries planned: when `retries.total` is
/// used up (or the breaker opens) before a planned retry, no retry is counted, and none is
/// waited for either.
#[tokio::test(start_paused = true)]
async fn s18b_retries_are_counted_when_made_and_not_waited_for_past_the_cap() {
    let targets = [("sim", "p+status=500"), ("backup", "b+status=500")];
    for stream in [false, true] {
        let extra = "    retries: {per_target: 3, total: 2, backoff: 100ms}\n";
        let gw = gateway(&route(&targets, extra));
        let (got, took) = timed(&gw, stream).await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(calls(&gw, "sim", "p+status=500"), 2);
        assert_eq!(calls(&gw, "backup", "b+status=500"), 0);
        // One backoff (50..100 ms) before the one retry; none after the cap was reached.
        assert!(took >= ms(50) && took <= ms(100), "stream={stream}: {took:?}");
        let series = |p: &str| {
            format!("tidegate_retries_total{{provider=\"{p}\",reason=\"status_5xx\",route=\"r\"}}")
        };
        assert_eq!(metric(&gw, &series("sim")), 1.0, "stream={stream}");
        assert_eq!(metric(&gw, &series("backup")), 0.0, "stream={stream}");
    }
    // per_target 1, total 3: sim, sim, backup; backup's planned retry is never made.
    let gw = gateway(&route(&targets, "    retries: {per_target: 1, total: 3, backoff: 10ms}\n"));
    let (got, _) = timed(&gw, false).await;
    assert_eq!(got.status, 502);
    let backup = "tidegate_retries_total{provider=\"backup\",reason=\"status_5xx\",route=\"r\"}";
    assert_eq!(metric(&gw, backup), 0.0);
}
