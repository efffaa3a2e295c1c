//! A prepared config: the validated [`Config`] plus everything built from it (providers with
//! their credentials, upstream clients, route lookups, header values, metric handles).
//!
//! Preparing is the fallible step; swapping a prepared [`Snapshot`] in is infallible and atomic
//! (`arc-swap`). A request loads one snapshot at its start and uses it to the end, so in-flight
//! requests and streams finish on the version they started with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use http::HeaderValue;
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::config::{Config, Route, Target};
use crate::error::{ErrorCode, GatewayError};
use crate::metrics::Metrics;
use crate::providers::client::Upstream;
use crate::providers::client::{ClientCache, read_ca_file};
use crate::providers::mock::MockStats;
use crate::providers::{Provider, resolve_key_with};

/// State that outlives config versions: connection pools, breakers, budgets, rate limiters,
/// idempotency records and mock counters.
pub struct Shared {
    pub clients: ClientCache,
    /// The cache tier's answers, kept across config versions.
    pub answers: Arc<crate::cache::AnswerCache>,
    /// Circuit breakers per provider+model.
    pub health: crate::routing::health::Health,
    /// The process-wide retry budget.
    pub retry_budget: crate::routing::retry_budget::RetryBudget,
    /// Route budgets' spend, by route name (survives reloads).
    pub ledgers: crate::limits::budget::Ledgers,
    /// Route rpm/tpm limiters, by route and quota (survive reloads that keep the quota).
    pub rates: crate::limits::rate::RateLimits,
    /// Budget windows are aligned to the Unix epoch on this clock.
    pub clock: crate::limits::EpochClock,
    /// Redis (when configured), the on-error policies and the local idempotency store.
    pub state: crate::store::SharedState,
    mock_stats: Mutex<HashMap<String, Arc<MockStats>>>,
}

impl Shared {
    /// Shared state for `config`'s breaker and `state:` settings (read once, at start).
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Self, String> {
        Ok(Self {
            clients: ClientCache::default(),
            answers: Arc::default(),
            health: crate::routing::health::Health::new(config.breaker),
            retry_budget: Default::default(),
            ledgers: Default::default(),
            rates: Default::default(),
            clock: crate::limits::EpochClock::new(),
            state: crate::store::SharedState::new(&config.state, metrics.state_errors.clone())?,
            mock_stats: Mutex::default(),
        })
    }

    /// The counters of the mock provider named `provider` (created on first use).
    pub fn mock_stats(&self, provider: &str) -> Arc<MockStats> {
        let mut m = self.mock_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(provider.to_owned()).or_default().clone()
    }
}

/// The metric series of one route, resolved once per config version so the request path
/// never hashes label strings.
pub struct RouteSeries {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub ok: IntCounter,
    pub fallback: IntCounter,
    pub duration: Histogram,
    pub overhead: Histogram,
    pub inflight: IntGauge,
    /// `tidegate_budget_remaining_usd`, on routes with a budget only (a route without one has
    /// no series: a 0 would read as a spent budget). Set when the version is activated
    /// (`Gateway::install`), not when it is prepared: a candidate that is never activated must
    /// not add or remove the active version's series.
    pub budget_remaining: std::sync::OnceLock<prometheus::Gauge>,
}

/// The metric series of one target of one route.
pub struct TargetSeries {
    pub provider: Arc<str>,
    pub model: Arc<str>,
    pub attempts_ok: IntCounter,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub input_tokens: IntCounter,
    pub output_tokens: IntCounter,
    pub cached_tokens: IntCounter,
    pub truncations: IntCounter,
    /// `tidegate_cost_usd_total` of this route and target, in micro-dollars.
    pub cost: IntCounter,
    /// The model's prices (built-in table or `models:`), when known.
    pub price: Option<crate::config::ModelInfo>,
    /// Which tokenizer counts this model's prompts.
    pub family: crate::limits::tokens::Family,
}

/// One target, ready to call.
pub struct TargetRuntime {
    pub target: Target,
    pub provider: Arc<Provider>,
    pub client: Upstream,
    pub model_header: HeaderValue,
    /// The upstream model as a JSON string literal, spliced into each upstream body.
    pub model_json: String,
    pub provider_header: HeaderValue,
    pub series: Arc<TargetSeries>,
}

/// One route, ready to serve.
pub struct RouteRuntime {
    /// Position in `Snapshot::routes`.
    pub index: usize,
    pub route: Arc<Route>,
    pub targets: Vec<TargetRuntime>,
    pub name_header: HeaderValue,
    pub series: Arc<RouteSeries>,
    /// The route's budget ledger and rate limiters, when it has those limits.
    pub ledger: Option<Arc<crate::limits::budget::Ledger>>,
    pub rpm: Option<Arc<crate::limits::rate::Limiter>>,
    pub tpm: Option<Arc<crate::limits::rate::Limiter>>,
}

