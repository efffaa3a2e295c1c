use std::path::PathBuf;

use super::*;
use crate::config::{Policy, StateBackend};

fn load_str(s: &str) -> Result<Config, ConfigError> {
    load(Path::new("t.yaml"), s.as_bytes())
}

const MIN: &str = "providers:\n  sim: {kind: mock}\nroutes:\n  chat:\n    targets: [{provider: sim, model: ok}]\n";

#[test]
fn state_defaults_redis_and_policies() {
    let c = load_str(MIN).unwrap();
    assert_eq!(c.state.dir, PathBuf::from("/var/lib/tidegate"));
    assert_eq!(c.state.backend, StateBackend::Memory);
    assert_eq!(c.state.on_error.budgets, Policy::Local);
    assert_eq!(&*c.content, MIN.as_bytes());
    let c = load_str(&format!(
        "state: {{backend: redis, url: \"redis://x:6379\", on_error: {{budgets: reject}}}}\n{MIN}"
    ))
    .unwrap();
    assert_eq!(
        c.state.backend,
        StateBackend::Redis {
            url: super::super::RedisUrl::Inline("redis://x:6379".into()),
            prefix: "tidegate:".into()
        }
    );
    assert_eq!(c.state.on_error.budgets, Policy::Reject);
    assert_eq!(c.state.on_error.idempotency, Policy::Local);
    let c =
        load_str(&format!("state: {{backend: redis, url_env: TG_TEST_REDIS_URL}}\n{MIN}")).unwrap();
    let StateBackend::Redis { url, .. } = &c.state.backend else { panic!("not redis") };
    assert_eq!(url, &super::super::RedisUrl::Env("TG_TEST_REDIS_URL".into()));
    assert!(url.resolve().unwrap_err().contains("TG_TEST_REDIS_URL is not set"));
    for (bad, path) in [
        ("state: {backend: redis}", "state.url"),
        ("state: {backend: redis, url: \"rediss://x\"}", "state.url"),
        ("state: {url: \"redis://x\"}", "state.url"),
        (
            "state: {backend: redis, url: \"redis://x\", on_error: {budgets: maybe}}",
            "state.on_error.budgets",
        ),
        ("state: {backend: etcd}", "state.backend"),
        ("state: {backend: redis, url: \"redis://x\", url_env: R}", "state.url_env"),
    ] {
        let e = load_str(&format!("{bad}\n{MIN}")).unwrap_err();
        assert_eq!(e.path, path, "{bad}: {e}");
    }
    let c = load_str(&format!("state: {{dir: /tmp/x}}\n{MIN}")).unwrap();
    assert_eq!(c.state.dir, PathBuf::from("/tmp/x"));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load_str(MIN).unwrap();
    assert!(c.version.starts_with("v-") && c.version.len() == 14);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.routes[0].timeouts.total, Duration::from_secs(600));
    assert!(c.server.worker_threads >= 1);
    let c = load_str(&format!("server: {{worker_threads: 3}}\n{MIN}")).unwrap();
    assert_eq!(c.server.worker_threads, 3);
    for bad in ["0", "1025"] {
        let e = load_str(&format!("server: {{worker_threads: {bad}}}\n{MIN}")).unwrap_err();
        assert_eq!(e.path, "server.worker_threads", "{e}");
    }
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    for key in ["header_read_timeout", "body_read_timeout"] {
        let e = load_str(&format!("server: {{{key}: 0s}}\n{MIN}")).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            (&*format!("server.{key}"), "expected a duration above zero")
        );
    }
}

#[test]
fn http2_max_streams_defaults_and_bounds() {
    let up = "providers:\n  up: {kind: openai_compatible, base_url: \"https://x/v1\"STREAMS}\nroutes:\n  chat:\n    targets: [{provider: up, model: ok}]\n";
    let c = load_str(&up.replace("STREAMS", "")).unwrap();
    assert_eq!(c.providers["up"].http2_max_streams, 100);
    let c = load_str(&up.replace("STREAMS", ", http2_max_streams: 8")).unwrap();
    assert_eq!(c.providers["up"].http2_max_streams, 8);
    for bad in ["0", "10001", "-1", "many"] {
        let e =
            load_str(&up.replace("STREAMS", &format!(", http2_max_streams: {bad}"))).unwrap_err();
        assert_eq!(e.path, "providers.up.http2_max_streams", "{bad}: {e}");
    }
    let e =
        load_str(&MIN.replace("{kind: mock}", "{kind: mock, http2_max_streams: 8}")).unwrap_err();
    assert_eq!(e.path, "providers.sim.http2_max_streams");
    assert!(e.message.contains("in-process"), "{e}");
}

