//! Shared state backends (`state.backend`, SPEC §6-7).
//!
//! [`redis`] holds the budgets, GCRA rate limits and idempotency records that every replica of
//! a deployment shares. It is self-contained: every call is bounded by a timeout and answers
//! `Err(StoreError)` instead of hanging when Redis is down or slow, and the store reconnects by
//! itself when Redis comes back.
//!
//! [`SharedState`] is what the request path sees: the Redis store when configured, the
//! `state.on_error` policy for each concern, and the process-local idempotency store (the
//! memory backend, and the fallback while Redis is away).

pub mod redis;

use std::time::Duration;

use crate::config::{OnError, Policy, StateBackend, StateConfig};

use crate::idempotency::MemoryStore;

/// The state a request consults beyond its config version.
pub struct SharedState {
    /// `state.backend: redis`.
    pub redis: Option<redis::RedisStore>,
    pub on_error: OnError,
    /// Idempotency records of this process.
    pub idem: MemoryStore,
    /// Largest answer stored for a key, in bytes (an eighth of the memory store's bytes).
    pub idem_cap: usize,
    /// Counts calls that fell back to local state (or were refused) because Redis failed.
    pub errors: prometheus::IntCounterVec,
}

impl SharedState {
    /// Builds the backend of `state:`. Needs a tokio runtime for Redis; never connects here.
    pub fn new(cfg: &StateConfig, errors: prometheus::IntCounterVec) -> Result<Self, String> {
        let redis = match &cfg.backend {
            StateBackend::Memory => None,
            StateBackend::Redis { url, prefix } => Some(
                redis::RedisStore::new(&url.resolve()?, prefix, cfg.timeout)
                    .map_err(|e| format!("state.url: {e}"))?,
            ),
        };
        Ok(Self {
            redis,
            on_error: cfg.on_error,
            idem: MemoryStore::new(cfg.idempotency_max_entries, cfg.idempotency_max_bytes),
            idem_cap: cfg.idempotency_max_bytes / 8,
            errors,
        })
    }

    /// Records a Redis failure for `concern` and returns its policy.
    pub fn failed(&self, concern: &str, e: &redis::StoreError) -> Policy {
        self.errors.with_label_values(&[concern]).inc();
        tracing::warn!(concern, error = %e, "shared state unavailable");
        match concern {
            "budgets" => self.on_error.budgets,
            "rate_limits" => self.on_error.rate_limits,
            _ => self.on_error.idempotency,
        }
    }
}

/// A TTL for a budget window key: past the window's end by one more window.
pub fn window_ttl(per: Duration) -> Duration {
    per.saturating_mul(2)
}
