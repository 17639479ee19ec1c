//! `GET /crm/hubspot/start`, `GET /crm/hubspot/callback`, `POST /crm/hubspot/disconnect`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{rejection::JsonRejection, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crmsync_adapters::hubspot::oauth::{OAuthApp, OAuthError};
use crmsync_adapters::Vault;

use super::state::{self, Claims};
use super::{workspace, WorkspaceQuery};
use crate::auth::require_bearer;
use crate::connections;
use crate::webhooks::public_uri;
use crate::{ApiError, AppState};

const PROVIDER: &str = "hubspot";
const CALLBACK: &str = "/crm/hubspot/callback";
/// How long a user has to approve the connection.
const STATE_TTL: Duration = Duration::from_secs(10 * 60);

fn configured(state: &AppState) -> Result<(&OAuthApp, &Vault), ApiError> {
    let app = state.hubspot_app.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "HubSpot connections are not configured: set CRM_HUBSPOT_CLIENT_ID and CRM_HUBSPOT_CLIENT_SECRET".into(),
        )
    })?;
    let vault = state.vault.as_deref().ok_or_else(|| {
        ApiError::Unavailable(
            "tokens cannot be stored: set ENCRYPTION_KEY to an age identity".into(),
        )
    })?;
    Ok((app, vault))
}

fn redirect_uri(state: &AppState, headers: &HeaderMap) -> String {
    let uri: Uri = CALLBACK.parse().expect("static path");
    public_uri(state.public_url.as_deref(), headers, &uri)
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
    let claims = Claims {
        nonce: uuid::Uuid::new_v4().simple().to_string(),
        workspace: ws,
        provider: PROVIDER.into(),
        expires: chrono::Utc::now().timestamp() + STATE_TTL.as_secs() as i64,
    };
    state::remember(&state.pool, &claims)
        .await
        .map_err(ApiError::internal)?;
    let token = state::sign(&vault.signing_key(), &claims);
    let url = app.authorize_url(&redirect_uri(&state, &headers), &token);
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, url.clone())],
        Json(json!({"authorize_url": url})),
    )
        .into_response())
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
    let token = q
        .state
        .ok_or_else(|| ApiError::BadRequest("state is required".into()))?;
    let code = q
        .code
        .ok_or_else(|| ApiError::BadRequest("code is required".into()))?;
    let claims = state::verify(
        &vault.signing_key(),
        &token,
        PROVIDER,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !state::consume(&state.pool, &claims)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::BadRequest(state::StateError::Used.to_string()));
    }
    let redirect = redirect_uri(&state, &headers);
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

fn oauth_error(e: OAuthError) -> ApiError {
    match e {
        OAuthError::InvalidGrant(_) | OAuthError::Rejected(_) => {
            ApiError::BadRequest(e.to_string())
        }
        OAuthError::Transient(_) => ApiError::Unavailable(e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct DisconnectBody {
    workspace: Option<String>,
}

/// Removes the connection and its secrets.
pub async fn disconnect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
    body: Result<Json<DisconnectBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let from_body = body.ok().and_then(|Json(b)| b.workspace);
    let ws = workspace(from_body.as_deref().or(q.workspace.as_deref()))?;
    if connections::remove(&state.pool, &ws, PROVIDER)
        .await
        .map_err(ApiError::internal)?
    {
        tracing::info!(workspace = %ws, provider = PROVIDER, "disconnected");
        Ok(Json(
            json!({"disconnected": true, "workspace": ws, "provider": PROVIDER}),
        ))
    } else {
        Err(ApiError::NotFound(format!(
            "workspace {ws} has no HubSpot connection"
        )))
    }
}
