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

use crate::config::ModelInfo;
use crate::limits::EpochClock;
use crate::limits::budget::{BudgetLimit, Ledger, Reservation};
use crate::runtime::{RouteSeries, TargetSeries};

use super::peek::Usage;

/// A budget reservation and where to return it.
pub struct Held {
    /// This process's ledger of the route (also the fallback while Redis is away).
    pub ledger: Arc<Ledger>,
    /// Set when the reservation was made in Redis: settled there.
    pub redis: Option<(crate::store::redis::RedisStore, Arc<str>)>,
    pub limit: BudgetLimit,
    pub reservation: Reservation,
    pub clock: EpochClock,
    /// The target index it was made for.
    pub target: usize,
}

impl Held {
    /// Settles with `actual` and updates the route's remaining-budget gauge.
    pub fn settle(self, actual: u64, route: Option<&RouteSeries>) {
        if let Some((store, name)) = self.redis {
            let (r, per) = (self.reservation, self.limit.per);
            let ttl = crate::store::window_ttl(per);
            // Settling must not wait for Redis: it runs on its own, bounded by the store's
            // timeout. A lost settlement leaves the worst case reserved until the window ends.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = store.budget_settle(&name, r.window, ttl, r.amount, actual).await
                    {
                        tracing::warn!(route = %name, error = %e, "budget settlement in redis failed");
                    }
                });
            }
            return;
        }
        self.ledger.settle(self.reservation, actual);
        if let Some(r) = route {
            let left = self.ledger.remaining(self.clock.now(), &self.limit);
            r.budget_remaining.set(left as f64 / 1e6);
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
    /// Answer text bytes the client received (for the estimate when usage is missing).
    pub streamed_bytes: u64,
    /// The request body's size (the input estimate when tokens were not counted).
    pub body_bytes: u64,
    /// Once computed: (micro-dollars, estimated).
    settled: Option<(u64, bool)>,
}

impl Spend {
    /// The request's cost so far: usage at the served target's prices, else an estimate.
    /// Computed once; later calls return the same figure.
    pub fn cost(&mut self, served: Option<&TargetSeries>, usage: Option<&Usage>) -> (u64, bool) {
        if let Some(c) = self.settled {
            return c;
        }
        let c = match (served.and_then(|t| t.price.as_ref()), usage) {
            (None, _) => (0, usage.is_none() && served.is_some()),
            (Some(p), Some(u)) => (p.usage_cost(u), false),
            (Some(p), None) => (self.estimate(p), true),
        };
        self.settled = Some(c);
        c
    }

    fn estimate(&self, p: &ModelInfo) -> u64 {
        let input = self.input_tokens.unwrap_or(self.body_bytes.div_ceil(4));
        let mut output = self.streamed_bytes.div_ceil(3);
        if let Some(max) = self.max_output {
            output = output.min(max);
        }
        p.usage_cost(&Usage { input, output, cached_input: 0 })
    }
}
