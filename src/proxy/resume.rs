//! Finishing a stream that broke after the commit point (SPEC §5 "Resume").
//!
//! The client already holds part of the answer; tidegate cannot take it back, so it tries to
//! deliver the rest within the same deadline:
//! 1. **continuation**: a target that accepts prefill (Anthropic natively, OpenAI-compatible
//!    servers with `supports_prefill: true`) gets the request plus the text already sent as a
//!    trailing assistant message, and everything it streams is forwarded;
//! 2. **splice**: where prefill is unavailable or rejected, the request is restarted and the new
//!    stream held back until it has covered the text already sent; if it begins with exactly
//!    that text, only the remainder is forwarded;
//! 3. otherwise the caller ends the stream with the error event.
//!
//! Text answers are resumed for both dialects; a stream broken inside a tool call gets the error
//! event. An Anthropic client's resumed text continues its open text block (or a new one).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};

use super::ask::{Ask, Prepared};
use super::attempt::{self, Attempt, Endpoint, OpenStream, Opened, Waited};
use super::classify::Next;
use super::forward::Forward;
use super::peek::{self, ChunkPeek};
use super::request::{ChatRequest, MessagesRequest};
use crate::config::Wire;
use crate::error::Dialect;
use crate::routing::health::{Admission, Outcome};
use crate::runtime::{Snapshot, TargetRuntime};
use crate::translate::finish::openai_finish_reason;

mod output;

use output::{Shape, close, emit_text};

/// What a stream task needs to start new attempts on its own.
/// (Budgets, limits and breakers are the gateway's: [`Forward::gw`].)
pub struct ResumeKit {
    pub snap: Arc<Snapshot>,
    pub route: usize,
    /// The target that was streaming when it broke.
    pub target: usize,
    /// The client's request body.
    pub raw: Bytes,
    pub include_usage: bool,
    /// The client's headers that go on upstream ([`Prepared::pass_on`]).
    pub pass_on: crate::providers::PassOn,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Continuation,
    Splice,
}

impl Mode {
    fn tier(self) -> &'static str {
        match self {
            Self::Continuation => "continuation",
            Self::Splice => "splice",
        }
    }
}

/// How one resume try ended.
pub enum Resumed {
    /// The answer was completed.
    Complete,
    /// The client left meanwhile.
    ClientGone,
    /// `server.shutdown_grace` ended meanwhile: the stream is cut (`End::Shutdown`).
    Shutdown,
}

