//! What a request costs and what it holds against its route's budget (SPEC §6).
//!
//! A [`Spend`] lives in the request record. The failover loop puts a [`Held`] reservation in it
//! before calling a paid target (the target's worst case) and swaps it when it moves to another
//! target; the record settles it when it drops, wherever the request ends: a complete answer, a
//! stream's end, an upstream failure or a client disconnect. The settled cost is the upstream's
//! reported usage at the target's prices; when the upstream reported none, an estimate (the
//! counted input, plus the output seen so far at 3 bytes a token, at most the reserved output)
//! flagged as estimated.

use std::sync::Arc;

use crate::limits::EpochClock;
use crate::limits::budget::{BudgetLimit, Ledger, Reservation};
use crate::runtime::{RouteSeries, TargetSeries};

use super::peek::Usage;

/// A budget reservation and where to return it.
pub struct Held {
    /// This process's ledger of the route (also the fallback while Redis is away).
    pub ledger: Arc<Ledger>,
    /// Set when the reservation was made in Redis: settled there (route name, its entry).
    pub redis: Option<(crate::store::redis::RedisStore, Arc<str>, crate::store::redis::Hold)>,
    pub limit: BudgetLimit,
    pub reservation: Reservation,
    pub clock: EpochClock,
    /// The target index it was made for.
    pub target: usize,
    /// What failed attempts on this target cost (settled with the reservation).
    pub accrued: u64,
}

impl Held {
    /// Settles with what its failed attempts cost plus `actual` (the attempt that answered, if
    /// any), and updates the route's remaining-budget gauge.
    pub fn settle(self, actual: u64, route: Option<&RouteSeries>) {
        let actual = actual.saturating_add(self.accrued);
        if let Some((store, name, hold)) = self.redis {
            let (r, per) = (self.reservation, self.limit.per);
            let ttl = crate::store::window_ttl(per);
            // Settling must not wait for Redis: it runs on its own, bounded by the store's
            // timeout. A lost settlement leaves the worst case reserved until its lease ends
            // (the route's deadline plus a margin), and the cost uncounted.
            store.spawn(|store| async move {
                if let Err(e) = store.budget_settle(&name, r.window, ttl, &hold, actual).await {
                    tracing::warn!(route = %name, error = %e, "budget settlement in redis failed");
                }
            });
            return;
        }
        self.ledger.settle(self.reservation, actual);
        if let Some(g) = route.and_then(|r| r.budget_remaining.get()) {
            let left = self.ledger.remaining(self.clock.now(), &self.limit);
            g.set(left as f64 / 1e6);
        }
    }
}

/// Cost accounting of one request.
#[derive(Default)]
pub struct Spend {
    pub held: Option<Held>,
    /// Counted prompt tokens for the target that was admitted last, when counted.
    pub input_tokens: Option<u64>,
    /// The output limit the reservation assumed.
    pub max_output: Option<u64>,
    /// Answer text bytes the client received from the current attempt (for the estimate when
    /// usage is missing or partial).
    pub streamed_bytes: u64,
    /// The request body's size (the input estimate when tokens were not counted).
    pub body_bytes: u64,
    /// The answer arrived whole (a complete body, or a stream to its end): its usage is final.
    pub complete: bool,
    /// Cost of earlier attempts that answered in part (a stream broken after the commit point,
    /// then resumed elsewhere), and whether any of it was estimated.
    prior: u64,
    prior_estimated: bool,
    /// Tokens of those earlier attempts (their output at least what they streamed).
    prior_usage: Usage,
    /// The current attempt was closed by a resume and no new one has opened yet: it costs
    /// nothing more.
    closed: bool,
    /// A resumed attempt is running: its own usage is `resumed_usage`, not the request's.
    resumed: bool,
    /// The usage the running resumed attempt has reported so far.
    pub resumed_usage: Option<Usage>,
    /// Once computed: (micro-dollars, estimated).
    settled: Option<(u64, bool)>,
    /// The tokens that cost was computed from for the attempts that answered (in part or
    /// whole), estimated where they reported none.
    answered: Option<Usage>,
    /// Input tokens charged to failed attempts ([`Self::charge_failed`]).
    failed_input: u64,
}

impl Spend {
    /// The request's cost: earlier attempts plus the current one at its target's prices.
    /// Computed once; later calls return the same figure.
    pub fn cost(&mut self, served: Option<&TargetSeries>, usage: Option<&Usage>) -> (u64, bool) {
        if let Some(c) = self.settled {
            return c;
        }
        let (c, est) = self.attempt_cost(served, usage);
        let total = (self.prior.saturating_add(c), self.prior_estimated || est);
        self.settled = Some(total);
        self.answered = served.map(|_| self.request_usage(usage));
        total
    }

    /// The tokens the answering attempts were charged for ([`Self::cost`] computes them):
    /// what `tidegate_tokens_total` counts for the serving target, so tokens and cost agree.
    /// `None` before `cost`, or when no attempt answered.
    pub fn answered_usage(&self) -> Option<Usage> {
        self.answered
    }

    /// Every token the request was charged for, failed attempts' input included: the log
    /// line's.
    pub fn billed_usage(&self) -> Option<Usage> {
        let failed = Usage { input: self.failed_input, output: 0, cached_input: 0 };
        match self.answered {
            Some(u) => Some(sum(u, failed)),
            None => (self.failed_input > 0).then_some(failed),
        }
    }

