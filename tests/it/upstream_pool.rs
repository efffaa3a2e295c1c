//! The upstream connection pool over real sockets: keep-alive connections are reused (also
//! after a stream whose chunked terminator comes after its `[DONE]`), an upstream that closes
//! its connections, saying so or not, gets a fresh one for every request, and an answer whose
//! body ends with its connection (no length, no chunking) arrives whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const ANSWER: &[u8] = br#"{"id":"c","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// How the test upstream answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A chat completion, connection kept open.
    KeepAlive,
    /// A chat completion with `connection: close`, then it hangs up.
    Close,
    /// A chat completion, then it hangs up without saying so.
    HangUp,
    /// A chunked SSE stream whose terminating chunk comes a moment after `[DONE]`.
    LateTerminator,
    /// A chat completion without length or chunking: its body ends when the upstream closes
    /// the connection (as HTTP/1.0 servers and some proxies answer).
    CloseDelimited,
    /// A chat completion followed by bytes its length does not cover (a broken upstream or a
    /// desynchronized proxy): the connection cannot be trusted with another request.
    TrailingGarbage,
}

/// What the test upstream has seen so far.
#[derive(Default)]
struct Counts {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Connections it is done with.
    finished: AtomicUsize,
    /// Answers written whole (the last byte of the body included).
    answered: AtomicUsize,
}

impl Counts {
    fn get(field: &AtomicUsize) -> usize {
        field.load(Ordering::SeqCst)
    }
}

/// An HTTP/1 upstream on raw sockets answering every request as `mode` says. Returns its
/// address and its counters.
async fn counting_upstream(mode: Mode) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            // Without it Nagle would hold a late terminator until the gateway's delayed ACK.
            sock.set_nodelay(true).unwrap();
            seen.accepted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                answer_each(sock, mode, &seen).await;
                seen.finished.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

/// An OpenAI stream, with keep-alive events (a name and no data, which are not events at all)
/// before and after its content.
const SSE: &[&str] = &[
    "event: ping",
    r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-model","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#,
    "event: ping",
    r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    "data: [DONE]",
];

async fn answer_each(mut sock: TcpStream, mode: Mode, seen: &Counts) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let streamed =
            String::from_utf8_lossy(&buf[head_end..head_end + len]).contains("\"stream\":true");
        buf.drain(..head_end + len);
        if mode == Mode::CloseDelimited && streamed {
            let mut out =
                String::from("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
            for event in SSE {
                out.push_str(&format!("{event}\n\n"));
            }
            sock.write_all(out.as_bytes()).await.unwrap();
            seen.answered.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if mode == Mode::LateTerminator {
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for event in SSE {
                let event = format!("{event}\n\n");
                out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
            }
            sock.write_all(out.as_bytes()).await.unwrap();
            // The gateway has the whole answer; the end of the body comes separately.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if sock.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
            seen.answered.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let head = match mode {
            Mode::CloseDelimited => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n".into()
            }
            _ => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
                ANSWER.len(),
                if mode == Mode::Close { "connection: close\r\n" } else { "" }
            ),
        };
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(ANSWER).await.unwrap();
        if mode == Mode::TrailingGarbage {
            let _ = sock.write_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n").await;
        }
        seen.answered.fetch_add(1, Ordering::SeqCst);
        if !matches!(mode, Mode::KeepAlive | Mode::TrailingGarbage) {
            return;
        }
    }
}

/// Posts `body` as a chat request, which must succeed.
async fn post_ok(gw: &Arc<tidegate::gateway::Gateway>, body: &str) -> Got {
    let got = post(gw, "/v1/chat/completions", body).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got
}

/// A non-stream chat request, which must succeed.
async fn chat_ok(gw: &Arc<tidegate::gateway::Gateway>) -> Got {
    post_ok(gw, &chat("x")).await
}

fn config_for(up: SocketAddr) -> String {
    format!(
        "providers:\n  up: {{kind: openai_compatible, base_url: \"http://{up}/v1\"}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets: [{{provider: up, model: up-model}}]\n"
    )
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (up, counts) = counting_upstream(Mode::KeepAlive).await;
    let gw = gateway(&config_for(up));
    for _ in 0..3 {
        let got = chat_ok(&gw).await;
        assert_eq!(got.json()["choices"][0]["message"]["content"], "hi");
    }
    assert_eq!(Counts::get(&counts.accepted), 1);
}

#[tokio::test]
async fn an_upstream_closing_each_connection_gets_a_fresh_one_every_time() {
    let (up, counts) = counting_upstream(Mode::Close).await;
    let gw = gateway(&config_for(up));
    for _ in 0..3 {
        chat_ok(&gw).await;
    }
    assert_eq!(Counts::get(&counts.accepted), 3);
}

#[tokio::test]
async fn an_answer_ending_at_the_close_of_its_connection_is_whole_and_not_reused() {
    let (up, counts) = counting_upstream(Mode::CloseDelimited).await;
    let gw = gateway(&config_for(up));
    for _ in 0..3 {
        let got = chat_ok(&gw).await;
        assert_eq!(got.body.as_ref(), ANSWER);
        assert_eq!(got.json()["usage"]["total_tokens"], 2);
    }
    // Streams too: the events are forwarded to `[DONE]`, and the connection is not kept.
    for _ in 0..2 {
        let got = post_ok(&gw, &chat_stream("x")).await;
        assert_eq!(got.stream_text(), "hi");
        assert!(got.text().ends_with("data: [DONE]\n\n"), "{}", got.text());
    }
    assert_eq!(Counts::get(&counts.accepted), 5);
}

#[tokio::test]
async fn bytes_after_an_answer_never_reach_the_next_request() {
    let (up, counts) = counting_upstream(Mode::TrailingGarbage).await;
    let gw = gateway(&config_for(up));
    for _ in 0..3 {
        let got = chat_ok(&gw).await;
        assert_eq!(got.body.as_ref(), ANSWER);
    }
    // hyper reads the stray bytes as a message on an idle connection and closes it.
    assert_eq!(Counts::get(&counts.accepted), 3);
}

#[tokio::test]
async fn an_upstream_hanging_up_idle_connections_gets_a_fresh_one_every_time() {
    let (up, counts) = counting_upstream(Mode::HangUp).await;
    let gw = gateway(&config_for(up));
    for i in 0..3 {
        // The upstream has closed the previous connection, and its FIN is on the socket: the
        // pooled connection is found closed (or refuses the request unsent), never used.
        while Counts::get(&counts.finished) < i {
            tokio::task::yield_now().await;
        }
        chat_ok(&gw).await;
    }
    assert_eq!(Counts::get(&counts.accepted), 3);
}

#[tokio::test]
async fn a_stream_whose_body_ends_after_its_done_keeps_its_connection() {
    let (up, counts) = counting_upstream(Mode::LateTerminator).await;
    let gw = gateway(&config_for(up));
    for i in 1..=3 {
        let got = post_ok(&gw, &chat_stream("x")).await;
        assert_eq!(got.stream_text(), "hi");
        assert!(got.text().ends_with("data: [DONE]\n\n"), "{}", got.text());
        // The gateway answered at `[DONE]`; its connection comes back once the body ends.
        // Upstream, gateway and test share this thread, and the terminator is in the
        // gateway's socket once written: a few scheduler turns let it be read.
        while Counts::get(&counts.answered) < i {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(Counts::get(&counts.accepted), 1);
}
