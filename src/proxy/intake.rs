//! Reading a request's body: its content type, the size limit (a 413 the client sees even
//! while it keeps sending), and `server.body_read_timeout`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use tokio::time::Instant;

use crate::body::{ReadError, drain, read_limited};
use crate::error::{ErrorCode, GatewayError};

/// The body's description: JSON (`application/json` or a `+json` type; none said is taken as
/// JSON), said once, and not encoded (a compressed body would otherwise be read as malformed
/// JSON, and a wrongly labelled one taken silently).
fn check_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    if let Some(ct) = types.next() {
        if types.next().is_some() {
            return Err(GatewayError::invalid(
                "send one content-type header, not several",
                Some("content-type"),
            ));
        }
        if !ct.to_str().is_ok_and(is_json) {
            return Err(GatewayError::invalid(
                "content-type must be application/json",
                Some("content-type"),
            ));
        }
    }
    for enc in headers.get_all(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("?").trim();
        if !(enc.is_empty() || enc.eq_ignore_ascii_case("identity")) {
            return Err(GatewayError::invalid(
                format!("content-encoding {enc:?} is not supported: send the body uncompressed"),
                Some("content-encoding"),
            ));
        }
    }
    Ok(())
}

/// Whether a content-type's media type (before any `;` parameters) is JSON.
fn is_json(ct: &str) -> bool {
    let media = ct.split(';').next().unwrap_or("").trim();
    let (kind, subtype) = media.split_once('/').unwrap_or((media, ""));
    let tail = subtype.len().checked_sub(5).and_then(|i| subtype.get(i..));
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || tail.is_some_and(|t| t.eq_ignore_ascii_case("+json")))
}

/// The whole body, at most `limits.0` bytes, arrived by `start + limits.1`.
pub(super) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limits: (usize, Duration),
    start: Instant,
) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + 'static,
{
    check_headers(headers)?;
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
        Err(ReadError::Gone) => Err(GatewayError::new(
            ErrorCode::ClientClosed,
            "the client went away before its request body was whole",
        )),
        Err(ReadError::TimedOut) => Err(GatewayError::new(
            ErrorCode::RequestTimeout,
            format!("the request body did not arrive within {within:?} (server.body_read_timeout)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pairs: &[(&str, &str)]) -> Result<(), String> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        check_headers(&h).map_err(|e| e.message)
    }

    /// helper-45: the check was a prefix match (`application/jsonx` passed, the standard
    /// `application/vnd.api+json` did not), read only the first of two types, and ignored
    /// `content-encoding` (a gzip body was "malformed JSON", a `br` label on plain JSON taken).
    #[test]
    fn the_body_must_be_said_to_be_plain_json() {
        for ok in [
            vec![],
            vec![("content-type", "application/json")],
            vec![("content-type", " Application/JSON; charset=utf-8")],
            vec![("content-type", "application/vnd.api+json")],
            vec![("content-type", "application/json"), ("content-encoding", "identity")],
        ] {
            assert_eq!(check(&ok), Ok(()), "{ok:?}");
        }
        for (bad, says) in [
            (vec![("content-type", "application/jsonx")], "must be application/json"),
            (vec![("content-type", "application/json-patch")], "must be application/json"),
            (vec![("content-type", "text/plain")], "must be application/json"),
            (
                vec![("content-type", "application/json"), ("content-type", "text/plain")],
                "one content-type",
            ),
            (vec![("content-encoding", "gzip")], "\"gzip\" is not supported"),
            (vec![("content-encoding", "br")], "not supported"),
        ] {
            let e = check(&bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
