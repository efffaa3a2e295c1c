//! Raw config to runtime config: defaults, cross-references and range checks, each failure
//! naming its key path.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawConfig, RawProvider, RawRoute, RawServer, RawState};
use super::{
    Config, ConfigError, FreeTier, Idempotency, KeySource, Logging, ModelInfo, OnError, Policy,
    ProviderKind, ProviderSpec, Retries, Route, Server, StateBackend, StateConfig, Target,
    Timeouts, Wire, version_of,
};

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_owned(), path: path.into(), message: message.into() }
    }
}

pub fn load(file: &Path, content: &[u8]) -> Result<Config, ConfigError> {
    let cx = Ctx { file };
    let text = std::str::from_utf8(content).map_err(|_| cx.err("", "file is not valid UTF-8"))?;
    if text.trim().is_empty() {
        return Err(cx.err("", "file is empty"));
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        cx.err(&path, yaml_message(&path, &e.into_inner().to_string()))
    })?;

    let server = server(&cx, raw.server)?;
    let state = state(&cx, raw.state)?;
    let logging = Logging {
        sample_rate: raw.logging.sample_rate.unwrap_or(1.0),
        content: raw.logging.content.unwrap_or(false),
    };
    if !(0.0..=1.0).contains(&logging.sample_rate) {
        return Err(cx.err("logging.sample_rate", "expected a number from 0 to 1"));
    }

    let mut providers = BTreeMap::new();
    for (name, p) in raw.providers {
        let spec = provider(&cx, &name, p)?;
        providers.insert(name, Arc::new(spec));
    }
    if providers.is_empty() {
        return Err(cx.err("providers", "expected at least one provider"));
    }

    if let Some(l) = raw.label.as_deref()
        && !header_safe(l)
    {
        return Err(cx.err(
            "label",
            "expected printable text without control characters (it is sent in the x-tidegate-config-label header)",
        ));
    }
    let models = super::limits::models(raw.models, &|p, m| cx.err(p, m))?;

    let routes = routes(&cx, raw.routes, &providers, &models)?;
    let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    let auth = super::auth::auth(raw.auth, &route_names, &|p, m| cx.err(p, m))?;
    let breaker = breaker(&cx, &raw.circuit_breaker)?;
    Ok(Config {
        version: version_of(content),
        label: raw.label,
        source: file.to_owned(),
        content: Arc::from(content),
        server,
        state,
        logging,
        breaker,
        providers,
        models,
        routes,
        auth,
    })
}

fn state(cx: &Ctx<'_>, s: RawState) -> Result<StateConfig, ConfigError> {
    let backend = match s.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            if s.url.is_some() || s.url_env.is_some() || s.prefix.is_some() {
                return Err(
                    cx.err("state.url", "`url`, `url_env` and `prefix` are for backend \"redis\"")
                );
            }
            StateBackend::Memory
        }
        "redis" => {
            let url = match (s.url.filter(|u| !u.trim().is_empty()), s.url_env) {
                (Some(u), None) => {
                    super::check_redis_url(&u).map_err(|m| cx.err("state.url", m))?;
                    super::RedisUrl::Inline(u)
                }
                (None, Some(var)) if !var.trim().is_empty() => super::RedisUrl::Env(var),
                (Some(_), Some(_)) => {
                    return Err(cx.err("state.url_env", "set `url` or `url_env`, not both"));
                }
                _ => {
                    return Err(cx.err(
                        "state.url",
                        "backend \"redis\" needs `url: redis://host:port` (or `url_env: VAR`)",
                    ));
                }
            };
            StateBackend::Redis { url, prefix: s.prefix.unwrap_or_else(|| "tidegate:".into()) }
        }
        other => {
            return Err(cx.err(
                "state.backend",
                format!("unknown backend {other:?}; expected \"memory\" or \"redis\""),
            ));
        }
    };
    let dir = match s.dir {
        Some(d) if d.trim().is_empty() => {
            return Err(cx.err("state.dir", "expected a directory path"));
        }
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(super::DEFAULT_STATE_DIR),
    };
    let policy = |k: &str, v: Option<String>| match v.as_deref() {
        None | Some("local") => Ok(Policy::Local),
        Some("reject") => Ok(Policy::Reject),
        Some(other) => Err(cx.err(
            format!("state.on_error.{k}"),
            format!("expected local or reject, got {other:?}"),
        )),
    };
    let on_error = OnError {
        budgets: policy("budgets", s.on_error.budgets)?,
        rate_limits: policy("rate_limits", s.on_error.rate_limits)?,
        idempotency: policy("idempotency", s.on_error.idempotency)?,
    };
    let timeout = s.timeout.map_or(Duration::from_millis(100), |d| d.0);
    if timeout.is_zero() {
        return Err(cx.err("state.timeout", "expected a duration above zero"));
    }
    let idempotency_max_entries = s.idempotency.max_entries.unwrap_or(10_000);
    let idempotency_max_bytes = s.idempotency.max_bytes.map_or(64 << 20, |b| b.0 as usize);
    if idempotency_max_entries == 0 || idempotency_max_bytes == 0 {
        return Err(cx.err("state.idempotency", "expected bounds above zero"));
    }
    Ok(StateConfig {
        backend,
        dir,
        timeout,
        on_error,
        idempotency_max_entries,
        idempotency_max_bytes,
    })
}

