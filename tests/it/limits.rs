//! Ceilings and budgets (SPEC §6): output clamps, input and `n` limits, cost ceilings, exact
//! cost headers, budgets that never overshoot under concurrency and settle on every ending,
//! window resets and rpm/tpm, all on paused time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tidegate::gateway::Gateway;

use crate::common::*;

mod cost;

/// One mock target priced at 1 USD per million tokens both ways (1 micro-dollar a token), with
/// the given limits and extra targets.
fn priced(model: &str, limits: &str, extra_targets: &str) -> String {
    format!(
        "providers:\n  sim: {{kind: mock}}\nmodels:\n  \"{model}\": {{input: 1.0, output: 1.0, context: 100000}}\nroutes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    limits: {limits}\n    targets:\n      - {{provider: sim, model: \"{model}\"}}\n{extra_targets}"
    )
}

fn remaining(gw: &Gateway) -> f64 {
    metric(gw, "tidegate_budget_remaining_usd{route=\"r\"}")
}

fn micros(header: &str) -> u64 {
    let usd: f64 = header.parse().unwrap_or_else(|_| panic!("not a USD amount: {header:?}"));
    (usd * 1e6).round() as u64
}

#[tokio::test(start_paused = true)]
async fn output_is_clamped_or_injected_in_both_dialects() {
    let gw = gateway(&single("m+chunks=8", "    limits: {max_output_tokens: 3}\n"));
    // No limit from the client: the route's is injected; the answer stops at 3 words.
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    let v = got.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // A larger client limit is clamped; a smaller one is kept.
    let body = |max: u64| {
        format!(
            r#"{{"model":"x","max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    assert_eq!(
        post(&gw, "/v1/chat/completions", &body(100)).await.json()["usage"]["completion_tokens"],
        3
    );
    let small = post(&gw, "/v1/chat/completions", &body(2)).await.json();
    assert_eq!(small["usage"]["completion_tokens"], 2);
    // Anthropic clients: max_tokens is required and clamped the same way.
    let got = post(&gw, "/v1/messages", &body(100)).await.json();
    assert_eq!(got["stop_reason"], "max_tokens", "{got}");
    assert_eq!(got["usage"]["output_tokens"], 3);
    // Truncations are counted and flagged in the log (OpenAI `length` and Anthropic `max_tokens`).
    assert_eq!(
        metric(
            &gw,
            "tidegate_truncations_total{model=\"m+chunks=8\",provider=\"sim\",route=\"r\"}"
        ),
        4.0
    );
    let lines = gw.log_sink.lines();
    assert!(lines.iter().filter(|l| l.contains("\"truncated\":true")).count() >= 4, "{lines:?}");
}

#[tokio::test(start_paused = true)]
async fn clamps_survive_translation_to_the_other_wire() {
    let yaml = "providers:\n  claude: {kind: mock, api: anthropic}\nroutes:\n  r:\n    default: true\n    limits: {max_output_tokens: 2}\n    targets: [{provider: claude, model: \"c+chunks=6\"}]\n";
    let gw = gateway(yaml);
    // OpenAI client, Anthropic upstream: the translated max_tokens is the clamp.
    let v = post(&gw, "/v1/chat/completions", &chat("x")).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

/// A document or file the request only points to counts 100,000 tokens (helper-51: a PDF by
/// URL passed a 60-token limit as its few bytes of JSON, and a budget reserved nothing for it).
#[tokio::test(start_paused = true)]
async fn documents_given_by_reference_count_as_large() {
    let gw = gateway(&single("m", "    limits: {max_input_tokens: 60}\n"));
    let pdf = r#"{"model":"x","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://x/a.pdf"}}]}]}"#;
    let got = post(&gw, "/v1/messages", pdf).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("input_tokens_exceeded"), "{}", got.text());
    let file = r#"{"model":"x","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#;
    assert_eq!(post(&gw, "/v1/chat/completions", file).await.error_code(), "input_tokens_exceeded");
    // The same parts inline are their text.
    let inline = r#"{"model":"x","messages":[{"role":"user","content":[{"type":"file","file":{"file_data":"data:application/pdf;base64,aGk=","filename":"a.pdf"}}]}]}"#;
    let got = post(&gw, "/v1/chat/completions", inline).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(gw.mock_stats("sim").total().calls, 1);
}

#[tokio::test(start_paused = true)]
async fn input_tokens_and_n_over_their_limits_are_refused_before_any_call() {
    let gw = gateway(&single("m", "    limits: {max_input_tokens: 20, max_n: 1}\n"));
    let long = format!(
        r#"{{"model":"x","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "tokens ".repeat(40)
    );
    let got = post(&gw, "/v1/chat/completions", &long).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.error_code(), "input_tokens_exceeded");
    let msg = got.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(msg.contains("at most 20 input tokens") && msg.contains("the prompt is"), "{msg}");
    // Same refusal in the Anthropic shape.
    let anth = long.replacen('{', r#"{"max_tokens":5,"#, 1);
    let got = post(&gw, "/v1/messages", &anth).await;
    assert_eq!(got.status, 400);
    assert!(
        got.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("[input_tokens_exceeded]")
    );
    // A small body with an image: its size proves nothing (an image counts 1600 tokens).
    let img = r#"{"model":"x","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#;
    assert_eq!(post(&gw, "/v1/chat/completions", img).await.error_code(), "input_tokens_exceeded");
    // n above max_n.
    let n3 = r#"{"model":"x","n":3,"messages":[{"role":"user","content":"hi"}]}"#;
    let got = post(&gw, "/v1/chat/completions", n3).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["param"], "n");
    assert_eq!(gw.mock_stats("sim").total().calls, 0);
    // A short prompt passes.
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    assert_eq!(
        metric(&gw, "tidegate_ceiling_rejections_total{kind=\"input_tokens\",route=\"r\"}"),
        3.0
    );
    assert_eq!(metric(&gw, "tidegate_ceiling_rejections_total{kind=\"max_n\",route=\"r\"}"), 1.0);
}

