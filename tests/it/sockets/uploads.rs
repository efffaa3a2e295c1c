//! Request bodies over real sockets: one over the limit gets its 413 while the client keeps
//! sending (HTTP/1 and HTTP/2), a stalled one its 408, and one whose client leaves is counted
//! as aborted, not as a bad request.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{http2_client, send};
use crate::common::*;

#[tokio::test]
async fn oversize_body_gets_its_413_while_the_client_keeps_sending() {
    let gw = start(&format!("server: {{max_body_bytes: 64KiB}}\n{}", single("m", ""))).await;
    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    let total = 4 << 20;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < total {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("request_too_large"));
    writer.abort();

    // A client that waits to be asked for its body gets the 413 at once, not `100 Continue`.
    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {total}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut resp)).await;
    assert!(read.is_ok(), "the connection stayed open");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    gw.shutdown().await;
}

/// Over HTTP/2 too: a client still sending a body far over the limit gets the 413 (then the
/// stream is reset with NO_ERROR, as RFC 9113 8.1 allows once the response is complete).
#[tokio::test]
async fn oversize_body_gets_its_413_over_http2() {
    let gw = start(&format!("server: {{max_body_bytes: 64KiB}}\n{}", single("m", ""))).await;
    let (mut tx, _conn) = http2_client(gw.data_addr).await;
    let chunks = futures_util::stream::iter((0..80).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
            b' ';
            64 << 10
        ])))
    }));
    let req = Request::post(format!("http://{}/v1/chat/completions", gw.data_addr))
        .header("content-type", "application/json")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .expect("no answer in 10 s")
        .expect("no response: the stream was reset before it");
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("request_too_large"), "{body:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_body_gets_a_408_and_frees_its_place() {
    // One place in all: a client that sends its headers and part of its body, then nothing,
    // holds it only until the body read timeout, and then hears why.
    let cfg = "server: {body_read_timeout: 2s, max_concurrent_requests: 1}\n";
    let gw = start(&format!("{cfg}{}", single("m", ""))).await;
    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"").await.unwrap();
    // The place is taken while the body is awaited (once the gateway has the headers).
    let taken = async {
        while send(gw.data_addr, "/v1/chat/completions", &chat("x")).await.status != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), taken).await.expect("the place was not taken");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection of a stalled body was not closed");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-tidegate-error-code: request_timeout"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("server.body_read_timeout"), "{text}");
    let got = send(gw.data_addr, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    gw.shutdown().await;
}

/// Waits (5 s at most) until the gateway has logged `n` requests, and returns their lines.
async fn logged(gw: &tidegate::app::Running, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..500 {
        let lines = gw.gateway.log_sink.lines();
        if lines.len() >= n {
            return lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} requests logged: {:?}", gw.gateway.log_sink.lines());
}

/// A client that goes away mid-upload is logged and counted as `aborted` with 499, over
/// HTTP/1 (the connection closes before the body's length) and HTTP/2 (the stream is reset),
/// not as a bad request: an SDK timing out on a large upload is not a client error. A
/// malformed chunk from a client still there is still a 400.
#[tokio::test]
async fn a_client_leaving_mid_upload_is_aborted_not_invalid() {
    let gw = start(&single("m", "")).await;
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    let cut = format!("{head}content-length: 100\r\n\r\n{{\"model\"");
    sock.write_all(cut.as_bytes()).await.unwrap();
    drop(sock);
    logged(&gw, 1).await;

    type Frame = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;
    let (frames, mut rx) = tokio::sync::mpsc::channel::<Frame>(1);
    frames.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"{\"model\"")))).await.unwrap();
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let (mut tx, _conn) = http2_client(gw.data_addr).await;
    // Named by header, its route is counted in flight while its body is awaited.
    let req = Request::post(format!("http://{}/v1/chat/completions", gw.data_addr))
        .header("content-type", "application/json")
        .header("x-tidegate-route", "r")
        .body(http_body_util::StreamBody::new(body))
        .unwrap();
    let sent = tokio::spawn(tx.send_request(req));
    // The client gives up on its request (hyper resets the stream) once the gateway waits for
    // the rest of the body.
    let waiting = async {
        while metric(&gw.gateway, "tidegate_inflight_requests{route=\"r\"}") < 1.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the request never came");
    sent.abort();
    let _ = sent.await;
    logged(&gw, 2).await;
    drop(frames);

    let mut sock = TcpStream::connect(gw.data_addr).await.unwrap();
    let bad = format!("{head}transfer-encoding: chunked\r\n\r\nZZ\r\n");
    sock.write_all(bad.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("invalid_request"), "{text}");

    let lines = logged(&gw, 3).await;
    let got: Vec<_> = lines.iter().map(|l| (l["outcome"].clone(), l["status"].clone())).collect();
    let want = [("aborted", 499), ("aborted", 499), ("invalid", 400)];
    let want: Vec<_> = want.iter().map(|(o, s)| ((*o).into(), (*s).into())).collect();
    assert_eq!(got, want, "{lines:?}");
    let count = |outcome| requests_with_outcome(&gw.gateway, outcome);
    assert_eq!((count("aborted"), count("invalid")), (2.0, 1.0));
    gw.shutdown().await;
}
