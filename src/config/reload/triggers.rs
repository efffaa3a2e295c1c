//! What makes the reloader look at the config file: a watch on the file's directory, SIGHUP,
//! and a periodic check as a safety net.
//!
//! The watch is on the directory, not the file: Kubernetes updates a ConfigMap volume by
//! writing a new timestamped directory and atomically renaming a `..data` symlink over the old
//! one, so the watched file's inode never changes and a watch on it would go quiet. Events come
//! in bursts (create, rename, close-write), so they are debounced; the reload itself compares
//! content hashes, which makes a spurious trigger cost one read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Reloader, Trigger};

/// Quiet time after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a burst of events can delay a reload.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);
/// The safety-net check.
pub const PERIODIC: Duration = Duration::from_secs(5);

/// Starts the triggers, which run until `stop` turns true. When this returns, the watch and
/// the signal handler are in place and the file has been checked once more (it may have
/// changed between the first load and the watch starting).
pub async fn spawn(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = start_watcher(reloader.path(), tx);
    let mut hup = hangup();
    reloader.reload_with(Trigger::Periodic).await;
    tokio::spawn(async move {
        // Kept alive for as long as the loop runs; dropping it ends the watch.
        let _watcher = watcher;
        let mut tick = tokio::time::interval(PERIODIC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let trigger = tokio::select! {
                Some(()) = rx.recv() => {
                    debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await;
                    Trigger::Watch
                }
                () = recv_hangup(&mut hup) => Trigger::Sighup,
                _ = tick.tick() => Trigger::Periodic,
                () = stopped(&mut stop) => break,
            };
            reloader.reload_with(trigger).await;
        }
    })
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the owner is gone: stop too.
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits until no event has arrived for `quiet`, or `max` has passed.
pub async fn debounce(rx: &mut mpsc::Receiver<()>, quiet: Duration, max: Duration) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => {}
            _ => return,
        }
    }
}

/// The directory to watch: the config path's parent as given (`.` for a bare file name).
fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn start_watcher(path: &Path, tx: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let dir = watch_dir(path);
    let file_name = path.file_name().map(|n| n.to_owned());
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else {
            // An error (e.g. the event queue overflowed): look anyway.
            let _ = tx.try_send(());
            return;
        };
        if relevant(&ev, file_name.as_deref()) {
            // A full channel means a reload is already due: dropping the event is fine.
            let _ = tx.try_send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch the config directory ({e}); relying on SIGHUP and the {}s check", PERIODIC.as_secs());
            None
        }
    }
}

/// Events that may mean new content: writes, creates, renames and removals of the config file
/// or of kubelet's `..data` entries. Opens and reads (our own reloads make those) are not.
fn relevant(ev: &notify::Event, file_name: Option<&std::ffi::OsStr>) -> bool {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if ev.paths.is_empty() || ev.need_rescan() {
        return true;
    }
    ev.paths.iter().any(|p| match p.file_name() {
        Some(n) => Some(n) == file_name || n.to_string_lossy().starts_with(".."),
        None => true,
    })
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!("cannot listen for SIGHUP: {e}"))
            .ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn recv_hangup(hup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(s) = hup {
        if s.recv().await.is_some() {
            return;
        }
    }
    let _ = hup;
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet_and_is_bounded() {
        let (tx, mut rx) = mpsc::channel(1);
        let t0 = tokio::time::Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let _ = tx.send(()).await;
            }
            tx
        });
        debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(220));
        let tx = feeder.await.unwrap();
        // Events every 50 ms forever: the reload still happens after DEBOUNCE_MAX.
        let t1 = tokio::time::Instant::now();
        let noisy = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await;
        assert_eq!(t1.elapsed(), DEBOUNCE_MAX);
        noisy.abort();
    }

    #[test]
    fn watch_dir_never_resolves_symlinks() {
        assert_eq!(watch_dir(Path::new("/etc/tidegate/tidegate.yaml")), Path::new("/etc/tidegate"));
        assert_eq!(watch_dir(Path::new("tidegate.yaml")), Path::new("."));
    }
}
