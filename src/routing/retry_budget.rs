//! A process-wide retry budget (SPEC §5), after Finagle's and Linkerd's retry budgets.
//!
//! Why: per-request retry limits (`retries.per_target`, `retries.total`) bound what one request
//! may cost, but not what a fleet of requests does to a struggling upstream: when everything
//! fails, every request retries, and the retries themselves keep the upstream down (a retry
//! storm). The budget caps retries across the whole process at a fraction of the traffic:
//! over a sliding window (10 s), retries may be at most `ratio` (20%) of first attempts, plus a
//! floor of `min_per_second` (3) per second of the window so that a quiet process can still
//! retry the odd failure. When the budget is spent, the failover loop stops retrying and moves
//! on (next target, fallback tier) or fails.
//!
//! Counting uses 1 s buckets over the window behind one short mutex; both calls are O(window
//! seconds) integer work and never allocate.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Retry budget settings (defaults per SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per first attempt within the window (a fraction; negative or NaN
    /// counts as 0). Default 0.2.
    pub ratio: f64,
    /// Retries per second of the window allowed regardless of traffic. Default 3.
    pub min_per_second: u32,
    /// Sliding window, kept in 1 s buckets (rounded up to whole seconds, at least 1 s).
    /// Default 10 s.
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self { ratio: 0.2, min_per_second: 3, window: Duration::from_secs(10) }
    }
}

/// A process-wide retry budget: over the sliding window, retries ≤ `ratio` × requests +
/// `min_per_second` × window seconds.
///
/// Thread-safe (`Send + Sync`); wrap it in an `Arc` to share it.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// `min_per_second` × window seconds, the retries allowed with no traffic at all.
    reserve: f64,
    /// Origin of the 1 s bucket clock.
    epoch: Instant,
    buckets: Mutex<Box<[Bucket]>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The bucket-clock second this bucket counts; stale buckets are reset on reuse.
    sec: u64,
    requests: u64,
    retries: u64,
}

impl Default for RetryBudget {
    /// A budget with [`RetryBudgetConfig::default`].
    fn default() -> Self {
        Self::new(RetryBudgetConfig::default())
    }
}

impl RetryBudget {
    /// Creates an empty budget (only the `min_per_second` floor is available).
    pub fn new(config: RetryBudgetConfig) -> Self {
        let secs = config.window.as_secs() + u64::from(config.window.subsec_nanos() > 0);
        let n = secs.clamp(1, 3600);
        Self {
            ratio: config.ratio.max(0.0),
            reserve: f64::from(config.min_per_second) * n as f64,
            epoch: Instant::now(),
            buckets: Mutex::new(vec![Bucket::default(); n as usize].into_boxed_slice()),
        }
    }

    /// Count one request (a first attempt) — deposits `ratio` of a retry for the window.
    pub fn record_request(&self) {
        self.in_current(|b| b.requests = b.requests.saturating_add(1));
    }

    /// Take one retry if the budget allows; false means "do not retry, move on / fail".
    /// A granted retry counts against the budget immediately.
    pub fn try_retry(&self) -> bool {
        let sec = self.sec();
        let mut buckets = self.lock();
        if !self.allows(&buckets, sec) {
            return false;
        }
        if let Some(b) = current(&mut buckets, sec) {
            b.retries = b.retries.saturating_add(1);
        }
        true
    }

    /// Gives back a retry [`Self::try_retry`] granted that was then not made.
    pub fn refund(&self) {
        self.in_current(|b| b.retries = b.retries.saturating_sub(1));
    }

    /// Updates the bucket of the second now.
    fn in_current(&self, update: impl FnOnce(&mut Bucket)) {
        let sec = self.sec();
        if let Some(b) = current(&mut self.lock(), sec) {
            update(b);
        }
    }

    /// Whether a retry would be granted now, taking nothing (checked before a backoff, so a
    /// request does not wait for a retry it will not get; [`Self::try_retry`] still decides).
    pub fn can_retry(&self) -> bool {
        self.allows(&self.lock(), self.sec())
    }

