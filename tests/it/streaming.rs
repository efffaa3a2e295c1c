//! Streams: usage injected upstream and stripped for the client, the commit point, errors after
//! it, and client disconnects cancelling the upstream.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::common::*;

#[tokio::test(start_paused = true)]
async fn usage_is_injected_and_stripped_when_not_asked() {
    let gw = gateway(&single("m+chunks=4", ""));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("m")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), "text/event-stream");
    assert_eq!(got.header("cache-control"), "no-cache");
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(!events.iter().any(|e| e.contains("\"choices\":[]")), "usage chunk leaked: {events:?}");
    assert_eq!(got.stream_text(), "The tide rises and");
    // ...yet tidegate accounted the usage it asked for.
    assert_eq!(
        metric(
            &gw,
            "tidegate_tokens_total{model=\"m+chunks=4\",provider=\"sim\",route=\"r\",type=\"output\"}"
        ),
        4.0
    );
}

#[tokio::test(start_paused = true)]
async fn usage_chunk_kept_when_asked() {
    let gw = gateway(&single("m+chunks=3", ""));
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    let events = got.events();
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["model"], "m+chunks=3");
}

/// An upstream that sends no usage chunk: a client that asked for one gets tidegate's estimate
/// (the one it bills and logs) in the stream's own id and model (helper-46: no usage chunk at
/// all); one that did not ask gets none.
#[tokio::test(start_paused = true)]
async fn usage_chunk_estimated_when_the_upstream_sends_none() {
    let gw = gateway(&single("m+chunks=8+no_usage", ""));
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let got = post(&gw, "/v1/chat/completions", body).await;
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{}", got.text());
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]), "{usage}");
    assert_eq!((&usage["id"], &usage["model"]), (&first["id"], &first["model"]));
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["usage"]["completion_tokens"], line["output_tokens"], "{line}");
    assert_eq!(usage["usage"]["prompt_tokens"], line["input_tokens"], "{line}");
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert!(!got.text().contains("\"usage\":{"), "{}", got.text());
}

#[tokio::test(start_paused = true)]
async fn cut_after_content_ends_with_error_event_and_no_done() {
    let gw = gateway(&single("m+chunks=6+cut=2", "    resume: off\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("m")).await;
    assert_eq!(got.status, 200);
    let events = got.events();
    assert_eq!(got.stream_text(), "The tide");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(
        metric(&gw, "tidegate_stream_aborts_total{reason=\"cut\",route=\"r\",side=\"upstream\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn error_event_after_content_is_not_a_clean_end() {
    let gw = gateway(&single("m+chunks=6+error_after=3", "    resume: off\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("m")).await;
    let events = got.events();
    assert!(events.last().unwrap().contains("\"error\""), "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test(start_paused = true)]
async fn stall_after_content_hits_the_idle_timeout() {
    let gw = gateway(&single("m+chunks=6+stall=2", "    resume: off\n    timeouts: {idle: 2s}\n"));
    let start = tokio::time::Instant::now();
    let got = post(&gw, "/v1/chat/completions", &chat_stream("m")).await;
    assert_eq!(got.stream_text(), "The tide");
    assert!(got.events().last().unwrap().contains("timeout_idle"), "{:?}", got.events());
    assert_eq!(start.elapsed().as_secs(), 2);
    // The stalled upstream was dropped, which the mock counts as a cancel.
    tokio::task::yield_now().await;
    assert_eq!(gw.mock_stats("sim").get("m+chunks=6+stall=2").cancels, 1);
}

#[tokio::test(start_paused = true)]
async fn total_deadline_ends_a_long_stream() {
    let gw = gateway(&single("m+chunks=100+delay=1s", "    timeouts: {total: 10s, idle: 5s}\n"));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("m")).await;
    let last = got.events().pop().unwrap();
    assert!(last.contains("deadline_exceeded"), "{last}");
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_cancels_the_upstream() {
    let gw = gateway(&single("m+chunks=50+stall=3", ""));
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(chat_stream("m"))))
        .unwrap();
    let resp = gw.handle(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read a few events, then go away while the upstream is silent.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(body);
    let stats = gw.mock_stats("sim");
    let t0 = tokio::time::Instant::now();
    while stats.total().cancels == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "upstream not cancelled within 1 s"
        );
    }
    assert_eq!(
        metric(
            &gw,
            "tidegate_stream_aborts_total{reason=\"disconnect\",route=\"r\",side=\"client\"}"
        ),
        1.0
    );
    assert_eq!(metric(&gw, "tidegate_inflight_requests{route=\"r\"}"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn stream_without_done_after_finish_is_completed() {
    let gw = gateway(&single("m+chunks=3+no_done", ""));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("m")).await;
    assert_eq!(got.stream_text(), "The tide rises");
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
}

/// A client that stops reading (its connection open) while the stream runs past the route's
/// deadline cannot be sent the error event: its queue is full. Its response is aborted instead
/// (no terminating chunk, no `[DONE]`), so it cannot take what it got for a whole answer, and
/// the record says why. helper-45: it ended with a clean `0\r\n\r\n`, logged as the client
/// having left.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_past_the_deadline_gets_an_aborted_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let yaml = single("m+chunks=100000", "    resume: off\n    timeouts: {total: 3s}\n");
    let r = start(&yaml).await;
    let gw = r.gateway.clone();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(r.data_addr).await.unwrap();
    let body = chat_stream("x");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Not reading, well past the deadline.
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(300)]);
    assert!(!text.ends_with("\r\n0\r\n\r\n"), "the aborted stream ended cleanly");
    assert!(!text.contains("[DONE]"));
    let lines = gw.log_sink.lines();
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["outcome"], "stream_error", "{line}");
    assert!(line["error"].as_str().unwrap().contains("stopped reading"), "{line}");
    assert_eq!(line["attempts"][0]["reason"], "client_stalled", "{line}");
    r.shutdown().await;
}
