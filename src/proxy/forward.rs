//! Forwarding a committed stream to the client.
//!
//! Runs as its own task feeding the response body's channel. Events are re-framed with minimal
//! work (the payload bytes are forwarded as they came); the usage chunk tidegate asked for is
//! stripped when the client did not ask for it. An upstream failure after the commit point ends
//! the stream with an error event and no `[DONE]`, never a clean-looking truncation. A client
//! disconnect (the body's receiver dropped) is noticed even while the upstream is silent, and
//! drops the upstream connection at once. The loop that moves frames is in `pump.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

mod pump;

use super::attempt::{self, OpenStream};
use super::emit::Emitter;
use super::peek::{self, ChunkPeek};
use super::record::RequestRecord;
use super::resume::{self, ResumeKit, Resumed};
use super::stream_end::{End, RESUMABLE, stream_verdict, upstream};
use crate::cache::AnswerCache;
use crate::config::Wire;
use crate::error::{Dialect, GatewayError};
use crate::routing::health::Outcome;

/// A streamed answer being collected for the cache tier.
pub struct Capture {
    pub cache: Arc<AnswerCache>,
    pub key: [u8; 32],
    pub text: String,
    pub model: String,
    /// The answer is not plain text (a tool call), or grew past the cache's size cap.
    pub tainted: bool,
}

pub struct Forward {
    /// Set when the route has a cache tier.
    pub capture: Option<Capture>,
    pub stream: OpenStream,
    pub tx: mpsc::Sender<Bytes>,
    pub rec: RequestRecord,
    pub deadline: Instant,
    pub idle: Duration,
    /// The upstream's wire format.
    pub wire: Wire,
    /// Turns upstream events into the client's dialect.
    pub emitter: Emitter,
    pub dialect: Dialect,
    /// Events decoded from one upstream read, sent to the client as one chunk: one wake and
    /// one write instead of one per event, with no added delay.
    pub out: BytesMut,
    /// Set when the route resumes broken streams (`resume: auto`).
    pub resume: Option<ResumeKit>,
    /// The answer text the client has received (kept only when resuming is possible).
    pub sent_text: String,
    /// When the client was last sent bytes (a resume bounded by the client's read timeout
    /// counts its gap from then).
    pub last_sent: Instant,
    /// The first bytes an OpenAI client received (kept only when resuming is possible): a
    /// resumed stream's chunks carry the same `id` and `created`.
    pub first_out: Option<Bytes>,
    /// The answer includes a tool call: never resumed.
    pub in_tool: bool,
    /// Anthropic clients: content blocks started and stopped so far in the client's stream, so
    /// a resumed answer continues the open text block (blocks are numbered 0, 1, ...).
    pub blocks_started: u64,
    pub blocks_stopped: u64,
    /// Set when the held events ended the stream ([`Forward::prime`]): `Ok` for a clean end
    /// (finish it), `Err` for a failure.
    pub(super) primed: Option<Result<(), End>>,
    /// The circuit breakers, told how each streamed attempt ended.
    pub gw: Arc<crate::gateway::Gateway>,
    /// `idle` is the client's read timeout (shorter than the route's `timeouts.idle`): a gap
    /// that long is no failure of the target's.
    pub client_idle: bool,
    /// The streaming target's credential: an upstream error event that echoes it is redacted
    /// before it reaches the client or the log.
    pub key: Option<crate::providers::Secret>,
    /// Set to make the response body end with an error rather than cleanly.
    pub abort: crate::body::Abort,
    /// The stream's first chunk, kept when an OpenAI client asked for usage from an OpenAI-wire
    /// upstream: if the upstream sends none, the estimate's chunk takes its id and model.
    pub(super) first_chunk: Option<bytes::Bytes>,
    /// The client stopped reading (its connection open) until the deadline passed: the stream
    /// ends as if the client had gone, but its body is aborted and the record says why.
    pub(super) stalled: bool,
    /// Choices the client asked for (`n`), and how many have finished: the answer is whole
    /// once every one has ([`Forward::whole`]).
    pub(super) choices: u32,
    pub(super) finished: u32,
}

