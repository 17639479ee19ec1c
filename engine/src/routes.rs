//! The API role's routes: the ingest crate's, the engine's own, and `/openapi.json`,
//! which describes them all (see `crmsync_ingest::openapi`).

use std::sync::Arc;

use axum::extract::State;
use axum::{Json, Router};
use serde_json::Value;

use crmsync_ingest::openapi::{bearer, document, public, Documented};
use crmsync_ingest::AppState;

use crate::health::Probes;
use crate::history::HistoryState;

/// The engine's own routes (history, status, logs, control, feed).
fn engine_routes() -> Documented<HistoryState> {
    Documented::default()
        .get(
            "/crm/records/{object}/{id}/history",
            bearer("A record's field values over time, read from the event log")
                .required("workspace", "the CRM account, as the rows' workspace_id")
                .required("provider", "hubspot, zoho or odoo")
                .query("after", "the previous page's next_after")
                .query("limit", "1-1000")
                .errors(&[404]),
            crate::history::get,
        )
        .get(
            "/crm/sync/status",
            bearer("Consumers' backlog and lag, streams, connections with each object's cursor, last poll, backfill and stop, pushes by state")
                .query("workspace", "only this workspace's connections"),
            crate::status::status,
        )
        .get(
            "/crm/metrics",
            bearer("A JSON summary of sync statistics"),
            crate::status::metrics,
        )
        .get(
            "/crm/feed",
            bearer("Server-sent events of a workspace's projection changes, resumable with Last-Event-ID")
                .required("workspace", "the app's workspace or a CRM account")
                .query("after", "resume after this stream sequence"),
            crate::feed::get,
        )
        .get(
            "/crm/sync/logs",
            bearer("The sync log: polls, sweeps and backfills, newest first")
                .query("workspace", "the connection's workspace")
                .query("provider", "hubspot, zoho or odoo")
                .query("object", "contact, company, deal or activity")
                .query("operation", "poll, sweep or backfill")
                .query("status", "ok or error")
                .query("before", "the previous page's next_before")
                .query("limit", "1-500"),
            crate::sync_log::list,
        )
        .post(
            "/crm/sync/stop",
            bearer("Stops a workspace's sync (no CRM call for the scope; webhooks still stored)")
                .body("{workspace, provider?, object?}"),
            crate::pause::stop,
        )
        .post(
            "/crm/sync/start",
            bearer("Starts a stopped sync again, from where it stood")
                .body("{workspace, provider?, object?}"),
            crate::pause::start,
        )
}

/// The dashboard: one page, no build step; it calls the API with the token it is
/// given (kept in the tab's session storage).
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

async fn openapi(State(doc): State<Arc<Value>>) -> Json<Value> {
    Json(doc.as_ref().clone())
}

/// Every route of the API role, with `/openapi.json` describing them.
pub fn api_router(app: Arc<AppState>, history: HistoryState, probes: Arc<Probes>) -> Router {
    let health = Documented::<Arc<Probes>>::default().get(
        "/crm/health",
        public("Each connection probed: credentials, API, rate-limit headroom, last sync; 503 with reasons. Details need the bearer token")
            .query("provider", "hubspot, zoho or odoo")
            .query("workspace", "one workspace (bearer token required)")
            .errors(&[404]),
        crate::health::get,
    );
    let spec = Documented::<Arc<Value>>::default()
        .get("/openapi.json", public("This OpenAPI document"), openapi)
        .get(
            "/dashboard",
            public("The dashboard (HTML; its calls need the bearer token)"),
            dashboard,
        );
    let ingest = crmsync_ingest::routes();
    let engine = engine_routes();
    let described: Vec<_> = [
        ingest.described(),
        engine.described(),
        health.described(),
        spec.described(),
    ]
    .concat();
    let doc = Arc::new(document(&described, env!("CARGO_PKG_VERSION")));
    ingest
        .with_state(app)
        .merge(engine.with_state(history))
        .merge(health.with_state(probes))
        .merge(spec.with_state(doc))
}
