//! The admin API's bearer token, and the `tidegate config` CLI against a running gateway.

use std::process::{Command, Output};

use tidegate::app::StateDir;

use super::{TempDir, active, admin, start_file, versioned};

#[tokio::test]
async fn admin_token_guards_admin_only() {
    let dir = TempDir::new("token");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("tok", "a")).unwrap();
    let r = start_file(&path, StateDir::InMemory, "s3cret", false).await;
    for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let (status, doc) = admin(&r, "GET", "/admin/config", "", token).await;
        assert_eq!((status, doc["error"]["code"].as_str()), (401, Some("unauthorized")));
        let (status, _) = admin(&r, "POST", "/admin/config/pin", "", token).await;
        assert_eq!(status, 401);
    }
    assert!(!r.reloader.status().pinned, "an unauthorized pin went through");
    let (status, doc) = admin(&r, "GET", "/admin/config", "", Some("s3cret")).await;
    assert_eq!((status, doc["active"]["version"].as_str()), (200, Some(&*active(&r))));
    for open in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = admin(&r, "GET", open, "", None).await;
        assert_eq!(status, 200, "{open}");
    }
    let (status, _) = admin(&r, "GET", "/admin/nope", "", Some("s3cret")).await;
    assert_eq!(status, 404);
    let (status, _) = admin(&r, "GET", "/admin/config/pin", "", Some("s3cret")).await;
    assert_eq!(status, 405);
    r.shutdown().await;
}

async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(args)
            .env_remove("TIDEGATE_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_pin_and_errors() {
    let dir = TempDir::new("cli");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("cli-label", "a")).unwrap();
    let r = start_file(&path, StateDir::InMemory, "tok", false).await;
    let url = format!("http://{}", r.admin_addr);
    let version = active(&r);
    let auth = ["--admin", &url, "--token", "tok"];

    let out = cli(args(&[&["config", "status"][..], &auth[..]].concat())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("active:      {version} (cli-label)")), "{stdout}");
    assert!(stdout.contains("pinned:      no"), "{stdout}");

    let out = cli(args(&[&["config", "pin", &version[..8]][..], &auth[..]].concat())).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(args(&[&["config", "status"][..], &auth[..]].concat())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pinned:      yes"), "{stdout}");
    assert!(r.reloader.status().pinned);

    let out = cli(args(&[&["config", "pin", "no-such-version"][..], &auth[..]].concat())).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version"));

    let out = cli(args(&["config", "unpin", "--admin", &url])).await;
    assert_eq!(out.status.code(), Some(1), "no token is a 4xx");
    let out = cli(args(&[&["config", "rollback"][..], &auth[..]].concat())).await;
    assert_eq!(out.status.code(), Some(1), "no previous version is a 409");
    let out = cli(args(&[&["config", "unpin"][..], &auth[..]].concat())).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned:      no"));
    r.shutdown().await;

    let out = cli(args(&["config", "status", "--admin", &url])).await;
    assert_eq!(out.status.code(), Some(2), "a stopped gateway is a runtime failure");
}

/// A pin whose body never finishes gets a 408 and does not hang (helper-45: it waited for
/// good); one over the size cap is a 413, not a 400.
#[tokio::test(start_paused = true)]
async fn a_pin_body_that_never_arrives_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("pin-body");
    let path = dir.join("tidegate.yaml");
    std::fs::write(&path, versioned("pb", "a")).unwrap();
    let r = start_file(&path, StateDir::InMemory, "", false).await;
    let mut s = tokio::net::TcpStream::connect(r.admin_addr).await.unwrap();
    s.write_all(b"POST /admin/config/pin HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), s.read(&mut buf))
        .await
        .expect("no answer to a pin whose body never came")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let big = format!("{{\"version\": \"{}\"}}", "x".repeat(70_000));
    let (status, doc) = super::admin(&r, "POST", "/admin/config/pin", &big, None).await;
    assert_eq!((status, doc["error"]["code"].as_str()), (413, Some("request_too_large")));
    assert!(!r.reloader.status().pinned);
    r.shutdown().await;
}
