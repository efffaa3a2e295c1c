//! Reading a request's body: its content type, the size limit (a 413 the client sees even
//! while it keeps sending), and `server.body_read_timeout`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use tokio::time::Instant;

use crate::body::{ReadError, drain, read_limited};
use crate::error::{ErrorCode, GatewayError};

/// The whole body, at most `limits.0` bytes, arrived by `start + limits.1`.
pub(super) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limits: (usize, Duration),
    start: Instant,
) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ok = ct
            .to_str()
            .is_ok_and(|s| s.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if !ok {
            return Err(GatewayError::invalid(
                "content-type must be application/json",
                Some("content-type"),
            ));
        }
    }
    let (limit, within) = limits;
    let mut body = std::pin::pin!(body);
    let read = {
        let mut read = std::pin::pin!(read_limited(body.as_mut(), limit));
        // A body that is already here (nearly every one) is read without arming a timer.
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
        match polled {
            std::task::Poll::Ready(read) => read,
            std::task::Poll::Pending => tokio::time::timeout_at(start + within, read)
                .await
                .unwrap_or(Err(ReadError::TimedOut)),
        }
    };
    match read {
        Ok(b) => Ok(b),
        Err(ReadError::TooLarge) => {
            // Read what the client is still sending (bounded) so it sees the 413, not a
            // reset; unless it waits to be asked for its body (`Expect: 100-continue`):
            // reading would ask for it, and the 413 alone tells it not to send it.
            let waits = headers
                .get(header::EXPECT)
                .is_some_and(|v| v.to_str().is_ok_and(|s| s.eq_ignore_ascii_case("100-continue")));
            if !waits {
                let bound = limit.saturating_mul(4).min(64 << 20);
                drain(body.as_mut(), bound, Duration::from_secs(5)).await;
            }
            Err(GatewayError::new(
                ErrorCode::RequestTooLarge,
                format!("request body exceeds the {limit}-byte limit"),
            ))
        }
        Err(ReadError::Broken(e)) => {
            Err(GatewayError::invalid(format!("could not read the request body: {e}"), None))
        }
        Err(ReadError::TimedOut) => Err(GatewayError::new(
            ErrorCode::RequestTimeout,
            format!("the request body did not arrive within {within:?} (server.body_read_timeout)"),
        )),
    }
}
