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

/// An upstream that echoes the provider key back, before its answer began and after (in a
/// stream's error event), plain or JSON-escaped (`/` as `\/`): the key reaches neither the
/// client nor the log (SPEC §10; helper-47 found the mid-stream echo passed through whole).
#[tokio::test]
async fn provider_keys_echoed_by_the_upstream_are_redacted_everywhere() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    const KEY: &str = "sk-live/PROVIDER+SECRET/99==";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let stream =
                    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["stream"] == true;
                let (status, kind, body) = match stream {
                    // Before the answer: a 400 (passed through to the client), slashes escaped.
                    false => (
                        400,
                        "application/json",
                        format!(
                            r#"{{"error":{{"message":"bad key {}"}}}}"#,
                            auth.replace('/', "\\/")
                        ),
                    ),
                    // After it began: an error event.
                    true => (
                        200,
                        "text/event-stream",
                        format!(
                            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hello\"}},\"finish_reason\":null}}]}}\n\ndata: {{\"error\":{{\"message\":\"stream broke for key {auth}\"}}}}\n\n"
                        ),
                    ),
                };
                let resp = http::Response::builder()
                    .status(status)
                    .header("content-type", kind)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc),
            );
        }
    });
    let dir = crate::config_lifecycle::TempDir::new("redact");
    let key_file = dir.join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let yaml = format!(
        "providers:\n  up: {{kind: openai_compatible, base_url: \"http://{up}/v1\", api_key_file: {key_file:?}}}\nroutes:\n  r:\n    default: true\n    resume: off\n    retries: {{per_target: 0}}\n    targets: [{{provider: up, model: m}}]\n"
    );
    let gw = gateway(&yaml);
    let refused = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let streamed = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let messages = r#"{"model":"stream","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let anthropic = post(&gw, "/v1/messages", messages).await;
    for (what, text) in [
        ("the refusal", refused.text()),
        ("the OpenAI stream", streamed.text()),
        ("the Anthropic stream", anthropic.text()),
    ] {
        assert!(text.contains("[redacted]"), "{what}: {text}");
        assert!(!text.contains("SECRET"), "{what} carries the key: {text}");
    }
    assert!(streamed.text().contains("Hello"), "{}", streamed.text());
    let lines = gw.log_sink.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert!(!line.contains("SECRET"), "a log line carries the key: {line}");
    }
    assert!(lines[1].contains("[redacted]"), "{}", lines[1]);
}

/// helper-50: a stream that is nothing but its end (`[DONE]`, or an Anthropic `message_start`
/// and `message_stop`) is an empty answer, retried on the next target like an empty body. It
/// was committed: an OpenAI client got a 200 with no chunks, an Anthropic-wire one an error
/// event "after the answer began".
#[tokio::test(start_paused = true)]
async fn a_stream_of_only_its_end_fails_over() {
    for api in ["openai", "anthropic"] {
        let gw = gateway(&format!(
            "providers:\n  sim: {{kind: mock, api: {api}}}\n  backup: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets: [{{provider: sim, model: \"p+done_only\"}}, {{provider: backup, model: \"b+chunks=3\"}}]\n"
        ));
        let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
        assert_eq!(got.status, 200, "{api}: {}", got.text());
        assert_eq!(got.header("x-tidegate-provider"), "backup", "{api}: {}", got.text());
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=malformed", "{api}");
        assert_eq!(got.stream_text(), "The tide rises", "{api}");
    }
}

/// An upstream that answers each request with a chunked SSE body of `events`, then breaks the
/// connection mid-chunk (the body errors rather than ends).
async fn events_then_break(events: Vec<String>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                // The request: its head, then as many body bytes as it says.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = head_end {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                for e in &events {
                    let e = format!("{e}\n\n");
                    out.push_str(&format!("{:x}\r\n{e}\r\n", e.len()));
                }
                out.push_str("40\r\ndata: {");
                let _ = sock.write_all(out.as_bytes()).await;
            });
        }
    });
    addr
}

/// review-54: with `n: 2`, the first choice's finish is not the answer's end: a break while the
/// second choice is still streaming ends with the error event, not a clean `[DONE]` (a silent
/// truncation logged ok), and is never resumed.
#[tokio::test]
async fn a_break_before_every_choice_finished_is_not_a_whole_answer() {
    let chunk = |choices: &str| {
        format!(
            r#"data: {{"id":"c1","object":"chat.completion.chunk","created":1,"model":"up","choices":[{choices}]}}"#
        )
    };
    let up = events_then_break(vec![
        chunk(
            r#"{"index":0,"delta":{"role":"assistant","content":"A"},"finish_reason":null},{"index":1,"delta":{"role":"assistant","content":"B"},"finish_reason":null}"#,
        ),
        chunk(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#),
        chunk(r#"{"index":1,"delta":{"content":" and more"},"finish_reason":null}"#),
    ])
    .await;
    let gw = gateway(&format!(
        "providers:\n  up: {{kind: openai_compatible, base_url: \"http://{up}/v1\"}}\n  backup: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets: [{{provider: up, model: up}}, {{provider: backup, model: \"b+chunks=3\"}}]\n"
    ));
    let body = r#"{"model":"x","stream":true,"n":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    assert!(!got.text().contains("[DONE]"), "{}", got.text());
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert_eq!(gw.mock_stats("backup").total().calls, 0, "resumed");
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert_eq!(line["outcome"], "stream_error", "{line}");
}