async fn fire(gw: &Arc<Gateway>, n: usize, body: String) -> Vec<Got> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (gw, body) = (gw.clone(), body.clone());
            tokio::spawn(async move { post(&gw, "/v1/chat/completions", &body).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 200 concurrent requests against a budget of about 50 worst cases: spend never passes the
/// budget and every request is served (paid or free tier) or refused, none lost.
#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_requests_never_overshoot_the_budget() {
    // Worst case: ~12 input tokens + 10 output = ~22 micro-dollars; 1100 fits about 50.
    let limits = "{max_output_tokens: 10, budget: {usd: 0.0011, per: 1h}}";
    for with_template in [false, true] {
        let tier = if with_template { "      - {template: \"Busy; try later.\"}\n" } else { "" };
        let gw = gateway(&priced("m+latency=200ms", limits, tier));
        let got = fire(&gw, 200, chat("x")).await;
        let (mut paid, mut free, mut refused, mut spent) = (0, 0, 0, 0u64);
        for g in &got {
            match (g.status.as_u16(), g.header("x-tidegate-fallback")) {
                (200, "") => {
                    paid += 1;
                    spent += micros(g.header("x-tidegate-cost-usd"));
                }
                (200, f) => {
                    assert_eq!(f, "template;reason=budget_exhausted");
                    free += 1;
                }
                (429, _) => {
                    assert_eq!(g.error_code(), "budget_exhausted");
                    let ra: u64 = g.header("retry-after").parse().unwrap();
                    assert!((1..=3600).contains(&ra), "{ra}");
                    // The window's end is minutes away: too long for a client to wait on.
                    let retry = if ra <= 60 { "true" } else { "false" };
                    assert_eq!(g.header("x-should-retry"), retry, "Retry-After {ra}");
                    refused += 1;
                }
                (s, _) => panic!("unexpected {s}: {}", g.text()),
            }
        }
        assert_eq!(paid + free + refused, 200);
        assert!((40..=50).contains(&paid), "paid {paid}");
        assert_eq!(if with_template { refused } else { free }, 0);
        assert_eq!(gw.mock_stats("sim").total().calls, paid as u64);
        assert!(spent <= 1100, "settled {spent} micro-dollars over a 1100 budget");
        // What was settled is exactly what the headers said.
        assert_eq!(((0.0011 - remaining(&gw)) * 1e6).round() as u64, spent);
    }
}

#[tokio::test(start_paused = true)]
async fn the_window_resets_and_retry_after_says_when() {
    let gw = gateway(&priced("m", "{max_output_tokens: 10, budget: {usd: 0.00003, per: 60s}}", ""));
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 429, "{}", got.text());
    let wait: u64 = got.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Anthropic clients get the code at the start of the message.
    let anth =
        r#"{"model":"x","max_tokens":5,"messages":[{"role":"user","content":"Hello there"}]}"#;
    let got = post(&gw, "/v1/messages", anth).await;
    assert!(
        got.json()["error"]["message"].as_str().unwrap_or("").starts_with("[budget_exhausted]")
    );
    assert_eq!(got.json()["error"]["type"], "rate_limit_error");
    tokio::time::advance(Duration::from_secs(wait)).await;
    gw.refresh_budget_gauges().await;
    assert_eq!(remaining(&gw), 0.00003, "a new window starts full");
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_stream_settles_what_it_used() {
    let gw = gateway(&priced(
        "m+chunks=20+delay=100ms",
        "{max_output_tokens: 50, budget: {usd: 1, per: 1h}}",
        "",
    ));
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_stream("x"))))
        .unwrap();
    let resp = gw.handle(req).await;
    let full = remaining(&gw);
    assert!(full < 1.0, "the worst case is reserved while the stream runs");
    let mut body = resp.into_body();
    let mut got = 0;
    while got < 2 {
        if let Some(Ok(f)) = body.frame().await
            && f.is_data()
        {
            got += 1;
        }
    }
    drop(body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.mock_stats("sim").total().cancels, 1);
    let spent = 1.0 - remaining(&gw);
    // The reservation is gone; what stays spent is the estimate of what was used (no usage
    // arrived): more than nothing, less than the worst case.
    assert!(spent > 0.0 && spent < 1.0 - full, "spent {spent}, reserved {}", 1.0 - full);
    let lines = gw.log_sink.lines();
    let line = lines.last().unwrap();
    assert!(
        line.contains("\"cost_estimated\":true") && line.contains("\"outcome\":\"aborted\""),
        "{line}"
    );
    // The tokens that estimate was made of are counted and logged (1 micro-dollar a token).
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let logged = v["input_tokens"].as_u64().unwrap() + v["output_tokens"].as_u64().unwrap();
    assert_eq!(logged, (spent * 1e6).round() as u64, "{line}");
    let series = |kind: &str| {
        format!(
            "tidegate_tokens_total{{model=\"m+chunks=20+delay=100ms\",provider=\"sim\",route=\"r\",type=\"{kind}\"}}"
        )
    };
    assert_eq!((metric(&gw, &series("input")) + metric(&gw, &series("output"))) as u64, logged);
}

