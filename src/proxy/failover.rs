//! The failover loop: a route's targets in order, bounded retries on each, until one answers
//! or the attempt cap or the deadline is reached (SPEC §5).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, sleep_until};

use super::admit::Skip;
use super::attempt::{Attempt, Endpoint, Opened, Waited, is_final};
use super::classify::{AttemptFailure, Next, Passthrough};
use super::record::RequestRecord;
use crate::config::{Config, Wire};
use crate::error::{ErrorCode, GatewayError};
use crate::metrics::Metrics;
use crate::routing::health::{Admission, Health, Outcome};
use crate::routing::retry_budget::RetryBudget;
use crate::runtime::{RouteRuntime, TargetRuntime, TargetSeries};
use crate::translate::TranslateError;

/// The attempt that answered.
pub struct Served {
    pub target: usize,
    pub opened: Opened,
    /// Attempts made, the winner included.
    pub attempts: u32,
    /// Why the first target did not serve, when a later one did.
    pub fallback_reason: Option<&'static str>,
}

/// Which target refused the request, for the response headers (every fallback is visible).
pub struct Refused {
    pub target: usize,
    pub attempts: u32,
    /// Why the first target did not serve, when a later one refused.
    pub fallback_reason: Option<&'static str>,
}

/// Why no target answered.
pub enum Failed {
    /// The request itself cannot be served (untranslatable for every target).
    Gateway(GatewayError),
    /// Every target failed or the deadline passed: the free tiers may still answer.
    /// `reason` is the first attempt's failure reason.
    Exhausted { error: GatewayError, reason: &'static str },
    /// The upstream refused the request itself: its answer goes to the client (converted to
    /// the client's dialect if the upstream's wire differs).
    Passthrough(Passthrough, Wire, Refused),
}

/// Inputs of one run of the loop.
pub struct Plan<'a, F> {
    pub config: &'a Config,
    /// Circuit breakers and the retry budget, shared by every request and config version.
    pub health: &'a Health,
    pub retry_budget: &'a RetryBudget,
    pub route: &'a RouteRuntime,
    pub endpoint: Endpoint,
    pub stream: bool,
    /// When the answer must begin (the request's `Deadlines::begin`).
    pub deadline: Instant,
    /// `deadline` is the client's read timeout: an attempt it cut short is no failure of the
    /// target's.
    pub client_bound: bool,
    /// The upstream body for a target.
    pub body_for: F,
    /// The request (for the cost ceiling and budget of each target, SPEC §6).
    pub ask: &'a super::ask::Prepared<'a>,
    /// Budgets and Redis.
    pub shared: &'a crate::runtime::Shared,
}

