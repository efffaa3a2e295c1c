//! Admission against the route's limits (SPEC §6): `max_n`, the input token ceiling, rpm and
//! tpm for the whole request; then, per target, the cost ceiling and the budget reservation.

use std::time::Duration;

use super::ask::Prepared;
use super::record::RequestRecord;
use super::spend::Held;
use crate::error::{ErrorCode, GatewayError};
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::config::Policy;
use crate::limits::budget::Reservation;
use crate::limits::prices::format_usd;
use crate::limits::rate::{Limiter, retry_after_secs};
use crate::runtime::{RouteRuntime, Shared, TargetRuntime};
use crate::store::redis::Hold;

/// How long a shared budget reservation outlives its route's total deadline before it stops
/// counting (the settlement runs after the request ends, bounded by `state.timeout`).
const HOLD_MARGIN: Duration = Duration::from_secs(30);

/// Request-level checks, before any target is tried. Counts the prompt only when a limit needs
/// the number.
pub async fn request(
    route: &RouteRuntime,
    ask: &Prepared<'_>,
    shared: &Shared,
    rec: &RequestRecord,
) -> Result<(), GatewayError> {
    let limits = &route.route.limits;
    let reject = |kind: &str| {
        rec.metrics().ceiling_rejections.with_label_values(&[&route.route.name, kind]).inc();
    };
    if let Some(max) = limits.max_n
        && ask.n() > max
    {
        reject("max_n");
        return Err(GatewayError::invalid(
            format!("`n` is {}; route {:?} allows at most {max}", ask.n(), route.route.name),
            Some("n"),
        ));
    }
    // tpm charges the real count; the input ceiling only needs it when the body's size does
    // not already prove the prompt fits.
    let exact = limits.tpm.is_some()
        || limits.max_input_tokens.is_some_and(|max| {
            // Scanned once, and only on routes with the limit.
            let bound = ask.input_bound();
            route.targets.iter().any(|t| bound.is_none_or(|b| t.series.family.scale(b) > max))
        });
    let input = if exact { route_input_tokens(route, ask) } else { 0 };
    if let Some(max) = limits.max_input_tokens
        && exact
        && input > max
    {
        reject("input_tokens");
        return Err(GatewayError::new(
            ErrorCode::InputTokensExceeded,
            format!(
                "the prompt is {input} tokens; route {:?} allows at most {max} input tokens",
                route.route.name
            ),
        )
        .with_param(if ask.endpoint() == super::attempt::Endpoint::Embeddings {
            "input"
        } else {
            "messages"
        }));
    }
    if let Some(e) = larger_than_budget(route, ask) {
        // Counted as what the client is told: a cost ceiling (the budget's), not a spent budget.
        reject("cost_ceiling");
        return Err(e);
    }
    let limited = |kind: &str, wait: Duration| {
        reject(kind);
        GatewayError::new(
            ErrorCode::RateLimited,
            format!("route {:?} is over its {kind} limit; retry later", route.route.name),
        )
        .with_retry_after(retry_after_secs(wait))
    };
    if let (Some(local), Some(q)) = (&route.rpm, limits.rpm) {
        rate(shared, route, "rpm", local, q, 1).await.map_err(|w| limited("rpm", w))?;
    }
    if let (Some(local), Some(q)) = (&route.tpm, limits.tpm) {
        let tokens = input.saturating_add(ask.output_limit().unwrap_or(0));
        rate(shared, route, "tpm", local, q, tokens).await.map_err(|w| limited("tpm", w))?;
    }
    Ok(())
}

/// One rate limit: GCRA in Redis when shared, else (or when Redis fails and the policy is
/// `local`) this process's governor limiter.
async fn rate(
    shared: &Shared,
    route: &RouteRuntime,
    kind: &'static str,
    local: &Limiter,
    per_minute: NonZeroU32,
    units: u64,
) -> Result<(), Duration> {
    if let Some(store) = &shared.state.redis {
        let key = format!("{}:{kind}", route.route.name);
        let burst = u64::from(per_minute.get());
        match store.gcra(&key, burst, Duration::from_secs(60), units).await {
            Ok(None) => return Ok(()),
            Ok(Some(wait)) => return Err(wait),
            Err(e) => {
                if shared.state.failed("rate_limits", &e) == Policy::Reject {
                    return Err(Duration::from_secs(1));
                }
            }
        }
    }
    local.check(units)
}

/// A request no paid target can ever take, because its worst case there is larger than the
/// route's whole budget (or, on some targets, above `max_request_usd`), on a route with no
/// free tier to answer instead. No window will fit it, so this is the request's fault, like
/// the cost ceiling: 400 `cost_ceiling_exceeded` (not retryable), not 429 `budget_exhausted`,
/// whose `Retry-After` would invite retries that can never succeed.
fn larger_than_budget(route: &RouteRuntime, ask: &Prepared<'_>) -> Option<GatewayError> {
    let limits = &route.route.limits;
    let budget = limits.budget?;
    if !route.route.free_tiers.is_empty() || route.targets.is_empty() {
        return None;
    }
    let mut smallest = u64::MAX;
    for t in &route.targets {
        let price = t.series.price.as_ref()?;
        if price.is_free() {
            return None;
        }
        let input = ask.input_tokens(t.series.family);
        let max_output = ask.output_limit().or_else(|| price.output_ceiling(input)).unwrap_or(0);
        let worst = price.worst_case(input, max_output, ask.n());
        if worst <= budget.limit && limits.max_request_usd.is_none_or(|c| worst <= c) {
            return None;
        }
        smallest = smallest.min(worst);
    }
    if smallest <= budget.limit {
        // Every target is above the cost ceiling, none above the budget: the ceiling's refusal.
        return None;
    }
    Some(
        GatewayError::new(
            ErrorCode::CostCeilingExceeded,
            format!(
                "this request is larger than route {:?}'s whole budget: its worst case is {} USD \
                 (input tokens x input price + max output x output price, times n), the budget \
                 {} USD per {} s; lower max_tokens or n, or shorten the prompt",
                route.route.name,
                format_usd(smallest),
                format_usd(budget.limit),
                budget.per.as_secs()
            ),
        )
        .with_param(ask.cost_param()),
    )
}

