//! One upstream attempt, up to the commit point.
//!
//! A non-stream attempt ends with the whole body read and checked. A stream attempt ends at the
//! first event the client must see as answer content (text, tool call, refusal, finish reason,
//! or `[DONE]`); the events before it are held, not sent, so a stream that stalls, errors or is
//! cut before any content can still fail over without the client noticing.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::{Instant, timeout_at};

use super::classify::{self, AttemptFailure, Next};
use super::peek::{self, BodyPeek, ChunkPeek, Usage};
use crate::config::{Timeouts, Wire};
use crate::providers::{SendError, UpstreamBody};
use crate::runtime::TargetRuntime;
use crate::sse;

/// The API an attempt calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chat => "chat",
            Self::Embeddings => "embeddings",
        })
    }
}

impl Endpoint {
    /// The upstream path for a provider of `wire`, relative to its base URL; `None` if that
    /// wire has no such API.
    pub fn path(self, wire: Wire) -> Option<&'static str> {
        match (self, wire) {
            (Self::Chat, Wire::OpenAi) => Some("/chat/completions"),
            (Self::Chat, Wire::Anthropic) => Some("/v1/messages"),
            (Self::Embeddings, Wire::OpenAi) => Some("/embeddings"),
            (Self::Embeddings, Wire::Anthropic) => None,
        }
    }
}

/// One stream event of either wire: classify it for the commit point and usage.
pub fn classify<'a>(wire: Wire, name: Option<&str>, data: &'a [u8]) -> Option<ChunkPeek<'a>> {
    match wire {
        Wire::OpenAi if name == Some("error") => {
            Some(ChunkPeek::Error(String::from_utf8_lossy(data).into_owned()))
        }
        Wire::OpenAi => peek::chunk(data),
        Wire::Anthropic => peek::anthropic_event(name, data),
    }
}

/// Upstream answers larger than this are treated as broken rather than buffered.
const MAX_UPSTREAM_BODY: usize = 64 << 20;
/// Error bodies are only read this far.
const MAX_ERROR_BODY: usize = 64 << 10;

/// A successful attempt.
pub enum Opened {
    Complete {
        body: Bytes,
        usage: Option<Usage>,
        finish: Option<String>,
    },
    /// Boxed: the stream's state is large, and an answer is one or the other.
    Stream(Box<OpenStream>),
}

/// A stream at its commit point.
pub struct OpenStream {
    pub body: UpstreamBody,
    pub decoder: sse::Decoder,
    /// Events (name, data) received so far, in order, including the committing one.
    pub held: Vec<(Option<String>, Bytes)>,
    pub usage: Option<Usage>,
    pub finish: Option<String>,
    /// When `timeouts.attempt` ends this attempt, counted from its start (the request's own
    /// deadline is the caller's to apply): a stream is bounded as a whole, not only until its
    /// answer begins.
    pub attempt_end: Instant,
}

/// Per-attempt inputs.
pub struct Attempt<'a> {
    pub target: &'a TargetRuntime,
    pub endpoint: Endpoint,
    pub body: Bytes,
    pub stream: bool,
    pub timeouts: &'a Timeouts,
    /// The request's overall deadline.
    pub deadline: Instant,
    /// The client's `anthropic-beta` header, for an Anthropic-wire target.
    pub pass_on: &'a crate::providers::PassOn,
}

/// An attempt's clock: when it began, and when its first token and its whole answer are due.
#[derive(Clone, Copy)]
struct Times {
    start: Instant,
    first_token_end: Instant,
    attempt_end: Instant,
    /// The limit a wait for the first byte runs into.
    first_phase: &'static str,
}

/// Time accounting the caller folds into the request record.
#[derive(Default)]
pub struct Waited {
    pub upstream: Duration,
    pub first_token: Option<Duration>,
    /// The upstream's own id for its answer, if it sent one (see [`upstream_request_id`]).
    pub upstream_request_id: Option<http::HeaderValue>,
}

/// The longest upstream request id logged; a longer one is cut to this.
const MAX_UPSTREAM_ID: usize = 128;

/// The upstream's own request id (OpenAI `x-request-id`, Anthropic `request-id`), for the log
/// line only: kept if it is printable ASCII without spaces, cut to 128 bytes.
pub fn upstream_request_id(wire: Wire, headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("request-id");
    let names = match wire {
        Wire::OpenAi => [X_REQUEST_ID, REQUEST_ID],
        Wire::Anthropic => [REQUEST_ID, X_REQUEST_ID],
    };
    let v = names.iter().find_map(|n| headers.get(n))?;
    // Longer than any provider's (a cut one would match nothing): not logged.
    let b = v.as_bytes();
    if b.is_empty() || b.len() > MAX_UPSTREAM_ID || !b.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    // Copied: a clone would share (and keep alive, for the whole of a stream) the buffer the
    // upstream's response head was read into.
    http::HeaderValue::from_bytes(b).ok()
}

