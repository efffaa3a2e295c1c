//! Route budgets: per (route, window) reserve, settle and status, in integer micro-dollars.
//!
//! Each reservation is its own entry with a lease (the route's total deadline plus a margin):
//! one whose request never settles it (the replica died, or the reserve call timed out and
//! landed later) stops counting when its lease ends, instead of holding budget until the
//! window ends. A reserve that timed out is also cancelled once Redis answers
//! ([`RedisStore::abandon_reserve`]).

use std::time::Duration;

use ::redis::Script;

use super::{RedisStore, StoreError, exact, millis, non_negative};

/// A reservation refused: the window's `spent + reserved + amount` would exceed the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Micro-dollars settled in the window.
    pub spent: u64,
    /// Micro-dollars reserved by calls still in flight.
    pub reserved: u64,
}

/// One reservation: its id, amount, and how long it may stay unsettled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub amount: u64,
    pub lease: Duration,
}

impl Hold {
    /// A reservation of `amount` with a fresh random id.
    pub fn new(amount: u64, lease: Duration) -> Self {
        Hold { id: format!("{:032x}", fastrand::u128(..)), amount, lease }
    }
}

/// How many times [`RedisStore::abandon_reserve`] tries.
const ABANDON_TRIES: usize = 5;

/// The budget scripts, each after the shared purge of expired reservations.
pub(super) fn scripts() -> [Script; 4] {
    [
        Script::new(concat!(include_str!("budget_purge.lua"), include_str!("budget_reserve.lua"))),
        Script::new(concat!(include_str!("budget_purge.lua"), include_str!("budget_settle.lua"))),
        Script::new(concat!(include_str!("budget_purge.lua"), include_str!("budget_cancel.lua"))),
        Script::new(concat!(include_str!("budget_purge.lua"), include_str!("budget_status.lua"))),
    ]
}

impl RedisStore {
    /// The hash of one budget window.
    pub(super) fn budget_key(&self, route: &str, window: u64) -> String {
        self.key("budget", format_args!("{route}:{window}"))
    }

    /// The sorted set of one window's reservations (the window number is not last, so no
    /// route's budget key can be this).
    fn budget_holds_key(&self, route: &str, window: u64) -> String {
        self.key("budget", format_args!("{route}:{window}:holds"))
    }

    /// Reserve `hold` in the window starting at `window` (Unix seconds), atomically: if
    /// `spent + reserved + amount > limit` the answer is `Ok(Err(Exhausted))` and nothing is
    /// written, else the reservation is held until settled, cancelled or its lease ends, and
    /// the keys' TTL is set to `ttl` (which should end a little after the window). A `limit`
    /// above 2^53 - 1 counts as 2^53 - 1.
    pub async fn budget_reserve(
        &self,
        route: &str,
        window: u64,
        ttl: Duration,
        limit: u64,
        hold: &Hold,
    ) -> Result<Result<(), Exhausted>, StoreError> {
        let amount = exact(hold.amount, "budget amount")?;
        let limit = limit.min(super::MAX_EXACT);
        let keys = [self.budget_key(route, window), self.budget_holds_key(route, window)];
        let script = &self.inner.scripts.budget_reserve;
        let mut conn = self.conn();
        let (admitted, spent, reserved): (i64, i64, i64) = self
            .bounded(async move {
                script
                    .key(&keys[..])
                    .arg(limit)
                    .arg(amount)
                    .arg(millis(ttl))
                    .arg(&hold.id)
                    .arg(millis(hold.lease))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match admitted {
            1 => Ok(Ok(())),
            0 => Ok(Err(Exhausted {
                spent: non_negative(spent, "spent")?,
                reserved: non_negative(reserved, "reserved")?,
            })),
            _ => Err(StoreError::invalid("budget reservation already cancelled")),
        }
    }

    /// Settle a reservation, atomically: it no longer counts as reserved (if its lease has
    /// not ended already) and `spent += actual`; the keys' TTL is set to `ttl` again.
    pub async fn budget_settle(
        &self,
        route: &str,
        window: u64,
        ttl: Duration,
        hold: &Hold,
        actual: u64,
    ) -> Result<(), StoreError> {
        let amount = exact(hold.amount, "reserved amount")?;
        let actual = exact(actual, "actual cost")?;
        let keys = [self.budget_key(route, window), self.budget_holds_key(route, window)];
        let script = &self.inner.scripts.budget_settle;
        let mut conn = self.conn();
        let _: i64 = self
            .bounded(async move {
                script
                    .key(&keys[..])
                    .arg(&hold.id)
                    .arg(amount)
                    .arg(actual)
                    .arg(millis(ttl))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Cancel a reservation whose reserve call failed: released if it landed, refused should
    /// it land later (within its lease).
    pub async fn budget_cancel(
        &self,
        route: &str,
        window: u64,
        ttl: Duration,
        hold: &Hold,
    ) -> Result<(), StoreError> {
        let amount = exact(hold.amount, "reserved amount")?;
        let keys = [self.budget_key(route, window), self.budget_holds_key(route, window)];
        let script = &self.inner.scripts.budget_cancel;
        let mut conn = self.conn();
        let _: i64 = self
            .bounded(async move {
                script
                    .key(&keys[..])
                    .arg(&hold.id)
                    .arg(amount)
                    .arg(millis(ttl))
                    .arg(millis(hold.lease))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// After a reserve whose outcome is unknown (it timed out): cancels it as soon as Redis
    /// answers again (a few tries, a second apart), so a reserve queued behind a stall that
    /// lands later holds nothing. Until then its lease bounds it.
    pub fn abandon_reserve(&self, route: &str, window: u64, ttl: Duration, hold: Hold) {
        let route = route.to_owned();
        self.spawn(|store| async move {
            for _ in 0..ABANDON_TRIES {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if store.budget_cancel(&route, window, ttl, &hold).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// `(spent, reserved)` of a window, expired reservations left out; `(0, 0)` when it has
    /// no key (never used, or expired).
    pub async fn budget_status(&self, route: &str, window: u64) -> Result<(u64, u64), StoreError> {
        let keys = [self.budget_key(route, window), self.budget_holds_key(route, window)];
        let script = &self.inner.scripts.budget_status;
        let mut conn = self.conn();
        let (spent, reserved): (i64, i64) = self
            .bounded(async move { script.key(&keys[..]).invoke_async(&mut conn).await })
            .await?;
        Ok((non_negative(spent, "spent")?, non_negative(reserved, "reserved")?))
    }
}
