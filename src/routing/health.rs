//! Circuit breakers per provider+model, and the 429 cooldown (SPEC §5).
//!
//! Why: when a provider or one of its models is down, every request that tries it first pays a
//! full timeout before failing over. A breaker notices the pattern (5 consecutive failures, or
//! more than half of 20+ requests failing within 10 s) and makes the failover loop skip the
//! target outright for a while (30 s, doubling after each failed probe up to 5 min). After that,
//! exactly one request is let through as a probe: its success closes the breaker, its failure
//! reopens it for longer. A probe whose caller disappears (client hung up, task dropped) holds
//! its lease only for [`BreakerConfig::open_for`], so a lost probe cannot wedge a target.
//!
//! A 429 is not a sign of a broken target but of a busy one, so it does not count against the
//! breaker; it cools the target down for its `Retry-After` instead. Request-caused errors (400s,
//! content filter refusals) say nothing about the target and count as neither.
//!
//! Breakers are keyed by provider and model *names* and live in one [`Health`] shared across
//! config reloads. The hot path (`admit` and `record` on a known, closed target) takes one
//! short mutex lock, looks the key up by `&str` and allocates nothing; a breaker is created on
//! the first counted outcome for a target (never by `admit`).
//!
//! Limitation of the name-keyed API: while a breaker is half-open, any outcome reported for the
//! target is taken as the probe's verdict, including a late report from an attempt admitted
//! before the breaker opened (possible only for attempts longer than the open period).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings (defaults per SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5.
    pub consecutive_failures: u32,
    /// Failure ratio (0.0..=1.0) over `window` that opens the breaker when strictly exceeded,
    /// once at least `min_requests` were counted in the window. Default 0.5.
    pub failure_rate: f64,
    /// Counted requests (successes + failures) within `window` before `failure_rate` applies.
    /// Default 20.
    pub min_requests: u32,
    /// Sliding window for the rate rule, kept in 1 s buckets (rounded up to whole seconds,
    /// at least 1 s). Default 10 s.
    pub window: Duration,
    /// How long the breaker first stays open; doubled after each failed probe, reset when a
    /// probe succeeds. Also the lease of a half-open probe: a probe that does not report within
    /// this long is presumed lost and another caller may probe. Default 30 s.
    pub open_for: Duration,
    /// Cap for the doubled open period. Default 5 min.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
        }
    }
}

/// What the failover loop may do with a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allow,
    /// Half-open: this caller carries the single probe; report its outcome with
    /// [`Health::record`] (a probe that never reports expires after [`BreakerConfig::open_for`]).
    Probe,
    /// Open (or cooling down after a 429): skip the target; `reason` is `"circuit_open"` or
    /// `"cooldown"`, `retry_in` is how long until the target may be tried (or probed) again.
    Skip {
        /// `"circuit_open"` (breaker open, or a probe is in flight) or `"cooldown"` (429).
        reason: &'static str,
        /// Time until the open period, probe lease or cooldown ends.
        retry_in: Duration,
    },
}

/// The outcome of one attempt as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered properly.
    Success,
    /// A failure that counts against the target's health (5xx, timeouts, resets, malformed...).
    Failure,
    /// 429: cool the target down for this long (no breaker failure counted, and not counted as
    /// a request for the rate rule either). Overlapping cooldowns keep the later end.
    RateLimited(Duration),
    /// Caused by the request, not the target (400s, content filter): counts as neither. On a
    /// half-open breaker it releases the probe lease without a verdict.
    Neutral,
}

/// Reason word of [`Admission::Skip`] while the breaker is open or a probe is in flight.
pub const REASON_CIRCUIT_OPEN: &str = "circuit_open";
/// Reason word of [`Admission::Skip`] while a target cools down after a 429.
pub const REASON_COOLDOWN: &str = "cooldown";

type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;
type Breakers = Map<Map<Breaker>>;

/// Breakers for every provider+model, shared across config reloads (keyed by names).
///
/// Thread-safe (`Send + Sync`); wrap it in an `Arc` to share it.
#[derive(Debug)]
pub struct Health {
    config: BreakerConfig,
    /// Origin of the 1 s bucket clock.
    epoch: Instant,
    /// provider name -> model name -> breaker; nested so lookups borrow `&str`. The names come
    /// from the config, never from clients, so a fast hasher without DoS resistance is safe here
    /// (SipHash was two lookups x two calls per request).
    breakers: Mutex<Breakers>,
}

