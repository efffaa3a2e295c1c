//! Forwarding a committed stream to the client.
//!
//! Runs as its own task feeding the response body's channel. Events are re-framed with minimal
//! work (the payload bytes are forwarded as they came); the usage chunk tidegate asked for is
//! stripped when the client did not ask for it. An upstream failure after the commit point ends
//! the stream with an error event and no `[DONE]`, never a clean-looking truncation. A client
//! disconnect (the body's receiver dropped) is noticed even while the upstream is silent, and
//! drops the upstream connection at once.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use super::attempt::OpenStream;
use super::peek::{self, ChunkPeek};
use super::record::RequestRecord;
use crate::error::{Dialect, ErrorCode, GatewayError};
use crate::sse;

pub struct Forward {
    pub stream: OpenStream,
    pub tx: mpsc::Sender<Bytes>,
    pub rec: RequestRecord,
    pub deadline: Instant,
    pub idle: Duration,
    /// The client asked for the usage chunk.
    pub include_usage: bool,
    pub dialect: Dialect,
    /// Events decoded from one upstream read, sent to the client as one chunk: one wake and
    /// one write instead of one per event, with no added delay.
    pub out: BytesMut,
}

enum End {
    Complete,
    ClientGone,
    Upstream { reason: &'static str, detail: String, code: ErrorCode },
}

impl Forward {
    pub async fn run(mut self) {
        let end = self.pump().await;
        let route = self.rec.route_name().to_owned();
        match end {
            End::Complete => {
                self.rec.outcome = if self.rec.outcome == "fallback" { "fallback" } else { "ok" };
                self.rec.status = 200;
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
            End::Upstream { reason, detail, code } => {
                self.rec.outcome = "stream_error";
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

    /// Sends what is queued; false if the client is gone.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let t = Instant::now();
        let ok = self.tx.send(self.out.split().freeze()).await.is_ok();
        self.rec.client_wait += t.elapsed();
        ok
    }

    /// Queues one payload unless it is the usage chunk the client did not ask for.
    fn queue(&mut self, payload: &[u8], usage_only: bool) {
        if usage_only && !self.include_usage {
            return;
        }
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\n\n");
    }

    async fn finish(&mut self) -> End {
        self.rec.usage = self.stream.usage.or(self.rec.usage);
        self.rec.finish = self.stream.finish.clone();
        self.out.extend_from_slice(sse::DONE);
        if self.flush().await { End::Complete } else { End::ClientGone }
    }

    async fn pump(&mut self) -> End {
        for payload in std::mem::take(&mut self.stream.held) {
            let usage_only =
                matches!(peek::chunk(&payload), Some(ChunkPeek::Chunk { usage_only: true, .. }));
            self.queue(&payload, usage_only);
        }
        if self.stream.done {
            return self.finish().await;
        }
        loop {
            loop {
                let ev = match self.stream.decoder.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => return upstream("malformed", e.to_string()),
                };
                if ev.event.as_deref() == Some("error") {
                    return upstream("error_event", String::from_utf8_lossy(&ev.data).into_owned());
                }
                match peek::chunk(&ev.data) {
                    None => {
                        return upstream(
                            "malformed",
                            "a stream event that is not a chat chunk".into(),
                        );
                    }
                    Some(ChunkPeek::Error(m)) => return upstream("error_event", m),
                    Some(ChunkPeek::Done) => return self.finish().await,
                    Some(ChunkPeek::Chunk { finish, usage, usage_only, .. }) => {
                        if usage.is_some() {
                            self.stream.usage = usage;
                            self.rec.usage = usage;
                        }
                        if finish.is_some() {
                            self.stream.finish = finish;
                        }
                        self.queue(&ev.data, usage_only);
                    }
                }
            }
            if !self.flush().await {
                return End::ClientGone;
            }
            let wait_end = (Instant::now() + self.idle).min(self.deadline);
            let t = Instant::now();
            let frame = tokio::select! {
                biased;
                () = self.tx.closed() => return End::ClientGone,
                f = timeout_at(wait_end, self.stream.body.frame()) => f,
            };
            self.rec.upstream_wait += t.elapsed();
            match frame {
                Err(_) if Instant::now() >= self.deadline => {
                    return End::Upstream {
                        reason: "deadline",
                        detail: "the route's total deadline passed".into(),
                        code: ErrorCode::DeadlineExceeded,
                    };
                }
                Err(_) => return upstream("timeout_idle", format!("no event for {:?}", self.idle)),
                // A stream that ends after its finish reason is complete; `[DONE]` is only a
                // terminator, so tidegate supplies it.
                Ok(None) if self.stream.finish.is_some() => return self.finish().await,
                Ok(None) => {
                    return upstream("cut", "the stream ended before the answer finished".into());
                }
                Ok(Some(Err(e))) => return upstream("cut", e.to_string()),
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.stream.decoder.feed(&data);
                    }
                }
            }
        }
    }
}

fn upstream(reason: &'static str, detail: String) -> End {
    End::Upstream { reason, detail, code: ErrorCode::UpstreamUnavailable }
}
