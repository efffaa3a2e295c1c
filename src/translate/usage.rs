//! Token usage in neutral form, and its two wire shapes.
//!
//! The two dialects count input differently (wire-and-ops §2.5): Anthropic's `input_tokens`
//! **excludes** cache reads and cache writes, which it reports beside it; OpenAI's
//! `prompt_tokens` **includes** cached tokens (`prompt_tokens_details.cached_tokens`). [`Usage`]
//! holds the inclusive total plus the two cache parts, so both shapes can be produced exactly.

use serde_json::{Value, json};

use super::util::count;

/// Token usage in neutral form (what tidegate accounts). All counts are totals for the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, including `cached_input` and `cache_creation`.
    pub input: u64,
    /// Output tokens, including any reasoning/thinking tokens.
    pub output: u64,
    /// Input tokens read from the provider's prompt cache (billed at the cached rate).
    pub cached_input: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic bills a premium).
    pub cache_creation: u64,
}

/// `body.usage` when `value` is a whole response body, else `value` itself.
fn usage_object(value: &Value) -> &Value {
    match value.get("usage") {
        Some(inner) if inner.is_object() => inner,
        _ => value,
    }
}

impl Usage {
    /// Read an OpenAI `usage` object (or a whole response/chunk carrying one). Missing or
    /// malformed counts read as 0. `prompt_tokens_details.cache_write_tokens`, which some
    /// OpenAI-compatible routers report, becomes `cache_creation`.
    pub fn from_openai(value: &Value) -> Usage {
        let u = usage_object(value);
        let details = u.get("prompt_tokens_details");
        Usage {
            input: count(u.get("prompt_tokens")),
            output: count(u.get("completion_tokens")),
            cached_input: count(details.and_then(|d| d.get("cached_tokens"))),
            cache_creation: count(details.and_then(|d| d.get("cache_write_tokens"))),
        }
    }

    /// Read an Anthropic `usage` object (or a whole `message` carrying one): `input` is
    /// `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`.
    pub fn from_anthropic(value: &Value) -> Usage {
        let u = usage_object(value);
        let uncached = count(u.get("input_tokens"));
        let cached_input = count(u.get("cache_read_input_tokens"));
        let cache_creation = count(u.get("cache_creation_input_tokens"));
        Usage {
            input: uncached.saturating_add(cached_input).saturating_add(cache_creation),
            output: count(u.get("output_tokens")),
            cached_input,
            cache_creation,
        }
    }

    /// Input tokens billed at the full rate (neither read from nor written to the cache).
    pub fn uncached_input(&self) -> u64 {
        self.input.saturating_sub(self.cached_input).saturating_sub(self.cache_creation)
    }

    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// The OpenAI `usage` object. Cache writes have no standard OpenAI field: they stay inside
    /// `prompt_tokens`, which is what OpenAI clients sum.
    pub fn to_openai(&self) -> Value {
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.total(),
            "prompt_tokens_details": { "cached_tokens": self.cached_input },
        })
    }

    /// The Anthropic `usage` object, with both cache fields always present (as the API sends them).
    pub fn to_anthropic(&self) -> Value {
        json!({
            "input_tokens": self.uncached_input(),
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cached_input,
            "output_tokens": self.output,
        })
    }
}
