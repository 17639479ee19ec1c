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
pub mod openapi;
pub mod providers;
pub mod publish;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;

use crmsync_adapters::hubspot::oauth::OAuthApp;
use crmsync_adapters::zoho::oauth::ZohoApp;
use crmsync_adapters::{Metrics, Secret, Vault};
use crmsync_schema::Subjects;

pub use error::{ApiError, FieldError};
pub use openapi::Documented;

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
    /// Whether HubSpot webhooks signed only with v1 or v2 are taken.
    pub hubspot_signatures: crmsync_adapters::hubspot::webhook::Accept,
    /// The URL providers call, e.g. `https://crm.example.com`; signatures cover it.
    pub public_url: Option<String>,
    /// The largest body accepted on any route but HubSpot's webhooks, in bytes: at
    /// most 1 MiB (Zoho's notifications name ids; the control API's bodies are small).
    pub max_body_bytes: usize,
    /// The largest HubSpot webhook batch accepted, in bytes (`CRM_WEBHOOK_MAX_BYTES`):
    /// 100 events of up to 65,536 characters each.
    pub hubspot_max_body_bytes: usize,
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

/// Every route of the API role, described.
pub fn routes() -> Documented<Arc<AppState>> {
    use openapi::{bearer, public, signed};
    const WS: &str = "the app's workspace";
    Documented::default()
        .merge(health::routes())
        .post(
            "/crm/webhooks/hubspot",
            signed("HubSpot webhook batches (v3 signature; v1 or v2 alone only with CRM_HUBSPOT_LEGACY_SIGNATURES); 200 once every event is stored")
                .body("HubSpot's array of webhook events")
                .errors(&[413, 415]),
            webhooks::hubspot::receive,
        )
        .get(
            "/crm/hubspot/start",
            bearer("Starts connecting HubSpot: 302 to its authorize page with signed, single-use state")
                .required("workspace", WS)
                .ok(302),
            oauth::hubspot::start,
        )
        .get(
            "/crm/hubspot/callback",
            public("HubSpot's OAuth redirect: checks the state, stores the tokens sealed")
                .required("code", "the authorization code")
                .required("state", "the state crmsync issued"),
            oauth::hubspot::callback,
        )
        .post(
            "/crm/hubspot/disconnect",
            bearer("Removes a HubSpot connection and its secrets").body("{workspace}").errors(&[404]),
            oauth::hubspot::disconnect,
        )
        .post(
            "/crm/webhooks/zoho",
            signed("Zoho notification callbacks (the channel's token); 200 once stored")
                .body("Zoho's notification")
                .errors(&[413, 415]),
            webhooks::zoho::receive,
        )
        .post(
            "/crm/webhooks/{provider}",
            public("Any other provider: 404 naming the webhook routes there are")
                .errors(&[404]),
            webhooks::unknown,
        )
        .get(
            "/crm/zoho/start",
            bearer("Starts connecting Zoho: 302 to its consent page").required("workspace", WS).ok(302),
            oauth::zoho::start,
        )
        .get(
            "/crm/zoho/callback",
            public("Zoho's OAuth redirect: checks the state and the accounts server, stores the tokens")
                .required("code", "the authorization code")
                .required("state", "the state crmsync issued")
                .query("accounts-server", "the user's data centre"),
            oauth::zoho::callback,
        )
        .post(
            "/crm/zoho/disconnect",
            bearer("Removes a Zoho connection and its secrets").body("{workspace}").errors(&[404]),
            oauth::zoho::disconnect,
        )
        .post(
            "/crm/odoo/connect",
            bearer("Connects an Odoo database with an API key (authenticated first)")
                .body("{workspace, url, database, login, api_key, log_activity?}"),
            odoo::connect,
        )
        .post(
            "/crm/odoo/poll",
            bearer("Polls an Odoo connection now and sweeps deletes").body("{workspace}").errors(&[404, 409]),
            odoo::poll,
        )
        .post(
            "/crm/odoo/scheduler/start",
            bearer("Polls an Odoo connection every interval").body("{workspace, interval_secs?}").errors(&[404]),
            odoo::scheduler_start,
        )
        .post(
            "/crm/odoo/scheduler/stop",
            bearer("Stops an Odoo connection's scheduled polls").body("{workspace}").errors(&[404]),
            odoo::scheduler_stop,
        )
        .get(
            "/crm/odoo/status",
            bearer("An Odoo connection's scheduler, last poll and sweep, lag").required("workspace", WS).errors(&[404]),
            odoo::status,
        )
        .post(
            "/crm/calls/{call_id}/push-to-crm",
            bearer("Pushes a call outcome to the workspace's CRMs, exactly once; 202 with a status URL")
                .body("{workspace, provider?, contact?: {app_id?, crm_id?, email?, phone?}, deal?: {app_id?, crm_id?}, started_at, duration_secs, direction, disposition, summary?, notes?, recording_url?}")
                .ok(202)
                .errors(&[404]),
            calls::push,
        )
        .get(
            "/crm/calls/{call_id}",
            bearer("A call outcome's push state per provider").required("workspace", WS).errors(&[404]),
            calls::status,
        )
        .get(
            "/crm/providers",
            bearer("The providers, whether each can be connected here and how it is kept in step"),
            providers::list,
        )
        .get(
            "/crm/conflicts",
            bearer("Values a conflict rule kept out, newest first")
                .required("workspace", "the app's workspace or the CRM account")
                .query("provider", "hubspot, zoho or odoo")
                .query("object", "contact, company, deal or activity")
                .query("before", "the previous page's next_before")
                .query("limit", "1-500"),
            conflicts::list,
        )
        .get(
            "/crm/mappings",
            bearer("A workspace's stored field mappings")
                .required("workspace", "the CRM account, as the rows' workspace_id")
                .query("provider", "hubspot, zoho or odoo")
                .query("object", "contacts, companies, deals or activities"),
            mappings::list,
        )
        .get(
            "/crm/mappings/{provider}/{object}",
            bearer("A provider's default field landing for an object and the workspace's rules")
                .required("workspace", "the CRM account"),
            mappings::get,
        )
        .put(
            "/crm/mappings/{provider}/{object}",
            bearer("Stores a workspace's field mapping, checked; applied from the next batch")
                .required("workspace", "the CRM account")
                .body("{rules: [{source, target, transform?}]}"),
            mappings::put,
        )
        .delete(
            "/crm/mappings/{provider}/{object}",
            bearer("Back to the default field landing")
                .required("workspace", "the CRM account")
                .ok(204)
                .errors(&[404]),
            mappings::delete,
        )
        .get(
            "/crm/dlq",
            bearer("Dead letters with their reasons")
                .query("after", "the previous page's last id")
                .query("limit", "1-500"),
            dlq::list,
        )
        .post(
            "/crm/dlq/{id}/retry",
            bearer("Sends a dead letter back to its subject").errors(&[404]),
            dlq::retry,
        )
        .post(
            "/crm/dlq/{id}/discard",
            bearer("Drops a dead letter").errors(&[404]),
            dlq::discard,
        )
        .get(
            "/crm/connections",
            bearer("A workspace's connections and their status, never secrets").required("workspace", WS),
            oauth::list,
        )
}

/// Every route of the API role.
pub fn router(state: Arc<AppState>) -> Router {
    routes().with_state(state)
}

/// The routes a worker serves: health and metrics only.
pub fn worker_router(state: Arc<AppState>) -> Router {
    health::routes().with_state(state)
}