impl Forward {
    /// Every choice has its finish: whatever the stream does next (breaks, goes silent, sends
    /// an error or garbage instead of its usage and `[DONE]`), the answer is whole, and
    /// resuming it would send text after its finish.
    pub(super) fn whole(&self) -> bool {
        self.stream.finish.is_some() && self.finished >= self.choices
    }

    /// Queues the events held at the commit point and hands them to the response body before
    /// the response is returned, so the head and the first events leave in one write. Call
    /// before spawning [`Forward::run`].
    pub fn prime(&mut self) {
        let held = std::mem::take(&mut self.stream.held);
        for (name, data) in held {
            match self.queue(name.as_deref(), &data) {
                Ok(false) => {}
                Ok(true) => {
                    self.primed = Some(Ok(()));
                    break;
                }
                Err(end) => {
                    self.primed = Some(Err(end));
                    break;
                }
            }
        }
        if self.primed.is_none() && !self.out.is_empty() {
            let chunk = self.out.split().freeze();
            if self.resume.is_some() && self.dialect == Dialect::OpenAi {
                self.first_out = Some(chunk.clone());
            }
            if self.tx.try_send(chunk.clone()).is_ok() {
                if let Some(c) = &mut self.rec.idem {
                    c.push(&chunk);
                }
            } else {
                // Not on a fresh channel; the pump sends it (or notices the client left).
                self.out.extend_from_slice(&chunk);
            }
        }
    }

    /// Boxed: the task's future then holds a pointer, not the whole `Forward` (twice, as the
    /// argument and as the `mut` binding), which the runtime copies when it moves the task.
    pub async fn run(mut self: Box<Self>) {
        self.respond().await;
        // Every end `respond` makes is deliberate (an aborted one stays aborted); a panic or
        // the task being dropped never gets here, and the body then ends with an error.
        self.abort.end_cleanly();
        // The client has its answer and the request is recorded (on drop); what remains of a
        // complete upstream body is waited out here to keep its connection.
        let tail = self.stream.body.take_tail();
        drop(self);
        if let Some(tail) = tail {
            tail.wait().await;
        }
    }

    /// Ends the streamed attempt under way: logged with how it ended and its whole duration,
    /// and its target's breaker told.
    pub(super) fn end_attempt(
        &mut self,
        outcome: &'static str,
        reason: &'static str,
        verdict: Outcome,
        detail: String,
    ) {
        if let Some(t) = self.rec.attempt_in_flight().cloned() {
            super::failover::tell_breaker(&self.gw.shared.health, self.rec.metrics(), &t, verdict);
        }
        self.rec.end_attempt(outcome, reason, Some(200), detail);
    }

