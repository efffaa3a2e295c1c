//! Static settings (`server.*`, `state`, `circuit_breaker`) are bound once at startup; a reload
//! that changes them applies everything else and says which keys need a restart.

use crate::config::{Config, Server, StateConfig};
use crate::routing::health::BreakerConfig;

/// The settings the running process was started with and keeps until it restarts.
pub(super) struct Static {
    server: Server,
    state: StateConfig,
    /// Breakers outlive config versions (docs/config.md: read at start).
    breaker: BreakerConfig,
}

impl Static {
    pub(super) fn of(cfg: &Config) -> Self {
        Self { server: cfg.server.clone(), state: cfg.state.clone(), breaker: cfg.breaker }
    }
}

/// Names the static keys of `cfg` that differ from the running process's, if any.
pub(super) fn changes(running: &Static, cfg: &Config) -> Option<String> {
    let keys = differing(running, cfg)?;
    Some(format!(
        "{keys} changed in {}: static settings take effect after a restart; the rest is active",
        cfg.version
    ))
}

/// For a pin restored at start over a different file: the process bound the file's static
/// settings, and keeps them (a restart reads them from the file again).
pub(super) fn pinned_over_file(running: &Static, pinned: &Config) -> Option<String> {
    let keys = differing(running, pinned)?;
    Some(format!(
        "{keys} of the pinned version {} differ from the config file's, which this process started with and keeps (static settings come from the file at start)",
        pinned.version
    ))
}

fn differing(running: &Static, cfg: &Config) -> Option<String> {
    let s = &running.server;
    let n = &cfg.server;
    let keys: Vec<&str> = [
        ("server.listen", s.listen != n.listen),
        ("server.admin_listen", s.admin_listen != n.admin_listen),
        ("server.max_body_bytes", s.max_body_bytes != n.max_body_bytes),
        ("server.max_concurrent_requests", s.max_concurrent_requests != n.max_concurrent_requests),
        ("server.shutdown_grace", s.shutdown_grace != n.shutdown_grace),
        ("server.shutdown_delay", s.shutdown_delay != n.shutdown_delay),
        ("server.header_read_timeout", s.header_read_timeout != n.header_read_timeout),
        ("server.body_read_timeout", s.body_read_timeout != n.body_read_timeout),
        ("server.worker_threads", s.worker_threads != n.worker_threads),
        ("state", running.state != cfg.state),
        ("circuit_breaker", running.breaker != cfg.breaker),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect();
    (!keys.is_empty()).then(|| keys.join(", "))
}
