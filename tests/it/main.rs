//! The one integration-test binary (loopback only). Modules by capability.

// Test helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod anthropic;
mod auth;
mod bad_input;
mod breaker;
mod cli;
mod config_lifecycle;
mod core_api;
mod drain;
mod hostile_upstream;
mod idempotency;
mod limits;
mod redis_server;
mod resume;
mod scenarios;
mod shared_state;
mod sockets;
mod streaming;
mod tiers;
mod tls_upstream;
mod upstream_pool;
