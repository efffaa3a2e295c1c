//! Property-style robustness: arbitrary bytes, arbitrary JSON and mutated goldens fed to every
//! translator. The property is simply "returns": no panic, errors are `TranslateError` values.
//! A deterministic xorshift PRNG keeps failures reproducible without extra dependencies.

use serde_json::{Map, Value, json};

use super::roads::{Both, a2o_chunk, answer_roads_agree};
use super::{FIXTURES, parse};
use crate::translate::{RequestOptions, anthropic_to_openai, openai_to_anthropic};

pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(super) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Keys and strings the translators look at, so random documents reach deep code paths.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "id",
    "tool_call_id",
    "tools",
    "tool_choice",
    "parameters",
    "input_schema",
    "input",
    "image_url",
    "url",
    "source",
    "media_type",
    "data",
    "tool_use_id",
    "is_error",
    "system",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "stop_sequences",
    "temperature",
    "top_p",
    "n",
    "stream",
    "response_format",
    "json_schema",
    "schema",
    "output_config",
    "format",
    "metadata",
    "user_id",
    "usage",
    "choices",
    "index",
    "delta",
    "finish_reason",
    "stop_reason",
    "message",
    "content_block",
    "partial_json",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "error",
    "refusal",
    "parallel_tool_calls",
    "disable_parallel_tool_use",
    "strict",
    "thinking",
    "top_k",
];
const STRINGS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "text",
    "image_url",
    "image",
    "tool_use",
    "tool_result",
    "thinking",
    "base64",
    "url",
    "auto",
    "any",
    "none",
    "required",
    "json_schema",
    "json_object",
    "text_delta",
    "input_json_delta",
    "end_turn",
    "tool_use",
    "max_tokens",
    "stop",
    "length",
    "tool_calls",
    "data:image/png;base64,AAAA",
    "data:,x",
    "data:image/png;base64",
    "https://e.x/a.png",
    "ftp://x",
    "{",
    "{}",
    "{\"a\":1}",
    "[1]",
    "",
    "\u{0}",
    "é",
    "functions.x:0",
    "custom",
    "web_search_20250305",
    "error",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let choice = if depth == 0 { rng.below(6) } else { rng.below(9) };
    match choice {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => match rng.below(5) {
            0 => json!(-1),
            1 => json!(1.5e300),
            2 => json!(u64::MAX),
            3 => json!(-0.0),
            _ => json!(rng.below(5000)),
        },
        3..=5 => Value::String(rng.pick(STRINGS).to_owned()),
        6 | 7 => {
            let mut map = Map::new();
            for _ in 0..rng.below(5) {
                map.insert(rng.pick(KEYS).to_owned(), random_value(rng, depth - 1));
            }
            Value::Object(map)
        }
        _ => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth - 1)).collect()),
    }
}

/// Replace, delete or retype one random node of `v`.
pub(super) fn mutate(v: &mut Value, rng: &mut Rng) {
    let depth = rng.below(6);
    mutate_at(v, rng, depth);
}

fn mutate_at(node: &mut Value, rng: &mut Rng, depth: usize) {
    if depth > 0 {
        match node {
            Value::Object(m) if !m.is_empty() => {
                let key = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
                if let Some(child) = m.get_mut(&key) {
                    return mutate_at(child, rng, depth - 1);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len());
                if let Some(child) = a.get_mut(i) {
                    return mutate_at(child, rng, depth - 1);
                }
            }
            _ => {}
        }
    }
    match (rng.below(4), &mut *node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let key = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
            m.remove(&key);
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            a.remove(i);
        }
        (2, _) => *node = Value::Array(vec![node.take()]),
        _ => *node = random_value(rng, 3),
    }
}

fn options(rng: &mut Rng) -> RequestOptions {
    RequestOptions {
        default_max_tokens: 16,
        drop_unsupported_params: rng.below(2) == 0,
        upstream_model: "m".into(),
    }
}

/// Run every non-stream translator on `v` (results ignored: returning is the property).
fn all_translators(v: &Value, rng: &mut Rng) {
    let opts = options(rng);
    let _ = openai_to_anthropic::request(v, &opts);
    let _ = anthropic_to_openai::request(v, &opts);
    let _ = openai_to_anthropic::response(v, 0);
    let _ = anthropic_to_openai::response(v);
    answer_roads_agree(&v.to_string());
}

const EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "",
];

/// Feed a sequence of payloads to both stream translators, in every mode.
fn all_streams(payloads: &[Vec<u8>], rng: &mut Rng) {
    let mut o2a = Both::new(rng.below(2) == 0);
    let mut a2o = anthropic_to_openai::StreamTranslator::new(7);
    for data in payloads {
        let event = rng.pick(EVENTS);
        let _ = o2a.on_event(event, data);
        let _ = a2o_chunk(&mut a2o, data);
        let _ = (o2a.usage(), o2a.finished(), a2o.usage(), a2o.upstream_error());
    }
    let _ = a2o.finish();
    let _ = a2o.finish();
}

#[test]
fn arbitrary_json_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..4000 {
        let mut v = random_value(&mut rng, 5);
        if rng.below(2) == 0 {
            // Give the top level the shape translators expect, so the walk goes deeper.
            let mut map = Map::new();
            for key in ["messages", "choices", "content", "tools", "usage"] {
                if rng.below(2) == 0 {
                    map.insert(
                        key.into(),
                        Value::Array((0..3).map(|_| random_value(&mut rng, 4)).collect()),
                    );
                }
            }
            map.insert("extra".into(), v);
            v = Value::Object(map);
        }
        all_translators(&v, &mut rng);
    }
}

#[test]
fn mutated_goldens_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for (name, text) in FIXTURES {
        let doc = parse(name, text);
        for _ in 0..150 {
            let mut input = doc["input"].clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut input, &mut rng);
            }
            if doc["kind"].as_str().is_some_and(|k| k.ends_with("_stream")) {
                let mut payloads: Vec<Vec<u8>> = input
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|item| {
                        serde_json::to_vec(item.get("data").unwrap_or(item)).unwrap_or_default()
                    })
                    .collect();
                if let Some(p) = payloads.get_mut(rng.below(8)) {
                    let cut = rng.below(p.len() + 1);
                    p.truncate(cut); // a torn payload
                }
                all_streams(&payloads, &mut rng);
            } else {
                all_translators(&input, &mut rng);
            }
        }
    }
}

#[test]
fn golden_streams_with_real_event_names_survive_mutation() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for (name, text) in FIXTURES {
        let doc = parse(name, text);
        if doc["kind"] != "o2a_stream" {
            continue;
        }
        for _ in 0..300 {
            let mut events = doc["input"].clone();
            mutate(&mut events, &mut rng);
            let mut t = Both::new(rng.below(2) == 0);
            for ev in events.as_array().into_iter().flatten() {
                let data = serde_json::to_vec(&ev["data"]).unwrap_or_default();
                let _ = t.on_event(ev["event"].as_str().unwrap_or("message_start"), &data);
            }
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    for _ in 0..3000 {
        let payloads: Vec<Vec<u8>> = (0..rng.below(6))
            .map(|_| {
                let len = rng.below(64);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if rng.below(3) == 0 {
                    // Often start like JSON so the parser gets further.
                    bytes.insert(0, b'{');
                }
                bytes
            })
            .collect();
        all_streams(&payloads, &mut rng);
        for p in &payloads {
            if let Ok(v) = serde_json::from_slice::<Value>(p) {
                all_translators(&v, &mut rng);
            }
        }
    }
}
