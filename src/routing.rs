//! Per-target health and retry economics for the failover loop (SPEC §5).
//!
//! The failover loop asks two questions before it spends an attempt: "is this target worth
//! trying right now?" ([`health::Health`], a circuit breaker per provider+model plus the 429
//! cooldown) and "may this request retry at all?" ([`retry_budget::RetryBudget`], a
//! process-wide cap on retries). Both live outside the per-config snapshot, keyed by names, so a
//! config reload neither forgets that a provider is down nor hands every request a fresh retry
//! allowance in the middle of an outage. Both use `tokio::time::Instant`, so their behaviour over
//! seconds and minutes is testable with paused time.

pub mod health;
pub mod retry_budget;
