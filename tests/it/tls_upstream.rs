//! An https upstream through the real client stack: rustls trusting the provider's `ca_file`,
//! HTTP/2 or HTTP/1.1 as ALPN decides, pooled connections (one shared HTTP/2 connection, or
//! HTTP/1 connections reused), an HTTP/2 upstream going away between requests, and an
//! untrusted certificate answered in the SPEC's error shape without reaching the upstream.
//!
//! The certificates are fixtures (`tests/fixtures/tls`, see its README): a test CA, a
//! `localhost` / `127.0.0.1` / `::1` leaf and an `elsewhere.test` leaf it signed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::common::*;
use tidegate::config::reload::ReloadResult;

mod streams;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"over tls"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

const SSE: &str = concat!(
    r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-model","choices":[{"index":0,"delta":{"role":"assistant","content":"over "},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-model","choices":[{"index":0,"delta":{"content":"tls"},"finish_reason":"stop"}]}"#,
    "\n\n",
    r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-model","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// One request as the upstream saw it.
#[derive(Debug)]
struct Seen {
    version: Version,
    /// `Host` headers (HTTP/2 carries the authority in `:authority` and must not repeat it).
    host_headers: Vec<String>,
    /// The request target's authority (`:authority` on HTTP/2).
    authority: Option<String>,
    authorization: String,
    path: String,
    model: String,
}

/// What the upstream has seen and done.
#[derive(Default)]
struct Log {
    /// TLS handshakes completed.
    accepted: AtomicUsize,
    /// Connections it is done with.
    finished: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
}

impl Log {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.requests.lock().unwrap()
    }
}

/// How the upstream treats its connections.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keeps them open.
    KeepOpen,
    /// Sends HTTP/2 GOAWAY (or closes an HTTP/1 one) once its first request is answered.
    GoAwayAfterOne,
}

/// An https upstream speaking OpenAI's chat API with the `localhost` certificate, offering
/// `alpn` (in preference order).
async fn tls_upstream(alpn: &[&[u8]], after: After) -> (SocketAddr, Arc<Log>) {
    tls_upstream_as("localhost", alpn, after).await
}

/// [`tls_upstream`] with the fixture certificate `cert` (`localhost` or `elsewhere`).
async fn tls_upstream_as(cert: &str, alpn: &[&[u8]], after: After) -> (SocketAddr, Arc<Log>) {
    let acceptor = acceptor(cert, alpn);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                // A failed handshake (the gateway not trusting us) is not a connection.
                let Ok(tls) = acceptor.accept(sock).await else { return };
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                serve(tls, after, &seen).await;
                seen.finished.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, log)
}

/// A TLS acceptor presenting the fixture certificate `cert`, offering `alpn`.
fn acceptor(cert: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{FIXTURES}/{cert}.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{FIXTURES}/{cert}.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

/// Serves one TLS connection, HTTP/2 or HTTP/1.1 as the client speaks.
async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    after: After,
    log: &Arc<Log>,
) {
    let answered = Arc::new(Notify::new());
    let (log2, answered2) = (log.clone(), answered.clone());
    let service = service_fn(move |req: Request<Incoming>| {
        let (log, answered) = (log2.clone(), answered2.clone());
        async move {
            let resp = answer(req, &log).await;
            answered.notify_one();
            Ok::<_, Infallible>(resp)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    if after == After::GoAwayAfterOne {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = answered.notified() => conn.as_mut().graceful_shutdown(),
        }
    }
    let _ = conn.await;
}

async fn answer(req: Request<Incoming>, log: &Log) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let header = |k: &str| parts.headers.get(k).map_or("", |v| v.to_str().unwrap()).to_owned();
    log.requests().push(Seen {
        version: parts.version,
        host_headers: parts
            .headers
            .get_all(http::header::HOST)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
        authority: parts.uri.authority().map(ToString::to_string),
        authorization: header("authorization"),
        path: parts.uri.path().to_owned(),
        model: json["model"].as_str().unwrap_or("").to_owned(),
    });
    let (kind, text) = if json["stream"] == true {
        ("text/event-stream", SSE)
    } else {
        ("application/json", ANSWER)
    };
    Response::builder().header("content-type", kind).body(Full::new(Bytes::from(text))).unwrap()
}

/// A route to the upstream at `https://{host}:{port}/v1`, trusting the fixture CA unless
/// `trust` is false.
fn config_for(host: &str, up: SocketAddr, trust: bool) -> String {
    let ca = if trust { format!("{FIXTURES}/ca.pem") } else { String::new() };
    config_trusting(host, up, &ca)
}

/// [`config_for`] trusting the CA file at `ca` (none when empty). The connect timeout is long
/// so that a lost wakeup shows as a test running out of time, not as a request connecting on
/// its own.
fn config_trusting(host: &str, up: SocketAddr, ca: &str) -> String {
    let ca = if ca.is_empty() { String::new() } else { format!(", ca_file: \"{ca}\"") };
    format!(
        "providers:\n  up: {{kind: openai_compatible, base_url: \"https://{host}:{port}/v1\", api_key_file: \"{FIXTURES}/upstream-key\"{ca}}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    timeouts: {{connect: 30s}}\n    targets: [{{provider: up, model: up-model}}]\n",
        port = up.port()
    )
}

/// Awaits `work`, failing the test if it takes 10 s (a lost wakeup: requests wait for the
/// 30 s connect timeout).
async fn within_10s<F: std::future::Future>(work: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), work).await.expect("took over 10 s")
}

