//! Against a real `redis-server` started by each test (see `test_server`). Bounds are generous
//! so that a loaded two-core machine passes; no assertion depends on a race being won.

use std::time::Duration;

use tokio::time::Instant;

use super::test_server::{TestServer, free_port};
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const OP: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

fn store_on(server: &TestServer) -> Result<RedisStore, StoreError> {
    RedisStore::new(&server.url(), "tidegate:", OP)
}

async fn pttl(store: &RedisStore, key: &str) -> Result<i64, Box<dyn std::error::Error>> {
    let mut conn = store.conn();
    Ok(::redis::cmd("PTTL").arg(key).query_async(&mut conn).await?)
}

/// Calls `ping` until it succeeds, for at most `within`.
async fn until_ping_ok(store: &RedisStore, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match store.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no recovery within {within:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn hold(amount: u64) -> Hold {
    Hold::new(amount, HOUR)
}

#[tokio::test]
async fn budget_reserve_and_settle_arithmetic() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let w = 1_700_000_000;
    assert_eq!(store.budget_status("chat", w).await?, (0, 0));
    let h300 = hold(300);
    assert_eq!(store.budget_reserve("chat", w, HOUR, 1000, &h300).await?, Ok(()));
    assert_eq!(
        store.budget_reserve("chat", w, HOUR, 1000, &hold(800)).await?,
        Err(Exhausted { spent: 0, reserved: 300 })
    );
    assert_eq!(store.budget_status("chat", w).await?, (0, 300));
    store.budget_settle("chat", w, HOUR, &h300, 250).await?;
    assert_eq!(store.budget_status("chat", w).await?, (250, 0));
    // Exactly at the limit is admitted; one more is not.
    let h750 = hold(750);
    assert_eq!(store.budget_reserve("chat", w, HOUR, 1000, &h750).await?, Ok(()));
    assert_eq!(
        store.budget_reserve("chat", w, HOUR, 1000, &hold(1)).await?,
        Err(Exhausted { spent: 250, reserved: 750 })
    );
    // Settling twice, or an unknown reservation, releases nothing more; spent still counts.
    store.budget_settle("chat", w, HOUR, &h750, 10).await?;
    store.budget_settle("chat", w, HOUR, &h750, 0).await?;
    store.budget_settle("chat", w, HOUR, &hold(5000), 0).await?;
    assert_eq!(store.budget_status("chat", w).await?, (260, 0));
    // Windows and routes are separate keys; a route with ':' does not collide.
    assert_eq!(store.budget_status("chat", w + 60).await?, (0, 0));
    assert_eq!(store.budget_status("chat:1700000000", 0).await?, (0, 0));
    // The key expires with the TTL given.
    let ttl = pttl(&store, &store.budget_key("chat", w)).await?;
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "pttl {ttl}");
    // Amounts Lua cannot hold exactly are refused, not rounded.
    assert!(store.budget_reserve("chat", w, HOUR, u64::MAX, &hold(1 << 60)).await.is_err());
    Ok(())
}

