//! The one integration-test binary (loopback only). Modules by capability.

mod common;

mod bad_input;
mod cli;
mod core_api;
mod hostile_upstream;
mod sockets;
mod streaming;
