//! Rollback targets: rollback follows the order versions were activated in, and what was
//! active survives in the bounded history however many files are rejected or deferred.

use tidegate::app::StateDir;
use tidegate::config::reload::{Outcome, ReloadResult};

use super::{TempDir, active, start_file, version_of, versioned};
use crate::common::{chat, post};

/// A -> B -> rollback (A, pinned) -> unpin -> C -> rollback gives A: B was rolled back from,
/// and A is what served before C. Chained rollbacks keep following what was active.
#[tokio::test]
async fn rollback_follows_activation_order() {
    let dir = TempDir::new("rb-order");
    let path = dir.join("tidegate.yaml");
    let [a, b, c] = ["A", "B", "C"].map(|l| versioned(l, "a"));
    std::fs::write(&path, &a).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    std::fs::write(&path, &b).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&b)));
    let doc = r.reloader.rollback().await.unwrap();
    assert_eq!((doc.active.version.as_str(), doc.pinned), (&*version_of(&a), true));
    let doc = r.reloader.unpin().await.unwrap();
    assert_eq!((doc.active.version.as_str(), doc.pinned), (&*version_of(&a), false));
    std::fs::write(&path, &c).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&c)));
    let doc = r.reloader.rollback().await.unwrap();
    assert_eq!(doc.active.version, version_of(&a), "rolled back to {:?}", doc.active.label);
    assert_eq!(active(&r), version_of(&a));
    // Nothing was active before A: B was rolled back from.
    let e = r.reloader.rollback().await.unwrap_err();
    assert_eq!((e.status, e.code), (409, "no_previous_version"));

    // Chained: D, E, F applied in turn; rollbacks step back E, D, then A.
    r.reloader.unpin().await.unwrap();
    let [d, e, f] = ["D", "E", "F"].map(|l| versioned(l, "a"));
    for y in [&d, &e, &f] {
        std::fs::write(&path, y).unwrap();
        assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(y)));
    }
    for want in [&e, &d, &a] {
        let doc = r.reloader.rollback().await.unwrap();
        assert_eq!(doc.active.version, version_of(want), "got {:?}", doc.active.label);
    }
    r.shutdown().await;
}

/// Ten candidates arriving behind a pin, or ten rejected edits, do not push the version that
/// served before out of the 10-entry history: rollback still has its target, and that
/// version's request series stays.
#[tokio::test]
async fn rejected_and_deferred_files_keep_rollback_targets() {
    let dir = TempDir::new("rb-evict");
    let path = dir.join("tidegate.yaml");
    let (a, b) = (versioned("A", "a"), versioned("B", "b"));
    std::fs::write(&path, &a).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    assert_eq!(post(&r.gateway, "/v1/chat/completions", &chat("x")).await.status, 200);
    std::fs::write(&path, &b).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&b)));
    r.reloader.pin(None).await.unwrap();
    for i in 1..=12 {
        let y = versioned(&format!("C{i}"), "a");
        std::fs::write(&path, &y).unwrap();
        assert_eq!(r.reloader.reload_now().await, ReloadResult::Deferred(version_of(&y)));
    }
    let doc = r.reloader.status();
    assert!(doc.history.len() <= 10, "{}", doc.history.len());
    assert_eq!(doc.candidates[0].label.as_deref(), Some("C12"));
    let doc = r.reloader.rollback().await.unwrap();
    assert_eq!(doc.active.version, version_of(&a));
    let series = format!("tidegate_requests_total{{config_version=\"{}\"", version_of(&a));
    let text = String::from_utf8(r.gateway.metrics.render()).unwrap();
    assert!(text.contains(&series), "the series of A was dropped");

    // Unpinned on C12, then twelve bad edits: A and the rolled-back-to chain stay.
    let doc = r.reloader.unpin().await.unwrap();
    assert_eq!(doc.active.label.as_deref(), Some("C12"));
    let good = versioned("C12", "a");
    for i in 1..=12 {
        std::fs::write(&path, format!("{good}bogus{i}: 1\n")).unwrap();
        assert!(matches!(r.reloader.reload_now().await, ReloadResult::Rejected(_)));
    }
    let doc = r.reloader.status();
    assert!(doc.history.len() <= 10, "{}", doc.history.len());
    assert_eq!(doc.history[0].outcome, Outcome::Rejected);
    let doc = r.reloader.rollback().await.unwrap();
    assert_eq!(doc.active.version, version_of(&a));
    r.shutdown().await;
}
