//! Shared state backends (`state.backend`, SPEC §6-7).
//!
//! [`redis`] holds the budgets, GCRA rate limits and idempotency records that every replica of
//! a deployment shares. It is self-contained: every call is bounded by a timeout and answers
//! `Err(StoreError)` instead of hanging when Redis is down or slow, and the store reconnects by
//! itself when Redis comes back.

pub mod redis;