impl Attempt<'_> {
    fn timeout_failure(&self, now: Instant, phase: &'static str) -> AttemptFailure {
        // The request's own deadline (`timeouts.total`, or the client's read timeout) is what
        // ran out, not the attempt's limit: say so.
        let mut f = if now >= self.deadline {
            AttemptFailure::retry(
                "deadline",
                "no answer before the request's deadline (timeouts.total, or the client's read timeout)",
            )
        } else {
            AttemptFailure::retry(phase, format!("no answer within the {phase} limit"))
        };
        f.deadline = now >= self.deadline;
        f
    }

    pub async fn run(&self, waited: &mut Waited) -> Result<Opened, AttemptFailure> {
        let start = Instant::now();
        let attempt_end = (start + self.timeouts.attempt).min(self.deadline);
        let first_token_end = (start + self.timeouts.first_token).min(attempt_end);
        // Which limit a wait for the first byte runs into: `first_token`, unless the attempt (or
        // the request) ends sooner.
        let first_phase = if start + self.timeouts.first_token <= attempt_end {
            "timeout_first_token"
        } else {
            "timeout_attempt"
        };
        let phase = |first: bool| if first { first_phase } else { "timeout_attempt" };

        let wire = self.target.provider.spec.wire;
        let Some(path) = self.endpoint.path(wire) else {
            return Err(AttemptFailure::new(
                Next::NextTarget,
                "unsupported",
                "this provider has no such API",
            ));
        };
        let sent = timeout_at(
            first_token_end,
            self.target.provider.send(&self.target.client, path, self.body.clone(), self.pass_on),
        )
        .await;
        waited.upstream += start.elapsed();
        let resp = match sent {
            Err(_) => return Err(self.timeout_failure(Instant::now(), phase(true))),
            Ok(Err(SendError::Connect(e))) => return Err(AttemptFailure::retry("connect", e)),
            Ok(Err(SendError::Reset(e))) => return Err(AttemptFailure::retry("reset", e)),
            Ok(Ok(r)) => r,
        };
        let (parts, mut body) = resp.into_parts();
        waited.upstream_request_id = upstream_request_id(wire, &parts.headers);
        if !parts.status.is_success() {
            let t = Instant::now();
            let bytes = read_body(&mut body, MAX_ERROR_BODY, attempt_end).await.unwrap_or_default();
            waited.upstream += t.elapsed();
            return Err(classify::from_status(parts.status, &parts.headers, bytes));
        }
        let times = Times { start, first_token_end, attempt_end, first_phase };
        // The provider took the request and answered it: whatever fails now carries the
        // status, which is what makes such an attempt billable.
        self.answered(&parts, body, times, waited).await.map_err(|mut f| {
            f.status.get_or_insert(parts.status.as_u16());
            f
        })
    }

    /// Reads a success answer (2xx): a stream up to its commit point, or a whole JSON body.
    async fn answered(
        &self,
        parts: &http::response::Parts,
        mut body: UpstreamBody,
        times: Times,
        waited: &mut Waited,
    ) -> Result<Opened, AttemptFailure> {
        let Times { start, first_token_end, attempt_end, first_phase } = times;
        let phase = |first: bool| if first { first_phase } else { "timeout_attempt" };
        let wire = self.target.provider.spec.wire;
        let ct = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let is_sse = ct.starts_with("text/event-stream");
        let is_json = ct.starts_with("application/json");
        if self.stream && is_sse {
            return self.open_stream(body, start, first_token_end, attempt_end, waited).await;
        }
        if !is_json {
            return Err(AttemptFailure::retry(
                "content_type",
                format!("unexpected content-type {ct:?}"),
            ));
        }
        // A JSON answer to a stream request is an error object, or a provider ignoring `stream`.
        let t = Instant::now();
        let read =
            read_first_then_rest(&mut body, MAX_UPSTREAM_BODY, first_token_end, attempt_end).await;
        waited.upstream += t.elapsed();
        let bytes = match read {
            Ok(b) => b,
            Err(ReadFail::Timeout(first)) => {
                return Err(self.timeout_failure(Instant::now(), phase(first)));
            }
            Err(ReadFail::Broken(e)) => {
                return Err(AttemptFailure::retry("cut", format!("body broke: {e}")));
            }
            Err(ReadFail::TooLarge) => {
                return Err(AttemptFailure::retry("malformed", "upstream body too large"));
            }
        };
        waited.first_token = Some(start.elapsed());
        let peeked = match wire {
            Wire::OpenAi => peek::body(&bytes, self.endpoint == Endpoint::Embeddings),
            Wire::Anthropic => peek::anthropic_body(&bytes),
        };
        match peeked {
            None if bytes.is_empty() => {
                Err(AttemptFailure::retry("malformed", "empty upstream body"))
            }
            None => Err(AttemptFailure::retry("malformed", "upstream body is not a valid answer")),
            Some(BodyPeek::Error(m)) => {
                Err(AttemptFailure::retry("error_body", format!("200 with an error body: {m}")))
            }
            Some(BodyPeek::Ok { .. }) if self.stream => {
                Err(AttemptFailure::retry("content_type", "a JSON answer to a stream request"))
            }
            Some(BodyPeek::Ok { usage, finish }) => {
                Ok(Opened::Complete { body: bytes, usage, finish })
            }
        }
    }

    async fn open_stream(
        &self,
        mut body: UpstreamBody,
        start: Instant,
        first_token_end: Instant,
        attempt_end: Instant,
        waited: &mut Waited,
    ) -> Result<Opened, AttemptFailure> {
        let mut decoder = sse::Decoder::default();
        let wire = self.target.provider.spec.wire;
        let mut held: Vec<(Option<String>, Bytes)> = Vec::with_capacity(4);
        let mut usage = None;
        loop {
            while let Some(ev) = decoder
                .next_event()
                .map_err(|e| AttemptFailure::retry("malformed", e.to_string()))?
            {
                match classify(wire, ev.event.as_deref(), &ev.data) {
                    None => {
                        return Err(AttemptFailure::retry(
                            "malformed",
                            "a stream event that is not a chat chunk",
                        ));
                    }
                    Some(ChunkPeek::Error(m)) => {
                        return Err(AttemptFailure::retry("error_event", m));
                    }
                    // The end before any content or finish (which open the stream): an empty
                    // answer, retried like an empty body (SPEC §5).
                    Some(ChunkPeek::Done) => {
                        return Err(AttemptFailure::retry(
                            "malformed",
                            "the stream ended before any content or finish reason",
                        ));
                    }
                    Some(ChunkPeek::Chunk { content, finish, usage: u, .. }) => {
                        usage = peek::merge_usage(usage, u);
                        held.push((ev.event, ev.data));
                        if content {
                            waited.first_token = Some(start.elapsed());
                            return Ok(Opened::Stream(Box::new(OpenStream {
                                body,
                                decoder,
                                held,
                                usage,
                                finish,
                                attempt_end: start + self.timeouts.attempt,
                            })));
                        }
                    }
                }
            }
            let idle_end = (Instant::now() + self.timeouts.idle).min(first_token_end);
            let t = Instant::now();
            let frame = timeout_at(idle_end, body.frame()).await;
            waited.upstream += t.elapsed();
            match frame {
                Err(_) => {
                    let reason = if idle_end < first_token_end {
                        "timeout_idle"
                    } else if start + self.timeouts.first_token <= attempt_end {
                        "timeout_first_token"
                    } else {
                        "timeout_attempt"
                    };
                    return Err(self.timeout_failure(Instant::now(), reason));
                }
                Ok(None) => {
                    return Err(AttemptFailure::retry("cut", "stream ended before any content"));
                }
                Ok(Some(Err(e))) => {
                    return Err(AttemptFailure::retry(
                        "cut",
                        format!("stream broke before any content: {e}"),
                    ));
                }
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        decoder.feed(&data);
                    }
                }
            }
        }
    }
}

