//! Restarts with a pin in the state dir: a bad or missing config file does not stop a pinned
//! process from serving its pinned version.

use tidegate::app::{self, Boot, Running, StartOptions, StateDir};
use tidegate::config::reload::{Outcome, ReloadResult};
use tidegate::proxy::record::LogSink;

use super::{TempDir, active, start_file, version_of, versioned};
use crate::common::{chat, metric, post};

/// Starts as `tidegate serve` does: through [`Boot::load`].
async fn serve(path: &std::path::Path, state: &std::path::Path) -> Result<Running, String> {
    let boot = Boot::load(path, &StateDir::At(state.to_owned()))?;
    let opts = StartOptions {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        log_sink: LogSink::Discard,
        state_dir: StateDir::At(state.to_owned()),
        admin_token: Some(String::new()),
        watch: false,
        workers: None,
    };
    app::start_boot(boot, opts).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn pinned_process_starts_on_a_bad_or_missing_file() {
    let dir = TempDir::new("pinned-bad");
    let (path, state) = (dir.join("tidegate.yaml"), dir.join("state"));
    let (a, b) = (versioned("A", "a"), versioned("B", "b"));
    std::fs::write(&path, &a).unwrap();
    let r = start_file(&path, StateDir::At(state.clone()), "", false).await;
    r.reloader.pin(None).await.unwrap();
    r.shutdown().await;

    // Invalid file: the pinned version serves, the file's problem is the last error.
    std::fs::write(&path, format!("{a}bogus: 1\n")).unwrap();
    let r = serve(&path, &state).await.unwrap();
    assert_eq!(active(&r), version_of(&a));
    let got = post(&r.gateway, "/v1/chat/completions", &chat("x")).await;
    assert_eq!((got.status.as_u16(), got.header("x-tidegate-config-version")), (200, &*active(&r)));
    let doc = r.reloader.status();
    assert!(doc.pinned, "{doc:?}");
    assert!(doc.last_error.as_deref().unwrap_or("").contains("unknown field `bogus`"), "{doc:?}");
    assert_eq!(doc.history[0].outcome, Outcome::Rejected);
    assert_eq!(doc.active.outcome, Outcome::Restored);
    // Reported once, not again by the first check.
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    assert_eq!(metric(&r.gateway, "tidegate_config_reloads_total{result=\"rejected\"}"), 1.0);
    r.shutdown().await;

    // Missing file: the same; a good file later is a candidate behind the pin.
    std::fs::remove_file(&path).unwrap();
    let r = serve(&path, &state).await.unwrap();
    assert_eq!(active(&r), version_of(&a));
    let doc = r.reloader.status();
    assert!(doc.last_error.as_deref().unwrap_or("").contains("cannot read config file"), "{doc:?}");
    std::fs::write(&path, &b).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Deferred(version_of(&b)));
    assert_eq!(r.reloader.status().last_error, None);
    let doc = r.reloader.unpin().await.unwrap();
    assert_eq!(doc.active.version, version_of(&b));
    r.shutdown().await;

    // Without a pin a bad file stays a startup error.
    std::fs::write(&path, format!("{b}bogus: 1\n")).unwrap();
    let e = serve(&path, &state).await.err().unwrap();
    assert!(e.contains("unknown field `bogus`"), "{e}");
}

/// After a rollback the file still holds the version rolled back from; a restart does not
/// offer it as a candidate, so unpin keeps the rolled-back version, as without the restart.
/// Once the file changes, its version is a candidate again, also across a restart.
#[tokio::test]
async fn rolled_back_from_version_is_no_candidate_after_a_restart() {
    let dir = TempDir::new("rb-restart");
    let (path, state) = (dir.join("tidegate.yaml"), dir.join("state"));
    let [b, c, d] = ["B", "C", "D"].map(|l| versioned(l, "a"));
    std::fs::write(&path, &b).unwrap();
    let r = start_file(&path, StateDir::At(state.clone()), "", false).await;
    std::fs::write(&path, &c).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&c)));
    r.reloader.rollback().await.unwrap();
    r.shutdown().await;

    let r = serve(&path, &state).await.unwrap();
    let doc = r.reloader.status();
    assert_eq!((doc.active.version.as_str(), doc.pinned), (&*version_of(&b), true));
    let labels: Vec<_> = doc.candidates.iter().map(|c| c.label.clone()).collect();
    assert!(labels.is_empty(), "candidates after the restart: {labels:?}");
    let doc = r.reloader.unpin().await.unwrap();
    assert_eq!(doc.active.version, version_of(&b), "unpin re-activated the rolled-back-from C");
    // Pinned again on B, the file moves on to D: D is a candidate after a restart.
    r.reloader.pin(None).await.unwrap();
    std::fs::write(&path, &d).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Deferred(version_of(&d)));
    r.shutdown().await;
    let r = serve(&path, &state).await.unwrap();
    let doc = r.reloader.status();
    let candidates: Vec<_> = doc.candidates.iter().map(|c| c.version.clone()).collect();
    assert_eq!(candidates, [version_of(&d)]);
    r.shutdown().await;
}