/// A reservation nobody settles (its replica died) stops counting when its lease ends; one
/// settled after that adds its cost and frees nothing twice.
#[tokio::test]
async fn an_unsettled_reservation_expires_with_its_lease() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let lost = Hold::new(600, Duration::from_millis(200));
    assert_eq!(store.budget_reserve("lease", 0, HOUR, 1000, &lost).await?, Ok(()));
    let kept = hold(400);
    assert_eq!(store.budget_reserve("lease", 0, HOUR, 1000, &kept).await?, Ok(()));
    assert!(store.budget_reserve("lease", 0, HOUR, 1000, &hold(600)).await?.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.budget_status("lease", 0).await? != (0, 400) {
        assert!(Instant::now() < deadline, "the lost reservation never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.budget_reserve("lease", 0, HOUR, 1000, &hold(600)).await?, Ok(()));
    store.budget_settle("lease", 0, HOUR, &lost, 100).await?;
    assert_eq!(store.budget_status("lease", 0).await?, (100, 1000));
    Ok(())
}

/// A cancelled reservation frees its amount; one cancelled before it lands is refused.
#[tokio::test]
async fn a_cancelled_reservation_is_freed_or_refused_if_it_lands_later() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let landed = hold(700);
    assert_eq!(store.budget_reserve("c", 0, HOUR, 1000, &landed).await?, Ok(()));
    store.budget_cancel("c", 0, HOUR, &landed).await?;
    assert_eq!(store.budget_status("c", 0).await?, (0, 0));
    let late = hold(700);
    store.budget_cancel("c", 0, HOUR, &late).await?;
    assert!(store.budget_reserve("c", 0, HOUR, 1000, &late).await.is_err());
    assert_eq!(store.budget_status("c", 0).await?, (0, 0));
    Ok(())
}

/// A cancelled reserve that never landed leaves a tombstone only; once it expires, purging it
/// must not create the window's hash without a TTL (helper-34: a key that never expired).
#[tokio::test]
async fn purging_an_expired_tombstone_leaves_no_key_without_a_ttl() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let never = Hold::new(700, Duration::from_millis(100));
    store.budget_cancel("t", 0, HOUR, &never).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.budget_status("t", 0).await?, (0, 0));
    // -2: no such key; never -1 (a key that would live forever).
    let ttl = pttl(&store, &store.budget_key("t", 0)).await?;
    assert!(ttl == -2 || ttl > 0, "PTTL {ttl}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reserves_admit_exactly_the_limit() -> TestResult {
    let server = TestServer::start().await?;
    let store = RedisStore::new(&server.url(), "tidegate:", Duration::from_secs(20))?;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { store.budget_reserve("r", 60, HOUR, 50_000, &hold(1000)).await },
            )
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await?? {
            Ok(()) => admitted += 1,
            Err(_) => refused += 1,
        }
    }
    assert_eq!((admitted, refused), (50, 150));
    assert_eq!(store.budget_status("r", 60).await?, (0, 50_000));
    Ok(())
}

#[tokio::test]
async fn gcra_allows_the_burst_then_denies_without_consuming() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    // Burst 5 over 500 s: an emission interval of 100 s, so no refill during the test.
    let period = Duration::from_secs(500);
    for i in 0..5 {
        assert_eq!(store.gcra("rpm", 5, period, 1).await?, None, "call {i}");
    }
    let first = store.gcra("rpm", 5, period, 1).await?.ok_or("6th call allowed")?;
    assert!(
        first > Duration::from_secs(90) && first <= Duration::from_secs(100),
        "retry_after {first:?}"
    );
    // Denials consume nothing: the wait does not grow.
    for _ in 0..5 {
        let again = store.gcra("rpm", 5, period, 1).await?.ok_or("denied call allowed")?;
        assert!(again <= first, "{again:?} > {first:?}");
    }
    // Token costs: 8 of 10, then 3 denied (nothing taken), then 2 fit exactly.
    let period = Duration::from_secs(1000);
    assert_eq!(store.gcra("tpm", 10, period, 8).await?, None);
    let wait = store.gcra("tpm", 10, period, 3).await?.ok_or("over the burst")?;
    assert!(wait > Duration::from_secs(90) && wait <= Duration::from_secs(100), "{wait:?}");
    assert_eq!(store.gcra("tpm", 10, period, 2).await?, None);
    assert!(store.gcra("tpm", 10, period, 1).await?.is_some());
    // A cost above the burst is clamped: it passes on a full bucket.
    assert_eq!(store.gcra("big", 10, period, 50).await?, None);
    assert!(store.gcra("big", 10, period, 1).await?.is_some());
    // Keys are separate; the TAT key expires when the bucket would be full again.
    assert_eq!(store.gcra("other", 5, period, 1).await?, None);
    let ttl = pttl(&store, &store.gcra_key("rpm")).await?;
    assert!(ttl > 400_000 && ttl <= 500_001, "pttl {ttl}");
    assert!(store.gcra("zero", 0, period, 1).await.is_err());
    Ok(())
}

