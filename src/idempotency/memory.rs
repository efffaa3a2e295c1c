//! [`MemoryStore`]: the default, single-process idempotency backend.
//!
//! **Table.** One `HashMap` from scope to entry, behind a `std::sync::Mutex` held only for short,
//! non-async critical sections (never across `.await`). An entry is either *in flight* (a
//! [`Lease`] owns it) or *done* (it holds the answer, until its ttl passes).
//!
//! **Single flight.** The first claim of a scope inserts an in-flight entry and returns
//! [`Claim::Execute`]. Each in-flight entry owns one `tokio::sync::watch` channel: the lease
//! holds the sender, the entry a receiver that duplicates clone into a [`Waiter`]. The lease
//! publishes exactly one outcome (`Done` or `Released`); a dropped sender also reads as
//! `Released`, so waiters cannot hang on a lost lease. Waiting costs one receiver per waiting
//! task and nothing in the table: there is no waiter list to grow.
//!
//! **Expiry** uses `tokio::time::Instant` (tests run on paused time). A done entry expires `ttl`
//! after *completion* (the ttl given at claim time, clamped to 10 years); an in-flight entry
//! never expires while its lease lives. Expired entries are purged, oldest first, on every
//! operation, from an index ordered by expiry time.
//!
//! **Bounds.** `max_entries` counts every entry, in flight or done; `max_bytes` counts the
//! stored answers ([`StoredAnswer::size`]: body + header names and values). An answer over the
//! per-answer cap (`max_bytes / 8` by default, so one answer can never flush more than an
//! eighth of the store; see [`MemoryStore::with_answer_cap`]) is not stored: `complete` returns
//! `false` and acts as `release`. To make room the store purges expired entries, then evicts the
//! oldest *completed* entries (by completion order); in-flight entries are never evicted. If
//! the table is full of in-flight entries, `claim` still returns `Execute`, with an
//! *untracked* lease ([`Lease::is_tracked`] is `false`): under such overload there is no
//! deduplication for that request, rather than a rejection. An untracked lease stores nothing.
//! Both indexes hold exactly one row per done entry, so all memory is bounded by `max_entries`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bytes counted per stored answer beyond its content (table entries in two indexes, the
/// answer's `Arc`, the header vector).
const ENTRY_OVERHEAD: usize = 256;
/// Bytes counted per header beyond its text (two `String`s and their allocations).
const HEADER_OVERHEAD: usize = 64;

type Scope = [u8; 32];
type Fingerprint = [u8; 32];

/// Longest ttl honoured; longer ones are clamped, keeping `Instant` arithmetic in range.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A completed answer, kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// HTTP status sent to the client.
    pub status: u16,
    /// Response headers to replay (name, value).
    pub headers: Vec<(String, String)>,
    /// The complete body; with `stream: true`, the complete SSE bytes as sent to the client.
    pub body: Bytes,
    /// Whether the answer was a `text/event-stream`.
    pub stream: bool,
}

impl StoredAnswer {
    /// What this answer counts against the store's byte bound: body, header names and values,
    /// and the bookkeeping around them (allocations, the table's entry), so the bound is close
    /// to the memory really used.
    pub fn size(&self) -> usize {
        self.headers.iter().fold(self.body.len() + ENTRY_OVERHEAD, |n, (k, v)| {
            n.saturating_add(k.len() + v.len() + HEADER_OVERHEAD)
        })
    }
}

/// The result of [`MemoryStore::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The caller owns the key: run the request, then [`Lease::complete`] or [`Lease::release`].
    Execute(Lease),
    /// Completed within ttl: replay this answer without calling upstream.
    Replay(Arc<StoredAnswer>),
    /// The same scope holds a different request: the caller answers 422.
    Mismatch,
    /// The same request is running: wait for it (`in_flight: wait`) or answer 409 (`reject`).
    InFlight(Waiter),
}

/// How an in-flight request that a [`Waiter`] waited for ended.
#[derive(Debug, Clone)]
pub enum WaitOutcome {
    /// It completed and its answer was stored: replay it.
    Done(Arc<StoredAnswer>),
    /// It was released (retryable failure, cancellation, answer too large): claim again.
    Released,
}