/// The client's request with the text already sent appended as an assistant message (prefill).
fn request_with(raw: &Bytes, prefill: Option<&str>) -> Option<Bytes> {
    let Some(text) = prefill else { return Some(raw.clone()) };
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    v.get_mut("messages")?.as_array_mut()?.push(json!({"role": "assistant", "content": text}));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

async fn open(
    kit: &ResumeKit,
    ti: usize,
    t: &TargetRuntime,
    prefill: Option<&str>,
    deadline: Instant,
    fwd: &mut Forward,
) -> Result<OpenStream, (Next, &'static str)> {
    let route = &kit.snap.routes[kit.route];
    let bytes = request_with(&kit.raw, prefill).ok_or((Next::Stop, "malformed"))?;
    let parsed = match fwd.dialect {
        Dialect::OpenAi => ChatRequest::parse(&bytes).map(Ask::Chat),
        Dialect::Anthropic => MessagesRequest::parse(&bytes).map(Ask::Messages),
    };
    let mut ask =
        parsed.and_then(|a| Prepared::new(a, &bytes)).map_err(|_| (Next::Stop, "malformed"))?;
    // The route's output limit holds for the resumed call too; a continuation has already
    // produced part of it (about 4 bytes a token).
    let produced = prefill.map_or(0, |p| p.len() as u64 / 4);
    ask.clamp_output(
        route.route.limits.max_output_tokens.map(|m| m.saturating_sub(produced).max(1)),
    );
    // This attempt's ask differs from any before it (prefill, output limit): reserve for it.
    if let Some(h) = fwd.rec.spend.held.take() {
        h.settle(0, fwd.rec.route.as_deref());
    }
    // Admitted like any attempt: budgets, limits, then the breaker.
    let gw = fwd.gw.clone();
    super::admit::target(route, ti, t, &ask, &gw.shared, &mut fwd.rec)
        .await
        .map_err(|skip| (Next::NextTarget, skip.reason()))?;
    let body = ask
        .body_for(t, &kit.snap.config, route.route.drop_unsupported_params)
        .map_err(|_| (Next::NextTarget, "untranslatable"))?;
    // An open breaker (or a 429 cooldown) is honoured here too; a probe it allows is reported.
    let health = &gw.shared.health;
    let admission = health.admit(&t.target.provider, &t.target.model);
    if let Admission::Skip { reason, .. } = admission {
        return Err((Next::NextTarget, reason));
    }
    let attempt = Attempt {
        target: t,
        endpoint: Endpoint::Chat,
        body,
        stream: true,
        timeouts: &route.route.timeouts,
        deadline,
        pass_on: &kit.pass_on,
    };
    let mut waited = Waited::default();
    fwd.rec.begin_attempt(&t.series);
    let result = attempt.run(&mut waited).await;
    fwd.rec.upstream_wait += waited.upstream;
    fwd.rec.upstream_request_id(waited.upstream_request_id.take());
    let detail = || detail_of(prefill.is_some()).to_owned();
    match result {
        // Under way until its stream ends (`resume` ends it). A half-open breaker's probe
        // closes it as the answer begins, as in the failover loop.
        Ok(Opened::Stream(s)) => {
            if admission == Admission::Probe {
                super::failover::tell_breaker(
                    health,
                    fwd.rec.metrics(),
                    &t.series,
                    Outcome::Success,
                );
            }
            Ok(*s)
        }
        Ok(Opened::Complete { .. }) => {
            fwd.end_attempt("error", "content_type", Outcome::Failure, detail());
            Err((Next::NextTarget, "content_type"))
        }
        Err(f) => {
            let verdict = super::failover::failure_verdict(&f, fwd.client_idle);
            super::failover::tell_breaker(health, fwd.rec.metrics(), &t.series, verdict);
            fwd.rec.end_attempt("error", f.reason, f.status, detail());
            if super::failover::billable(&f) {
                let route = fwd.rec.route.clone();
                fwd.rec.spend.charge_failed(&t.series, route.as_deref());
            }
            Err((f.next, f.reason))
        }
    }
}

/// The log detail of a resume attempt.
fn detail_of(continuation: bool) -> &'static str {
    if continuation { "resume by continuation" } else { "resume by splice" }
}

