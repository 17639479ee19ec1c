//! The HTTP surface of crmsync: provider webhooks, health and metrics.
//!
//! A webhook is answered 2xx only after JetStream has acknowledged every event of it;
//! providers retry anything else, so nothing is lost.

pub mod error;
pub mod health;
pub mod publish;
pub mod webhooks;

use std::sync::Arc;

use axum::routing::post;
use axum::Router;
use sqlx::PgPool;

use crmsync_adapters::{Metrics, Secret};
use crmsync_schema::Subjects;

pub use error::ApiError;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub pool: PgPool,
    pub subjects: Subjects,
    pub metrics: Arc<Metrics>,
    /// The key HubSpot signs webhooks with (the app's client secret).
    pub hubspot_secret: Option<Secret<String>>,
    /// The URL providers call, e.g. `https://crm.example.com`; signatures cover it.
    pub public_url: Option<String>,
    /// The largest webhook body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The newest migration this build knows; `/readyz` waits for it.
    pub latest_migration: i64,
}

/// Every route of the API role.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(health::routes())
        .route("/crm/webhooks/hubspot", post(webhooks::hubspot::receive))
        .with_state(state)
}

/// The routes a worker serves: health and metrics only.
pub fn worker_router(state: Arc<AppState>) -> Router {
    health::routes().with_state(state)
}
