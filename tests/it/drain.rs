//! SIGTERM on a real `tidegate serve` process: readiness fails at once, new connections are
//! refused, the stream in flight completes, and the process exits 0 (the Kubernetes contract).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{free_port, http_get};

/// A `tidegate serve` child on free ports with one default route on the mock model `model`,
/// `server:` extended by `server_extra`, polled until ready. Returns the child, the data and
/// admin ports and its directory.
#[expect(clippy::disallowed_methods, reason = "a synchronous test polling another process")]
fn serve_ready(
    name: &str,
    server_extra: &str,
    model: &str,
) -> (std::process::Child, u16, u16, std::path::PathBuf) {
    let (data, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("tidegate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tidegate.yaml");
    std::fs::write(
        &cfg,
        format!("server: {{listen: 127.0.0.1:{data}, admin_listen: 127.0.0.1:{admin}, {server_extra}}}\nproviders:\n  sim: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: sim, model: \"{model}\"}}]\n"),
    )
    .unwrap();
    let child = crate::common::spawn_serve(&cfg, &dir);
    let t0 = Instant::now();
    while http_get(admin, "/readyz").is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
        assert!(t0.elapsed() < Duration::from_secs(20), "tidegate never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, data, admin, dir)
}

/// Starts a streamed chat on the data port and reads the response head.
fn open_stream(data: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", data)).unwrap();
    let body = r#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    write!(stream, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    stream
}

fn kill(child: &std::process::Child, signal: &str) {
    let killed = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
}

/// Polls `/readyz` until it fails (the drain has begun).
#[expect(clippy::disallowed_methods, reason = "a synchronous test polling another process")]
fn wait_unready(admin: u16) {
    let t1 = Instant::now();
    loop {
        match http_get(admin, "/readyz") {
            Some(r) if r.starts_with("HTTP/1.1 503") => break,
            _ => {
                assert!(
                    t1.elapsed() < Duration::from_secs(5),
                    "/readyz did not fail during the drain"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn sigterm_drains_a_stream_then_exits_zero() {
    let (mut child, data, admin, dir) =
        serve_ready("drain", "shutdown_grace: 20s", "m+chunks=15+delay=100ms");
    // A 1.5 s stream in flight...
    let mut stream = open_stream(data);

    // ...then SIGTERM.
    kill(&child, "-TERM");
    wait_unready(admin);
    assert!(
        TcpStream::connect(("127.0.0.1", data)).is_err(),
        "a new connection was accepted while draining"
    );

    // The stream still completes, with its [DONE].
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(!rest.contains("\"error\""), "{rest}");

    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `server.shutdown_delay`: after SIGTERM `/readyz` fails at once, but new connections are
/// still accepted and served for the delay (endpoint removal is not instant); then the
/// listener closes, what is in flight drains, and the process exits 0.
#[test]
#[expect(clippy::disallowed_methods, reason = "a synchronous test polling another process")]
fn shutdown_delay_keeps_accepting_after_sigterm() {
    let (mut child, data, admin, dir) =
        serve_ready("delay", "shutdown_delay: 4s, shutdown_grace: 20s", "m+chunks=5+delay=100ms");
    let t0 = Instant::now();
    kill(&child, "-TERM");
    wait_unready(admin);
    // Within the delay: a new connection is accepted and its stream served to the end.
    let mut stream = open_stream(data);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Read up to the stream's end; the keep-alive connection itself stays open.
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&rest).contains("data: [DONE]") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(t0.elapsed() < Duration::from_secs(4), "the test was too slow to see the delay");
    // After it, the listener is closed (polled, bounded).
    while TcpStream::connect(("127.0.0.1", data)).is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(15), "still accepting long after the delay");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t0.elapsed() >= Duration::from_secs(4), "closed before the delay passed");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A second SIGTERM or SIGINT during the drain exits at once (exit 0), without waiting for the
/// streams still open: a local Ctrl-C Ctrl-C does not wait out `shutdown_grace`.
#[test]
fn a_second_signal_during_the_drain_exits_at_once() {
    for (first, second) in [("-TERM", "-INT"), ("-INT", "-TERM"), ("-TERM", "-TERM")] {
        let (mut child, data, admin, dir) =
            serve_ready("second-signal", "shutdown_grace: 60s", "m+chunks=300+delay=100ms");
        // A 30 s stream that would hold the drain.
        let _stream = open_stream(data);
        kill(&child, first);
        wait_unready(admin);
        let t = Instant::now();
        kill(&child, second);
        let status = child.wait().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{first} {second}: took {:?}", t.elapsed());
        assert_eq!(status.code(), Some(0), "{first} {second}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A SIGTERM that arrives while the process is still starting is caught and acted on once it
/// has started (a drain of nothing, exit 0), not the default action that kills it. The
/// provider's key file is a FIFO, so the test knows when the process is mid-start: opening the
/// FIFO for writing returns once the process opened it to read the key.
#[test]
fn sigterm_during_start_is_a_clean_shutdown() {
    let dir = std::env::temp_dir().join(format!("tidegate-early-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (data, admin) = (free_port(), free_port());
    let fifo = dir.join("key");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let cfg = dir.join("tidegate.yaml");
    std::fs::write(
        &cfg,
        format!("server: {{listen: 127.0.0.1:{data}, admin_listen: 127.0.0.1:{admin}}}\nproviders:\n  up: {{kind: openai_compatible, base_url: \"http://127.0.0.1:9/v1\", api_key_file: {}}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: up, model: m}}]\n", fifo.display()),
    )
    .unwrap();
    let mut child = crate::common::spawn_serve(&cfg, &dir);
    let (tx, rx) = std::sync::mpsc::channel();
    let opener = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&opener));
    });
    let Ok(opened) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = child.kill();
        panic!("tidegate never read its key file");
    };
    let mut writer = opened.unwrap();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // The key, and a plain file in the FIFO's place for any later read of it.
    let _ = writer.write_all(b"sk-test\n");
    let plain = dir.join("key.plain");
    std::fs::write(&plain, "sk-test\n").unwrap();
    std::fs::rename(&plain, &fifo).unwrap();
    drop(writer);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Streams a chat through `r`'s data port, triggers shutdown once the first events arrived,
/// and returns what the client read to the connection's end.
async fn cut_by_shutdown(r: tidegate::app::Running, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(r.data_addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the stream began");
        got.extend_from_slice(&buf[..n]);
    }
    let shutdown = tokio::spawn(r.shutdown());
    s.read_to_end(&mut got).await.unwrap();
    shutdown.await.unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// A stream still open when `shutdown_grace` ends is cut by the gateway with the dialect's
/// error event (`overloaded`: retry elsewhere), its chunked body properly terminated; its
/// request is logged as `stream_error` with the attempt `aborted`/`shutdown`, and counted in
/// `tidegate_stream_aborts_total{side="gateway",reason="shutdown"}`, before shutdown returns.
async fn stream_cut_at_the_grace_end(workers: Option<usize>) {
    let yaml = format!(
        "server: {{shutdown_grace: 1s}}\n{}",
        crate::common::single("m+chunks=200+delay=100ms", "")
    );
    for (path, body) in [
        ("/v1/chat/completions", crate::common::chat_stream("x")),
        (
            "/v1/messages",
            r#"{"model":"x","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_owned(),
        ),
    ] {
        let r = crate::common::start_with_workers(&yaml, workers).await;
        let gw = r.gateway.clone();
        let text = cut_by_shutdown(r, path, &body).await;
        assert!(text.contains(r#""overloaded"#), "{path}: {text}");
        assert!(text.contains("shutting down"), "{path}: {text}");
        assert!(!text.contains("[DONE]") && !text.contains("message_stop"), "{path}: {text}");
        assert!(text.ends_with("\r\n0\r\n\r\n"), "{path}: the chunked body is not terminated: {text}");
        let lines = gw.log_sink.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["outcome"], "stream_error", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["attempts"][0]["outcome"], "aborted", "{line}");
        assert_eq!(line["attempts"][0]["reason"], "shutdown", "{line}");
        let series = "tidegate_stream_aborts_total{reason=\"shutdown\",route=\"r\",side=\"gateway\"}";
        assert_eq!(crate::common::metric(&gw, series), 1.0, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_open_at_the_grace_end_gets_an_error_event_and_its_record() {
    stream_cut_at_the_grace_end(None).await;
}

/// The same with the data plane on worker threads (as `serve` runs it): the record is written
/// before the workers' runtimes go, so before the process would exit.
#[tokio::test]
async fn a_stream_cut_on_a_worker_thread_is_recorded_before_shutdown_returns() {
    stream_cut_at_the_grace_end(Some(2)).await;
}

/// At shutdown a connection that has not finished its first request's headers (or sent
/// nothing) is closed at once: it used to hold the drain up to `header_read_timeout` (10 s),
/// then be closed without an answer anyway.
#[tokio::test(start_paused = true)]
async fn connections_without_a_request_do_not_hold_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let yaml = format!(
        "server: {{shutdown_grace: 30s}}\n{}",
        crate::common::single("m+chunks=3+delay=100ms", "")
    );
    let r = crate::common::start(&yaml).await;
    let mut partial = tokio::net::TcpStream::connect(r.data_addr).await.unwrap();
    partial.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(r.data_addr).await.unwrap();
    // Let the server take both connections in before shutting down.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let t0 = tokio::time::Instant::now();
    r.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(2), "the drain waited {:?}", t0.elapsed());
    let mut buf = Vec::new();
    assert_eq!(partial.read_to_end(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(silent.read_to_end(&mut buf).await.unwrap_or(0), 0);
}

/// A stream cut at the grace end while a resume is serving it gets the same: the error event,
/// and its resumed attempt logged `aborted`/`shutdown` (helper-42: it used to be dropped
/// mid-chunk and logged as the client's leaving).
#[tokio::test(start_paused = true)]
async fn a_resumed_stream_open_at_the_grace_end_is_cut_the_same_way() {
    let yaml = format!(
        "server: {{shutdown_grace: 1s}}\n{}",
        crate::common::pair(
            "p+chunks=6+cut=1",
            "b+chunks=200+delay=100ms",
            "    retries: {per_target: 0}\n"
        )
    );
    let r = crate::common::start(&yaml).await;
    let gw = r.gateway.clone();
    let text = cut_by_shutdown(r, "/v1/chat/completions", &crate::common::chat_stream("x")).await;
    assert!(text.contains(r#""overloaded"#) && text.contains("shutting down"), "{text}");
    assert!(text.ends_with("\r\n0\r\n\r\n"), "the chunked body is not terminated: {text}");
    let line: serde_json::Value = serde_json::from_str(&gw.log_sink.lines()[0]).unwrap();
    assert_eq!(line["outcome"], "stream_error", "{line}");
    assert_eq!(line["attempts"][1]["provider"], "backup", "{line}");
    assert_eq!(line["attempts"][1]["reason"], "shutdown", "{line}");
}

/// A non-stream request still waiting on its upstream when the grace ends is dropped with its
/// connection; its record says the gateway cut it (503, attempt `aborted`/`shutdown`), not that
/// the client left (helper-42). On worker threads, as `serve` runs it: their runtimes, and the
/// requests on them, go at shutdown.
#[tokio::test]
async fn a_request_unanswered_at_the_grace_end_is_logged_as_cut_by_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let yaml = format!("server: {{shutdown_grace: 1s}}\n{}", crate::common::single("m+hang", ""));
    let r = crate::common::start_with_workers(&yaml, Some(1)).await;
    let gw = r.gateway.clone();
    let body = crate::common::chat("x");
    let mut s = tokio::net::TcpStream::connect(r.data_addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    while gw.mock_stats("sim").get("m+hang").calls == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let shutdown = tokio::spawn(r.shutdown());
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    shutdown.await.unwrap();
    let line: serde_json::Value = serde_json::from_str(&gw.log_sink.lines()[0]).unwrap();
    assert_eq!(line["outcome"], "aborted", "{line}");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["attempts"][0]["reason"], "shutdown", "{line}");
}
