//! The `mock` provider: a deterministic fake of the OpenAI and Anthropic wire formats whose
//! behaviour is chosen by the model name (see `behaviour.rs` and the README's table).
//!
//! [`respond`] produces a real HTTP response with a streaming body. The in-process provider
//! (`kind: mock`) calls it directly; `tidegate mock-provider --listen ADDR` serves the same
//! function over HTTP, so both modes share every behaviour. Per-model counters (calls, cancels,
//! completions) let tests assert "2 retries = 3 calls" and "a client disconnect cancelled the
//! upstream".

mod anthropic_wire;
pub mod behaviour;
mod openai_wire;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use serde::Serialize;
use tokio::sync::mpsc;

pub use behaviour::Behaviour;

/// Counters for one model name (or all of them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests received.
    pub calls: u64,
    /// Requests whose caller went away before the mock finished (before headers or mid-body).
    pub cancels: u64,
    /// Responses whose body was sent to the end.
    pub completed: u64,
}

/// Call counters shared by every request a mock provider serves.
#[derive(Debug, Default)]
pub struct MockStats {
    by_model: Mutex<HashMap<String, Counts>>,
}

impl MockStats {
    /// Counters for one exact model name.
    pub fn get(&self, model: &str) -> Counts {
        self.lock().get(model).copied().unwrap_or_default()
    }

    /// Counters summed over every model name.
    pub fn total(&self) -> Counts {
        self.lock().values().fold(Counts::default(), |a, c| Counts {
            calls: a.calls + c.calls,
            cancels: a.cancels + c.cancels,
            completed: a.completed + c.completed,
        })
    }

    /// Every model name with its counters.
    pub fn snapshot(&self) -> HashMap<String, Counts> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counts>> {
        // A poisoned lock only means a panic elsewhere; the counters are still usable.
        self.by_model.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a call and returns how many calls this model name had before it.
    fn call(&self, model: &str) -> u64 {
        let mut m = self.lock();
        let c = m.entry(model.to_owned()).or_default();
        c.calls += 1;
        c.calls - 1
    }

    fn bump(&self, model: &str, f: impl FnOnce(&mut Counts)) {
        f(self.lock().entry(model.to_owned()).or_default());
    }
}

/// The connection is dropped before any response (the mock's `reset` directive).
#[derive(Debug)]
pub struct Reset;

/// A body that broke mid-way (the mock's `cut` directive).
#[derive(Debug)]
pub struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock stream cut")
    }
}

impl std::error::Error for Cut {}

/// The mock's response body: whole, for an answer sent in one piece (served with a
/// `content-length`, head and body in one write, as providers answer), or fed by a task that
/// plays the behaviour's script.
pub struct MockBody {
    whole: Option<Bytes>,
    rx: Option<mpsc::Receiver<Result<Bytes, Cut>>>,
}

impl HttpBody for MockBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        if let Some(whole) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        match &mut this.rx {
            Some(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.whole.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.whole, &self.rx) {
            (Some(b), None) => http_body::SizeHint::with_exact(b.len() as u64),
            (None, None) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// Counts a cancel if dropped while armed (the caller gave up before the headers).
struct CancelGuard<'a> {
    stats: &'a MockStats,
    model: &'a str,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stats.bump(self.model, |c| c.cancels += 1);
        }
    }
}

/// Serves one request. `path` is relative to the API root (`/chat/completions`, `/embeddings`).
pub async fn respond(
    stats: &Arc<MockStats>,
    path: &str,
    body: &[u8],
) -> Result<Response<MockBody>, Reset> {
    // Errors in the wire the path speaks: an Anthropic client must get Anthropic's shape.
    let api = path.strip_prefix("/v1").unwrap_or(path);
    let error = |status: u16, message: &str, param: Option<&str>| {
        if api == "/messages" {
            anthropic_wire::error(status, message)
        } else {
            openai_wire::error(status, message, param, None)
        }
    };
    let req: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => return Ok(error(400, "request body is not a JSON object", None)),
        Err(e) => return Ok(error(400, &format!("request body is not valid JSON: {e}"), None)),
    };
    let model = req.get("model").and_then(|m| m.as_str()).unwrap_or("").to_owned();
    let prior_calls = stats.call(&model);
    let mut guard = CancelGuard { stats, model: &model, armed: true };
    let mut b = match Behaviour::parse(&model) {
        Ok(b) => b,
        Err(e) => {
            guard.armed = false;
            return Ok(error(400, &e, Some("model")));
        }
    };
    if b.fail_first.is_some_and(|n| prior_calls >= u64::from(n)) {
        b = b.healed();
    }
    tokio::time::sleep(b.latency).await;
    if b.reset {
        guard.armed = false;
        return Err(Reset);
    }
    if b.hang {
        std::future::pending::<()>().await;
    }
    guard.armed = false;
    drop(guard);
    // Relative to the API root: OpenAI-style bases end in /v1, Anthropic's do not.
    let script = match api {
        "/chat/completions" => openai_wire::chat(&req, &b),
        "/embeddings" => openai_wire::embeddings(&req, &b),
        "/messages" => anthropic_wire::messages(&req, &b),
        _ => return Ok(error(404, &format!("mock has no endpoint {path}"), None)),
    };
    Ok(play(stats.clone(), model, script))
}

/// What the body task does, step by step.
#[derive(Debug)]
pub(crate) enum Step {
    Send(Bytes),
    Sleep(std::time::Duration),
    /// Keep the connection open and send nothing more.
    Stall,
    /// Break the body.
    Cut,
}

/// Status, headers and body steps of one mock response.
pub(crate) struct Script {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub steps: Vec<Step>,
}

fn play(stats: Arc<MockStats>, model: String, script: Script) -> Response<MockBody> {
    let mut resp = Response::new(MockBody { whole: None, rx: None });
    *resp.status_mut() = StatusCode::from_u16(script.status).unwrap_or(StatusCode::OK);
    for (k, v) in script.headers {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    // One piece, after no wait (a stream's zero delays are kept: its chunks go one by one).
    let mut pieces = script.steps.iter().filter(|s| !matches!(s, Step::Sleep(d) if d.is_zero()));
    if let (Some(Step::Send(whole)), None) = (pieces.next(), pieces.next()) {
        resp.body_mut().whole = Some(whole.clone());
        stats.bump(&model, |c| c.completed += 1);
        return resp;
    }
    let (tx, rx) = mpsc::channel(8);
    resp.body_mut().rx = Some(rx);
    tokio::spawn(async move {
        let cancelled = tokio::select! {
            done = run_steps(&tx, script.steps) => !done,
            () = tx.closed() => true,
        };
        stats.bump(&model, |c| if cancelled { c.cancels += 1 } else { c.completed += 1 });
    });
    resp
}

/// Plays the steps; false if the receiver went away.
async fn run_steps(tx: &mpsc::Sender<Result<Bytes, Cut>>, steps: Vec<Step>) -> bool {
    for step in steps {
        match step {
            Step::Send(b) => {
                if tx.send(Ok(b)).await.is_err() {
                    return false;
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Stall => {
                tx.closed().await;
                return false;
            }
            Step::Cut => {
                let _ = tx.send(Err(Cut)).await;
                return true;
            }
        }
    }
    true
}