/// `routes.<name>.idempotency`: `off`, or settings over the defaults (on, 24 h, wait).
fn idempotency(
    cx: &Ctx<'_>,
    path: &str,
    raw: Option<super::raw::RawIdempotency>,
) -> Result<Option<Idempotency>, ConfigError> {
    use super::raw::RawIdempotency as R;
    let path = format!("{path}.idempotency");
    match raw {
        None => Ok(Some(Idempotency::default())),
        Some(R::Word(w)) if w == "off" => Ok(None),
        Some(R::Word(w)) => {
            Err(cx.err(path, format!("expected off or {{ttl, in_flight}}, got {w:?}")))
        }
        Some(R::Settings(s)) => {
            let d = Idempotency::default();
            let wait = match s.in_flight.as_deref() {
                None | Some("wait") => true,
                Some("reject") => false,
                Some(other) => {
                    return Err(cx.err(
                        format!("{path}.in_flight"),
                        format!("expected wait or reject, got {other:?}"),
                    ));
                }
            };
            let ttl = s.ttl.map_or(d.ttl, |t| t.0);
            if ttl.is_zero() {
                return Err(cx.err(format!("{path}.ttl"), "expected a duration above zero"));
            }
            Ok(Some(Idempotency { ttl, wait }))
        }
    }
}

fn breaker(
    cx: &Ctx<'_>,
    b: &super::raw::RawBreaker,
) -> Result<crate::routing::health::BreakerConfig, ConfigError> {
    let d = crate::routing::health::BreakerConfig::default();
    let out = crate::routing::health::BreakerConfig {
        consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate: b.failure_rate.unwrap_or(d.failure_rate),
        min_requests: b.min_requests.unwrap_or(d.min_requests),
        window: b.window.map_or(d.window, |w| w.0),
        open_for: b.open_for.map_or(d.open_for, |w| w.0),
        max_open_for: b.max_open_for.map_or(d.max_open_for, |w| w.0),
    };
    if out.consecutive_failures == 0 {
        return Err(cx.err("circuit_breaker.consecutive_failures", "expected at least 1"));
    }
    if !(out.failure_rate > 0.0 && out.failure_rate <= 1.0) {
        return Err(
            cx.err("circuit_breaker.failure_rate", "expected a fraction above 0 and at most 1")
        );
    }
    if out.window.is_zero() || out.open_for.is_zero() || out.max_open_for < out.open_for {
        return Err(cx.err(
            "circuit_breaker",
            "expected window and open_for above zero, and max_open_for at least open_for",
        ));
    }
    Ok(out)
}

