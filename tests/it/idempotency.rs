//! `Idempotency-Key` on the memory backend (SPEC §7): single flight, replay (streams too),
//! mismatch, reject mode, release after a retryable failure, expiry, bounds, scopes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tidegate::gateway::Gateway;

use crate::common::*;

async fn keyed(gw: &Arc<Gateway>, key: &str, body: &str, auth: Option<&str>) -> Got {
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("idempotency-key", key);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    call_with(gw, req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
}

fn calls(gw: &Gateway) -> u64 {
    gw.mock_stats("sim").total().calls
}

#[tokio::test(start_paused = true)]
async fn concurrent_duplicates_make_one_upstream_call_and_get_the_same_answer() {
    let gw = gateway(&single("m+latency=300ms+echo", ""));
    let body = r#"{"model":"x","messages":[{"role":"user","content":"pay invoice 42"}]}"#;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { keyed(&gw, "job-42", body, None).await })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(calls(&gw), 1);
    assert!(got.iter().all(|g| g.status == 200 && g.body == got[0].body));
    let replays = got.iter().filter(|g| g.header("x-tidegate-idempotent-replay") == "true").count();
    assert_eq!(replays, 9);
    // Later, within the ttl: replayed with no upstream call, same headers of substance.
    let again = keyed(&gw, "job-42", body, None).await;
    assert_eq!(again.body, got[0].body);
    assert_eq!(again.header("x-tidegate-idempotent-replay"), "true");
    assert_eq!(again.header("x-tidegate-provider"), "sim");
    assert_ne!(again.header("x-request-id"), "");
    assert_eq!(calls(&gw), 1);
    assert_eq!(metric(&gw, "tidegate_idempotency_total{result=\"executed\",route=\"r\"}"), 1.0);
    assert_eq!(metric(&gw, "tidegate_idempotency_total{result=\"replayed\",route=\"r\"}"), 10.0);
}

#[tokio::test(start_paused = true)]
async fn streams_replay_as_well_formed_sse() {
    let gw = gateway(&single("m+chunks=4", ""));
    let first = keyed(&gw, "s1", &chat_stream("x"), None).await;
    // The stream task finishes (and stores) when its record drops.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let again = keyed(&gw, "s1", &chat_stream("x"), None).await;
    assert_eq!(calls(&gw), 1);
    assert_eq!(again.header("x-tidegate-idempotent-replay"), "true");
    assert_eq!(again.header("content-type"), "text/event-stream");
    assert_eq!(again.stream_text(), first.stream_text());
    assert_eq!(again.events().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(start_paused = true)]
async fn same_key_other_request_is_422_and_bad_keys_are_400() {
    let gw = gateway(&single("m", ""));
    assert_eq!(keyed(&gw, "k", &chat("x"), None).await.status, 200);
    // Key order and whitespace do not matter: same request.
    let reordered = r#"{ "messages":[{"content":"Hello there","role":"user"}], "model":"x" }"#;
    assert_eq!(
        keyed(&gw, "k", reordered, None).await.header("x-tidegate-idempotent-replay"),
        "true"
    );
    let other = r#"{"model":"x","messages":[{"role":"user","content":"something else"}]}"#;
    let got = keyed(&gw, "k", other, None).await;
    assert_eq!(got.status, 422);
    assert_eq!(got.error_code(), "idempotency_key_reused");
    assert_eq!(got.json()["error"]["param"], "Idempotency-Key");
    assert_eq!(got.header("x-should-retry"), "false");
    for bad in ["", &"k".repeat(256), "tab\there"] {
        let got = keyed(&gw, bad, &chat("x"), None).await;
        assert_eq!(got.status, 400, "{bad:?}");
        assert_eq!(got.json()["error"]["param"], "Idempotency-Key");
    }
    assert_eq!(calls(&gw), 1);
    // Two keys: ambiguous, refused before any work (audit F8).
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("idempotency-key", "two1")
        .header("idempotency-key", "two2");
    let got = call_with(&gw, req.body(Full::new(Bytes::from(chat("x")))).unwrap()).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.error_code(), "invalid_request");
    assert_eq!(got.json()["error"]["param"], "Idempotency-Key");
    assert_eq!(calls(&gw), 1);
}

#[tokio::test(start_paused = true)]
async fn reject_mode_answers_409_while_in_flight() {
    let gw = gateway(&single("m+latency=1s", "    idempotency: {in_flight: reject}\n"));
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { keyed(&gw, "k", &chat("x"), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = keyed(&gw, "k", &chat("x"), None).await;
    assert_eq!(got.status, 409);
    assert_eq!(got.error_code(), "idempotency_in_flight");
    assert_eq!(got.header("retry-after"), "1");
    assert_eq!(got.header("x-should-retry"), "true");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(calls(&gw), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_releases_the_key() {
    let gw = gateway(&single("m+status=503+fail_first=1", "    retries: {per_target: 0}\n"));
    assert_eq!(keyed(&gw, "k", &chat("x"), None).await.status, 502);
    let got = keyed(&gw, "k", &chat("x"), None).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-idempotent-replay"), "");
    assert_eq!(calls(&gw), 2);
    assert_eq!(metric(&gw, "tidegate_idempotency_total{result=\"released\",route=\"r\"}"), 1.0);
}

/// A refusal the upstream gave (not retryable) is stored and replayed, and the replay counts as
/// what it replays (helper-49: a replayed 400 counted as ok).
#[tokio::test(start_paused = true)]
async fn a_replayed_refusal_counts_as_one() {
    let gw = gateway(&single("m+filter", ""));
    for replay in ["", "true"] {
        let got = keyed(&gw, "k", &chat("x"), None).await;
        assert_eq!(got.status, 400, "{}", got.text());
        assert_eq!(got.header("x-tidegate-idempotent-replay"), replay);
    }
    assert_eq!(calls(&gw), 1);
    let count = |outcome| requests_with_outcome(&gw, outcome);
    assert_eq!((count("client_error"), count("ok")), (2.0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn answers_expire_after_the_ttl_and_scopes_are_per_client_and_route() {
    let gw = gateway(&single("m", "    idempotency: {ttl: 1m}\n"));
    assert_eq!(keyed(&gw, "k", &chat("x"), Some("Bearer alice")).await.status, 200);
    // Another client's identical key is its own scope.
    let bob = keyed(&gw, "k", &chat("x"), Some("Bearer bob")).await;
    assert_eq!(bob.header("x-tidegate-idempotent-replay"), "");
    assert_eq!(calls(&gw), 2);
    tokio::time::advance(Duration::from_secs(59)).await;
    let got = keyed(&gw, "k", &chat("x"), Some("Bearer alice")).await;
    assert_eq!(got.header("x-tidegate-idempotent-replay"), "true");
    tokio::time::advance(Duration::from_secs(2)).await;
    let got = keyed(&gw, "k", &chat("x"), Some("Bearer alice")).await;
    assert_eq!(got.header("x-tidegate-idempotent-replay"), "");
    assert_eq!(calls(&gw), 3);
    // `idempotency: off` ignores the header.
    let off = gateway(&single("m", "    idempotency: off\n"));
    keyed(&off, "k", &chat("x"), None).await;
    keyed(&off, "k", &chat("x"), None).await;
    assert_eq!(off.mock_stats("sim").total().calls, 2);
}

#[tokio::test(start_paused = true)]
async fn the_memory_bound_holds_under_many_keys() {
    let yaml = format!(
        "state: {{idempotency: {{max_entries: 50, max_bytes: 64KiB}}}}\n{}",
        single("m", "")
    );
    let gw = gateway(&yaml);
    for i in 0..500 {
        assert_eq!(keyed(&gw, &format!("key-{i}"), &chat("x"), None).await.status, 200);
        assert!(gw.shared.state.idem.len() <= 50);
        assert!(gw.shared.state.idem.bytes() <= 64 * 1024);
    }
    // The newest answers are still replayed.
    let got = keyed(&gw, "key-499", &chat("x"), None).await;
    assert_eq!(got.header("x-tidegate-idempotent-replay"), "true");
}

#[tokio::test(start_paused = true)]
async fn a_replay_costs_nothing_and_free_tier_answers_are_not_stored() {
    let yaml = "providers:\n  sim: {kind: mock}\nmodels:\n  m: {input: 1.0, output: 1.0, context: 100000}\nroutes:\n  r:\n    default: true\n    targets: [{provider: sim, model: m}]\n  t:\n    match_models: [t]\n    retries: {per_target: 0}\n    targets:\n      - {provider: sim, model: \"down+status=503+fail_first=1\"}\n      - {template: \"Busy.\"}\n";
    let gw = gateway(yaml);
    let first = keyed(&gw, "k", &chat("x"), None).await;
    assert_ne!(first.header("x-tidegate-cost-usd"), "0.000000");
    let again = keyed(&gw, "k", &chat("x"), None).await;
    assert_eq!(again.header("x-tidegate-idempotent-replay"), "true");
    assert_eq!(again.header("x-tidegate-cost-usd"), "0.000000");
    // The template stood in for a failure: the key is released, the retry reaches the provider.
    let stand_in = keyed(&gw, "t1", &chat("t"), None).await;
    assert_eq!(stand_in.header("x-tidegate-fallback"), "template;reason=status_5xx");
    let retried = keyed(&gw, "t1", &chat("t"), None).await;
    assert_eq!(retried.header("x-tidegate-idempotent-replay"), "");
    assert_eq!(retried.header("x-tidegate-provider"), "sim");
}

/// Waiting duplicates of a call that keeps failing take the key over one after another, each
/// within the deadline, and each gets that attempt's answer: none is told 409 `in_flight` for
/// having waited through three owners (helper-28 F6: the fourth of four got a 409).
#[tokio::test(start_paused = true)]
async fn waiters_behind_failing_owners_are_never_told_in_flight() {
    let gw =
        gateway(&single("m+latency=1s+status=500", "    retries: {per_target: 0, total: 1}\n"));
    let body = r#"{"model":"x","messages":[{"role":"user","content":"retry me"}]}"#;
    // Five: a sixth would find the target's breaker open after five failures.
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { keyed(&gw, "job-f6", body, None).await })
        })
        .collect();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 502, "{}", got.text());
    }
    assert_eq!(calls(&gw), 5, "each owner in turn made its own call");
}