#[tokio::test(start_paused = true)]
async fn upstream_failures_settle_too() {
    // Broken mid-stream (no resume): the estimate stays spent.
    let gw = gateway(&priced(
        "m+chunks=10+cut=3",
        "{max_output_tokens: 50, budget: {usd: 1, per: 1h}}",
        "    resume: off\n",
    ));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert!(got.text().contains("\"error\""), "{}", got.text());
    let spent = 1.0 - remaining(&gw);
    assert!(spent > 0.0 && spent < 0.0001, "{spent}");
    // Failed before any answer: the reservation returns whole.
    let gw =
        gateway(&priced("m+status=500", "{max_output_tokens: 50, budget: {usd: 1, per: 1h}}", ""));
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 502);
    assert_eq!(remaining(&gw), 1.0);
}

#[tokio::test(start_paused = true)]
async fn rpm_and_tpm_refuse_with_retry_after_and_refill() {
    let gw = gateway(&single("m", "    limits: {rpm: 2}\n"));
    for _ in 0..2 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    }
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.error_code(), "rate_limited");
    assert_eq!(got.header("retry-after"), "30");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);

    // tpm 60: each request is ~12 input tokens + 10 output = ~22 tokens, so two fit.
    let gw = gateway(&single("m", "    limits: {tpm: 60, max_output_tokens: 10}\n"));
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 429);
    let wait: u64 = got.header("retry-after").parse().unwrap();
    tokio::time::advance(Duration::from_secs(wait)).await;
    assert_eq!(post(&gw, "/v1/chat/completions", &chat("x")).await.status, 200);
    assert_eq!(metric(&gw, "tidegate_ceiling_rejections_total{kind=\"tpm\",route=\"r\"}"), 1.0);
}

