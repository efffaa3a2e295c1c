//! Tests of [`MemoryStore`]: single flight, release and cancellation, expiry on paused time,
//! bounds and eviction order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Barrier, oneshot};

use super::*;

const TTL: Duration = Duration::from_secs(60);
const FP: [u8; 32] = [7; 32];

fn scope_of(i: u64) -> [u8; 32] {
    let mut s = [0; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s
}

fn answer(body: &str) -> StoredAnswer {
    StoredAnswer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::copy_from_slice(body.as_bytes()),
        stream: false,
    }
}

fn execute(c: Claim) -> Lease {
    match c {
        Claim::Execute(lease) => lease,
        other => panic!("expected Execute, got {other:?}"),
    }
}

fn waiter(c: Claim) -> Waiter {
    match c {
        Claim::InFlight(w) => w,
        other => panic!("expected InFlight, got {other:?}"),
    }
}

fn replay(c: Claim) -> Arc<StoredAnswer> {
    match c {
        Claim::Replay(a) => a,
        other => panic!("expected Replay, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claims_execute_once_and_share_the_answer() {
    let store = MemoryStore::new(100, 1 << 20);
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (store, barrier) = (store.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let claim = store.claim(scope_of(1), FP, TTL);
            // Everyone has claimed before the owner completes, so the rest are all in flight.
            barrier.wait().await;
            match claim {
                Claim::Execute(lease) => {
                    tokio::task::yield_now().await;
                    assert!(lease.complete(answer("the answer")));
                    None
                }
                Claim::InFlight(w) => match w.wait().await {
                    WaitOutcome::Done(a) => Some(a),
                    WaitOutcome::Released => panic!("released"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }));
    }
    let mut answers = Vec::new();
    let mut executed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(a) => answers.push(a),
            None => executed += 1,
        }
    }
    assert_eq!(executed, 1);
    assert_eq!(answers.len(), 49);
    assert!(answers.iter().all(|a| Arc::ptr_eq(a, &answers[0])));
    assert_eq!(*answers[0], answer("the answer"));
    // A later duplicate replays the same stored answer.
    assert!(Arc::ptr_eq(&replay(store.claim(scope_of(1), FP, TTL)), &answers[0]));
}

#[tokio::test]
async fn different_fingerprint_is_mismatch_in_flight_and_done() {
    let store = MemoryStore::new(10, 10_000);
    let lease = execute(store.claim(scope_of(1), FP, TTL));
    assert!(matches!(store.claim(scope_of(1), [8; 32], TTL), Claim::Mismatch));
    assert!(lease.complete(answer("a")));
    assert!(matches!(store.claim(scope_of(1), [8; 32], TTL), Claim::Mismatch));
    assert_eq!(*replay(store.claim(scope_of(1), FP, TTL)), answer("a"));
    // Another scope with the other fingerprint is unaffected.
    execute(store.claim(scope_of(2), [8; 32], TTL)).release();
}

#[tokio::test]
async fn release_wakes_waiters_and_next_claim_executes() {
    let store = MemoryStore::new(10, 10_000);
    let lease = execute(store.claim(scope_of(1), FP, TTL));
    let waiters: Vec<_> = (0..5).map(|_| waiter(store.claim(scope_of(1), FP, TTL))).collect();
    let pending: Vec<_> = waiters.into_iter().map(|w| tokio::spawn(w.wait())).collect();
    lease.release();
    for p in pending {
        assert!(matches!(p.await.unwrap(), WaitOutcome::Released));
    }
    assert_eq!(store.len(), 0);
    let again = execute(store.claim(scope_of(1), FP, TTL));
    assert!(again.is_tracked());
    assert!(matches!(store.claim(scope_of(1), FP, TTL), Claim::InFlight(_)));
}

#[tokio::test]
async fn dropped_lease_is_release() {
    let store = MemoryStore::new(10, 10_000);
    let lease = execute(store.claim(scope_of(1), FP, TTL));
    let w = waiter(store.claim(scope_of(1), FP, TTL));
    drop(lease);
    assert!(matches!(w.wait().await, WaitOutcome::Released));
    execute(store.claim(scope_of(1), FP, TTL));
}