/// Jittered exponential backoff: `base * 2^try`, uniformly in its upper half.
fn backoff(base: Duration, tries: u32) -> Duration {
    let full = base.saturating_mul(1u32 << tries.min(16));
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

fn context_of(config: &Config, t: &TargetRuntime) -> Option<u64> {
    config.models.get(&t.target.model).and_then(|m| m.context)
}

impl<F: Fn(&TargetRuntime) -> Result<Bytes, TranslateError>> Plan<'_, F> {
    pub async fn run(&self, rec: &mut RequestRecord) -> Result<Served, Failed> {
        let route = &self.route.route;
        let retries = route.retries;
        let mut attempts = 0u32;
        let mut first_reason: Option<&'static str> = None;
        // After a context-length failure: only targets with a larger (or unknown) window.
        let mut min_context: Option<u64> = None;
        let mut failures: Vec<String> = Vec::new();
        let mut untranslatable: Option<TranslateError> = None;
        // Targets passed over by the cost ceiling or the budget (the latter with its reset).
        let mut ceiling_skipped = false;
        // Targets passed over for what the request is (untranslatable, an endpoint their API
        // lacks, over the cost ceiling): when that is every target, the request is the problem
        // (a 400); when some other target was only unavailable for now (breaker, cooldown),
        // it is not.
        let mut refused_for_request = 0usize;
        let mut budget_reset: Option<Duration> = None;
        // The last failure was the prompt's length, and every target after it was passed over
        // for its window: the client hears that refusal (its request is the problem, not the
        // route), unless the route has free tiers to answer instead. A later target that is
        // not passed over for its window (tried, skipped otherwise, or left untried when the
        // attempts run out) clears it.
        let mut too_long: Option<Failed> = None;
        self.retry_budget.record_request();
        'targets: for (ti, t) in self.route.targets.iter().enumerate() {
            if let (Some(floor), Some(ctx)) = (min_context, context_of(self.config, t))
                && ctx <= floor
            {
                failures.push(format!(
                    "{}/{}: skipped (context window {ctx} not larger than {floor})",
                    t.target.provider, t.target.model
                ));
                continue;
            }
            too_long = None;
            if self.endpoint.path(t.provider.spec.wire).is_none() {
                // This target's API has no such endpoint (embeddings on the Anthropic wire): no
                // call is made; another target might serve it.
                let (p, m) = (&t.target.provider, &t.target.model);
                failures.push(format!("{p}/{m}: its API has no {} endpoint", self.endpoint));
                untranslatable.get_or_insert_with(|| TranslateError {
                    message: format!(
                        "no target of route {:?} serves {} (Anthropic-wire providers have no embeddings API)",
                        route.name, self.endpoint
                    ),
                    param: Some("model".to_owned()),
                });
                first_reason.get_or_insert("unsupported");
                refused_for_request += 1;
                continue;
            }
            let body = match (self.body_for)(t) {
                Ok(b) => b,
                Err(e) => {
                    // This target cannot express the request; another target might.
                    failures.push(format!(
                        "{}/{}: untranslatable ({})",
                        t.target.provider, t.target.model, e
                    ));
                    untranslatable.get_or_insert(e);
                    // A later target serving it is a fallback, and says so.
                    first_reason.get_or_insert("untranslatable");
                    refused_for_request += 1;
                    continue;
                }
            };
            let mut tries = 0u32;
            // Why the next attempt on this target is a retry; counted once it is made.
            let mut retrying: Option<&'static str> = None;
            loop {
                if attempts >= retries.total {
                    break 'targets;
                }
                let (p, m) = (t.target.provider.as_str(), t.target.model.as_str());
                // Cost and budget first: a breaker's half-open probe must not be spent on a
                // target the budget then refuses.
                if let Err(skip) =
                    super::admit::target(self.route, ti, t, self.ask, self.shared, rec).await
                {
                    first_reason.get_or_insert(skip.reason());
                    failures.push(format!("{p}/{m}: skipped ({})", skip.reason()));
                    match skip {
                        Skip::CostCeiling => {
                            ceiling_skipped = true;
                            refused_for_request += 1;
                        }
                        Skip::Budget(reset) => budget_reset = Some(reset),
                    }
                    continue 'targets;
                }
                let admission = self.health.admit(p, m);
                if let Admission::Skip { reason, retry_in } = admission {
                    first_reason.get_or_insert(reason);
                    // Open: until it may be probed; half-open: until the probe under way
                    // answers (it may close the breaker sooner), so "at most".
                    let secs = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
                    failures
                        .push(format!("{p}/{m}: skipped ({reason}, for at most {secs} s more)"));
                    continue 'targets;
                }
                attempts += 1;
                if let Some(reason) = retrying.take() {
                    rec.metrics().retries.with_label_values(&[&route.name, p, reason]).inc();
                }
                let attempt = Attempt {
                    target: t,
                    endpoint: self.endpoint,
                    body: body.clone(),
                    stream: self.stream,
                    timeouts: &route.timeouts,
                    deadline: self.deadline,
                    pass_on: &self.ask.pass_on,
                };
                let mut waited = Waited::default();
                rec.begin_attempt(&t.series);
                let result = attempt.run(&mut waited).await;
                rec.upstream_wait += waited.upstream;
                rec.upstream_request_id(waited.upstream_request_id.take());
                if let Some(ft) = waited.first_token {
                    t.series.ttft.observe(ft.as_secs_f64());
                }
                let mut f = match result {
                    // A stream's attempt lasts as long as the stream: the forwarding task logs
                    // it and tells the breaker how it ended (a stream cut after the commit
                    // point is the target's failure).
                    Ok(opened @ Opened::Stream(_)) => {
                        // A half-open breaker's probe: an answer that began is the target back
                        // (it must not stay out of rotation for the stream's whole length);
                        // how the stream ends is reported too.
                        if admission == Admission::Probe {
                            tell_breaker(self.health, rec.metrics(), &t.series, Outcome::Success);
                        }
                        return Ok(Served {
                            target: ti,
                            opened,
                            attempts,
                            fallback_reason: if ti > 0 { first_reason } else { None },
                        });
                    }
                    Ok(opened) => {
                        tell_breaker(self.health, rec.metrics(), &t.series, Outcome::Success);
                        rec.end_attempt("ok", "ok", Some(200), String::new());
                        return Ok(Served {
                            target: ti,
                            opened,
                            attempts,
                            fallback_reason: if ti > 0 { first_reason } else { None },
                        });
                    }
                    Err(f) => f,
                };
                let verdict = failure_verdict(&f, self.client_bound);
                tell_breaker(self.health, rec.metrics(), &t.series, verdict);
                rec.end_attempt("error", f.reason, f.status, redact(&f.detail, t));
                first_reason.get_or_insert(f.reason);
                failures.push(describe(t, &f));
                let refusal = (f.next == Next::ContextLength).then(|| f.passthrough.take());
                too_long = refusal.flatten().map(|mut p| {
                    p.body = redact_bytes(p.body, t);
                    let fallback_reason = if ti > 0 { first_reason } else { None };
                    let refused = Refused { target: ti, attempts, fallback_reason };
                    Failed::Passthrough(p, t.provider.spec.wire, refused)
                });
                if billable(&f) {
                    let route = rec.route.clone();
                    rec.spend.charge_failed(&t.series, route.as_deref());
                }
                if f.next == Next::NextTarget && f.reason == "auth" {
                    tracing::error!(
                        provider = p,
                        model = m,
                        "upstream rejected our credentials (status {:?}): check the provider's key",
                        f.status
                    );
                }
                if is_final(&f) {
                    let refused = Refused {
                        target: ti,
                        attempts,
                        fallback_reason: if ti > 0 { first_reason } else { None },
                    };
                    return Err(self.final_failure(f, &failures, t, refused));
                }
                match f.next {
                    // `Stop` already returned through `is_final`.
                    Next::Stop | Next::NextTarget => continue 'targets,
                    Next::ContextLength => {
                        let floor = context_of(self.config, t).unwrap_or(0);
                        min_context = Some(min_context.map_or(floor, |m| m.max(floor)));
                        continue 'targets;
                    }
                    Next::Retry => {
                        // No attempt left to retry with: do not wait for one.
                        if attempts >= retries.total {
                            break 'targets;
                        }
                        if tries >= retries.per_target || !self.retry_budget.try_retry() {
                            continue 'targets;
                        }
                        let delay = match f.retry_after {
                            Some(ra) if ra > retries.max_retry_after => continue 'targets,
                            Some(ra) => ra,
                            None => backoff(retries.backoff, tries),
                        };
                        let wake = Instant::now() + delay;
                        if wake >= self.deadline {
                            continue 'targets;
                        }
                        retrying = Some(f.reason);
                        let slept = Instant::now();
                        sleep_until(wake).await;
                        // Backoff is waiting on the upstream's recovery, not gateway work.
                        rec.upstream_wait += slept.elapsed();
                        tries += 1;
                    }
                }
            }
        }
        if attempts == 0 {
            let name = &route.name;
            if let Some(reset) = budget_reset {
                // Free tiers may still answer; the error is for when none does.
                let error = GatewayError::new(
                    ErrorCode::BudgetExhausted,
                    format!(
                        "route {name:?} has spent its budget for this window: {}",
                        failures.join("; ")
                    ),
                )
                .with_retry_after(crate::limits::rate::retry_after_secs(reset));
                return Err(Failed::Exhausted { error, reason: "budget_exhausted" });
            }
            let for_request = refused_for_request == self.route.targets.len();
            if ceiling_skipped && for_request {
                return Err(Failed::Gateway(GatewayError::new(
                    ErrorCode::CostCeilingExceeded,
                    format!(
                        "no target of route {name:?} fits its max_request_usd for this request (its worst case: input tokens x input price + max output x output price); lower max_tokens or shorten the prompt"
                    ),
                )));
            }
            if let Some(e) = untranslatable.filter(|_| for_request) {
                // No target could take the request at all: the request is the problem (SPEC §3).
                return Err(Failed::Gateway(GatewayError::invalid(e.message, e.param.as_deref())));
            }
        }
        if let Some(refusal) = too_long
            && route.free_tiers.is_empty()
        {
            return Err(refusal);
        }
        let code = if Instant::now() >= self.deadline {
            ErrorCode::DeadlineExceeded
        } else {
            ErrorCode::UpstreamUnavailable
        };
        Err(Failed::Exhausted {
            error: all_failed(code, &route.name, &failures, self.client_bound),
            reason: first_reason.unwrap_or("no_target"),
        })
    }

    fn final_failure(
        &self,
        f: AttemptFailure,
        failures: &[String],
        t: &TargetRuntime,
        refused: Refused,
    ) -> Failed {
        if f.deadline {
            let name = &self.route.route.name;
            let error = all_failed(ErrorCode::DeadlineExceeded, name, failures, self.client_bound);
            return Failed::Exhausted { error, reason: "deadline" };
        }
        match f.passthrough {
            Some(mut p) => {
                p.body = redact_bytes(p.body, t);
                Failed::Passthrough(p, t.provider.spec.wire, refused)
            }
            None => Failed::Exhausted {
                error: GatewayError::new(ErrorCode::UpstreamUnavailable, describe(t, &f)),
                reason: f.reason,
            },
        }
    }
}

