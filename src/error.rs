//! Gateway errors and the one place they become HTTP responses.
//!
//! Every error the gateway itself originates is a [`GatewayError`] carrying an [`ErrorCode`]
//! (the SPEC's public code), a human message and, where there is one, the offending `param`.
//! [`GatewayError::into_response`] renders it in the dialect of the front door the client used,
//! so an OpenAI SDK gets `{"error":{...}}` and an Anthropic SDK gets `{"type":"error",...}`
//! (whose message names the `param`, since that shape has no member for it).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::Body;

const ERROR_CODE: HeaderName = HeaderName::from_static("x-tidegate-error-code");
const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// The longest `Retry-After` that still comes with `x-should-retry: true` (a rate limit's
/// minute window fits; a budget window's hour does not).
pub const MAX_CLIENT_WAIT_SECS: u64 = 60;

/// The client's wire dialect, chosen by the front door it called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.
    OpenAi,
    /// `/v1/messages`.
    Anthropic,
}

/// The SPEC's error codes (§3). The string form is public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    ModelNotFound,
    Unauthorized,
    RequestTooLarge,
    InputTokensExceeded,
    CostCeilingExceeded,
    BudgetExhausted,
    RateLimited,
    IdempotencyKeyReused,
    IdempotencyInFlight,
    ContractViolation,
    UpstreamUnavailable,
    DeadlineExceeded,
    Overloaded,
    /// No endpoint at this path (404).
    NotFound,
    /// The endpoint exists but not for this method (405).
    MethodNotAllowed,
    /// The request body did not arrive within `server.body_read_timeout` (408).
    RequestTimeout,
    /// The client went away before its request body was whole: logged and counted as
    /// `aborted` with nginx's 499; the answer it would get has nobody to read it.
    ClientClosed,
}

impl ErrorCode {
    /// The public code string (`x-tidegate-error-code`, `error.code`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::ModelNotFound => "model_not_found",
            Self::Unauthorized => "unauthorized",
            Self::RequestTooLarge => "request_too_large",
            Self::InputTokensExceeded => "input_tokens_exceeded",
            Self::CostCeilingExceeded => "cost_ceiling_exceeded",
            Self::BudgetExhausted => "budget_exhausted",
            Self::RateLimited => "rate_limited",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyInFlight => "idempotency_in_flight",
            Self::ContractViolation => "contract_violation",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Overloaded => "overloaded",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::ClientClosed => "client_closed",
        }
    }

    /// HTTP status for this code (SPEC §3 table).
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::InputTokensExceeded | Self::CostCeilingExceeded => {
                StatusCode::BAD_REQUEST
            }
            Self::ModelNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BudgetExhausted | Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyInFlight => StatusCode::CONFLICT,
            Self::ContractViolation | Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// OpenAI-style `error.type`.
    fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::InputTokensExceeded
            | Self::CostCeilingExceeded
            | Self::IdempotencyKeyReused
            | Self::IdempotencyInFlight
            | Self::RequestTooLarge
            | Self::ModelNotFound
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::RequestTimeout
            | Self::ClientClosed => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::BudgetExhausted | Self::RateLimited => "rate_limit_error",
            Self::ContractViolation | Self::UpstreamUnavailable => "upstream_error",
            Self::DeadlineExceeded => "timeout",
            Self::Overloaded => "overloaded_error",
        }
    }

    /// Anthropic-style `error.type` (SPEC §3 table, in brackets).
    pub fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::InputTokensExceeded
            | Self::CostCeilingExceeded
            | Self::IdempotencyKeyReused
            | Self::IdempotencyInFlight => "invalid_request_error",
            Self::ModelNotFound | Self::NotFound => "not_found_error",
            Self::MethodNotAllowed | Self::RequestTimeout | Self::ClientClosed => {
                "invalid_request_error"
            }
            Self::Unauthorized => "authentication_error",
            Self::RequestTooLarge => "request_too_large",
            Self::BudgetExhausted | Self::RateLimited => "rate_limit_error",
            Self::ContractViolation | Self::UpstreamUnavailable | Self::DeadlineExceeded => {
                "api_error"
            }
            Self::Overloaded => "overloaded_error",
        }
    }

    /// Whether the client may retry: only these carry `x-should-retry: true` (SPEC §3).
    fn client_may_retry(self) -> bool {
        matches!(
            self,
            Self::IdempotencyInFlight
                | Self::BudgetExhausted
                | Self::RateLimited
                | Self::Overloaded
        )
    }
}

/// A client-given name or path as an error message quotes it: at most 100 characters, so a
/// hostile one is not echoed back whole.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

/// An error originated by the gateway (not an upstream answer passed through).
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub code: ErrorCode,
    pub message: String,
    /// The offending field or header, when there is one.
    pub param: Option<String>,
    /// Sent as `Retry-After` (whole seconds, rounded up) on retryable codes.
    pub retry_after: Option<Duration>,
    /// Sent as `Allow` on a 405: the methods the endpoint takes (RFC 9110 §15.5.6).
    pub allow: Option<&'static str>,
    /// Anthropic shape only: `error.details`, a machine-readable reason the anthropic SDK
    /// acts on (`thread_unsupported_request`). The OpenAI shape has no such member.
    pub details: Option<serde_json::Value>,
}

