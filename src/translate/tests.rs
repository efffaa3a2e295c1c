//! Tests of the translation module. Goldens: every file in `tests/fixtures/translate/` holds an
//! input and its reviewed expected output (`{"kind", "note", "input", "expected" |
//! "expected_error", ...}`); the goldens are the spec. `cases`, `streams` and `maps` pin down the
//! targeted behaviours; `robustness` feeds arbitrary and mutated input to every translator, and
//! `roads` compares the fast roads with the general ones.

mod cases;
mod golden;
mod maps;
mod roads;
mod robustness;
mod streams;
mod tool_calls;

use serde_json::Value;

/// `(name, text)` of a fixture, embedded so the tests need no working directory. The path is
/// relative to this file, so it keeps working when `src/translate/**` is copied into the gateway.
macro_rules! fixture {
    ($name:literal) => {
        ($name, include_str!(concat!("../../tests/fixtures/translate/", $name, ".json")))
    };
}

/// Every fixture (`golden::every_fixture_file_is_embedded` checks none is missing).
const FIXTURES: &[(&str, &str)] = &[
    fixture!("a2o_request_drop_unsupported"),
    fixture!("a2o_request_error_server_tool"),
    fixture!("a2o_request_error_top_k"),
    fixture!("a2o_request_error_unknown_field"),
    fixture!("a2o_request_images"),
    fixture!("a2o_request_multi_turn"),
    fixture!("a2o_request_plain_text"),
    fixture!("a2o_request_structured_output"),
    fixture!("a2o_request_tool_roundtrip"),
    fixture!("a2o_request_tools"),
    fixture!("a2o_response_content_filter"),
    fixture!("a2o_response_refusal"),
    fixture!("a2o_response_text_cache"),
    fixture!("a2o_response_tool_calls"),
    fixture!("a2o_response_truncated_tool_call"),
    fixture!("a2o_stream_error"),
    fixture!("a2o_stream_no_usage"),
    fixture!("a2o_stream_text"),
    fixture!("a2o_stream_tools"),
    fixture!("o2a_request_drop_unsupported"),
    fixture!("o2a_request_error_both_max"),
    fixture!("o2a_request_error_data_url"),
    fixture!("o2a_request_error_n"),
    fixture!("o2a_request_error_seed"),
    fixture!("o2a_request_error_tool_arguments"),
    fixture!("o2a_request_error_unknown_field"),
    fixture!("o2a_request_images"),
    fixture!("o2a_request_json_object"),
    fixture!("o2a_request_plain_text"),
    fixture!("o2a_request_structured_output"),
    fixture!("o2a_request_system_multi_turn"),
    fixture!("o2a_request_tool_roundtrip"),
    fixture!("o2a_request_tools"),
    fixture!("o2a_response_stop_max_tokens"),
    fixture!("o2a_response_stop_model_context_window_exceeded"),
    fixture!("o2a_response_stop_pause_turn"),
    fixture!("o2a_response_stop_refusal"),
    fixture!("o2a_response_stop_some_future_reason"),
    fixture!("o2a_response_stop_stop_sequence"),
    fixture!("o2a_response_text_cache"),
    fixture!("o2a_response_tool_only"),
    fixture!("o2a_response_tool_use"),
    fixture!("o2a_stream_cumulative_usage"),
    fixture!("o2a_stream_error"),
    fixture!("o2a_stream_max_tokens"),
    fixture!("o2a_stream_text"),
    fixture!("o2a_stream_tools"),
];

fn parse(name: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
}
