//! Route spend windows: reserve the worst case at admission, settle with the actual cost at the
//! end (SPEC §6).
//!
//! A window is fixed and aligned to multiples of `per` since the Unix epoch. Each route has one
//! [`Ledger`] holding the current window's `spent` and `reserved` micro-dollars behind a mutex;
//! a reservation succeeds only if `spent + reserved + amount <= limit`, checked and applied in
//! one critical section, so no interleaving of concurrent requests can push spend past the
//! limit. Settling swaps the reservation for the actual cost (never more than reserved, unless
//! the provider billed beyond tidegate's own worst case, which is then recorded as spent all
//! the same). A request's cost counts in the window it was admitted in: a reservation that
//! outlives its window settles into that (closed) window, not the new one.
//!
//! Ledgers live in a [`Ledgers`] registry keyed by route name, so spend survives config
//! reloads; a changed `usd` applies to the current window at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A route's `limits.budget`, in micro-dollars per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimit {
    /// Spend allowed per window, in micro-dollars.
    pub limit: u64,
    /// Window length (whole seconds, at least 1).
    pub per: Duration,
}

impl BudgetLimit {
    /// Start of the window holding `now` (seconds since the Unix epoch).
    pub fn window_of(&self, now: Duration) -> u64 {
        let per = self.per.as_secs().max(1);
        now.as_secs() / per * per
    }

    /// Time from `now` to the end of its window (at least one second, for `Retry-After`).
    pub fn until_reset(&self, now: Duration) -> Duration {
        let end = Duration::from_secs(self.window_of(now) + self.per.as_secs().max(1));
        end.saturating_sub(now).max(Duration::from_secs(1))
    }
}

/// Held by a request from admission until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The start of the window it was made in (seconds since the Unix epoch).
    pub window: u64,
    pub amount: u64,
    /// Which of the memory ledger's windows holds it (0 on the Redis backend, whose windows
    /// are keyed by `window`).
    pub generation: u64,
}

/// The reservation did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Time to the window's end.
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
struct Window {
    /// Counts the windows this ledger has begun: a reservation settles into its own.
    generation: u64,
    start: u64,
    /// The window's length in seconds: a reload may change it.
    per: u64,
    spent: u64,
    reserved: u64,
}

/// One route's spend, process-local (the memory backend).
#[derive(Debug, Default)]
pub struct Ledger {
    window: Mutex<Window>,
}

impl Ledger {
    /// The window of `now` for a caller whose config says `limit.per`. Callers of two config
    /// versions meet after a reload that changed `per` (a request admitted before it settles
    /// after it), so a different `per` never wipes a window that holds the caller's time:
    /// - the caller's window holds the current one's start (`per` lengthened): the current
    ///   window's spend and reservations carry into it;
    /// - the current window holds the caller's time (`per` shortened, or a caller of the
    ///   older, shorter version): it goes on, so a shortened `per` applies from its end;
    /// - otherwise the caller's window is a new one.
    ///
    /// Windows only ever grow or move on: spend is never forgotten within a window, so the
    /// budget holds across any mix of versions.
    fn current(&self, now: Duration, limit: &BudgetLimit) -> std::sync::MutexGuard<'_, Window> {
        let (start, per) = (limit.window_of(now), limit.per.as_secs().max(1));
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let holds = |from: u64, len: u64, t: u64| t >= from && t - from < len;
        if w.per != per && holds(start, per, w.start) {
            (w.start, w.per) = (start, per);
        } else if w.per != per && holds(w.start, w.per, start) {
            // The current window goes on.
        } else if start > w.start {
            *w = Window { generation: w.generation + 1, start, per, spent: 0, reserved: 0 };
        }
        w
    }

    /// Reserves `amount` in the window of `now`, or says when the window resets.
    pub fn reserve(
        &self,
        now: Duration,
        limit: &BudgetLimit,
        amount: u64,
    ) -> Result<Reservation, Exhausted> {
        let mut w = self.current(now, limit);
        let committed = w.spent.saturating_add(w.reserved);
        if committed.saturating_add(amount) > limit.limit {
            return Err(Exhausted { retry_after: limit.until_reset(now) });
        }
        w.reserved += amount;
        Ok(Reservation { window: w.start, amount, generation: w.generation })
    }

    /// Replaces a reservation with the actual cost.
    pub fn settle(&self, r: Reservation, actual: u64) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.generation == r.generation {
            w.reserved = w.reserved.saturating_sub(r.amount);
            w.spent = w.spent.saturating_add(actual);
        }
    }

    /// `(spent, reserved)` in the window of `now`.
    pub fn status(&self, now: Duration, limit: &BudgetLimit) -> (u64, u64) {
        let w = self.current(now, limit);
        (w.spent, w.reserved)
    }

    /// What is left to reserve in the window of `now`.
    pub fn remaining(&self, now: Duration, limit: &BudgetLimit) -> u64 {
        let (spent, reserved) = self.status(now, limit);
        limit.limit.saturating_sub(spent.saturating_add(reserved))
    }
}

/// Every route's ledger, kept across config versions.
#[derive(Debug, Default)]
pub struct Ledgers {
    by_route: Mutex<HashMap<String, Arc<Ledger>>>,
}