/// Forwards the new stream's text (after the overlap, for a splice) and closes the answer.
async fn forward_rest(
    fwd: &mut Forward,
    mut s: OpenStream,
    wire: Wire,
    shape: &Shape<'_>,
    mode: Mode,
) -> Result<Resumed, &'static str> {
    let sent = fwd.sent_text.clone();
    let mut pending = String::new();
    let mut splicing = mode == Mode::Splice;
    let mut events: Vec<(Option<String>, Bytes)> = std::mem::take(&mut s.held);
    let mut usage = s.usage;
    let mut finish: Option<String> = None;
    // The shutdown that cuts open streams: one waiter for the whole stream (as in the first
    // attempt's pump), polled only while no frame is ready, and checked before each wait.
    let stop_token = fwd.gw.stop_streams.clone();
    let mut stop = std::pin::pin!(stop_token.cancelled());
    'stream: loop {
        for (name, data) in events.drain(..) {
            let peeked = attempt::classify(wire, name.as_deref(), &data);
            // Whole once its finish came, whatever the stream sends after it.
            if finish.is_some() && matches!(peeked, None | Some(ChunkPeek::Error(_))) {
                break 'stream;
            }
            match peeked.ok_or("malformed")? {
                ChunkPeek::Error(_) => return Err("error_event"),
                ChunkPeek::Done => break 'stream,
                ChunkPeek::Chunk { text, finish: f, usage: u, tool, .. } => {
                    if tool {
                        return Err("tool_call");
                    }
                    usage = peek::merge_usage(usage, u);
                    fwd.rec.spend.resumed_usage = usage;
                    if let Some(f) = f {
                        finish = Some(if wire == Wire::Anthropic {
                            openai_finish_reason(&f).to_owned()
                        } else {
                            f
                        });
                    }
                    let Some(text) = text.map(std::borrow::Cow::into_owned) else { continue };
                    let piece = if splicing {
                        pending.push_str(&text);
                        // Held back, but generated (and billed): it counts toward the estimate
                        // of this attempt's output (the rest is counted as it is sent).
                        let held =
                            text.len().min(sent.len().saturating_sub(pending.len() - text.len()));
                        fwd.rec.spend.streamed_bytes += held as u64;
                        if pending.len() < sent.len() {
                            if !sent.starts_with(&pending) {
                                return Err("diverged");
                            }
                            continue;
                        }
                        if !pending.starts_with(&sent) {
                            return Err("diverged");
                        }
                        splicing = false;
                        pending[sent.len()..].to_owned()
                    } else {
                        text
                    };
                    if !piece.is_empty() {
                        fwd.sent_text.push_str(&piece);
                        emit_text(fwd, shape, &piece);
                    }
                }
            }
        }
        if !fwd.flush().await {
            return Ok(Resumed::ClientGone);
        }
        loop {
            match s.decoder.next_event() {
                Ok(Some(ev)) => events.push((ev.event, ev.data)),
                Ok(None) => break,
                Err(_) if finish.is_some() => break 'stream,
                Err(_) => return Err("malformed"),
            }
        }
        if !events.is_empty() {
            continue;
        }
        let waiting = Instant::now();
        let limit = fwd.deadline.min(s.attempt_end);
        let wait_end = (waiting + fwd.idle).min(limit);
        if stop_token.is_cancelled() {
            return Ok(Resumed::Shutdown);
        }
        let frame = tokio::select! {
            biased;
            () = fwd.tx.closed() => return Ok(Resumed::ClientGone),
            f = timeout_at(wait_end, s.body.frame()) => f,
            () = &mut stop => return Ok(Resumed::Shutdown),
        };
        fwd.rec.upstream_wait += waiting.elapsed();
        match frame {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    s.decoder.feed(&d);
                }
            }
            // Whole once its finish came, whatever happens to the stream after it.
            Ok(None | Some(Err(_))) | Err(_) if finish.is_some() => break 'stream,
            Ok(None | Some(Err(_))) => return Err("cut"),
            Err(_) => {
                let now = Instant::now();
                return Err(super::stream_end::timer_reason(
                    now,
                    fwd.deadline,
                    limit,
                    now - waiting,
                    fwd.idle,
                ));
            }
        }
    }
    close(fwd, shape, finish.as_deref().unwrap_or("stop"), usage, splicing).await
}