#[tokio::test]
async fn cancelled_owner_task_releases() {
    let store = MemoryStore::new(10, 10_000);
    let (claimed_tx, claimed_rx) = oneshot::channel();
    let owner = tokio::spawn({
        let store = store.clone();
        async move {
            let _lease = execute(store.claim(scope_of(1), FP, TTL));
            let _ = claimed_tx.send(());
            std::future::pending::<()>().await;
        }
    });
    claimed_rx.await.unwrap();
    let w = tokio::spawn(waiter(store.claim(scope_of(1), FP, TTL)).wait());
    owner.abort();
    assert!(matches!(w.await.unwrap(), WaitOutcome::Released));
    assert_eq!(store.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn done_entries_expire_ttl_after_completion_in_flight_ones_never() {
    let store = MemoryStore::new(10, 10_000);
    let lease = execute(store.claim(scope_of(1), FP, TTL));
    // In flight far longer than the ttl: still in flight.
    tokio::time::advance(TTL * 10).await;
    assert!(matches!(store.claim(scope_of(1), FP, TTL), Claim::InFlight(_)));
    assert!(lease.complete(answer("a")));
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(*replay(store.claim(scope_of(1), FP, TTL)), answer("a"));
    assert_eq!(store.bytes(), answer("a").size());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!((store.len(), store.bytes()), (0, 0));
    execute(store.claim(scope_of(1), FP, TTL));
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_expired_then_oldest_completed_never_in_flight() {
    let store = MemoryStore::new(3, 10_000);
    assert!(execute(store.claim(scope_of(1), FP, TTL)).complete(answer("1")));
    assert!(execute(store.claim(scope_of(2), FP, Duration::from_secs(10))).complete(answer("2")));
    let in_flight = execute(store.claim(scope_of(3), FP, TTL));
    tokio::time::advance(Duration::from_secs(20)).await;
    // Full: 2 has expired and goes first; 1 survives.
    let four = execute(store.claim(scope_of(4), FP, TTL));
    assert!(four.is_tracked());
    assert_eq!(*replay(store.claim(scope_of(1), FP, TTL)), answer("1"));
    // Full again: the oldest completed (1) goes, the in-flight 3 stays.
    assert!(four.complete(answer("4")));
    execute(store.claim(scope_of(5), FP, TTL)).release();
    assert!(matches!(store.claim(scope_of(1), FP, TTL), Claim::Execute(_)));
    assert!(matches!(store.claim(scope_of(3), FP, TTL), Claim::InFlight(_)));
    drop(in_flight);
}

#[tokio::test]
async fn full_of_in_flight_executes_untracked() {
    let store = MemoryStore::new(4, 10_000);
    let held: Vec<_> = (0..4).map(|i| execute(store.claim(scope_of(i), FP, TTL))).collect();
    assert!(held.iter().all(Lease::is_tracked));
    let extra = execute(store.claim(scope_of(99), FP, TTL));
    assert!(!extra.is_tracked());
    assert_eq!(store.len(), 4);
    // No dedup under overload: a duplicate executes too, and nothing is stored.
    assert!(!execute(store.claim(scope_of(99), FP, TTL)).is_tracked());
    assert!(!extra.complete(answer("x")));
    assert_eq!((store.len(), store.bytes()), (4, 0));
    drop(held);
    assert!(execute(store.claim(scope_of(99), FP, TTL)).is_tracked());
}

#[tokio::test]
async fn oversize_answer_is_not_stored_and_waiters_are_released() {
    // Per-answer cap: an eighth of max_bytes, here a 100-byte body with no headers.
    let unit = ENTRY_OVERHEAD + 100;
    let store = MemoryStore::new(10, 8 * unit);
    let lease = execute(store.claim(scope_of(1), FP, TTL));
    let w = waiter(store.claim(scope_of(1), FP, TTL));
    let mut big = answer("");
    big.headers.clear();
    big.body = Bytes::from(vec![b'x'; 101]);
    assert!(!lease.complete(big.clone()));
    assert!(matches!(w.wait().await, WaitOutcome::Released));
    assert_eq!((store.len(), store.bytes()), (0, 0));
    // Exactly at the cap is stored.
    big.body.truncate(100);
    assert!(execute(store.claim(scope_of(1), FP, TTL)).complete(big));
    assert_eq!(store.bytes(), unit);
    // An explicit cap overrides max_bytes / 8.
    let capped = MemoryStore::with_answer_cap(10, 800, 10);
    assert!(!execute(capped.claim(scope_of(1), FP, TTL)).complete(answer("more than ten bytes")));
}

#[tokio::test]
async fn byte_bound_evicts_oldest_completed() {
    let unit = ENTRY_OVERHEAD + 100;
    let store = MemoryStore::new(100, 8 * unit);
    let body = |i: u64| {
        let mut a = answer("");
        a.headers.clear();
        a.body = Bytes::from(vec![b'0' + i as u8; 100]);
        a
    };
    for i in 0..8 {
        assert!(execute(store.claim(scope_of(i), FP, TTL)).complete(body(i)));
    }
    assert_eq!(store.bytes(), 8 * unit);
    assert!(execute(store.claim(scope_of(8), FP, TTL)).complete(body(8)));
    assert_eq!((store.len(), store.bytes()), (8, 8 * unit));
    assert!(matches!(store.claim(scope_of(0), FP, TTL), Claim::Execute(_)));
    assert_eq!(*replay(store.claim(scope_of(1), FP, TTL)), body(1));
    assert_eq!(*replay(store.claim(scope_of(8), FP, TTL)), body(8));
}

#[tokio::test]
async fn ten_thousand_keys_stay_within_bounds() {
    let (max_entries, max_bytes) = (64, 16_384); // per-answer cap 2048: every answer fits
    let store = MemoryStore::new(max_entries, max_bytes);
    let mut held = Vec::new();
    let mut stored = 0;
    for i in 0..10_000u64 {
        let lease = execute(store.claim(scope_of(i), FP, TTL));
        if i % 7 == 0 {
            // Keep some in flight for a while.
            held.push(lease);
            if held.len() > 20 {
                held.remove(0);
            }
        } else {
            let mut a = answer("");
            a.body = Bytes::from(vec![b'x'; (i * 37 % 600) as usize]);
            stored += usize::from(lease.complete(a));
        }
        assert!(store.len() <= max_entries, "len {} at {i}", store.len());
        assert!(store.bytes() <= max_bytes, "bytes {} at {i}", store.bytes());
    }
    assert!(stored > 5_000);
    drop(held);
    assert!(store.len() <= max_entries && store.bytes() <= max_bytes);
    assert!(!store.is_empty());
}