#[tokio::test]
async fn idem_claim_complete_replay_and_mismatch() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let lease = Duration::from_secs(30);
    assert_eq!(store.idem_claim("k1", "fp-a", "owner-a", lease).await?, Claim::Claimed);
    // The same owner again (its first reply was lost): still its claim, not a duplicate.
    assert_eq!(store.idem_claim("k1", "fp-a", "owner-a", lease).await?, Claim::Claimed);
    let running = Claim::Existing { fingerprint: "fp-a".into(), done: None };
    assert_eq!(store.idem_claim("k1", "fp-a", "owner-b", lease).await?, running);
    // Another owner cannot complete.
    store.idem_complete("k1", "owner-b", b"stolen", HOUR).await?;
    assert_eq!(store.idem_claim("k1", "fp-a", "owner-b", lease).await?, running);
    let answer = b"HTTP/1.1 200\r\n\x00\xff binary".to_vec();
    store.idem_complete("k1", "owner-a", &answer, HOUR).await?;
    let done = Claim::Existing { fingerprint: "fp-a".into(), done: Some(answer.clone()) };
    assert_eq!(store.idem_claim("k1", "fp-a", "owner-c", lease).await?, done);
    // A different fingerprint sees the stored one (the caller's 422).
    assert_eq!(store.idem_claim("k1", "fp-b", "owner-c", lease).await?, done);
    let ttl = pttl(&store, &store.idem_key("k1")).await?;
    assert!(ttl > 3_500_000, "pttl {ttl}");
    assert_eq!(store.idem_wait("k1", Instant::now()).await?, WaitResult::Done(answer));
    // A done record cannot be released.
    store.idem_release("k1", "owner-a").await?;
    assert!(matches!(
        store.idem_claim("k1", "fp-a", "owner-c", lease).await?,
        Claim::Existing { done: Some(_), .. }
    ));
    Ok(())
}

