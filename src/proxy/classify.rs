//! What a failed attempt means for the request (SPEC §5): retry the same target, move on to the
//! next one, or stop and answer the client. The failover loop consults only [`Next`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// What the failover loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Transient: the same target again (if tries remain), then the next target.
    Retry,
    /// Not worth repeating on this target (auth, unknown 5xx): the next target.
    NextTarget,
    /// The prompt is too long for this target: the next target with a larger context window.
    ContextLength,
    /// Caused by the request itself: answer the client with the upstream's error.
    Stop,
}

/// One failed attempt.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    pub next: Next,
    /// Low-cardinality reason, used as a metric label and in logs.
    pub reason: &'static str,
    pub status: Option<u16>,
    pub detail: String,
    pub retry_after: Option<Duration>,
    /// For [`Next::Stop`]: the upstream's answer, passed through to the client.
    pub passthrough: Option<Passthrough>,
    /// The overall request deadline passed during this attempt.
    pub deadline: bool,
}

/// An upstream error answer handed to the client as it came (status, retry hints, body).
#[derive(Debug, Clone)]
pub struct Passthrough {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl AttemptFailure {
    pub fn new(next: Next, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            next,
            reason,
            status: None,
            detail: detail.into(),
            retry_after: None,
            passthrough: None,
            deadline: false,
        }
    }

    pub fn retry(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Next::Retry, reason, detail)
    }
}

/// Longest `Retry-After` we believe; anything larger is treated as this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// `retry-after-ms` (float milliseconds) first, then `retry-after` as seconds or an HTTP-date.
/// Negative or unparsable values are ignored; huge ones are capped.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(RETRY_AFTER_CAP.as_secs_f64())));
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(RETRY_AFTER_CAP.as_secs_f64())));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).min(RETRY_AFTER_CAP))
}

fn mentions(body: &[u8], needles: &[&str]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(8192)]).to_ascii_lowercase();
    needles.iter().any(|n| text.contains(n))
}

/// The prompt did not fit the model's context window (OpenAI and Anthropic wordings).
pub fn is_context_length(body: &[u8]) -> bool {
    mentions(
        body,
        &[
            "context_length_exceeded",
            "maximum context length",
            "prompt is too long",
            "context window",
        ],
    )
}

fn is_content_filter(body: &[u8]) -> bool {
    mentions(body, &["content_filter", "content_policy_violation", "content management policy"])
}

/// Classifies an upstream answer with a non-success status.
pub fn from_status(status: StatusCode, headers: &HeaderMap, body: Bytes) -> AttemptFailure {
    let code = status.as_u16();
    let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let (next, reason) = match code {
        429 => (Next::Retry, "rate_limited"),
        408 | 500 | 502 | 503 | 504 | 529 => (Next::Retry, "status_5xx"),
        401 | 403 => (Next::NextTarget, "auth"),
        400 if is_context_length(&body) => (Next::ContextLength, "context_length"),
        400 | 422 if is_content_filter(&body) => (Next::Stop, "content_filter"),
        400..=499 => (Next::Stop, "client_error"),
        _ => (Next::NextTarget, "status_other"),
    };
    let reason = if code == 408 { "timeout_upstream" } else { reason };
    let mut f = AttemptFailure::new(next, reason, format!("status {code}: {snippet}"));
    f.status = Some(code);
    f.retry_after = retry_after(headers);
    // The request's own fault: its answer may reach the client (a context-length refusal when
    // no target with a larger window is left).
    if matches!(next, Next::Stop | Next::ContextLength) {
        let mut keep = HeaderMap::new();
        for k in ["retry-after", "retry-after-ms", "x-should-retry", "content-type"] {
            if let Some(v) = headers.get(k) {
                keep.insert(k, v.clone());
            }
        }
        f.passthrough = Some(Passthrough { status, headers: keep, body });
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(&h(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&h(&[("retry-after-ms", "150"), ("retry-after", "9")])),
            Some(Duration::from_millis(150))
        );
        assert_eq!(retry_after(&h(&[("retry-after", "-3")])), None);
        assert_eq!(retry_after(&h(&[("retry-after", "99999999")])), Some(RETRY_AFTER_CAP));
        assert_eq!(
            retry_after(&h(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&h(&[("retry-after", "soon")])), None);
    }

    #[test]
    fn status_classes() {
        let c = |s: u16, body: &'static str| {
            from_status(
                StatusCode::from_u16(s).unwrap(),
                &HeaderMap::new(),
                Bytes::from_static(body.as_bytes()),
            )
        };
        assert_eq!(c(429, "").next, Next::Retry);
        assert_eq!(c(529, "").next, Next::Retry);
        assert_eq!(c(401, "").next, Next::NextTarget);
        assert_eq!(
            c(400, r#"{"error":{"code":"context_length_exceeded"}}"#).next,
            Next::ContextLength
        );
        assert_eq!(c(400, r#"{"type":"error","error":{"message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#).next, Next::ContextLength);
        let f = c(400, r#"{"error":{"code":"content_filter"}}"#);
        assert_eq!((f.next, f.reason), (Next::Stop, "content_filter"));
        assert!(c(422, "{}").passthrough.is_some());
    }
}
