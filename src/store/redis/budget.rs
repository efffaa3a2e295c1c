//! Route budgets: per (route, window) reserve, settle and status, in integer micro-dollars.

use std::time::Duration;

use super::{RedisStore, StoreError, exact, millis, non_negative};

/// A reservation refused: the window's `spent + reserved + amount` would exceed the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Micro-dollars settled in the window.
    pub spent: u64,
    /// Micro-dollars reserved by calls still in flight.
    pub reserved: u64,
}

impl RedisStore {
    /// The hash of one budget window.
    pub(super) fn budget_key(&self, route: &str, window: u64) -> String {
        self.key("budget", format_args!("{route}:{window}"))
    }

    /// Reserve `amount` in the window starting at `window` (Unix seconds), atomically: if
    /// `spent + reserved + amount > limit` the answer is `Ok(Err(Exhausted))` and nothing is
    /// written, else `reserved += amount` and the key's TTL is set to `ttl` (which should end
    /// a little after the window). A `limit` above 2^53 - 1 counts as 2^53 - 1.
    pub async fn budget_reserve(
        &self,
        route: &str,
        window: u64,
        ttl: Duration,
        limit: u64,
        amount: u64,
    ) -> Result<Result<(), Exhausted>, StoreError> {
        let amount = exact(amount, "budget amount")?;
        let limit = limit.min(super::MAX_EXACT);
        let key = self.budget_key(route, window);
        let script = &self.inner.scripts.budget_reserve;
        let mut conn = self.conn();
        let (admitted, spent, reserved): (i64, i64, i64) = self
            .bounded(async move {
                script
                    .key(key)
                    .arg(limit)
                    .arg(amount)
                    .arg(millis(ttl))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if admitted == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(Exhausted {
                spent: non_negative(spent, "spent")?,
                reserved: non_negative(reserved, "reserved")?,
            }))
        }
    }

    /// Settle a reservation, atomically: `reserved -= reserved_amount` (floor 0) and
    /// `spent += actual`; the key's TTL is set to `ttl` again.
    pub async fn budget_settle(
        &self,
        route: &str,
        window: u64,
        ttl: Duration,
        reserved_amount: u64,
        actual: u64,
    ) -> Result<(), StoreError> {
        let reserved_amount = exact(reserved_amount, "reserved amount")?;
        let actual = exact(actual, "actual cost")?;
        let key = self.budget_key(route, window);
        let script = &self.inner.scripts.budget_settle;
        let mut conn = self.conn();
        let _: i64 = self
            .bounded(async move {
                script
                    .key(key)
                    .arg(reserved_amount)
                    .arg(actual)
                    .arg(millis(ttl))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// `(spent, reserved)` of a window; `(0, 0)` when it has no key (never used, or expired).
    pub async fn budget_status(&self, route: &str, window: u64) -> Result<(u64, u64), StoreError> {
        let key = self.budget_key(route, window);
        let mut conn = self.conn();
        let (spent, reserved): (Option<u64>, Option<u64>) = self
            .bounded(async move {
                ::redis::cmd("HMGET")
                    .arg(key)
                    .arg("spent")
                    .arg("reserved")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok((spent.unwrap_or(0), reserved.unwrap_or(0)))
    }
}