/// How a failed attempt counts for its target's circuit breaker. `client_bound`: the attempt's
/// deadline was the client's read timeout (cut short before the target ran out of its time).
pub(super) fn failure_verdict(f: &AttemptFailure, client_bound: bool) -> Outcome {
    match f {
        // A 429 cools the target down for its Retry-After; without one there is nothing to
        // honour (and the same-target retry after backoff must not find it cooling down).
        f if f.reason == "rate_limited" => {
            f.retry_after.map_or(Outcome::Neutral, Outcome::RateLimited)
        }
        // The request's fault, not the target's; or its client's read timeout ran out before
        // the target had run out of its own time.
        f if matches!(f.next, Next::Stop | Next::ContextLength)
            || f.reason == "unsupported"
            || (f.deadline && client_bound) =>
        {
            Outcome::Neutral
        }
        _ => Outcome::Failure,
    }
}

/// Tells `t`'s circuit breaker how an attempt went; an opened or closed breaker is shown in
/// `tidegate_circuit_open` and logged.
pub(super) fn tell_breaker(health: &Health, metrics: &Metrics, t: &TargetSeries, outcome: Outcome) {
    let (p, m) = (&*t.provider, &*t.model);
    let Some(opened) = health.record(p, m, outcome) else { return };
    metrics.circuit_open.with_label_values(&[p, m]).set(if opened { 1.0 } else { 0.0 });
    if opened {
        tracing::warn!(
            provider = p,
            model = m,
            "circuit breaker opened: skipping this target for a while"
        );
    } else {
        tracing::info!(provider = p, model = m, "circuit breaker closed: the probe succeeded");
    }
}