#[test]
fn unknown_provider_names_path_and_defined() {
    let e = load_str(&MIN.replace("provider: sim", "provider: opnai")).unwrap_err();
    assert_eq!(e.path, "routes.chat.targets[0].provider");
    assert_eq!(
        e.to_string(),
        "t.yaml: routes.chat.targets[0].provider: unknown provider \"opnai\"; defined: sim"
    );
}

#[test]
fn unknown_key_names_path() {
    let e = load_str(&MIN.replace("targets:", "timeout: 1s\n    targets:")).unwrap_err();
    assert_eq!(e.path, "routes.chat.timeout");
    assert!(e.message.contains("unknown field `timeout`"), "{e}");
}

#[test]
fn number_type_errors_say_what_is_expected_not_the_rust_type() {
    for (key, path, says) in [
        (
            "retries: {per_target: -1}",
            "retries.per_target",
            "expected a whole number from 0 to 4294967295",
        ),
        ("limits: {rpm: 1.5}", "limits.rpm", "expected a whole number from 0 to 4294967295"),
        (
            "limits: {max_input_tokens: -5}",
            "limits.max_input_tokens",
            "expected a whole number ≥ 0",
        ),
        ("limits: {max_request_usd: abc}", "limits.max_request_usd", "expected a number"),
    ] {
        let e = load_str(&MIN.replace("targets:", &format!("{key}\n    targets:"))).unwrap_err();
        assert_eq!(e.path, format!("routes.chat.{path}"), "{e}");
        assert!(e.message.contains(says), "{e}");
        assert!(!["u32", "u64", "f64"].iter().any(|t| e.message.contains(t)), "{e}");
    }
}

#[test]
fn bad_duration_names_path() {
    let e =
        load_str(&MIN.replace("targets:", "timeouts: {total: 3 sec}\n    targets:")).unwrap_err();
    assert_eq!(e.path, "routes.chat.timeouts.total");
}

#[test]
fn absurd_durations_and_amounts_say_why() {
    for (key, path) in [
        ("retries: {backoff: 100000h}", "routes.chat.retries.backoff"),
        ("retries: {max_retry_after: 9000h}", "routes.chat.retries.max_retry_after"),
        ("timeouts: {idle: 200h}", "routes.chat.timeouts.idle"),
    ] {
        let e = load_str(&MIN.replace("targets:", &format!("{key}\n    targets:"))).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), (path, "expected at most 168h (7 days)"));
    }
    let huge = MIN.replace("targets:", "limits: {budget: {usd: 1e300, per: 1h}}\n    targets:");
    let e = load_str(&huge).unwrap_err();
    assert_eq!(e.path, "routes.chat.limits.budget.usd");
    assert!(e.message.contains("under 1e12"), "{e}");
}

#[test]
fn a_match_model_that_is_another_routes_name_is_a_warning() {
    let s = "providers:\n  sim: {kind: mock}\nroutes:\n  a:\n    match_models: [b, a, m]\n    targets: [{provider: sim, model: ok}]\n  b:\n    targets: [{provider: sim, model: ok}]\n";
    let lint = load_str(s).unwrap().lint();
    assert_eq!(lint.len(), 1, "{lint:?}");
    assert!(lint[0].starts_with("routes.a.match_models: \"b\" is the name of route \"b\""));
    assert!(load_str(MIN).unwrap().lint().is_empty());
}

#[test]
fn duplicate_match_model_is_rejected() {
    let s = "providers:\n  sim: {kind: mock}\nroutes:\n  a:\n    match_models: [m]\n    targets: [{provider: sim, model: ok}]\n  b:\n    match_models: [m]\n    targets: [{provider: sim, model: ok}]\n";
    let e = load_str(s).unwrap_err();
    assert_eq!(e.path, "routes.b.match_models");
}

#[test]
fn circuit_breaker_settings() {
    let c =
        load_str(&format!("circuit_breaker: {{consecutive_failures: 3, open_for: 10s}}\n{MIN}"))
            .unwrap();
    assert_eq!(c.breaker.consecutive_failures, 3);
    assert_eq!(c.breaker.open_for, Duration::from_secs(10));
    assert_eq!(c.breaker.max_open_for, Duration::from_secs(300));
    let e = load_str(&format!("circuit_breaker: {{failure_rate: 1.5}}\n{MIN}")).unwrap_err();
    assert_eq!(e.path, "circuit_breaker.failure_rate");
}