fn addr(
    cx: &Ctx<'_>,
    path: &str,
    v: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_owned());
    s.parse().map_err(|_| cx.err(path, format!("expected an address like {default}, got {s:?}")))
}

fn server(cx: &Ctx<'_>, s: RawServer) -> Result<Server, ConfigError> {
    let max_body = s.max_body_bytes.map_or(8 << 20, |v| v.0);
    if max_body == 0 || max_body > (1 << 30) {
        return Err(cx.err("server.max_body_bytes", "expected a size from 1B to 1GiB"));
    }
    let max_conc = s.max_concurrent_requests.unwrap_or(1024);
    if max_conc == 0 {
        return Err(cx.err("server.max_concurrent_requests", "expected at least 1"));
    }
    let workers = match s.worker_threads {
        None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        Some(n @ 1..=1024) => n as usize,
        Some(_) => return Err(cx.err("server.worker_threads", "expected a count from 1 to 1024")),
    };
    // A zero read timeout would drop every request whose head (or body) takes a second read.
    let read_timeout = |key: &str, v: Option<super::units::HumanDuration>, default: u64| {
        let d = v.map_or(Duration::from_secs(default), |d| d.0);
        if d.is_zero() {
            return Err(cx.err(format!("server.{key}"), "expected a duration above zero"));
        }
        Ok(d)
    };
    Ok(Server {
        listen: addr(cx, "server.listen", s.listen, "127.0.0.1:8080")?,
        admin_listen: addr(cx, "server.admin_listen", s.admin_listen, "127.0.0.1:9090")?,
        max_body_bytes: max_body as usize,
        max_concurrent_requests: max_conc as usize,
        shutdown_grace: s.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        shutdown_delay: s.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
        header_read_timeout: read_timeout("header_read_timeout", s.header_read_timeout, 10)?,
        body_read_timeout: read_timeout("body_read_timeout", s.body_read_timeout, 30)?,
        worker_threads: workers,
    })
}

