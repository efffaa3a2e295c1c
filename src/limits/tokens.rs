//! Input token counting before the call (SPEC §6).
//!
//! OpenAI models are counted with their real BPE vocabulary (`o200k_base` for the GPT-4o, 4.1,
//! 4.5, 5 and o-series families; `cl100k_base` for GPT-4, GPT-3.5 and the embedding models)
//! through the `bpe-openai` crate. Models without a public tokenizer (Claude, open models,
//! the mock) get a documented conservative estimate: the `o200k_base` count times 1.3, rounded
//! up, which stays above Claude's and Llama's counts for English prose and code.
//!
//! A chat request counts like OpenAI's own recipe: 3 tokens priming the reply, 4 per message
//! plus its content, name and tool calls; tool definitions and response schemas count as their
//! JSON text; each image counts a flat [`IMAGE_TOKENS`] (the largest a single image costs on
//! either provider), since its real cost depends on pixels tidegate does not decode, and a
//! document or file given by URL or id a flat [`REFERENCE_TOKENS`].
//! Vocabularies load on first use (about 70 ms and 50-70 MiB each), so a config without token
//! limits or budgets never loads one; see [`warm`]. Counts of long texts (256 bytes and up) are
//! remembered in a small bounded table, since system prompts and conversation history come back
//! with every turn.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use serde_json::Value;

/// Tokens charged for one image, whatever its size.
pub const IMAGE_TOKENS: u64 = 1600;
/// Tokens charged for a document or file the request only points to (by URL or file id):
/// its size is unknowable before the call, and a PDF of Anthropic's 100-page limit runs to
/// tens of thousands of tokens, so this stands for a large one.
pub const REFERENCE_TOKENS: u64 = 100_000;
/// Estimate for models without a public tokenizer: `o200k` count x 13 / 10, rounded up.
const ESTIMATE_NUM: u64 = 13;
const ESTIMATE_DEN: u64 = 10;

/// Which tokenizer counts a model's prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    O200k,
    Cl100k,
    /// No public tokenizer: a conservative estimate from `o200k`.
    Estimate,
}

impl Family {
    /// The tokenizer for an upstream model name.
    pub fn of(model: &str) -> Family {
        let m = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
        let o200k =
            ["gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "gpt-oss", "o1", "o3", "o4"];
        if o200k.iter().any(|p| m.starts_with(p)) {
            return Family::O200k;
        }
        let cl100k = ["gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada"];
        if cl100k.iter().any(|p| m.starts_with(p)) {
            return Family::Cl100k;
        }
        Family::Estimate
    }

    /// Which vocabulary the family counts with.
    fn base(self) -> Base {
        match self {
            Family::Cl100k => Base::Cl100k,
            Family::O200k | Family::Estimate => Base::O200k,
        }
    }

    /// The family's count from its base vocabulary's count.
    pub fn scale(self, base_count: u64) -> u64 {
        match self {
            Family::Estimate => (base_count * ESTIMATE_NUM).div_ceil(ESTIMATE_DEN),
            Family::O200k | Family::Cl100k => base_count,
        }
    }

    /// Index of the vocabulary (0: o200k, 1: cl100k), for per-request count caches.
    pub fn base_index(self) -> usize {
        self.base() as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum Base {
    O200k = 0,
    Cl100k = 1,
}

fn tokenizer(base: Base) -> &'static bpe_openai::Tokenizer {
    match base {
        Base::O200k => bpe_openai::o200k_base(),
        Base::Cl100k => bpe_openai::cl100k_base(),
    }
}

/// Loads the vocabulary `family` counts with (so the first request does not pay for it).
pub fn warm(family: Family) {
    let _ = tokenizer(family.base()).count("warm");
}

/// Texts at least this long have their counts remembered.
const CACHED_FROM: usize = 256;
/// Counts remembered; the table starts over when full.
const CACHE_ENTRIES: usize = 4096;

static HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

/// (vocabulary, hash of the text, its length).
type CountKey = (u8, u64, usize);

/// Counts of recently seen long texts, by vocabulary, hash and length: system prompts
/// and conversation history come back with every turn, and counting them again would be most
/// of a limited route's overhead.
static COUNTS: std::sync::LazyLock<Mutex<HashMap<CountKey, u32>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::with_capacity(CACHE_ENTRIES)));

