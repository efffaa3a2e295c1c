//! Both dialects in, both wires out: OpenAI and Anthropic clients served by OpenAI-style and
//! Anthropic upstreams, stream and not, tools, errors and failover.

use crate::common::*;

const CONFIG: &str = r#"
providers:
  oai: {kind: mock}
  claude: {kind: mock, api: anthropic}
routes:
  via-claude:
    targets: [{provider: claude, model: "claude-mock+chunks=4"}]
  via-oai:
    targets: [{provider: oai, model: "gpt-mock+chunks=4"}]
  tools-claude:
    targets: [{provider: claude, model: "c+tool=get_weather"}]
  tools-oai:
    targets: [{provider: oai, model: "o+tool=get_weather"}]
  claude-then-oai:
    retries: {per_target: 1, backoff: 10ms}
    targets:
      - {provider: claude, model: "c+status=529"}
      - {provider: oai, model: "o+chunks=3"}
  claude-strict:
    targets: [{provider: claude, model: "c"}]
  claude-lenient:
    drop_unsupported_params: true
    targets: [{provider: claude, model: "c"}]
  oai-lenient:
    drop_unsupported_params: true
    targets: [{provider: oai, model: "o"}]
  claude-broken:
    resume: off
    targets: [{provider: claude, model: "c+chunks=6+error_after=2"}]
"#;

fn messages(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":100,"stream":{stream},"messages":[{{"role":"user","content":"Hello there"}}]}}"#
    )
}

fn anthropic_text(events: &[(String, serde_json::Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn openai_client_anthropic_upstream() {
    let gw = gateway(CONFIG);
    let got = post(&gw, "/v1/chat/completions", &chat("via-claude")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-mock+chunks=4");
    assert_eq!(v["choices"][0]["message"]["content"], "The tide rises and");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let body = r#"{"model":"via-claude","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello there"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(got.stream_text(), "The tide rises and");
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 4, "{events:?}");
    assert_eq!(
        metric(
            &gw,
            "tidegate_tokens_total{model=\"claude-mock+chunks=4\",provider=\"claude\",route=\"via-claude\",type=\"output\"}"
        ),
        8.0
    );
}

#[tokio::test(start_paused = true)]
async fn anthropic_client_anthropic_upstream_passes_through() {
    let gw = gateway(CONFIG);
    // An unknown field passes through untouched to a provider of the same dialect.
    let with_extra =
        messages("via-claude", false).replacen('{', r#"{"x_custom":{"kept":[1,2]},"#, 1);
    let got = post(&gw, "/v1/messages", &with_extra).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "The tide rises and");
    assert_eq!(v["stop_reason"], "end_turn");
    // The Anthropic SDK reads its request id from `request-id`.
    assert!(got.header("x-request-id").starts_with("tg-"));
    assert_eq!(got.header("request-id"), got.header("x-request-id"));
    assert!(
        post(&gw, "/v1/chat/completions", &chat("x")).await.headers.get("request-id").is_none()
    );
    // An endpoint under the Messages API that tidegate does not serve answers in its shape.
    let got = post(&gw, "/v1/messages/count_tokens", &messages("via-claude", false)).await;
    assert_eq!(got.status, 404, "{}", got.text());
    assert_eq!(got.json()["type"], "error", "{}", got.text());
    assert_eq!(got.json()["error"]["type"], "not_found_error", "{}", got.text());
    assert_eq!(got.header("request-id"), got.header("x-request-id"));
    // A path that only starts like it is not under it.
    let got = post(&gw, "/v1/messagesx", &messages("via-claude", false)).await;
    assert_eq!(
        (got.status.as_u16(), got.error_code().as_str()),
        (404, "not_found"),
        "{}",
        got.text()
    );
    assert!(got.headers.get("request-id").is_none());
    let got = post(&gw, "/v1/messages", &messages("via-claude", true)).await;
    let events = anthropic_events(&got);
    assert_eq!(events.first().unwrap().0, "message_start");
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert_eq!(anthropic_text(&events), "The tide rises and");
}

#[tokio::test(start_paused = true)]
async fn anthropic_client_openai_upstream_is_translated() {
    let gw = gateway(CONFIG);
    let got = post(&gw, "/v1/messages", &messages("via-oai", false)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["text"], "The tide rises and");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 4);
    let got = post(&gw, "/v1/messages", &messages("via-oai", true)).await;
    let events = anthropic_events(&got);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert_eq!(anthropic_text(&events), "The tide rises and");
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta.1["usage"]["output_tokens"], 4);
}

#[tokio::test(start_paused = true)]
async fn tool_calls_both_ways() {
    let gw = gateway(CONFIG);
    // OpenAI client, Anthropic upstream tool_use.
    let got = post(&gw, "/v1/chat/completions", &chat("tools-claude")).await;
    let v = got.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    let got = post(&gw, "/v1/chat/completions", &chat_stream("tools-claude")).await;
    let args: String = got
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                .and_then(|a| a.as_str())
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    // Anthropic client, OpenAI upstream tool_calls.
    let got = post(&gw, "/v1/messages", &messages("tools-oai", false)).await;
    let v = got.json();
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["input"]["city"], "Paris");
    let got = post(&gw, "/v1/messages", &messages("tools-oai", true)).await;
    let events = anthropic_events(&got);
    let partial: String =
        events.iter().filter_map(|(_, d)| d["delta"]["partial_json"].as_str()).collect();
    assert_eq!(partial, r#"{"city":"Paris"}"#);
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
    );
}

