//! The mock provider's model-name grammar.
//!
//! A model name is a list of directives joined by `+`, e.g. `gpt-4o-mini+chunks=20+delay=5ms`.
//! A bare word that is not a keyword is a display label (so `gpt-4o-mini` alone is a normal
//! answer); an unknown `key=value` is an error, so a typo fails loudly. The full table is in
//! the README ("The mock provider").

use std::time::Duration;

use crate::config::units::parse_duration;

/// What the mock does for one call, parsed from the model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// Answer with the last user message's words instead of the fixed sentence.
    pub echo: bool,
    /// Content chunks in a stream (words in a non-stream answer). Default 5.
    pub chunks: u32,
    /// Pause between stream chunks.
    pub delay: Duration,
    /// Pause before the response headers.
    pub latency: Duration,
    /// Pause after the headers, before the first content (non-stream: before the body).
    pub ttft: Duration,
    /// Answer with this error status (OpenAI- or Anthropic-shaped error body).
    pub status: Option<u16>,
    /// `Retry-After` header value (seconds or HTTP-date), sent with `status`.
    pub retry_after: Option<String>,
    /// `retry-after-ms` header value, sent with `status`.
    pub retry_after_ms: Option<u64>,
    /// Faults apply only to the first N calls of this exact model name; later calls answer ok.
    pub fail_first: Option<u32>,
    /// Never send response headers.
    pub hang: bool,
    /// Close the connection before any response.
    pub reset: bool,
    /// Stream: break the connection after N content chunks (no finish, no `[DONE]`).
    pub cut: Option<u32>,
    /// Stream: stop sending (keep the connection open) after N content chunks.
    pub stall: Option<u32>,
    /// Stream: an error event after N content chunks.
    pub error_after: Option<u32>,
    /// 200 whose body is not valid SSE/JSON.
    pub garbage: bool,
    /// 200 whose body (or first stream event) is an error object.
    pub error200: bool,
    /// 200 with an HTML body.
    pub html: bool,
    /// 200 with an empty body.
    pub empty: bool,
    /// Omit usage (non-stream field and stream usage chunk).
    pub no_usage: bool,
    /// Stream: end after the finish chunk without `[DONE]` / `message_stop`.
    pub no_done: bool,
    /// Stream: after the finish chunk (OpenAI wire) or `message_delta` (Anthropic wire), break
    /// the connection or stop sending instead of ending: the answer is whole, its end is not.
    pub after_finish: Option<Tail>,
    /// Stream: nothing but the stream's end (`[DONE]`; Anthropic wire: `message_start` and
    /// `message_stop`), an empty answer with no finish.
    pub done_only: bool,
    /// Context window in tokens: longer prompts get a context-length 400.
    pub context: Option<u64>,
    /// Refuse with a content-filter error.
    pub filter: bool,
    /// Reject a trailing assistant message (no prefill support) with a 400.
    pub no_prefill: bool,
    /// Answer with a call to this tool (arguments `{"city":"Paris"}`), unless the last message
    /// is already a tool result, which gets a normal text answer.
    pub tool: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            echo: false,
            chunks: 5,
            delay: Duration::ZERO,
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            status: None,
            retry_after: None,
            retry_after_ms: None,
            fail_first: None,
            hang: false,
            reset: false,
            cut: None,
            stall: None,
            error_after: None,
            garbage: false,
            error200: false,
            html: false,
            empty: false,
            no_usage: false,
            no_done: false,
            after_finish: None,
            done_only: false,
            context: None,
            filter: false,
            no_prefill: false,
            tool: None,
        }
    }
}

/// How a stream that has sent its finish goes on (`after_finish=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The connection breaks.
    Cut,
    /// Nothing more is sent; the connection stays open.
    Stall,
    /// An error event, then the end.
    Error,
    /// An event that is not valid JSON, then the end.
    Garbage,
}

/// The most chunks (words) a mock answer has: each is built before it is sent, so an
/// unbounded count would let one request exhaust memory.
pub const MAX_CHUNKS: u32 = 100_000;