#[tokio::test]
async fn idem_release_renew_and_owner_checks() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let lease = Duration::from_secs(30);
    assert_eq!(store.idem_claim("k2", "fp", "a", lease).await?, Claim::Claimed);
    // Not the owner: no release, no renew.
    store.idem_release("k2", "b").await?;
    assert!(!store.idem_renew("k2", "b", HOUR).await?);
    assert!(matches!(store.idem_claim("k2", "fp", "b", lease).await?, Claim::Existing { .. }));
    // The owner renews: the lease grows.
    assert!(store.idem_renew("k2", "a", HOUR).await?);
    let ttl = pttl(&store, &store.idem_key("k2")).await?;
    assert!(ttl > 3_500_000, "pttl {ttl}");
    // The owner releases: a new claim succeeds, and the old owner has lost it.
    store.idem_release("k2", "a").await?;
    assert_eq!(store.idem_wait("k2", Instant::now()).await?, WaitResult::Gone);
    assert_eq!(store.idem_claim("k2", "fp", "b", lease).await?, Claim::Claimed);
    assert!(!store.idem_renew("k2", "a", lease).await?);
    store.idem_complete("k2", "a", b"late", HOUR).await?;
    assert_eq!(store.idem_wait("k2", Instant::now()).await?, WaitResult::Running);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_wait_sees_done_released_expired_and_deadline() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let lease = Duration::from_secs(60);
    let far = || Instant::now() + Duration::from_secs(30);

    // Done by another task while waiting.
    assert_eq!(store.idem_claim("w1", "fp", "a", lease).await?, Claim::Claimed);
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.idem_wait("w1", far()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.idem_complete("w1", "a", b"answer", HOUR).await?;
    assert_eq!(waiter.await??, WaitResult::Done(b"answer".to_vec()));

    // Released by another task while waiting.
    assert_eq!(store.idem_claim("w2", "fp", "a", lease).await?, Claim::Claimed);
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.idem_wait("w2", far()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.idem_release("w2", "a").await?;
    assert_eq!(waiter.await??, WaitResult::Gone);

    // The owner died: the lease expires.
    let short = Duration::from_millis(300);
    assert_eq!(store.idem_claim("w3", "fp", "a", short).await?, Claim::Claimed);
    assert_eq!(store.idem_wait("w3", far()).await?, WaitResult::Gone);

    // Still running at the deadline.
    assert_eq!(store.idem_claim("w4", "fp", "a", lease).await?, Claim::Claimed);
    let start = Instant::now();
    let deadline = start + Duration::from_millis(300);
    assert_eq!(store.idem_wait("w4", deadline).await?, WaitResult::Running);
    assert!(Instant::now() >= deadline);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    // Never claimed.
    assert_eq!(store.idem_wait("w5", far()).await?, WaitResult::Gone);
    Ok(())
}

#[tokio::test]
async fn completion_is_published_to_waiters() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.inner.events_live.load(std::sync::atomic::Ordering::Acquire) {
        if Instant::now() >= deadline {
            return Err("the events subscription did not come up within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut events = store.inner.events.subscribe();
    assert_eq!(store.idem_claim("p1", "fp", "a", HOUR).await?, Claim::Claimed);
    store.idem_complete("p1", "a", b"x", HOUR).await?;
    let key = tokio::time::timeout(Duration::from_secs(10), events.recv()).await??;
    assert_eq!(key, "p1");
    Ok(())
}

#[tokio::test]
async fn invalid_urls_fail_and_unreachable_redis_does_not() -> TestResult {
    assert!(RedisStore::new("not a url", "t:", OP).is_err());
    assert!(RedisStore::new("http://127.0.0.1:1/", "t:", OP).is_err());
    let tls = RedisStore::new("rediss://127.0.0.1:6380/", "t:", OP);
    assert!(tls.is_err_and(|e| e.0.contains("TLS")));

    // Nothing listens yet: the store is made, calls fail in bounded time.
    let port = free_port()?;
    let op = Duration::from_millis(500);
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}/"), "t:", op)?;
    let start = Instant::now();
    let down = store.ping().await;
    // Refused at once, or (on a very slow machine) out of time while retrying.
    let either =
        |e: &StoreError| e.0.starts_with("redis unavailable") || e.0.starts_with("redis timed out");
    assert!(down.as_ref().is_err_and(either), "{down:?}");
    // A refused connection ran nothing: no cleanup is worth queueing for it.
    if let Err(e) = &down
        && e.0.contains("refused")
    {
        assert!(!e.may_have_landed(), "{e}");
    }
    assert!(store.budget_status("r", 0).await.is_err());
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());

    // Redis comes up on that port: the same store recovers by itself.
    let _server = TestServer::start_on(port).await?;
    until_ping_ok(&store, Duration::from_secs(15)).await?;
    assert_eq!(store.budget_reserve("r", 0, HOUR, 10, &hold(1)).await?, Ok(()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_fast_then_recovers_on_the_same_port() -> TestResult {
    let server = TestServer::start().await?;
    let port = server.port();
    let op = Duration::from_millis(500);
    let store = RedisStore::new(&server.url(), "tidegate:", op)?;
    assert_eq!(store.budget_reserve("r", 0, HOUR, 10_000, &hold(100)).await?, Ok(()));
    assert_eq!(store.gcra("g", 10, HOUR, 1).await?, None);
    drop(server);

    // Each call answers Err within the op timeout (plus scheduling slack), never hangs.
    let bound = op + Duration::from_secs(3);
    for round in 0..3 {
        let start = Instant::now();
        assert!(store.ping().await.is_err(), "round {round}: ping");
        assert!(store.budget_reserve("r", 0, HOUR, 10_000, &hold(1)).await.is_err());
        assert!(store.gcra("g", 10, HOUR, 1).await.is_err());
        assert!(store.idem_claim("k", "fp", "a", HOUR).await.is_err());
        assert!(store.idem_wait("k", Instant::now() + HOUR).await.is_err());
        let took = start.elapsed();
        assert!(took < bound * 5, "round {round}: five calls took {took:?}");
    }

    // A new, empty server on the same port: calls succeed again (scripts are reloaded).
    let _server = TestServer::start_on(port).await?;
    until_ping_ok(&store, Duration::from_secs(15)).await?;
    assert_eq!(store.budget_reserve("r", 0, HOUR, 10_000, &hold(100)).await?, Ok(()));
    assert_eq!(store.budget_status("r", 0).await?, (0, 100));
    assert_eq!(store.gcra("g", 10, HOUR, 1).await?, None);
    assert_eq!(store.idem_claim("k", "fp", "a", HOUR).await?, Claim::Claimed);

    // The events subscription comes back too: a completion reaches the waiters again.
    let mut events = store.inner.events.subscribe();
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in 0.. {
        let key = format!("again-{n}");
        store.idem_claim(&key, "fp", "a", HOUR).await?;
        store.idem_complete(&key, "a", b"x", HOUR).await?;
        let wait = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
        if let Ok(Ok(_)) = wait {
            break;
        }
        if Instant::now() >= deadline {
            return Err("the events subscription did not come back within 15 s".into());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_times_out_then_recovers() -> TestResult {
    let server = TestServer::start().await?;
    let op = Duration::from_millis(500);
    let store = RedisStore::new(&server.url(), "tidegate:", op)?;
    store.ping().await?;
    let signal = |sig: &str| {
        std::process::Command::new("kill").args([sig, &server.pid().to_string()]).status()
    };
    if !signal("-STOP")?.success() {
        return Err("kill -STOP failed".into());
    }
    let start = Instant::now();
    let stalled = store.budget_reserve("r", 0, HOUR, 10, &hold(1)).await;
    let took = start.elapsed();
    let resumed = signal("-CONT");
    assert!(
        stalled.as_ref().is_err_and(|e| e.0.starts_with("redis timed out after")),
        "{stalled:?}"
    );
    assert!(took < op + Duration::from_secs(3), "{took:?}");
    if !resumed?.success() {
        return Err("kill -CONT failed".into());
    }
    until_ping_ok(&store, Duration::from_secs(15)).await?;
    assert!(store.budget_reserve("r", 0, HOUR, 10, &hold(1)).await?.is_ok());
    Ok(())
}

/// Shutdown's flush waits for the writes `spawn` started, and gives up after its bound.
#[tokio::test]
async fn flush_waits_for_spawned_writes_within_its_bound() {
    // No server is needed: the store connects lazily and these tasks never touch Redis.
    let store = RedisStore::new("redis://127.0.0.1:1", "t:", Duration::from_millis(50)).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    store.spawn(|_| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(store.flush(Duration::from_secs(2)).await);
    assert!(done.load(std::sync::atomic::Ordering::SeqCst), "flush returned before the write");

    store.spawn(|_| std::future::pending());
    let t = Instant::now();
    assert!(!store.flush(Duration::from_millis(50)).await, "a stuck write cannot hold shutdown");
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// A kept claim outlives its short lease; once the keeper drops, it expires one lease later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_claim_is_renewed_and_expires_once_dropped() -> TestResult {
    let server = TestServer::start().await?;
    let store = store_on(&server)?;
    let lease = Duration::from_secs(1);
    assert_eq!(store.idem_claim("kc", "fp", "a", lease).await?, Claim::Claimed);
    let keeper = store.keep_claim("kc", "a", lease);
    tokio::time::sleep(lease * 3).await; // renewed every 250 ms meanwhile
    assert_eq!(store.idem_wait("kc", Instant::now()).await?, WaitResult::Running);
    drop(keeper);
    let far = Instant::now() + Duration::from_secs(30);
    assert_eq!(store.idem_wait("kc", far).await?, WaitResult::Gone);
    Ok(())
}
