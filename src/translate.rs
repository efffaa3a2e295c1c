//! OpenAI ⇄ Anthropic translation: requests, responses and streams.
//!
//! tidegate answers every client in its own dialect whatever provider served it (SPEC §3
//! "Normalization"). This module holds the pure, synchronous halves of that promise:
//!
//! * [`openai_to_anthropic`]: an OpenAI chat client (`/v1/chat/completions`) served by an
//!   Anthropic Messages upstream.
//! * [`anthropic_to_openai`]: an Anthropic Messages client (`/v1/messages`) served by an
//!   OpenAI-style chat upstream.
//! * [`finish`], [`usage`], [`errors`]: the small maps both directions share.
//!
//! Nothing here does I/O, allocates per byte, or panics: every input, however malformed, yields
//! either a translation or a [`TranslateError`]. A request that cannot be translated becomes a 400
//! `invalid_request` naming the field (`param`); a response or stream event that cannot be read is a
//! broken upstream (retryable before the commit point, SPEC §5).
//!
//! Conventions shared by both directions:
//! * An explicit JSON `null` on an optional request field means "not given" (several SDKs and
//!   frameworks send nulls for unset options).
//! * Fields that cannot be translated fail with 400 naming the field, unless the route sets
//!   `drop_unsupported_params`. Fields that only carry a neutral/default value (`n: 1`,
//!   `logprobs: false`, `presence_penalty: 0`, ...) are accepted and dropped: they ask for nothing.
//! * Tool-call ids are kept as they are (so a client can round-trip them), except that characters
//!   outside `[A-Za-z0-9_-]` become `_` where an Anthropic API will see them (it rejects others).

pub mod anthropic_to_openai;
pub mod errors;
pub mod finish;
pub mod openai_to_anthropic;
pub mod usage;
mod util;

#[cfg(test)]
mod tests;

pub use errors::{
    anthropic_error_body, anthropic_error_from_openai, anthropic_error_from_openai_response,
    anthropic_error_type_for_status, openai_error_body, openai_error_from_anthropic,
};
pub use usage::Usage;

/// An upstream payload as a JSON value, its UTF-8 checked once for the whole text: serde_json's
/// slice reader checks every string again, and a stream runs this once per event.
pub(crate) fn parse_json(data: &[u8]) -> Result<serde_json::Value, String> {
    let text = std::str::from_utf8(data)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// A string read borrowed from the payload when it has no escapes. serde borrows a `Cow<str>`
/// field but not one inside an `Option` (serde-rs/serde#2016), so `Option<Cow<str>>` copies
/// every string; `Option<Str>` does not.
#[derive(serde::Deserialize)]
pub(crate) struct Str<'a>(#[serde(borrow)] pub std::borrow::Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a> Str<'a> {
    pub fn cow(self) -> std::borrow::Cow<'a, str> {
        self.0
    }

    pub fn owned(self) -> String {
        self.0.into_owned()
    }
}

/// `T` read only from a JSON object. A struct that derives `Deserialize` also reads a JSON
/// array, element by element in field order, where a `Value` lookup finds nothing: the fast
/// roads (typed reads that must agree with the general `Value` ones) wrap every struct in this.
pub(crate) struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Object<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(Only(std::marker::PhantomData))
    }
}

/// A field a fast road accepts only as `null` (or absent) as `Option<Nothing>`, or only as an
/// empty array as `Option<Vec<Nothing>>`: nothing deserializes into it.
#[derive(serde::Deserialize)]
pub(crate) enum Nothing {}

impl<T> std::ops::Deref for Object<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A request that cannot be translated: becomes a 400 `invalid_request` with `param` naming the field.
///
/// The response and stream translators use it too, for upstream bodies or events they cannot
/// read; the caller treats those as a broken upstream, not as a client error.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateError {
    /// Human-readable reason, safe to return to the client (never echoes content).
    pub message: String,
    /// The offending field as a path, e.g. `messages[3].tool_calls[0].function.arguments`.
    pub param: Option<String>,
    /// A machine-readable reason for an Anthropic client, sent as `error.details` (the
    /// anthropic SDK recovers from some refusals by what it finds there).
    pub details: Option<serde_json::Value>,
}

impl TranslateError {
    /// An error about the field at `param`.
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), param: Some(param.into()), details: None }
    }

    /// An error about the body as a whole (no single field to blame).
    pub fn body(message: impl Into<String>) -> Self {
        Self { message: message.into(), param: None, details: None }
    }

    /// With `error.details` for an Anthropic client.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// A request no target can take: 400 `invalid_request` naming the field.
impl From<TranslateError> for crate::error::GatewayError {
    fn from(e: TranslateError) -> Self {
        let mut out = Self::invalid(e.message, e.param.as_deref());
        out.details = e.details;
        out
    }
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.param {
            Some(param) => write!(f, "{} (param: {param})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TranslateError {}

/// Per-request settings the translators need from the route and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOptions {
    /// Used when the client sent no max tokens and the target dialect requires one (Anthropic).
    pub default_max_tokens: u64,
    /// Route setting: drop fields that cannot be translated instead of failing with 400.
    pub drop_unsupported_params: bool,
    /// The upstream model name to put in the translated request.
    pub upstream_model: String,
}