impl Behaviour {
    /// Parses a model name; `Err` names the bad directive.
    pub fn parse(model: &str) -> Result<Behaviour, String> {
        let mut b = Behaviour::default();
        for part in model.split('+').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part, None),
            };
            let num = |v: Option<&str>| -> Result<u64, String> {
                v.and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("mock directive {part:?}: expected {key}=<integer>"))
            };
            let dur = |v: Option<&str>| -> Result<Duration, String> {
                v.ok_or_else(|| format!("mock directive {part:?}: expected {key}=<duration>"))
                    .and_then(|v| {
                        parse_duration(v).map_err(|e| format!("mock directive {part:?}: {e}"))
                    })
            };
            let count = |v| num(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            match (key, value) {
                ("ok", None) => {}
                ("echo", None) => b.echo = true,
                ("hang", None) => b.hang = true,
                ("reset", None) => b.reset = true,
                ("garbage", None) => b.garbage = true,
                ("error200", None) => b.error200 = true,
                ("html", None) => b.html = true,
                ("empty", None) => b.empty = true,
                ("no_usage", None) => b.no_usage = true,
                ("no_done", None) => b.no_done = true,
                ("done_only", None) => b.done_only = true,
                ("filter", None) => b.filter = true,
                ("no_prefill", None) => b.no_prefill = true,
                ("chunks", v) => {
                    b.chunks = count(v)?;
                    if b.chunks > MAX_CHUNKS {
                        return Err(format!(
                            "mock directive {part:?}: at most {MAX_CHUNKS} chunks"
                        ));
                    }
                }
                ("delay", v) => b.delay = dur(v)?,
                ("latency", v) => b.latency = dur(v)?,
                ("ttft", v) => b.ttft = dur(v)?,
                ("status", v) => {
                    let s = num(v)?;
                    if !(400..=599).contains(&s) {
                        return Err(format!(
                            "mock directive {part:?}: expected a status from 400 to 599"
                        ));
                    }
                    b.status = Some(s as u16);
                }
                ("retry_after", Some(v)) => b.retry_after = Some(v.to_owned()),
                ("tool", Some(v)) if !v.is_empty() => b.tool = Some(v.to_owned()),
                ("retry_after_ms", v) => b.retry_after_ms = Some(num(v)?),
                ("fail_first", v) => b.fail_first = Some(count(v)?),
                ("cut", v) => b.cut = Some(count(v)?),
                ("stall", v) => b.stall = Some(count(v)?),
                ("error_after", v) => b.error_after = Some(count(v)?),
                ("context", v) => b.context = Some(num(v)?),
                ("after_finish", Some("cut")) => b.after_finish = Some(Tail::Cut),
                ("after_finish", Some("stall")) => b.after_finish = Some(Tail::Stall),
                ("after_finish", Some("error")) => b.after_finish = Some(Tail::Error),
                ("after_finish", Some("garbage")) => b.after_finish = Some(Tail::Garbage),
                ("after_finish", _) => {
                    return Err(format!(
                        "mock directive {part:?}: expected after_finish=cut|stall|error|garbage"
                    ));
                }
                (_, Some(_)) => return Err(format!("unknown mock directive {part:?}")),
                // A bare word is the model's display label.
                (_, None) => {}
            }
        }
        Ok(b)
    }

    /// This behaviour with every fault removed (for calls after `fail_first`).
    pub fn healed(&self) -> Behaviour {
        Behaviour {
            echo: self.echo,
            chunks: self.chunks,
            delay: self.delay,
            latency: self.latency,
            ttft: self.ttft,
            no_usage: self.no_usage,
            context: self.context,
            tool: self.tool.clone(),
            ..Behaviour::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_directives() {
        let b =
            Behaviour::parse("gpt-4o-mini+chunks=20+delay=5ms+status=429+retry_after=1").unwrap();
        assert_eq!(b.chunks, 20);
        assert_eq!(b.delay, Duration::from_millis(5));
        assert_eq!(b.status, Some(429));
        assert_eq!(b.retry_after.as_deref(), Some("1"));
        assert_eq!(Behaviour::parse("gpt-4o-mini").unwrap(), Behaviour::default());
    }

    #[test]
    fn typos_fail_loudly() {
        assert!(Behaviour::parse("chunk=3").unwrap_err().contains("chunk=3"));
        assert!(Behaviour::parse("status=200").is_err());
        assert!(Behaviour::parse("delay=5").is_err());
        // helper-47: 99999999999 chunks aborted the process (an allocation of 100 GB).
        assert_eq!(Behaviour::parse("m+chunks=100000").unwrap().chunks, 100_000);
        let e = Behaviour::parse("m+chunks=99999999999").unwrap_err();
        assert!(e.contains("at most 100000 chunks"), "{e}");
    }
}
