//! Shared HTTP/2 connections and the provider's `http2_max_streams`: requests past it open
//! another connection, a stream counts until its answer's body has ended, and requests waiting
//! for a connection other requests are making are bounded by their own connect timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use futures_util::StreamExt;

use super::{ANSWER, SSE, acceptor, config_for, with_client_key, within_10s};
use crate::common::*;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Answers at once with headers (and, for a stream, its first event), and with the rest of
/// the body once `gate` lets it (at once if `gate` is `None`).
fn answer(stream: bool, gate: Option<Arc<Semaphore>>) -> Response<Body> {
    let (kind, text) =
        if stream { ("text/event-stream", SSE) } else { ("application/json", ANSWER) };
    // A stream's first event goes at once: the gateway answers its client after it.
    let split = if stream { text.find("\n\n").unwrap() + 2 } else { 0 };
    let (first, rest) = (&text[..split], &text[split..]);
    let head = futures_util::stream::iter(
        (!first.is_empty()).then(|| Ok(Frame::data(Bytes::from_static(first.as_bytes())))),
    );
    let tail = futures_util::stream::once(async move {
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(rest.as_bytes())))
    });
    Response::builder()
        .header("content-type", kind)
        .body(BodyExt::boxed(StreamBody::new(head.chain(tail))))
        .unwrap()
}

/// Serves one TLS connection over HTTP/2 allowing `max_streams` streams; each request counts
/// in `held`, then its answer waits for `gate`.
fn serve_h2(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    max_streams: u32,
    held: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let (held, gate) = (held.clone(), gate.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let stream =
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()["stream"] == true;
            held.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(answer(stream, gate))
        }
    });
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(max_streams)
            .serve_connection(TokioIo::new(tls), service),
    );
}

/// An HTTP/2 upstream allowing `max_streams` streams per connection whose answers wait for
/// `release`, and what it counts: TLS connections `accepted`, requests `held`.
struct Held {
    up: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

async fn held_upstream(max_streams: u32) -> Held {
    let acceptor = acceptor("localhost", &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (accepted, held) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let release = Arc::new(Semaphore::new(0));
    let (count, holding, gate) = (accepted.clone(), held.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tls = acceptor.accept(sock).await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            serve_h2(tls, max_streams, holding.clone(), Some(gate.clone()));
        }
    });
    Held { up, accepted, held, release }
}

/// `yaml` with the upstream provider's `http2_max_streams` set to `n`.
fn with_max_streams(yaml: String, n: usize) -> String {
    yaml.replace("api_key_file", &format!("http2_max_streams: {n}, api_key_file"))
}

#[tokio::test]
async fn requests_beyond_http2_max_streams_open_another_connection() {
    // An HTTP/2 upstream allowing two streams per connection. It sends each answer's headers
    // at once and holds its body until the test lets it go: a request past the limit on one
    // connection would wait for a stream, so would one on a stream counted free too early
    // (at its headers).
    let Held { up, accepted, held, release } = held_upstream(2).await;
    let gw = gateway(&with_max_streams(config_for("localhost", up, true), 2));
    let burst = |n: usize| {
        let calls = (0..n).map(|_| call_with(&gw, with_client_key(chat("x"))));
        futures_util::future::join_all(calls)
    };
    // Lets the bodies go once `n` more requests than `before` are held upstream at once.
    let all_held = |before: usize, n: usize| {
        let (held, release) = (held.clone(), release.clone());
        async move {
            while held.load(Ordering::SeqCst) < before + n {
                tokio::task::yield_now().await;
            }
            release.add_permits(n);
        }
    };
    // Five at once, cold: every one reaches the upstream while the others are still held,
    // over three connections.
    let (answers, ()) = within_10s(futures_util::future::join(burst(5), all_held(0, 5))).await;
    for got in answers {
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["choices"][0]["message"]["content"], "over tls");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // Their streams ended with their answers: the next burst fits the connections there are.
    let (answers, ()) = within_10s(futures_util::future::join(burst(6), all_held(5, 6))).await;
    for got in answers {
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_cold_burst_makes_the_connections_it_needs_at_once() {
    // Two streams per connection, and an upstream that finishes no TLS handshake until three
    // connections are waiting for one: five requests at once need three connections, and get
    // them only if the second and third are made while the first is (made one after another,
    // each wave waiting for the last, the first never ends and the test runs out of time).
    let acceptor = acceptor("localhost", &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (held, accepted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (holding, count) = (held.clone(), accepted.clone());
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            waiting.push(sock);
            count.fetch_add(1, Ordering::SeqCst);
            if waiting.len() < 3 {
                continue;
            }
            for sock in waiting.drain(..) {
                let (acceptor, holding) = (acceptor.clone(), holding.clone());
                tokio::spawn(async move {
                    let tls = acceptor.accept(sock).await.unwrap();
                    serve_h2(tls, 2, holding, None);
                });
            }
        }
    });
    let gw = gateway(&with_max_streams(config_for("localhost", up, true), 2));
    let calls = (0..5).map(|_| call_with(&gw, with_client_key(chat("x"))));
    for got in within_10s(futures_util::future::join_all(calls)).await {
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["choices"][0]["message"]["content"], "over tls");
    }
    assert_eq!((accepted.load(Ordering::SeqCst), held.load(Ordering::SeqCst)), (3, 5));
}

