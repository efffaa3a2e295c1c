//! Every Prometheus metric tidegate exports (SPEC §9), in one place.
//!
//! Label values come only from config (route, provider and model names as configured, fixed
//! reason and outcome words), never from what a client sent, so cardinality is bounded by the
//! config. Series for each configured route and target are created when a config is prepared,
//! so dashboards see zeros rather than gaps.

use std::sync::Arc;

mod names;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from sub-millisecond gateway overhead to multi-minute streams.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Overhead buckets in seconds: what the gateway itself adds.
const OVERHEAD: &[f64] =
    &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub overhead: HistogramVec,
    pub upstream_attempts: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub retries: IntCounterVec,
    pub stream_aborts: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub config_info: IntGaugeVec,
    pub config_pinned: IntGauge,
    /// `tidegate_config_restart_required`: 1 while the active version's static settings
    /// (`server`, `state`, `circuit_breaker`) differ from the ones this process runs with.
    pub config_restart_required: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_success: Gauge,
    pub truncations: IntCounterVec,
    /// Counted in integer micro-dollars (exact, like every amount tidegate keeps), exposed in
    /// USD (`MicroUsd`).
    pub cost_usd: IntCounterVec,
    pub circuit_open: GaugeVec,
    pub ceiling_rejections: IntCounterVec,
    pub budget_remaining: GaugeVec,
    pub idempotency: IntCounterVec,
    pub state_errors: IntCounterVec,
    /// A flag per config version whose request series are exported, set when the version
    /// leaves the history ([`Metrics::forget_version`]): its requests still in flight then do
    /// not bring its series back.
    retired: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<AtomicBool>>>,
    /// The latest version that had each route and target ([`names`]).
    names: std::sync::Mutex<names::Names>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic_metric(name, e));
    register(r, name, Box::new(c.clone()));
    c
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .unwrap_or_else(|e| panic_metric(name, e));
    register(r, name, Box::new(h.clone()));
    h
}

/// Exposes a counter of micro-dollars in USD: each sample is divided once, at scrape time, so
/// the total never drifts the way adding fractions of a dollar in floating point does
/// (`0.016999999999999998`).
struct MicroUsd(IntCounterVec);

impl prometheus::core::Collector for MicroUsd {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        for m in families.iter_mut().flat_map(|f| f.mut_metric().iter_mut()) {
            let mut c = prometheus::proto::Counter::default();
            c.set_value(m.get_counter().get_value() / 1e6);
            m.set_counter(c);
        }
        families
    }
}

fn register(r: &Registry, name: &str, c: Box<dyn prometheus::core::Collector>) {
    r.register(c).unwrap_or_else(|e| panic_metric(name, e));
}

