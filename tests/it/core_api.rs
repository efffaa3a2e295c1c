//! Route selection, non-stream answers, headers, models and embeddings.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

const ROUTES: &str = r#"
label: matrix
providers:
  sim: {kind: mock}
routes:
  alpha:
    match_models: [gpt-4o-mini, shared-name]
    targets: [{provider: sim, model: "alpha-upstream"}]
  beta:
    targets: [{provider: sim, model: "beta-upstream"}]
  fallback:
    default: true
    targets: [{provider: sim, model: "default-upstream"}]
"#;

async fn routed(
    gw: &std::sync::Arc<tidegate::gateway::Gateway>,
    path: &str,
    header: Option<&str>,
    model: &str,
) -> Got {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(h) = header {
        b = b.header("x-tidegate-route", h);
    }
    call_with(gw, b.body(Full::new(Bytes::from(chat(model)))).unwrap()).await
}

#[tokio::test(start_paused = true)]
async fn route_selection_matrix() {
    let gw = gateway(ROUTES);
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        // header beats everything
        ("/v1/chat/completions", Some("beta"), "gpt-4o-mini", "beta"),
        // header beats path
        ("/r/alpha/v1/chat/completions", Some("beta"), "x", "beta"),
        // path prefix beats model
        ("/r/beta/v1/chat/completions", None, "gpt-4o-mini", "beta"),
        // model equal to a route name
        ("/v1/chat/completions", None, "beta", "beta"),
        // model listed in match_models
        ("/v1/chat/completions", None, "gpt-4o-mini", "alpha"),
        ("/v1/chat/completions", None, "shared-name", "alpha"),
        // nothing matches: the default route
        ("/v1/chat/completions", None, "some-other-model", "fallback"),
    ];
    for (path, header, model, want) in cases {
        let got = routed(&gw, path, *header, model).await;
        assert_eq!(got.status, 200, "{path} {header:?} {model}: {}", got.text());
        assert_eq!(got.header("x-tidegate-route"), *want, "{path} {header:?} {model}");
        // The body names the upstream model that answered, not the client's alias.
        assert_eq!(got.json()["model"], format!("{want}-upstream").replace("fallback", "default"));
    }
    for (path, header) in
        [("/v1/chat/completions", Some("nope")), ("/r/nope/v1/chat/completions", None)]
    {
        let got = routed(&gw, path, header, "gpt-4o-mini").await;
        assert_eq!(got.status, 404, "{path} {header:?}");
        assert_eq!(got.error_code(), "model_not_found");
        assert_eq!(got.header("x-should-retry"), "false");
    }
    // Named twice: which was meant is not guessed (helper-45: the first one won).
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-tidegate-route", "alpha")
        .header("x-tidegate-route", "beta")
        .body(Full::new(Bytes::from(chat("x"))))
        .unwrap();
    let got = call_with(&gw, req).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.json()["error"]["param"], "x-tidegate-route");
    // Errors quote what was asked, clipped (helper-45: `/r/beta` said "no endpoint at ", and
    // a 5000-character route name came back whole).
    let got = post(&gw, "/r/beta", &chat("x")).await;
    assert_eq!(got.status, 404);
    assert!(
        got.json()["error"]["message"].as_str().unwrap().ends_with("at /r/beta"),
        "{}",
        got.text()
    );
    let long = "a".repeat(5000);
    let got = post(&gw, &format!("/r/{long}/v1/chat/completions"), &chat("x")).await;
    assert_eq!(got.status, 404);
    assert!(got.text().len() < 600, "{}", got.text());
}

#[tokio::test(start_paused = true)]
async fn no_default_route_is_model_not_found() {
    let gw = gateway(&ROUTES.replace("    default: true\n", ""));
    let got = post(&gw, "/v1/chat/completions", &chat("unknown-model")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.error_code(), "model_not_found");
    assert_eq!(got.json()["error"]["param"], "model");
}

