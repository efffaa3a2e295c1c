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
use crate::routing::health::{Admission, Health, Outcome};
use crate::routing::retry_budget::RetryBudget;
use crate::runtime::{RouteRuntime, TargetRuntime};
use crate::translate::TranslateError;

mod verdict;

use verdict::{all_failed, describe, redact, redact_bytes};
pub(super) use verdict::{billable, failure_verdict, tell_breaker};

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

/// What one run of the loop has learned so far.
#[derive(Default)]
struct Tally {
    /// Attempts made (bounded by `retries.total`).
    attempts: u32,
    /// Why the first target did not serve.
    first_reason: Option<&'static str>,
    /// After a context-length failure: only targets with a larger (or unknown) window.
    min_context: Option<u64>,
    /// One line per target tried or passed over, for the error message.
    failures: Vec<String>,
    untranslatable: Option<TranslateError>,
    /// A target was passed over by the cost ceiling.
    ceiling_skipped: bool,
    /// Targets passed over for what the request is (untranslatable, an endpoint their API
    /// lacks, over the cost ceiling): when that is every target, the request is the problem
    /// (a 400); when some other target was only unavailable for now (breaker, cooldown), it
    /// is not.
    refused_for_request: usize,
    /// A target was passed over by its budget, which resets after this long.
    budget_reset: Option<Duration>,
    /// The last failure was the prompt's length, and every target after it was passed over
    /// for its window: the client hears that refusal (its request is the problem, not the
    /// route), unless the route has free tiers to answer instead. A later target that is not
    /// passed over for its window (tried, skipped otherwise, or left untried when the
    /// attempts run out) clears it.
    too_long: Option<Failed>,
}

impl Tally {
    /// Why the first target did not serve, when target `ti` is a later one.
    fn fallback(&self, ti: usize) -> Option<&'static str> {
        if ti > 0 { self.first_reason } else { None }
    }

    fn refused(&self, ti: usize) -> Refused {
        Refused { target: ti, attempts: self.attempts, fallback_reason: self.fallback(ti) }
    }

    /// Target `t` was passed over by the cost ceiling or the budget.
    fn skipped(&mut self, t: &TargetRuntime, skip: Skip) {
        self.first_reason.get_or_insert(skip.reason());
        let (p, m) = (&t.target.provider, &t.target.model);
        self.failures.push(format!("{p}/{m}: skipped ({})", skip.reason()));
        match skip {
            Skip::CostCeiling => {
                self.ceiling_skipped = true;
                self.refused_for_request += 1;
            }
            Skip::Budget(reset) => self.budget_reset = Some(reset),
        }
    }
}

/// How trying one target ended.
enum Tried {
    /// It answered.
    Served(Served),
    /// The request ends here, in failure.
    Failed(Failed),
    /// On to the next target.
    Next,
    /// No attempt is left.
    OutOfAttempts,
}