#[tokio::test(start_paused = true)]
async fn anthropic_errors_and_529_failover() {
    let gw = gateway(CONFIG);
    let got = post(
        &gw,
        "/v1/messages",
        r#"{"model":"via-claude","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(got.status, 400);
    let v = got.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("[invalid_request] "), "{v}");
    assert_eq!(got.header("x-tidegate-error-code"), "invalid_request");
    let got = post(&gw, "/v1/messages", &messages("nope-model", false)).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"]["type"], "not_found_error");
    // 529 is retryable: retried once, then the OpenAI-style backup answers the Anthropic client.
    let got = post(&gw, "/v1/messages", &messages("claude-then-oai", false)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-attempts"), "3");
    assert_eq!(got.json()["content"][0]["text"], "The tide rises");
    assert_eq!(gw.mock_stats("claude").get("c+status=529").calls, 2);
}

#[tokio::test(start_paused = true)]
async fn untranslatable_fields_are_400_unless_dropped() {
    let gw = gateway(CONFIG);
    let body =
        r#"{"model":"claude-strict","logprobs":true,"messages":[{"role":"user","content":"x"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.json()["error"]["param"], "logprobs");
    assert_eq!(gw.mock_stats("claude").total().calls, 0);
    let got =
        post(&gw, "/v1/chat/completions", &body.replace("claude-strict", "claude-lenient")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // With another target that can express it, the request is served there, as a visible
    // fallback: header and metric.
    let gw = gateway(
        "providers:\n  oai: {kind: mock}\n  claude: {kind: mock, api: anthropic}\nroutes:\n  r:\n    default: true\n    targets: [{provider: claude, model: c}, {provider: oai, model: o}]\n",
    );
    let got = post(&gw, "/v1/chat/completions", &body.replace("claude-strict", "x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-provider"), "oai");
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=untranslatable");
    let series = "tidegate_fallbacks_total{reason=\"untranslatable\",route=\"r\",tier=\"target\"}";
    assert_eq!(metric(&gw, series), 1.0);
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["fallback"], "target;reason=untranslatable", "{line}");
}

#[tokio::test(start_paused = true)]
async fn anthropic_error_event_after_content() {
    let gw = gateway(CONFIG);
    let got = post(&gw, "/v1/chat/completions", &chat_stream("claude-broken")).await;
    assert_eq!(got.stream_text(), "The tide");
    let last: serde_json::Value = serde_json::from_str(got.events().last().unwrap()).unwrap();
    // The upstream was overloaded, and the client's SDK can tell (helper-50: it read as a
    // plain upstream failure).
    assert_eq!(last["error"]["type"], "overloaded_error", "{last}");
    assert!(!got.text().contains("[DONE]"));
    let got = post(&gw, "/v1/messages", &messages("claude-broken", true)).await;
    let events = anthropic_events(&got);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{}", got.text());
    assert_eq!(data["error"]["type"], "overloaded_error", "{data}");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"));
}

/// An Anthropic client's `anthropic-beta` header reaches an Anthropic-wire upstream with the
/// provider's own key and `anthropic-version`; a request translated for an OpenAI-wire
/// upstream does not carry it, nor does an OpenAI client's request. The W3C trace context goes
/// on to every upstream, so its call joins the client's trace.
#[tokio::test]
async fn anthropic_beta_reaches_anthropic_upstreams_only() {
    use http::Request;

    let (up, seen) = capture_upstream().await;
    let yaml = format!(
        "providers:\n  claude: {{kind: anthropic, base_url: \"http://{up}\"}}\n  oai: {{kind: openai_compatible, base_url: \"http://{up}/v1\"}}\nroutes:\n  a:\n    targets: [{{provider: claude, model: c}}]\n  o:\n    targets: [{{provider: oai, model: o}}]\n"
    );
    let gw = gateway(&yaml);
    let beta = "context-management-2025-06-27,prompt-caching-2024-07-31";
    // Sent as two header lines: they arrive as one, joined.
    let ask = |path: &str, body: String| {
        Request::post(path)
            .header("content-type", "application/json")
            .header("anthropic-beta", "context-management-2025-06-27")
            .header("anthropic-beta", "prompt-caching-2024-07-31")
            .header("x-api-key", "sk-client")
            .header("traceparent", TRACEPARENT)
            .header("tracestate", "vendor=opaque")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    for (path, body) in [
        ("/r/a/v1/messages", messages("x", false)),
        ("/r/o/v1/messages", messages("x", false)),
        ("/r/a/v1/chat/completions", chat("x")),
    ] {
        let got = call_with(&gw, ask(path, body)).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
    }
    let seen = seen.lock().unwrap();
    let header = |i: usize, name: &str| seen[i].1.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0, "/v1/messages");
    assert_eq!(header(0, "anthropic-beta").as_deref(), Some(beta));
    assert_eq!(header(0, "anthropic-version").as_deref(), Some("2023-06-01"));
    assert_ne!(header(0, "x-api-key").as_deref(), Some("sk-client"));
    assert_eq!(seen[1].0, "/v1/chat/completions");
    assert_eq!(header(1, "anthropic-beta"), None);
    assert_eq!(seen[2].0, "/v1/messages");
    assert_eq!(header(2, "anthropic-beta"), None, "an OpenAI client's request");
    for i in 0..3 {
        assert_eq!(header(i, "traceparent").as_deref(), Some(TRACEPARENT), "request {i}");
        assert_eq!(header(i, "tracestate").as_deref(), Some("vendor=opaque"), "request {i}");
    }
}

/// An Anthropic client's `max_tokens` (and the route's clamp of it) reaches an OpenAI-wire
/// upstream in the field its kind reads: `max_completion_tokens` for `kind: openai`,
/// `max_tokens` for the others (SPEC §4), as for OpenAI clients. helper-46: it always went as
/// `max_completion_tokens`, which servers that only know `max_tokens` ignore, so the route's
/// output ceiling did not hold there.
#[tokio::test]
async fn anthropic_clients_limits_reach_each_kind_in_its_field() {
    let (up, seen) = capture_upstream().await;
    let yaml = format!(
        "providers:\n  compat: {{kind: openai_compatible, base_url: \"http://{up}/v1\"}}\n  oai: {{kind: openai, base_url: \"http://{up}/v1\", api_key_env: PATH}}\nroutes:\n  compat:\n    targets: [{{provider: compat, model: o}}]\n  capped:\n    targets: [{{provider: compat, model: o}}]\n    limits: {{max_output_tokens: 7}}\n  oai:\n    targets: [{{provider: oai, model: o}}]\n"
    );
    let gw = gateway(&yaml);
    for route in ["compat", "capped", "oai"] {
        let got = post(&gw, &format!("/r/{route}/v1/messages"), &messages("x", false)).await;
        assert_eq!(got.status, 200, "{route}: {}", got.text());
    }
    let seen = seen.lock().unwrap();
    let limits = |i: usize| {
        (seen[i].2.get("max_tokens").cloned(), seen[i].2.get("max_completion_tokens").cloned())
    };
    assert_eq!(limits(0), (Some(serde_json::json!(100)), None), "{}", seen[0].2);
    assert_eq!(limits(1), (Some(serde_json::json!(7)), None), "{}", seen[1].2);
    assert_eq!(limits(2), (None, Some(serde_json::json!(100))), "{}", seen[2].2);
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// An OpenAI upstream's refusal shown to an Anthropic client takes the Anthropic type of its
/// status where there is one: a 413 is `request_too_large`, not the OpenAI body's
/// `invalid_request_error`.
#[tokio::test(start_paused = true)]
async fn an_openai_upstream_413_is_request_too_large_for_anthropic_clients() {
    let gw = gateway(&single("o+status=413", ""));
    let got = post(&gw, "/v1/messages", &messages("x", false)).await;
    assert_eq!(got.status, 413, "{}", got.text());
    let v = got.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "request_too_large", "{v}");
    assert_eq!(v["error"]["message"], "mock error 413", "{v}");
    // A 400 keeps the body's class.
    let gw = gateway(&single("o+status=400", ""));
    let got = post(&gw, "/v1/messages", &messages("x", false)).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.json()["error"]["type"], "invalid_request_error");
}

