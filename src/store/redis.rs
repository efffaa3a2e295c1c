//! The Redis backend: budgets, GCRA rate limits and idempotency records shared by every
//! replica (`state.backend: redis`, SPEC §6-7).
//!
//! # Connection
//!
//! One [`ConnectionManager`] per store: a single multiplexed connection that every call shares
//! and that the manager re-establishes in the background when it drops (bounded exponential
//! backoff). A second, dedicated connection subscribes to the idempotency events channel so
//! that waiters wake as soon as a record is completed or released. Plain `redis://` (and
//! `redis+unix://`) URLs only: TLS (`rediss://`) is not compiled in.
//!
//! # Bounded calls
//!
//! Every call is bounded by the `op_timeout` given to [`RedisStore::new`] (the manager's
//! connect and response timeouts are set to it as well): when Redis is down, unreachable or
//! stalled, a call answers `Err(StoreError)` within that time rather than hang, and a later
//! call succeeds again once Redis is back. [`RedisStore::new`] itself never connects, so a
//! replica can start while Redis is away; a background task pings once a second, which
//! reconnects ahead of traffic. A timed-out call may still have run on the server, or still run
//! later (queued while Redis was stalled): such late writes are made harmless. An idempotency
//! claim lives for a short lease ([`CLAIM_LEASE`]) that only a live owner renews, and a claim
//! that timed out is released as soon as Redis answers again. A budget reservation is its own
//! entry with a lease (the route's deadline plus a margin) and stops counting when it ends; one
//! that timed out is cancelled as soon as Redis answers (or refused, should it land later).
//!
//! # Key layout
//!
//! All keys start with the configured `prefix` (e.g. `tidegate:`):
//!
//! | key | type | fields / value | TTL |
//! | --- | --- | --- | --- |
//! | `{prefix}budget:{route}:{window_start_secs}` | hash | `spent`, `reserved` (integer micro-dollars; `reserved` is the sum of the live reservations) | the `ttl` given, refreshed on each write |
//! | `{prefix}budget:{route}:{window_start_secs}:holds` | sorted set | `{id}:{amount}` per reservation (`{id}:x`: a cancelled one), scored by its expiry, ms on the Redis clock | as the hash |
//! | `{prefix}gcra:{key}` | string | theoretical arrival time, integer microseconds since the epoch (Redis `TIME`) | until the bucket is full again |
//! | `{prefix}idem:{scope}` | hash | `state` (`running`/`done`), `fp`, `owner`, `answer` (bytes, once done) | the lease while running, the `ttl` once done |
//!
//! and completions and releases are published on the channel `{prefix}idem:events`, the
//! message being the record's scope id. The window number ends the budget key, so a route
//! name containing `:` cannot collide with another route's window.
//!
//! # Atomicity
//!
//! Every read-modify-write is one Lua script (`redis/*.lua`, sent by `EVALSHA` and reloaded
//! after `NOSCRIPT`, e.g. on a restarted server), so concurrent replicas never interleave: the
//! budget check-and-reserve, the settlement, the GCRA decision (on the server's clock, so
//! replicas agree on time), and the idempotency claim, completion, release and renewal
//! (ownership is checked in the same script that writes). Amounts are integers below 2^53
//! (Lua numbers are doubles): about 9 billion dollars in micro-dollars.
//!
//! One Redis node (or a primary behind a stable address): Redis Cluster is not supported.

mod budget;
mod events;
mod gcra;
mod idempotency;
#[cfg(test)]
#[path = "../../tests/it/redis_server.rs"]
mod test_server;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, RedisResult, Script};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use budget::{Exhausted, Hold};
pub use idempotency::{CLAIM_LEASE, Claim, ClaimKeeper, WaitResult};

/// The largest integer a Lua number (a double) holds exactly.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// A failed store call: Redis unreachable, timed out, or answering an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Marks a refused connection in a [`StoreError`]'s message.
const REFUSED: &str = "connection refused";

impl StoreError {
    fn from_redis(e: &RedisError) -> Self {
        if e.is_connection_refusal() {
            StoreError(format!("redis unavailable ({REFUSED}): {e}"))
        } else if e.is_io_error() || e.is_connection_dropped() {
            StoreError(format!("redis unavailable: {e}"))
        } else {
            StoreError(format!("redis error: {e}"))
        }
    }

    /// The command may have reached Redis and may still run there (it timed out, or the
    /// connection broke after it was sent); a refused connection or an error reply ran nothing.
    /// Only then is a write worth undoing once Redis answers again.
    pub fn may_have_landed(&self) -> bool {
        self.0.starts_with("redis timed out")
            || (self.0.starts_with("redis unavailable") && !self.0.contains(REFUSED))
    }

    fn timed_out(after: Duration) -> Self {
        StoreError(format!("redis timed out after {} ms", after.as_millis()))
    }

    fn invalid(what: impl fmt::Display) -> Self {
        StoreError(format!("redis store: {what}"))
    }
}

/// The Lua scripts, hashed once.
struct Scripts {
    budget_reserve: Script,
    budget_settle: Script,
    budget_cancel: Script,
    budget_status: Script,
    gcra: Script,
    idem_claim: Script,
    idem_complete: Script,
    idem_release: Script,
    idem_renew: Script,
}