    /// What earlier attempts cost (already settled against the budget).
    pub fn prior(&self) -> u64 {
        self.prior
    }

    /// An attempt failed after the provider had the request and may have worked on it (a
    /// timeout, a cut, a 200 that was not an answer): it is charged its input, estimated, so a
    /// flaky provider cannot bill more than the budget saw.
    /// The reservation is settled with it, so a retry reserves its worst case afresh (and may
    /// be refused): accrued charges never push spend past what was reserved.
    pub fn charge_failed(&mut self, t: &TargetSeries, route: Option<&RouteSeries>) {
        let Some(p) = t.price.as_ref() else { return };
        let input = self.input_tokens.unwrap_or(self.body_bytes.div_ceil(4));
        let c = p.usage_cost(&Usage { input, output: 0, cached_input: 0 });
        self.prior = self.prior.saturating_add(c);
        self.prior_estimated = true;
        self.failed_input = self.failed_input.saturating_add(input);
        t.input_tokens.inc_by(input);
        if let Some(mut h) = self.held.take() {
            h.accrued = h.accrued.saturating_add(c);
            h.settle(0, route);
        }
        if c > 0 {
            t.cost.inc_by(c);
        }
    }

    /// A resumed attempt's stream opened: it is the current attempt now.
    pub fn begin_resumed(&mut self) {
        self.closed = false;
        self.resumed = true;
        self.resumed_usage = None;
        self.streamed_bytes = 0;
    }

    /// A stream broke after answering in part and is about to be resumed: its attempt's cost
    /// becomes part of the request's, and its reservation is settled with it.
    pub fn close_attempt(
        &mut self,
        served: Option<&TargetSeries>,
        usage: Option<&Usage>,
        route: Option<&RouteSeries>,
    ) {
        let (c, est) = self.attempt_cost(served, usage);
        self.prior = self.prior.saturating_add(c);
        self.prior_estimated |= est;
        if let Some((u, _)) = self.attempt_usage(usage) {
            self.prior_usage = sum(self.prior_usage, u);
            // Its tokens are its target's; the record counts the last attempt's for the target
            // that served (`tidegate_tokens_total`).
            if let Some(t) = served {
                t.input_tokens.inc_by(u.input);
                t.output_tokens.inc_by(u.output);
                t.cached_tokens.inc_by(u.cached_input);
            }
        }
        if let Some(t) = served
            && c > 0
        {
            t.cost.inc_by(c);
        }
        self.closed = true;
        self.streamed_bytes = 0;
        if let Some(h) = self.held.take() {
            h.settle(c, route);
        }
    }

    /// Tokens of the attempts closed by a resume (already counted for their targets).
    pub fn prior_usage(&self) -> Usage {
        self.prior_usage
    }

    /// The tokens of a resumed request's attempts, the last one's `last` (as reported) included:
    /// what the client is told it used, and what the log line and the token metrics count.
    pub fn request_usage(&self, last: Option<&Usage>) -> Usage {
        self.attempt_usage(last).map_or(self.prior_usage, |(u, _)| sum(self.prior_usage, u))
    }

    /// The current attempt's usage (the request's, or a resumed attempt's own), and whether it
    /// is estimated: an answer that did not arrive whole may have reported only part of its
    /// usage (Anthropic's `message_start`), so its output is at least the estimate; one that
    /// reported none is estimated whole. `None` once the attempt was closed.
    fn attempt_usage(&self, usage: Option<&Usage>) -> Option<(Usage, bool)> {
        if self.closed {
            return None;
        }
        let usage = if self.resumed { self.resumed_usage } else { usage.copied() };
        Some(match usage {
            Some(u) if self.complete => (u, false),
            Some(u) => {
                let seen = self.output_estimate();
                (Usage { output: u.output.max(seen), ..u }, seen > u.output)
            }
            None => {
                let input = self.input_tokens.unwrap_or(self.body_bytes.div_ceil(4));
                (Usage { input, output: self.output_estimate(), cached_input: 0 }, true)
            }
        })
    }

    /// The current attempt's usage ([`Self::attempt_usage`]) at its target's prices.
    fn attempt_cost(&self, served: Option<&TargetSeries>, usage: Option<&Usage>) -> (u64, bool) {
        let Some((u, estimated)) = self.attempt_usage(usage) else { return (0, false) };
        match served.and_then(|t| t.price.as_ref()) {
            Some(p) => (p.usage_cost(&u), estimated),
            // Unpriced: nothing to charge, but a served answer without usage is still flagged.
            None => (0, served.is_some() && !self.reported(usage)),
        }
    }

    fn reported(&self, usage: Option<&Usage>) -> bool {
        if self.resumed { self.resumed_usage.is_some() } else { usage.is_some() }
    }

    /// Output tokens of the text received so far, at 3 bytes a token, at most the limit.
    fn output_estimate(&self) -> u64 {
        let out = self.streamed_bytes.div_ceil(3);
        self.max_output.map_or(out, |m| out.min(m))
    }
}

fn sum(a: Usage, b: Usage) -> Usage {
    Usage {
        input: a.input.saturating_add(b.input),
        output: a.output.saturating_add(b.output),
        cached_input: a.cached_input.saturating_add(b.cached_input),
    }
}
