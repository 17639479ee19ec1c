//! `GET /crm/providers`: the CRMs this build speaks, whether each is ready to connect
//! here (and what is missing when not), how it is connected and kept in step, and
//! the ones planned next.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::require_bearer;
use crate::{ApiError, AppState};

/// `GET /crm/providers` (control API).
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let vault = state.vault.is_some();
    let missing = |needs: &[(&str, bool)]| -> Vec<String> {
        needs
            .iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| (*name).to_owned())
            .collect()
    };
    let webhook = |path: &str| {
        state
            .public_url
            .as_ref()
            .map(|base| format!("{}{path}", base.trim_end_matches('/')))
    };
    let hubspot_missing = missing(&[
        ("ENCRYPTION_KEY", vault),
        ("CRM_HUBSPOT_CLIENT_ID", state.hubspot_app.is_some()),
        ("CRM_HUBSPOT_CLIENT_SECRET", state.hubspot_secret.is_some()),
        ("CRM_PUBLIC_URL", state.public_url.is_some()),
    ]);
    let zoho_missing = missing(&[
        ("ENCRYPTION_KEY", vault),
        (
            "CRM_ZOHO_CLIENT_ID, CRM_ZOHO_CLIENT_SECRET",
            state.zoho_app.is_some(),
        ),
        ("CRM_PUBLIC_URL", state.public_url.is_some()),
    ]);
    let odoo_missing = missing(&[("ENCRYPTION_KEY", vault)]);
    let providers = json!([
        {
            "name": "hubspot", "label": "HubSpot", "auth": "oauth2",
            "ready": hubspot_missing.is_empty(), "missing": hubspot_missing,
            "connect": "GET /crm/hubspot/start?workspace=W",
            "webhook_url": webhook("/crm/webhooks/hubspot"),
            "inbound": ["webhooks", "polling", "backfill"],
            "objects": ["contact", "company", "deal"],
            "outbound": "calls engagement",
        },
        {
            "name": "zoho", "label": "Zoho CRM", "auth": "oauth2",
            "ready": zoho_missing.is_empty(), "missing": zoho_missing,
            "connect": "GET /crm/zoho/start?workspace=W",
            "webhook_url": webhook("/crm/webhooks/zoho"),
            "inbound": ["notifications", "polling", "backfill"],
            "objects": ["contact", "company", "deal", "activity"],
            "outbound": "Calls record",
        },
        {
            "name": "odoo", "label": "Odoo", "auth": "api_key",
            "ready": odoo_missing.is_empty(), "missing": odoo_missing,
            "connect": "POST /crm/odoo/connect",
            "webhook_url": null,
            "inbound": ["polling"],
            "objects": ["contact", "company", "deal"],
            "outbound": "note on the partner or lead, or a done Call activity",
        },
    ]);
    Ok(Json(json!({
        "providers": providers,
        "planned": ["pipedrive", "salesforce", "dynamics"],
    })))
}
