//! Config lifecycle (SPEC §8): swaps under load, bad files, pin / unpin / rollback, restarts
//! with a persisted pin. Watch-driven reloads are in `watch.rs`, the admin API's auth and the
//! `tidegate config` CLI in `admin.rs`.

mod admin;
mod restart;
mod rollback;
mod series;
mod sources;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tidegate::app::{self, Running, StartOptions, StateDir};
use tidegate::config::Config;
use tidegate::config::reload::ReloadResult;
use tidegate::gateway::Gateway;
use tidegate::proxy::record::LogSink;

use crate::common::{chat, chat_stream, metric, post};

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tidegate-it-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config whose label names it; the default route `r` and the route `slow` go to `provider`.
pub fn versioned(label: &str, provider: &str) -> String {
    format!(
        "label: \"{label}\"\nproviders:\n  a: {{kind: mock}}\n  b: {{kind: mock}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: {provider}, model: \"m+chunks=5+delay=2ms\"}}]\n  slow:\n    targets: [{{provider: {provider}, model: \"m+chunks=5+delay=40ms\"}}]\n"
    )
}

pub fn version_of(yaml: &str) -> String {
    tidegate::config::version_of(yaml.as_bytes())
}

/// Starts the gateway from a config file on loopback ports.
pub async fn start_file(path: &Path, state: StateDir, token: &str, watch: bool) -> Running {
    let cfg = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let opts = StartOptions {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        log_sink: LogSink::Discard,
        state_dir: state,
        admin_token: Some(token.to_owned()),
        watch,
        workers: None,
    };
    app::start(cfg, opts).await.unwrap()
}

pub fn active(r: &Running) -> String {
    r.gateway.snapshot().config.version.clone()
}

