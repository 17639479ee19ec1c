//! The HTTP surface of crmsync: provider webhooks, health and metrics.
//!
//! A webhook is answered 2xx only after JetStream has acknowledged every event of it;
//! providers retry anything else, so nothing is lost.

pub mod auth;
pub mod calls;
pub mod conflicts;
pub mod connections;
pub mod dlq;
pub mod error;
pub mod health;
pub mod mappings;
pub mod oauth;
pub mod odoo;
pub mod providers;
pub mod publish;
pub mod webhooks;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use crmsync_adapters::hubspot::oauth::OAuthApp;
use crmsync_adapters::zoho::oauth::ZohoApp;
use crmsync_adapters::{Metrics, Secret, Vault};
use crmsync_schema::Subjects;

pub use error::{ApiError, FieldError};

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
    /// The control API's bearer token.
    pub api_token: Option<Secret<String>>,
    /// Seals stored tokens; also keys OAuth state.
    pub vault: Option<Arc<Vault>>,
    /// HubSpot's OAuth app, when configured.
    pub hubspot_app: Option<OAuthApp>,
    /// Zoho's OAuth app, when configured.
    pub zoho_app: Option<ZohoApp>,
    /// `ODOO_DEFAULT_TIMEOUT`.
    pub odoo_timeout: std::time::Duration,
    /// The Odoo scheduler's default interval (`CRM_POLL_INTERVAL_SECS`).
    pub odoo_poll_interval: std::time::Duration,
    /// Polls an Odoo connection now (`POST /crm/odoo/poll`), when configured.
    pub odoo: Option<Arc<dyn odoo::PollNow>>,
    /// The dead-letter stream's name (`CRM_DLQ`, prefixed).
    pub dlq_stream: String,
    /// The HTTP client for provider calls.
    pub http: reqwest::Client,
}

/// Every route of the API role.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(health::routes())
        .route("/crm/webhooks/hubspot", post(webhooks::hubspot::receive))
        .route("/crm/hubspot/start", get(oauth::hubspot::start))
        .route("/crm/hubspot/callback", get(oauth::hubspot::callback))
        .route("/crm/hubspot/disconnect", post(oauth::hubspot::disconnect))
        .route("/crm/webhooks/zoho", post(webhooks::zoho::receive))
        .route("/crm/zoho/start", get(oauth::zoho::start))
        .route("/crm/zoho/callback", get(oauth::zoho::callback))
        .route("/crm/zoho/disconnect", post(oauth::zoho::disconnect))
        .route("/crm/odoo/connect", post(odoo::connect))
        .route("/crm/odoo/poll", post(odoo::poll))
        .route("/crm/odoo/scheduler/start", post(odoo::scheduler_start))
        .route("/crm/odoo/scheduler/stop", post(odoo::scheduler_stop))
        .route("/crm/odoo/status", get(odoo::status))
        .route("/crm/calls/{call_id}/push-to-crm", post(calls::push))
        .route("/crm/calls/{call_id}", get(calls::status))
        .route("/crm/providers", get(providers::list))
        .route("/crm/conflicts", get(conflicts::list))
        .route("/crm/mappings", get(mappings::list))
        .route(
            "/crm/mappings/{provider}/{object}",
            get(mappings::get)
                .put(mappings::put)
                .delete(mappings::delete),
        )
        .route("/crm/dlq", get(dlq::list))
        .route("/crm/dlq/{id}/retry", post(dlq::retry))
        .route("/crm/dlq/{id}/discard", post(dlq::discard))
        .route("/crm/connections", get(oauth::list))
        .with_state(state)
}

/// The routes a worker serves: health and metrics only.
pub fn worker_router(state: Arc<AppState>) -> Router {
    health::routes().with_state(state)
}
