//! `state.backend: redis` with a real `redis-server` and two real `tidegate serve` processes in
//! front of one HTTP mock upstream: idempotency, budgets and rpm are shared by both replicas;
//! with Redis stopped both keep answering (policy `local`) and count the degradation; when
//! Redis returns, sharing resumes by itself.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tidegate::providers::mock::MockStats;

use crate::common::*;
use crate::redis_server::{TestServer, free_port};
use crate::sockets::mock_server;

struct Replica {
    child: Child,
    data: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MODEL: &str = "m+latency=300ms";

async fn replica(redis: &str, mock: SocketAddr, name: &str) -> Replica {
    let (data, admin) = (free_port().unwrap(), free_port().unwrap());
    let dir = std::env::temp_dir().join(format!("tidegate-shared-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tidegate.yaml");
    let target = format!("[{{provider: remote, model: \"{MODEL}\"}}]");
    std::fs::write(
        &cfg,
        format!(
            "server: {{listen: 127.0.0.1:{data}, admin_listen: 127.0.0.1:{admin}}}\n\
             state: {{backend: redis, url: \"{redis}\", prefix: \"it{pid}:\", timeout: 200ms}}\n\
             models:\n  \"{MODEL}\": {{input: 1.0, output: 1.0, context: 100000}}\n\
             providers:\n  remote: {{kind: openai_compatible, base_url: \"http://{mock}/v1\"}}\n\
             routes:\n  r:\n    default: true\n    retries: {{per_target: 0}}\n    targets: {target}\n\
             \x20 budgeted:\n    limits: {{max_output_tokens: 10, budget: {{usd: 0.0011, per: 1h}}}}\n    targets: {target}\n\
             \x20 limited:\n    limits: {{rpm: 4}}\n    targets: {target}\n\
             \x20 short:\n    timeouts: {{total: 6s}}\n    targets: {target}\n\
             \x20 stallbudget:\n    limits: {{max_output_tokens: 10, budget: {{usd: 1, per: 1h}}}}\n    targets: {target}\n",
            pid = std::process::id()
        ),
    )
    .unwrap();
    let child = spawn_serve(&cfg, &dir);
    let r = Replica {
        child,
        data: ([127, 0, 0, 1], data).into(),
        admin: ([127, 0, 0, 1], admin).into(),
    };
    let t0 = Instant::now();
    while send(r.admin, "GET", "/readyz", "", None).await.is_none_or(|g| g.status != 200) {
        assert!(t0.elapsed() < Duration::from_secs(20), "tidegate {name} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Option<Got> {
    let client = tidegate::providers::client::build(Duration::from_secs(2)).ok()?;
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp =
        client.request(req.body(Full::new(Bytes::from(body.to_owned()))).ok()?).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some(Got { status: parts.status, headers: parts.headers, body })
}

async fn chat_to(r: &Replica, route: &str, key: Option<&str>) -> Got {
    let path = format!("/r/{route}/v1/chat/completions");
    send(r.data, "POST", &path, &chat("x"), key).await.expect("the replica answered")
}

fn calls(stats: &MockStats) -> u64 {
    stats.get(MODEL).calls
}

async fn state_errors(r: &Replica) -> f64 {
    let text =
        send(r.admin, "GET", "/metrics", "", None).await.map(|g| g.text()).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("tidegate_state_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The same key sent to both replicas at once: one upstream call, identical answers.
async fn one_call_for_a_key_across_replicas(
    a: &Replica,
    b: &Replica,
    stats: &MockStats,
    key: &str,
) {
    let before = calls(stats);
    let (ga, gb) = tokio::join!(chat_to(a, "r", Some(key)), chat_to(b, "r", Some(key)));
    assert_eq!(
        (ga.status.as_u16(), gb.status.as_u16()),
        (200, 200),
        "{} / {}",
        ga.text(),
        gb.text()
    );
    assert_eq!(ga.body, gb.body);
    assert_eq!(calls(stats) - before, 1, "key {key}: one upstream call for both replicas");
    let replays =
        [&ga, &gb].iter().filter(|g| g.header("x-tidegate-idempotent-replay") == "true").count();
    assert_eq!(replays, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_keys_budgets_and_limits_through_redis() {
    let mut redis = Some(TestServer::start().await.unwrap_or_else(|e| panic!("{e}")));
    let (port, url) = redis.as_ref().map(|r| (r.port(), r.url())).unwrap_or_default();
    let (mock, stats) = mock_server().await;
    let a = replica(&url, mock, "a").await;
    let b = replica(&url, mock, "b").await;

    one_call_for_a_key_across_replicas(&a, &b, &stats, "job-1").await;

    // A budget of about 50 worst cases, 120 requests at once over both replicas: the shared
    // reservations never let them overshoot together.
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let target = if i % 2 == 0 { a.data } else { b.data };
            tokio::spawn(async move {
                send(target, "POST", "/r/budgeted/v1/chat/completions", &chat("x"), None).await
            })
        })
        .collect();
    let (mut paid, mut refused, mut spent) = (0, 0, 0u64);
    for t in tasks {
        let g = t.await.unwrap().expect("answered");
        match g.status.as_u16() {
            200 => {
                paid += 1;
                let usd: f64 = g.header("x-tidegate-cost-usd").parse().unwrap();
                spent += (usd * 1e6).round() as u64;
            }
            429 => {
                assert_eq!(g.error_code(), "budget_exhausted");
                refused += 1;
            }
            s => panic!("unexpected {s}: {}", g.text()),
        }
    }
    assert_eq!(paid + refused, 120);
    assert!((40..=50).contains(&paid), "paid {paid}: a per-replica budget would admit up to 100");
    assert!(spent <= 1100, "spent {spent} over the shared 1100 budget");

    // rpm 4 shared: two on each replica, then either refuses.
    for r in [&a, &b, &a, &b] {
        assert_eq!(chat_to(r, "limited", None).await.status, 200);
    }
    let got = chat_to(&b, "limited", None).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.error_code(), "rate_limited");

    // Redis stops: both keep answering on local state, and say so in a metric.
    let before_errors = state_errors(&a).await + state_errors(&b).await;
    // Redis stops while a keyed request it claimed is running: a duplicate on the same
    // replica waits for it (helper-49: it ran too, a second call and a second bill).
    let before = calls(&stats);
    let data = a.data;
    let path = "/r/r/v1/chat/completions";
    let first =
        tokio::spawn(async move { send(data, "POST", path, &chat("x"), Some("mid")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.take();
    let dup = chat_to(&a, "r", Some("mid")).await;
    let first = first.await.unwrap().expect("the first request was answered");
    assert_eq!((first.status.as_u16(), dup.status.as_u16()), (200, 200), "{}", dup.text());
    assert_eq!(first.body, dup.body);
    assert_eq!(calls(&stats) - before, 1, "a duplicate ran beside its owner when Redis went down");
    let t0 = Instant::now();
    for (i, r) in [&a, &b, &a, &b].into_iter().enumerate() {
        let got = chat_to(r, "r", Some(&format!("down-{i}"))).await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "requests must not hang on a dead Redis");
    assert!(state_errors(&a).await + state_errors(&b).await > before_errors);
    // Keys are still deduplicated per replica (helper-49: a duplicate on the same replica ran
    // too): one call for two at once, and a replay of what this replica answered.
    let before = calls(&stats);
    let (g1, g2) =
        tokio::join!(chat_to(&a, "r", Some("down-dup")), chat_to(&a, "r", Some("down-dup")));
    assert_eq!((g1.status.as_u16(), g2.status.as_u16()), (200, 200), "{}", g2.text());
    assert_eq!(g1.body, g2.body);
    assert_eq!(
        chat_to(&a, "r", Some("down-0")).await.header("x-tidegate-idempotent-replay"),
        "true"
    );
    assert_eq!(calls(&stats) - before, 1, "one call for a key on one replica while Redis is down");

    // Redis returns on the same port (empty): sharing resumes by itself.
    let _back = TestServer::start_on(port).await.unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let key = format!("back-{n}");
        let before = calls(&stats);
        let (ga, gb) = tokio::join!(chat_to(&a, "r", Some(&key)), chat_to(&b, "r", Some(&key)));
        if ga.body == gb.body && calls(&stats) - before == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "sharing did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    one_call_for_a_key_across_replicas(&a, &b, &stats, "after-restart").await;
    // What a replica answered while Redis was down is still its answer there.
    let before = calls(&stats);
    let got = chat_to(&a, "r", Some("down-dup")).await;
    assert_eq!(got.header("x-tidegate-idempotent-replay"), "true", "{}", got.text());
    assert_eq!(calls(&stats), before);
}

/// Sends SIGSTOP or SIGCONT to the test's redis-server.
fn signal(redis: &TestServer, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &redis.pid().to_string()]).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill {sig} failed");
}

/// Redis stalls (SIGSTOP) while a keyed request claims its key: the claim times out, the
/// request is served on local state, and the queued claim lands in Redis when it resumes. That
/// claim must not leave the key "running" (owned by nobody) for the route's whole deadline: a
/// retry with the key is answered, not held until its own deadline and then refused with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_landing_after_a_redis_stall_does_not_block_the_key() {
    let redis = TestServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let (mock, _stats) = mock_server().await;
    let a = replica(&redis.url(), mock, "stall").await;
    // The connection is up before the stall.
    assert_eq!(chat_to(&a, "short", Some("warm")).await.status, 200);

    signal(&redis, "-STOP");
    let stalled = send(a.data, "POST", "/r/short/v1/chat/completions", &chat("x"), Some("k")).await;
    signal(&redis, "-CONT");
    let stalled = stalled.expect("answered during the stall");
    assert_eq!(stalled.status, 200, "{}", stalled.text());
    assert!(state_errors(&a).await > 0.0, "the claim did not go through the stall path");

    // The retry (route deadline 6 s) executes or replays; before the fix the claim that landed
    // late held the key for total + 10 s, so the retry waited 6 s and got 409.
    let t0 = Instant::now();
    let retry = chat_to(&a, "short", Some("k")).await;
    assert_eq!(retry.status, 200, "after {:?}: {}", t0.elapsed(), retry.text());
}

/// What the budget hashes of `route` hold as `reserved`, summed over its windows.
async fn reserved_in_redis(url: &str, route: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("it{}:budget:{route}:*", std::process::id());
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut c).await.unwrap();
    let mut sum = 0;
    for k in keys.iter().filter(|k| !k.ends_with(":holds")) {
        let r: Option<u64> =
            redis::cmd("HGET").arg(k).arg("reserved").query_async(&mut c).await.unwrap();
        sum += r.unwrap_or(0);
    }
    sum
}

/// Redis stalls while a request reserves budget: the reserve times out, the request is served
/// on the local ledger, and the queued reserve lands when Redis resumes. Nobody settles it, so
/// it must be cancelled, not held in the shared window until the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_reserve_landing_after_a_redis_stall_is_cancelled() {
    let redis = TestServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let (mock, _stats) = mock_server().await;
    let a = replica(&redis.url(), mock, "stallbudget").await;
    assert_eq!(chat_to(&a, "stallbudget", None).await.status, 200);
    // The settle is a write spawned as the request ends: it may land just after the answer.
    let t0 = Instant::now();
    while reserved_in_redis(&redis.url(), "stallbudget").await != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the first request's hold was not settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    signal(&redis, "-STOP");
    let path = "/r/stallbudget/v1/chat/completions";
    let stalled = send(a.data, "POST", path, &chat("x"), None).await;
    signal(&redis, "-CONT");
    assert_eq!(stalled.expect("answered during the stall").status, 200);
    assert!(state_errors(&a).await > 0.0, "the reserve did not go through the stall path");

    let t0 = Instant::now();
    while reserved_in_redis(&redis.url(), "stallbudget").await != 0 {
        assert!(t0.elapsed() < Duration::from_secs(15), "the late reservation was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