    fn allows(&self, buckets: &[Bucket], sec: u64) -> bool {
        let n = buckets.len() as u64;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in buckets.iter().filter(|b| b.sec <= sec && sec - b.sec < n) {
            requests += b.requests;
            retries += b.retries;
        }
        // Small epsilon so that e.g. 0.2 × 1000 admits exactly 200 despite rounding.
        let allowed = self.ratio * requests as f64 + self.reserve + 1e-9;
        (retries + 1) as f64 <= allowed
    }

    fn lock(&self) -> MutexGuard<'_, Box<[Bucket]>> {
        // Counters only: a panic elsewhere cannot break an invariant here.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whole seconds since `epoch`: the bucket clock.
    fn sec(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_secs()
    }
}

/// The bucket for `sec`, reset first if it still holds an older second.
fn current(buckets: &mut [Bucket], sec: u64) -> Option<&mut Bucket> {
    let n = buckets.len() as u64;
    let b = buckets.get_mut(usize::try_from(sec % n.max(1)).ok()?)?;
    if b.sec != sec {
        *b = Bucket { sec, requests: 0, retries: 0 };
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn take_all(b: &RetryBudget) -> usize {
        (0..100_000).take_while(|_| b.try_retry()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_process_gets_the_minimum() {
        let b = RetryBudget::default();
        for _ in 0..30 {
            assert!(b.try_retry());
        }
        assert!(!b.try_retry(), "31st retry in 10 s must be refused");
        // Retries taken at t=0 fall out of the window after 10 s.
        advance(Duration::from_secs(9)).await;
        assert!(!b.try_retry());
        advance(Duration::from_secs(1)).await;
        assert_eq!(take_all(&b), 30);
    }

    /// Asking before a backoff takes nothing, and a retry granted but then not made is given
    /// back: either way the budget stays whole for retries that are made.
    #[tokio::test(start_paused = true)]
    async fn asking_takes_nothing_and_refunds_give_back() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            assert!(b.can_retry());
        }
        assert_eq!(take_all(&b), 30);
        assert!(!b.can_retry());
        b.refund();
        assert!(b.try_retry());
        assert!(!b.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn minimum_spread_over_the_window_is_three_per_second() {
        let b = RetryBudget::default();
        // Three per second, sustained, is always within the floor.
        for _ in 0..30 {
            for _ in 0..3 {
                assert!(b.try_retry());
            }
            advance(Duration::from_secs(1)).await;
        }
        // The window holds 27 from the previous 9 s: exactly 3 more this second.
        assert_eq!(take_all(&b), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_deposit_twenty_percent() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_request();
        }
        // 0.2 × 1000 + the 30 floor.
        assert_eq!(take_all(&b), 230);
        assert!(!b.try_retry());
        // More traffic refills it: 100 requests, 20 retries.
        for _ in 0..100 {
            b.record_request();
        }
        assert_eq!(take_all(&b), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_fall_out_of_the_window() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_request();
        }
        advance(Duration::from_secs(5)).await;
        for _ in 0..500 {
            b.record_request();
        }
        // Both batches in the window: 0.2 × 1500 + 30.
        assert_eq!(take_all(&b), 330);
        // At 10 s the first batch (and the retries above, taken at 5 s) are still partly in:
        // first batch leaves, the retries stay until 15 s.
        advance(Duration::from_secs(5)).await;
        assert!(!b.try_retry(), "330 retries still count against 0.2 × 500 + 30");
        advance(Duration::from_secs(5)).await;
        // Everything is gone: only the floor remains.
        assert_eq!(take_all(&b), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_and_zero_minimum_never_retry() {
        let b = RetryBudget::new(RetryBudgetConfig {
            ratio: 0.0,
            min_per_second: 0,
            window: Duration::from_secs(10),
        });
        b.record_request();
        assert!(!b.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn shared_across_tasks() {
        let b = std::sync::Arc::new(RetryBudget::default());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { (0..10).filter(|_| b.try_retry()).count() })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        assert_eq!(granted, 30);
    }
}