#[tokio::test(start_paused = true)]
async fn non_stream_answer_and_headers() {
    let gw = gateway(ROUTES);
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-request-id", "client-id-123")
        .header("authorization", "Bearer sk-client-secret")
        .body(Full::new(Bytes::from(chat("gpt-4o-mini"))))
        .unwrap();
    let got = call_with(&gw, req).await;
    assert_eq!(got.status, 200);
    let v = got.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "alpha-upstream");
    assert_eq!(v["choices"][0]["message"]["content"], "The tide rises and the");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(got.header("x-request-id"), "client-id-123");
    assert_eq!(got.header("x-tidegate-config-version"), gw.snapshot().config.version);
    assert_eq!(got.header("x-tidegate-config-label"), "matrix");
    assert_eq!(got.header("x-tidegate-route"), "alpha");
    assert_eq!(got.header("x-tidegate-provider"), "sim");
    assert_eq!(got.header("x-tidegate-model"), "alpha-upstream");
    assert_eq!(got.header("x-tidegate-attempts"), "1");
    // The client's credential appears nowhere in the access log.
    let logs = gw.log_sink.lines().join("\n");
    assert!(logs.contains("client-id-123"), "{logs}");
    assert!(!logs.contains("sk-client-secret"));
    assert!(!logs.contains("Hello there"), "prompts are not logged by default");
}

#[tokio::test(start_paused = true)]
async fn generated_request_ids_are_unique() {
    let gw = gateway(ROUTES);
    let a = post(&gw, "/v1/chat/completions", &chat("beta")).await;
    let b = post(&gw, "/v1/chat/completions", &chat("beta")).await;
    assert!(a.header("x-request-id").starts_with("tg-"));
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[tokio::test(start_paused = true)]
async fn unknown_fields_pass_through_untouched() {
    // The echo mock answers with the last user message, proving the body reached it; the
    // mock would reject the request if the extra fields broke the JSON.
    let gw = gateway(&single("echo+echo", ""));
    let body = r#"{"model":"x","messages":[{"role":"user","content":"keep my fields"}],"x_vendor":{"a":[1,{"b":null}]},"seed":7}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["choices"][0]["message"]["content"], "keep my fields");
}

#[tokio::test(start_paused = true)]
async fn models_list_and_one() {
    let gw = gateway(ROUTES);
    let got = get(&gw, "/v1/models").await;
    assert_eq!(got.status, 200);
    let ids: Vec<String> = got.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["alpha", "beta", "fallback"]);
    let one = get(&gw, "/v1/models/beta").await;
    assert_eq!(one.json()["id"], "beta");
    assert_eq!(one.json()["object"], "model");
    let missing = get(&gw, "/v1/models/gpt-5").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "model_not_found");
    // Under a route's base URL, the route is the one model; a route that does not exist is a
    // 404 there too (a mistyped per-route base URL must not look fine to `models.list()`).
    let via_prefix = get(&gw, "/r/beta/v1/models").await;
    assert_eq!(via_prefix.status, 200);
    assert_eq!(via_prefix.json()["data"].as_array().unwrap().len(), 1);
    assert_eq!(via_prefix.json()["data"][0]["id"], "beta");
    let beta = get(&gw, "/r/beta/v1/models/beta").await;
    assert_eq!((beta.status.as_u16(), beta.header("x-tidegate-route")), (200, "beta"));
    assert_eq!(via_prefix.header("x-tidegate-route"), "beta");
    // A model a route matches, by the name a chat request gives, there and at the root.
    for path in ["/v1/models/gpt-4o-mini", "/r/alpha/v1/models/gpt-4o-mini"] {
        let got = get(&gw, path).await;
        assert_eq!((got.status.as_u16(), got.json()["id"].as_str()), (200, Some("gpt-4o-mini")));
    }
    for path in [
        "/r/nope/v1/models",
        "/r/nope/v1/models/beta",
        "/r/beta/v1/models/alpha",
        "/r/beta/v1/models/gpt-4o-mini",
    ] {
        let got = get(&gw, path).await;
        assert_eq!(got.status, 404, "{path}");
        assert_eq!(got.error_code(), "model_not_found");
    }
    // Served, not aborted: the success rate by version counts them as ok (helper-27).
    let version = got.header("x-tidegate-config-version").to_owned();
    let ok = format!(
        "tidegate_requests_total{{config_version=\"{version}\",outcome=\"ok\",route=\"\"}}"
    );
    assert_eq!(metric(&gw, &ok), 3.0);
    // Those under a route's base URL count under that route.
    assert_eq!(metric(&gw, &ok.replace("route=\"\"", "route=\"beta\"")), 2.0);
    assert_eq!(metric(&gw, &ok.replace("route=\"\"", "route=\"alpha\"")), 1.0);
    let aborted = ok.replace("\"ok\"", "\"aborted\"");
    assert_eq!(metric(&gw, &aborted), 0.0);
}

