//! Test helpers: build a gateway from YAML, call it in-process, start it on real sockets.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tidegate::app::{self, Running, StartOptions};
use tidegate::config::Config;
use tidegate::gateway::Gateway;
use tidegate::proxy::record::LogSink;

pub fn config(yaml: &str) -> Config {
    Config::from_bytes(Path::new("test.yaml"), yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn gateway(yaml: &str) -> Arc<Gateway> {
    Gateway::new(config(yaml), LogSink::Capture(Default::default())).unwrap()
}

/// A response read to its end.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, k: &str) -> &str {
        self.headers.get(k).map_or("", |v| v.to_str().unwrap())
    }
    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }
    /// The concatenated `delta.content` of an OpenAI stream.
    pub fn stream_text(&self) -> String {
        self.events()
            .iter()
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/content").and_then(|c| c.as_str()).map(str::to_owned)
            })
            .collect()
    }
    /// Asserts the SPEC's OpenAI error shape and returns the code.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let code =
            v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code: {v}")).to_owned();
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        assert_eq!(self.header("x-tidegate-error-code"), code);
        code
    }
}

pub async fn call_with(gw: &Arc<Gateway>, req: Request<Full<Bytes>>) -> Got {
    let resp = gw.handle(req).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

pub async fn post(gw: &Arc<Gateway>, path: &str, body: &str) -> Got {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    call_with(gw, req).await
}

pub async fn get(gw: &Arc<Gateway>, path: &str) -> Got {
    call_with(gw, Request::get(path).body(Full::new(Bytes::new())).unwrap()).await
}

pub fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hello there"}}]}}"#)
}

pub fn chat_stream(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"Hello there"}}]}}"#
    )
}

/// Starts the gateway on loopback sockets with ephemeral ports.
pub async fn start(yaml: &str) -> Running {
    start_with_workers(yaml, None).await
}

/// [`start`], with the data plane on `workers` threads of its own (as `tidegate serve` runs
/// it) when given.
pub async fn start_with_workers(yaml: &str, workers: Option<usize>) -> Running {
    let opts = StartOptions {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        log_sink: LogSink::Capture(Default::default()),
        state_dir: app::StateDir::InMemory,
        admin_token: Some(String::new()),
        watch: false,
        workers,
    };
    app::start(config(yaml), opts).await.unwrap()
}

/// A one-target config on the in-process mock with the given route options.
pub fn single(model: &str, route_extra: &str) -> String {
    format!(
        "providers:\n  sim: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: sim, model: \"{model}\"}}]\n{route_extra}"
    )
}

/// A primary and a backup on two mock providers.
pub fn pair(primary: &str, backup: &str, route_extra: &str) -> String {
    format!(
        "providers:\n  sim: {{kind: mock}}\n  backup: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    targets:\n      - {{provider: sim, model: \"{primary}\"}}\n      - {{provider: backup, model: \"{backup}\"}}\n{route_extra}"
    )
}

/// The value of one metric series in the Prometheus text, 0 when absent.
pub fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// `tidegate_requests_total` summed over every series (route, version) with this outcome.
pub fn requests_with_outcome(gw: &Gateway, outcome: &str) -> f64 {
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    let label = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with("tidegate_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `event:` names and parsed `data:` payloads of an Anthropic stream.
pub fn anthropic_events(got: &Got) -> Vec<(String, serde_json::Value)> {
    got.text()
        .split("\n\n")
        .filter_map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

/// `tidegate serve --config CFG --state-dir DIR` as a child process, output discarded.
pub fn spawn_serve(cfg: &Path, dir: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["serve", "--config"])
        .arg(cfg)
        .arg("--state-dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A blocking `GET path` on loopback `port` with `headers` (lines without CRLF), the whole
/// response as text; `None` when the connection fails.
pub fn http_get_with(port: u16, path: &str, headers: &[&str]) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_with(port, path, &[])
}

/// What a [`capture_upstream`] was sent: path, headers and JSON body of each request.
pub type Captured = Arc<std::sync::Mutex<Vec<(String, HeaderMap, serde_json::Value)>>>;

/// An upstream on loopback that records each request and answers a fixed, valid answer in the
/// wire its path asks for: an Anthropic message on `/v1/messages`, else a chat completion.
pub async fn capture_upstream() -> (std::net::SocketAddr, Captured) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let seen: Captured = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let log = log.clone();
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let log = log.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let headers = req.headers().clone();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let json = serde_json::from_slice(&body).unwrap_or_default();
                    log.lock().unwrap().push((path.clone(), headers, json));
                    let body = if path == "/v1/messages" {
                        r#"{"id":"msg_1","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#
                    } else {
                        r#"{"id":"c1","object":"chat.completion","created":1,"model":"o","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#
                    };
                    let resp = http::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc),
            );
        }
    });
    (addr, seen)
}