/// Tokens of one text in `family`'s vocabulary (unscaled: see [`Family::scale`]).
fn text(base: Base, s: &str) -> u64 {
    if s.is_empty() {
        return 0;
    }
    if s.len() < CACHED_FROM {
        return tokenizer(base).count(s) as u64;
    }
    // Keyed per process: a colliding text cannot be prepared offline to borrow a cheap count.
    let key = (base as u8, HASHER.hash_one(s), s.len());
    let lock = || COUNTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&n) = lock().get(&key) {
        return u64::from(n);
    }
    let n = tokenizer(base).count(s);
    let mut m = lock();
    if m.len() >= CACHE_ENTRIES {
        m.clear();
    }
    m.insert(key, u32::try_from(n).unwrap_or(u32::MAX));
    n as u64
}

/// What kind of request body is being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI chat completions.
    Chat,
    /// Anthropic Messages.
    Messages,
    /// OpenAI embeddings.
    Embeddings,
}

/// The prompt tokens of a request body for a model of `family`.
pub fn count(body: &Value, shape: Shape, family: Family) -> u64 {
    family.scale(raw_count(body, shape, family))
}

/// The count in `family`'s vocabulary before [`Family::scale`] (the same for every family
/// sharing a vocabulary, so a request counts once per vocabulary).
pub fn raw_count(body: &Value, shape: Shape, family: Family) -> u64 {
    let base = family.base();
    match shape {
        Shape::Chat => chat(body, base),
        Shape::Messages => messages(body, base),
        Shape::Embeddings => embeddings(body, base),
    }
}

fn json_text(base: Base, v: &Value) -> u64 {
    match v {
        Value::Null => 0,
        Value::String(s) => text(base, s),
        other => text(base, &other.to_string()),
    }
}

fn chat(body: &Value, base: Base) -> u64 {
    let mut n = 3;
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        n += 4;
        n += content(base, m.get("content"));
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            n += 1 + text(base, name);
        }
        for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let f = &call["function"];
            n += 3 + json_text(base, &f["name"]) + json_text(base, &f["arguments"]);
        }
    }
    n += tools_and_schema(body, base);
    n
}

fn messages(body: &Value, base: Base) -> u64 {
    let mut n = 3 + content(base, body.get("system"));
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        n += 4 + content(base, m.get("content"));
    }
    n + tools_and_schema(body, base)
}

/// Tool definitions and structured-output schemas, counted as their JSON text.
fn tools_and_schema(body: &Value, base: Base) -> u64 {
    let mut n = 0;
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        n += json_text(base, tools);
    }
    for key in ["response_format", "output_config"] {
        if let Some(v) = body.get(key).filter(|t| !t.is_null()) {
            n += json_text(base, v);
        }
    }
    n
}

/// A message's content in either dialect: a string, or an array of parts/blocks.
fn content(base: Base, c: Option<&Value>) -> u64 {
    match c {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) => text(base, s),
        Some(Value::Array(parts)) => parts.iter().map(|p| part(base, p)).sum(),
        Some(other) => json_text(base, other),
    }
}

fn part(base: Base, p: &Value) -> u64 {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => json_text(base, &p["text"]),
        Some("image_url" | "image" | "input_image") => IMAGE_TOKENS,
        Some("tool_use") => json_text(base, &p["name"]) + json_text(base, &p["input"]),
        Some("tool_result") => content(base, p.get("content")),
        Some("thinking") => json_text(base, &p["thinking"]),
        // Content the request points to rather than holds: an Anthropic document by URL or
        // file id, an OpenAI file by id.
        Some("document") if matches!(p["source"]["type"].as_str(), Some("url" | "file")) => {
            REFERENCE_TOKENS
        }
        Some("file") if p["file"].get("file_id").is_some() => REFERENCE_TOKENS,
        // Anything else (inline documents, audio, future types): its JSON text, a
        // conservative stand-in (base64 data counts far more than the content it encodes).
        _ => json_text(base, p),
    }
}

