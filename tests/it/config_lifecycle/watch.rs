//! Reloads the gateway starts by itself: the directory watch (a kubelet ConfigMap volume and
//! plain writes) and SIGHUP.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use tidegate::app::StateDir;

use super::{TempDir, active, admin, start_file, version_of, versioned, wait_active};

/// Lays out `..<stamp>/tidegate.yaml` and points `..data` at it the way kubelet does: a new
/// `..data_tmp` symlink renamed atomically over `..data`, then the old directory removed.
fn kubelet_publish(vol: &Path, stamp: &str, yaml: &str) {
    let ts = vol.join(format!("..{stamp}"));
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("tidegate.yaml"), yaml).unwrap();
    let old = std::fs::read_link(vol.join("..data")).ok();
    let tmp = vol.join("..data_tmp");
    symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, vol.join("..data")).unwrap();
    if !vol.join("tidegate.yaml").exists() {
        symlink("..data/tidegate.yaml", vol.join("tidegate.yaml")).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(vol.join(old)).unwrap();
    }
}

/// The ConfigMap dance, three times: each new version is picked up by the watch (well before
/// the 5 s periodic check) through the unchanged `tidegate.yaml` symlink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_picked_up() {
    let vol = TempDir::new("configmap");
    kubelet_publish(&vol.0, "2026_11_27_21_00_00.000000001", &versioned("cm-0", "a"));
    let path = vol.join("tidegate.yaml");
    let r = start_file(&path, StateDir::InMemory, "", true).await;
    assert_eq!(active(&r), version_of(&versioned("cm-0", "a")));
    for k in 1..=3 {
        let yaml = versioned(&format!("cm-{k}"), if k % 2 == 0 { "a" } else { "b" });
        kubelet_publish(&vol.0, &format!("2026_11_27_21_00_0{k}.000000001"), &yaml);
        let took = wait_active(&r.gateway, &version_of(&yaml), Duration::from_secs(4)).await;
        eprintln!("configmap swap {k}: active after {took:?}");
        let (_, doc) = admin(&r, "GET", "/admin/config", "", None).await;
        assert_eq!(doc["active"]["trigger"], "watch", "{doc}");
        assert_eq!(doc["active"]["source"], path.display().to_string());
    }
    r.shutdown().await;
}

/// A half-written then completed file under the watch: the final content wins, and a bad
/// file on the way is reported, not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_bad_file_then_good_file() {
    let dir = TempDir::new("watchbad");
    let path = dir.join("tidegate.yaml");
    let v0 = versioned("w-0", "a");
    std::fs::write(&path, &v0).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", true).await;
    std::fs::write(
        &path,
        "providers: {a: {kind: mock}}\nroutes: {r: {targets: [{provider: zz, model: m}]}}\n",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    while r.reloader.status().last_error.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(4), "bad file not reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(active(&r), version_of(&v0));
    let msg = r.reloader.status().last_error.unwrap();
    assert!(msg.contains("routes.r.targets[0].provider: unknown provider \"zz\""), "{msg}");
    let v1 = versioned("w-1", "b");
    std::fs::write(&path, &v1).unwrap();
    wait_active(&r.gateway, &version_of(&v1), Duration::from_secs(4)).await;
    assert_eq!(r.reloader.status().last_error, None);
    r.shutdown().await;
}

/// SIGHUP re-reads the file through the path as given. The path is a symlink into another
/// directory, so writing the target makes no event in the watched directory: only the signal
/// (or the 5 s check) can find the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let dir = TempDir::new("sighup");
    std::fs::create_dir(dir.join("real")).unwrap();
    std::fs::create_dir(dir.join("conf")).unwrap();
    let real = dir.join("real/actual.yaml");
    std::fs::write(&real, versioned("hup-0", "a")).unwrap();
    let path = dir.join("conf/tidegate.yaml");
    symlink(&real, &path).unwrap();
    // The signal handler is installed when start returns.
    let r = start_file(&path, StateDir::InMemory, "", true).await;
    let yaml = versioned("hup-1", "b");
    std::fs::write(&real, &yaml).unwrap();
    let pid = std::process::id().to_string();
    let st = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(st.success());
    wait_active(&r.gateway, &version_of(&yaml), Duration::from_secs(4)).await;
    // Other tests' gateways may have seen the same signal; ours must say it came from it.
    let trig = r.reloader.status().active.trigger;
    assert_eq!(format!("{trig:?}"), "Sighup");
    r.shutdown().await;
}

/// Not a timed test: measures write-to-active over 20 writes (plain writes and atomic renames)
/// and prints min / median / max. Each must land well inside the 5 s periodic check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_latency_from_write_to_active() {
    let dir = TempDir::new("latency");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("lat-0", "a")).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", true).await;
    let mut took = Vec::new();
    for k in 1..=20 {
        let yaml = versioned(&format!("lat-{k}"), if k % 2 == 0 { "a" } else { "b" });
        let t0 = std::time::Instant::now();
        if k % 2 == 0 {
            std::fs::write(&path, &yaml).unwrap();
        } else {
            let tmp = dir.join(".tidegate.yaml.tmp");
            std::fs::write(&tmp, &yaml).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        wait_active(&r.gateway, &version_of(&yaml), Duration::from_secs(4)).await;
        took.push(t0.elapsed());
    }
    took.sort();
    eprintln!(
        "reload latency over {} writes: min {:?} median {:?} max {:?}",
        took.len(),
        took[0],
        took[took.len() / 2],
        took[took.len() - 1]
    );
    r.shutdown().await;
}