/// A client request carrying its own credentials, which must not reach the upstream.
fn with_client_key(body: String) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn an_http2_upstream_over_tls_serves_every_request_on_one_connection() {
    let (up, log) = tls_upstream(&[b"h2", b"http/1.1"], After::KeepOpen).await;
    let gw = gateway(&config_for("localhost", up, true));
    // A burst before any connection exists: one is made, the others wait for it.
    let calls = (0..4).map(|_| call_with(&gw, with_client_key(chat("x"))));
    for got in within_10s(futures_util::future::join_all(calls)).await {
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["choices"][0]["message"]["content"], "over tls");
        assert_eq!(got.header("x-tidegate-provider"), "up");
    }
    assert_eq!(log.accepted(), 1, "a cold burst opened more than one HTTP/2 connection");

    let got = call_with(&gw, with_client_key(chat_stream("x"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.stream_text(), "over tls");
    assert!(got.text().ends_with("data: [DONE]\n\n"), "{}", got.text());

    // Later requests, one at a time and together, multiplex on the same connection.
    let got = call_with(&gw, with_client_key(chat("x"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let calls = (0..4).map(|_| call_with(&gw, with_client_key(chat("x"))));
    for got in futures_util::future::join_all(calls).await {
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(log.accepted(), 1, "one HTTP/2 connection for all ten requests");
    let seen = log.requests();
    assert_eq!(seen.len(), 10);
    for s in seen.iter() {
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
        assert!(s.host_headers.is_empty(), "HTTP/2 request with a Host header: {s:?}");
        assert_eq!(s.authority.as_deref(), Some(&*format!("localhost:{}", up.port())), "{s:?}");
        assert_eq!(s.authorization, "Bearer sk-upstream", "{s:?}");
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.model, "up-model");
    }
}

#[tokio::test]
async fn an_http1_upstream_over_tls_reuses_its_connection() {
    // An IP address in the URL: the certificate names it too.
    let (up, log) = tls_upstream(&[b"http/1.1"], After::KeepOpen).await;
    let gw = gateway(&config_for("127.0.0.1", up, true));
    // A cold burst: the requests waiting for the first connection learn it is HTTP/1.1 and
    // make their own, since an HTTP/1 connection serves one request at a time.
    let calls = (0..3).map(|_| call_with(&gw, with_client_key(chat("x"))));
    for got in within_10s(futures_util::future::join_all(calls)).await {
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(log.accepted(), 3);
    for _ in 0..3 {
        let got = call_with(&gw, with_client_key(chat("x"))).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["choices"][0]["message"]["content"], "over tls");
    }
    let got = call_with(&gw, with_client_key(chat_stream("x"))).await;
    assert_eq!(got.stream_text(), "over tls");
    assert_eq!(log.accepted(), 3, "keep-alive: the burst's connections serve the rest");
    let seen = log.requests();
    assert_eq!(seen.len(), 7);
    for s in seen.iter() {
        assert_eq!(s.version, Version::HTTP_11, "{s:?}");
        assert_eq!(s.host_headers, [format!("127.0.0.1:{}", up.port())], "{s:?}");
        assert_eq!(s.authorization, "Bearer sk-upstream", "{s:?}");
    }
}

#[tokio::test]
async fn an_http2_upstream_going_away_gets_a_fresh_connection() {
    let (up, log) = tls_upstream(&[b"h2"], After::GoAwayAfterOne).await;
    let gw = gateway(&config_for("localhost", up, true));
    for i in 1..=3 {
        let got = call_with(&gw, with_client_key(chat("x"))).await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        // The upstream said GOAWAY after answering; its connection ends once the gateway
        // has seen that (same thread: a few scheduler turns).
        within_10s(async {
            while log.finished.load(Ordering::SeqCst) < i {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    assert_eq!(log.accepted(), 3);
    assert_eq!(log.requests().len(), 3);
}

#[tokio::test]
async fn an_untrusted_certificate_is_an_upstream_error_and_reaches_nothing() {
    let (up, log) = tls_upstream(&[b"h2", b"http/1.1"], After::KeepOpen).await;
    // Without the test CA, the webpki roots do not know the upstream's issuer.
    let gw = gateway(&config_for("localhost", up, false));
    // A burst: the requests that waited for the failed connection fail with it (within the
    // 30 s connect timeout: nothing waits it out).
    let calls = (0..3).map(|_| call_with(&gw, with_client_key(chat("x"))));
    let answers = within_10s(futures_util::future::join_all(calls)).await;
    for got in &answers {
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.error_code(), "upstream_unavailable");
    }
    // The client hears that connecting failed; the request log says why.
    let got = &answers[0];
    assert!(got.text().contains("connect"), "{}", got.text());
    let logs = gw.log_sink.lines().join("\n");
    assert!(logs.contains("UnknownIssuer"), "{logs}");
    assert_eq!(log.accepted(), 0);
    assert!(log.requests().is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    // Signed by the trusted CA, but for `elsewhere.test`, not `localhost`.
    let (up, log) = tls_upstream_as("elsewhere", &[b"h2", b"http/1.1"], After::KeepOpen).await;
    let gw = gateway(&config_for("localhost", up, true));
    let got = call_with(&gw, with_client_key(chat("x"))).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.error_code(), "upstream_unavailable");
    let logs = gw.log_sink.lines().join("\n");
    assert!(logs.contains("certificate not valid for name \\\"localhost\\\""), "{logs}");
    assert_eq!(log.accepted(), 0);
}

#[tokio::test]
async fn a_replaced_ca_file_is_trusted_after_a_reload() {
    let (up, log) = tls_upstream(&[b"h2", b"http/1.1"], After::KeepOpen).await;
    let dir = std::env::temp_dir().join(format!("tidegate-it-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    // First a CA file holding a certificate that did not sign the upstream's.
    std::fs::copy(format!("{FIXTURES}/elsewhere.pem"), &ca).unwrap();
    let yaml = config_trusting("localhost", up, ca.to_str().unwrap());
    let gw = gateway(&yaml);
    let got = call_with(&gw, with_client_key(chat("x"))).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(gw.log_sink.lines().join("\n").contains("UnknownIssuer"));

    // The same config, reloaded after the file was replaced, trusts what it holds now.
    std::fs::copy(format!("{FIXTURES}/ca.pem"), &ca).unwrap();
    gw.install(gw.prepare(config(&yaml)).unwrap());
    let got = call_with(&gw, with_client_key(chat("x"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(log.accepted(), 1);
    // The connector trusting the old contents is gone with the config that used it.
    assert_eq!(gw.shared.clients.connectors(), 1);

    // A file that went bad fails the reload, naming it; the active config keeps serving.
    std::fs::write(&ca, "not a certificate").unwrap();
    let err = gw.prepare(config(&yaml)).err().expect("a bad CA file loaded");
    assert!(err.contains("holds no certificate") && err.contains("ca.pem"), "{err}");
    let got = call_with(&gw, with_client_key(chat("x"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // So does a bad CA file of a provider no route uses (as `tidegate check` warns).
    std::fs::copy(format!("{FIXTURES}/ca.pem"), &ca).unwrap();
    let spare = dir.join("spare.pem");
    std::fs::write(&spare, "not a certificate").unwrap();
    let with_spare = yaml.replacen(
        "providers:\n",
        &format!("providers:\n  spare: {{kind: openai_compatible, base_url: \"https://localhost:1/v1\", ca_file: \"{}\"}}\n", spare.display()),
        1,
    );
    let err = gw.prepare(config(&with_spare)).err().expect("an unused bad CA file loaded");
    assert!(err.contains("providers.spare") && err.contains("holds no certificate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_bounded_by_the_connect_timeout() {
    // Accepts TCP and then says nothing: the TLS handshake hangs.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            socks.push(sock);
        }
    });
    let yaml = config_for("localhost", up, true).replace("connect: 30s", "connect: 300ms");
    let gw = gateway(&yaml);
    // Two at once: the one waiting for the other's connection fails with it, not after it.
    let calls = (0..2).map(|_| call_with(&gw, with_client_key(chat("x"))));
    for got in within_10s(futures_util::future::join_all(calls)).await {
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.error_code(), "upstream_unavailable");
    }
    let logs = gw.log_sink.lines().join("\n");
    assert!(logs.contains("no connection within 300ms"), "{logs}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the waiting request connected too");
    held.abort();
}

#[tokio::test]
async fn rotated_key_and_ca_files_apply_to_the_running_version() {
    use crate::config_lifecycle::{TempDir, active, start_file};
    let (up, log) = tls_upstream(&[b"h2", b"http/1.1"], After::KeepOpen).await;
    let dir = TempDir::new("rotate");
    let (ca, key, path) = (dir.join("ca.pem"), dir.join("api-key"), dir.join("tidegate.yaml"));
    // A CA file that did not sign the upstream's certificate, as a Secret holds it before a
    // rotation, and a first key.
    std::fs::copy(format!("{FIXTURES}/elsewhere.pem"), &ca).unwrap();
    std::fs::write(&key, "sk-one\n").unwrap();
    let yaml = config_trusting("localhost", up, ca.to_str().unwrap())
        .replace(&format!("{FIXTURES}/upstream-key"), key.to_str().unwrap());
    std::fs::write(&path, &yaml).unwrap();
    let r = start_file(&path, tidegate::app::StateDir::InMemory, "", false).await;
    let v0 = active(&r);
    let ask = || async { call_with(&r.gateway, with_client_key(chat("x"))).await };
    let last_key = || log.requests().last().map(|s| s.authorization.clone());
    assert_eq!(ask().await.status, 502);

    // The CA file is replaced (the config is not): the next check trusts what it holds now.
    std::fs::copy(format!("{FIXTURES}/ca.pem"), &ca).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    let got = ask().await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-config-version"), v0);
    assert_eq!(last_key().as_deref(), Some("Bearer sk-one"));

    // A rotated key, while pinned: a pin freezes the config, not its credentials. The
    // connection stays (same connector).
    r.reloader.pin(None).await.unwrap();
    std::fs::write(&key, "sk-two\n").unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    assert_eq!(ask().await.status, 200);
    assert_eq!(last_key().as_deref(), Some("Bearer sk-two"));
    assert!(r.reloader.status().pinned);
    assert_eq!(active(&r), v0);

    // A key file gone bad keeps the last good key, and says why.
    std::fs::write(&key, "").unwrap();
    r.reloader.reload_now().await;
    assert_eq!(ask().await.status, 200);
    assert_eq!(last_key().as_deref(), Some("Bearer sk-two"));
    let error = r.reloader.status().last_error.unwrap_or_default();
    assert!(error.contains("api-key") && error.contains("is empty"), "{error}");

    // Fixed: used, and the error is gone.
    std::fs::write(&key, "sk-three").unwrap();
    r.reloader.reload_now().await;
    assert_eq!(ask().await.status, 200);
    assert_eq!(last_key().as_deref(), Some("Bearer sk-three"));
    assert_eq!(r.reloader.status().last_error, None);
    assert_eq!(log.accepted(), 1);
    r.shutdown().await;
}
