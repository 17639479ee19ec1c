//! `GET /crm/zoho/start`, `GET /crm/zoho/callback`, `POST /crm/zoho/disconnect`.
//!
//! The callback names the user's data centre (`location`, `accounts-server`): the
//! code is exchanged there (only at a Zoho accounts server, see
//! [`ZohoApp::accounts_server`]), and the token answer's `api_domain` is stored with
//! the sealed tokens, as every later call must go there. The connection also gets
//! its notification channel: a random id and a random token (sealed); a worker
//! enables and renews the channel.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use crmsync_adapters::zoho::client::ZohoClient;
use crmsync_adapters::zoho::oauth::{api_domain, ZohoApp};
use crmsync_adapters::{RateLimiter, Vault};

use super::{begin, claims_of, oauth_error, redirect_uri, workspace, WorkspaceQuery};
use crate::auth::require_bearer;
use crate::connections;
use crate::{ApiError, AppState};

const PROVIDER: &str = "zoho";
const CALLBACK: &str = "/crm/zoho/callback";

fn configured(state: &AppState) -> Result<(&ZohoApp, &Vault), ApiError> {
    let app = state.zoho_app.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "Zoho connections are not configured: set CRM_ZOHO_CLIENT_ID and CRM_ZOHO_CLIENT_SECRET".into(),
        )
    })?;
    Ok((app, super::vault(state)?))
}

/// Answers a redirect to Zoho's consent page.
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
    location: Option<String>,
    #[serde(rename = "accounts-server")]
    accounts_server: Option<String>,
}

/// A channel id as Zoho shows them: a number.
fn channel_id() -> String {
    rand::thread_rng()
        .gen_range(1_000_000_000_000u64..9_000_000_000_000)
        .to_string()
}

/// A channel token: 40 random alphanumerics (Zoho allows 50).
fn channel_token() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// Zoho sends the user back here: check the state, exchange the code at the user's
/// accounts server, read the org id, store the connection.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (app, vault) = configured(&state)?;
    if let Some(error) = q.error {
        return Err(ApiError::BadRequest(format!(
            "Zoho did not grant access: {error}"
        )));
    }
    let claims = claims_of(&state, vault, q.state, PROVIDER).await?;
    let code = q
        .code
        .ok_or_else(|| ApiError::BadRequest("code is required".into()))?;
    let server = app
        .accounts_server(q.accounts_server.as_deref())
        .map_err(oauth_error)?;
    let redirect = redirect_uri(&state, &headers, CALLBACK);
    let granted = app
        .exchange_code(&state.http, &server, &code, &redirect)
        .await
        .map_err(oauth_error)?;
    let domain = granted
        .api_domain
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("Zoho's token answer has no api_domain".into()))
        .and_then(|d| api_domain(d).map_err(oauth_error))?;
    let client = ZohoClient::new(
        domain.clone(),
        granted.tokens.access_token.clone(),
        Arc::new(RateLimiter::new(5.0, 5.0)),
        1,
        state.metrics.clone(),
    );
    let org = client
        .org_id()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the Zoho org could not be read: {e}")))?;
    let settings = json!({
        "api_domain": domain,
        "accounts_server": server,
        "location": q.location,
        "channel_id": channel_id(),
    });
    connections::save(
        &state.pool,
        vault,
        &claims.workspace,
        PROVIDER,
        &org,
        &granted.tokens,
        Some(&channel_token()),
        &settings,
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("the connection could not be stored: {e}")))?;
    tracing::info!(workspace = %claims.workspace, provider = PROVIDER, "connected");
    Ok(Json(json!({
        "connected": true,
        "workspace": claims.workspace,
        "provider": PROVIDER,
        "account_id": org,
        "api_domain": domain,
    })))
}

/// Removes the connection and its secrets (its channel simply expires).
pub async fn disconnect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
    body: crate::error::OptionalBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    super::disconnect(&state, &headers, q, body, PROVIDER, "Zoho").await
}
