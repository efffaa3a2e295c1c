//! Malformed requests get the SPEC's error shape, never a panic or a hang.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

async fn expect_400(body: &[u8], param: Option<&str>) {
    let gw = gateway(&single("m", ""));
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let got = call_with(&gw, req).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.error_code(), "invalid_request");
    assert_eq!(got.header("x-should-retry"), "false");
    assert_eq!(got.json()["error"]["param"].as_str(), param, "{}", got.text());
    assert_eq!(gw.mock_stats("sim").total().calls, 0, "bad input must not reach the upstream");
}

#[tokio::test(start_paused = true)]
async fn malformed_json() {
    expect_400(br#"{"model": "m", "messages": ["#, None).await;
    expect_400(b"not json at all", None).await;
    expect_400(b"[1,2,3]", None).await;
}

#[tokio::test(start_paused = true)]
async fn empty_body() {
    expect_400(b"", None).await;
}

#[tokio::test(start_paused = true)]
async fn wrong_field_types() {
    expect_400(
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
        Some("stream"),
    )
    .await;
    expect_400(br#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#, Some("model")).await;
    expect_400(br#"{"model":"m","messages":{"role":"user"}}"#, Some("messages")).await;
    expect_400(br#"{"model":"m","messages":[]}"#, Some("messages")).await;
    expect_400(br#"{"model":"m"}"#, Some("messages")).await;
    expect_400(
        br#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#,
        Some("max_tokens"),
    )
    .await;
    expect_400(
        br#"{"model":"m","messages":[{"role":"user"}],"stream_options":"x","stream":true}"#,
        Some("stream_options"),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn both_max_token_fields() {
    expect_400(
        br#"{"model":"m","messages":[{"role":"user"}],"max_tokens":5,"max_completion_tokens":5}"#,
        Some("max_tokens"),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn invalid_utf8_and_deep_nesting() {
    expect_400(b"{\"model\":\"m\xff\xfe\",\"messages\":[{\"role\":\"user\"}]}", None).await;
    let mut deep = br#"{"model":"m","messages":[{"role":"user"}],"x":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 200_000));
    expect_400(&deep, None).await;
    // A lone surrogate escape is not text, even in a field forwarded untouched.
    expect_400(br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#, None).await;
    expect_400(
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"user":"\udc00"}"#,
        None,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn wrong_content_type() {
    let gw = gateway(&single("m", ""));
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(chat("m"))))
        .unwrap();
    let got = call_with(&gw, req).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.error_code(), "invalid_request");
    assert_eq!(got.json()["error"]["param"], "content-type");
}

#[tokio::test(start_paused = true)]
async fn body_over_the_limit() {
    let gw = gateway(&format!("server: {{max_body_bytes: 1KiB}}\n{}", single("m", "")));
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let got = post(&gw, "/v1/chat/completions", &big).await;
    assert_eq!(got.status, 413);
    assert_eq!(got.error_code(), "request_too_large");
    assert_eq!(got.header("connection"), "close");
}

#[tokio::test(start_paused = true)]
async fn unknown_path_and_wrong_method() {
    let gw = gateway(&single("m", ""));
    let got = post(&gw, "/v1/completions", &chat("m")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.error_code(), "not_found");
    let got = get(&gw, "/v1/chat/completions").await;
    assert_eq!(got.status, 405);
    assert_eq!(got.error_code(), "method_not_allowed");
    // RFC 9110 §15.5.6: a 405 says which methods the endpoint takes.
    assert_eq!(got.header("allow"), "POST");
    let req = Request::delete("/v1/models").body(Full::new(Bytes::new())).unwrap();
    let got = call_with(&gw, req).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.header("allow"), "GET, HEAD");
}

#[tokio::test(start_paused = true)]
async fn arbitrary_bodies_never_panic() {
    let gw = gateway(&single("m", ""));
    let mut rng = fastrand::Rng::with_seed(11);
    let seeds: [&[u8]; 3] = [
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#,
        b"{}",
        b"[]",
    ];
    for i in 0..300 {
        let mut body = seeds[i % 3].to_vec();
        for _ in 0..rng.usize(0..6) {
            if body.is_empty() {
                break;
            }
            let at = rng.usize(0..body.len());
            body[at] = rng.u8(..);
        }
        let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
        let got = call_with(&gw, req).await;
        assert!(
            got.status == 200 || got.status == 400 || got.status == 404,
            "{} {}",
            got.status,
            got.text()
        );
    }
}

/// A number JSON allows but no float holds (`1e999`) cannot be translated for another dialect:
/// a 400 that says so, not "not a JSON object" (helper-37 N1). Same-dialect routes forward the
/// body untouched, as they do every unknown value, and the upstream decides.
#[tokio::test]
async fn a_number_out_of_range_is_named_when_the_request_must_be_translated() {
    let yaml = "providers:\n  claude: {kind: mock, api: anthropic}\nroutes:\n  ant:\n    default: true\n    targets: [{provider: claude, model: c}]\n";
    let gw = gateway(yaml);
    let body = r#"{"model":"ant","messages":[{"role":"user","content":"hi"}],"temperature":1e999}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.error_code(), "invalid_request");
    let msg = got.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("number out of range"), "{msg}");
    assert_eq!(gw.mock_stats("claude").get("c").calls, 0);
}