    async fn respond(&mut self) {
        let mut end = self.pump().await;
        if let (End::Upstream { detail, .. }, Some(key)) = (&mut end, &self.key)
            && let Some(clean) = key.redact(detail)
        {
            *detail = clean;
        }
        match &end {
            End::Complete => self.end_attempt("ok", "ok", Outcome::Success, String::new()),
            End::ClientGone => {
                let reason = self.client_left();
                self.end_attempt("aborted", reason, Outcome::Neutral, String::new());
            }
            End::Shutdown => {
                self.end_attempt("aborted", "shutdown", Outcome::Neutral, String::new());
            }
            End::Upstream { reason, detail, .. } => {
                let verdict = stream_verdict(reason, self.client_idle);
                self.end_attempt("error", reason, verdict, detail.clone());
            }
        }
        if let End::Upstream { reason, .. } = &end
            && RESUMABLE.contains(reason)
            && self.resume.is_some()
        {
            let broke = *reason;
            // What arrived before the break goes out first: it is part of `sent_text`.
            end = if !self.flush().await {
                End::ClientGone
            } else {
                // Boxed: the rare path's state (an attempt being opened) would otherwise sit
                // in every stream's task, copied whole each time the task is moved or set.
                match Box::pin(resume::resume(self, broke)).await {
                    Some(Resumed::Complete) => End::Complete,
                    Some(Resumed::ClientGone) => End::ClientGone,
                    Some(Resumed::Shutdown) => End::Shutdown,
                    None => end,
                }
            };
        }
        // A resume the client left (or the shutdown cut) in the middle of opening.
        if self.rec.attempt_in_flight().is_some() {
            let reason = if matches!(end, End::Shutdown) { "shutdown" } else { self.client_left() };
            self.end_attempt("aborted", reason, Outcome::Neutral, String::new());
        }
        let route = self.rec.route_name().to_owned();
        // After any resume: the log gets everything the client received.
        self.log_completion();
        // Each arm below labels the record before it awaits anything: from here a drop (the
        // runtime going at shutdown) leaves a record that says how the stream ended.
        self.rec.ended = true;
        match end {
            End::Complete => {
                self.rec.outcome = if self.rec.outcome == "fallback" { "fallback" } else { "ok" };
                self.rec.status = 200;
                self.rec.spend.complete = true;
                if let Some(c) = &mut self.rec.idem {
                    c.storable = true;
                }
            }
            End::ClientGone if self.stalled => {
                // The client is still connected: it must not take what it got for the whole
                // answer. Its body ends with an error (`abort`), and the record says so.
                self.rec.outcome = "stream_error";
                self.rec.status = 200;
                self.rec
                    .metrics()
                    .stream_aborts
                    .with_label_values(&[&route, "client", "stalled"])
                    .inc();
                self.rec.error = Some(
                    "the client stopped reading the stream until the route's deadline passed: the response was aborted"
                        .to_owned(),
                );
            }
            End::ClientGone => {
                self.rec.outcome = "aborted";
                self.rec.status = 499;
                self.rec
                    .metrics()
                    .stream_aborts
                    .with_label_values(&[&route, "client", "disconnect"])
                    .inc();
            }
            End::Shutdown => self.end_for_shutdown(&route).await,
            End::Upstream { reason, detail, code } => {
                self.rec.outcome = "stream_error";
                // The client got a 200 and then the error event.
                self.rec.status = 200;
                self.rec
                    .metrics()
                    .stream_aborts
                    .with_label_values(&[&route, "upstream", reason])
                    .inc();
                let msg = format!(
                    "the upstream stream failed after the answer began ({reason}): {detail}"
                );
                self.rec.error = Some(msg.clone());
                let err = GatewayError::new(code, msg);
                // What the upstream sent before failing still reaches the client, then the error.
                self.out.extend_from_slice(&err.sse_event(self.dialect));
                self.flush().await;
            }
        }
    }

