//! The golden runner: each fixture's input through its translator, compared exactly
//! (`serde_json::Value` equality) with the reviewed expected output.

use serde_json::{Value, json};

use super::{FIXTURES, parse};
use crate::translate::{
    RequestOptions, TranslateError, Usage, anthropic_to_openai, openai_to_anthropic,
};

const CREATED: u64 = 1_700_000_000;

/// All fixtures of one kind, parsed.
fn fixtures(kind: &str) -> Vec<(&'static str, Value)> {
    FIXTURES
        .iter()
        .map(|(name, text)| (*name, parse(name, text)))
        .filter(|(_, doc)| doc["kind"] == kind)
        .collect()
}

fn options(doc: &Value, model: &str) -> RequestOptions {
    let o = &doc["options"];
    RequestOptions {
        default_max_tokens: o["default_max_tokens"].as_u64().unwrap_or(1024),
        drop_unsupported_params: o["drop_unsupported_params"].as_bool().unwrap_or(false),
        upstream_model: o["upstream_model"].as_str().unwrap_or(model).to_owned(),
    }
}

fn usage_json(u: Usage) -> Value {
    json!({ "input": u.input, "output": u.output, "cached_input": u.cached_input, "cache_creation": u.cache_creation })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Compare one fixture; `Err` describes the mismatch.
fn check(name: &str, doc: &Value) -> Result<(), String> {
    let input = &doc["input"];
    let (actual, usage, finished): (Result<Value, TranslateError>, Option<Usage>, Option<bool>) =
        match doc["kind"].as_str().unwrap_or("") {
            "o2a_request" => (
                openai_to_anthropic::request(input, &options(doc, "claude-sonnet-4-5")),
                None,
                None,
            ),
            "a2o_request" => {
                (anthropic_to_openai::request(input, &options(doc, "gpt-4o-mini")), None, None)
            }
            "o2a_response" => (openai_to_anthropic::response(input, CREATED), None, None),
            "a2o_response" => (anthropic_to_openai::response(input), None, None),
            "o2a_stream" => {
                let mut t = openai_to_anthropic::StreamTranslator::new(
                    doc["include_usage"] == true,
                    CREATED,
                );
                let mut out = Vec::new();
                let mut result = Ok(());
                for ev in input.as_array().into_iter().flatten() {
                    let data = serde_json::to_vec(&ev["data"]).unwrap_or_default();
                    match t.on_event(ev["event"].as_str().unwrap_or(""), &data) {
                        Ok(items) => out.extend(items.into_iter().map(|o| match o {
                            openai_to_anthropic::StreamOut::Chunk(c) => serde_json::from_str(&c).unwrap(),
                            openai_to_anthropic::StreamOut::Done => json!("[DONE]"),
                            openai_to_anthropic::StreamOut::UpstreamError { error_type, message } => {
                                json!({ "upstream_error": { "error_type": error_type, "message": message } })
                            }
                        })),
                        Err(e) => result = Err(e),
                    }
                }
                (result.map(|()| Value::Array(out)), Some(t.usage()), Some(t.finished()))
            }
            "a2o_stream" => {
                let mut t = anthropic_to_openai::StreamTranslator::new(
                    doc["input_tokens_estimate"].as_u64().unwrap_or(0),
                );
                let mut out = Vec::new();
                let mut result = Ok(());
                for chunk in input.as_array().into_iter().flatten() {
                    let step = if chunk == "[DONE]" {
                        t.finish()
                    } else {
                        t.on_chunk(&serde_json::to_vec(chunk).unwrap_or_default())
                    };
                    match step {
                        Ok(events) => out.extend(
                            events.into_iter().map(|e| json!({ "event": e.event, "data": e.data })),
                        ),
                        Err(e) => result = Err(e),
                    }
                }
                (result.map(|()| Value::Array(out)), Some(t.usage()), Some(t.finished()))
            }
            other => return Err(format!("{name}: unknown kind {other:?}")),
        };
    match (&actual, doc.get("expected"), doc.get("expected_error")) {
        (Ok(got), Some(want), _) if got == want => {}
        (Ok(got), Some(want), _) => {
            return Err(format!(
                "{name}: output differs\n--- expected\n{}\n--- actual\n{}",
                pretty(want),
                pretty(got)
            ));
        }
        (Err(e), _, Some(want)) if want["param"] == json!(e.param) => {}
        (got, _, _) => {
            return Err(format!(
                "{name}: expected {:?}/{:?}, got {got:?}",
                doc.get("expected").is_some(),
                doc.get("expected_error")
            ));
        }
    }
    if let (Some(u), Some(want)) = (usage, doc.get("expected_usage"))
        && usage_json(u) != *want
    {
        return Err(format!("{name}: usage {} != expected {}", usage_json(u), want));
    }
    if let (Some(f), Some(want)) = (finished, doc.get("expected_finished"))
        && json!(f) != *want
    {
        return Err(format!("{name}: finished {f} != expected {want}"));
    }
    Ok(())
}

fn run_kind(kind: &str) {
    let docs = fixtures(kind);
    assert!(!docs.is_empty(), "no fixtures of kind {kind}");
    let failures: Vec<String> =
        docs.iter().filter_map(|(name, doc)| check(name, doc).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} {kind} goldens failed:\n{}",
        failures.len(),
        docs.len(),
        failures.join("\n\n")
    );
}

#[test]
fn golden_o2a_requests() {
    run_kind("o2a_request");
}

#[test]
fn golden_o2a_responses() {
    run_kind("o2a_response");
}

#[test]
fn golden_o2a_streams() {
    run_kind("o2a_stream");
}

#[test]
fn golden_a2o_requests() {
    run_kind("a2o_request");
}

#[test]
fn golden_a2o_responses() {
    run_kind("a2o_response");
}

#[test]
fn golden_a2o_streams() {
    run_kind("a2o_stream");
}

/// A fixture file that is not embedded above would silently never run.
#[test]
fn every_fixture_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = FIXTURES.iter().map(|(n, _)| (*n).to_owned()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded);
    for (name, text) in FIXTURES {
        let doc = parse(name, text);
        assert!(doc["note"].is_string(), "{name}: every golden says what it pins down");
    }
}
