//! Emulators of the provider APIs, for tests, the demo and benchmarks.
//!
//! This crate depends on nothing of crmsync's, so what it signs and sends is an
//! independent check of what the engine verifies and parses.

pub mod hubspot;