impl<F: Fn(&TargetRuntime) -> Result<Bytes, TranslateError>> Plan<'_, F> {
    pub async fn run(&self, rec: &mut RequestRecord) -> Result<Served, Failed> {
        let mut tally = Tally::default();
        self.retry_budget.record_request();
        for (ti, t) in self.route.targets.iter().enumerate() {
            let Some(body) = self.body_for_target(t, &mut tally) else { continue };
            match self.try_target(ti, t, &body, &mut tally, rec).await {
                Tried::Served(served) => return Ok(served),
                Tried::Failed(failed) => return Err(failed),
                Tried::Next => {}
                Tried::OutOfAttempts => break,
            }
        }
        Err(self.exhausted(tally))
    }

    /// The upstream body for `t`, or `None` when `t` is passed over for what the request is:
    /// its context window is too small after a context-length failure, its API lacks the
    /// endpoint, or it cannot express the request.
    fn body_for_target(&self, t: &TargetRuntime, tally: &mut Tally) -> Option<Bytes> {
        if let (Some(floor), Some(ctx)) = (tally.min_context, context_of(self.config, t))
            && ctx <= floor
        {
            tally.failures.push(format!(
                "{}/{}: skipped (context window {ctx} not larger than {floor})",
                t.target.provider, t.target.model
            ));
            return None;
        }
        tally.too_long = None;
        let (p, m) = (&t.target.provider, &t.target.model);
        if self.endpoint.path(t.provider.spec.wire).is_none() {
            // This target's API has no such endpoint (embeddings on the Anthropic wire): no
            // call is made; another target might serve it.
            tally.failures.push(format!("{p}/{m}: its API has no {} endpoint", self.endpoint));
            tally.untranslatable.get_or_insert_with(|| {
                TranslateError::field(
                    "model",
                    format!(
                        "no target of route {:?} serves {} (Anthropic-wire providers have no embeddings API)",
                        self.route.route.name, self.endpoint
                    ),
                )
            });
            tally.first_reason.get_or_insert("unsupported");
            tally.refused_for_request += 1;
            return None;
        }
        match (self.body_for)(t) {
            Ok(b) => Some(b),
            Err(e) => {
                // This target cannot express the request; another target might.
                tally.failures.push(format!("{p}/{m}: untranslatable ({e})"));
                tally.untranslatable.get_or_insert(e);
                // A later target serving it is a fallback, and says so.
                tally.first_reason.get_or_insert("untranslatable");
                tally.refused_for_request += 1;
                None
            }
        }
    }

    /// Attempts on target `ti`, retried while `retries` and the retry budget allow.
    async fn try_target(
        &self,
        ti: usize,
        t: &TargetRuntime,
        body: &Bytes,
        tally: &mut Tally,
        rec: &mut RequestRecord,
    ) -> Tried {
        let route = &self.route.route;
        let retries = route.retries;
        let (p, m) = (t.target.provider.as_str(), t.target.model.as_str());
        let mut tries = 0u32;
        // Why the next attempt on this target is a retry; counted once it is made.
        let mut retrying: Option<&'static str> = None;
        loop {
            if tally.attempts >= retries.total {
                return Tried::OutOfAttempts;
            }
            // Cost and budget first: a breaker's half-open probe must not be spent on a
            // target the budget then refuses.
            if let Err(skip) =
                super::admit::target(self.route, ti, t, self.ask, self.shared, rec).await
            {
                tally.skipped(t, skip);
                return Tried::Next;
            }
            // A retry takes its token from the process-wide budget only now, once the budget
            // and the ceiling let it through; none left: on to the next target. The breaker is
            // asked next (a half-open probe is never granted to a retry that then gives up); a
            // breaker that opened during the backoff gives the token back.
            if retrying.is_some() && !self.retry_budget.try_retry() {
                return Tried::Next;
            }
            let admission = self.health.admit(p, m);
            if let Admission::Skip { reason, retry_in } = admission {
                if retrying.is_some() {
                    self.retry_budget.refund();
                }
                tally.first_reason.get_or_insert(reason);
                // Open: until it may be probed; half-open: until the probe under way answers
                // (it may close the breaker sooner), so "at most".
                let secs = retry_in.as_secs_f64().ceil();
                let skipped = format!("{p}/{m}: skipped ({reason}, for at most {secs} s more)");
                tally.failures.push(skipped);
                return Tried::Next;
            }
            tally.attempts += 1;
            if let Some(reason) = retrying.take() {
                rec.metrics().retries.with_label_values(&[&route.name, p, reason]).inc();
            }
            let mut f = match self.attempt(t, body, admission, rec).await {
                Ok(opened) => {
                    let fallback_reason = tally.fallback(ti);
                    let attempts = tally.attempts;
                    return Tried::Served(Served { target: ti, opened, attempts, fallback_reason });
                }
                Err(f) => f,
            };
            self.note_failure(ti, t, &mut f, tally, rec);
            if is_final(&f) {
                let refused = tally.refused(ti);
                return Tried::Failed(self.final_failure(f, &tally.failures, t, refused));
            }
            match f.next {
                // `Stop` already returned through `is_final`.
                Next::Stop | Next::NextTarget => return Tried::Next,
                Next::ContextLength => {
                    let floor = context_of(self.config, t).unwrap_or(0);
                    tally.min_context = Some(tally.min_context.map_or(floor, |m| m.max(floor)));
                    return Tried::Next;
                }
                Next::Retry => {
                    // No attempt left to retry with: do not wait for one.
                    if tally.attempts >= retries.total {
                        return Tried::OutOfAttempts;
                    }
                    let Some(wake) = self.retry_at(&f, tries) else { return Tried::Next };
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

    /// When to retry the same target after `f` (its `tries`-th retry), or `None`: its retries
    /// spent, a `Retry-After` over `max_retry_after`, a wake past the deadline, or a retry
    /// budget that would refuse it (asked, not taken: no wait for a retry that will not be
    /// made).
    fn retry_at(&self, f: &AttemptFailure, tries: u32) -> Option<Instant> {
        let retries = self.route.route.retries;
        if tries >= retries.per_target {
            return None;
        }
        let delay = match f.retry_after {
            Some(ra) if ra > retries.max_retry_after => return None,
            Some(ra) => ra,
            None => backoff(retries.backoff, tries),
        };
        let wake = Instant::now() + delay;
        (wake < self.deadline && self.retry_budget.can_retry()).then_some(wake)
    }

    /// One attempt on `t`. An answer is reported to the breaker; a stream's attempt lasts as
    /// long as the stream, so the forwarding task logs it and tells the breaker how it ended
    /// (a stream cut after the commit point is the target's failure).
    async fn attempt(
        &self,
        t: &TargetRuntime,
        body: &Bytes,
        admission: Admission,
        rec: &mut RequestRecord,
    ) -> Result<Opened, AttemptFailure> {
        let attempt = Attempt {
            target: t,
            endpoint: self.endpoint,
            body: body.clone(),
            stream: self.stream,
            timeouts: &self.route.route.timeouts,
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
        match &result {
            // A half-open breaker's probe: an answer that began is the target back (it must
            // not stay out of rotation for the stream's whole length); how the stream ends is
            // reported too.
            Ok(Opened::Stream(_)) if admission == Admission::Probe => {
                tell_breaker(self.health, rec.metrics(), &t.series, Outcome::Success);
            }
            Ok(Opened::Stream(_)) | Err(_) => {}
            Ok(_) => {
                tell_breaker(self.health, rec.metrics(), &t.series, Outcome::Success);
                rec.end_attempt("ok", "ok", Some(200), String::new());
            }
        }
        result
    }

    /// Records a failed attempt on target `ti`: its breaker, its log entry, its cost if the
    /// provider may have billed it, and a context-length refusal the client may hear.
    fn note_failure(
        &self,
        ti: usize,
        t: &TargetRuntime,
        f: &mut AttemptFailure,
        tally: &mut Tally,
        rec: &mut RequestRecord,
    ) {
        let verdict = failure_verdict(f, self.client_bound);
        tell_breaker(self.health, rec.metrics(), &t.series, verdict);
        rec.end_attempt("error", f.reason, f.status, redact(&f.detail, t));
        tally.first_reason.get_or_insert(f.reason);
        tally.failures.push(describe(t, f));
        let refusal = (f.next == Next::ContextLength).then(|| f.passthrough.take());
        tally.too_long = refusal.flatten().map(|mut p| {
            p.body = redact_bytes(p.body, t);
            Failed::Passthrough(p, t.provider.spec.wire, tally.refused(ti))
        });
        if billable(f) {
            let route = rec.route.clone();
            rec.spend.charge_failed(&t.series, route.as_deref());
        }
        if f.next == Next::NextTarget && f.reason == "auth" {
            tracing::error!(
                provider = %t.target.provider,
                model = %t.target.model,
                "upstream rejected our credentials (status {:?}): check the provider's key",
                f.status
            );
        }
    }

    /// Why no target answered, once the targets or the attempts ran out.
    fn exhausted(&self, mut tally: Tally) -> Failed {
        let route = &self.route.route;
        // A refusal the client's SDK recovers from by itself, re-sending the request another
        // way (`thread`: the anthropic SDK's full, unthreaded history), wins even after other
        // targets failed: as sent, the request cannot go to every target; re-sent, it can.
        if let Some(e) = tally.untranslatable.take_if(|e| e.details.is_some()) {
            return Failed::Gateway(e.into());
        }
        if tally.attempts == 0 {
            let name = &route.name;
            if let Some(reset) = tally.budget_reset {
                // Free tiers may still answer; the error is for when none does.
                let error = GatewayError::new(
                    ErrorCode::BudgetExhausted,
                    format!(
                        "route {name:?} has spent its budget for this window: {}",
                        tally.failures.join("; ")
                    ),
                )
                .with_retry_after(crate::limits::rate::retry_after_secs(reset));
                return Failed::Exhausted { error, reason: "budget_exhausted" };
            }
            let for_request = tally.refused_for_request == self.route.targets.len();
            if tally.ceiling_skipped && for_request {
                return Failed::Gateway(GatewayError::new(
                    ErrorCode::CostCeilingExceeded,
                    format!(
                        "no target of route {name:?} fits its max_request_usd for this request (its worst case: input tokens x input price + max output x output price); lower max_tokens or shorten the prompt"
                    ),
                )
                .with_param(self.ask.cost_param()));
            }
            if let Some(e) = tally.untranslatable.filter(|_| for_request) {
                // No target could take the request at all: the request is the problem (SPEC §3).
                return Failed::Gateway(e.into());
            }
        }
        if let Some(refusal) = tally.too_long
            && route.free_tiers.is_empty()
        {
            return refusal;
        }
        let code = if Instant::now() >= self.deadline {
            ErrorCode::DeadlineExceeded
        } else {
            ErrorCode::UpstreamUnavailable
        };
        Failed::Exhausted {
            error: all_failed(code, &route.name, &tally.failures, self.client_bound),
            reason: tally.first_reason.unwrap_or("no_target"),
        }
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