#[test]
fn a_name_defined_twice_is_an_error_and_messages_name_their_path_once() {
    let dup = "providers:\n  sim: {kind: mock}\nroutes:\n  chat: {targets: [{provider: sim, model: m}]}\n  chat: {targets: [{provider: sim, model: n}]}\n";
    let e = load_str(dup).unwrap_err();
    assert_eq!(e.path, "routes", "{e}");
    assert!(e.message.starts_with("`chat` is defined twice"), "{e}");
    let dup = "providers:\n  sim: {kind: mock}\n  sim: {kind: mock}\nroutes:\n  chat: {targets: [{provider: sim, model: m}]}\n";
    assert!(load_str(dup).unwrap_err().message.contains("`sim` is defined twice"));
    let e = load_str(&MIN.replace("chat:", "chat:\n    timeout: 3s")).unwrap_err();
    assert_eq!(e.path, "routes.chat.timeout");
    assert!(e.message.starts_with("unknown field `timeout`"), "{e}");
    let e = load_str("- a\n- b\n").unwrap_err();
    assert!(!e.message.contains("Raw"), "{e}");
}

#[test]
fn labels_and_models_that_cannot_be_headers_are_refused() {
    let e = load_str(&format!("label: \"a\\nb\"\n{MIN}")).unwrap_err();
    assert_eq!(e.path, "label", "{e}");
    let bad = MIN.replace("model: ok", "model: \"o\\u0001k\"");
    let e = load_str(&bad).unwrap_err();
    assert_eq!(e.path, "routes.chat.targets[0].model", "{e}");
    assert!(load_str(&format!("label: \"2026-11-29 rollout 日本\"\n{MIN}")).is_ok());
}

#[test]
fn idempotency_map_errors_name_their_key_and_what_was_expected() {
    let with = |v: &str| MIN.replace("targets:", &format!("idempotency: {v}\n    targets:"));
    for (v, path, says) in [
        (
            "{ttl: 1h, in_flight: wait, extra: 1}",
            "routes.chat.idempotency.extra",
            "unknown field `extra`, expected `ttl` or `in_flight`",
        ),
        ("{ttl: 5}", "routes.chat.idempotency.ttl", "expected a duration like"),
        (
            "{in_flight: foo}",
            "routes.chat.idempotency.in_flight",
            "expected wait or reject, got \"foo\"",
        ),
        ("of", "routes.chat.idempotency", "expected off or {ttl, in_flight}, got \"of\""),
        ("[1]", "routes.chat.idempotency", "expected off or {ttl, in_flight}"),
    ] {
        let e = load_str(&with(v)).unwrap_err();
        assert_eq!(e.path, path, "{v}: {e}");
        assert!(e.message.contains(says), "{v}: {e}");
        assert!(!e.message.contains("RawIdempotency") && !e.message.contains("variant"), "{e}");
    }
    let c = load_str(&with("{ttl: 2h, in_flight: reject}")).unwrap();
    let i = c.routes[0].idempotency.as_ref().unwrap();
    assert_eq!((i.ttl, i.wait), (Duration::from_secs(7200), false));
    assert!(load_str(&with("off")).unwrap().routes[0].idempotency.is_none());
}

#[test]
fn label_changes_version() {
    let a = load_str(MIN).unwrap();
    let b = load_str(&format!("label: x\n{MIN}")).unwrap();
    assert_ne!(a.version, b.version);
    assert_eq!(b.label.as_deref(), Some("x"));
}

/// A mock target's model name is checked as the mock reads it: a typo or an absurd count is
/// a config error at `check`, not a 400 (or, for `chunks`, an abort) at the first request.
#[test]
fn mock_targets_directives_are_checked() {
    for (model, says) in [
        ("m+typo=1", "unknown mock directive"),
        ("m+chunks=99999999999", "at most 100000 chunks"),
        ("m+status=200", "expected a status from 400 to 599"),
    ] {
        let e = load_str(&MIN.replace("model: ok", &format!("model: \"{model}\""))).unwrap_err();
        assert_eq!(e.path, "routes.chat.targets[0].model", "{e}");
        assert!(e.message.contains(says), "{model}: {e}");
    }
    assert!(load_str(&MIN.replace("model: ok", "model: \"ok+chunks=20+delay=5ms\"")).is_ok());
}