impl Ledgers {
    /// The ledger of `route` (created on first use).
    pub fn get(&self, route: &str) -> Arc<Ledger> {
        let mut m = self.by_route.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(route.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn windows_align_to_the_epoch() {
        let b = BudgetLimit { limit: 10, per: HOUR };
        assert_eq!(b.window_of(Duration::from_secs(7_250)), 7_200);
        assert_eq!(b.until_reset(Duration::from_secs(7_250)), Duration::from_secs(3_550));
        assert_eq!(b.until_reset(Duration::from_millis(10_799_500)), Duration::from_secs(1));
    }

    #[test]
    fn reserve_never_exceeds_the_limit_and_settle_frees_the_rest() {
        let b = BudgetLimit { limit: 1000, per: HOUR };
        let l = Ledger::default();
        let now = Duration::from_secs(10 * 3600 + 5);
        let r1 = l.reserve(now, &b, 600).unwrap();
        assert!(l.reserve(now, &b, 500).is_err());
        let r2 = l.reserve(now, &b, 400).unwrap();
        assert_eq!(l.remaining(now, &b), 0);
        l.settle(r1, 100);
        assert_eq!(l.status(now, &b), (100, 400));
        assert_eq!(l.remaining(now, &b), 500);
        l.settle(r2, 400);
        assert_eq!(l.status(now, &b), (500, 0));
    }

    #[test]
    fn a_new_window_starts_empty_and_old_reservations_settle_into_theirs() {
        let b = BudgetLimit { limit: 1000, per: HOUR };
        let l = Ledger::default();
        let now = Duration::from_secs(10 * 3600);
        let old = l.reserve(now, &b, 1000).unwrap();
        let e = l.reserve(now, &b, 1).unwrap_err();
        assert_eq!(e.retry_after, HOUR);
        let later = now + HOUR;
        let r = l.reserve(later, &b, 1000).unwrap();
        l.settle(old, 900);
        assert_eq!(l.status(later, &b), (0, 1000));
        l.settle(r, 10);
        assert_eq!(l.status(later, &b), (10, 0));
    }

    /// helper-51: a reload that lengthened `per` left every reservation unsettled (settling
    /// matched the window's start, which the new length had moved), so the route was refused
    /// with most of its budget unspent. Lengthened: this window's spend and reservations carry
    /// over and settle. review-54: a request of the older version settling afterwards (its
    /// `per` the old one) must not wipe the window, or the budget is spent again.
    #[test]
    fn a_reload_that_lengthens_per_keeps_the_window_whole() {
        let short = BudgetLimit { limit: 1000, per: Duration::from_secs(10) };
        let long = BudgetLimit { limit: 1000, per: HOUR };
        let l = Ledger::default();
        let now = Duration::from_secs(10 * 3600 + 1234);
        let before = l.reserve(now, &short, 100).unwrap();
        l.settle(l.reserve(now, &short, 50).unwrap(), 20);
        let after = l.reserve(now, &long, 300).unwrap();
        assert_eq!(l.status(now, &long), (20, 400));
        l.settle(before, 10);
        // What an old request's settling asks for its gauge: the window goes on.
        assert_eq!(l.remaining(now + Duration::from_secs(30), &short), 1000 - 30 - 300);
        l.settle(after, 30);
        assert_eq!(l.status(now, &long), (60, 0));
        // Each reserves 100 and settles 10: they fit until spend passes 900, whichever
        // version's `per` they come with.
        let mut fitted = 0;
        while let Ok(r) = l.reserve(now, if fitted % 2 == 0 { &long } else { &short }, 100) {
            l.settle(r, 10);
            fitted += 1;
        }
        assert_eq!((fitted, l.status(now, &long)), (85, (910, 0)));
    }

    /// A shortened `per` applies from the end of the window under way, which keeps its spend.
    #[test]
    fn a_reload_that_shortens_per_applies_from_the_windows_end() {
        let short = BudgetLimit { limit: 1000, per: Duration::from_secs(10) };
        let long = BudgetLimit { limit: 1000, per: HOUR };
        let l = Ledger::default();
        let now = Duration::from_secs(10 * 3600 + 1234);
        l.settle(l.reserve(now, &long, 500).unwrap(), 500);
        assert_eq!(l.status(now, &short), (500, 0));
        assert!(l.reserve(now, &short, 501).is_err());
        let next_hour = Duration::from_secs(11 * 3600 + 5);
        assert_eq!(l.status(next_hour, &short), (0, 0));
        // A request of the older version then makes the window an hour again: never shorter.
        l.settle(l.reserve(next_hour, &short, 100).unwrap(), 100);
        assert_eq!(l.status(next_hour, &long), (100, 0));
        assert_eq!(l.status(next_hour + Duration::from_secs(20), &short), (100, 0));
    }

    #[test]
    fn concurrent_reservations_never_overshoot() {
        let b = BudgetLimit { limit: 50_000, per: HOUR };
        let l = Arc::new(Ledger::default());
        let now = Duration::from_secs(3600);
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || (0..25).filter(|_| l.reserve(now, &b, 1000).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(granted, 50);
        assert_eq!(l.status(now, &b), (0, 50_000));
    }
}
