//! Idempotency records: claim, complete, release, renew, and wait for another replica's call.

use std::time::Duration;

use ::redis::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::{RedisStore, StoreError, millis};

/// The first poll interval of [`RedisStore::idem_wait`].
const POLL_FIRST: Duration = Duration::from_millis(5);
/// The longest poll interval while the events subscription is down.
const POLL_MAX: Duration = Duration::from_millis(100);
/// The longest poll interval while it is up: polling then only covers lost messages and
/// expired leases.
const POLL_MAX_SUBSCRIBED: Duration = Duration::from_millis(500);
/// How many times [`RedisStore::abandon_claim`] tries.
const ABANDON_TRIES: usize = 5;

/// How long a claim lives in Redis unless its owner renews it. Short on purpose: a claim
/// whose reply was lost (Redis stalled past `state.timeout`, so the request went on with local
/// state) may still land in Redis later, and then nobody owns it; it must not hold the key for
/// the route's whole deadline. A live owner renews it every quarter of this
/// ([`RedisStore::keep_claim`]); completion sets the record's real TTL. Long enough to ride
/// out a Redis stall of that length with the claim kept (past it, a duplicate may run again,
/// which the owner logs), short enough that a claim nobody owns frees its key soon.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// Renews a claim while it is held: dropping it stops the renewals (the record then expires
/// one lease after the last, unless completed or released first).
#[derive(Debug)]
pub struct ClaimKeeper(tokio::task::JoinHandle<()>);