fn provider(cx: &Ctx<'_>, name: &str, p: RawProvider) -> Result<ProviderSpec, ConfigError> {
    let path = format!("providers.{name}");
    check_name(cx, &path, name)?;
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "openai_compatible" => ProviderKind::OpenAiCompatible,
        "mock" => ProviderKind::Mock,
        "anthropic" => ProviderKind::Anthropic,
        other => {
            return Err(cx.err(
                format!("{path}.kind"),
                format!(
                    "unknown provider kind {other:?}; expected openai, openai_compatible, anthropic or mock"
                ),
            ));
        }
    };
    let wire = match (kind, p.api.as_deref()) {
        (ProviderKind::Anthropic, None) => Wire::Anthropic,
        (ProviderKind::Mock, None | Some("openai")) => Wire::OpenAi,
        (ProviderKind::Mock, Some("anthropic")) => Wire::Anthropic,
        (ProviderKind::Mock, Some(other)) => {
            return Err(cx.err(
                format!("{path}.api"),
                format!("expected openai or anthropic, got {other:?}"),
            ));
        }
        (_, None) => Wire::OpenAi,
        (_, Some(_)) => {
            return Err(cx.err(
                format!("{path}.api"),
                "only a mock provider takes `api`; the kind sets the wire format",
            ));
        }
    };
    let key = match (p.api_key_env, p.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(cx.err(&path, "set api_key_env or api_key_file, not both"));
        }
        (Some(e), None) => KeySource::Env(e),
        (None, Some(f)) => KeySource::File(PathBuf::from(f)),
        (None, None) => KeySource::None,
    };
    let base_url = match (kind, p.base_url) {
        (ProviderKind::Mock, None) => String::new(),
        (ProviderKind::Mock, Some(_)) => {
            return Err(cx.err(format!("{path}.base_url"), "a mock provider runs in-process and takes no base_url; point an openai_compatible provider at `tidegate mock-provider` instead"));
        }
        (ProviderKind::OpenAi, None) => "https://api.openai.com/v1".to_owned(),
        (ProviderKind::Anthropic, None) => "https://api.anthropic.com".to_owned(),
        (ProviderKind::OpenAiCompatible, None) => {
            return Err(cx.err(
                format!("{path}.base_url"),
                "expected a base URL like http://127.0.0.1:8000/v1",
            ));
        }
        (_, Some(u)) => {
            let u = u.trim_end_matches('/').to_owned();
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.parse::<http::Uri>().is_ok_and(|uri| uri.host().is_some());
            if !ok {
                return Err(cx.err(
                    format!("{path}.base_url"),
                    format!("expected an http:// or https:// URL, got {u:?}"),
                ));
            }
            u
        }
    };
    if kind == ProviderKind::OpenAi && p.supports_prefill == Some(true) {
        return Err(cx.err(
            format!("{path}.supports_prefill"),
            "the OpenAI API does not continue a trailing assistant message",
        ));
    }
    let http2_max_streams = match (kind, p.http2_max_streams) {
        (_, None) => super::HTTP2_MAX_STREAMS,
        (ProviderKind::Mock, Some(_)) => {
            return Err(cx.err(
                format!("{path}.http2_max_streams"),
                "a mock provider runs in-process and has no connections",
            ));
        }
        (_, Some(n)) if (1..=MAX_HTTP2_STREAMS).contains(&n) => n,
        (_, Some(n)) => {
            return Err(cx.err(
                format!("{path}.http2_max_streams"),
                format!("expected 1 to {MAX_HTTP2_STREAMS} requests per connection, got {n}"),
            ));
        }
    };
    Ok(ProviderSpec {
        name: name.to_owned(),
        kind,
        base_url,
        key,
        ca_file: p.ca_file.map(PathBuf::from),
        http2_max_streams,
        supports_prefill: p
            .supports_prefill
            .unwrap_or(matches!(kind, ProviderKind::Mock | ProviderKind::Anthropic)),
        wire,
    })
}

/// The largest `http2_max_streams`: far above any upstream's stream limit (nginx allows 128,
/// hyper 200, Go 250), so a larger value is a typo.
const MAX_HTTP2_STREAMS: u32 = 10_000;

/// A YAML error's message for a report that already names `path`: without the parser's own
/// location prefix (`routes.chat: unknown field ...` under `routes.chat.timeout`), and with
/// the names of internal types (`expected struct RawRoute`) read as what they are.
fn yaml_message(path: &str, msg: &str) -> String {
    let msg = match msg.split_once(": ") {
        Some((at, rest))
            if !at.contains(' ')
                && (path == at
                    || path.strip_prefix(at).is_some_and(|r| r.starts_with(['.', '[']))) =>
        {
            rest
        }
        _ => msg,
    };
    let msg = match msg.split_once("expected struct ") {
        Some((before, after)) => {
            let rest = after.split_once(' ').map_or("", |(_, r)| r);
            format!("{before}expected a mapping of keys {rest}").trim_end().to_owned()
        }
        None => msg.to_owned(),
    };
    // serde names the Rust number types; say what they take.
    [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number ≥ 0"),
        ("f64", "a number"),
    ]
    .iter()
    .fold(msg + " ", |m, (rust, plain)| {
        m.replace(&format!("expected {rust} "), &format!("expected {plain} "))
    })
    .trim_end()
    .to_owned()
}

/// Text sent as a response header value (the label, the upstream model): no control
/// characters (tab aside), which `http::HeaderValue` refuses.
fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Names appear in URL paths and metric labels: keep them to a safe alphabet.
fn check_name(cx: &Ctx<'_>, path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(cx.err(path, format!("name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")))
    }
}