impl GatewayError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            allow: None,
            details: None,
        }
    }

    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self { param: param.map(str::to_owned), ..Self::new(ErrorCode::InvalidRequest, message) }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The methods the endpoint takes, for a 405's `Allow`.
    pub fn with_allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The JSON body in the given dialect.
    pub fn body(&self, dialect: Dialect) -> Bytes {
        let json = match dialect {
            Dialect::OpenAi => serde_json::to_vec(&OpenAiEnvelope {
                error: OpenAiError {
                    message: &self.message,
                    kind: self.code.openai_type(),
                    param: self.param.as_deref(),
                    code: self.code.as_str(),
                },
            }),
            Dialect::Anthropic => serde_json::to_vec(&AnthropicEnvelope {
                kind: "error",
                error: AnthropicError {
                    kind: self.code.anthropic_type(),
                    message: &self.anthropic_message(),
                    details: self.details.as_ref(),
                },
            }),
        };
        // Serializing these plain structs cannot fail; fall back to a fixed body regardless.
        Bytes::from(json.unwrap_or_else(|_| br#"{"error":{"message":"internal error"}}"#.to_vec()))
    }

    /// The Anthropic `error.message`: the code first (`[budget_exhausted] ...`), then the
    /// offending field when there is one (the shape has no `param`), unless the message already
    /// quotes it.
    fn anthropic_message(&self) -> String {
        let code = self.code.as_str();
        match self.param.as_deref() {
            Some(p) if !self.message.contains(&format!("`{p}`")) => {
                format!("[{code}] `{p}`: {}", self.message)
            }
            _ => format!("[{code}] {}", self.message),
        }
    }

    /// The one error-to-response mapping.
    pub fn into_response(self, dialect: Dialect) -> Response<Body> {
        let mut resp = Response::new(Body::full(self.body(dialect)));
        *resp.status_mut() = self.code.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(ERROR_CODE, HeaderValue::from_static(self.code.as_str()));
        if self.code.client_may_retry() {
            let secs =
                self.retry_after.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
            // A wait longer than a client should block on (a budget window's end) is still
            // told, but as no retry: the Anthropic SDK obeys `x-should-retry: true` and then
            // sleeps whatever `Retry-After` says, so an hour's window would hang the caller.
            let retry = if secs <= MAX_CLIENT_WAIT_SECS { "true" } else { "false" };
            h.insert(SHOULD_RETRY, HeaderValue::from_static(retry));
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        } else {
            h.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        if matches!(self.code, ErrorCode::Unauthorized) {
            // RFC 9110 §11.6.1: a 401 names the scheme it wants.
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(methods) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        if matches!(self.code, ErrorCode::RequestTooLarge | ErrorCode::RequestTimeout) {
            // The client may still be sending: close after the response is flushed.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The error as one SSE event, for failures after the commit point.
    pub fn sse_event(&self, dialect: Dialect) -> Bytes {
        let body = self.body(dialect);
        let mut out = Vec::with_capacity(body.len() + 24);
        match dialect {
            Dialect::OpenAi => out.extend_from_slice(b"data: "),
            Dialect::Anthropic => out.extend_from_slice(b"event: error\ndata: "),
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for GatewayError {}

#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
}

#[derive(Serialize)]
struct AnthropicEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_has_code_type_param() {
        let e = GatewayError::invalid("bad", Some("stream"));
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "stream");
        assert_eq!(v["error"]["message"], "bad");
    }

    #[test]
    fn anthropic_shape_prefixes_code() {
        let e = GatewayError::new(ErrorCode::BudgetExhausted, "spent");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "[budget_exhausted] spent");
    }

    /// The Anthropic shape has no `param`: its message names the field instead (SPEC §3), once.
    #[test]
    fn anthropic_shape_names_the_param_in_the_message() {
        let e = GatewayError::invalid(
            "required field is missing",
            Some("messages[0].content[0].source"),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(
            v["error"]["message"],
            "[invalid_request] `messages[0].content[0].source`: required field is missing"
        );
        assert!(v["error"].get("param").is_none(), "{v}");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["message"], "required field is missing", "OpenAI shape unchanged");
        assert_eq!(v["error"]["param"], "messages[0].content[0].source");
        // A message that already quotes its field is not prefixed again.
        let e = GatewayError::invalid("`top_k` has no equivalent", Some("top_k"));
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["error"]["message"], "[invalid_request] `top_k` has no equivalent");
    }

    #[test]
    fn quoted_names_are_clipped() {
        assert_eq!(clip("chat"), "chat");
        let long = "é".repeat(5000);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 101);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn retry_hints_follow_the_spec() {
        let r =
            GatewayError::new(ErrorCode::UpstreamUnavailable, "x").into_response(Dialect::OpenAi);
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["x-should-retry"], "false");
        assert!(r.headers().get("retry-after").is_none());
        let r = GatewayError::new(ErrorCode::Overloaded, "x")
            .with_retry_after(Duration::from_millis(1500))
            .into_response(Dialect::OpenAi);
        assert_eq!(r.headers()["x-should-retry"], "true");
        assert_eq!(r.headers()["retry-after"], "2");
        // A minute is still worth retrying; a budget window's end is not (helper-46: the
        // Anthropic SDK slept a whole hour's Retry-After, twice).
        for (secs, retry) in [(60, "true"), (61, "false"), (3600, "false")] {
            let r = GatewayError::new(ErrorCode::BudgetExhausted, "x")
                .with_retry_after(Duration::from_secs(secs))
                .into_response(Dialect::Anthropic);
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["x-should-retry"], retry, "{secs} s");
            assert_eq!(r.headers()["retry-after"], secs.to_string().as_str());
        }
    }
}