/// `check` fails a Redis URL the client cannot read, as `serve` would (helper-47: `check` said
/// ok and `serve` exited at start); the password is not repeated.
#[test]
fn redis_urls_the_client_cannot_read_are_refused() {
    let with = |url: &str| format!("state: {{backend: redis, url: \"{url}\"}}\n{MIN}");
    for url in ["redis://127.0.0.1:notaport", "redis://user:pw-s3cret@:x/"] {
        let e = load_str(&with(url)).unwrap_err();
        assert_eq!(e.path, "state.url", "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    assert!(load_str(&with("redis://user:pw@127.0.0.1:6379/2")).is_ok());
}

#[test]
fn the_two_planes_need_their_own_addresses() {
    let with = |listen: &str, admin: &str| {
        load_str(&format!("server: {{listen: \"{listen}\", admin_listen: \"{admin}\"}}\n{MIN}"))
    };
    for (listen, admin) in
        [("127.0.0.1:7000", "127.0.0.1:7000"), ("0.0.0.0:7000", "127.0.0.1:7000")]
    {
        let e = with(listen, admin).unwrap_err();
        assert_eq!(e.path, "server.admin_listen", "{e}");
    }
    assert!(with("127.0.0.1:7000", "127.0.0.2:7000").is_ok());
}

/// helper-47: a file starting with a byte-order mark was refused as "missing field `routes`";
/// a 70,000-byte label passed and then broke clients on every response's header.
#[test]
fn a_byte_order_mark_is_skipped_and_labels_are_bounded() {
    assert!(load_str(&format!("\u{feff}{MIN}")).is_ok());
    assert!(load_str(&format!("label: {}\n{MIN}", "x".repeat(256))).is_ok());
    let e = load_str(&format!("label: {}\n{MIN}", "x".repeat(257))).unwrap_err();
    assert_eq!(e.path, "label", "{e}");
}

/// helper-47: `check --config /dev/zero` grew to 8 GB before failing.
#[test]
fn config_files_are_read_with_a_cap() {
    let e = Config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(e.message.contains("larger than 4 MiB"), "{e}");
}

/// helper-47: a base URL with credentials was printed by `check` (into CI logs) and its
/// credentials never sent; a port over 65535 passed and every request failed to connect.
#[test]
fn base_urls_with_credentials_or_bad_ports_are_refused() {
    let with = |url: &str| {
        MIN.replace(
            "sim: {kind: mock}",
            &format!("sim: {{kind: openai_compatible, base_url: \"{url}\"}}"),
        )
    };
    // helper-48: a password that makes the URL unparseable (`{`, a space, `#`) was echoed.
    for url in [
        "http://user:pw-s3cret@127.0.0.1:8000/v1",
        "http://user:pw{s3cret@127.0.0.1:8000/v1",
        "http://user:pw s3cret@127.0.0.1:8000/v1",
        "http://user:pw#s3cret@127.0.0.1:8000/v1",
    ] {
        let e = load_str(&with(url)).unwrap_err();
        assert_eq!(e.path, "providers.sim.base_url", "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    for bad in ["http://127.0.0.1:99999/v1", "http://127.0.0.1:0/v1", "http://"] {
        let e = load_str(&with(bad)).unwrap_err();
        assert_eq!(e.path, "providers.sim.base_url", "{bad}: {e}");
    }
    assert!(load_str(&with("http://127.0.0.1:8000/v1")).is_ok());
    assert!(load_str(&with("https://api.example.com/v1")).is_ok());
    assert!(load_str(&with("http://[::1]:8000/v1")).is_ok());
    assert!(load_str(&with("http://[::1]/v1")).is_ok());
}

/// helper-47: 100,000 levels of `[` took the YAML parser 21 s (its time grows with the square
/// of the depth), holding reloads and the admin lifecycle calls behind it.
#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep = |n: usize| format!("{MIN}label: {}{}\n", "[".repeat(n), "]".repeat(n));
    let e = load_str(&deep(1_000_000)).unwrap_err();
    assert!(e.message.contains("nested deeper than 128"), "{e}");
    // helper-48: an apostrophe in plain text opened a fake quote that hid what followed.
    let e = load_str(&format!("label: it's v2\n{}", deep(100_000))).unwrap_err();
    assert!(e.message.contains("nested deeper than 128"), "{e}");
    // Brackets in quotes and comments do not count; ordinary nesting passes.
    let quoted = format!("{MIN}label: \"{}\" # {}\n", "[".repeat(200), "{".repeat(500));
    assert!(load_str(&quoted).is_ok(), "{:?}", load_str(&quoted).err());
    assert_eq!(flow_depth("a: [1, {b: [2]}, 'x[[[', \"y\\\"[[\"]"), 3);
}
