//! Raw config to runtime config: defaults, cross-references and range checks, each failure
//! naming its key path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawConfig, RawRoute};
use super::{
    Config, ConfigError, FreeTier, Idempotency, Logging, ModelInfo, ProviderKind, ProviderSpec,
    Retries, Route, Target, Timeouts, version_of,
};

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_owned(), path: path.into(), message: message.into() }
    }
}

mod provider;
mod sections;

use provider::provider;
use sections::{breaker, server, state};

/// The deepest nesting of `[` and `{` a config may have (serde_yaml's own recursion limit).
const MAX_DEPTH: usize = 128;

/// The deepest nesting of flow collections (`[`, `{`) in YAML text, outside quoted scalars and
/// comments: a scan in linear time. (Block nesting needs a line's worth of indentation per
/// level, so the file size cap already bounds it.)
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut prev = b'\n';
    // The last byte that was not a space or tab: a quote opens a quoted scalar only where a
    // scalar can start (`it's` in plain text is an apostrophe).
    let mut last = b'\n';
    let mut escaped = false;
    for &b in text.as_bytes() {
        match (quote, b) {
            _ if comment => comment = b != b'\n',
            (Some(b'"'), b'\\') if !escaped => {
                escaped = true;
                prev = b;
                continue;
            }
            (Some(q), _) if b == q && !escaped => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'')
                if matches!(last, b'\n' | b':' | b'-' | b'[' | b'{' | b',' | b'?') =>
            {
                quote = Some(b);
            }
            (None, b'#') if prev.is_ascii_whitespace() => comment = true,
            (None, b'[' | b'{') => {
                depth += 1;
                max = max.max(depth);
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        escaped = false;
        prev = b;
        if b != b' ' && b != b'\t' {
            last = b;
        }
    }
    max
}

/// The longest `label`: a version's name, sent as `x-tidegate-config-label` on every response.
const MAX_LABEL_BYTES: usize = 256;

pub fn load(file: &Path, content: &[u8]) -> Result<Config, ConfigError> {
    let cx = Ctx { file };
    let text = std::str::from_utf8(content).map_err(|_| cx.err("", "file is not valid UTF-8"))?;
    // A byte-order mark (Windows editors write one) is no part of the YAML.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(cx.err("", "file is empty"));
    }
    if flow_depth(text) > MAX_DEPTH {
        // The YAML parser's time grows with the square of the depth (100,000 levels: 20 s),
        // and its deserializer refuses over 128 levels anyway: refuse before parsing.
        return Err(cx.err("", format!("nested deeper than {MAX_DEPTH} levels")));
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
        && l.len() > MAX_LABEL_BYTES
    {
        return Err(cx.err(
            "label",
            format!("expected at most {MAX_LABEL_BYTES} bytes (it is sent in a header on every response)"),
        ));
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
            let Some(spec) = providers.get(&provider) else {
                return Err(cx.err(
                    format!("{tpath}.provider"),
                    format!("unknown provider {provider:?}; defined: {defined}"),
                ));
            };
            let model = match t.model {
                Some(m) if !m.trim().is_empty() && header_safe(&m) => m,
                _ => {
                    return Err(cx.err(
                        format!("{tpath}.model"),
                        "expected the upstream model name (printable text: it is sent in the x-tidegate-model header)",
                    ));
                }
            };
            // A mock's model name is its behaviour: a bad directive fails here, not per request.
            if spec.kind == ProviderKind::Mock
                && let Err(e) = crate::providers::mock::Behaviour::parse(&model)
            {
                return Err(cx.err(format!("{tpath}.model"), e));
            }
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
mod tests;
