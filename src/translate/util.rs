//! Small helpers shared by both translation directions (private to `translate`).

use serde_json::{Map, Value};

use super::{RequestOptions, TranslateError};

pub(super) type Obj = Map<String, Value>;

/// `None` and JSON `null` both mean "the client did not set this".
pub(super) fn given(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// The body must be a JSON object.
pub(super) fn body_object<'a>(body: &'a Value, what: &str) -> Result<&'a Obj, TranslateError> {
    body.as_object().ok_or_else(|| TranslateError::body(format!("{what} must be a JSON object")))
}

/// A field that must be an object when present.
pub(super) fn object<'a>(value: &'a Value, param: &str) -> Result<&'a Obj, TranslateError> {
    value.as_object().ok_or_else(|| TranslateError::field(param, "expected an object"))
}

/// A field that must be an array when present.
pub(super) fn array<'a>(value: &'a Value, param: &str) -> Result<&'a Vec<Value>, TranslateError> {
    value.as_array().ok_or_else(|| TranslateError::field(param, "expected an array"))
}

/// A field that must be a string when present.
pub(super) fn string<'a>(value: &'a Value, param: &str) -> Result<&'a str, TranslateError> {
    value.as_str().ok_or_else(|| TranslateError::field(param, "expected a string"))
}

/// A required string member of `obj`.
pub(super) fn required_str<'a>(
    obj: &'a Obj,
    key: &str,
    param: &str,
) -> Result<&'a str, TranslateError> {
    match given(obj.get(key)) {
        Some(v) => string(v, param),
        None => Err(TranslateError::field(param, "required field is missing")),
    }
}

/// A field that must be a boolean when present.
pub(super) fn boolean(value: &Value, param: &str) -> Result<bool, TranslateError> {
    value.as_bool().ok_or_else(|| TranslateError::field(param, "expected a boolean"))
}

/// A field that must be a number when present (returned untouched, so `1` stays an integer).
pub(super) fn number(value: &Value, param: &str) -> Result<Value, TranslateError> {
    if value.is_number() {
        Ok(value.clone())
    } else {
        Err(TranslateError::field(param, "expected a number"))
    }
}

/// A positive integer such as a token limit.
pub(super) fn positive_int(value: &Value, param: &str) -> Result<u64, TranslateError> {
    match value.as_u64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(TranslateError::field(param, "expected a positive integer")),
    }
}

/// A field the target dialect has no equivalent for: 400 naming it, unless the route drops
/// untranslatable fields (`Ok(())` then means "drop it").
pub(super) fn unsupported(
    opts: &RequestOptions,
    param: &str,
    target: &str,
) -> Result<(), TranslateError> {
    if opts.drop_unsupported_params {
        Ok(())
    } else {
        Err(TranslateError::field(
            param,
            format!(
                "`{param}` has no equivalent in the {target} API; remove it or set \
                 drop_unsupported_params on the route"
            ),
        ))
    }
}

/// A token count from an upstream usage object. Upstreams are not trusted: missing, null,
/// negative, fractional or non-numeric counts read as 0 (integral floats such as `12.0` are accepted).
pub(super) fn count(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::Number(n)) => n.as_u64().unwrap_or_else(|| match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => f as u64,
            _ => 0,
        }),
        _ => 0,
    }
}

/// Anthropic accepts tool-use ids matching `^[a-zA-Z0-9_-]+$`; other providers' ids (which a
/// client may replay after a failover) can contain more. Map the rest to `_`, deterministically so
/// a `tool_use` and its `tool_result` still match.
pub(super) fn anthropic_tool_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

/// `prefix` + `id`, unless `id` already starts with `prefix`.
pub(super) fn prefixed(prefix: &str, id: &str) -> String {
    if id.starts_with(prefix) { id.to_owned() } else { format!("{prefix}{id}") }
}

/// Serialize a JSON value compactly (tool `input` objects → OpenAI `arguments` strings).
pub(super) fn to_json_string(value: &Value) -> Result<String, TranslateError> {
    serde_json::to_string(value)
        .map_err(|e| TranslateError::body(format!("cannot serialize JSON: {e}")))
}
