//! The `tidegate` binary: `check` output and exit codes.

use std::process::Command;

fn tidegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
}

#[test]
fn check_accepts_the_shipped_configs() {
    for path in ["config/demo.yaml", "config/tidegate.yaml"] {
        let out = tidegate().args(["check", "--config", path]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("version v-"), "{stdout}");
        assert!(stdout.contains("routes:"), "{stdout}");
    }
}

#[test]
fn check_reports_path_aware_errors_with_exit_1() {
    let dir = std::env::temp_dir().join(format!("tidegate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "providers:\n  openai: {kind: mock}\nroutes:\n  ticket-summary:\n    targets:\n      - {provider: openai, model: a}\n      - {provider: opnai, model: b}\n").unwrap();
    let out = tidegate().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "routes.ticket-summary.targets[1].provider: unknown provider \"opnai\"; defined: openai"
        ),
        "{err}"
    );
    let missing =
        tidegate().args(["check", "--config", "/nonexistent/tidegate.yaml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    // A usage error is invalid input too (SPEC §2: 2 is for runtime failures); help is not.
    let usage = tidegate().args(["check"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--config"));
    assert_eq!(tidegate().args(["check", "--help"]).output().unwrap().status.code(), Some(0));
    // A label that cannot be a header value is refused by check, as serve would.
    let label = dir.join("label.yaml");
    std::fs::write(&label, "label: \"a\\nb\"\nproviders:\n  sim: {kind: mock}\nroutes:\n  r:\n    targets: [{provider: sim, model: m}]\n").unwrap();
    let out = tidegate().args(["check", "--config"]).arg(&label).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("label.yaml: label: expected printable"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_warns_of_secrets_serve_could_not_load() {
    let dir = std::env::temp_dir().join(format!("tidegate-cli-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tls.yaml");
    let not_pem = dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "providers:\n  a: {{kind: openai_compatible, base_url: \"https://localhost:1/v1\", ca_file: /nonexistent/ca.pem}}\n  b: {{kind: openai_compatible, base_url: \"https://localhost:2/v1\", ca_file: \"{}\", api_key_file: /nonexistent/key}}\n  c: {{kind: openai_compatible, base_url: \"https://localhost:3/v1\", ca_file: \"{}/tests/fixtures/tls/ca.pem\"}}\nroutes:\n  r:\n    default: true\n    targets: [{{provider: a, model: m}}, {{provider: b, model: m}}, {{provider: c, model: m}}]\n",
            not_pem.display(),
            env!("CARGO_MANIFEST_DIR"),
        ),
    )
    .unwrap();
    // Secrets may be absent where configs are checked: warnings, exit 0.
    let out = tidegate().args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let warnings: Vec<&str> = stdout.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 3, "{stdout}");
    assert!(
        warnings[0].starts_with("warning: providers.a.ca_file: cannot read CA file"),
        "{stdout}"
    );
    assert!(warnings[1].starts_with("warning: providers.b: cannot read key file"), "{stdout}");
    assert!(warnings[2].starts_with("warning: providers.b.ca_file: CA file"), "{stdout}");
    assert!(warnings[2].contains("holds no certificate"), "{stdout}");
    // serve refuses it, naming the file and the key (SPEC §2).
    let out = tidegate()
        .args(["serve", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}: providers.", cfg.display())), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve` refuses a non-loopback admin plane without TIDEGATE_ADMIN_TOKEN; `check` says so.
#[test]
fn check_warns_of_an_exposed_admin_plane_without_a_token() {
    let dir = std::env::temp_dir().join(format!("tidegate-cli-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("admin.yaml");
    std::fs::write(&cfg, "server: {admin_listen: \"0.0.0.0:9090\"}\nproviders:\n  a: {kind: mock}\nroutes:\n  r: {default: true, targets: [{provider: a, model: m}]}\n").unwrap();
    let run = |token: Option<&str>| {
        let mut cmd = tidegate();
        cmd.args(["check", "--config"]).arg(&cfg).env_remove("TIDEGATE_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("TIDEGATE_ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = run(None);
    let warning = stdout.lines().find(|l| l.starts_with("warning:")).unwrap_or_default();
    assert!(
        warning.contains("server.admin_listen: 0.0.0.0:9090 is not a loopback address"),
        "{stdout}"
    );
    assert!(warning.contains("admin.yaml"), "{stdout}");
    assert!(!run(Some("t0k")).contains("warning:"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_runs_and_prints_a_table() {
    let out = tidegate().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "plain chat",
        "streamed chat",
        "fallback target;reason=status_5xx",
        "error invalid_request",
        "error model_not_found",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

/// The mock serves both wire formats, and its help says so (both in the verb list and its own).
#[test]
fn mock_provider_help_names_both_wires() {
    for args in [&["--help"][..], &["mock-provider", "--help"]] {
        let out = tidegate().args(args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let line =
            help.lines().find(|l| l.contains("mock provider's behaviours")).unwrap_or_default();
        assert!(line.contains("OpenAI") && line.contains("Anthropic"), "{args:?}: {help}");
    }
}

/// `check` prints durations as a config writes them: `0s`, never `0ns`; defaults as the config
/// reference gives them.
#[test]
fn check_prints_durations_in_config_units() {
    let dir = std::env::temp_dir().join(format!("tidegate-cli-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("units.yaml");
    std::fs::write(&cfg, "providers:\n  sim: {kind: mock}\nroutes:\n  a:\n    retries: {backoff: 0s, max_retry_after: 1500ms}\n    idempotency: {ttl: 90m}\n    targets: [{provider: sim, model: m}, {cache: {max_age: 1h}}]\n").unwrap();
    let out = tidegate().args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "    2. cache (max_age 1h)",
        "    timeouts: connect 2s first_token 60s idle 30s attempt 300s total 600s",
        "    retries: per_target 1 total 3 backoff 0s max_retry_after 1500ms",
        "    idempotency: ttl 5400s, in_flight wait",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} not in:\n{stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A token from a Secret file written with `echo` ends in a newline: it is trimmed (serve and
/// the CLI agree on it), a blank one is refused at start, and a token that cannot be a header
/// value is named as such by the CLI (it used to say "bad admin URL").
#[test]
#[expect(clippy::disallowed_methods, reason = "a synchronous test polling another process")]
fn admin_token_whitespace_is_trimmed_and_a_blank_one_refused() {
    use crate::common::{free_port, http_get, http_get_with};
    let dir = std::env::temp_dir().join(format!("tidegate-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (data, admin) = (free_port(), free_port());
    let cfg = dir.join("tidegate.yaml");
    std::fs::write(&cfg, format!("server: {{listen: 127.0.0.1:{data}, admin_listen: 127.0.0.1:{admin}}}\nproviders:\n  a: {{kind: mock}}\nroutes:\n  r: {{default: true, targets: [{{provider: a, model: m}}]}}\n")).unwrap();
    let serve = |token: &str| {
        let mut cmd = tidegate();
        cmd.args(["serve", "--config"]).arg(&cfg).arg("--state-dir").arg(&dir);
        cmd.env("TIDEGATE_ADMIN_TOKEN", token);
        cmd
    };
    // A blank token is refused at start (bounded: a process that serves anyway is killed).
    let mut blank = serve(" \n")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while blank.try_wait().unwrap().is_none() && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = blank.kill();
    let out = blank.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a blank token was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TIDEGATE_ADMIN_TOKEN") && err.contains("empty"), "{err}");

    let mut child = serve("s3cret-token\n")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while http_get(admin, "/readyz").is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let got = http_get_with(admin, "/admin/config", &["authorization: Bearer s3cret-token"]);
    assert!(got.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")), "{got:?}");
    let url = format!("http://127.0.0.1:{admin}");
    let status = tidegate()
        .args(["config", "status", "--admin", &url])
        .env("TIDEGATE_ADMIN_TOKEN", "\ts3cret-token\r\n")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let bad = tidegate()
        .args(["config", "status", "--admin", &url, "--token", "s3cret\u{1}token"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("admin token") && !err.contains("URL"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `check` shows a route's non-default switches (`resume: off`, `drop_unsupported_params`) in
/// its summary line.
#[test]
fn check_shows_a_routes_non_default_switches() {
    let dir = std::env::temp_dir().join(format!("tidegate-cli-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("flags.yaml");
    std::fs::write(&cfg, "providers:\n  sim: {kind: mock}\nroutes:\n  a:\n    resume: off\n    drop_unsupported_params: true\n    targets: [{provider: sim, model: m}]\n  b:\n    targets: [{provider: sim, model: m}]\n").unwrap();
    let out = tidegate().args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "  a [resume off; drop_unsupported_params]"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "  b"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
