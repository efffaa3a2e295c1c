//! The small maps: finish reasons, error types, usage conversions.

use serde_json::json;

use crate::translate::{
    Usage, anthropic_error_body, anthropic_error_from_openai, anthropic_error_type_for_status,
    finish, openai_error_body, openai_error_from_anthropic,
};

#[test]
fn finish_reason_maps() {
    for (stop, want) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
        ("??", "stop"),
    ] {
        assert_eq!(finish::openai_finish_reason(stop), want, "{stop}");
    }
    for (reason, want) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        ("??", "end_turn"),
    ] {
        assert_eq!(finish::anthropic_stop_reason(reason), want, "{reason}");
    }
}

#[test]
fn error_maps() {
    for (status, want) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
        (422, "invalid_request_error"),
    ] {
        assert_eq!(anthropic_error_type_for_status(status), want, "{status}");
    }
    let body = json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } });
    assert_eq!(
        openai_error_from_anthropic(&body),
        ("overloaded_error".into(), "Overloaded".into())
    );
    let api = json!({ "type": "api_error", "message": "boom" });
    assert_eq!(openai_error_from_anthropic(&api), ("server_error".into(), "boom".into()));
    assert_eq!(openai_error_from_anthropic(&json!("x")).0, "upstream_error");
    let quota = json!({ "error": { "message": "quota", "type": "insufficient_quota", "code": "insufficient_quota" } });
    assert_eq!(anthropic_error_from_openai(&quota).0, "rate_limit_error");
    let bad =
        json!({ "error": { "message": "bad", "type": "invalid_request_error", "code": null } });
    assert_eq!(anthropic_error_from_openai(&bad), ("invalid_request_error".into(), "bad".into()));
    assert_eq!(
        anthropic_error_from_openai(&json!({ "error": { "type": "server_error" } })).0,
        "api_error"
    );
}

#[test]
fn usage_conversions_are_exact_and_tolerant() {
    let anthropic = json!({ "input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 5 });
    let u = Usage::from_anthropic(&anthropic);
    assert_eq!(u, Usage { input: 2112, output: 5, cached_input: 2000, cache_creation: 100 });
    assert_eq!(u.to_anthropic(), anthropic, "round trip");
    assert_eq!(
        Usage::from_anthropic(&json!({ "usage": anthropic })),
        u,
        "a whole message works too"
    );
    let openai = u.to_openai();
    assert_eq!(openai["prompt_tokens"], json!(2112));
    assert_eq!(
        Usage::from_openai(&openai),
        Usage { cache_creation: 0, ..u },
        "OpenAI has no cache-write field"
    );
    let junk = json!({ "prompt_tokens": -3, "completion_tokens": "7", "prompt_tokens_details": { "cached_tokens": 4.0 } });
    assert_eq!(
        Usage::from_openai(&junk),
        Usage { input: 0, output: 0, cached_input: 4, cache_creation: 0 }
    );
    assert_eq!(Usage::from_openai(&json!(null)), Usage::default());
    let inconsistent = Usage { input: 1, output: 0, cached_input: 5, cache_creation: 0 };
    assert_eq!(
        inconsistent.to_anthropic()["input_tokens"],
        json!(0),
        "saturates, never underflows"
    );
}

#[test]
fn error_bodies() {
    assert_eq!(
        openai_error_body("invalid_request_error", "bad", Some("n"), None),
        json!({ "error": { "message": "bad", "type": "invalid_request_error", "param": "n", "code": null } })
    );
    assert_eq!(
        anthropic_error_body("overloaded_error", "Overloaded"),
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })
    );
}