/// Polls until `version` is active; panics after `limit`. Returns how long it took.
pub async fn wait_active(gw: &Gateway, version: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while gw.snapshot().config.version != version {
        assert!(t0.elapsed() < limit, "{version} not active after {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

/// One admin request over HTTP: status and JSON body.
pub async fn admin(
    r: &Running,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = tidegate::providers::client::build(Duration::from_secs(2)).unwrap();
    let mut req = Request::builder().method(method).uri(format!("http://{}{path}", r.admin_addr));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await;
    let resp = resp.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

struct Seen {
    version: String,
    provider: String,
    start: Instant,
    end: Instant,
}

/// 20 swaps between versions with different targets under continuous traffic (2,000+ requests,
/// a quarter of them streams): nothing fails, every answer names a version that was active
/// while it ran and came from that version's target, and streams started before a swap finish
/// on their version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_nothing() {
    let dir = TempDir::new("load");
    let path = dir.join("tidegate.yaml");
    let first = versioned("swap-0", "a");
    std::fs::write(&path, &first).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let gw = r.gateway.clone();
    // (version, provider, activated no earlier than, activated no later than)
    let log = Arc::new(Mutex::new(vec![(version_of(&first), "a", Instant::now(), Instant::now())]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (gw, done) = (gw.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0usize;
            while !done.load(Ordering::SeqCst) || seen.len() < 350 {
                let stream = (i + w) % 4 == 0;
                let body = if stream { chat_stream("x") } else { chat("x") };
                let start = Instant::now();
                let got = post(&gw, "/v1/chat/completions", &body).await;
                let end = Instant::now();
                assert_eq!(got.status, 200, "{}", got.text());
                if stream {
                    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
                    assert!(!got.stream_text().is_empty());
                }
                let version = got.header("x-tidegate-config-version").to_owned();
                let provider = got.header("x-tidegate-provider").to_owned();
                seen.push(Seen { version, provider, start, end });
                i += 1;
            }
            seen
        }));
    }
    let mut slow_streams = Vec::new();
    for k in 1..=20 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let provider = if k % 2 == 0 { "a" } else { "b" };
        let yaml = versioned(&format!("swap-{k}"), provider);
        // A 200 ms stream that starts on the old version and ends after the swap.
        if k % 5 == 0 {
            let gw = gw.clone();
            let old = active(&r);
            slow_streams.push(tokio::spawn(async move {
                let got = post(&gw, "/v1/chat/completions", &chat_stream("slow")).await;
                (old, got)
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::write(&path, &yaml).unwrap();
        let before = Instant::now();
        assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&yaml)));
        log.lock().unwrap().push((version_of(&yaml), provider, before, Instant::now()));
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut versions_seen = std::collections::HashSet::new();
    let log = log.lock().unwrap().clone();
    for w in workers {
        for s in w.await.unwrap() {
            total += 1;
            versions_seen.insert(s.version.clone());
            let k = log.iter().position(|e| e.0 == s.version).unwrap_or_else(|| {
                panic!("unknown version {:?}", s.version);
            });
            assert_eq!(s.provider, log[k].1, "{} answered by the wrong target", s.version);
            // Active from (at the earliest) its swap began until (at the latest) the next ended.
            assert!(log[k].2 <= s.end, "{} answered before it was activated", s.version);
            if let Some(next) = log.get(k + 1) {
                assert!(next.3 >= s.start, "{} answered after it was replaced", s.version);
            }
        }
    }
    assert!(total >= 2000, "only {total} requests");
    // Traffic really ran across the swaps, not only before or after them.
    assert!(versions_seen.len() >= 15, "answers came from only {} versions", versions_seen.len());
    eprintln!(
        "swaps under load: {total} requests over 20 swaps from {} versions, none failed",
        versions_seen.len()
    );
    for s in slow_streams {
        let (old, got) = s.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-tidegate-config-version"), old, "stream moved versions");
        assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
        assert_eq!(got.stream_text().split_whitespace().count(), 5, "{}", got.text());
    }
    assert_eq!(metric(&gw, "tidegate_config_reloads_total{result=\"applied\"}"), 20.0);
    r.shutdown().await;
}

/// Syntax errors, unknown keys, unknown providers and half-written files are rejected with a
/// path-aware reason; the running version stays; the next good file is picked up.
#[tokio::test]
async fn bad_files_keep_the_running_version() {
    let dir = TempDir::new("bad");
    let path = dir.join("tidegate.yaml");
    let good = versioned("good", "a");
    std::fs::write(&path, &good).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let v0 = active(&r);
    let half = &good[..good.len() / 2];
    let cases = [
        ("routes: [\n".to_owned(), "tidegate.yaml"),
        (format!("bogus: 1\n{good}"), "unknown field `bogus`"),
        (
            good.replace("provider: a", "provider: c"),
            "routes.r.targets[0].provider: unknown provider \"c\"",
        ),
        (half.to_owned(), "tidegate.yaml"),
        // Valid, but preparing it fails (its key cannot be read): rejected before the swap.
        (
            good.replace("  b: {kind: mock}", "  b: {kind: openai_compatible, base_url: \"http://127.0.0.1:1/v1\", api_key_file: /nonexistent/tidegate-key}").replace("provider: a", "provider: b"),
            "key file",
        ),
    ];
    for (n, (text, want)) in cases.iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        match r.reloader.reload_now().await {
            ReloadResult::Rejected(msg) => assert!(msg.contains(want), "{msg}"),
            other => panic!("case {n}: {other:?}"),
        }
        assert_eq!(active(&r), v0);
        let got = post(&r.gateway, "/v1/chat/completions", &chat("x")).await;
        assert_eq!((got.status.as_u16(), got.header("x-tidegate-config-version")), (200, &*v0));
        let (status, doc) = admin(&r, "GET", "/admin/config", "", None).await;
        assert_eq!(status, 200);
        assert!(doc["last_error"].as_str().unwrap().contains(want), "{doc}");
        assert_eq!(doc["active"]["version"], v0.as_str());
        assert_eq!(doc["history"][0]["outcome"], "rejected");
        // The same bad content again is not re-counted.
        assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    }
    let rejected = "tidegate_config_reloads_total{result=\"rejected\"}";
    assert_eq!(metric(&r.gateway, rejected), cases.len() as f64);
    let next = versioned("next", "b");
    std::fs::write(&path, &next).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&next)));
    let doc = r.reloader.status();
    assert_eq!(doc.last_error, None);
    assert_eq!(doc.active.label.as_deref(), Some("next"));
    let info = format!("tidegate_config_info{{label=\"next\",version=\"{}\"}}", version_of(&next));
    assert_eq!(metric(&r.gateway, &info), 1.0);
    let old_info = format!("tidegate_config_info{{label=\"good\",version=\"{v0}\"}}");
    assert_eq!(metric(&r.gateway, &old_info), 0.0);
    r.shutdown().await;
}

