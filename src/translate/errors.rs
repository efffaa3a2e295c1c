//! Error-type maps between the dialects (docs.claude.com/en/api/errors; OpenAI error codes).
//!
//! Used when an upstream error (HTTP status, error body, or a mid-stream error event) must be
//! shown to a client of the other dialect.

use serde_json::Value;

/// The Anthropic `error.type` for an HTTP status: 400 `invalid_request_error` (also other 4xx),
/// 401 `authentication_error`, 403 `permission_error`, 404 `not_found_error`, 413
/// `request_too_large`, 429 `rate_limit_error`, 529 `overloaded_error`, 500 and other 5xx `api_error`.
pub fn anthropic_error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The `error` object of an error body: `{"type":"error","error":{..}}` (Anthropic),
/// `{"error":{..}}` (OpenAI), or the inner object itself.
fn inner(body: &Value) -> &Value {
    match body.get("error") {
        Some(e) if e.is_object() => e,
        _ => body,
    }
}

fn message_of(err: &Value) -> String {
    match err.get("message") {
        Some(Value::String(s)) => s.clone(),
        _ => "upstream error".to_owned(),
    }
}

/// `(type, message)` for an OpenAI-shaped error, from an Anthropic error body or event data.
///
/// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
/// `rate_limit_error` and `overloaded_error` keep their names (the last as wire-and-ops §2.5
/// recommends); `request_too_large` → `invalid_request_error`; `api_error` → `server_error`
/// (OpenAI's word for 500s); `timeout_error` → `timeout`; other types pass through unchanged.
/// A body that is not a readable error gives `("upstream_error", "upstream error")`.
pub fn openai_error_from_anthropic(body: &Value) -> (String, String) {
    let err = inner(body);
    let Some(kind) = err.get("type").and_then(Value::as_str) else {
        return ("upstream_error".to_owned(), message_of(err));
    };
    let mapped = match kind {
        "request_too_large" => "invalid_request_error",
        "api_error" => "server_error",
        "timeout_error" => "timeout",
        other => other,
    };
    (mapped.to_owned(), message_of(err))
}

/// `(type, message)` for an Anthropic-shaped error, from an OpenAI error body or stream chunk.
///
/// OpenAI puts the class in `type` and the detail in `code` (e.g. `insufficient_quota`,
/// `model_not_found`); both are consulted. Unknown classes become `api_error`.
pub fn anthropic_error_from_openai(body: &Value) -> (String, String) {
    let err = inner(body);
    let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("");
    let (kind, code) = (field("type"), field("code"));
    let mapped = match (kind, code) {
        (_, "invalid_api_key") | ("authentication_error", _) => "authentication_error",
        (_, "model_not_found") | ("not_found_error", _) => "not_found_error",
        (_, "rate_limit_exceeded" | "insufficient_quota")
        | ("rate_limit_error" | "requests" | "tokens" | "insufficient_quota", _) => {
            "rate_limit_error"
        }
        ("permission_error", _) => "permission_error",
        ("overloaded_error", _) => "overloaded_error",
        ("request_too_large", _) => "request_too_large",
        ("invalid_request_error", _) => "invalid_request_error",
        _ => "api_error",
    };
    (mapped.to_owned(), message_of(err))
}

/// `(type, message)` for an Anthropic client, from an OpenAI error response of `status`: where
/// Anthropic gives the status a type of its own (401, 403, 404, 413, 429), the status decides,
/// whatever class the OpenAI body named (an upstream 413 is `request_too_large`).
pub fn anthropic_error_from_openai_response(status: u16, body: &Value) -> (String, String) {
    let (kind, message) = anthropic_error_from_openai(body);
    match status {
        401 | 403 | 404 | 413 | 429 => {
            (anthropic_error_type_for_status(status).to_owned(), message)
        }
        _ => (kind, message),
    }
}

/// An OpenAI error body (`{"error":{message, type, param, code}}`): the HTTP body of an error
/// response, or the payload of a mid-stream `data:` line (openai-python raises on any SSE object
/// with an `error` key).
pub fn openai_error_body(
    error_type: &str,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    serde_json::json!({ "error": { "message": message, "type": error_type, "param": param, "code": code } })
}

/// An Anthropic error body (`{"type":"error","error":{type, message}}`): the HTTP body of an
/// error response, or the data of a mid-stream `event: error`.
pub fn anthropic_error_body(error_type: &str, message: &str) -> Value {
    serde_json::json!({ "type": "error", "error": { "type": error_type, "message": message } })
}
