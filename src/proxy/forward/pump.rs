//! A stream's pump: upstream frames in, client chunks out, until the stream ends (finished,
//! broken, timed out, the client gone or the shutdown). Frames the upstream connection already
//! read are drained together, so the events of one read leave in one client write.

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Forward;
use crate::error::ErrorCode;
use crate::proxy::stream_end::{End, timer_reason, upstream};

impl Forward {
    /// Forwards the stream until it ends, and says how.
    pub(super) async fn pump(&mut self) -> End {
        if !self.stream.held.is_empty() {
            self.prime();
        }
        match self.primed.take() {
            Some(Ok(())) => return self.finish(true).await,
            Some(Err(end)) => return end,
            None => {}
        }
        let mut now = Instant::now();
        let mut last_event = now;
        // Every timer ends at the request's deadline or the attempt's limit, whichever is first.
        let limit = self.deadline.min(self.stream.attempt_end);
        let mut idle = Box::pin(tokio::time::sleep_until((now + self.idle).min(limit)));
        // The shutdown that cuts open streams when `shutdown_grace` ends: made (and
        // registered as a waiter) once, polled only while no frame is ready, and checked (an
        // atomic load) before each wait, so a stream whose frames are always ready is cut too.
        let stop_token = self.gw.stop_streams.clone();
        let mut stop = std::pin::pin!(stop_token.cancelled());
        // The end of the upstream body (or its error) met while draining ready frames: handled
        // after the events before it are queued.
        let mut ended = None;
        loop {
            loop {
                let ev = match self.stream.decoder.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(_) if self.whole() => return self.end_whole().await,
                    Err(e) => return upstream("malformed", e.to_string()),
                };
                match self.queue(ev.event.as_deref(), &ev.data) {
                    Ok(true) => return self.finish(true).await,
                    Ok(false) => {}
                    Err(_) if self.whole() => return self.end_whole().await,
                    Err(end) => return end,
                }
            }
            // The clock read after each wait also starts the next one and marks the last
            // event for the idle deadline.
            if !self.out.is_empty() {
                let before = Instant::now();
                let sent = self.send_out().await;
                now = Instant::now();
                self.rec.client_wait += now - before;
                self.last_sent = now;
                if !sent {
                    return End::ClientGone;
                }
            }
            let frame = if let Some(end) = ended.take() {
                Ok(end)
            } else {
                if stop_token.is_cancelled() {
                    return End::Shutdown;
                }
                loop {
                    tokio::select! {
                        biased;
                        () = self.tx.closed() => return End::ClientGone,
                        f = self.stream.body.frame() => break Ok(f),
                        () = &mut stop => return End::Shutdown,
                        () = &mut idle => {
                            // The timer is armed lazily: it fires at most once per idle
                            // period and is pushed back to the real end (last event + idle)
                            // if events came.
                            let t = Instant::now();
                            let end = (last_event + self.idle).min(limit);
                            if t >= end {
                                break Err(());
                            }
                            idle.as_mut().reset(end);
                        }
                    }
                }
            };
            let after = Instant::now();
            self.rec.upstream_wait += after - now;
            now = after;
            let silent = after - last_event;
            last_event = after;
            match frame {
                // The answer is whole once its finish came: a break or a silence after it (in
                // place of the usage chunk and `[DONE]`, or `message_stop`) ends it as if the
                // stream had ended; resuming would send text after the finish.
                Err(()) | Ok(Some(Err(_))) if self.whole() => return self.end_whole().await,
                // The route's limits, not the target's doing while it was still delivering
                // (`stream_verdict`); a target silent that long before had stalled.
                Err(_) => return self.timer_end(after, limit, silent),
                // A stream that ends after its finish reason is complete; `[DONE]` is only a
                // terminator, so tidegate supplies it.
                Ok(None) if self.whole() => return self.finish(false).await,
                Ok(None) => {
                    return upstream("cut", "the stream ended before the answer finished".into());
                }
                Ok(Some(Err(e))) => return upstream("cut", e.to_string()),
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.stream.decoder.feed(&data);
                    }
                    ended = self.drain_ready().await;
                }
            }
        }
    }

    /// How a stream that a timer ended (at `now`, the upstream `silent` that long) ends: the
    /// route's deadline, the idle gap or the attempt's limit (`limit`: whichever of the last
    /// two comes first).
    fn timer_end(&self, now: Instant, limit: Instant, silent: std::time::Duration) -> End {
        let reason = timer_reason(now, self.deadline, limit, silent, self.idle);
        match reason {
            "deadline" | "deadline_stalled" => End::Upstream {
                reason,
                detail: format!(
                    "the route's total deadline passed, the upstream silent for {silent:?}"
                ),
                code: ErrorCode::DeadlineExceeded,
            },
            "timeout_idle" => upstream(reason, format!("no event for {:?}", self.idle)),
            _ => upstream(
                reason,
                format!(
                    "the attempt's limit (timeouts.attempt) passed, the upstream silent for {silent:?}"
                ),
            ),
        }
    }

    /// Ends a whole answer whose stream went wrong after its finish: as if it had ended
    /// there, its connection closed rather than waited on for the rest.
    async fn end_whole(&mut self) -> End {
        self.stream.body.close();
        self.finish(false).await
    }

    /// Feeds the decoder the frames the upstream connection already has, so events that came
    /// in one read leave in one client write (one wake and one system call, not one per
    /// event). The connection task hands over one frame at a time, so it gets one turn to
    /// decode its next; nothing waits for the network. Returns the body's end if it was met.
    async fn drain_ready(&mut self) -> Option<Polled> {
        let mut yielded = false;
        let mut taken = 0;
        while taken < DRAIN_FRAMES {
            match self.stream.body.frame().now_or_never() {
                Some(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.stream.decoder.feed(&data);
                    }
                    taken += 1;
                    yielded = false;
                }
                Some(end) => return Some(end),
                None if !yielded => {
                    YieldNow(false).await;
                    yielded = true;
                }
                None => break,
            }
        }
        None
    }
}

/// Frames one drain may take, so a firehose upstream still reaches the client in pieces.
const DRAIN_FRAMES: usize = 64;

type Polled = Option<Result<hyper::body::Frame<Bytes>, crate::body::BoxError>>;

/// Lets the tasks already woken run, then resumes. Unlike `tokio::task::yield_now`, which
/// defers the task until the I/O driver has been polled (an `epoll_wait` per call), this
/// reschedules at once: the connection task woken by the frame just taken runs first.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