#[tokio::test]
async fn a_stream_counts_until_its_body_has_ended() {
    // Two streams per connection; each answer's headers and first event come at once, the
    // rest when the test lets it.
    let Held { up, accepted, held, release } = held_upstream(2).await;
    let gw = gateway(&with_max_streams(config_for("localhost", up, true), 2));
    let open = || async {
        let resp = gw.handle(with_client_key(chat_stream("x"))).await;
        assert_eq!(resp.status(), 200);
        resp.into_body()
    };
    // Two streams under way (their clients have the first event): the connection is full
    // until their bodies end, so a third request opens another connection.
    let (first, second) = within_10s(futures_util::future::join(open(), open())).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let third = within_10s(open()).await;
    assert_eq!((accepted.load(Ordering::SeqCst), held.load(Ordering::SeqCst)), (2, 3));
    release.add_permits(3);
    for body in [first, second, third] {
        let text = within_10s(body.collect()).await.unwrap().to_bytes();
        assert!(text.ends_with(b"data: [DONE]\n\n"), "{text:?}");
    }
    // Ended, they free their places: two more fit the first connection again.
    let (fourth, fifth) = within_10s(futures_util::future::join(open(), open())).await;
    release.add_permits(2);
    for body in [fourth, fifth] {
        within_10s(body.collect()).await.unwrap();
    }
    assert_eq!((accepted.load(Ordering::SeqCst), held.load(Ordering::SeqCst)), (2, 5));
}

#[tokio::test]
async fn a_waiter_taking_over_a_connect_is_bounded_by_its_own_deadline_not_its_followers() {
    // Two streams per connection, a 1 s connect timeout, and an upstream whose first two TLS
    // handshakes never end. A request (A) on a route with 200 ms in all leads the first
    // connect; B, on a route with time to spare, waits for it. A's deadline passes and B takes
    // over with what is left of its 1 s. A third request (C) arrives half a second later and
    // waits for B's connect. When B runs out of time, C, with time of its own left, takes over
    // rather than fail with B.
    let acceptor = acceptor("localhost", &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (handshakes, held) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let second_accepted = Arc::new(Notify::new());
    let (count, holding, second) = (handshakes.clone(), held.clone(), second_accepted.clone());
    tokio::spawn(async move {
        let mut silent = Vec::new();
        for n in 1.. {
            let Ok((sock, _)) = listener.accept().await else { return };
            if n <= 2 {
                // Accepted, then nothing: A's and B's TLS handshakes hang.
                silent.push(sock);
                if n == 2 {
                    second.notify_one();
                }
                continue;
            }
            let tls = acceptor.accept(sock).await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            serve_h2(tls, 2, holding.clone(), None);
        }
    });
    let long = config_for("localhost", up, true).replace("connect: 30s", "connect: 1s, total: 10s");
    let short = long
        .replace("  r:\n    default: true\n", "  short:\n")
        .replace("total: 10s", "total: 200ms");
    let routes = short.split_once("routes:\n").unwrap().1;
    let gw = gateway(&with_max_streams(format!("{long}{routes}"), 2));
    let ask = |path: &'static str| {
        let mut req = with_client_key(chat("x"));
        *req.uri_mut() = http::Uri::from_static(path);
        call_with(&gw, req)
    };
    let late = async {
        second_accepted.notified().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ask("/v1/chat/completions").await
    };
    let (a, b, c) = within_10s(futures_util::future::join3(
        ask("/r/short/v1/chat/completions"),
        ask("/v1/chat/completions"),
        late,
    ))
    .await;
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(b.status, 502, "{}", b.text());
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(held.load(Ordering::SeqCst), 1);
    let logs = gw.log_sink.lines().join("\n");
    assert!(logs.contains("no connection within 1s"), "{logs}");
    assert!(!logs.contains("the connect this request waited for"), "{logs}");
}