impl Default for Health {
    /// A `Health` with [`BreakerConfig::default`].
    fn default() -> Self {
        Self::new(BreakerConfig::default())
    }
}

impl Health {
    /// Creates an empty set of breakers with `config` for all of them.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, epoch: Instant::now(), breakers: Mutex::new(Breakers::default()) }
    }

    /// The settings every breaker uses.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Called before an attempt. `Allow` for an unknown or closed target; `Probe` hands this
    /// caller the single half-open probe; `Skip` means move on to the next target.
    pub fn admit(&self, provider: &str, model: &str) -> Admission {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get_mut(provider).and_then(|models| models.get_mut(model)) {
            Some(breaker) => breaker.admit(&self.config, now),
            None => Admission::Allow,
        }
    }

    /// Called after an attempt (also for probes). Returns `Some(true)` when this call opened the
    /// breaker (from closed, or reopened it after a failed probe), `Some(false)` when it closed
    /// it, `None` when the state did not change, so the caller can log and set
    /// `tidegate_circuit_open{provider,model}`.
    pub fn record(&self, provider: &str, model: &str, outcome: Outcome) -> Option<bool> {
        let now = Instant::now();
        let sec = self.sec(now);
        let mut map = self.lock();
        if let Some(breaker) = map.get_mut(provider).and_then(|models| models.get_mut(model)) {
            return breaker.record(&self.config, now, sec, outcome);
        }
        if outcome == Outcome::Neutral {
            return None;
        }
        // First counted outcome for this target: the only allocating path.
        let mut breaker = Breaker::new(&self.config);
        let change = breaker.record(&self.config, now, sec, outcome);
        map.entry(provider.to_owned()).or_default().insert(model.to_owned(), breaker);
        change
    }

    /// Whether the breaker for this target is open now (open or half-open, i.e. not closed; a
    /// 429 cooldown alone does not make it open). For the gauge and for tests.
    pub fn is_open(&self, provider: &str, model: &str) -> bool {
        let map = self.lock();
        map.get(provider)
            .and_then(|models| models.get(model))
            .is_some_and(|breaker| !matches!(breaker.state, State::Closed))
    }

    fn lock(&self) -> MutexGuard<'_, Breakers> {
        // A panic while holding the lock leaves counters, not broken invariants: keep going.
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whole seconds since `epoch`: the bucket clock.
    fn sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    /// Skipping until `until`; the first `admit` after it becomes the probe.
    Open {
        until: Instant,
    },
    /// A probe is in flight; its lease ends at `lease_until`.
    HalfOpen {
        lease_until: Instant,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The bucket-clock second this bucket counts; stale buckets are reset on reuse.
    sec: u64,
    total: u32,
    failures: u32,
}

#[derive(Debug)]
struct Breaker {
    state: State,
    consecutive: u32,
    /// The open period the next opening uses (doubles after failed probes).
    open_for: Duration,
    /// End of the current 429 cooldown, if any.
    cooldown_until: Option<Instant>,
    /// Ring of 1 s buckets covering the rate window.
    buckets: Box<[Bucket]>,
}

impl Breaker {
    fn new(config: &BreakerConfig) -> Self {
        let n = window_buckets(config.window);
        Self {
            state: State::Closed,
            consecutive: 0,
            open_for: base_open_for(config),
            cooldown_until: None,
            buckets: vec![Bucket::default(); n].into_boxed_slice(),
        }
    }

