//! How a committed stream ends, and how each ending counts: for its target's circuit breaker,
//! and whether a resume may repair it.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::ErrorCode;
use crate::routing::health::Outcome;

/// How a streamed attempt that ended for `reason` counts for its target's breaker.
pub(super) fn stream_verdict(reason: &str, client_idle: bool) -> Outcome {
    match reason {
        // Not the target's doing: the answer turned into a tool call, or a restarted answer
        // said something else (resume only), or the client's own read timeout.
        "tool_call" | "diverged" => Outcome::Neutral,
        "timeout_idle" if client_idle => Outcome::Neutral,
        // The route's own `timeouts.total` (or `timeouts.attempt`) ran out while the target
        // was still delivering: a route that allows less than its answers take is no failure
        // of the target's (it would open the breaker on a healthy one). A stream that had gone
        // silent before its limit had stalled (`*_stalled`): that is the target's failure.
        "deadline" | "timeout_attempt" => Outcome::Neutral,
        _ => Outcome::Failure,
    }
}

/// A stream silent this long (or its `idle`, if shorter) when the route's deadline or its
/// attempt limit ends it had stalled: that is the target's failure, where a limit cutting a
/// stream still delivering is the route's.
const STALLED: Duration = Duration::from_secs(10);

/// Why a stream's timer ended it: the request's deadline, the attempt's limit, or a gap longer
/// than `idle`. `silent` is how long the upstream had sent nothing.
pub(super) fn timer_reason(
    now: Instant,
    deadline: Instant,
    attempt_end: Instant,
    silent: Duration,
    idle: Duration,
) -> &'static str {
    let stalled = silent >= idle.min(STALLED);
    if now >= deadline {
        if stalled { "deadline_stalled" } else { "deadline" }
    } else if now >= attempt_end {
        if stalled { "timeout_attempt_stalled" } else { "timeout_attempt" }
    } else {
        "timeout_idle"
    }
}

/// Upstream failures after the commit point that resume may repair.
pub(super) const RESUMABLE: &[&str] = &[
    "cut",
    "timeout_idle",
    "timeout_attempt",
    "timeout_attempt_stalled",
    "error_event",
    "malformed",
];

pub(super) enum End {
    Complete,
    ClientGone,
    /// `server.shutdown_grace` ended with the stream still open: the gateway cut it.
    Shutdown,
    Upstream {
        reason: &'static str,
        detail: String,
        code: ErrorCode,
    },
}

/// How long a stream cut at shutdown may wait for the client to take its error event.
const SHUTDOWN_SEND: Duration = Duration::from_millis(500);

impl super::forward::Forward {
    /// [`End::Shutdown`]: the stream gets the dialect's `overloaded` error event (this instance
    /// is going away; a retry goes to another), and the request is recorded as a
    /// `stream_error` the gateway caused.
    pub(super) async fn end_for_shutdown(&mut self, route: &str) {
        self.rec.outcome = "stream_error";
        self.rec.status = 200;
        let labels = [route, "gateway", "shutdown"];
        self.rec.metrics().stream_aborts.with_label_values(&labels).inc();
        let msg = "tidegate is shutting down: the stream was still open when server.shutdown_grace ended; retry the request";
        self.rec.error = Some(msg.to_owned());
        let err = crate::error::GatewayError::new(ErrorCode::Overloaded, msg);
        // After anything still queued.
        self.out.extend_from_slice(&err.sse_event(self.dialect));
        let chunk = self.out.split().freeze();
        if let Some(c) = &mut self.rec.idem {
            c.push(&chunk);
        }
        // Briefly: the process is exiting, and a client that stopped reading must not hold it
        // (the event is lost then, the record is not, and the body is aborted: the client
        // must not take what it got for a whole answer).
        if tokio::time::timeout(SHUTDOWN_SEND, self.tx.send(chunk)).await.is_err() {
            self.abort.set();
        }
    }
}

/// An upstream failure after the commit point, answered as `upstream_unavailable`.
pub(super) fn upstream(reason: &'static str, detail: String) -> End {
    End::Upstream { reason, detail, code: ErrorCode::UpstreamUnavailable }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_names_the_limit_that_ended_the_stream_and_whether_it_had_stalled() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let idle = s(30);
        // The request's deadline wins over the attempt's limit when both have passed.
        assert_eq!(timer_reason(t0 + s(5), t0 + s(5), t0 + s(5), s(1), idle), "deadline");
        assert_eq!(timer_reason(t0 + s(5), t0 + s(5), t0 + s(3), s(10), idle), "deadline_stalled");
        assert_eq!(timer_reason(t0 + s(3), t0 + s(5), t0 + s(3), s(9), idle), "timeout_attempt");
        // Silent for `idle` when that is shorter than 10 s: stalled.
        let r = timer_reason(t0 + s(3), t0 + s(5), t0 + s(3), s(2), s(2));
        assert_eq!(r, "timeout_attempt_stalled");
        assert_eq!(timer_reason(t0 + s(2), t0 + s(5), t0 + s(3), s(2), s(2)), "timeout_idle");
        assert_eq!(stream_verdict("timeout_attempt", false), Outcome::Neutral);
        assert_eq!(stream_verdict("timeout_attempt_stalled", false), Outcome::Failure);
        assert!(RESUMABLE.contains(&"timeout_attempt") && !RESUMABLE.contains(&"deadline"));
    }
}
