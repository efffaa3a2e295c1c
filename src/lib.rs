//! tidegate: a transparent LLM gateway.
//!
//! Applications keep their OpenAI SDK and change only the base URL; tidegate routes each call
//! to a configured chain of provider targets with hard timeouts, bounded retries and failover,
//! normalizes the answer, and exports metrics and one log line per request. See the README for
//! the tour and `../shared/SPEC.md` for the contract.

pub mod app;
pub mod body;
pub mod cache;
pub mod cli_config;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod sse;
pub mod state;
pub mod store;
pub mod translate;
