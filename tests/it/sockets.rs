//! End-to-end over real loopback sockets: the gateway in front of `mock-provider` over HTTP,
//! disconnects, load shedding, slow clients, the admin plane and draining. Request bodies
//! (oversize, stalled, cut off) are in `uploads.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tidegate::providers::mock::MockStats;
use tidegate::server::{self, ConnOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

mod uploads;

pub(crate) async fn mock_server() -> (SocketAddr, Arc<MockStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats: Arc<MockStats> = Arc::default();
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx); // serve until the test process ends
    let opts = ConnOptions {
        header_read_timeout: Duration::from_secs(5),
        grace: Duration::from_secs(1),
        stop_streams: None,
    };
    tokio::spawn(server::serve(listener, server::mock::mock_plane(stats.clone()), opts, rx));
    (addr, stats)
}

fn http_pair(mock: SocketAddr, primary: &str, backup: &str) -> String {
    format!(
        "providers:\n  remote: {{kind: openai_compatible, base_url: \"http://{mock}/v1\"}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets:\n      - {{provider: remote, model: \"{primary}\"}}\n      - {{provider: remote, model: \"{backup}\"}}\n"
    )
}

async fn send(addr: SocketAddr, path: &str, body: &str) -> Got {
    let client = tidegate::providers::client::build(Duration::from_secs(2)).unwrap();
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
    }
}