/// Metric definitions are static; a failure here is a programming error caught by every test.
fn panic_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name}: {e}")
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let inflight = IntGaugeVec::new(
            Opts::new("tidegate_inflight_requests", "Requests (and streams) in flight."),
            &["route"],
        )
        .unwrap_or_else(|e| panic_metric("inflight", e));
        register(&r, "inflight", Box::new(inflight.clone()));
        let config_info = IntGaugeVec::new(
            Opts::new("tidegate_config_info", "The active config version (value 1)."),
            &["version", "label"],
        )
        .unwrap_or_else(|e| panic_metric("config_info", e));
        register(&r, "config_info", Box::new(config_info.clone()));
        let config_pinned =
            IntGauge::new("tidegate_config_pinned", "1 while the config is pinned.")
                .unwrap_or_else(|e| panic_metric("config_pinned", e));
        register(&r, "config_pinned", Box::new(config_pinned.clone()));
        let config_restart_required = IntGauge::new(
            "tidegate_config_restart_required",
            "1 while the active config version's static settings (server, state, circuit_breaker) differ from those this process started with: they take effect after a restart.",
        )
        .unwrap_or_else(|e| panic_metric("config_restart_required", e));
        register(&r, "config_restart_required", Box::new(config_restart_required.clone()));
        let config_last_success = Gauge::new(
            "tidegate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )
        .unwrap_or_else(|e| panic_metric("config_last", e));
        register(&r, "config_last", Box::new(config_last_success.clone()));
        let cost_usd = IntCounterVec::new(
            Opts::new("tidegate_cost_usd_total", "Settled upstream cost in USD."),
            &["route", "provider", "model"],
        )
        .unwrap_or_else(|e| panic_metric("cost", e));
        register(&r, "cost", Box::new(MicroUsd(cost_usd.clone())));
        let circuit_open = GaugeVec::new(
            Opts::new(
                "tidegate_circuit_open",
                "1 while the provider+model circuit breaker is open.",
            ),
            &["provider", "model"],
        )
        .unwrap_or_else(|e| panic_metric("circuit", e));
        register(&r, "circuit", Box::new(circuit_open.clone()));
        let budget_remaining = GaugeVec::new(
            Opts::new(
                "tidegate_budget_remaining_usd",
                "What the route may still reserve in its current budget window, in USD.",
            ),
            &["route"],
        )
        .unwrap_or_else(|e| panic_metric("budget", e));
        register(&r, "budget", Box::new(budget_remaining.clone()));
        Self {
            ceiling_rejections: counter(
                &r,
                "tidegate_ceiling_rejections_total",
                "Requests refused by a limit (input_tokens, max_n, rpm, tpm), or targets passed over (cost_ceiling, budget).",
                &["route", "kind"],
            ),
            budget_remaining,
            idempotency: counter(
                &r,
                "tidegate_idempotency_total",
                "Keyed requests by result (executed, replayed (waiters included), mismatch, in_flight, released, untracked, unavailable).",
                &["route", "result"],
            ),
            state_errors: counter(
                &r,
                "tidegate_state_errors_total",
                "Shared-state (Redis) calls that failed, by concern; each fell back per state.on_error.",
                &["concern"],
            ),
            requests: counter(
                &r,
                "tidegate_requests_total",
                "Requests by route, outcome and config version.",
                &["route", "outcome", "config_version"],
            ),
            request_duration: histogram(
                &r,
                "tidegate_request_duration_seconds",
                "Whole request time, streams to their end.",
                &["route"],
                LATENCY,
            ),
            overhead: histogram(
                &r,
                "tidegate_overhead_seconds",
                "Request time minus time waiting on upstreams and the client.",
                &["route"],
                OVERHEAD,
            ),
            upstream_attempts: counter(
                &r,
                "tidegate_upstream_attempts_total",
                "Upstream attempts by outcome and reason.",
                &["provider", "model", "outcome", "reason"],
            ),
            upstream_duration: histogram(
                &r,
                "tidegate_upstream_duration_seconds",
                "Upstream attempt time.",
                &["provider", "model"],
                LATENCY,
            ),
            ttft: histogram(
                &r,
                "tidegate_time_to_first_token_seconds",
                "Time from attempt start to the first content byte.",
                &["provider", "model"],
                LATENCY,
            ),
            tokens: counter(
                &r,
                "tidegate_tokens_total",
                "Tokens by type (input, output, cached_input).",
                &["route", "provider", "model", "type"],
            ),
            fallbacks: counter(
                &r,
                "tidegate_fallbacks_total",
                "Requests served by a later tier than the first target.",
                &["route", "tier", "reason"],
            ),
            retries: counter(
                &r,
                "tidegate_retries_total",
                "Retries of the same target.",
                &["route", "provider", "reason"],
            ),
            stream_aborts: counter(
                &r,
                "tidegate_stream_aborts_total",
                "Streams that ended early, by side.",
                &["route", "side", "reason"],
            ),
            truncations: counter(
                &r,
                "tidegate_truncations_total",
                "Answers cut by the output token limit (finish_reason length).",
                &["route", "provider", "model"],
            ),
            config_reloads: counter(
                &r,
                "tidegate_config_reloads_total",
                "Config reloads by result (applied, rejected, deferred).",
                &["result"],
            ),
            inflight,
            config_info,
            config_pinned,
            config_restart_required,
            config_last_success,
            cost_usd,
            circuit_open,
            retired: Default::default(),
            names: Default::default(),
            registry: r,
        }
    }

    /// The flag a request of `version` checks before creating a series of it: set once the
    /// version is retired.
    pub fn version_retired(&self, version: &Arc<str>) -> Arc<AtomicBool> {
        let mut flags = self.retired.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        flags.entry(version.clone()).or_default().clone()
    }

    /// Drops the `tidegate_requests_total` series of a config version that is gone from the
    /// history (a long-running process reloaded often would otherwise export every version it
    /// ever ran, for every route and outcome), and those of the routes and targets it was the
    /// last version to have.
    pub fn forget_version(&self, version: &str) {
        self.forget_names(version);
        let mut flags = self.retired.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(flag) = flags.remove(version) {
            flag.store(true, Ordering::Relaxed);
        }
        drop(flags);
        for family in prometheus::core::Collector::collect(&self.requests) {
            for m in family.get_metric() {
                let value = |name: &str| {
                    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned())
                };
                if value("config_version").as_deref() != Some(version) {
                    continue;
                }
                if let (Some(route), Some(outcome)) = (value("route"), value("outcome")) {
                    let _ = self.requests.remove_label_values(&[&route, &outcome, version]);
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exposed_in_usd_without_drift() {
        let m = Metrics::new();
        let c = m.cost_usd.with_label_values(&["r", "p", "m"]);
        // 5 x 0.0011 USD: added as floats this reads 0.0055000000000000005.
        for _ in 0..5 {
            c.inc_by(1100);
        }
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                "tidegate_cost_usd_total{model=\"m\",provider=\"p\",route=\"r\"} 0.0055\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE tidegate_cost_usd_total counter"), "{text}");
    }
}
