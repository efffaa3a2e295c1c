//! `tidegate config status|pin [VERSION]|unpin|rollback`: a thin client of the admin API that
//! prints a readable summary. Exit codes: 0 ok, 1 invalid input (unknown version, any 4xx),
//! 2 runtime failure (cannot connect, 5xx, an answer that is not the expected document).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// One `config` action.
#[derive(Debug, Clone)]
pub enum Action {
    Status,
    Pin(Option<String>),
    Unpin,
    Rollback,
}

/// Runs `action` against the admin plane at `admin` (e.g. `http://127.0.0.1:9090`) and prints
/// the result; returns the exit code.
pub async fn run(action: Action, admin: &str, token: Option<String>) -> u8 {
    let base = admin.trim_end_matches('/');
    let (method, path, body) = match &action {
        Action::Status => (Method::GET, "/admin/config", String::new()),
        Action::Pin(v) => {
            let body = match v {
                Some(v) => serde_json::json!({ "version": v }).to_string(),
                None => "{}".to_owned(),
            };
            (Method::POST, "/admin/config/pin", body)
        }
        Action::Unpin => (Method::POST, "/admin/config/unpin", String::new()),
        Action::Rollback => (Method::POST, "/admin/config/rollback", String::new()),
    };
    let url = format!("{base}{path}");
    let uri = match url.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.authority().is_some() => u,
        Ok(_) => {
            eprintln!("tidegate: bad admin URL {url:?}: expected http://HOST:PORT");
            return 1;
        }
        Err(e) => {
            eprintln!("tidegate: bad admin URL {url:?}: {e}");
            return 1;
        }
    };
    let mut req = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    // Trimmed as serve trims it (a Secret file's trailing newline).
    let token = match token.as_deref().map(crate::app::clean_token).transpose() {
        Ok(t) => t.filter(|t| !t.is_empty()),
        Err(e) => {
            eprintln!("tidegate: the admin token (--token or $TIDEGATE_ADMIN_TOKEN) {e}");
            return 1;
        }
    };
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match req.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate: cannot build the request to {url:?}: {e}");
            return 1;
        }
    };
    let client = match crate::providers::client::build(Duration::from_secs(2)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidegate: {e}");
            return 2;
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, bytes))
    })
    .await;
    let (status, bytes) = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("tidegate: cannot reach the admin plane at {base}: {e}");
            return 2;
        }
        Err(_) => {
            eprintln!("tidegate: the admin plane at {base} did not answer within 30s");
            return 2;
        }
    };
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        let msg = json
            .as_ref()
            .and_then(|v| v.pointer("/error/message"))
            .and_then(Value::as_str)
            .map_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned(), str::to_owned);
        eprintln!("tidegate: {status}: {msg}");
        return if status.is_client_error() { 1 } else { 2 };
    }
    match json {
        Some(doc) if doc.get("active").is_some() => {
            print!("{}", summary(&doc));
            0
        }
        _ => {
            eprintln!(
                "tidegate: unexpected answer from {url}: {}",
                String::from_utf8_lossy(&bytes)
            );
            2
        }
    }
}

/// `e: cause: cause`, since hyper's top-level message alone ("client error (Connect)") does
/// not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(&format!(": {c}"));
        cur = c.source();
    }
    out
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn line(v: &Value) -> String {
    let label = match v.get("label").and_then(Value::as_str) {
        Some(l) => format!(" ({l})"),
        None => String::new(),
    };
    format!(
        "{}{label}  {}  {}  {}",
        s(v, "version"),
        s(v, "outcome"),
        s(v, "loaded_at"),
        s(v, "source")
    )
}

/// The readable form of an `/admin/config` document.
pub fn summary(doc: &Value) -> String {
    let active = &doc["active"];
    let mut out = format!("active:      {}\n", line(active));
    let pinned = doc["pinned"].as_bool().unwrap_or(false);
    out.push_str(&format!("pinned:      {}\n", if pinned { "yes" } else { "no" }));
    let list = |key: &str| doc[key].as_array().cloned().unwrap_or_default();
    let candidates = list("candidates");
    if candidates.is_empty() {
        out.push_str("candidates:  none\n");
    } else {
        out.push_str("candidates (newest first; `tidegate config unpin` activates the first):\n");
        for c in &candidates {
            out.push_str(&format!("  {}\n", line(c)));
        }
    }
    let err = doc["last_error"].as_str().unwrap_or("none");
    out.push_str(&format!("last error:  {err}\n"));
    if let Some(r) = doc["restart_required"].as_str() {
        out.push_str(&format!("restart:     {r}\n"));
    }
    match (doc["state"]["dir"].as_str(), doc["state"]["warning"].as_str()) {
        (_, Some(w)) => out.push_str(&format!("state:       {w}\n")),
        (Some(d), None) => out.push_str(&format!("state:       {d} (the pin survives restarts)\n")),
        (None, None) => {
            out.push_str("state:       in memory (the pin does not survive a restart)\n")
        }
    }
    out.push_str("history (newest first):\n");
    for h in list("history") {
        let mark = if h["version"] == active["version"] { "*" } else { " " };
        out.push_str(&format!(" {mark} {}\n", line(&h)));
    }
    out
}
