//! Key files rotated under a running version, against the rest of the lifecycle: an unchanged
//! check changes nothing, a bad key file is reported once and beside (never instead of) a bad
//! config file, and a new version clears what the old one's files did. (The rotation itself,
//! keys and CA files, is in `tls_upstream.rs`.)

use std::sync::Arc;

use tidegate::app::StateDir;
use tidegate::config::reload::ReloadResult;

use super::{TempDir, start_file};
use crate::common::metric;

const REJECTED: &str = "tidegate_config_reloads_total{result=\"rejected\"}";

fn config(label: &str, key: &std::path::Path) -> String {
    format!(
        "label: {label}\nproviders:\n  a: {{kind: mock, api_key_file: \"{}\"}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: a, model: m}}]\n",
        key.display()
    )
}

#[tokio::test]
async fn key_file_errors_are_reported_once_and_beside_config_errors() {
    let dir = TempDir::new("sources");
    let (key, path) = (dir.join("api-key"), dir.join("tidegate.yaml"));
    std::fs::write(&key, "sk-one").unwrap();
    std::fs::write(&path, config("one", &key)).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let error = || r.reloader.status().last_error.unwrap_or_default();

    // Nothing changed: the running snapshot stays as it is.
    let before = r.gateway.snapshot();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    assert!(Arc::ptr_eq(&before, &r.gateway.snapshot()), "an unchanged check prepared again");
    drop(before);

    // A key file gone bad: reported once (log, counter, last_error), not at every check.
    std::fs::write(&key, "").unwrap();
    r.reloader.reload_now().await;
    r.reloader.reload_now().await;
    assert!(error().contains("is empty"), "{}", error());
    assert_eq!(metric(&r.gateway, REJECTED), 1.0);

    // A bad config file meanwhile: both are shown, and fixing the key leaves the config's.
    std::fs::write(&path, "routes: [\n").unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Rejected(_)));
    assert!(error().contains("is empty") && error().contains("tidegate.yaml"), "{}", error());
    std::fs::write(&key, "sk-two").unwrap();
    r.reloader.reload_now().await;
    assert!(!error().contains("is empty") && error().contains("tidegate.yaml"), "{}", error());
    assert_eq!(metric(&r.gateway, REJECTED), 2.0);

    // Broken again, then fixed by a new version (config and key changed together): the new
    // version read the good key, so the same break later is reported again.
    std::fs::write(&key, "").unwrap();
    r.reloader.reload_now().await;
    assert!(error().contains("is empty"), "{}", error());
    std::fs::write(&key, "sk-three").unwrap();
    std::fs::write(&path, config("two", &key)).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Applied(_)));
    assert_eq!(r.reloader.status().last_error, None);
    std::fs::write(&key, "").unwrap();
    r.reloader.reload_now().await;
    assert!(error().contains("is empty"), "{}", error());
    assert_eq!(metric(&r.gateway, REJECTED), 4.0);

    // While pinned, a new valid file is a candidate; it does not hide the active version's
    // bad key.
    r.reloader.pin(None).await.unwrap();
    std::fs::write(&path, config("three", &dir.join("other-key"))).unwrap();
    std::fs::write(dir.join("other-key"), "sk-other").unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Deferred(_)));
    assert!(error().contains("is empty"), "{}", error());
    r.shutdown().await;
}

/// A new version whose key file does not exist yet is rejected, and applied at the next check
/// once the file appears, with no change to the config file (Kubernetes syncs a Secret's
/// volume apart from the ConfigMap's, so the config often comes first). helper-47: it stayed
/// rejected, with a stale error, until the config file changed again. Pinned, it becomes the
/// candidate the same way. A retry that fails the same way is not reported again.
#[tokio::test]
async fn a_version_waiting_for_its_key_file_is_applied_when_the_file_appears() {
    let dir = TempDir::new("late-key");
    let (key, path) = (dir.join("api-key"), dir.join("tidegate.yaml"));
    std::fs::write(&key, "sk-one").unwrap();
    std::fs::write(&path, config("one", &key)).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let error = || r.reloader.status().last_error.unwrap_or_default();

    let late = dir.join("late-key");
    std::fs::write(&path, config("two", &late)).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Rejected(_)));
    assert!(error().contains("late-key"), "{}", error());
    assert!(error().starts_with(&path.display().to_string()), "names the file: {}", error());
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    assert_eq!(metric(&r.gateway, REJECTED), 1.0, "the same failure was reported again");

    std::fs::write(&late, "sk-late").unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Applied(_)));
    assert_eq!(r.reloader.status().active.label.as_deref(), Some("two"));
    assert_eq!(r.reloader.status().last_error, None);

    // Pinned: the waiting version becomes a candidate once its file is there.
    r.reloader.pin(None).await.unwrap();
    let later = dir.join("later-key");
    std::fs::write(&path, config("three", &later)).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Rejected(_)));
    std::fs::write(&later, "sk-later").unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Deferred(_)));
    assert_eq!(r.reloader.status().last_error, None);
    r.shutdown().await;
}
