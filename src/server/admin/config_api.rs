//! `/admin/config*`: the config lifecycle over HTTP (SPEC §8), behind an optional bearer token.
//!
//! `GET /admin/config` shows the active version, the pin, candidates, history and the last
//! reload error; `POST /admin/config/pin` (`{"version": "..."}`, default the active one),
//! `/unpin` and `/rollback` change it and answer the same document. Errors are
//! `{"error": {"message", "code"}}`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::body::{Body, ReadError, read_limited};
use crate::config::reload::{ConfigDoc, OpError, Reloader};

/// Largest request body accepted by the admin API.
const MAX_BODY: usize = 64 * 1024;
/// How long a pin's body may take to arrive: it is a few bytes, and a client that sends its
/// head and then nothing must not hold the request open for good.
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin API's state: the reloader and the token, if one is required.
pub struct ConfigApi {
    pub reloader: Arc<Reloader>,
    token: Option<String>,
}

impl ConfigApi {
    /// `token`: `None` or empty leaves `/admin/*` open (the admin plane is then loopback-only).
    pub fn new(reloader: Arc<Reloader>, token: Option<String>) -> Self {
        Self { reloader, token: token.filter(|t| !t.is_empty()) }
    }

    /// Answers a request whose path starts with `/admin`.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if !self.authorized(req.headers()) {
            let mut r = error(&OpError {
                status: 401,
                code: "unauthorized",
                message: "missing or wrong bearer token".into(),
            });
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let r = &self.reloader;
        let result = match (req.method().clone(), path.as_str()) {
            // HEAD as GET, as on the other admin endpoints (hyper sends the head only).
            (Method::GET | Method::HEAD, "/admin/config") => r.status_async().await,
            (Method::POST, "/admin/config/pin") => match read_pin(req.into_body()).await {
                Ok(version) => r.pin(version).await,
                Err(e) => Err(e),
            },
            (Method::POST, "/admin/config/unpin") => r.unpin().await,
            (Method::POST, "/admin/config/rollback") => r.rollback().await,
            (_, "/admin/config") => return method_not_allowed("GET, HEAD"),
            (_, "/admin/config/pin" | "/admin/config/unpin" | "/admin/config/rollback") => {
                return method_not_allowed("POST");
            }
            _ => Err(OpError {
                status: 404,
                code: "not_found",
                message: format!("no admin endpoint {path}"),
            }),
        };
        match result {
            Ok(doc) => document(&doc),
            Err(e) => error(&e),
        }
    }

    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(want) = &self.token else { return true };
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| crate::config::auth::bearer_token(v.as_bytes()))
            .unwrap_or(b"");
        constant_time_eq(got, want.as_bytes())
    }
}

/// Compares SHA-256 digests without an early exit, so neither the token's content nor its
/// length leaks through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A 405 with its `Allow` header (RFC 9110 §15.5.6).
fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let e = OpError { status: 405, code: "method_not_allowed", message: format!("{allowed} only") };
    let mut r = error(&e);
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    #[serde(default)]
    version: Option<String>,
}

/// The version to pin: `{"version": "..."}`; an empty body or `{}` means the active one.
async fn read_pin(body: Incoming) -> Result<Option<String>, OpError> {
    let body = std::pin::pin!(body);
    let read = tokio::time::timeout(BODY_WAIT, read_limited(body, MAX_BODY)).await;
    let bytes: Bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Err(_) | Ok(Err(ReadError::TimedOut)) => {
            return Err(OpError {
                status: 408,
                code: "request_timeout",
                message: format!("the request body did not arrive within {BODY_WAIT:?}"),
            });
        }
        Ok(Err(ReadError::TooLarge)) => {
            return Err(OpError {
                status: 413,
                code: "request_too_large",
                message: format!("the request body is larger than {MAX_BODY} bytes"),
            });
        }
        Ok(Err(ReadError::Gone)) => {
            return Err(OpError::bad_request("the client went away before its body was whole"));
        }
        Ok(Err(ReadError::Broken(e))) => {
            return Err(OpError::bad_request(format!("cannot read the request body: {e}")));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    const EXPECTED: &str = "expected a JSON object {\"version\": \"...\"} or an empty body";
    // An object only (serde would read `[]` as a struct with no fields), and errors that do
    // not name internal types.
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| OpError::bad_request(format!("{EXPECTED}: {e}")))?;
    if !v.is_object() {
        return Err(OpError::bad_request(EXPECTED));
    }
    let pin =
        PinBody::deserialize(v).map_err(|e| OpError::bad_request(format!("{EXPECTED}: {e}")))?;
    Ok(pin.version)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn document(doc: &ConfigDoc) -> Response<Body> {
    match serde_json::to_vec_pretty(doc) {
        Ok(mut b) => {
            b.push(b'\n');
            json_response(StatusCode::OK, b)
        }
        Err(e) => error(&OpError::internal(e.to_string())),
    }
}

fn error(e: &OpError) -> Response<Body> {
    let body = serde_json::json!({ "error": { "message": e.message, "code": e.code } });
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, format!("{body}\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        use crate::config::auth::bearer_token;
        for v in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", " Bearer  s3cret "] {
            assert_eq!(bearer_token(v.as_bytes()), Some(&b"s3cret"[..]), "{v}");
        }
        assert_eq!(bearer_token(b"Basic s3cret"), None);
        assert_eq!(bearer_token(b"Bearers3cret"), None);
        assert_eq!(bearer_token(b"Bearer"), Some(&b""[..]));
    }
}