fn routes(
    cx: &Ctx<'_>,
    raw: BTreeMap<String, RawRoute>,
    providers: &BTreeMap<String, Arc<ProviderSpec>>,
    models: &BTreeMap<String, ModelInfo>,
) -> Result<Vec<Arc<Route>>, ConfigError> {
    if raw.is_empty() {
        return Err(cx.err("routes", "expected at least one route"));
    }
    let defined = providers.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
    let mut claimed: HashMap<String, String> = HashMap::new();
    let mut default_route: Option<String> = None;
    let mut out = Vec::with_capacity(raw.len());
    for (name, r) in raw {
        let path = format!("routes.{name}");
        check_name(cx, &path, &name)?;
        if r.targets.is_empty() {
            return Err(cx.err(format!("{path}.targets"), "expected at least one target"));
        }
        let mut targets = Vec::with_capacity(r.targets.len());
        let mut free_tiers: Vec<FreeTier> = Vec::new();
        for (i, t) in r.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{i}]");
            let kinds = usize::from(t.provider.is_some())
                + usize::from(t.cache.is_some())
                + usize::from(t.template.is_some());
            if kinds != 1 {
                return Err(cx.err(
                    tpath,
                    "expected exactly one of `provider` (with `model`), `cache` or `template`",
                ));
            }
            if let Some(c) = t.cache {
                if t.model.is_some() {
                    return Err(cx.err(format!("{tpath}.model"), "a cache tier takes no model"));
                }
                if c.max_age.0.is_zero() {
                    return Err(
                        cx.err(format!("{tpath}.cache.max_age"), "expected a duration above zero")
                    );
                }
                free_tiers.push(FreeTier::Cache { max_age: c.max_age.0 });
                continue;
            }
            if let Some(text) = t.template {
                if t.model.is_some() {
                    return Err(cx.err(format!("{tpath}.model"), "a template tier takes no model"));
                }
                if text.trim().is_empty() {
                    return Err(
                        cx.err(format!("{tpath}.template"), "expected the fixed answer text")
                    );
                }
                free_tiers.push(FreeTier::Template(text));
                continue;
            }
            if !free_tiers.is_empty() {
                return Err(cx.err(tpath, "provider targets must come before the cache and template tiers (those are fallbacks)"));
            }
            let Some(provider) = t.provider else {
                return Err(cx.err(tpath, "expected `provider` (and `model`)"));
            };
            if !providers.contains_key(&provider) {
                return Err(cx.err(
                    format!("{tpath}.provider"),
                    format!("unknown provider {provider:?}; defined: {defined}"),
                ));
            }
            let model = match t.model {
                Some(m) if !m.trim().is_empty() && header_safe(&m) => m,
                _ => {
                    return Err(cx.err(
                        format!("{tpath}.model"),
                        "expected the upstream model name (printable text: it is sent in the x-tidegate-model header)",
                    ));
                }
            };
            targets.push(Target { provider, model });
        }
        for m in &r.match_models {
            if let Some(other) = claimed.insert(m.clone(), name.clone()) {
                return Err(cx.err(
                    format!("{path}.match_models"),
                    format!("model {m:?} is already matched by route {other:?}"),
                ));
            }
        }
        if r.default
            && let Some(other) = default_route.replace(name.clone())
        {
            return Err(cx.err(
                format!("{path}.default"),
                format!("route {other:?} is already the default"),
            ));
        }
        let timeouts = timeouts(cx, &path, &r.timeouts)?;
        let resume = match r.resume.as_deref() {
            None | Some("auto") => true,
            Some("off") => false,
            Some(other) => {
                return Err(cx.err(
                    format!("{path}.resume"),
                    format!("expected auto or off, got {other:?}"),
                ));
            }
        };
        let retries = Retries {
            per_target: r.retries.per_target.unwrap_or(1),
            total: r.retries.total.unwrap_or(3),
            backoff: r.retries.backoff.map_or(Duration::from_millis(50), |d| d.0),
            max_retry_after: r.retries.max_retry_after.map_or(Duration::from_secs(2), |d| d.0),
        };
        if retries.total == 0 {
            return Err(cx.err(format!("{path}.retries.total"), "expected at least 1 attempt"));
        }
        for (k, v) in [("backoff", retries.backoff), ("max_retry_after", retries.max_retry_after)] {
            if v > MAX_TIMEOUT {
                return Err(cx.err(format!("{path}.retries.{k}"), "expected at most 168h (7 days)"));
            }
        }
        let mut route = Route {
            name,
            match_models: r.match_models,
            default: r.default,
            targets,
            free_tiers,
            resume,
            timeouts,
            retries,
            drop_unsupported_params: r.drop_unsupported_params,
            limits: super::Limits::default(),
            idempotency: idempotency(cx, &path, r.idempotency)?,
        };
        route.limits =
            super::limits::limits(&path, &r.limits, &route, models, &|p, m| cx.err(p, m))?;
        out.push(Arc::new(route));
    }
    Ok(out)
}