fn embeddings(body: &Value, base: Base) -> u64 {
    match body.get("input") {
        Some(Value::String(s)) => text(base, s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => text(base, s),
                // Already token ids: one each.
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len() as u64,
                other => json_text(base, other),
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reference counts from OpenAI's `tiktoken` (`encoding.encode(text)`), for fixed strings.
    #[test]
    fn counts_match_tiktoken_reference() {
        let cases: &[(&str, u64, u64)] = &[
            // text, o200k_base, cl100k_base
            ("Hello, world!", 4, 4),
            ("The quick brown fox jumps over the lazy dog.", 10, 10),
            ("antidisestablishmentarianism", 6, 6),
            ("2 + 2 = 4", 7, 7),
            ("お誕生日おめでとう", 8, 9),
            ("", 0, 0),
        ];
        for (s, o, c) in cases {
            assert_eq!(text(Base::O200k, s), *o, "o200k {s:?}");
            assert_eq!(text(Base::Cl100k, s), *c, "cl100k {s:?}");
        }
    }

    #[test]
    fn families_follow_model_names() {
        assert_eq!(Family::of("gpt-4o-mini"), Family::O200k);
        assert_eq!(Family::of("gpt-5"), Family::O200k);
        assert_eq!(Family::of("o3-mini"), Family::O200k);
        assert_eq!(Family::of("openai/gpt-4.1"), Family::O200k);
        assert_eq!(Family::of("gpt-4-turbo"), Family::Cl100k);
        assert_eq!(Family::of("gpt-3.5-turbo"), Family::Cl100k);
        assert_eq!(Family::of("text-embedding-3-small"), Family::Cl100k);
        assert_eq!(Family::of("claude-haiku-4-5"), Family::Estimate);
        assert_eq!(Family::of("llama-3.3-70b-instruct"), Family::Estimate);
    }

    #[test]
    fn estimate_is_o200k_scaled_up() {
        assert_eq!(Family::Estimate.scale(10), 13);
        assert_eq!(Family::Estimate.scale(1), 2);
        assert_eq!(Family::O200k.scale(10), 10);
    }

    #[test]
    fn chat_counts_like_openai() {
        // 3 priming + 4 per message + contents ("Hello, world!" = 4, "Hi" = 1).
        let body = json!({"messages": [
            {"role": "system", "content": "Hello, world!"},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}
        ]});
        assert_eq!(count(&body, Shape::Chat, Family::O200k), 3 + 4 + 4 + 4 + 1 + IMAGE_TOKENS);
    }

    #[test]
    fn messages_count_system_and_blocks() {
        let body = json!({"system": "Hello, world!", "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
        ]});
        let raw = 3 + 4 + 4 + 1 + 4 + text(Base::O200k, "f") + text(Base::O200k, "{}");
        assert_eq!(count(&body, Shape::Messages, Family::O200k), raw);
        assert_eq!(count(&body, Shape::Messages, Family::Estimate), (raw * 13).div_ceil(10));
    }

    #[test]
    fn embeddings_count_strings_and_ids() {
        let body = json!({"input": ["Hello, world!", [1, 2, 3]]});
        assert_eq!(count(&body, Shape::Embeddings, Family::Cl100k), 4 + 3);
        assert_eq!(count(&json!({"input": "Hi"}), Shape::Embeddings, Family::Cl100k), 1);
    }

    #[test]
    fn remembered_counts_equal_fresh_ones_and_stay_bounded() {
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let fresh = tokenizer(Base::O200k).count(&long) as u64;
        assert_eq!(text(Base::O200k, &long), fresh);
        assert_eq!(text(Base::O200k, &long), fresh, "second time, from the table");
        assert_eq!(text(Base::Cl100k, &long), tokenizer(Base::Cl100k).count(&long) as u64);
        for i in 0..CACHE_ENTRIES + 10 {
            text(Base::O200k, &format!("{i} {long}"));
        }
        let len = COUNTS.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(len <= CACHE_ENTRIES, "{len}");
    }

    #[test]
    fn hostile_shapes_do_not_panic() {
        for body in [
            json!(null),
            json!({"messages": "x"}),
            json!({"messages": [1, null, {"content": 5}]}),
            json!({"input": {"a": 1}}),
        ] {
            for shape in [Shape::Chat, Shape::Messages, Shape::Embeddings] {
                let _ = count(&body, shape, Family::O200k);
            }
        }
    }
}