/// Everything a request needs from one config version.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// `config.version`, shared cheaply with every request record.
    pub version: Arc<str>,
    /// Set when this version leaves the history ([`Metrics::forget_version`]).
    pub retired: Arc<std::sync::atomic::AtomicBool>,
    pub routes: Vec<RouteRuntime>,
    by_name: HashMap<String, usize>,
    by_model: HashMap<String, usize>,
    default: Option<usize>,
    pub version_header: HeaderValue,
    pub label_header: Option<HeaderValue>,
    pub loaded_at: SystemTime,
    /// The key and CA files this version was prepared from.
    pub sources: Sources,
}

/// The files a version was prepared from (provider key and CA files) and a digest of what each
/// held, so that a rotated Secret is noticed ([`Sources::changed`]) and the version prepared
/// again with it. Digests, not contents: no second copy of a key is kept.
#[derive(Default)]
pub struct Sources(Vec<(PathBuf, [u8; 32])>);

impl Sources {
    fn note(&mut self, path: &Path, bytes: &[u8]) {
        self.0.push((path.to_owned(), Sha256::digest(bytes).into()));
    }

    /// The first file that no longer holds what this version was prepared from (one that
    /// cannot be read counts), if any.
    pub fn changed(&self) -> Option<&Path> {
        self.0.iter().find_map(|(path, digest)| {
            let same = std::fs::read(path).is_ok_and(|b| Sha256::digest(&b)[..] == digest[..]);
            (!same).then_some(path.as_path())
        })
    }
}

/// Resolving the series also creates them, so dashboards see zeros rather than gaps.
fn route_series(m: &Metrics, route: &str, version: &Arc<str>) -> RouteSeries {
    m.note_route(route, version);
    RouteSeries {
        name: route.into(),
        version: version.clone(),
        ok: m.requests.with_label_values(&[route, "ok", version]),
        fallback: m.requests.with_label_values(&[route, "fallback", version]),
        duration: m.request_duration.with_label_values(&[route]),
        overhead: m.overhead.with_label_values(&[route]),
        inflight: m.inflight.with_label_values(&[route]),
        budget_remaining: std::sync::OnceLock::new(),
    }
}

fn target_series(
    m: &Metrics,
    route: &str,
    t: &Target,
    config: &Config,
    version: &Arc<str>,
) -> TargetSeries {
    let (p, model) = (t.provider.as_str(), t.model.as_str());
    m.note_target(route, p, model, version);
    // Created at 0 for every target (a breaker open now keeps its 1): an alert on it sees the
    // series before the first opening.
    m.circuit_open.with_label_values(&[p, model]);
    TargetSeries {
        provider: p.into(),
        model: model.into(),
        attempts_ok: m.upstream_attempts.with_label_values(&[p, model, "ok", "ok"]),
        duration: m.upstream_duration.with_label_values(&[p, model]),
        ttft: m.ttft.with_label_values(&[p, model]),
        input_tokens: m.tokens.with_label_values(&[route, p, model, "input"]),
        output_tokens: m.tokens.with_label_values(&[route, p, model, "output"]),
        cached_tokens: m.tokens.with_label_values(&[route, p, model, "cached_input"]),
        truncations: m.truncations.with_label_values(&[route, p, model]),
        cost: m.cost_usd.with_label_values(&[route, p, model]),
        price: config.models.get(model).cloned(),
        family: crate::limits::tokens::Family::of(model),
    }
}

fn header(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|_| format!("{s:?} cannot be sent as a header value"))
}