#[test]
fn cost_limits_need_prices() {
    let yaml = "providers:\n  sim: {kind: mock}\nroutes:\n  r:\n    default: true\n    limits: {budget: {usd: 5, per: 1h}}\n    targets: [{provider: sim, model: unpriced}]\n";
    let e = tidegate::config::Config::from_bytes(std::path::Path::new("t.yaml"), yaml.as_bytes())
        .unwrap_err();
    assert_eq!(e.path, "routes.r.targets[0].model");
    assert!(e.message.contains("no price"), "{e}");
    // Built-in prices need no `models:` entry.
    let yaml = yaml.replace("unpriced", "gpt-4o-mini");
    assert!(
        tidegate::config::Config::from_bytes(std::path::Path::new("t.yaml"), yaml.as_bytes())
            .is_ok()
    );
    let bad = "providers:\n  sim: {kind: mock}\nroutes:\n  r:\n    default: true\n    limits: {rpm: 0}\n    targets: [{provider: sim, model: m}]\n";
    let e = tidegate::config::Config::from_bytes(std::path::Path::new("t.yaml"), bad.as_bytes())
        .unwrap_err();
    assert_eq!(e.path, "routes.r.limits.rpm");
}

/// A stream broken after content and resumed on the backup: the broken attempt's share is
/// counted (estimated), both reservations settle, nothing stays reserved.
#[tokio::test(start_paused = true)]
async fn a_resumed_stream_pays_for_both_attempts_and_leaks_nothing() {
    let yaml = "providers:\n  sim: {kind: mock}\n  backup: {kind: mock}\nmodels:\n  \"p+chunks=10+cut=3\": {input: 1.0, output: 1.0, context: 100000}\n  \"b+chunks=10\": {input: 1.0, output: 1.0, context: 100000}\nroutes:\n  r:\n    default: true\n    limits: {max_output_tokens: 50, budget: {usd: 1, per: 1h}}\n    targets:\n      - {provider: sim, model: \"p+chunks=10+cut=3\"}\n      - {provider: backup, model: \"b+chunks=10\"}\n";
    let gw = gateway(yaml);
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"), "{}", got.text());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let lines = gw.log_sink.lines();
    let line: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let cost = micros(line["cost_usd"].as_str().unwrap());
    assert_eq!(line["cost_estimated"], true, "{line}");
    // The backup alone reports ~9 input + its output; the broken attempt adds its own share.
    let backup_only =
        line["input_tokens"].as_u64().unwrap() + line["output_tokens"].as_u64().unwrap();
    assert!(cost > 0, "{line}");
    assert_eq!(
        ((1.0 - remaining(&gw)) * 1e6).round() as u64,
        cost,
        "every reservation settled: {line}"
    );
    assert!(cost >= backup_only / 2, "{cost} vs {backup_only}");
}