/// The data plane on worker threads, as `tidegate serve` runs it: connections spread over the
/// workers (each with its own upstream pool), plain and streamed answers arrive whole, and
/// shutdown lets a stream in flight on a worker finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_serve_and_drain() {
    let (mock, stats) = mock_server().await;
    let gw = start_with_workers(&http_pair(mock, "w+chunks=6", "b"), Some(3)).await;
    let mut calls = Vec::new();
    for i in 0..24 {
        let addr = gw.data_addr;
        let body = if i % 2 == 0 { chat("x") } else { chat_stream("x") };
        calls.push(tokio::spawn(async move { send(addr, "/v1/chat/completions", &body).await }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let got = call.await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-tidegate-provider"), "remote");
        if i % 2 == 0 {
            assert_eq!(got.json()["model"], "w+chunks=6");
        } else {
            assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"), "{}", got.text());
            assert!(!got.stream_text().is_empty());
        }
    }
    assert_eq!(stats.get("w+chunks=6").calls, 24);
    gw.shutdown().await;

    // Draining: a stream in flight on a worker completes; new connections are refused.
    let gw = start_with_workers(&http_pair(mock, "s+chunks=8+delay=60ms", "b"), Some(2)).await;
    let addr = gw.data_addr;
    let slow =
        tokio::spawn(async move { send(addr, "/v1/chat/completions", &chat_stream("x")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let drain = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted while draining"
    );
    assert!(!drain.is_finished(), "shutdown returned before the workers drained");
    let got = slow.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"), "{}", got.text());
    assert!(!got.text().contains("\"error\""), "{}", got.text());
    drain.await.unwrap();
}

/// Whole answers come with a `content-length` (head and body in one write, as providers send
/// them), streams chunked; both count as completed.
#[tokio::test]
async fn the_mock_provider_sends_whole_answers_with_their_length() {
    let (mock, stats) = mock_server().await;
    let got = send(mock, "/v1/chat/completions", &chat("whole")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-length"), got.body.len().to_string());
    assert!(got.headers.get("transfer-encoding").is_none());
    let got = send(mock, "/v1/chat/completions", &chat("whole-err+status=503")).await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.header("content-length"), got.body.len().to_string());
    let got = send(mock, "/v1/chat/completions", &chat_stream("streamed")).await;
    assert_eq!(got.header("transfer-encoding"), "chunked");
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    for model in ["whole", "whole-err+status=503", "streamed"] {
        assert_eq!((stats.get(model).calls, stats.get(model).completed), (1, 1), "{model}");
    }
}

#[tokio::test]
async fn through_http_mock_provider_plain_stream_and_faults() {
    let (mock, stats) = mock_server().await;
    let gw = start(&http_pair(mock, "p+reset", "b+chunks=4")).await;
    let got = send(gw.data_addr, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=reset");
    assert_eq!(got.json()["model"], "b+chunks=4");
    let got = send(gw.data_addr, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), "The tide rises and");
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stats.get("p+reset").calls, 2);
    gw.shutdown().await;

    // A cut after content over a real connection: error event, no [DONE].
    let gw = start(
        &http_pair(mock, "p+chunks=5+cut=2", "b").replace("retries:", "resume: off\n    retries:"),
    )
    .await;
    let got = send(gw.data_addr, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.stream_text(), "The tide");
    assert!(got.events().last().unwrap().contains("upstream_unavailable"));
    assert!(!got.text().contains("[DONE]"));
    gw.shutdown().await;
}

/// What reaches a plain-http upstream, byte for byte: one `Host` naming its port, the
/// provider's key (never the client's), our content type and user agent, and a body that is
/// the client's with the upstream model substituted.
#[tokio::test]
async fn upstream_request_head_on_the_wire() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Head and body: read until the body's closing brace has arrived.
        while !buf.ends_with(b"}") {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "gateway closed before sending the request");
            buf.extend_from_slice(&chunk[..n]);
        }
        let answer = br#"{"id":"c","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(answer).await.unwrap();
        let _ = tx.send(String::from_utf8(buf).unwrap());
    });
    let key_file = std::env::temp_dir().join(format!("tidegate-it-key-{}", std::process::id()));
    std::fs::write(&key_file, "sk-provider-key\n").unwrap();
    let gw = start(&format!(
        "providers:\n  up: {{kind: openai_compatible, base_url: \"http://{up}/v1\", api_key_file: \"{}\"}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: up, model: up-model}}]\n",
        key_file.display()
    ))
    .await;
    let _ = std::fs::remove_file(&key_file);
    let client = tidegate::providers::client::build(Duration::from_secs(2)).unwrap();
    let req = Request::post(format!("http://{}/v1/chat/completions", gw.data_addr))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client-secret")
        .body(Full::new(Bytes::from(chat("x"))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = rx.await.unwrap();
    let (head, body) = seen.split_once("\r\n\r\n").unwrap();
    let lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    assert_eq!(lines[0], "post /v1/chat/completions http/1.1", "{head}");
    let hosts: Vec<&String> = lines.iter().filter(|l| l.starts_with("host:")).collect();
    assert_eq!(hosts, [&format!("host: {up}")], "{head}");
    assert!(lines.contains(&"authorization: bearer sk-provider-key".to_owned()), "{head}");
    assert!(!head.contains("sk-client-secret"), "{head}");
    assert!(lines.contains(&"content-type: application/json".to_owned()), "{head}");
    assert!(lines.iter().any(|l| l.starts_with("user-agent: tidegate/")), "{head}");
    let sent: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(sent["model"], "up-model");
    assert_eq!(sent["messages"][0]["content"], "Hello there");
    gw.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_over_sockets_cancels_upstream_within_a_second() {
    let (mock, stats) = mock_server().await;
    let gw = start(&http_pair(mock, "p+chunks=50+stall=2", "b")).await;
    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    let body = chat_stream("x");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("tide") {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    let t0 = std::time::Instant::now();
    while stats.get("p+chunks=50+stall=2").cancels == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "upstream still open 1 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn load_shedding_answers_503_fast() {
    let gw = start(&format!(
        "server: {{max_concurrent_requests: 1}}\n{}",
        single("m+chunks=9+stall=1", "")
    ))
    .await;
    let addr = gw.data_addr;
    let client = tidegate::providers::client::build(Duration::from_secs(2)).unwrap();
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .body(Full::new(Bytes::from(chat_stream("x"))))
        .unwrap();
    let held = client.request(req).await.unwrap();
    assert_eq!(held.status(), 200);
    let got = send(addr, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.error_code(), "overloaded");
    assert_eq!(got.header("x-should-retry"), "true");
    assert_eq!(got.header("retry-after"), "1");
    drop(held);
    gw.shutdown().await;
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, and the task driving it (it ends
/// when the connection does).
async fn http2_client<B>(
    addr: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<B>, tokio::task::JoinHandle<hyper::Result<()>>)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let sock = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(sock),
    )
    .await
    .unwrap();
    (tx, tokio::spawn(conn))
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let gw = start(&format!("server: {{header_read_timeout: 200ms}}\n{}", single("m", ""))).await;
    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection with unfinished headers was not closed");
    gw.shutdown().await;
}

/// A connection that never sends a whole request head is closed at `header_read_timeout`,
/// whatever it sent: nothing (the protocol detection read used to wait for good), a partial
/// HTTP/2 preface, or a preface and settings without a request (helper-45: 230 such sockets
/// took every file descriptor and with it the data plane). The admin plane too.
#[tokio::test(start_paused = true)]
async fn connections_without_a_request_are_closed_at_the_header_timeout() {
    let gw = start(&format!("server: {{header_read_timeout: 2s}}\n{}", single("m", ""))).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: the HTTP/2 handshake done, no request.
    let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let sends: [(&str, Vec<u8>); 4] = [
        ("nothing", Vec::new()),
        ("a partial preface", preface[..16].to_vec()),
        ("a preface and settings", [&preface[..], settings].concat()),
        ("nothing (admin)", Vec::new()),
    ];
    let mut socks = Vec::new();
    for (what, bytes) in &sends {
        let addr = if what.contains("admin") { gw.admin_addr } else { gw.data_addr };
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(bytes).await.unwrap();
        socks.push((what, sock));
    }
    let t0 = tokio::time::Instant::now();
    for (what, sock) in &mut socks {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a connection that sent {what} was not closed");
    }
    assert!(t0.elapsed() >= Duration::from_secs(2), "closed early: {:?}", t0.elapsed());
    let got = send(gw.data_addr, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    gw.shutdown().await;
}

/// An HTTP/2 connection is shut down gracefully (GOAWAY) once a whole `header_read_timeout`
/// period passes with no request begun and none open; one in use (requests coming, or one long
/// stream and nothing else) is not. Real time: under paused time hyper's HTTP/2 server answers
/// only when the clock next jumps, which would test the clock, not the gateway.
#[tokio::test]
async fn idle_http2_connections_are_shut_down() {
    let cfg = "server: {header_read_timeout: 2s}\nproviders:\n  sim: {kind: mock}\nroutes:\n  r:\n    default: true\n    targets: [{provider: sim, model: m}]\n  slow:\n    targets: [{provider: sim, model: \"s+chunks=25+delay=200ms\"}]\n";
    let gw = start(cfg).await;
    let (mut tx, conn) = http2_client(gw.data_addr).await;
    let ask = |path: &str, body: String| {
        Request::post(format!("http://{}{path}", gw.data_addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let t0 = tokio::time::Instant::now();
    // Busy: requests 100 ms apart for 4 s (two periods) keep it open.
    while t0.elapsed() < Duration::from_secs(4) {
        let resp =
            tx.send_request(ask("/v1/chat/completions", chat("x"))).await.unwrap_or_else(|e| {
                panic!("the busy connection was closed at {:?}: {e}", t0.elapsed())
            });
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One 5 s stream (over two periods) and nothing else: still in use.
    let resp = tx.send_request(ask("/r/slow/v1/chat/completions", chat_stream("x"))).await.unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("[DONE]"), "{text:?}");
    let last_sent = tokio::time::Instant::now();
    let resp = tx
        .send_request(ask("/v1/chat/completions", chat("x")))
        .await
        .expect("the connection was shut down under a stream in flight");
    resp.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/2 connection was not shut down")
        .unwrap()
        .expect("the connection ended with an error, not a GOAWAY");
    // At least a whole period after its last request began.
    let idle = last_sent.elapsed();
    assert!(idle >= Duration::from_secs(2), "closed {idle:?} after the last request");
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_plane_probes_and_metrics() {
    let gw = start(&single("m", "")).await;
    let client = tidegate::providers::client::build(Duration::from_secs(2)).unwrap();
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200), ("/nope", 404)] {
        let resp = client
            .request(
                Request::get(format!("http://{}{path}", gw.admin_addr))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{path}");
        if path == "/metrics" {
            let text =
                String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec())
                    .unwrap();
            for family in [
                "tidegate_requests_total",
                "tidegate_overhead_seconds",
                "tidegate_config_info",
                "tidegate_inflight_requests",
            ] {
                assert!(text.contains(family), "{family} missing");
            }
        }
    }
    // HEAD wherever GET is: the head, no body; other methods are still 405.
    for (addr, path, want) in [
        (gw.admin_addr, "/healthz", 200),
        (gw.admin_addr, "/metrics", 200),
        (gw.admin_addr, "/admin/config", 200),
        (gw.data_addr, "/v1/models", 200),
        (gw.data_addr, "/v1/chat/completions", 405),
    ] {
        let req = Request::head(format!("http://{addr}{path}")).body(Full::new(Bytes::new()));
        let resp = client.request(req.unwrap()).await.unwrap();
        assert_eq!(resp.status(), want, "HEAD {path}");
        assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty(), "HEAD {path}");
    }
    let req = Request::delete(format!("http://{}/healthz", gw.admin_addr));
    let resp = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let req = Request::get(format!("http://{}/admin/config/pin", gw.admin_addr));
    let resp = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_a_stream_and_fails_readiness() {
    let gw = start(&format!(
        "server: {{shutdown_grace: 10s}}\n{}",
        single("m+chunks=10+delay=100ms", "")
    ))
    .await;
    let (data, admin) = (gw.data_addr, gw.admin_addr);
    let client = tidegate::providers::client::build(Duration::from_secs(2)).unwrap();
    let req = Request::post(format!("http://{data}/v1/chat/completions"))
        .body(Full::new(Bytes::from(chat_stream("x"))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let reader =
        tokio::spawn(async move { resp.into_body().collect().await.map(|b| b.to_bytes()) });
    let gateway = gw.gateway.clone();
    let drain = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gateway.is_draining());
    let ready = client
        .request(
            Request::get(format!("http://{admin}/readyz")).body(Full::new(Bytes::new())).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        TcpStream::connect(data).await.is_err(),
        "new connections must be refused while draining"
    );
    let body = reader.await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    drain.await.unwrap();
}

/// `tidegate mock-provider` answers in the wire the path speaks, errors too: an Anthropic
/// client of the mock gets Anthropic's error shape (helper-45: it got OpenAI's).
#[tokio::test]
async fn the_mock_provider_errors_in_the_paths_wire() {
    let (mock, _) = mock_server().await;
    let bad_model =
        r#"{"model":"m+typo=1","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#;
    let got = send(mock, "/v1/messages", bad_model).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["type"], "error", "{}", got.text());
    assert_eq!(got.json()["error"]["type"], "invalid_request_error", "{}", got.text());
    let got = send(mock, "/v1/messages", "{not json").await;
    assert_eq!(got.json()["type"], "error", "{}", got.text());
    assert!(got.json()["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    let got = send(mock, "/v1/chat/completions", bad_model).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["param"], "model", "{}", got.text());
    assert!(got.json().get("type").is_none(), "{}", got.text());
}
