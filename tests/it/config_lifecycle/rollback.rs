//! Rollback targets: rollback follows the order versions were activated in, and what was
//! active survives in the bounded history however many files are rejected or deferred.

use tidegate::app::StateDir;
use tidegate::config::reload::ReloadResult;

use super::{TempDir, active, start_file, version_of, versioned};

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