/// A pin restored over a file whose static settings differ: the process runs the file's (it
/// bound them before it knew the pin), and `restart_required` says which keys differ instead of
/// nothing (helper-27 D1).
#[tokio::test]
async fn a_pin_restored_over_other_static_settings_says_so() {
    let dir = TempDir::new("pinned-static");
    let (path, state) = (dir.join("tidegate.yaml"), dir.join("state"));
    let a = versioned("A", "a");
    std::fs::write(&path, &a).unwrap();
    let r = start_file(&path, StateDir::At(state.clone()), "", false).await;
    r.reloader.pin(None).await.unwrap();
    r.shutdown().await;
    let b = format!("server: {{max_body_bytes: 1MiB}}\n{}", versioned("B", "b"));
    std::fs::write(&path, &b).unwrap();
    let r = serve(&path, &state).await.unwrap();
    assert_eq!(active(&r), version_of(&a));
    let doc = r.reloader.status();
    let note = doc.restart_required.as_deref().unwrap_or("");
    assert!(note.contains("server.max_body_bytes") && note.contains(&version_of(&a)), "{doc:?}");
    r.shutdown().await;
}

/// The remaining-budget series follow the active version only: a candidate deferred behind a
/// pin (prepared, never activated) that drops a route's budget leaves the active route's
/// series alone; activating it removes the series (helper-34).
#[tokio::test]
async fn budget_series_follow_the_active_version() {
    let dir = TempDir::new("budget-series");
    let path = dir.join("tidegate.yaml");
    let with = "providers:\n  a: {kind: mock}\nmodels:\n  m: {input: 1.0, output: 1.0}\nroutes:\n  r:\n    default: true\n    limits: {max_output_tokens: 10, budget: {usd: 5, per: 1h}}\n    targets: [{provider: a, model: m}]\n";
    let without = with.replace("budget: {usd: 5, per: 1h}", "rpm: 100");
    std::fs::write(&path, with).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let series = "tidegate_budget_remaining_usd{route=\"r\"}";
    let present =
        |r: &Running| String::from_utf8(r.gateway.metrics.render()).unwrap().contains(series);
    assert!(present(&r));
    r.reloader.pin(None).await.unwrap();
    // A candidate with a route and model never served adds no series (helper-35).
    let extra =
        format!("{without}  newroute:\n    targets: [{{provider: a, model: fresh-model}}]\n");
    std::fs::write(&path, &extra).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Deferred(_)));
    let text = String::from_utf8(r.gateway.metrics.render()).unwrap();
    assert!(!text.contains("fresh-model") && !text.contains("newroute"), "{text}");
    std::fs::write(&path, &without).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Deferred(_)));
    assert!(present(&r), "a deferred candidate removed the active version's series");
    assert_eq!(metric(&r.gateway, series), 5.0);
    r.reloader.unpin().await.unwrap();
    assert_eq!(active(&r), version_of(&without));
    assert!(!present(&r), "the active version has no budget: no series");
    // Back to the budget, then a version without the route at all: its series goes with it.
    std::fs::write(&path, with).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Applied(_)));
    assert!(present(&r));
    std::fs::write(&path, with.replace("  r:\n", "  s:\n")).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Applied(_)));
    assert!(!present(&r), "a removed route keeps no budget series");
    r.shutdown().await;
}
