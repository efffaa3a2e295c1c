//! Route rate limits: `limits.rpm` (requests) and `limits.tpm` (tokens) per minute, each a
//! GCRA limiter from `governor` with a burst of one minute's allowance.
//!
//! The limiters run on tokio's clock (so tests can pause time) and live in a [`RateLimits`]
//! registry keyed by route and quota, so a reload that keeps a route's quota keeps its state.
//! A request's token cost is its counted input plus the output it may produce (the clamped
//! `max_tokens`, when known), like OpenAI's own accounting; a cost above a whole minute's
//! allowance is charged as the whole allowance (it waits for a full bucket, never forever).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// governor's clock on tokio time: elapsed time since the clock was made.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// One GCRA limiter allowing `per_minute` units a minute.
#[derive(Debug)]
pub struct Limiter {
    per_minute: NonZeroU32,
    gcra: Gcra,
    clock: TokioClock,
}

impl Limiter {
    fn new(per_minute: NonZeroU32) -> Self {
        let clock = TokioClock { start: tokio::time::Instant::now() };
        let gcra = RateLimiter::direct_with_clock(Quota::per_minute(per_minute), clock.clone());
        Self { per_minute, gcra, clock }
    }

    /// Takes `units` (clamped to one minute's allowance), or says how long until they fit.
    /// A denial consumes nothing.
    pub fn check(&self, units: u64) -> Result<(), Duration> {
        let n = u32::try_from(units).unwrap_or(u32::MAX).clamp(1, self.per_minute.get());
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match self.gcra.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // Unreachable: `n` is clamped to the burst.
            Err(_) => Err(Duration::from_secs(60)),
        }
    }
}

/// (route, `rpm` or `tpm`, quota).
type LimiterKey = (String, &'static str, u32);

/// Registry of limiters by route, kind and quota.
#[derive(Debug, Default)]
pub struct RateLimits {
    by_key: Mutex<HashMap<LimiterKey, Arc<Limiter>>>,
}

impl RateLimits {
    /// The limiter for `route`'s `kind` (`rpm` or `tpm`) at `per_minute`.
    pub fn get(&self, route: &str, kind: &'static str, per_minute: NonZeroU32) -> Arc<Limiter> {
        let mut m = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        // A changed quota starts fresh; drop the route's old limiter of this kind.
        m.retain(|(r, k, q), _| !(r == route && *k == kind && *q != per_minute.get()));
        m.entry((route.to_owned(), kind, per_minute.get()))
            .or_insert_with(|| Arc::new(Limiter::new(per_minute)))
            .clone()
    }
}

/// Whole seconds for `Retry-After`, at least one.
pub fn retry_after_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rpm_allows_the_burst_then_refills_at_the_rate() {
        let l = Limiter::new(NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN));
        for _ in 0..60 {
            assert!(l.check(1).is_ok());
        }
        let wait = l.check(1).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO, "{wait:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.check(1).is_ok());
        assert!(l.check(1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_charges_token_counts_and_clamps_to_the_allowance() {
        let l = Limiter::new(NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN));
        assert!(l.check(600).is_ok());
        let wait = l.check(600).unwrap_err();
        // 200 tokens short at 1000/min: 12 s.
        assert_eq!(retry_after_secs(wait), Duration::from_secs(12));
        tokio::time::advance(Duration::from_secs(60)).await;
        // Larger than a minute's allowance: takes the whole bucket.
        assert!(l.check(5000).is_ok());
        assert!(l.check(1).is_err());
    }
}
