//! Client auth (`auth.keys`, SPEC §3): a listed key gets in, to its routes only; anything else
//! is 401 `unauthorized` in the front door's shape. Keys scope idempotency by client name.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::common::*;

fn sha(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Routes `a` and `b`; `k-app` may use `a` only, `k-app-new` is the same client's rotated key,
/// `k-ops` may use every route.
fn yaml(extra_key: &str) -> String {
    format!(
        "providers:\n  sim: {{kind: mock}}\nroutes:\n  a: {{targets: [{{provider: sim, model: ma}}]}}\n  b: {{targets: [{{provider: sim, model: mb}}]}}\nauth:\n  keys:\n    {}: {{name: app, routes: [a]}}\n    {}: {{name: app, routes: [a]}}\n    {}: {{name: ops}}\n{extra_key}",
        sha("k-app"),
        sha("k-app-new"),
        sha("k-ops"),
    )
}

async fn send(
    gw: &std::sync::Arc<tidegate::gateway::Gateway>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    call_with(gw, req).await
}

fn assert_401(got: &Got, says: &str) {
    assert_eq!(got.status, 401, "{}", got.text());
    assert_eq!(got.header("www-authenticate"), "Bearer");
    assert_eq!(got.header("x-should-retry"), "false");
    let msg = got.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains(says), "{msg}");
}

#[tokio::test]
async fn listed_keys_get_in_to_their_routes_only() {
    let gw = gateway(&yaml(""));
    let chat_path = "/v1/chat/completions";
    // No key, an unknown key, a key sent as a Basic credential: 401, nothing called.
    for h in
        [vec![], vec![("authorization", "Bearer nope")], vec![("authorization", "Basic k-ops")]]
    {
        let got = send(&gw, "POST", chat_path, &h, &chat("a")).await;
        assert_eq!(got.error_code(), "unauthorized");
        assert_401(
            &got,
            if h.len() == 1 && h[0].1.ends_with("nope") { "not recognized" } else { "required" },
        );
    }
    // The Anthropic front door answers in its own shape.
    let msg = r#"{"model":"a","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let got = send(&gw, "POST", "/v1/messages", &[("x-api-key", "nope")], msg).await;
    assert_401(&got, "[unauthorized]");
    assert_eq!(got.json()["error"]["type"], "authentication_error");
    assert_eq!(gw.mock_stats("sim").get("ma").calls, 0);

    // Bearer (OpenAI SDKs) and x-api-key (Anthropic SDKs) both work, to the client's routes.
    let app = [("authorization", "Bearer k-app")];
    let got = send(&gw, "POST", chat_path, &app, &chat("a")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = send(&gw, "POST", "/v1/messages", &[("x-api-key", "k-app")], msg).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // Route b, by model, by path and by header: refused, without naming the route (a model
    // alias would tell the client the name of a route it may not use).
    for (path, h) in [
        (chat_path, None),
        ("/r/b/v1/chat/completions", None),
        (chat_path, Some(("x-tidegate-route", "b"))),
    ] {
        let mut headers = app.to_vec();
        headers.extend(h);
        let got = send(&gw, "POST", path, &headers, &chat("b")).await;
        assert_401(&got, "client \"app\" may not use the route");
        assert!(got.headers.get("x-tidegate-route").is_none());
        assert!(got.headers.get("x-tidegate-cost-usd").is_none());
    }
    assert_eq!(gw.mock_stats("sim").get("mb").calls, 0);
    let got = send(&gw, "POST", chat_path, &[("x-api-key", "k-ops")], &chat("b")).await;
    assert_eq!(got.status, 200, "{}", got.text());

    // The models endpoints show a client its own routes.
    let ids = |got: &Got| -> Vec<String> {
        got.json()["data"].as_array().unwrap().iter().map(|m| m["id"].to_string()).collect()
    };
    let got = send(&gw, "GET", "/v1/models", &app, "").await;
    assert_eq!(ids(&got), ["\"a\""]);
    let got = send(&gw, "GET", "/v1/models", &[("authorization", "Bearer k-ops")], "").await;
    assert_eq!(ids(&got), ["\"a\"", "\"b\""]);
    assert_401(&send(&gw, "GET", "/v1/models/b", &app, "").await, "may not use");
    assert_401(&send(&gw, "GET", "/v1/models", &[], "").await, "required");

    // The log names the client, never the key; refusals are counted as `unauthorized`.
    let log = gw.log_sink.lines().join("\n");
    assert!(log.contains("\"client\":\"app\"") && log.contains("\"client\":\"ops\""), "{log}");
    assert!(!log.contains("k-app") && !log.contains("k-ops") && !log.contains("nope"), "{log}");
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    let refused = text.lines().find(|l| {
        l.starts_with("tidegate_requests_total{")
            && l.contains("outcome=\"unauthorized\",route=\"b\"")
    });
    assert!(refused.is_some_and(|l| l.ends_with(" 3")), "{text}");
}

#[tokio::test]
async fn a_clients_keys_share_its_idempotency_scope_and_keys_reload() {
    let gw = gateway(&yaml(""));
    let keyed = |key: &'static str| [("authorization", key), ("idempotency-key", "job-1")];
    let first = send(&gw, "POST", "/v1/chat/completions", &keyed("Bearer k-app"), &chat("a")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // The same client with its rotated key: the stored answer, no second call.
    let again =
        send(&gw, "POST", "/v1/chat/completions", &keyed("Bearer k-app-new"), &chat("a")).await;
    assert_eq!(again.header("x-tidegate-idempotent-replay"), "true");
    assert_eq!(again.body, first.body);
    // Another client's same key is its own.
    let ops = send(&gw, "POST", "/v1/chat/completions", &keyed("Bearer k-ops"), &chat("a")).await;
    assert_eq!(ops.status, 200);
    assert_ne!(ops.header("x-tidegate-idempotent-replay"), "true");
    assert_eq!(gw.mock_stats("sim").get("ma").calls, 2);

    // Keys change with a reload: a new key gets in, a removed one no longer does.
    let added = format!("    {}: {{name: late}}\n", sha("k-late"));
    gw.install(gw.prepare(config(&yaml(&added))).unwrap());
    let got =
        send(&gw, "POST", "/v1/chat/completions", &[("x-api-key", "k-late")], &chat("b")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    gw.install(gw.prepare(config(&yaml(""))).unwrap());
    let got =
        send(&gw, "POST", "/v1/chat/completions", &[("x-api-key", "k-late")], &chat("b")).await;
    assert_eq!(got.status, 401);
}
