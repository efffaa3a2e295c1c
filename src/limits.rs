//! Ceilings and budgets (SPEC §6): input token counting, prices and money, per-route spend
//! windows with reserve-then-settle, and rpm/tpm rate limits.
//!
//! Money is integer micro-dollars everywhere (`u64`, 1 USD = 1 000 000): prices are held as
//! micro-dollars per million tokens and every cost is rounded up to the next micro-dollar, so
//! sums never drift and a budget check is exact.

pub mod budget;
pub mod prices;
pub mod rate;
pub mod tokens;

/// A clock that follows tokio's time (paused in tests) and reads as seconds since the Unix
/// epoch: the wall clock at process start plus tokio's monotonic time since then.
#[derive(Debug, Clone, Copy)]
pub struct EpochClock {
    start_unix: std::time::Duration,
    start: tokio::time::Instant,
}

impl EpochClock {
    pub fn new() -> Self {
        let start_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { start_unix, start: tokio::time::Instant::now() }
    }

    /// Time since the Unix epoch, advancing with tokio's clock.
    pub fn now(&self) -> std::time::Duration {
        self.start_unix + self.start.elapsed()
    }
}

impl Default for EpochClock {
    fn default() -> Self {
        Self::new()
    }
}