impl Drop for ClaimKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer of [`RedisStore::idem_claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The record was absent: the caller now owns it (state running) and executes the call.
    Claimed,
    /// A record exists. `fingerprint` is the one it was claimed with (a mismatch with the
    /// caller's is the caller's 422); `done` is the stored answer, or `None` while running.
    Existing { fingerprint: String, done: Option<Vec<u8>> },
}

/// The answer of [`RedisStore::idem_wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitResult {
    /// The record is done: its stored answer.
    Done(Vec<u8>),
    /// The record was released or expired: the caller may claim it again.
    Gone,
    /// Still running at the deadline.
    Running,
}

impl RedisStore {
    /// The hash of one record.
    pub(super) fn idem_key(&self, key: &str) -> String {
        self.key("idem", format_args!("{key}"))
    }

    /// Claim `key` atomically: if absent, store `{state: running, fp, owner}` expiring after
    /// `lease` and answer [`Claim::Claimed`]; else answer what is there.
    pub async fn idem_claim(
        &self,
        key: &str,
        fingerprint: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let redis_key = self.idem_key(key);
        let script = &self.inner.scripts.idem_claim;
        let mut conn = self.conn();
        let reply: Vec<Value> = self
            .bounded(async move {
                script
                    .key(redis_key)
                    .arg(fingerprint)
                    .arg(owner)
                    .arg(millis(lease))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let parse = |v: &Value| -> Result<Option<Vec<u8>>, StoreError> {
            ::redis::from_redis_value_ref(v)
                .map_err(|e| StoreError(format!("redis error: idem_claim reply: {e}")))
        };
        match reply.as_slice() {
            [Value::Int(1)] => Ok(Claim::Claimed),
            [Value::Int(0), fp, _state, answer] => Ok(Claim::Existing {
                fingerprint: String::from_utf8_lossy(&parse(fp)?.unwrap_or_default()).into_owned(),
                done: parse(answer)?,
            }),
            other => Err(StoreError(format!("redis error: unexpected idem_claim reply {other:?}"))),
        }
    }

    /// If `owner` still owns `key`: store `answer`, state done, expiring after `ttl`, and wake
    /// the waiters. Otherwise (lease lost, record gone) nothing is written.
    pub async fn idem_complete(
        &self,
        key: &str,
        owner: &str,
        answer: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let redis_key = self.idem_key(key);
        let script = &self.inner.scripts.idem_complete;
        let channel = &self.inner.channel;
        let mut conn = self.conn();
        let _stored: i64 = self
            .bounded(async move {
                script
                    .key(redis_key)
                    .arg(owner)
                    .arg(answer)
                    .arg(millis(ttl))
                    .arg(channel)
                    .arg(key)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// If `owner` still owns `key` and it is running: delete it (a retry may claim it again)
    /// and wake the waiters. Otherwise nothing changes.
    pub async fn idem_release(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let redis_key = self.idem_key(key);
        let script = &self.inner.scripts.idem_release;
        let channel = &self.inner.channel;
        let mut conn = self.conn();
        let _released: i64 = self
            .bounded(async move {
                script.key(redis_key).arg(owner).arg(channel).arg(key).invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    /// Extend the lease of a running record to `lease` from now. `Ok(false)` when `owner` no
    /// longer owns it (expired and maybe claimed by another, or already done).
    pub async fn idem_renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let redis_key = self.idem_key(key);
        let script = &self.inner.scripts.idem_renew;
        let mut conn = self.conn();
        let renewed: i64 = self
            .bounded(async move {
                script.key(redis_key).arg(owner).arg(millis(lease)).invoke_async(&mut conn).await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Keeps `owner`'s claim on `key` alive: renews it to `lease` every quarter of `lease`
    /// until the returned keeper drops, or the claim is found lost (completed, released,
    /// expired). A renewal that fails is tried again at the next tick; one that lands late is
    /// harmless (the script checks that the record is still running and still the owner's).
    pub fn keep_claim(&self, key: &str, owner: &str, lease: Duration) -> ClaimKeeper {
        let (store, key, owner) = (self.clone(), key.to_owned(), owner.to_owned());
        let every = (lease / 4).max(Duration::from_millis(1));
        ClaimKeeper(self.inner.home.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Ok(false) = store.idem_renew(&key, &owner, lease).await {
                    // Completed or released meanwhile (the keeper was about to drop), or the
                    // lease ran out while Redis could not be reached: then a duplicate may have
                    // claimed the key and run the call again.
                    tracing::debug!(key = %key, "idempotency claim no longer held; renewals stop");
                    return;
                }
            }
        }))
    }

    /// After a claim whose outcome is unknown (every try timed out): deletes it if it landed
    /// and is still `owner`'s, as soon as Redis answers again (a few tries, a second apart).
    /// Until then, or if it lands after this ran, the claim's short lease bounds it.
    pub fn abandon_claim(&self, key: &str, owner: &str) {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.spawn(|store| async move {
            for _ in 0..ABANDON_TRIES {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if store.idem_release(&key, &owner).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// Wait until `key` is done, released or expired, or `deadline` passes; answer its state
    /// then. Woken by the events subscription, and polls as well (5 ms doubling to 100 ms, or
    /// to 500 ms while subscribed), which covers lost messages and expired leases. Each read
    /// is bounded by the op timeout, so the answer may come up to that much after `deadline`.
    pub async fn idem_wait(&self, key: &str, deadline: Instant) -> Result<WaitResult, StoreError> {
        // Subscribe before the first read: a completion after it is then never missed.
        let mut events = self.inner.events.subscribe();
        let mut pause = POLL_FIRST;
        loop {
            match self.idem_state(key).await? {
                WaitResult::Running => {}
                settled => return Ok(settled),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(WaitResult::Running);
            }
            tokio::select! {
                () = tokio::time::sleep_until((now + pause).min(deadline)) => {}
                () = event_for(&mut events, key) => {}
            }
            let max = if self.inner.events_live.load(std::sync::atomic::Ordering::Acquire) {
                POLL_MAX_SUBSCRIBED
            } else {
                POLL_MAX
            };
            pause = (pause * 2).min(max);
        }
    }

    /// The current state of a record: `Done(answer)`, `Running`, or `Gone` when absent.
    async fn idem_state(&self, key: &str) -> Result<WaitResult, StoreError> {
        let redis_key = self.idem_key(key);
        let mut conn = self.conn();
        let (state, answer): (Option<String>, Option<Vec<u8>>) = self
            .bounded(async move {
                ::redis::cmd("HMGET")
                    .arg(redis_key)
                    .arg("state")
                    .arg("answer")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match state.as_deref() {
            None => WaitResult::Gone,
            Some("done") => WaitResult::Done(answer.unwrap_or_default()),
            Some(_) => WaitResult::Running,
        })
    }
}

/// Resolves when an event names `key` (or some were lost: the caller reads the state anyway).
async fn event_for(events: &mut broadcast::Receiver<String>, key: &str) {
    loop {
        match events.recv().await {
            Ok(k) if k == key => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}