/// The longest timeout accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

fn timeouts(
    cx: &Ctx<'_>,
    path: &str,
    t: &super::raw::RawTimeouts,
) -> Result<Timeouts, ConfigError> {
    let get =
        |v: Option<super::units::HumanDuration>, d: u64| v.map_or(Duration::from_secs(d), |x| x.0);
    let out = Timeouts {
        connect: get(t.connect, 2),
        first_token: get(t.first_token, 60),
        idle: get(t.idle, 30),
        attempt: get(t.attempt, 300),
        total: get(t.total, 600),
    };
    for (k, v) in [
        ("connect", out.connect),
        ("first_token", out.first_token),
        ("idle", out.idle),
        ("attempt", out.attempt),
        ("total", out.total),
    ] {
        if v.is_zero() {
            return Err(cx.err(format!("{path}.timeouts.{k}"), "expected a duration above zero"));
        }
        // Deadlines are instants: an absurd duration would overflow them.
        if v > MAX_TIMEOUT {
            return Err(cx.err(format!("{path}.timeouts.{k}"), "expected at most 168h (7 days)"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = load_str(&format!("state: {{backend: redis, url_env: TG_TEST_REDIS_URL}}\n{MIN}"))
            .unwrap();
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
            let e = load_str(&up.replace("STREAMS", &format!(", http2_max_streams: {bad}")))
                .unwrap_err();
            assert_eq!(e.path, "providers.up.http2_max_streams", "{bad}: {e}");
        }
        let e = load_str(&MIN.replace("{kind: mock}", "{kind: mock, http2_max_streams: 8}"))
            .unwrap_err();
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
            let e =
                load_str(&MIN.replace("targets:", &format!("{key}\n    targets:"))).unwrap_err();
            assert_eq!(e.path, format!("routes.chat.{path}"), "{e}");
            assert!(e.message.contains(says), "{e}");
            assert!(!["u32", "u64", "f64"].iter().any(|t| e.message.contains(t)), "{e}");
        }
    }

    #[test]
    fn bad_duration_names_path() {
        let e = load_str(&MIN.replace("targets:", "timeouts: {total: 3 sec}\n    targets:"))
            .unwrap_err();
        assert_eq!(e.path, "routes.chat.timeouts.total");
    }

    #[test]
    fn absurd_durations_and_amounts_say_why() {
        for (key, path) in [
            ("retries: {backoff: 100000h}", "routes.chat.retries.backoff"),
            ("retries: {max_retry_after: 9000h}", "routes.chat.retries.max_retry_after"),
            ("timeouts: {idle: 200h}", "routes.chat.timeouts.idle"),
        ] {
            let e =
                load_str(&MIN.replace("targets:", &format!("{key}\n    targets:"))).unwrap_err();
            assert_eq!(
                (e.path.as_str(), e.message.as_str()),
                (path, "expected at most 168h (7 days)")
            );
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
        let c = load_str(&format!(
            "circuit_breaker: {{consecutive_failures: 3, open_for: 10s}}\n{MIN}"
        ))
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
}