/// A handle on someone else's in-flight request.
#[derive(Debug)]
pub struct Waiter {
    rx: watch::Receiver<Option<WaitOutcome>>,
}

impl Waiter {
    /// Waits until the owner completes or releases the key. Does not time out by itself: the
    /// caller bounds it with the route's deadline (the owner runs under the same kind of bound).
    pub async fn wait(mut self) -> WaitOutcome {
        match self.rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(WaitOutcome::Released),
            // The lease's sender is gone without an outcome: same as released.
            Err(_) => WaitOutcome::Released,
        }
    }
}

/// Ownership of a key while its request runs. Dropping it without [`Lease::complete`] is
/// [`Lease::release`] (the request was cancelled or panicked), so waiters never hang.
pub struct Lease {
    slot: Option<Slot>,
}

/// A tracked lease's link to its table entry.
struct Slot {
    shared: Arc<Shared>,
    scope: Scope,
    token: u64,
    ttl: Duration,
    tx: watch::Sender<Option<WaitOutcome>>,
}

impl Lease {
    /// Stores `answer` for replay (for the ttl given at claim time) and hands it to waiters.
    ///
    /// Returns `false` if it was not stored: the answer is over the per-answer cap, or the
    /// lease is untracked. Then it behaves like [`Lease::release`].
    pub fn complete(mut self, answer: StoredAnswer) -> bool {
        let Some(slot) = self.slot.take() else { return false };
        let size = answer.size();
        if size > slot.shared.max_answer_bytes {
            slot.release();
            return false;
        }
        let answer = Arc::new(answer);
        let stored = slot.shared.lock().store(&slot, &answer, size);
        let outcome = if stored { WaitOutcome::Done(answer) } else { WaitOutcome::Released };
        slot.tx.send_replace(Some(outcome));
        stored
    }

    /// Gives the key up without an answer (e.g. a retryable failure): waiters get
    /// [`WaitOutcome::Released`] and the next claim executes.
    pub fn release(mut self) {
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
    }

    /// Whether the store tracks this execution; `false` under overload (table full of
    /// in-flight entries), when duplicates are not deduplicated and nothing is stored.
    pub fn is_tracked(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("tracked", &self.is_tracked()).finish()
    }
}

impl Slot {
    fn release(self) {
        self.shared.lock().remove_in_flight(&self.scope, self.token);
        self.tx.send_replace(Some(WaitOutcome::Released));
    }
}

struct Shared {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    max_answer_bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Entry {
    fingerprint: Fingerprint,
    state: State,
}

enum State {
    InFlight { token: u64, rx: watch::Receiver<Option<WaitOutcome>> },
    Done { answer: Arc<StoredAnswer>, size: usize, expires: Instant, seq: u64 },
}

#[derive(Default)]
struct Inner {
    map: HashMap<Scope, Entry>,
    /// Done entries by (expiry, completion seq): expired ones are at the front.
    by_expiry: BTreeMap<(Instant, u64), Scope>,
    /// Done entries by completion seq: the oldest completed is at the front.
    by_age: BTreeMap<u64, Scope>,
    /// Sum of the sizes of done entries.
    bytes: usize,
    next_seq: u64,
}

impl Inner {
    fn next_seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Removes the done entry at `scope` (if it is one) and its index rows.
    fn remove_done(&mut self, scope: &Scope) {
        if let Some(Entry { state: State::Done { size, expires, seq, .. }, .. }) =
            self.map.get(scope)
        {
            let (size, expires, seq) = (*size, *expires, *seq);
            self.by_expiry.remove(&(expires, seq));
            self.by_age.remove(&seq);
            self.bytes = self.bytes.saturating_sub(size);
            self.map.remove(scope);
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some(first) = self.by_expiry.first_entry() {
            if first.key().0 > now {
                break;
            }
            let scope = first.remove();
            self.remove_done(&scope);
        }
    }

    /// Evicts the oldest completed entry; `false` if there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, scope)) = self.by_age.pop_first() else { return false };
        self.remove_done(&scope);
        true
    }