/// A target that timed out after taking the request is charged its input (estimated): the
/// request's cost covers every attempt and the budget saw all of it.
#[tokio::test(start_paused = true)]
async fn attempts_that_fail_after_taking_the_request_are_charged() {
    let yaml = "providers:\n  sim: {kind: mock}\n  backup: {kind: mock}\nmodels:\n  \"p+hang\": {input: 1.0, output: 1.0, context: 100000}\n  \"b+status=408\": {input: 1.0, output: 1.0, context: 100000}\n  b: {input: 1.0, output: 1.0, context: 100000}\nroutes:\n  r:\n    default: true\n    retries: {per_target: 0}\n    timeouts: {first_token: 1s}\n    limits: {max_output_tokens: 10, budget: {usd: 1, per: 1h}}\n    targets:\n      - {provider: sim, model: \"p+hang\"}\n      - {provider: backup, model: \"b+status=408\"}\n      - {provider: backup, model: b}\n";
    let gw = gateway(yaml);
    let got = post(&gw, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let u = &got.json()["usage"];
    let served = u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap();
    let cost = micros(got.header("x-tidegate-cost-usd"));
    // The hung attempt is charged its counted input; the 408 refusal (a status) is not.
    assert!(cost > served, "{cost} should exceed the answer's own {served}");
    assert_eq!(got.header("x-tidegate-cost-estimated"), "true");
    assert_eq!(((1.0 - remaining(&gw)) * 1e6).round() as u64, cost);
    let charged = |m: &str| {
        metric(
            &gw,
            &format!(
                "tidegate_cost_usd_total{{model=\"{m}\",provider=\"{}\",route=\"r\"}}",
                if m == "p+hang" { "sim" } else { "backup" }
            ),
        )
    };
    assert!(charged("p+hang") > 0.0);
    assert_eq!(charged("b+status=408"), 0.0);
    assert_eq!(((charged("p+hang") + charged("b")) * 1e6).round() as u64, cost);
    // Tokens agree with the cost (1 micro-dollar a token): in the metric, per target, and in
    // the log line, which counts every attempt charged.
    let tokens = |p: &str, m: &str| {
        let s = |kind: &str| {
            format!(
                "tidegate_tokens_total{{model=\"{m}\",provider=\"{p}\",route=\"r\",type=\"{kind}\"}}"
            )
        };
        (metric(&gw, &s("input")) + metric(&gw, &s("output"))) as u64
    };
    assert_eq!(tokens("sim", "p+hang"), (charged("p+hang") * 1e6).round() as u64);
    assert_eq!(tokens("backup", "b"), served);
    let line: serde_json::Value =
        serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
    let logged = line["input_tokens"].as_u64().unwrap() + line["output_tokens"].as_u64().unwrap();
    assert_eq!(logged, cost, "{line}");
}

/// A 200 that was not an answer (HTML, an error body or first event, garbage, no body) came
/// after the provider took the request: each such attempt is charged its input, as a timeout
/// is, in the cost metric, the request's cost and the budget, streamed or not.
#[tokio::test(start_paused = true)]
async fn a_200_that_was_not_an_answer_is_charged_its_input() {
    let bad = ["p+html", "p+error200", "p+garbage", "p+empty"];
    let models: String = bad
        .iter()
        .chain(&["b"])
        .map(|m| format!("  \"{m}\": {{input: 1.0, output: 1.0, context: 100000}}\n"))
        .collect();
    let targets: String = bad
        .iter()
        .chain(&["b"])
        .map(|m| format!("      - {{provider: sim, model: \"{m}\"}}\n"))
        .collect();
    let yaml = format!(
        "providers:\n  sim: {{kind: mock}}\nmodels:\n{models}routes:\n  r:\n    default: true\n    retries: {{per_target: 0, total: 5}}\n    limits: {{max_output_tokens: 10, budget: {{usd: 1, per: 1h}}}}\n    targets:\n{targets}"
    );
    for stream in [false, true] {
        let gw = gateway(&yaml);
        let body = if stream { chat_stream("x") } else { chat("x") };
        let got = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-tidegate-provider"), "sim");
        let charged = |m: &str| {
            metric(
                &gw,
                &format!("tidegate_cost_usd_total{{model=\"{m}\",provider=\"sim\",route=\"r\"}}"),
            )
        };
        let each: Vec<f64> = bad.iter().map(|m| charged(m)).collect();
        assert!(each.iter().all(|&c| c > 0.0), "stream {stream}: {bad:?} charged {each:?}");
        let total = each.iter().sum::<f64>() + charged("b");
        // A stream's cost is known at its end: in its log line.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let line: serde_json::Value =
            serde_json::from_str(gw.log_sink.lines().last().unwrap()).unwrap();
        let cost = micros(line["cost_usd"].as_str().unwrap());
        assert_eq!((total * 1e6).round() as u64, cost, "stream {stream}: {line}");
        assert_eq!(((1.0 - remaining(&gw)) * 1e6).round() as u64, cost, "stream {stream}");
    }
}

/// Every attempt of a resumable stream breaks: whatever the resume tried, the ledger, the log
/// line's cost and the cost metric agree (nothing counted twice, nothing left reserved).
#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_on_every_attempt_is_counted_once() {
    let model = "p+chunks=10+cut=3+no_usage";
    let gw = gateway(&priced(model, "{max_output_tokens: 50, budget: {usd: 1, per: 1h}}", ""));
    let got = post(&gw, "/v1/chat/completions", &chat_stream("x")).await;
    assert!(got.text().contains("\"error\""), "{}", got.text());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let lines = gw.log_sink.lines();
    let line: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let cost = micros(line["cost_usd"].as_str().unwrap());
    assert!(cost > 0, "{line}");
    assert_eq!(((1.0 - remaining(&gw)) * 1e6).round() as u64, cost, "ledger vs log: {line}");
    let metric_cost = metric(
        &gw,
        &format!("tidegate_cost_usd_total{{model=\"{model}\",provider=\"sim\",route=\"r\"}}"),
    );
    assert_eq!((metric_cost * 1e6).round() as u64, cost, "metric vs log: {line}");
}
