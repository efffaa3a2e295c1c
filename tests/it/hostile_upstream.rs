//! Upstreams that misbehave before the commit point: the client sees a clean failover or a
//! clean error, never their garbage.

use crate::common::*;

/// Each fault on the primary is invisible to the client: the backup answers.
#[tokio::test(start_paused = true)]
async fn faults_before_content_fail_over_invisibly() {
    for (fault, reason) in [
        ("garbage", "malformed"),
        ("error200", "error_event"),
        ("html", "content_type"),
        ("empty", "malformed"),
        ("cut=0", "cut"),
        ("reset", "reset"),
        ("status=503", "status_5xx"),
    ] {
        for stream in [false, true] {
            let gw = gateway(&pair(
                &format!("p+{fault}"),
                "b+chunks=3",
                "    retries: {per_target: 0}\n",
            ));
            let body = if stream { chat_stream("x") } else { chat("x") };
            let got = post(&gw, "/v1/chat/completions", &body).await;
            assert_eq!(got.status, 200, "{fault} stream={stream}: {}", got.text());
            assert_eq!(got.header("x-tidegate-provider"), "backup", "{fault}");
            assert_eq!(got.header("x-tidegate-attempts"), "2", "{fault}");
            let want_reason = if fault == "error200" && !stream { "error_body" } else { reason };
            assert_eq!(
                got.header("x-tidegate-fallback"),
                format!("target;reason={want_reason}"),
                "{fault} stream={stream}"
            );
            let text = if stream {
                got.stream_text()
            } else {
                got.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
            };
            assert_eq!(text, "The tide rises", "{fault} stream={stream}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_target_failing_is_a_502_listing_attempts() {
    let gw = gateway(&pair(
        "p+status=500",
        "b+html",
        "    retries: {per_target: 1, total: 4, backoff: 10ms}\n",
    ));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.error_code(), "upstream_unavailable");
    assert_eq!(got.header("x-should-retry"), "false");
    let msg = got.json()["error"]["message"].as_str().unwrap().to_owned();
    assert_eq!(msg.matches("sim/p+status=500: status_5xx (status 500)").count(), 2, "{msg}");
    assert_eq!(msg.matches("backup/b+html: content_type").count(), 2, "{msg}");
    assert_eq!(gw.mock_stats("sim").get("p+status=500").calls, 2);
    assert_eq!(gw.mock_stats("backup").get("b+html").calls, 2);
}

#[tokio::test(start_paused = true)]
async fn hang_before_headers_is_bounded_by_the_deadline() {
    let gw = gateway(&single("m+hang", "    timeouts: {first_token: 5s, total: 3s}\n"));
    let t0 = tokio::time::Instant::now();
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 504);
    assert_eq!(got.error_code(), "deadline_exceeded");
    assert_eq!(t0.elapsed().as_secs(), 3);
    assert_eq!(gw.mock_stats("sim").get("m+hang").cancels, 1);
    // The attempt is named for what ran out: the request's deadline, not its own limit.
    let msg = got.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("sim/m+hang: deadline"), "{msg}");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["attempts"][0]["reason"], "deadline", "{line}");
}

#[tokio::test(start_paused = true)]
async fn request_errors_pass_through_without_failover() {
    let gw = gateway(&pair("p+status=422", "b", ""));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 422);
    assert_eq!(got.json()["error"]["message"], "mock error 422");
    assert_eq!(gw.mock_stats("backup").total().calls, 0);
}