/// The prompt's size for the route's limits: the largest count among its targets' tokenizers.
fn route_input_tokens(route: &RouteRuntime, ask: &Prepared<'_>) -> u64 {
    route.targets.iter().map(|t| ask.input_tokens(t.series.family)).max().unwrap_or(0)
}

/// Why a target was passed over before any call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its worst case is above `max_request_usd`.
    CostCeiling,
    /// Its worst case does not fit the route's budget; the window resets after this.
    Budget(Duration),
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::CostCeiling => "cost_ceiling",
            Skip::Budget(_) => "budget_exhausted",
        }
    }
}

/// The cost ceiling and the budget for target `ti`: on success the request holds a reservation
/// of the target's worst case (kept across retries of the same target).
pub async fn target(
    route: &RouteRuntime,
    ti: usize,
    t: &TargetRuntime,
    ask: &Prepared<'_>,
    shared: &Shared,
    rec: &mut RequestRecord,
) -> Result<(), Skip> {
    let clock = shared.clock;
    let limits = &route.route.limits;
    if !limits.prices_needed() {
        return Ok(());
    }
    if rec.spend.held.as_ref().is_some_and(|h| h.target == ti) {
        return Ok(());
    }
    // Moving on from another target: what it held goes back, less what its failed attempts
    // cost (it answered nothing).
    if let Some(h) = rec.spend.held.take() {
        h.settle(0, rec.route.as_deref());
    }
    // Validation guarantees a price for every target of a route with cost limits.
    let Some(price) = t.series.price.as_ref() else { return Ok(()) };
    // The exact count: a size bound would over-reserve several times over and refuse
    // requests the budget could take.
    let input = ask.input_tokens(t.series.family);
    let max_output = ask.output_limit().or_else(|| price.output_ceiling(input)).unwrap_or(0);
    let worst = price.worst_case(input, max_output, ask.n());
    rec.spend.input_tokens = Some(input);
    rec.spend.max_output = Some(max_output);
    let reject = |kind: &str| {
        rec.metrics().ceiling_rejections.with_label_values(&[&route.route.name, kind]).inc();
    };
    // The ceiling holds for the request as a whole: what its earlier attempts cost (a timeout's
    // input, a broken stream's part of the answer) counts against it.
    if let Some(ceiling) = limits.max_request_usd
        && worst.saturating_add(rec.spend.prior()) > ceiling
    {
        reject("cost_ceiling");
        tracing::debug!(
            route = %route.route.name,
            model = %t.target.model,
            worst = %format_usd(worst),
            ceiling = %format_usd(ceiling),
            "target skipped: worst case above max_request_usd"
        );
        return Err(Skip::CostCeiling);
    }
    let (Some(limit), Some(ledger)) = (limits.budget, &route.ledger) else { return Ok(()) };
    if price.is_free() {
        return Ok(());
    }
    let now = clock.now();
    if worst > limit.limit {
        // Larger than a whole window's budget: it can never fit.
        reject("budget");
        return Err(Skip::Budget(limit.until_reset(now)));
    }
    if let Some(store) = &shared.state.redis {
        let (window, ttl) = (limit.window_of(now), crate::store::window_ttl(limit.per));
        // The request ends by its total deadline and settles right after: a reservation
        // still unsettled past this was lost (its replica died), and stops counting.
        let hold = Hold::new(worst, route.route.timeouts.total + HOLD_MARGIN);
        match store.budget_reserve(&route.route.name, window, ttl, limit.limit, &hold).await {
            Ok(Ok(())) => {
                let reservation = Reservation { window, amount: worst, generation: 0 };
                let redis = Some((store.clone(), Arc::from(route.route.name.as_str()), hold));
                let held = Held {
                    ledger: ledger.clone(),
                    redis,
                    limit,
                    reservation,
                    clock,
                    target: ti,
                    accrued: 0,
                };
                rec.spend.held = Some(held);
                return Ok(());
            }
            Ok(Err(_)) => {
                reject("budget");
                return Err(Skip::Budget(limit.until_reset(now)));
            }
            Err(e) => {
                // It may still land in Redis (a stall): cancel it once Redis answers. Not
                // when it cannot have (Redis refused the connection): an outage must not
                // queue a cleanup task per request.
                if e.may_have_landed() {
                    store.abandon_reserve(&route.route.name, window, ttl, hold);
                }
                if shared.state.failed("budgets", &e) == Policy::Reject {
                    reject("budget");
                    return Err(Skip::Budget(Duration::from_secs(1)));
                }
            }
        }
    }
    match ledger.reserve(now, &limit, worst) {
        Ok(reservation) => {
            let held = Held {
                ledger: ledger.clone(),
                redis: None,
                limit,
                reservation,
                clock,
                target: ti,
                accrued: 0,
            };
            if let Some(g) = route.series.budget_remaining.get() {
                g.set(ledger.remaining(now, &limit) as f64 / 1e6);
            }
            rec.spend.held = Some(held);
            Ok(())
        }
        Err(e) => {
            reject("budget");
            Err(Skip::Budget(e.retry_after))
        }
    }
}
