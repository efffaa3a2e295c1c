//! Cost ceilings and cost headers: `max_request_usd` per target and for the request as a
//! whole, the exact `x-tidegate-cost-usd`, and requests no window could ever take.

use super::{micros, priced};
use crate::common::*;

#[tokio::test(start_paused = true)]
async fn cost_ceiling_skips_expensive_targets_and_refuses_when_none_fits() {
    // Primary at 1000 USD/Mtok output: its worst case (~4096 output tokens) is far above 0.01.
    let yaml = |ceiling: &str| {
        format!(
            "providers:\n  sim: {{kind: mock}}\nmodels:\n  big: {{input: 1000, output: 1000, max_output: 4096}}\n  small: {{input: 0.1, output: 0.1, max_output: 4096}}\nroutes:\n  r:\n    default: true\n    limits: {{max_request_usd: {ceiling}}}\n    targets:\n      - {{provider: sim, model: big}}\n      - {{provider: sim, model: small}}\n"
        )
    };
    let gw = gateway(&yaml("0.01"));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-tidegate-model"), "small");
    assert_eq!(got.header("x-tidegate-fallback"), "target;reason=cost_ceiling");
    assert_eq!(gw.mock_stats("sim").get("big").calls, 0);
    let gw = gateway(&yaml("0.0001"));
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.error_code(), "cost_ceiling_exceeded");
    // helper-51: it named no field; the prompt is what this client can change.
    assert_eq!(got.json()["error"]["param"], "messages");
    assert_eq!(got.header("x-should-retry"), "false");
    // Counted per target passed over, as documented.
    assert_eq!(
        metric(&gw, "tidegate_ceiling_rejections_total{kind=\"cost_ceiling\",route=\"r\"}"),
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn cost_header_is_usage_at_the_price_or_a_flagged_estimate() {
    let yaml = "providers:\n  sim: {kind: mock}\nmodels:\n  m: {input: 2.5, output: 10.0, context: 128000}\n  m+no_usage: {input: 2.5, output: 10.0, context: 128000}\nroutes:\n  r:\n    default: true\n    match_models: [m+no_usage]\n    targets: [{provider: sim, model: m}]\n  u:\n    match_models: [nu]\n    targets: [{provider: sim, model: m+no_usage}]\n";
    let gw = gateway(yaml);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    let u = &got.json()["usage"];
    let (p, c) = (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap());
    // 2.5 and 10 USD per million: 2.5 and 10 micro-dollars a token, rounded up once.
    let want = (p * 25 + c * 100).div_ceil(10);
    assert_eq!(micros(got.header("x-tidegate-cost-usd")), want);
    assert_eq!(got.header("x-tidegate-cost-usd").split('.').nth(1).map(str::len), Some(6));
    assert_eq!(got.header("x-tidegate-cost-estimated"), "");
    // No usage from the upstream: an estimate, flagged.
    let got = post(&gw, "/v1/chat/completions", &chat("nu")).await;
    assert_eq!(got.status, 200);
    assert!(micros(got.header("x-tidegate-cost-usd")) > 0);
    assert_eq!(got.header("x-tidegate-cost-estimated"), "true");
    assert!(metric(&gw, "tidegate_cost_usd_total{model=\"m\",provider=\"sim\",route=\"r\"}") > 0.0);
}

/// A request whose worst case alone is larger than the whole budget can never be served: a
/// non-retryable 400 saying so, not a retryable 429 claiming the budget is spent (audit F4).
#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_whole_budget_is_a_400_not_a_429() {
    let gw = gateway(&priced("m", "{budget: {usd: 0.00003, per: 60s}}", ""));
    let body = |extra: &str| {
        format!(r#"{{"model":"x",{extra}"messages":[{{"role":"user","content":"hi"}}]}}"#)
    };
    // `param` names what the client can lower: its own output limit (in the field it used),
    // `n`, or, when the route's `max_output_tokens` sets the output, the prompt.
    let clamped =
        gateway(&priced("m", "{budget: {usd: 0.00003, per: 60s}, max_output_tokens: 1000}", ""));
    for (gw, extra, param) in [
        (&gw, r#""max_tokens":1000,"#, "max_tokens"),
        (&gw, r#""max_completion_tokens":1000,"#, "max_completion_tokens"),
        (&gw, r#""max_tokens":5,"n":20,"#, "n"),
        (&clamped, "", "messages"),
        (&clamped, r#""max_tokens":5000,"#, "messages"),
    ] {
        let got = post(gw, "/v1/chat/completions", &body(extra)).await;
        assert_eq!(got.status, 400, "{}", got.text());
        assert_eq!(got.error_code(), "cost_ceiling_exceeded");
        assert_eq!(got.header("x-should-retry"), "false");
        assert!(got.headers.get("retry-after").is_none());
        let e = &got.json()["error"];
        assert_eq!(e["param"], param);
        assert!(
            e["message"].as_str().unwrap_or("").contains("larger than route \"r\"'s whole budget"),
            "{e}"
        );
    }
    // Counted as the cost ceiling the client was told, not as a spent budget.
    let kind = |k: &str| {
        metric(&gw, &format!("tidegate_ceiling_rejections_total{{kind=\"{k}\",route=\"r\"}}"))
    };
    assert!(kind("cost_ceiling") >= 1.0);
    assert_eq!(kind("budget"), 0.0);
    // Nothing was spent: a request that fits is served.
    assert_eq!(post(&gw, "/v1/chat/completions", &body(r#""max_tokens":5,"#)).await.status, 200);
}

/// `max_request_usd` holds for the request as a whole (helper-51: each attempt fit on its own,
/// and a stream broken after 8 of its 10 tokens, then resumed elsewhere, settled at 1132
/// micro-dollars against a 1050 ceiling). The resume is passed over instead: the client gets
/// the error event, and the request costs what the broken attempt did.
#[tokio::test(start_paused = true)]
async fn the_cost_ceiling_counts_what_earlier_attempts_cost() {
    let yaml = "providers:\n  sim: {kind: mock}\n  backup: {kind: mock}\nmodels:\n  \"p+chunks=10+cut=8\": {input: 1.0, output: 100.0, context: 100000}\n  \"b+chunks=10\": {input: 1.0, output: 100.0, context: 100000}\nroutes:\n  r:\n    default: true\n    retries: {per_target: 0}\n    limits: {max_output_tokens: 10, max_request_usd: 0.00105}\n    targets:\n      - {provider: sim, model: \"p+chunks=10+cut=8\"}\n      - {provider: backup, model: \"b+chunks=10\"}\n";
    let gw = gateway(yaml);
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.status, 200);
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert_eq!(gw.mock_stats("backup").total().calls, 0);
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    let cost: f64 = line["cost_usd"].as_str().unwrap().parse().unwrap();
    assert!(cost > 0.0 && cost <= 0.00105, "{line}");
}
