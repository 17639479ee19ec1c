//! `GET /crm/hubspot/start`, `GET /crm/hubspot/callback`, `POST /crm/hubspot/disconnect`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crmsync_adapters::hubspot::oauth::OAuthApp;
use crmsync_adapters::Vault;

use super::{begin, claims_of, oauth_error, redirect_uri, workspace, WorkspaceQuery};
use crate::auth::require_bearer;
use crate::connections;
use crate::{ApiError, AppState};

const PROVIDER: &str = "hubspot";
const CALLBACK: &str = "/crm/hubspot/callback";

fn configured(state: &AppState) -> Result<(&OAuthApp, &Vault), ApiError> {
    let app = state.hubspot_app.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "HubSpot connections are not configured: set CRM_HUBSPOT_CLIENT_ID and CRM_HUBSPOT_CLIENT_SECRET".into(),
        )
    })?;
    Ok((app, super::vault(state)?))
}

/// Answers a redirect to HubSpot's authorize page (and its URL as JSON, for an app
/// backend that forwards it to the browser).
pub async fn start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Response, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = workspace(q.workspace.as_deref())?;
    let (app, vault) = configured(&state)?;
    let redirect = redirect_uri(&state, &headers, CALLBACK);
    begin(&state, vault, ws, PROVIDER, |token| {
        app.authorize_url(&redirect, token)
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// HubSpot sends the user back here: check the state, exchange the code, store the
/// connection.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (app, vault) = configured(&state)?;
    if let Some(error) = q.error {
        return Err(ApiError::BadRequest(format!(
            "HubSpot did not grant access: {error} {}",
            q.error_description.unwrap_or_default()
        )));
    }
    let claims = claims_of(&state, vault, q.state, PROVIDER).await?;
    let code = q
        .code
        .ok_or_else(|| ApiError::BadRequest("code is required".into()))?;
    let redirect = redirect_uri(&state, &headers, CALLBACK);
    let tokens = app
        .exchange_code(&state.http, &code, &redirect)
        .await
        .map_err(oauth_error)?;
    let portal = app
        .portal_id(&state.http, tokens.access_token.expose())
        .await
        .map_err(oauth_error)?;
    connections::save(
        &state.pool,
        vault,
        &claims.workspace,
        PROVIDER,
        &portal,
        &tokens,
        None,
        &json!({}),
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("the connection could not be stored: {e}")))?;
    tracing::info!(workspace = %claims.workspace, provider = PROVIDER, "connected");
    Ok(Json(json!({
        "connected": true,
        "workspace": claims.workspace,
        "provider": PROVIDER,
        "account_id": portal,
    })))
}

/// Removes the connection and its secrets.
pub async fn disconnect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
    body: crate::error::OptionalBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    super::disconnect(&state, &headers, q, body, PROVIDER, "HubSpot").await
}