/// SPEC §3: `x-tidegate-route` once a route is selected, gateway errors included; a route named
/// by path or header is selected before the body is read. Routes without a budget have no
/// `tidegate_budget_remaining_usd` series (a 0 would read as a spent budget).
#[tokio::test(start_paused = true)]
async fn gateway_errors_name_the_selected_route() {
    let yaml = format!(
        "{ROUTES}  down:\n    targets: [{{provider: sim, model: \"d+status=503\"}}]\n    retries: {{per_target: 0}}\n"
    );
    let gw = gateway(&yaml);
    let bad = post(&gw, "/r/beta/v1/chat/completions", r#"{"model":"x","messages":"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("x-tidegate-route"), "beta");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["route"], "beta");
    let failed = post(&gw, "/r/down/v1/chat/completions", &chat("x")).await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.error_code(), "upstream_unavailable");
    assert_eq!(failed.header("x-tidegate-route"), "down");
    assert_eq!(failed.header("x-tidegate-attempts"), "1");
    // A header naming no route selects none (the request is refused before its body).
    let mut b = Request::post("/v1/chat/completions").header("content-type", "text/plain");
    b = b.header("x-tidegate-route", "nope");
    let unknown = call_with(&gw, b.body(Full::new(Bytes::from(chat("x")))).unwrap()).await;
    assert_eq!(unknown.header("x-tidegate-route"), "", "no such route: none named");
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(!text.contains("tidegate_budget_remaining_usd{"), "{text}");
    // Each request left the in-flight gauge where it found it.
    assert_eq!(metric(&gw, "tidegate_inflight_requests{route=\"beta\"}"), 0.0);
    assert_eq!(metric(&gw, "tidegate_inflight_requests{route=\"down\"}"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn embeddings_route_and_fail_over() {
    let gw = gateway(&pair("e1+status=500", "e2", ""));
    let got = post(
        &gw,
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"base64"}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["model"], "e2");
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=status_5xx");
    let bad = post(&gw, "/v1/embeddings", r#"{"model":"m"}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "input");
}

#[tokio::test(start_paused = true)]
async fn metrics_count_requests_tokens_and_attempts() {
    let gw = gateway(&single("m", ""));
    for _ in 0..3 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    }
    let v = gw.snapshot().config.version.clone();
    assert_eq!(
        metric(
            &gw,
            &format!(
                "tidegate_requests_total{{config_version=\"{v}\",outcome=\"ok\",route=\"r\"}}"
            )
        ),
        3.0
    );
    assert_eq!(
        metric(
            &gw,
            "tidegate_tokens_total{model=\"m\",provider=\"sim\",route=\"r\",type=\"output\"}"
        ),
        15.0
    );
    assert_eq!(
        metric(
            &gw,
            "tidegate_upstream_attempts_total{model=\"m\",outcome=\"ok\",provider=\"sim\",reason=\"ok\"}"
        ),
        3.0
    );
    assert_eq!(metric(&gw, "tidegate_inflight_requests{route=\"r\"}"), 0.0);
    assert_eq!(metric(&gw, &format!("tidegate_config_info{{label=\"\",version=\"{v}\"}}")), 1.0);
    assert_eq!(metric(&gw, "tidegate_overhead_seconds_count{route=\"r\"}"), 3.0);
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(text.contains("tidegate_time_to_first_token_seconds_bucket"), "{text}");
    // A client-sent model name never becomes a label value.
    assert!(!text.contains("model=\"x\""));
}

#[tokio::test(start_paused = true)]
async fn content_logging_is_opt_in() {
    let gw = gateway(&format!("logging: {{content: true}}\n{}", single("m+chunks=3", "")));
    post(&gw, "/v1/chat/completions", &chat("x")).await;
    post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    let lines = gw.log_sink.lines();
    let plain: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(plain["prompt"].as_str().unwrap().contains("Hello there"), "{plain}");
    assert!(plain["completion"].as_str().unwrap().contains("The tide rises"), "{plain}");
    let stream: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(stream["completion"], "The tide rises", "{stream}");
}

/// Embeddings on a route whose targets speak the Anthropic wire (no embeddings API): no call is
/// made; with no other target it is the request's problem (400 naming the route), and an
/// OpenAI-wire target later in the list serves it as a visible fallback.
#[tokio::test]
async fn embeddings_skip_targets_whose_api_has_none() {
    let yaml = "providers:\n  claude: {kind: mock, api: anthropic}\n  sim: {kind: mock}\nroutes:\n  ant:\n    targets: [{provider: claude, model: c}]\n  mixed:\n    targets: [{provider: claude, model: c}, {provider: sim, model: e}]\n";
    let gw = gateway(yaml);
    let got = post(&gw, "/v1/embeddings", r#"{"model":"ant","input":"x"}"#).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.error_code(), "invalid_request");
    assert_eq!(got.json()["error"]["param"], "model");
    assert!(
        got.text().contains("no target of route \\\"ant\\\" serves embeddings"),
        "{}",
        got.text()
    );
    assert!(got.headers.get("x-tidegate-attempts").is_none());
    let got = post(&gw, "/v1/embeddings", r#"{"model":"mixed","input":"x"}"#).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-provider"), "sim");
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=unsupported");
    assert_eq!(gw.mock_stats("claude").get("c").calls, 0);

    // The one target that serves it only unavailable for now (its breaker open): that is a
    // 502 like any other, not the request's fault (helper-41 B1).
    let yaml = "providers:\n  claude: {kind: mock, api: anthropic}\n  sim: {kind: mock}\nroutes:\n  mixed:\n    retries: {per_target: 0}\n    targets: [{provider: claude, model: c}, {provider: sim, model: \"e+status=500\"}]\n";
    let gw = gateway(yaml);
    for i in 0..7 {
        let got = post(&gw, "/v1/embeddings", r#"{"model":"mixed","input":"x"}"#).await;
        assert_eq!(got.status, 502, "request {i}: {}", got.text());
        assert_eq!(got.error_code(), "upstream_unavailable");
    }
    assert_eq!(gw.mock_stats("sim").get("e+status=500").calls, 5, "the breaker opened");
}

/// The upstream's own request id (OpenAI `x-request-id`, Anthropic `request-id`) is logged with
/// its attempt, only when one was sent, and never returned to the client as ours.
#[tokio::test(start_paused = true)]
async fn upstream_request_ids_are_logged_per_attempt_not_returned() {
    let yaml = "providers:\n  sim: {kind: mock}\n  claude: {kind: mock, api: anthropic}\nroutes:\n  r:\n    default: true\n    retries: {per_target: 0}\n    targets:\n      - {provider: sim, model: \"o+status=500\"}\n      - {provider: claude, model: c}\n      - {provider: sim, model: o}\n";
    let gw = gateway(yaml);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.header("x-request-id").starts_with("tg-"));
    for (k, v) in &got.headers {
        assert!(!v.as_bytes().ends_with(b"req_mock"), "{k}: {v:?}");
    }
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    let attempts = line["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{line}");
    // The mock's error answer carries no id: no field.
    assert!(attempts[0].get("upstream_request_id").is_none(), "{line}");
    // The Anthropic-wire backup's `request-id`.
    assert_eq!(attempts[1]["upstream_request_id"], "req_mock", "{line}");
    // The OpenAI wire's `x-request-id`.
    let gw = gateway(&single("o", ""));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["attempts"][0]["upstream_request_id"], "req_mock", "{line}");
    assert_ne!(got.header("x-request-id"), "req_mock");
}
