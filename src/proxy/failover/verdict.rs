//! What a failed attempt means: for its target's breaker, for the request's cost, and in the
//! words of the client's error (with the provider's key never in them).

use bytes::Bytes;

use crate::error::{ErrorCode, GatewayError};
use crate::metrics::Metrics;
use crate::proxy::classify::{AttemptFailure, Next};
use crate::routing::health::{Health, Outcome};
use crate::runtime::{TargetRuntime, TargetSeries};

/// How a failed attempt counts for its target's circuit breaker. `client_bound`: the attempt's
/// deadline was the client's read timeout (cut short before the target ran out of its time).
pub(crate) fn failure_verdict(f: &AttemptFailure, client_bound: bool) -> Outcome {
    match f {
        // A 429 cools the target down for its Retry-After; without one there is nothing to
        // honour (and the same-target retry after backoff must not find it cooling down).
        f if f.reason == "rate_limited" => {
            f.retry_after.map_or(Outcome::Neutral, Outcome::RateLimited)
        }
        // The request's fault, not the target's; or its client's read timeout ran out before
        // the target had run out of its own time.
        f if matches!(f.next, Next::Stop | Next::ContextLength)
            || f.reason == "unsupported"
            || (f.deadline && client_bound) =>
        {
            Outcome::Neutral
        }
        _ => Outcome::Failure,
    }
}

/// Tells `t`'s circuit breaker how an attempt went; an opened or closed breaker is shown in
/// `tidegate_circuit_open` and logged.
pub(crate) fn tell_breaker(health: &Health, metrics: &Metrics, t: &TargetSeries, outcome: Outcome) {
    let (p, m) = (&*t.provider, &*t.model);
    let Some(opened) = health.record(p, m, outcome) else { return };
    metrics.circuit_open.with_label_values(&[p, m]).set(if opened { 1.0 } else { 0.0 });
    if opened {
        tracing::warn!(
            provider = p,
            model = m,
            "circuit breaker opened: skipping this target for a while"
        );
    } else {
        tracing::info!(provider = p, model = m, "circuit breaker closed: the probe succeeded");
    }
}

/// A failure after the provider had the request and may have generated (and billed) for it:
/// timeouts, a stream cut, or a 200 that turned out not to be an answer. Refusals by status
/// are not billed.
pub(crate) fn billable(f: &AttemptFailure) -> bool {
    // `timeout_upstream` is the provider's own 408: a refusal by status, not billed.
    (f.reason.starts_with("timeout") && f.reason != "timeout_upstream")
        || f.reason == "deadline"
        || f.reason == "cut"
        || (f.status.is_some_and(|s| (200..300).contains(&s))
            && matches!(f.reason, "malformed" | "error_event" | "error_body" | "content_type"))
}

pub(super) fn describe(t: &TargetRuntime, f: &AttemptFailure) -> String {
    let status = f.status.map(|s| format!(" (status {s})")).unwrap_or_default();
    format!("{}/{}: {}{status}", t.target.provider, t.target.model, f.reason)
}

/// `client_bound`: the deadline was the client's read timeout, not the route's total.
pub(super) fn all_failed(
    code: ErrorCode,
    route: &str,
    failures: &[String],
    client_bound: bool,
) -> GatewayError {
    let what = if code == ErrorCode::DeadlineExceeded && client_bound {
        "the client's read timeout (x-stainless-read-timeout, plus 1 s) passed"
    } else if code == ErrorCode::DeadlineExceeded {
        "the route's total deadline passed"
    } else {
        "every target failed"
    };
    let list =
        if failures.is_empty() { "no attempt was made".to_owned() } else { failures.join("; ") };
    GatewayError::new(code, format!("route {route:?}: {what}: {list}"))
}

/// Removes any echo of the provider's key from upstream text.
pub(super) fn redact(text: &str, t: &TargetRuntime) -> String {
    t.provider.key().and_then(|k| k.redact(text)).unwrap_or_else(|| text.to_owned())
}

pub(super) fn redact_bytes(body: Bytes, t: &TargetRuntime) -> Bytes {
    match (t.provider.key(), std::str::from_utf8(&body)) {
        (Some(k), Ok(s)) => k.redact(s).map_or(body, Bytes::from),
        _ => body,
    }
}
