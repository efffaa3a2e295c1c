//! The gateway's shared state: the active config snapshot (swapped atomically), metrics, the
//! load-shedding limiter and the draining flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::providers::mock::MockStats;
use crate::proxy::record::LogSink;
use crate::runtime::{Shared, Snapshot};

pub struct Gateway {
    current: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub shared: Shared,
    /// `server.max_concurrent_requests` permits; a request that finds none is shed with 503.
    pub limiter: Arc<Semaphore>,
    /// `server.max_body_bytes` and `server.body_read_timeout` as the process started with them
    /// (static settings: a reload that changes them says they need a restart).
    pub body_limits: (usize, std::time::Duration),
    pub log_sink: Arc<LogSink>,
    draining: AtomicBool,
    /// Cancelled when `server.shutdown_grace` ends with streams still open: each ends with the
    /// dialect's error event (`overloaded`) and its record is written, before the data plane's
    /// runtimes go.
    pub stop_streams: tokio_util::sync::CancellationToken,
}

impl Gateway {
    /// Prepares `config` and builds the gateway around it.
    pub fn new(config: Config, log_sink: LogSink) -> Result<Arc<Self>, String> {
        let metrics = Arc::new(Metrics::new());
        let shared = Shared::new(&config, &metrics)?;
        let permits = config.server.max_concurrent_requests;
        let body_limits = (config.server.max_body_bytes, config.server.body_read_timeout);
        let snap = Snapshot::prepare(config, &shared, &metrics)?;
        let gw = Arc::new(Self {
            current: ArcSwap::from_pointee(snap),
            metrics,
            shared,
            limiter: Arc::new(Semaphore::new(permits)),
            body_limits,
            log_sink: Arc::new(log_sink),
            draining: AtomicBool::new(false),
            stop_streams: tokio_util::sync::CancellationToken::new(),
        });
        gw.mark_active(None);
        Ok(gw)
    }

    /// The active snapshot; a request holds it to its end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Prepares `config` without activating it.
    pub fn prepare(&self, config: Config) -> Result<Snapshot, String> {
        // Connectors left by prepares that were never installed (a pinned candidate, a
        // rejected config) go first; live and in-progress snapshots hold theirs.
        self.shared.clients.prune();
        Snapshot::prepare(config, &self.shared, &self.metrics)
    }

    /// Prepares `config` only to know it could be activated (a candidate behind a pin): its
    /// metric series go to a scratch registry, so routes and models never served add none to
    /// `/metrics`. Activating it later prepares it again, for real.
    pub fn check_prepare(&self, config: Config) -> Result<(), String> {
        self.shared.clients.prune();
        Snapshot::prepare(config, &self.shared, &Metrics::new()).map(drop)
    }

    /// Activates a prepared snapshot atomically; in-flight requests keep the one they hold.
    pub fn install(&self, snap: Snapshot) {
        let old = self.current.swap(Arc::new(snap));
        self.mark_active(Some(&old));
        drop(old);
        self.shared.clients.prune();
    }

    fn mark_active(&self, old: Option<&Snapshot>) {
        let m = &self.metrics;
        if let Some(old) = old {
            let _ = m.config_info.remove_label_values(&[
                &old.config.version,
                old.config.label.as_deref().unwrap_or(""),
            ]);
        }
        let snap = self.snapshot();
        m.config_info
            .with_label_values(&[&snap.config.version, snap.config.label.as_deref().unwrap_or("")])
            .set(1);
        // The remaining-budget series follow the active version: a route with a budget has
        // one, a route without none (a budget removed takes its series with it, and so does a
        // route removed).
        if let Some(old) = old {
            for r in old.routes.iter().filter(|r| snap.route_by_name(&r.route.name).is_none()) {
                let _ = m.budget_remaining.remove_label_values(&[&r.route.name]);
            }
        }
        let now = self.shared.clock.now();
        for r in &snap.routes {
            match (&r.ledger, r.route.limits.budget) {
                (Some(ledger), Some(limit)) => {
                    let gauge = r
                        .series
                        .budget_remaining
                        .get_or_init(|| m.budget_remaining.with_label_values(&[&r.route.name]));
                    gauge.set(ledger.remaining(now, &limit) as f64 / 1e6);
                }
                _ => {
                    let _ = m.budget_remaining.remove_label_values(&[&r.route.name]);
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.config_last_success.set(now);
    }

    /// Counters of the in-process mock provider named `provider`.
    /// Sets each budgeted route's remaining-budget gauge for the current window (a window
    /// that reset with no traffic since reads full again). With Redis, the shared figure; if
    /// Redis does not answer, the gauge keeps its last value.
    pub async fn refresh_budget_gauges(&self) {
        let snap = self.snapshot();
        let now = self.shared.clock.now();
        for r in &snap.routes {
            let (Some(ledger), Some(limit)) = (&r.ledger, r.route.limits.budget) else {
                continue;
            };
            let (spent, reserved) = match &self.shared.state.redis {
                Some(store) => {
                    match store.budget_status(&r.route.name, limit.window_of(now)).await {
                        Ok(s) => s,
                        Err(_) => continue,
                    }
                }
                None => ledger.status(now, &limit),
            };
            let left = limit.limit.saturating_sub(spent.saturating_add(reserved));
            if let Some(g) = r.series.budget_remaining.get() {
                g.set(left as f64 / 1e6);
            }
        }
    }

    pub fn mock_stats(&self, provider: &str) -> Arc<MockStats> {
        self.shared.mock_stats(provider)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