/// Claude's "prompt is too long" reaches an OpenAI client as OpenAI says it:
/// `code: context_length_exceeded`, `param: messages` (helper-46: both were null, so clients
/// that trim their history on that code missed Claude routes).
#[tokio::test(start_paused = true)]
async fn claudes_context_length_refusal_has_openais_code() {
    let gw = gateway(
        "providers:\n  claude: {kind: mock, api: anthropic}\nroutes:\n  r:\n    default: true\n    targets: [{provider: claude, model: \"c+context=5\"}]\n",
    );
    let body = r#"{"model":"x","messages":[{"role":"user","content":"Please summarise this long support ticket"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(got.status, 400, "{}", got.text());
    let err = &got.json()["error"];
    assert_eq!(err["code"], "context_length_exceeded", "{}", got.text());
    assert_eq!(err["param"], "messages", "{}", got.text());
    assert!(err["message"].as_str().unwrap().contains("prompt is too long"), "{}", got.text());
}

/// An OpenAI-wire upstream that reports no usage: an Anthropic client's `usage` (a required
/// field) carries tidegate's estimate, the one it bills, not a confident 0 (helper-46: 0/0
/// non-stream, output 0 on streams after words were sent).
#[tokio::test(start_paused = true)]
async fn anthropic_clients_get_the_estimate_when_the_upstream_reports_no_usage() {
    let gw = gateway(
        "providers:\n  oai: {kind: mock}\nroutes:\n  r:\n    default: true\n    targets: [{provider: oai, model: \"o+no_usage+chunks=8\"}]\n",
    );
    let got = post(&gw, "/v1/messages", &messages("x", false)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let usage = &got.json()["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(got.header("x-tidegate-cost-estimated"), "true");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(usage["input_tokens"], line["input_tokens"], "{line}");
    assert_eq!(usage["output_tokens"], line["output_tokens"], "{line}");

    let got = post(&gw, "/v1/messages", &messages("x", true)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let events = anthropic_events(&got);
    let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").expect("message_delta");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0, "{delta}");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(delta["usage"]["output_tokens"], line["output_tokens"], "{line}");
}

/// The anthropic SDK's `tool_runner()` threads by default: `thread` turns later `messages`
/// into a delta against a stored conversation, which no OpenAI-wire upstream holds. It is
/// never dropped (the upstream would answer without the conversation), and the 400 carries
/// the `error.details` the SDK reads to re-send the full history unthreaded
/// (`lib/threads/_thread_state.py::_unsupported_features`).
#[tokio::test(start_paused = true)]
async fn thread_is_refused_in_the_shape_the_sdk_recovers_from() {
    let gw = gateway(CONFIG);
    for (route, thread) in [
        ("via-oai", r#"{"type":"create"}"#),
        ("oai-lenient", r#"{"type":"create"}"#),
        ("oai-lenient", r#"{"type":"continue","previous_message_id":"msg_1"}"#),
    ] {
        let body = messages(route, false).replacen('{', &format!(r#"{{"thread":{thread},"#), 1);
        let got = post(&gw, "/v1/messages", &body).await;
        assert_eq!(got.status, 400, "{route}: {}", got.text());
        let v = got.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("[invalid_request] "), "{v}");
        assert!(message.contains("`thread`"), "{v}");
        assert_eq!(
            v["error"]["details"],
            serde_json::json!({"error_code": "thread_unsupported_request", "unsupported": ["thread"]}),
            "{route}: {v}"
        );
        assert_eq!(got.header("x-should-retry"), "false");
    }
    assert_eq!(gw.mock_stats("oai").total().calls, 0);
    // `thread: null` is "not given".
    let body = messages("via-oai", false).replacen('{', r#"{"thread":null,"#, 1);
    assert_eq!(post(&gw, "/v1/messages", &body).await.status, 200);
    // A route that fails over from an Anthropic wire to an OpenAI one does not drop it there;
    // after the Anthropic target failed, the client still hears the refusal it recovers from
    // (review-54: it got a 502, and the SDK could not fall back to the full history).
    let body =
        messages("claude-then-oai", false).replacen('{', r#"{"thread":{"type":"create"},"#, 1);
    let got = post(&gw, "/v1/messages", &body).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.json()["error"]["details"]["error_code"], "thread_unsupported_request");
    assert_eq!(gw.mock_stats("claude").get("c+status=529").calls, 2);
    assert_eq!(gw.mock_stats("oai").get("o+chunks=3").calls, 0);
}

/// The Anthropic error shape has no `param`, so the message names the field (SPEC §3: "a 400
/// naming the field"); helper-46: "required field is missing" did not say which.
#[tokio::test(start_paused = true)]
async fn anthropic_errors_name_the_offending_field() {
    let gw = gateway(CONFIG);
    for (content, field) in [
        (r#"[{"type":"image"}]"#, "`messages[0].content[0].source`"),
        (r#"[{"type":"text"}]"#, "`messages[0].content[0].text`"),
    ] {
        let body = format!(
            r#"{{"model":"via-oai","max_tokens":10,"messages":[{{"role":"user","content":{content}}}]}}"#
        );
        let got = post(&gw, "/v1/messages", &body).await;
        assert_eq!(got.status, 400, "{}", got.text());
        let message = got.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with(&format!("[invalid_request] {field}: ")), "{message}");
    }
}

/// The other direction: an Anthropic-wire upstream that reports no usage (some compatible
/// servers) gives an OpenAI client tidegate's estimate, the one it bills and logs, in `usage`
/// and in the `include_usage` chunk, not a confident 0/0 (helper-46, finding 7).
#[tokio::test(start_paused = true)]
async fn openai_clients_get_the_estimate_when_the_anthropic_upstream_reports_no_usage() {
    let gw = gateway(
        "providers:\n  claude: {kind: mock, api: anthropic}\nroutes:\n  r:\n    default: true\n    targets: [{provider: claude, model: \"c+no_usage+chunks=8\"}]\n",
    );
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let usage = &got.json()["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(got.header("x-tidegate-cost-estimated"), "true");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(usage["prompt_tokens"], line["input_tokens"], "{line}");
    assert_eq!(usage["completion_tokens"], line["output_tokens"], "{line}");

    let body = r#"{"model":"x","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello there"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunk: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(chunk["choices"], serde_json::json!([]), "{chunk}");
    let usage = &chunk["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(usage["prompt_tokens"], line["input_tokens"], "{line}");
    assert_eq!(usage["completion_tokens"], line["output_tokens"], "{line}");
}
