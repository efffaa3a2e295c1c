//! GCRA rate limits (rpm/tpm), decided by a Lua script on the Redis clock.

use std::time::Duration;

use super::{MAX_EXACT, RedisStore, StoreError, non_negative};

impl RedisStore {
    /// The TAT key of one limiter.
    pub(super) fn gcra_key(&self, key: &str) -> String {
        self.key("gcra", format_args!("{key}"))
    }

    /// GCRA: may `cost` units pass the limiter `key`, which admits `burst` units at once and
    /// `burst` units per `period` sustained (emission interval `period / burst`; rpm 600 is
    /// burst 600, period 60 s)? `cost` above `burst` is clamped to `burst`, so a large request
    /// waits for a full bucket rather than never passing.
    ///
    /// `Ok(None)`: allowed, and the units are consumed. `Ok(Some(retry_after))`: denied, nothing
    /// is consumed, and the same call would pass after `retry_after` (if no other call takes
    /// the room first). A `burst` of 0 is an error (nothing could ever pass).
    pub async fn gcra(
        &self,
        key: &str,
        burst: u64,
        period: Duration,
        cost: u64,
    ) -> Result<Option<Duration>, StoreError> {
        if burst == 0 {
            return Err(StoreError::invalid("gcra burst must be at least 1"));
        }
        let cost = cost.min(burst);
        let period_us = period.as_micros().min(u128::from(MAX_EXACT));
        // Emission interval x cost, rounded up: integer microseconds on both sides.
        let increment = (period_us * u128::from(cost)).div_ceil(u128::from(burst));
        let increment = u64::try_from(increment).unwrap_or(MAX_EXACT);
        let tolerance = u64::try_from(period_us).unwrap_or(MAX_EXACT);
        let redis_key = self.gcra_key(key);
        let script = &self.inner.scripts.gcra;
        let mut conn = self.conn();
        let (allowed, retry_us): (i64, i64) = self
            .bounded(async move {
                script.key(redis_key).arg(increment).arg(tolerance).invoke_async(&mut conn).await
            })
            .await?;
        if allowed == 1 {
            Ok(None)
        } else {
            let retry_us = non_negative(retry_us, "retry_after")?.max(1);
            Ok(Some(Duration::from_micros(retry_us)))
        }
    }
}
