//! Tests of the pool over in-memory connections (duplex pipes).

use std::convert::Infallible;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;

/// A connection to an in-memory HTTP/1 server answering every request with `answer`
/// bytes, and the server's task.
async fn connected(answer: usize, buffer: usize) -> (H1, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(buffer);
    let served = tokio::spawn(async move {
        let svc = service_fn(move |_req| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; answer]))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let (tx, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    (tx, served)
}

async fn ask(id: usize, mut tx: H1) -> Response<PooledBody> {
    let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
    let resp = tx.try_send_request(req).await.map_err(|e| e.into_error()).unwrap();
    resp.map(|b| PooledBody::new(b, Some(Lease::new(id, tx))))
}

#[tokio::test]
async fn a_body_read_to_the_end_returns_its_connection() {
    let id = new_endpoint();
    let (tx, _server) = connected(10, 4096).await;
    let body = ask(id, tx).await.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 10);
    assert_eq!(idle_count(id), 1);
    // Handed out again, and it answers.
    let Some(Idle::H1(tx)) = checkout(id, 100) else { panic!("no idle connection") };
    assert_eq!(idle_count(id), 0);
    let body = ask(id, tx).await.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 10);
    assert_eq!(idle_count(id), 1);
}

#[tokio::test]
async fn a_body_dropped_early_takes_its_connection() {
    let id = new_endpoint();
    // The answer does not fit the pipe, so it cannot have arrived whole.
    let (tx, server) = connected(1 << 20, 1024).await;
    let mut body = ask(id, tx).await.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    // hyper closes the connection, so the server's side ends (the bound only guards
    // against a hang).
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    // Let the lease's waiter see the close too.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(idle_count(id), 0);
    assert!(checkout(id, 100).is_none());
}

