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