    /// Whether `scope` is in flight under the lease with `token`.
    fn owned_by(&self, scope: &Scope, token: u64) -> bool {
        match self.map.get(scope) {
            Some(Entry { state: State::InFlight { token: t, .. }, .. }) => *t == token,
            _ => false,
        }
    }

    fn remove_in_flight(&mut self, scope: &Scope, token: u64) {
        if self.owned_by(scope, token) {
            self.map.remove(scope);
        }
    }

    /// Turns the lease's in-flight entry into a done one, evicting to fit `max_bytes`.
    fn store(&mut self, slot: &Slot, answer: &Arc<StoredAnswer>, size: usize) -> bool {
        if !self.owned_by(&slot.scope, slot.token) {
            return false;
        }
        let now = Instant::now();
        self.purge_expired(now);
        let max_bytes = slot.shared.max_bytes;
        while self.bytes.saturating_add(size) > max_bytes {
            if !self.evict_oldest() {
                // Unreachable while the per-answer cap is <= max_bytes; a safe fallback.
                self.map.remove(&slot.scope);
                return false;
            }
        }
        let seq = self.next_seq();
        let expires = now.checked_add(slot.ttl.min(MAX_TTL)).unwrap_or(now);
        let Some(entry) = self.map.get_mut(&slot.scope) else { return false };
        entry.state = State::Done { answer: Arc::clone(answer), size, expires, seq };
        self.by_expiry.insert((expires, seq), slot.scope);
        self.by_age.insert(seq, slot.scope);
        self.bytes += size;
        true
    }
}

/// The in-memory idempotency store. Cloning is cheap and shares the table.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    /// A store of at most `max_entries` entries and `max_bytes` of stored answers; answers
    /// over `max_bytes / 8` are not stored.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self::with_answer_cap(max_entries, max_bytes, max_bytes / 8)
    }

    /// Like [`MemoryStore::new`] with an explicit per-answer cap (e.g. the config's
    /// `idempotency.max_body_bytes`), clamped to `max_bytes`.
    pub fn with_answer_cap(max_entries: usize, max_bytes: usize, max_answer_bytes: usize) -> Self {
        let shared = Shared {
            inner: Mutex::new(Inner::default()),
            max_entries,
            max_bytes,
            max_answer_bytes: max_answer_bytes.min(max_bytes),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Claims `scope` for a request with `fingerprint`; a completed answer is kept for `ttl`
    /// after completion. See [`Claim`] for what the caller does with each outcome.
    pub fn claim(&self, scope: [u8; 32], fingerprint: [u8; 32], ttl: Duration) -> Claim {
        let mut inner = self.shared.lock();
        inner.purge_expired(Instant::now());
        if let Some(entry) = inner.map.get(&scope) {
            if entry.fingerprint != fingerprint {
                return Claim::Mismatch;
            }
            return match &entry.state {
                State::InFlight { rx, .. } => Claim::InFlight(Waiter { rx: rx.clone() }),
                State::Done { answer, .. } => Claim::Replay(Arc::clone(answer)),
            };
        }
        while inner.map.len() >= self.shared.max_entries {
            if !inner.evict_oldest() {
                // Only in-flight entries left: execute without dedup rather than reject.
                return Claim::Execute(Lease { slot: None });
            }
        }
        let token = inner.next_seq();
        let (tx, rx) = watch::channel(None);
        inner.map.insert(scope, Entry { fingerprint, state: State::InFlight { token, rx } });
        let slot = Slot { shared: Arc::clone(&self.shared), scope, token, ttl, tx };
        Claim::Execute(Lease { slot: Some(slot) })
    }

    /// Entries held (in flight and done, not yet purged as expired).
    pub fn len(&self) -> usize {
        let mut inner = self.shared.lock();
        inner.purge_expired(Instant::now());
        inner.map.len()
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of stored answers (sum of [`StoredAnswer::size`]).
    pub fn bytes(&self) -> usize {
        let mut inner = self.shared.lock();
        inner.purge_expired(Instant::now());
        inner.bytes
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_entries", &self.shared.max_entries)
            .field("max_bytes", &self.shared.max_bytes)
            .field("max_answer_bytes", &self.shared.max_answer_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