impl Scripts {
    fn new() -> Self {
        let [budget_reserve, budget_settle, budget_cancel, budget_status] = budget::scripts();
        Scripts {
            budget_reserve,
            budget_settle,
            budget_cancel,
            budget_status,
            gcra: Script::new(include_str!("redis/gcra.lua")),
            idem_claim: Script::new(include_str!("redis/idem_claim.lua")),
            idem_complete: Script::new(include_str!("redis/idem_complete.lua")),
            idem_release: Script::new(include_str!("redis/idem_release.lua")),
            idem_renew: Script::new(include_str!("redis/idem_renew.lua")),
        }
    }
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    scripts: Scripts,
    /// The idempotency events channel, `{prefix}idem:events`.
    channel: String,
    /// Scope ids of completed or released records, from the events subscription.
    events: broadcast::Sender<String>,
    /// Whether the events subscription is currently up (waiters then poll less often).
    events_live: Arc<AtomicBool>,
    /// The background tasks (events subscription, keepalive), aborted with the store.
    tasks: Vec<JoinHandle<()>>,
    /// The runtime the store was made on (the main one, which outlives the data plane's
    /// workers): writes that finish a request run there, not on the worker that served it.
    home: tokio::runtime::Handle,
    /// Those writes, so shutdown can wait for them ([`RedisStore::flush`]).
    pending: tokio_util::task::TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A handle on the shared Redis state. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `url` (`redis://[user:password@]host[:port][/db]`), its keys under `prefix`,
    /// every call bounded by `op_timeout`.
    ///
    /// Does not connect: it fails only for an invalid or unsupported URL (or when called outside
    /// a Tokio runtime, which the background tasks need). The connection is made on first use
    /// and by the keepalive task, and remade whenever it drops.
    pub fn new(url: &str, prefix: &str, op_timeout: Duration) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::invalid(
                "RedisStore::new must be called inside a Tokio runtime",
            ));
        }
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        if scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys") {
            return Err(StoreError::invalid(
                "TLS (rediss://) is not supported: use a plain redis:// URL",
            ));
        }
        let client = Client::open(url)
            .map_err(|e| StoreError::invalid(format_args!("invalid redis URL: {e}")))?;
        let op_timeout = op_timeout.max(Duration::from_millis(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::invalid(format_args!("redis client: {e}")))?;

        let channel = format!("{prefix}idem:events");
        let (events, _) = broadcast::channel(256);
        let events_live = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            events::spawn_listener(
                client,
                channel.clone(),
                events.clone(),
                Arc::clone(&events_live),
                op_timeout,
            ),
            events::spawn_keepalive(conn.clone(), op_timeout),
        ];
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_owned(),
                op_timeout,
                scripts: Scripts::new(),
                channel,
                events,
                events_live,
                tasks,
                home: tokio::runtime::Handle::current(),
                pending: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Runs `write(store)` on its own, on the runtime the store was made on: settlements and record
    /// completions that must not wait for, nor die with, the request's worker.
    pub fn spawn<F>(&self, write: impl FnOnce(RedisStore) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.pending.spawn_on(write(self.clone()), &self.inner.home);
    }

    /// Waits up to `within` for the writes [`RedisStore::spawn`] started (shutdown, after the
    /// data plane has drained): the last requests' settlements and idempotency records reach
    /// Redis instead of dying with the process. Returns whether all finished.
    pub async fn flush(&self, within: Duration) -> bool {
        let pending = &self.inner.pending;
        pending.close();
        let done = tokio::time::timeout(within, pending.wait()).await.is_ok();
        pending.reopen();
        done
    }

    /// Health probe: `PING` within the op timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let pong: String =
            self.bounded(async move { ::redis::cmd("PING").query_async(&mut conn).await }).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError(format!("redis error: PING answered {pong:?}")))
        }
    }

    /// A handle on the shared connection (an `Arc` clone).
    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// `fut` bounded by the op timeout, its errors mapped to [`StoreError`].
    async fn bounded<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            // The connection's own response timeout is the op timeout too.
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::timed_out(self.inner.op_timeout)),
            Ok(Err(e)) => Err(StoreError::from_redis(&e)),
            Err(_) => Err(StoreError::timed_out(self.inner.op_timeout)),
        }
    }

    fn key(&self, kind: &str, rest: fmt::Arguments<'_>) -> String {
        format!("{}{kind}:{rest}", self.inner.prefix)
    }
}

/// `d` in whole milliseconds for `PEXPIRE`/`PX`: at least 1 (0 would delete the key at once).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_EXACT)
}

/// `v` if Lua can hold it exactly, else an error naming `what`.
fn exact(v: u64, what: &str) -> Result<u64, StoreError> {
    if v <= MAX_EXACT {
        Ok(v)
    } else {
        Err(StoreError::invalid(format_args!("{what} {v} exceeds 2^53 - 1")))
    }
}

/// A script's integer answer as `u64` (negative is a protocol surprise, not a panic).
fn non_negative(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError(format!("redis error: negative {what} {v}")))
}