enum ReadFail {
    /// The read timed out; true while still waiting for the first frame.
    Timeout(bool),
    Broken(String),
    TooLarge,
}

/// Reads a body: the first frame by `first_end`, the rest by `end`.
async fn read_first_then_rest(
    body: &mut UpstreamBody,
    limit: usize,
    first_end: Instant,
    end: Instant,
) -> Result<Bytes, ReadFail> {
    let mut buf: Vec<u8> = Vec::new();
    let mut first: Option<Bytes> = None;
    let mut deadline = first_end;
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadFail::Timeout(first.is_none() && buf.is_empty())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadFail::Broken(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        deadline = end;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + first.as_ref().map_or(0, Bytes::len) + data.len() > limit {
            return Err(ReadFail::TooLarge);
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buf)))
}

async fn read_body(body: &mut UpstreamBody, limit: usize, end: Instant) -> Option<Bytes> {
    read_first_then_rest(body, limit, end, end).await.ok()
}

/// Whether a failure should end the request now rather than try elsewhere.
pub fn is_final(f: &AttemptFailure) -> bool {
    f.next == Next::Stop || f.deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn upstream_request_ids_are_taken_per_wire_and_sanitized() {
        let both = headers(&[("x-request-id", b"req_oai"), ("request-id", b"req_ant")]);
        assert_eq!(upstream_request_id(Wire::OpenAi, &both).unwrap(), "req_oai");
        assert_eq!(upstream_request_id(Wire::Anthropic, &both).unwrap(), "req_ant");
        assert_eq!(upstream_request_id(Wire::OpenAi, &http::HeaderMap::new()), None);
        // Spaces, control or non-ASCII bytes: not logged.
        for bad in [&b"has space"[..], b"caf\xc3\xa9", b"tab\there", b""] {
            let h = headers(&[("x-request-id", bad)]);
            assert_eq!(upstream_request_id(Wire::OpenAi, &h), None, "{bad:?}");
        }
        // Bounded: a longer id is not logged (cut, it would match nothing).
        let long = "a".repeat(MAX_UPSTREAM_ID);
        let h = headers(&[("request-id", long.as_bytes())]);
        assert!(upstream_request_id(Wire::Anthropic, &h).is_some());
        let long = "a".repeat(MAX_UPSTREAM_ID + 1);
        let h = headers(&[("request-id", long.as_bytes())]);
        assert_eq!(upstream_request_id(Wire::Anthropic, &h), None);
    }
}