    fn admit(&mut self, config: &BreakerConfig, now: Instant) -> Admission {
        match self.state {
            State::Open { until } if now < until => {
                return skip(REASON_CIRCUIT_OPEN, until - now);
            }
            State::HalfOpen { lease_until } if now < lease_until => {
                return skip(REASON_CIRCUIT_OPEN, lease_until - now);
            }
            _ => {}
        }
        if let Some(until) = self.cooldown_until {
            if now < until {
                return skip(REASON_COOLDOWN, until - now);
            }
            self.cooldown_until = None;
        }
        match self.state {
            State::Closed => Admission::Allow,
            // Open period over, or the previous probe's lease expired: this caller probes.
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::HalfOpen { lease_until: after(now, config.open_for) };
                Admission::Probe
            }
        }
    }

    fn record(
        &mut self,
        config: &BreakerConfig,
        now: Instant,
        sec: u64,
        outcome: Outcome,
    ) -> Option<bool> {
        if let Outcome::RateLimited(d) = outcome {
            let until = after(now, d);
            self.cooldown_until = Some(self.cooldown_until.map_or(until, |c| c.max(until)));
        }
        match self.state {
            State::Closed => match outcome {
                Outcome::Success => {
                    self.consecutive = 0;
                    self.count(sec, false);
                    None
                }
                Outcome::Failure => {
                    self.consecutive = self.consecutive.saturating_add(1);
                    self.count(sec, true);
                    if self.consecutive >= config.consecutive_failures
                        || self.rate_exceeded(config, sec)
                    {
                        self.open(now);
                        Some(true)
                    } else {
                        None
                    }
                }
                Outcome::RateLimited(_) | Outcome::Neutral => None,
            },
            // Late reports from attempts admitted before the breaker opened: ignored.
            State::Open { .. } => None,
            State::HalfOpen { .. } => match outcome {
                Outcome::Success => {
                    self.close(config);
                    Some(false)
                }
                Outcome::Failure => {
                    self.open_for = self.open_for.saturating_mul(2).min(config.max_open_for);
                    self.open(now);
                    Some(true)
                }
                // No verdict: release the lease so the next caller (after any cooldown) probes.
                Outcome::RateLimited(_) | Outcome::Neutral => {
                    self.state = State::Open { until: now };
                    None
                }
            },
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open { until: after(now, self.open_for) };
        self.reset_counts();
    }

    fn close(&mut self, config: &BreakerConfig) {
        self.state = State::Closed;
        self.open_for = base_open_for(config);
        self.reset_counts();
    }

    fn reset_counts(&mut self) {
        self.consecutive = 0;
        self.buckets.fill(Bucket::default());
    }

    fn count(&mut self, sec: u64, failure: bool) {
        let n = self.buckets.len() as u64;
        if let Some(b) = self.buckets.get_mut((sec % n) as usize) {
            if b.sec != sec {
                *b = Bucket { sec, total: 0, failures: 0 };
            }
            b.total = b.total.saturating_add(1);
            if failure {
                b.failures = b.failures.saturating_add(1);
            }
        }
    }

    fn rate_exceeded(&self, config: &BreakerConfig, sec: u64) -> bool {
        let n = self.buckets.len() as u64;
        let (mut total, mut failures) = (0u64, 0u64);
        for b in self.buckets.iter().filter(|b| sec.saturating_sub(b.sec) < n && b.sec <= sec) {
            total += u64::from(b.total);
            failures += u64::from(b.failures);
        }
        total > 0
            && total >= u64::from(config.min_requests)
            && failures as f64 > config.failure_rate * total as f64
    }
}

fn skip(reason: &'static str, retry_in: Duration) -> Admission {
    Admission::Skip { reason, retry_in }
}

fn base_open_for(config: &BreakerConfig) -> Duration {
    config.open_for.min(config.max_open_for)
}

/// Number of 1 s buckets covering `window` (rounded up, at least 1).
fn window_buckets(window: Duration) -> usize {
    let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    usize::try_from(secs.clamp(1, 3600)).unwrap_or(1)
}