impl Snapshot {
    /// Builds providers, clients and lookups for `config`. Fails on anything that would make a
    /// request fail for configuration reasons (a missing key, an unreadable CA file).
    pub fn prepare(config: Config, shared: &Shared, metrics: &Metrics) -> Result<Snapshot, String> {
        let mut providers: BTreeMap<String, Arc<Provider>> = BTreeMap::new();
        let mut ca_files = HashMap::new();
        let mut sources = Sources::default();
        for (name, spec) in &config.providers {
            let key = resolve_key_with(&spec.key, |path| {
                let bytes = std::fs::read(path)?;
                sources.note(path, &bytes);
                Ok(bytes)
            })
            .map_err(|e| format!("providers.{name}: {e}"))?;
            if let Some(path) = &spec.ca_file {
                let ca = read_ca_file(path).map_err(|e| format!("providers.{name}: {e}"))?;
                sources.note(path, &ca.1);
                ca_files.insert(name.as_str(), ca);
            }
            let stats =
                (spec.kind == crate::config::ProviderKind::Mock).then(|| shared.mock_stats(name));
            providers.insert(name.clone(), Arc::new(Provider::new(spec.clone(), key, stats)));
        }
        let version: Arc<str> = config.version.as_str().into();
        let mut routes = Vec::with_capacity(config.routes.len());
        let (mut by_name, mut by_model, mut default) = (HashMap::new(), HashMap::new(), None);
        for (i, route) in config.routes.iter().enumerate() {
            let mut targets = Vec::with_capacity(route.targets.len());
            for t in &route.targets {
                let provider = providers.get(&t.provider).cloned().ok_or_else(|| {
                    format!("routes.{}: unknown provider {:?}", route.name, t.provider)
                })?;
                let client = shared
                    .clients
                    .get(
                        route.timeouts.connect,
                        ca_files.get(&*t.provider),
                        &provider.spec.base_url,
                        provider.spec.http2_max_streams as usize,
                    )
                    .map_err(|e| format!("providers.{}: {e}", t.provider))?;
                targets.push(TargetRuntime {
                    model_header: header(&t.model)?,
                    model_json: serde_json::Value::from(t.model.as_str()).to_string(),
                    provider_header: header(&t.provider)?,
                    series: Arc::new(target_series(metrics, &route.name, t, &config, &version)),
                    target: t.clone(),
                    provider,
                    client,
                });
            }
            by_name.insert(route.name.clone(), i);
            for m in &route.match_models {
                by_model.insert(m.clone(), i);
            }
            if route.default {
                default = Some(i);
            }
            let limits = &route.limits;
            if limits.counts_tokens() {
                for t in &targets {
                    crate::limits::tokens::warm(t.series.family);
                }
            }
            let series = Arc::new(route_series(metrics, &route.name, &version));
            let ledger = limits.budget.map(|_| shared.ledgers.get(&route.name));
            routes.push(RouteRuntime {
                index: i,
                name_header: header(&route.name)?,
                series,
                route: route.clone(),
                targets,
                ledger,
                rpm: limits.rpm.map(|q| shared.rates.get(&route.name, "rpm", q)),
                tpm: limits.tpm.map(|q| shared.rates.get(&route.name, "tpm", q)),
            });
        }
        let snap = Snapshot {
            retired: metrics.version_retired(&version),
            version,
            version_header: header(&config.version)?,
            label_header: config.label.as_deref().map(header).transpose()?,
            config: Arc::new(config),
            routes,
            by_name,
            by_model,
            default,
            loaded_at: SystemTime::now(),
            sources,
        };
        Ok(snap)
    }

    /// Route selection (SPEC §3), first match wins: header, path prefix, model equal to a route
    /// name, model listed in `match_models`, the default route.
    pub fn select(
        &self,
        header: Option<&str>,
        path_route: Option<&str>,
        model: Option<&str>,
    ) -> Result<&RouteRuntime, GatewayError> {
        let fixed = header
            .map(|h| (h, "header x-tidegate-route"))
            .or(path_route.map(|p| (p, "path /r/{route}")));
        if let Some((name, via)) = fixed {
            return self.by_name.get(name).map(|&i| &self.routes[i]).ok_or_else(|| {
                GatewayError::new(
                    ErrorCode::ModelNotFound,
                    format!("no route named {:?} (from {via})", crate::error::clip(name)),
                )
                .with_param(if via.starts_with("header") {
                    "x-tidegate-route"
                } else {
                    "path"
                })
            });
        }
        let found = model
            .and_then(|m| self.by_name.get(m).or_else(|| self.by_model.get(m)))
            .copied()
            .or(self.default);
        found.map(|i| &self.routes[i]).ok_or_else(|| {
            let msg = match model {
                Some(m) => {
                    format!("the model {m:?} matches no route and there is no default route")
                }
                None => "no model given and there is no default route".to_owned(),
            };
            GatewayError::new(ErrorCode::ModelNotFound, msg).with_param("model")
        })
    }

    pub fn route_by_name(&self, name: &str) -> Option<&RouteRuntime> {
        self.by_name.get(name).map(|&i| &self.routes[i])
    }

    /// The route a request naming `model` lands on by name or by `match_models` (not the
    /// default route's catch-all).
    pub fn route_for_model(&self, model: &str) -> Option<&RouteRuntime> {
        self.by_name.get(model).or_else(|| self.by_model.get(model)).map(|&i| &self.routes[i])
    }
}