/// A change to `server.*` applies the rest and says a restart is needed.
#[tokio::test]
async fn static_changes_are_reported() {
    let dir = TempDir::new("static");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("one", "a")).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let gauge = "tidegate_config_restart_required";
    assert!(String::from_utf8(r.gateway.metrics.render()).unwrap().contains(gauge));
    assert_eq!(metric(&r.gateway, gauge), 0.0);
    let two = format!("server: {{max_body_bytes: 1MiB}}\n{}", versioned("two", "b"));
    std::fs::write(&path, &two).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&two)));
    let note = r.reloader.status().restart_required.unwrap();
    assert!(note.contains("server.max_body_bytes"), "{note}");
    assert_eq!(metric(&r.gateway, gauge), 1.0, "the static change is on a metric too");
    let got = post(&r.gateway, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-provider"), "b");
    // Static means so until the restart: the running limit (8 MiB) still holds.
    let big = chat("x").replace("Hello there", &"tide ".repeat(300_000));
    let got = post(&r.gateway, "/v1/chat/completions", &big).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // `circuit_breaker` is read at start too (breakers outlive versions): said, not dropped.
    let three =
        format!("circuit_breaker: {{consecutive_failures: 2}}\n{}", versioned("three", "a"));
    std::fs::write(&path, &three).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Applied(version_of(&three)));
    let note = r.reloader.status().restart_required.unwrap();
    assert!(note.contains("circuit_breaker") && !note.contains("server."), "{note}");
    assert_eq!(metric(&r.gateway, gauge), 1.0);
    // Back to what the process runs with: nothing to restart for.
    std::fs::write(&path, versioned("one", "a")).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Applied(_)));
    assert_eq!(r.reloader.status().restart_required, None);
    assert_eq!(metric(&r.gateway, gauge), 0.0);
    r.shutdown().await;
}