/// `now + d`, saturating at a year ahead instead of overflowing.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(365 * 86_400))).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const P: &str = "openai";
    const M: &str = "gpt-4o";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn fail_n(h: &Health, n: u32) -> Vec<Option<bool>> {
        (0..n).map(|_| h.record(P, M, Outcome::Failure)).collect()
    }

    fn open_skip(retry_in: Duration) -> Admission {
        Admission::Skip { reason: REASON_CIRCUIT_OPEN, retry_in }
    }

    fn opened() -> Health {
        let h = Health::default();
        fail_n(&h, 5);
        assert!(h.is_open(P, M));
        h
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_target_is_allowed_and_not_open() {
        let h = Health::default();
        assert_eq!(h.admit(P, M), Admission::Allow);
        assert!(!h.is_open(P, M));
    }

    #[tokio::test(start_paused = true)]
    async fn four_failures_stay_closed_fifth_opens() {
        let h = Health::default();
        assert_eq!(fail_n(&h, 4), vec![None; 4]);
        assert!(!h.is_open(P, M));
        assert_eq!(h.admit(P, M), Admission::Allow);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
        assert!(h.is_open(P, M));
    }

    #[tokio::test(start_paused = true)]
    async fn open_skips_with_retry_in_about_30s() {
        let h = opened();
        assert_eq!(h.admit(P, M), open_skip(secs(30)));
        advance(secs(10)).await;
        assert_eq!(h.admit(P, M), open_skip(secs(20)));
        // Late reports while open change nothing.
        assert_eq!(h.record(P, M, Outcome::Failure), None);
        assert_eq!(h.record(P, M, Outcome::Success), None);
        assert_eq!(h.admit(P, M), open_skip(secs(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn after_open_period_one_probe_and_others_skipped() {
        let h = opened();
        advance(secs(30)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.admit(P, M), open_skip(secs(30)));
        assert_eq!(h.admit(P, M), open_skip(secs(30)));
        assert!(h.is_open(P, M));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_admits_yield_exactly_one_probe() {
        let h = std::sync::Arc::new(opened());
        advance(secs(30)).await;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.admit(P, M) })
            })
            .collect();
        let mut probes = 0;
        for t in tasks {
            match t.await.unwrap() {
                Admission::Probe => probes += 1,
                Admission::Skip { reason, .. } => assert_eq!(reason, REASON_CIRCUIT_OPEN),
                Admission::Allow => panic!("allowed while half-open"),
            }
        }
        assert_eq!(probes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_open_period_up_to_cap() {
        let h = opened();
        let mut open_for = 30;
        for expected in [60, 120, 240, 300, 300] {
            advance(secs(open_for)).await;
            assert_eq!(h.admit(P, M), Admission::Probe);
            assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
            assert_eq!(h.admit(P, M), open_skip(secs(expected)));
            // Not yet: one second early still skips.
            advance(secs(expected - 1)).await;
            assert_eq!(h.admit(P, M), open_skip(secs(1)));
            open_for = 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_and_resets_doubling() {
        let h = opened();
        advance(secs(30)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
        advance(secs(60)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.record(P, M, Outcome::Success), Some(false));
        assert!(!h.is_open(P, M));
        assert_eq!(h.admit(P, M), Admission::Allow);
        // Counts were reset: 4 failures stay closed, the 5th opens again for the base 30 s.
        assert_eq!(fail_n(&h, 4), vec![None; 4]);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
        assert_eq!(h.admit(P, M), open_skip(secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn success_in_between_resets_consecutive_count() {
        let h = Health::default();
        for _ in 0..3 {
            fail_n(&h, 4);
            assert_eq!(h.record(P, M, Outcome::Success), None);
            // Spread over time so the rate rule (20+ requests in 10 s) never applies.
            advance(secs(11)).await;
        }
        assert!(!h.is_open(P, M));
        assert_eq!(fail_n(&h, 4), vec![None; 4]);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
    }

    /// `F F (S F)x9`: 20 requests, 11 failures, never more than 2 in a row.
    #[tokio::test(start_paused = true)]
    async fn rate_rule_eleven_of_twenty_opens() {
        let h = Health::default();
        let mut changes = vec![h.record(P, M, Outcome::Failure), h.record(P, M, Outcome::Failure)];
        for _ in 0..9 {
            advance(Duration::from_millis(400)).await; // all within the 10 s window
            changes.push(h.record(P, M, Outcome::Success));
            changes.push(h.record(P, M, Outcome::Failure));
        }
        assert_eq!(changes.iter().filter(|c| c.is_some()).count(), 1);
        assert_eq!(changes.last(), Some(&Some(true)));
        assert!(h.is_open(P, M));
    }

    /// `(S F)x10`: 20 requests, 10 failures is exactly 50%, not more: stays closed.
    #[tokio::test(start_paused = true)]
    async fn rate_rule_ten_of_twenty_stays_closed() {
        let h = Health::default();
        for _ in 0..10 {
            advance(Duration::from_millis(400)).await;
            assert_eq!(h.record(P, M, Outcome::Success), None);
            assert_eq!(h.record(P, M, Outcome::Failure), None);
        }
        assert!(!h.is_open(P, M));
    }

    /// 11 failures of 19 requests is below `min_requests`; failures that fell out of the window
    /// do not count either.
    #[tokio::test(start_paused = true)]
    async fn rate_rule_needs_min_requests_within_window() {
        let h = Health::default();
        // 19 requests, 11 failures: F F (S F)x8 S
        fail_n(&h, 2);
        for _ in 0..8 {
            h.record(P, M, Outcome::Success);
            h.record(P, M, Outcome::Failure);
        }
        h.record(P, M, Outcome::Success);
        assert!(!h.is_open(P, M));
        // Those age out; one more failure later is 1 of 1 but far below min_requests.
        advance(secs(10)).await;
        assert_eq!(h.record(P, M, Outcome::Failure), None);
        assert!(!h.is_open(P, M));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_cools_down_without_counting_as_failure() {
        let h = Health::default();
        fail_n(&h, 4);
        assert_eq!(h.record(P, M, Outcome::RateLimited(secs(2))), None);
        assert!(!h.is_open(P, M));
        assert_eq!(h.admit(P, M), Admission::Skip { reason: REASON_COOLDOWN, retry_in: secs(2) });
        advance(Duration::from_millis(1500)).await;
        assert_eq!(
            h.admit(P, M),
            Admission::Skip { reason: REASON_COOLDOWN, retry_in: Duration::from_millis(500) }
        );
        advance(Duration::from_millis(500)).await;
        assert_eq!(h.admit(P, M), Admission::Allow);
        // Many 429s never open the breaker.
        for _ in 0..50 {
            assert_eq!(h.record(P, M, Outcome::RateLimited(secs(1))), None);
        }
        assert!(!h.is_open(P, M));
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_cooldowns_keep_the_later_end() {
        let h = Health::default();
        h.record(P, M, Outcome::RateLimited(secs(5)));
        h.record(P, M, Outcome::RateLimited(secs(1)));
        assert_eq!(h.admit(P, M), Admission::Skip { reason: REASON_COOLDOWN, retry_in: secs(5) });
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_changes_nothing() {
        let h = Health::default();
        assert_eq!(h.record(P, M, Outcome::Neutral), None);
        fail_n(&h, 4);
        for _ in 0..30 {
            assert_eq!(h.record(P, M, Outcome::Neutral), None);
        }
        assert!(!h.is_open(P, M));
        assert_eq!(h.admit(P, M), Admission::Allow);
        // Neutral did not reset the consecutive count either.
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_that_never_reports_expires() {
        let h = opened();
        advance(secs(30)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        // The caller is dropped and never records anything.
        advance(secs(29)).await;
        assert_eq!(h.admit(P, M), open_skip(secs(1)));
        advance(secs(1)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.record(P, M, Outcome::Success), Some(false));
        assert_eq!(h.admit(P, M), Admission::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_without_verdict_releases_the_lease() {
        let h = opened();
        advance(secs(30)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.record(P, M, Outcome::Neutral), None);
        assert!(h.is_open(P, M));
        assert_eq!(h.admit(P, M), Admission::Probe);
        // A 429 on the probe: still open, cool down, then probe again.
        assert_eq!(h.record(P, M, Outcome::RateLimited(secs(3))), None);
        assert!(h.is_open(P, M));
        assert_eq!(h.admit(P, M), Admission::Skip { reason: REASON_COOLDOWN, retry_in: secs(3) });
        advance(secs(3)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_independent() {
        let h = opened();
        assert_eq!(h.admit(P, "gpt-4o-mini"), Admission::Allow);
        assert_eq!(h.admit("azure", M), Admission::Allow);
        assert!(!h.is_open(P, "gpt-4o-mini"));
        assert!(!h.is_open("azure", M));
        for _ in 0..4 {
            h.record(P, "gpt-4o-mini", Outcome::Failure);
        }
        h.record("azure", M, Outcome::RateLimited(secs(5)));
        assert!(!h.is_open(P, "gpt-4o-mini"));
        assert!(matches!(h.admit("azure", M), Admission::Skip { reason: REASON_COOLDOWN, .. }));
        assert!(matches!(h.admit(P, M), Admission::Skip { reason: REASON_CIRCUIT_OPEN, .. }));
        assert_eq!(h.admit(P, "gpt-4o-mini"), Admission::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn custom_config_is_honoured() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 2,
            open_for: secs(1),
            max_open_for: secs(3),
            ..BreakerConfig::default()
        });
        assert_eq!(h.config().consecutive_failures, 2);
        assert_eq!(h.record(P, M, Outcome::Failure), None);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
        for expected in [2, 3, 3] {
            advance(secs(3)).await;
            assert_eq!(h.admit(P, M), Admission::Probe);
            assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
            assert_eq!(h.admit(P, M), open_skip(secs(expected)));
        }
    }

    #[test]
    fn window_bucket_count() {
        assert_eq!(window_buckets(secs(10)), 10);
        assert_eq!(window_buckets(Duration::from_millis(1500)), 2);
        assert_eq!(window_buckets(Duration::ZERO), 1);
    }
}
