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
mod tests;