/// Tries continuation, then splice, on the failed target (while `retries.per_target` allows
/// another try of it) and the ones after it. `broke`: why the stream broke (a stream cut by
/// `timeouts.attempt` is continued only, never spliced).
pub async fn resume(fwd: &mut Forward, broke: &'static str) -> Option<Resumed> {
    let kit = fwd.resume.take()?;
    if fwd.in_tool || fwd.sent_text.is_empty() || Instant::now() >= fwd.deadline {
        return None;
    }
    // A stalled upstream may still be generating (and holds its connection): stop it.
    fwd.stream.body.close();
    let route = &kit.snap.routes[kit.route];
    // The broken attempt answered in part: its cost is the request's, its reservation settles.
    let (served, usage, series) = (fwd.rec.served_by.clone(), fwd.rec.usage, fwd.rec.route.clone());
    fwd.rec.spend.close_attempt(served.as_deref(), usage.as_ref(), series.as_deref());
    for (ti, t) in route.targets.iter().enumerate().skip(kit.target) {
        if Instant::now() >= fwd.deadline {
            return None;
        }
        // A target gets 1 + `retries.per_target` calls in all, resumes included: with no
        // retries, the target that just broke is not called again.
        let (p, m) = (&*t.series.provider, &*t.series.model);
        let tries = fwd.rec.attempts.iter().filter(|a| &*a.provider == p && &*a.model == m);
        if tries.count() > route.route.retries.per_target as usize {
            continue;
        }
        let wire = t.provider.spec.wire;
        let mut modes = Vec::with_capacity(2);
        if t.provider.spec.supports_prefill {
            modes.push(Mode::Continuation);
        }
        // A stream cut for running past `timeouts.attempt` is not restarted from scratch: the
        // restart would have to regenerate all it had sent, about as long as the attempt that
        // just ran out, before adding anything (a second paid generation cut the same way).
        if !broke.starts_with("timeout_attempt") {
            modes.push(Mode::Splice);
        }
        for mode in modes {
            // `retries.total` caps the route's upstream calls, resumed ones included.
            if fwd.rec.attempts.len() >= route.route.retries.total as usize {
                return None;
            }
            let prefill = (mode == Mode::Continuation).then(|| fwd.sent_text.clone());
            // The resumed answer must begin within the gap the client waits: `idle` for each
            // try, or, when that is the client's read timeout (shorter than the route's idle:
            // `Deadlines::new`), from the last bytes it got over every try. Its leaving ends
            // the try.
            let gap_from = if fwd.client_idle { fwd.last_sent } else { Instant::now() };
            let gap_end = (gap_from + fwd.idle).min(fwd.deadline);
            let tx = fwd.tx.clone();
            let stop = fwd.gw.stop_streams.clone();
            let opened = tokio::select! {
                biased;
                () = tx.closed() => return Some(Resumed::ClientGone),
                () = stop.cancelled() => return Some(Resumed::Shutdown),
                o = open(&kit, ti, t, prefill.as_deref(), gap_end, fwd) => o,
            };
            match opened {
                Ok(stream) => {
                    fwd.rec.served_by = Some(t.series.clone());
                    fwd.rec.spend.begin_resumed();
                    let shape =
                        Shape::new(fwd.first_out.as_ref(), &t.target.model, kit.include_usage);
                    let detail = detail_of(mode == Mode::Continuation).to_owned();
                    match forward_rest(fwd, stream, wire, &shape, mode).await {
                        Ok(Resumed::Complete) => {
                            fwd.end_attempt("ok", "stream_resume", Outcome::Success, detail);
                            // A fallback served the rest of the answer: counted once, and
                            // named in the log line (the response head has long gone).
                            let name = &route.route.name;
                            let _ = fwd.rec.fallback(name, mode.tier(), "stream_resume");
                            fwd.rec.outcome = "fallback";
                            tracing::info!(route = %name, provider = %t.target.provider, tier = mode.tier(), "stream resumed after the commit point");
                            return Some(Resumed::Complete);
                        }
                        Ok(Resumed::ClientGone) => {
                            let reason = fwd.client_left();
                            fwd.end_attempt("aborted", reason, Outcome::Neutral, detail);
                            return Some(Resumed::ClientGone);
                        }
                        Ok(Resumed::Shutdown) => {
                            fwd.end_attempt("aborted", "shutdown", Outcome::Neutral, detail);
                            return Some(Resumed::Shutdown);
                        }
                        Err(reason) => {
                            let verdict =
                                super::stream_end::stream_verdict(reason, fwd.client_idle);
                            fwd.end_attempt("error", reason, verdict, detail);
                        }
                    }
                    // It broke again (or diverged): what was forwarded meanwhile is in
                    // `sent_text`, and this attempt's cost is the request's; try the next target.
                    let (served, usage, series) =
                        (fwd.rec.served_by.clone(), fwd.rec.usage, fwd.rec.route.clone());
                    fwd.rec.spend.close_attempt(
                        served.as_deref(),
                        usage.as_ref(),
                        series.as_deref(),
                    );
                    break;
                }
                // Prefill rejected (a 400 about the trailing assistant message): splice next.
                Err((Next::Stop, _)) if mode == Mode::Continuation => continue,
                Err(_) => break,
            }
        }
    }
    None
}