/// Pin, a candidate, unpin, rollback (and 409 without a previous version), pin by prefix and by
/// label, and a restart that keeps serving the pinned version although the file changed.
#[tokio::test]
async fn pin_unpin_rollback_and_restart() {
    let dir = TempDir::new("pin");
    let state = dir.join("state");
    let path = dir.join("tidegate.yaml");
    let (y1, y2, y3) = (versioned("one", "a"), versioned("two", "b"), versioned("three", "a"));
    let (v1, v2, v3) = (version_of(&y1), version_of(&y2), version_of(&y3));
    std::fs::write(&path, &y1).unwrap();
    let r = start_file(&path, StateDir::At(state.clone()), "", false).await;

    let (status, doc) = admin(&r, "POST", "/admin/config/pin", "", None).await;
    assert_eq!((status, doc["pinned"].as_bool()), (200, Some(true)), "{doc}");
    assert_eq!(metric(&r.gateway, "tidegate_config_pinned"), 1.0);
    std::fs::write(&path, &y2).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Deferred(v2.clone()));
    assert_eq!(active(&r), v1);
    let doc = r.reloader.status();
    assert_eq!(doc.candidates.iter().map(|c| &c.version).collect::<Vec<_>>(), [&v2]);
    assert_eq!(metric(&r.gateway, "tidegate_config_reloads_total{result=\"deferred\"}"), 1.0);

    let (status, doc) = admin(&r, "POST", "/admin/config/unpin", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (doc["pinned"].as_bool(), doc["active"]["version"].as_str()),
        (Some(false), Some(&*v2))
    );
    assert_eq!(doc["candidates"].as_array().unwrap().len(), 0);

    let (status, doc) = admin(&r, "POST", "/admin/config/rollback", "", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        (doc["pinned"].as_bool(), doc["active"]["version"].as_str()),
        (Some(true), Some(&*v1))
    );
    assert_eq!(doc["active"]["outcome"], "rolled_back");
    let got = post(&r.gateway, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(got.header("x-tidegate-config-version"), v1);
    let (status, doc) = admin(&r, "POST", "/admin/config/rollback", "", None).await;
    assert_eq!((status, doc["error"]["code"].as_str()), (409, Some("no_previous_version")));

    // Pin by a version prefix, then by label; bad names are 404 / 400.
    let body = format!(r#"{{"version": "{}"}}"#, &v2[..10]);
    let (status, doc) = admin(&r, "POST", "/admin/config/pin", &body, None).await;
    assert_eq!((status, doc["active"]["version"].as_str()), (200, Some(&*v2)), "{doc}");
    let (status, doc) = admin(&r, "POST", "/admin/config/pin", r#"{"version":"one"}"#, None).await;
    assert_eq!((status, doc["active"]["version"].as_str()), (200, Some(&*v1)), "{doc}");
    let (status, doc) = admin(&r, "POST", "/admin/config/pin", r#"{"version":"nope"}"#, None).await;
    assert_eq!((status, doc["error"]["code"].as_str()), (404, Some("version_not_found")));
    let (status, _) = admin(&r, "POST", "/admin/config/pin", "{not json", None).await;
    assert_eq!(status, 400);
    // Only an object (or nothing) names a version; errors name no internal type.
    for body in ["[]", "null", "\"one\""] {
        let (status, doc) = admin(&r, "POST", "/admin/config/pin", body, None).await;
        let msg = doc["error"]["message"].as_str().unwrap_or("");
        assert_eq!(status, 400, "{body}: {doc}");
        assert!(msg.contains("expected a JSON object") && !msg.contains("PinBody"), "{doc}");
    }

    // A new file while pinned, then a restart: the pinned version is still served.
    std::fs::write(&path, &y3).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Deferred(v3.clone()));
    r.shutdown().await;
    let r = start_file(&path, StateDir::At(state.clone()), "", false).await;
    assert_eq!(active(&r), v1);
    let got = post(&r.gateway, "/v1/chat/completions", &chat("x")).await;
    assert_eq!((got.status.as_u16(), got.header("x-tidegate-config-version")), (200, &*v1));
    let doc = r.reloader.status();
    assert!(doc.pinned && doc.state.persistent, "{doc:?}");
    assert_eq!(doc.active.label.as_deref(), Some("one"));
    assert_eq!(doc.candidates.iter().map(|c| &c.version).collect::<Vec<_>>(), [&v3]);
    assert_eq!(metric(&r.gateway, "tidegate_config_pinned"), 1.0);

    // Unpin activates the file's version; a restart now starts unpinned on the file.
    let doc = r.reloader.unpin().await.unwrap();
    assert_eq!((doc.pinned, doc.active.version.as_str()), (false, &*v3));
    r.shutdown().await;
    let r = start_file(&path, StateDir::At(state), "", false).await;
    assert_eq!(active(&r), v3);
    assert!(!r.reloader.status().pinned);
    r.shutdown().await;
}

/// While pinned, a file that goes back to the active version drops the stale candidates, so
/// unpin keeps what the file asks for.
#[tokio::test]
async fn file_back_on_the_active_version_drops_candidates() {
    let dir = TempDir::new("revert");
    let path = dir.join("tidegate.yaml");
    let (y1, y2) = (versioned("one", "a"), versioned("two", "b"));
    std::fs::write(&path, &y1).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    r.reloader.pin(None).await.unwrap();
    std::fs::write(&path, &y2).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Deferred(version_of(&y2)));
    std::fs::write(&path, &y1).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    assert!(r.reloader.status().candidates.is_empty());
    let doc = r.reloader.unpin().await.unwrap();
    assert_eq!((doc.pinned, doc.active.version), (false, version_of(&y1)));
    r.shutdown().await;
}

/// A bad file, then the file back on the active version's bytes: the error is gone.
#[tokio::test]
async fn last_error_clears_when_the_file_is_back_on_the_active_version() {
    let dir = TempDir::new("revert-error");
    let path = dir.join("tidegate.yaml");
    let good = versioned("one", "a");
    std::fs::write(&path, &good).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    std::fs::write(&path, good.replace("provider: a", "provider: c")).unwrap();
    assert!(matches!(r.reloader.reload_now().await, ReloadResult::Rejected(_)));
    assert!(r.reloader.status().last_error.is_some());
    std::fs::write(&path, &good).unwrap();
    assert_eq!(r.reloader.reload_now().await, ReloadResult::Unchanged);
    let doc = r.reloader.status();
    assert_eq!((doc.last_error, doc.active.version), (None, version_of(&good)));
    r.shutdown().await;
}

/// An unwritable state dir does not stop startup; the pin is kept in memory and that is said.
#[tokio::test]
async fn unwritable_state_dir_keeps_pins_in_memory() {
    let dir = TempDir::new("nostate");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("one", "a")).unwrap();
    let blocker = dir.join("file");
    std::fs::write(&blocker, "x").unwrap();
    let r = start_file(&path, StateDir::At(blocker.join("state")), "", false).await;
    let doc = r.reloader.pin(None).await.unwrap();
    assert!(doc.pinned && !doc.state.persistent);
    assert!(doc.state.warning.unwrap().contains("in memory only"));
    r.shutdown().await;
}

