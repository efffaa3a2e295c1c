//! Metric series across reloads: those of a version gone from the history (10 kept) are
//! dropped, and so are those of the routes and targets no retained version has.

use std::time::Duration;

use tidegate::app::{Running, StateDir};
use tidegate::config::reload::ReloadResult;

use super::{TempDir, start_file, version_of, versioned};
use crate::common::{chat, chat_stream, metric, post};

/// The request series of versions gone from the history (10 kept) are dropped: a process
/// reloaded often does not export every version it ever ran.
#[tokio::test]
async fn metric_series_of_retired_versions_are_dropped() {
    let dir = TempDir::new("series");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("v0", "a")).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let versions = |r: &Running| {
        let text = String::from_utf8(r.gateway.metrics.render()).unwrap();
        let mut seen: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("tidegate_requests_total{"))
            .filter_map(|l| {
                l.split("config_version=\"").nth(1)?.split('"').next().map(String::from)
            })
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    let first = version_of(&versioned("v0", "a"));
    assert!(post(&r.gateway, "/v1/chat/completions", &chat("x")).await.status == 200);
    assert!(versions(&r).contains(&first));
    // A stream of the first version still running while it is retired.
    let req = http::Request::post("/r/slow/v1/chat/completions")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat_stream("x"))))
        .unwrap();
    let mut stream = r.gateway.handle(req).await.into_body();
    assert!(http_body_util::BodyExt::frame(&mut stream).await.is_some());
    for i in 1..=15 {
        let yaml = versioned(&format!("v{i}"), "a");
        std::fs::write(&path, &yaml).unwrap();
        assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&yaml)));
    }
    // Its client leaves: its outcome (aborted) does not bring the retired version's series back.
    drop(stream);
    // Its record is done once the stream is no longer in flight.
    let inflight = "tidegate_inflight_requests{route=\"slow\"}";
    let settled = async {
        while metric(&r.gateway, inflight) != 0.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled).await.expect("the stream never ended");
    let aborted = format!(
        "tidegate_requests_total{{config_version=\"{first}\",outcome=\"aborted\",route=\"slow\"}}"
    );
    assert_eq!(metric(&r.gateway, &aborted), 0.0);
    let left = versions(&r);
    assert_eq!(left.len(), 10, "{left:?}");
    assert!(!left.contains(&first), "{left:?}");
    assert!(left.contains(&version_of(&versioned("v15", "a"))), "{left:?}");
    r.shutdown().await;
}

/// helper-53: routes and targets renamed away kept their series for good (run B of the soak:
/// 2,897 to 6,788 lines in 13 minutes), and a target removed while its breaker was open kept
/// `tidegate_circuit_open 1`. Once no retained version has a name, its series go.
#[tokio::test]
async fn series_of_names_no_retained_version_has_are_dropped() {
    let dir = TempDir::new("names");
    let path = dir.join("tidegate.yaml");
    let named = |i: usize| {
        format!(
            "providers:\n  a: {{kind: mock}}\nroutes:\n  r{i}:\n    default: true\n    retries: {{per_target: 0}}\n    targets: [{{provider: a, model: \"m{i}+status=500\"}}, {{provider: a, model: keep}}]\n"
        )
    };
    std::fs::write(&path, named(0)).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    // Five failures open the first target's breaker.
    for _ in 0..5 {
        assert_eq!(post(&r.gateway, "/v1/chat/completions", &chat("x")).await.status, 200);
    }
    let open0 = "tidegate_circuit_open{model=\"m0+status=500\",provider=\"a\"}";
    assert_eq!(metric(&r.gateway, open0), 1.0);
    let text = |r: &Running| String::from_utf8(r.gateway.metrics.render()).unwrap();
    assert!(text(&r).contains("route=\"r0\""));
    for i in 1..=11 {
        std::fs::write(&path, named(i)).unwrap();
        assert!(matches!(r.reloader.reload_now().await, ReloadResult::Applied(_)));
        let now = text(&r);
        // Still in the history: kept.
        assert!(now.contains(&format!("route=\"r{}\"", i.saturating_sub(9))), "{i}");
    }
    let now = text(&r);
    for gone in
        ["route=\"r0\"", "route=\"r1\"", "model=\"m0+status=500\"", "model=\"m1+status=500\""]
    {
        assert!(!now.contains(gone), "{gone} left:\n{now}");
    }
    for kept in ["route=\"r11\"", "route=\"r2\"", "model=\"keep\"", "model=\"m11+status=500\""] {
        assert!(now.contains(kept), "{kept} gone:\n{now}");
    }
    // The target every version has keeps its series (and their counts).
    let served = "tidegate_upstream_attempts_total{model=\"keep\",outcome=\"ok\",provider=\"a\",reason=\"ok\"}";
    assert_eq!(metric(&r.gateway, served), 5.0);
    r.shutdown().await;
}
