//! Idempotency (SPEC §7): one execution per `Idempotency-Key`, replayed answers for duplicates.
//!
//! The module is split in two, and neither half knows about HTTP handlers:
//!
//! - [`key`]: pure functions that turn a request into the two values the store needs. The
//!   *scope* ([`key::scope`]) says which key this is: client identity + route + the client's
//!   key, so two clients (or two routes) never share an entry. The *fingerprint*
//!   ([`key::fingerprint`]) says which request this is: the SHA-256 of the canonical request
//!   JSON plus the endpoint, so a reused key with a different request is detected (422).
//! - [`memory`]: [`MemoryStore`], the default single-process backend. A claim on a scope either
//!   executes (the caller owns the key through a [`Lease`]), replays a completed answer, waits
//!   for (or, in `reject` mode, refuses) an identical request still in flight, or reports a
//!   fingerprint mismatch. It is bounded by entry count and by stored bytes.
//!
//! The handler's flow is: validate the header ([`key::validate_key`], 400 on error), compute
//! scope and fingerprint, [`MemoryStore::claim`], then on `Execute` run the request and
//! [`Lease::complete`] with the answer (or [`Lease::release`] on a retryable failure, so a retry
//! can execute); on `InFlight` either [`Waiter::wait`] or answer 409; on `Replay` send the stored
//! answer with `x-tidegate-idempotent-replay: true`; on `Mismatch` answer 422.

pub mod key;
pub mod memory;

mod codec;
pub use key::{client_identity, fingerprint, scope, validate_key};
pub use memory::{Claim, Lease, MemoryStore, StoredAnswer, WaitOutcome, Waiter};