#[tokio::test]
async fn closed_and_expired_connections_are_not_handed_out() {
    let id = new_endpoint();
    let (tx, server) = connected(1, 4096).await;
    ask(id, tx).await.into_body().collect().await.unwrap();
    // The upstream goes away: its idle connection is skipped once hyper sees it close.
    server.abort();
    for _ in 0..100 {
        let closed = with_slot(id, |s| s.idle.iter().all(|(tx, _)| tx.is_closed()));
        if closed {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(checkout(id, 100).is_none());
    assert_eq!(idle_count(id), 0);

    // Expired by age, on checkout and on the sweep.
    let (tx, _server) = connected(1, 4096).await;
    ask(id, tx).await.into_body().collect().await.unwrap();
    let (tx, _server2) = connected(1, 4096).await;
    ask(id, tx).await.into_body().collect().await.unwrap();
    assert_eq!(idle_count(id), 2);
    let later = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1);
    with_slot(id, |s| s.expire(later));
    assert_eq!(idle_count(id), 0);
    let (tx, _server3) = connected(1, 4096).await;
    ask(id, tx).await.into_body().collect().await.unwrap();
    assert!(with_slot(id, |s| s.checkout(later, 100)).is_none());
    assert_eq!(idle_count(id), 0);
}

#[tokio::test]
async fn an_http2_connection_is_shared_until_closed_or_idle_too_long() {
    use hyper_util::rt::TokioExecutor;
    let id = new_endpoint();
    let (client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(async move {
        let svc = service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    drop(share_h2(id, &tx));
    // Shared, not lent: every checkout gets it, and a working one is not forgotten.
    assert!(matches!(checkout(id, 100), Some(Idle::H2(..))));
    forget_h2(id);
    let Some(Idle::H2(mut again, stream)) = checkout(id, 100) else { panic!("not shared") };
    let req = Request::get("http://up/").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(again.send_request(req).await.unwrap().status(), 200);
    drop(stream);

    // Unused for longer than the idle timeout, it is let go.
    let later = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1);
    with_slot(id, |s| s.expire(later));
    assert!(checkout(id, 100).is_none());

    // Closed by the upstream, it is not handed out.
    drop(share_h2(id, &tx));
    served.abort();
    let _ = served.await;
    for _ in 0..100 {
        if tx.is_closed() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(tx.is_closed());
    assert!(checkout(id, 100).is_none());
}

/// An HTTP/2 connection to an in-memory server that answers nothing (these tests only count
/// streams), and the server's task.
async fn h2_connected() -> (H2, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::TokioExecutor;
    let (client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(async move {
        let svc =
            service_fn(|_req| std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>());
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    (tx, served)
}

fn stream_of(idle: Option<Idle>) -> Stream {
    match idle {
        Some(Idle::H2(_, stream)) => stream,
        Some(Idle::H1(_)) => panic!("an HTTP/1 connection"),
        None => panic!("no connection"),
    }
}

#[tokio::test]
async fn an_http2_connection_carries_max_streams_requests_then_another_is_needed() {
    let id = new_endpoint();
    let (first, _server) = h2_connected().await;
    // The request that made it holds its first stream.
    let made = stream_of(Some(share_h2(id, &first)));
    let second = stream_of(checkout(id, 2));
    assert!(checkout(id, 2).is_none(), "a third request on a connection allowing two");
    // A stream ending (its body done or dropped) frees its place.
    drop(second);
    let second = stream_of(checkout(id, 2));
    assert!(checkout(id, 2).is_none());

    // Another connection takes the next ones; the oldest is filled first, so the newer one
    // goes idle (and ages out) when the load falls.
    let (other, _server2) = h2_connected().await;
    let third = stream_of(Some(share_h2(id, &other)));
    assert_eq!(h2_count(id), 2);
    drop((made, third));
    let again = stream_of(checkout(id, 2));
    let in_flight = with_slot(id, |s| s.h2.iter().map(SharedH2::in_flight).collect::<Vec<_>>());
    assert_eq!(in_flight, [2, 0]);

    // A connection carrying a stream is not idle, however long ago that stream began.
    let later = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1);
    with_slot(id, |s| s.expire(later));
    assert_eq!(h2_count(id), 1, "the busy connection went, or the idle one stayed");
    drop((second, again));
    with_slot(id, |s| s.expire(later));
    assert_eq!(h2_count(id), 0);
}

#[tokio::test]
async fn an_http2_answer_body_holds_its_stream_until_it_ends_fails_or_goes() {
    use hyper_util::rt::TokioExecutor;
    // Answers `/end` whole, and every other path with headers and a body that never ends.
    let (client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(async move {
        let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
            type B = http_body_util::combinators::BoxBody<Bytes, Infallible>;
            let body: B = if req.uri().path() == "/end" {
                Full::new(Bytes::from_static(b"ok")).boxed()
            } else {
                http_body_util::StreamBody::new(futures_util::stream::pending()).boxed()
            };
            Ok::<_, Infallible>(Response::new(body))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    let id = new_endpoint();
    drop(share_h2(id, &tx));
    let in_flight = || with_slot(id, |s| s.h2[0].in_flight());
    let open = |path: &'static str| async move {
        let Some(Idle::H2(mut tx, stream)) = checkout(id, 100) else { panic!("no stream") };
        let req = Request::get(format!("http://up{path}")).body(Full::new(Bytes::new())).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        PooledBody::on_stream(resp.into_body(), stream)
    };
    // Read to its end.
    let body = open("/end").await;
    assert_eq!(in_flight(), 1);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(in_flight(), 0);
    // Dropped midway (a client that went away).
    let body = open("/hold").await;
    assert_eq!(in_flight(), 1);
    drop(body);
    assert_eq!(in_flight(), 0);
    // A whole answer whose last frame is still to come.
    let mut body = open("/hold").await;
    body.mark_complete();
    assert_eq!(in_flight(), 0);
    drop(body);
    // Broken: the upstream goes away mid-body.
    let mut body = open("/hold").await;
    assert_eq!(in_flight(), 1);
    served.abort();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_may_be_http2_is_made_once_for_all_waiting() {
    use futures_util::FutureExt;
    let later = || tokio::time::Instant::now() + Duration::from_secs(10);
    let id = new_endpoint();
    // Never connected, over https: the first request connects, the next ones wait.
    let Connect::Lead(leader) = connect(id, true, 100) else { panic!("no leader") };
    let Connect::Follow(made) = connect(id, true, 100) else { panic!("not following") };
    let mut waiting = std::pin::pin!(made.wait(later()));
    assert!(waiting.as_mut().now_or_never().is_none(), "woken before the connection was made");
    leader.finish(None);
    assert_eq!(waiting.now_or_never(), Some(Some(Ended::Made)), "a waiter was not woken");
    // Ended already: a late waiter does not wait.
    assert_eq!(made.wait(later()).now_or_never(), Some(Some(Ended::Made)));

    // A failed connect fails its waiters with its reason.
    let Connect::Lead(leader) = connect(id, true, 100) else { panic!("no leader") };
    let Connect::Follow(made) = connect(id, true, 100) else { panic!("not following") };
    let mut waiting = std::pin::pin!(made.wait(later()));
    assert!(waiting.as_mut().now_or_never().is_none());
    leader.finish(Some("refused".into()));
    assert_eq!(waiting.now_or_never(), Some(Some(Ended::Failed("refused".into()))));

    // A leader dropped unfinished (its request went away) hands over to a waiter.
    let Connect::Lead(leader) = connect(id, true, 100) else { panic!("no leader") };
    let Connect::Follow(made) = connect(id, true, 100) else { panic!("not following") };
    let mut waiting = std::pin::pin!(made.wait(later()));
    assert!(waiting.as_mut().now_or_never().is_none());
    drop(leader);
    assert_eq!(waiting.now_or_never(), Some(Some(Ended::Abandoned)));
    let Connect::Lead(leader) = connect(id, true, 100) else {
        panic!("the waiter did not take over")
    };

    // Dropped on another thread, which cannot clear this thread's slot, while a waiter waits:
    // the waiter is woken, and the next request leads instead of following a connect nobody
    // makes.
    let Connect::Follow(made) = connect(id, true, 100) else { panic!("not following") };
    let mut waiting = std::pin::pin!(made.wait(later()));
    assert!(waiting.as_mut().now_or_never().is_none());
    std::thread::spawn(move || drop(leader)).join().unwrap();
    assert_eq!(waiting.await, Some(Ended::Abandoned));
    let Connect::Lead(leader) = connect(id, true, 100) else {
        panic!("followed an abandoned connect")
    };

    // A wait runs out at its deadline.
    let Connect::Follow(made) = connect(id, true, 100) else { panic!("not following") };
    let started = tokio::time::Instant::now();
    assert_eq!(made.wait(started + Duration::from_secs(3)).await, None);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    drop(leader);

    // HTTP/1 endpoints connect for every request on their own.
    speaks_http1(id);
    assert!(matches!(connect(id, true, 100), Connect::Alone));
    let plain = new_endpoint();
    assert!(matches!(connect(plain, false, 100), Connect::Alone));
    // One that spoke HTTP/2 last time is waited for again.
    with_slot(id, |s| s.speaks = Speaks::Http2);
    assert!(matches!(connect(id, true, 100), Connect::Lead(_)));
}

#[tokio::test(start_paused = true)]
async fn a_burst_larger_than_one_connection_carries_makes_its_connections_at_once() {
    use futures_util::FutureExt;
    let later = tokio::time::Instant::now() + Duration::from_secs(10);
    let id = new_endpoint();
    // Two streams per connection: five requests make three connections at once, each waited
    // for by as many requests as will get a stream of it.
    let Connect::Lead(first) = connect(id, true, 2) else { panic!("no leader") };
    let Connect::Follow(on_first) = connect(id, true, 2) else { panic!("not following") };
    let Connect::Lead(second) = connect(id, true, 2) else { panic!("waited for a full one") };
    let Connect::Follow(on_second) = connect(id, true, 2) else { panic!("not following") };
    let Connect::Lead(third) = connect(id, true, 2) else { panic!("waited for a full one") };
    // A waiter that goes away frees its place.
    drop(on_second);
    let Connect::Follow(on_second) = connect(id, true, 2) else { panic!("place not freed") };
    // Each connect ends for its own waiters only.
    let mut waiting = std::pin::pin!(on_second.wait(later));
    assert!(waiting.as_mut().now_or_never().is_none());
    first.finish(None);
    assert_eq!(on_first.wait(later).now_or_never(), Some(Some(Ended::Made)));
    assert!(waiting.as_mut().now_or_never().is_none(), "woken by another connect");
    drop(second);
    assert_eq!(waiting.now_or_never(), Some(Some(Ended::Abandoned)));
    // The ended ones are gone; the third, with room, is followed.
    let Connect::Follow(on_third) = connect(id, true, 2) else { panic!("not following third") };
    let Connect::Lead(fourth) = connect(id, true, 2) else { panic!("the third is full") };
    drop((third, on_third, fourth));
}