/// A new version that moves `admin_listen` off loopback, with no admin token (and no admin
/// address on the command line), is rejected: `serve` refuses that at start (SPEC §8), so
/// applying it would crash-loop the next restart (helper-47). With a token it applies, its
/// address waiting for a restart.
#[tokio::test]
async fn a_reload_that_would_expose_an_open_admin_plane_is_rejected() {
    let dir = TempDir::new("admin-exposure");
    let path = dir.join("tidegate.yaml");
    // Port 0: the admin plane binds the address the config names, wherever the OS puts it.
    let with_admin =
        |addr: &str| format!("server: {{admin_listen: \"{addr}\"}}\n{}", versioned("one", "a"));
    std::fs::write(&path, with_admin("127.0.0.1:0")).unwrap();
    for (token, want_applied) in [("", false), ("s3cret", true)] {
        let cfg = Config::load(&path).unwrap();
        let opts = StartOptions {
            listen: Some(([127, 0, 0, 1], 0).into()),
            admin_listen: None,
            log_sink: LogSink::Discard,
            state_dir: StateDir::InMemory,
            admin_token: Some(token.to_owned()),
            watch: false,
            workers: None,
        };
        let r = app::start(cfg, opts).await.unwrap();
        std::fs::write(&path, with_admin("0.0.0.0:0")).unwrap();
        let result = r.reloader.reload_now().await;
        if want_applied {
            assert!(matches!(result, ReloadResult::Applied(_)), "{result:?}");
            let restart = r.reloader.status().restart_required.unwrap_or_default();
            assert!(restart.contains("admin_listen"), "{restart}");
        } else {
            let ReloadResult::Rejected(e) = result else { panic!("{result:?}") };
            assert!(
                e.contains("is not a loopback address") && e.contains("TIDEGATE_ADMIN_TOKEN"),
                "{e}"
            );
            assert!(e.contains("tidegate.yaml"), "{e}");
        }
        std::fs::write(&path, with_admin("127.0.0.1:0")).unwrap();
        r.shutdown().await;
    }
}
