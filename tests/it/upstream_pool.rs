//! The upstream connection pool over real sockets: keep-alive connections are reused, and an
//! upstream that closes its connections gets a fresh one for every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const ANSWER: &[u8] = br#"{"id":"c","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// An HTTP/1 upstream on raw sockets answering every request with a chat completion, keeping
/// each connection open unless `close` (then it answers `connection: close` and hangs up).
/// Returns its address and how many connections it accepted.
async fn counting_upstream(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer_each(sock, close));
        }
    });
    (addr, accepted)
}

async fn answer_each(mut sock: TcpStream, close: bool) {
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
        buf.drain(..head_end + len);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            ANSWER.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(ANSWER).await.unwrap();
        if close {
            return;
        }
    }
}

fn config_for(up: SocketAddr) -> String {
    format!(
        "providers:\n  up: {{kind: openai_compatible, base_url: \"http://{up}/v1\"}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets: [{{provider: up, model: up-model}}]\n"
    )
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (up, accepted) = counting_upstream(false).await;
    let gw = gateway(&config_for(up));
    for _ in 0..3 {
        let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["choices"][0]["message"]["content"], "hi");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_closing_each_connection_gets_a_fresh_one_every_time() {
    let (up, accepted) = counting_upstream(true).await;
    let gw = gateway(&config_for(up));
    for _ in 0..3 {
        let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