/// A failure after the provider had the request and may have generated (and billed) for it:
/// timeouts, a stream cut, or a 200 that turned out not to be an answer. Refusals by status
/// are not billed.
pub(super) fn billable(f: &AttemptFailure) -> bool {
    // `timeout_upstream` is the provider's own 408: a refusal by status, not billed.
    (f.reason.starts_with("timeout") && f.reason != "timeout_upstream")
        || f.reason == "deadline"
        || f.reason == "cut"
        || (f.status.is_some_and(|s| (200..300).contains(&s))
            && matches!(f.reason, "malformed" | "error_event" | "error_body" | "content_type"))
}

fn describe(t: &TargetRuntime, f: &AttemptFailure) -> String {
    let status = f.status.map(|s| format!(" (status {s})")).unwrap_or_default();
    format!("{}/{}: {}{status}", t.target.provider, t.target.model, f.reason)
}

/// `client_bound`: the deadline was the client's read timeout, not the route's total.
fn all_failed(
    code: ErrorCode,
    route: &str,
    failures: &[String],
    client_bound: bool,
) -> GatewayError {
    let what = if code == ErrorCode::DeadlineExceeded && client_bound {
        "the client's read timeout (x-stainless-read-timeout, plus 1 s) passed"
    } else if code == ErrorCode::DeadlineExceeded {
        "the route's total deadline passed"
    } else {
        "every target failed"
    };
    let list =
        if failures.is_empty() { "no attempt was made".to_owned() } else { failures.join("; ") };
    GatewayError::new(code, format!("route {route:?}: {what}: {list}"))
}

/// Removes any echo of the provider's key from upstream text.
fn redact(text: &str, t: &TargetRuntime) -> String {
    t.provider.key().and_then(|k| k.redact(text)).unwrap_or_else(|| text.to_owned())
}

fn redact_bytes(body: Bytes, t: &TargetRuntime) -> Bytes {
    match (t.provider.key(), std::str::from_utf8(&body)) {
        (Some(k), Ok(s)) => k.redact(s).map_or(body, Bytes::from),
        _ => body,
    }
}
