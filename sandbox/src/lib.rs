//! Emulators of the provider APIs — HubSpot, Zoho CRM, Odoo — for tests, the demo and
//! benchmarks. Each behaves as `shared/PROVIDERS.md` describes the real service,
//! request by request, over real HTTP.
//!
//! This crate depends on nothing of crmsync's, so what it signs, pages and answers is
//! an independent check of the adapters.
//!
//! Shared parts: [`server`] (bind and serve a router), [`faults`] (latency, errors,
//! timeouts, 429 storms, dropped webhooks), [`data`] (deterministic generated
//! records).

// Handlers answer errors as ready `Response`s, axum's idiom; boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub mod data;
pub mod driver;
pub mod faults;
pub mod hubspot;
pub mod odoo;
pub mod server;
pub mod zoho;

/// Whether `given` is the secret `expected`, compared in constant time: the
/// emulators ship in `crmsync sandbox` and `crmsync demo`, and check secrets as the
/// real services do.
pub fn secret_eq(given: Option<&str>, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}
