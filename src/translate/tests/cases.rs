//! Targeted request cases the brief names (field-naming errors, n, unknown fields, temperature,
//! tool choice).

use serde_json::{Value, json};

use crate::translate::{RequestOptions, anthropic_to_openai, openai_to_anthropic};

fn opts(drop: bool) -> RequestOptions {
    RequestOptions {
        default_max_tokens: 1024,
        drop_unsupported_params: drop,
        upstream_model: "up".into(),
    }
}

fn o2a_param(body: Value, drop: bool) -> Option<String> {
    openai_to_anthropic::request(&body, &opts(drop)).err().and_then(|e| e.param)
}

fn a2o_param(body: Value, drop: bool) -> Option<String> {
    anthropic_to_openai::request(&body, &opts(drop)).err().and_then(|e| e.param)
}

#[test]
fn invalid_tool_arguments_name_the_field() {
    let call = |args: &str| {
        json!({ "messages": [
            { "role": "system", "content": "s" },
            { "role": "user", "content": "u" },
            { "role": "user", "content": "u2" },
            { "role": "assistant", "tool_calls": [
                { "id": "a", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                { "id": "b", "type": "function", "function": { "name": "f", "arguments": args } } ] } ] })
    };
    let want = Some("messages[3].tool_calls[1].function.arguments".to_owned());
    assert_eq!(o2a_param(call("{\"x\":"), false), want);
    assert_eq!(o2a_param(call("[1, 2]"), false), want, "valid JSON that is not an object");
    assert_eq!(
        o2a_param(call("not json"), true),
        want,
        "the drop flag never drops a broken history"
    );
    assert_eq!(o2a_param(call(""), false), None, "empty arguments mean {{}}");
}

#[test]
fn n_above_one_is_rejected_even_with_drop() {
    for n in [json!(2), json!(0), json!("1")] {
        let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "n": n });
        assert_eq!(o2a_param(body.clone(), false), Some("n".into()));
        assert_eq!(o2a_param(body, true), Some("n".into()));
    }
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "n": 1 });
    assert_eq!(o2a_param(body, false), None);
}

#[test]
fn unknown_fields_rejected_or_dropped_with_the_flag() {
    let o2a = json!({ "messages": [{ "role": "user", "content": "hi" }], "frobnicate": 1, "logit_bias": { "1": 5 } });
    assert_eq!(o2a_param(o2a.clone(), false), Some("frobnicate".into()));
    let out = openai_to_anthropic::request(&o2a, &opts(true)).unwrap();
    assert!(out.get("frobnicate").is_none() && out.get("logit_bias").is_none());

    let a2o = json!({ "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }], "frobnicate": 1 });
    assert_eq!(a2o_param(a2o.clone(), false), Some("frobnicate".into()));
    let out = anthropic_to_openai::request(&a2o, &opts(true)).unwrap();
    assert!(out.get("frobnicate").is_none());
}

/// `thread` makes `messages` a delta against a stored conversation: dropping it would send the
/// upstream a conversation cut short, so even the drop flag refuses it, with the details the
/// anthropic SDK reads to re-send the full history unthreaded.
#[test]
fn thread_is_refused_even_with_drop() {
    for drop in [false, true] {
        let body = json!({ "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }],
            "thread": { "type": "continue", "previous_message_id": "msg_1" } });
        let e = anthropic_to_openai::request(&body, &opts(drop)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("thread"), "drop {drop}");
        assert_eq!(
            e.details,
            Some(json!({ "error_code": "thread_unsupported_request", "unsupported": ["thread"] })),
            "drop {drop}"
        );
    }
}

#[test]
fn neutral_values_of_untranslatable_fields_are_accepted() {
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "logprobs": false, "top_logprobs": 0,
        "presence_penalty": 0.0, "frequency_penalty": 0, "logit_bias": {}, "parallel_tool_calls": true,
        "seed": null, "service_tier": "flex", "store": true, "prompt_cache_key": "k" });
    let out = openai_to_anthropic::request(&body, &opts(false)).unwrap();
    assert_eq!(
        out,
        json!({ "model": "up", "max_tokens": 1024, "messages": [{ "role": "user", "content": "hi" }] })
    );
}

#[test]
fn caching_hints_are_dropped_for_openai_upstreams() {
    // Top-level `cache_control` (automatic caching) is the same hint as the block-level one.
    let plain = json!({ "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }] });
    let mut hinted = plain.clone();
    hinted["cache_control"] = json!({ "type": "ephemeral" });
    let want = anthropic_to_openai::request(&plain, &opts(false)).unwrap();
    assert_eq!(anthropic_to_openai::request(&hinted, &opts(false)).unwrap(), want);
}

#[test]
fn temperature_rule() {
    let t = |v: Value| {
        let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "temperature": v });
        openai_to_anthropic::request(&body, &opts(false)).map(|o| o["temperature"].clone())
    };
    assert_eq!(t(json!(2)).unwrap(), json!(1.0));
    assert_eq!(t(json!(1.01)).unwrap(), json!(1.0));
    assert_eq!(t(json!(1)).unwrap(), json!(1), "in range: unchanged, integer stays integer");
    assert_eq!(t(json!(0.7)).unwrap(), json!(0.7));
    assert_eq!(t(json!("hot")).unwrap_err().param, Some("temperature".into()));
}

#[test]
fn tool_choice_variants() {
    let tools = json!([{ "type": "function", "function": { "name": "f" } }]);
    let choice = |tc: Value, parallel: Value| {
        let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "tools": tools, "tool_choice": tc,
            "parallel_tool_calls": parallel });
        openai_to_anthropic::request(&body, &opts(false)).map(|o| o.get("tool_choice").cloned())
    };
    assert_eq!(choice(json!("auto"), Value::Null).unwrap(), Some(json!({ "type": "auto" })));
    assert_eq!(choice(json!("none"), json!(false)).unwrap(), Some(json!({ "type": "none" })));
    assert_eq!(choice(Value::Null, Value::Null).unwrap(), None);
    assert_eq!(
        choice(Value::Null, json!(false)).unwrap(),
        Some(json!({ "type": "auto", "disable_parallel_tool_use": true }))
    );
    assert_eq!(
        choice(json!("sometimes"), Value::Null).unwrap_err().param,
        Some("tool_choice".into())
    );
    // Without tools there is nothing to choose from: no tool_choice upstream.
    let body =
        json!({ "messages": [{ "role": "user", "content": "hi" }], "tool_choice": "required" });
    assert!(
        openai_to_anthropic::request(&body, &opts(false)).unwrap().get("tool_choice").is_none()
    );
}
