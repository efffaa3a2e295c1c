//! The client's request in its own dialect, and the upstream body each target gets: passed
//! through with only `model` (and OpenAI's `stream_options`) spliced in when the target speaks
//! the client's dialect, translated when it does not.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

use super::attempt::Endpoint;
use super::request::{ChatRequest, EmbeddingsRequest, MessagesRequest};
use crate::config::{Config, ProviderKind, Wire};
use crate::error::{Dialect, GatewayError};
use crate::limits::tokens::{self, Family, Shape};
use crate::runtime::TargetRuntime;
use crate::translate::{RequestOptions, TranslateError, anthropic_to_openai, openai_to_anthropic};

/// Output tokens asked of an Anthropic upstream when neither the client nor the price table says.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A parsed client request.
pub enum Ask<'a> {
    Chat(ChatRequest<'a>),
    Messages(MessagesRequest<'a>),
    Embeddings(EmbeddingsRequest<'a>),
}

/// A client request ready to become upstream bodies.
pub struct Prepared<'a> {
    pub ask: Ask<'a>,
    raw: &'a [u8],
    /// The same bytes, owned (a stream task that resumes rebuilds the request from them).
    pub raw_owned: Bytes,
    /// OpenAI streams: the client's `stream_options` with `include_usage: true`.
    stream_options: Option<String>,
    /// The whole body as a value, parsed on first need (translation and token counting).
    value: OnceLock<Option<Value>>,
    /// `limits.max_output_tokens`: the output limit to write upstream (the client's, clamped,
    /// or the route's when the client sent none). `None`: the client's request as sent.
    clamp: Option<u64>,
    /// Prompt tokens per vocabulary (o200k, cl100k), counted on first need.
    counts: [OnceLock<u64>; 2],
    /// The client's headers that go on upstream: trace context, and an Anthropic client's
    /// `anthropic-beta`.
    pub pass_on: crate::providers::PassOn,
}

impl<'a> Prepared<'a> {
    pub fn new(ask: Ask<'a>, raw: &'a Bytes) -> Result<Self, GatewayError> {
        let stream_options = match &ask {
            Ask::Chat(c) if c.stream => Some(stream_options_with_usage(c)?),
            _ => None,
        };
        Ok(Self {
            ask,
            raw,
            raw_owned: raw.clone(),
            stream_options,
            value: OnceLock::new(),
            clamp: None,
            counts: [OnceLock::new(), OnceLock::new()],
            pass_on: crate::providers::PassOn::default(),
        })
    }

    /// Applies the route's `max_output_tokens` (embeddings have no output to clamp).
    pub fn clamp_output(&mut self, max_output_tokens: Option<u64>) {
        if let (Some(max), false) = (max_output_tokens, matches!(self.ask, Ask::Embeddings(_))) {
            self.clamp = Some(self.client_max_output().map_or(max, |c| c.min(max)));
        }
    }

    /// The output limit the client sent.
    fn client_max_output(&self) -> Option<u64> {
        match &self.ask {
            Ask::Chat(c) => c.max_completion_tokens.or(c.max_tokens),
            Ask::Messages(m) => Some(m.max_tokens),
            Ask::Embeddings(_) => None,
        }
    }

    /// The output limit the upstream will get, when one is known.
    pub fn output_limit(&self) -> Option<u64> {
        self.clamp.or_else(|| self.client_max_output())
    }

    /// The request field holding the output limit that applies, when it is the client's own
    /// (not lowered by the route's `max_output_tokens`): what an error should name as `param`.
    pub fn output_limit_field(&self) -> Option<&'static str> {
        if self.client_max_output()? != self.output_limit()? {
            return None;
        }
        match &self.ask {
            Ask::Chat(c) if c.max_completion_tokens.is_some() => Some("max_completion_tokens"),
            _ => Some("max_tokens"),
        }
    }

    /// The field a cost refusal names: what the client can lower to fit, `n`, its own output
    /// limit, else the prompt (the route's `max_output_tokens` is not the client's to change).
    pub fn cost_param(&self) -> &'static str {
        if self.n() > 1 { "n" } else { self.output_limit_field().unwrap_or("messages") }
    }

    /// Choices asked for (`n`; 1 unless the client set it).
    pub fn n(&self) -> u64 {
        match &self.ask {
            Ask::Chat(c) => c.n,
            Ask::Messages(_) | Ask::Embeddings(_) => 1,
        }
    }

    /// The prompt's tokens for a model of `family` (counted once per vocabulary).
    pub fn input_tokens(&self, family: Family) -> u64 {
        let raw = *self.counts[family.base_index()].get_or_init(|| match self.value() {
            Some(v) => tokens::raw_count(v, self.shape(), family),
            // Not reachable for a parsed request; every byte a token is an upper bound.
            None => self.raw.len() as u64,
        });
        family.scale(raw)
    }

    /// A cheap upper bound of [`Self::input_tokens`] before [`Family::scale`], without
    /// tokenizing, when one holds: a byte-level BPE token is at least one byte and every
    /// message's JSON is longer than its fixed overhead, so the body's size bounds the count.
    /// Images and documents or files given by reference count a flat amount whatever their
    /// JSON size, so a body that may hold one has no bound.
    pub fn input_bound(&self) -> Option<u64> {
        // A JSON escape could spell these names without their bytes: no bound then either.
        let holds = |needle: &[u8]| memchr::memmem::find(self.raw, needle).is_some();
        if [&b"\"image"[..], b"\"file", b"\"url\"", b"\\u"].into_iter().any(holds) {
            return None;
        }
        Some(self.raw.len() as u64 + 3)
    }

    fn shape(&self) -> Shape {
        match self.ask {
            Ask::Chat(_) => Shape::Chat,
            Ask::Messages(_) => Shape::Messages,
            Ask::Embeddings(_) => Shape::Embeddings,
        }
    }

    fn value(&self) -> Option<&Value> {
        self.value.get_or_init(|| serde_json::from_slice(self.raw).ok()).as_ref()
    }

    /// The field the output limit goes in for target `t`, and its value, when the route
    /// clamps: the field the client used, else `max_completion_tokens` for `kind: openai`
    /// and `max_tokens` for the others (SPEC §4).
    fn clamp_field(&self, t: &TargetRuntime) -> Option<(&'static str, u64)> {
        let max = self.clamp?;
        let field = match &self.ask {
            Ask::Chat(c) if c.max_tokens.is_some() => "max_tokens",
            Ask::Chat(c) if c.max_completion_tokens.is_some() => "max_completion_tokens",
            _ if t.provider.spec.kind == ProviderKind::OpenAi => "max_completion_tokens",
            _ => "max_tokens",
        };
        Some((field, max))
    }

    pub fn dialect(&self) -> Dialect {
        match self.ask {
            Ask::Messages(_) => Dialect::Anthropic,
            Ask::Chat(_) | Ask::Embeddings(_) => Dialect::OpenAi,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match self.ask {
            Ask::Embeddings(_) => Endpoint::Embeddings,
            Ask::Chat(_) | Ask::Messages(_) => Endpoint::Chat,
        }
    }

    pub fn model(&self) -> Option<&str> {
        match &self.ask {
            Ask::Chat(c) => c.model.as_deref(),
            Ask::Messages(m) => m.model.as_deref(),
            Ask::Embeddings(e) => e.model.as_deref(),
        }
    }

    pub fn stream(&self) -> bool {
        match &self.ask {
            Ask::Chat(c) => c.stream,
            Ask::Messages(m) => m.stream,
            Ask::Embeddings(_) => false,
        }
    }

    /// The client asked for OpenAI's usage chunk.
    pub fn include_usage(&self) -> bool {
        matches!(&self.ask, Ask::Chat(c) if c.include_usage)
    }

    /// A documented estimate of the prompt's tokens (4 bytes a token) for an Anthropic stream's
    /// `message_start` when the upstream is OpenAI-style and reports usage only at the end.
    pub fn input_estimate(&self) -> u64 {
        self.raw.len().div_ceil(4) as u64
    }

    /// The cache-tier key of this request on `route` (parses the body on first use).
    pub fn cache_key(&self, route: &str) -> Option<[u8; 32]> {
        let value = self.value.get_or_init(|| serde_json::from_slice(self.raw).ok());
        crate::cache::key(route, value.as_ref()?)
    }

    /// The upstream body for target `t`.
    pub fn body_for(
        &self,
        t: &TargetRuntime,
        config: &Config,
        drop_unsupported: bool,
    ) -> Result<Bytes, TranslateError> {
        let wire = t.provider.spec.wire;
        let model = t.model_json.as_str();
        let clamp = self.clamp_field(t);
        let clamp_value = clamp.map(|(_, v)| v.to_string()).unwrap_or_default();
        match (&self.ask, wire) {
            (Ask::Chat(c), Wire::OpenAi) => {
                let so = self.stream_options.as_deref().map(|so| ("stream_options", so));
                let clamped = clamp.map(|(field, _)| (field, clamp_value.as_str()));
                let replace: Vec<(&str, &str)> =
                    [Some(("model", model)), so, clamped].into_iter().flatten().collect();
                Ok(Bytes::from(c.obj.write(&replace, &[])))
            }
            (Ask::Messages(m), Wire::Anthropic) => {
                let clamped = clamp.map(|_| ("max_tokens", clamp_value.as_str()));
                let replace: Vec<(&str, &str)> =
                    [Some(("model", model)), clamped].into_iter().flatten().collect();
                Ok(Bytes::from(m.obj.write(&replace, &[])))
            }
            (Ask::Embeddings(e), _) => Ok(Bytes::from(e.obj.write(&[("model", model)], &[]))),
            (ask, _) => {
                let Some(value) = self.value() else {
                    // The body is a JSON object (it was parsed field by field), so what fails
                    // here is a value JSON allows but a full parse does not hold: a number out
                    // of range (`1e999`), or nesting past serde_json's limit.
                    let why = serde_json::from_slice::<Value>(self.raw)
                        .err()
                        .map_or_else(String::new, |e| format!(": {e}"));
                    return Err(TranslateError::body(format!(
                        "the request cannot be translated for this target{why}"
                    )));
                };
                let opts = RequestOptions {
                    default_max_tokens: config
                        .models
                        .get(&t.target.model)
                        .and_then(|m| m.max_output)
                        .unwrap_or(DEFAULT_MAX_TOKENS),
                    drop_unsupported_params: drop_unsupported,
                    upstream_model: t.target.model.clone(),
                };
                let mut out = match ask {
                    Ask::Chat(_) => openai_to_anthropic::request(value, &opts)?,
                    _ => anthropic_to_openai::request(value, &opts)?,
                };
                // The translator writes OpenAI's current name for the limit; other OpenAI-wire
                // servers may know only `max_tokens`, and would not hold to the other (SPEC §4).
                if matches!(ask, Ask::Messages(_))
                    && t.provider.spec.kind != ProviderKind::OpenAi
                    && let Some(obj) = out.as_object_mut()
                    && let Some(limit) = obj.remove("max_completion_tokens")
                {
                    obj.insert("max_tokens".into(), limit);
                }
                if let (Some(max), Some(obj)) = (self.clamp, out.as_object_mut()) {
                    // The translator carried the client's limit over; clamp whichever field
                    // holds it, or inject one.
                    let field = ["max_tokens", "max_completion_tokens"]
                        .into_iter()
                        .find(|f| obj.contains_key(*f))
                        .or(self.clamp_field(t).map(|(f, _)| f))
                        .unwrap_or("max_tokens");
                    obj.insert(field.to_owned(), Value::from(max));
                }
                Ok(Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
            }
        }
    }
}

/// The client's `stream_options` with `include_usage: true` set, so usage is always accounted.
fn stream_options_with_usage(chat: &ChatRequest<'_>) -> Result<String, GatewayError> {
    let mut map: serde_json::Map<String, Value> = match chat.obj.get("stream_options") {
        Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get()).map_err(|_| {
            GatewayError::invalid("`stream_options` must be an object", Some("stream_options"))
        })?,
        _ => serde_json::Map::new(),
    };
    map.insert("include_usage".into(), Value::Bool(true));
    Ok(Value::Object(map).to_string())
}
