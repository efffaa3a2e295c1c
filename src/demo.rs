//! `tidegate demo`: the gateway on the embedded demo config (mock providers, no keys), a short
//! scripted set of requests through a real HTTP client, and a table of what happened.

use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::app::{self, StartOptions};
use crate::config::Config;
use crate::proxy::record::LogSink;

/// The demo config, embedded so `tidegate demo` runs from any directory.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

struct Step {
    what: &'static str,
    path: &'static str,
    body: &'static str,
    content_type: &'static str,
    /// An `Idempotency-Key` to send.
    key: Option<&'static str>,
}

const STEPS: &[Step] = &[
    Step {
        what: "plain chat",
        path: "/v1/chat/completions",
        body: r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarize ticket 42"}]}"#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "streamed chat",
        path: "/v1/chat/completions",
        body: r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Stream it"}]}"#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "route by path, primary 503",
        path: "/r/flaky/v1/chat/completions",
        body: r#"{"model":"anything","messages":[{"role":"user","content":"Fail over"}]}"#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "echo route",
        path: "/v1/chat/completions",
        body: r#"{"model":"echo","messages":[{"role":"user","content":"hello tidegate"}]}"#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "embeddings",
        path: "/v1/embeddings",
        body: r#"{"model":"text-embedding-3-small","input":"tide"}"#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "output capped at 5 tokens",
        path: "/v1/chat/completions",
        body: r#"{"model":"capped","max_tokens":100,"messages":[{"role":"user","content":"Write a long essay"}]}"#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "Idempotency-Key job-7",
        path: "/v1/chat/completions",
        body: r#"{"model":"echo","messages":[{"role":"user","content":"charge once"}]}"#,
        content_type: "application/json",
        key: Some("job-7"),
    },
    Step {
        what: "same key, retried",
        path: "/v1/chat/completions",
        body: r#"{"model":"echo","messages":[{"role":"user","content":"charge once"}]}"#,
        content_type: "application/json",
        key: Some("job-7"),
    },
    Step {
        what: "malformed JSON",
        path: "/v1/chat/completions",
        body: r#"{"model": "gpt-4o-mini", "messages": ["#,
        content_type: "application/json",
        key: None,
    },
    Step {
        what: "unknown route header",
        path: "/v1/chat/completions",
        body: r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
        content_type: "application/json",
        key: None,
    },
];

/// Runs the demo; returns the process exit code.
pub async fn run() -> u8 {
    let mut config = match Config::from_bytes(
        std::path::Path::new("config/demo.yaml (embedded)"),
        DEMO_CONFIG.as_bytes(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    config.server.listen = ([127, 0, 0, 1], 0).into();
    let opts = StartOptions {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        log_sink: LogSink::Capture(Default::default()),
        state_dir: app::StateDir::InMemory,
        admin_token: None,
        watch: false,
        workers: None,
    };
    let running = match app::start(config, opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate demo: {e}");
            return 2;
        }
    };
    let client = match crate::providers::client::build(std::time::Duration::from_secs(2)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidegate demo: {e}");
            return 2;
        }
    };
    println!(
        "tidegate demo: gateway on http://{} (admin http://{}), mock providers, config {}\n",
        running.data_addr,
        running.admin_addr,
        running.gateway.snapshot().config.version
    );
    println!(
        "{:<27} {:<10} {:<8} {:<32} {:>6} {:>7} {:>7}  note",
        "request", "route", "provider", "model", "status", "tokens", "ms"
    );
    let mut failures = 0;
    for (i, s) in STEPS.iter().enumerate() {
        let mut req = Request::post(format!("http://{}{}", running.data_addr, s.path))
            .header("content-type", s.content_type);
        if i == STEPS.len() - 1 {
            req = req.header("x-tidegate-route", "does-not-exist");
        }
        if let Some(k) = s.key {
            req = req.header("idempotency-key", k);
        }
        let Ok(req) = req.body(Full::new(Bytes::from_static(s.body.as_bytes()))) else { continue };
        let t = Instant::now();
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                println!("{:<28} request failed: {e}", s.what);
                failures += 1;
                continue;
            }
        };
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let h =
            |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let tokens = tokens_of(&bytes);
        let mut note = String::new();
        if let Some(f) = parts.headers.get("x-tidegate-fallback").and_then(|v| v.to_str().ok()) {
            note = format!("fallback {f}, {} attempts", h("x-tidegate-attempts"));
        }
        if let Some(c) = parts.headers.get("x-tidegate-error-code").and_then(|v| v.to_str().ok()) {
            note = format!("error {c}");
        }
        if bytes.starts_with(b"data:") {
            let chunks = bytes.split(|&b| b == b'\n').filter(|l| l.starts_with(b"data:")).count();
            note = format!("{chunks} SSE events");
        } else if let Some(text) = content_of(&bytes) {
            note = if note.is_empty() { format!("{text:?}") } else { note };
        }
        if bytes.windows(19).any(|w| w == br#""finish_reason":"le"#) {
            note = format!("{note}, cut at the route's max_output_tokens");
        }
        if parts.headers.contains_key("x-tidegate-idempotent-replay") {
            note = format!("replayed, no upstream call: {note}");
        }
        println!(
            "{:<27} {:<10} {:<8} {:<32} {:>6} {:>7} {:>7.1}  {note}",
            s.what,
            h("x-tidegate-route"),
            h("x-tidegate-provider"),
            h("x-tidegate-model"),
            parts.status.as_u16(),
            tokens,
            ms
        );
    }
    println!(
        "\nEvery request got a request id, the config version header and a structured log line:"
    );
    if let Some(line) = running.gateway.log_sink.lines().into_iter().nth(2) {
        println!("  {line}");
    }
    // The admin plane goes away with the demo: show what it was counting instead of its URL.
    println!("\nand Prometheus metrics (admin plane, /metrics), for example:");
    let text = String::from_utf8_lossy(&running.gateway.metrics.render()).into_owned();
    let counted = |l: &&str| l.starts_with("tidegate_requests_total{") && !l.ends_with(" 0");
    for line in text.lines().filter(counted) {
        println!("  {line}");
    }
    println!(
        "\nTo keep it running: `tidegate serve --config config/demo.yaml` (data plane on 127.0.0.1:8080, metrics at http://127.0.0.1:9090/metrics)."
    );
    running.shutdown().await;
    if failures > 0 { 2 } else { 0 }
}

fn tokens_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (v.pointer("/usage/prompt_tokens"), v.pointer("/usage/completion_tokens")) {
        (Some(i), Some(o)) => format!("{i}/{o}"),
        (Some(i), None) => format!("{i}/-"),
        _ => "-".into(),
    }
}

fn content_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = v.pointer("/choices/0/message/content")?.as_str()?;
    let short: String = s.chars().take(30).collect();
    Some(if short.len() < s.len() { format!("{short}…") } else { short })
}