    /// The attempt reason for a client that is no longer taking the stream: gone, or still
    /// connected but not reading until the deadline passed.
    pub(super) fn client_left(&self) -> &'static str {
        if self.stalled { "client_stalled" } else { "client_gone" }
    }

    /// Anthropic clients: counts the content blocks the emitter just wrote (from `from` on).
    fn count_blocks(&mut self, from: usize) {
        if self.dialect != Dialect::Anthropic || self.resume.is_none() {
            return;
        }
        let written = &self.out[from..];
        let count =
            |needle: &[u8]| written.windows(needle.len()).filter(|w| *w == needle).count() as u64;
        self.blocks_started += count(b"event: content_block_start\n");
        self.blocks_stopped += count(b"event: content_block_stop\n");
    }

    /// With `logging.content`, the text the client has received so far goes in the log line.
    fn log_completion(&mut self) {
        if self.rec.log_content {
            self.rec.completion = Some(self.sent_text.clone());
        }
    }

    /// Sends what is queued; false if the client is gone.
    pub(super) async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let t = Instant::now();
        let ok = self.send_out().await;
        self.rec.client_wait += t.elapsed();
        self.last_sent = t;
        ok
    }

    /// Sends what is queued (without timing it); false if the client is gone.
    async fn send_out(&mut self) -> bool {
        let chunk = self.out.split().freeze();
        if let Some(c) = &mut self.rec.idem {
            c.push(&chunk);
        }
        // A client that stops reading but keeps the connection open is gone for our purposes
        // once the deadline passes (and a moment more, so the error event a deadline ends the
        // stream with is not lost to a queue that is only briefly full): the request must end
        // (settle, release its key). Its error event cannot be queued, so its body is aborted
        // instead of ending cleanly.
        match timeout_at(self.deadline + SEND_GRACE, self.tx.send(chunk)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stalled = true;
                self.abort.set();
                false
            }
        }
    }

    /// Turns one upstream event into client bytes, updating usage and finish reason.
    fn queue(&mut self, name: Option<&str>, data: &[u8]) -> Result<bool, End> {
        let peeked = attempt::classify(self.wire, name, data);
        let done = match peeked {
            None => {
                return Err(upstream(
                    "malformed",
                    "a stream event that is not a valid chunk".into(),
                ));
            }
            Some(ChunkPeek::Error(m)) => {
                let code = peek::error_code(data);
                return Err(End::Upstream { reason: "error_event", detail: m, code });
            }
            Some(ChunkPeek::Done) => true,
            Some(ChunkPeek::Chunk { finish, usage, usage_only, text, tool, finishes, .. }) => {
                self.finished = self.finished.saturating_add(finishes);
                if self.first_chunk.is_none()
                    && matches!(self.emitter, Emitter::OpenAiPass { include_usage: true })
                {
                    self.first_chunk = Some(bytes::Bytes::copy_from_slice(data));
                }
                if self.resume.is_some() || self.rec.log_content {
                    self.in_tool |= tool;
                    if let Some(t) = &text {
                        self.sent_text.push_str(t);
                    }
                }
                if let Some(t) = &text {
                    self.rec.spend.streamed_bytes += t.len() as u64;
                }
                if let Some(c) = &mut self.capture {
                    match &text {
                        _ if tool => c.tainted = true,
                        Some(t) if c.text.len() + t.len() <= crate::cache::MAX_ANSWER_BYTES => {
                            c.text.push_str(t)
                        }
                        Some(_) => c.tainted = true,
                        None => {}
                    }
                }
                self.stream.usage = peek::merge_usage(self.stream.usage, usage);
                self.rec.usage = self.stream.usage;
                if finish.is_some() {
                    self.stream.finish = finish;
                }
                let before = self.out.len();
                self.emitter
                    .event(name, data, usage_only, &mut self.out)
                    .map_err(|e| upstream("error_event", e.0))?;
                self.count_blocks(before);
                false
            }
        };
        if done {
            self.estimate_usage();
            self.emitter
                .event(name, data, false, &mut self.out)
                .map_err(|e| upstream("error_event", e.0))?;
        }
        Ok(done)
    }

    /// Before the end of a stream whose upstream reported no usage: the estimate tidegate bills
    /// goes to a translated usage chunk too (the log line counts the same).
    fn estimate_usage(&mut self) {
        if self.stream.usage.is_none() {
            self.emitter.estimate_usage(self.rec.spend.request_usage(None));
        }
    }

    async fn finish(&mut self, upstream_sent_stop: bool) -> End {
        self.stream.body.mark_complete();
        self.rec.usage = self.stream.usage.or(self.rec.usage);
        self.rec.finish = self.stream.finish.clone();
        // The client asked for usage and the upstream sent none: the estimate tidegate bills,
        // in the chunk the client waits for (the log line counts the same).
        if self.stream.usage.is_none()
            && let Some(first) = &self.first_chunk
        {
            let estimate = self.rec.spend.request_usage(None);
            super::emit::usage_chunk(first, estimate, &mut self.out);
        }
        // An upstream that sent its stop had it handed over in `queue`, before that event.
        if !upstream_sent_stop {
            self.estimate_usage();
        }
        if let Err(e) = self.emitter.finish(upstream_sent_stop, &mut self.out) {
            return upstream("malformed", e.0);
        }
        if let Some(c) = self.capture.take()
            && !c.tainted
        {
            c.cache.put(c.key, crate::cache::CachedAnswer { text: c.text, model: c.model });
        }
        if self.flush().await { End::Complete } else { End::ClientGone }
    }
}

/// How long past the deadline a send to the client may wait for room in its queue.
const SEND_GRACE: Duration = Duration::from_millis(500);
