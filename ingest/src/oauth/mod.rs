//! Connecting providers: OAuth start and callback, disconnect, and the list of
//! connections.

pub mod hubspot;
pub mod state;
pub mod zoho;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crmsync_adapters::oauth::OAuthError;
use crmsync_adapters::Vault;

use self::state::Claims;
use crate::auth::require_bearer;
use crate::webhooks::public_uri;
use crate::{ApiError, AppState};

/// How long a user has to approve a connection.
const STATE_TTL: Duration = Duration::from_secs(10 * 60);

/// The vault that seals tokens and keys OAuth state.
pub fn vault(state: &AppState) -> Result<&Vault, ApiError> {
    state.vault.as_deref().ok_or_else(|| {
        ApiError::Unavailable(
            "tokens cannot be stored: set ENCRYPTION_KEY to an age identity".into(),
        )
    })
}

/// Where the provider sends the user back.
pub fn redirect_uri(state: &AppState, headers: &HeaderMap, callback: &'static str) -> String {
    let uri: Uri = callback.parse().expect("static path");
    public_uri(state.public_url.as_deref(), headers, &uri)
}

/// The start of a connect flow: a signed, single-use state for `workspace` and
/// `provider`, remembered; answers a redirect to the URL `authorize` builds from the
/// state (and that URL as JSON, for an app backend that forwards it).
pub async fn begin(
    state: &AppState,
    vault: &Vault,
    workspace: String,
    provider: &str,
    authorize: impl FnOnce(&str) -> String,
) -> Result<Response, ApiError> {
    let claims = Claims {
        nonce: uuid::Uuid::new_v4().simple().to_string(),
        workspace,
        provider: provider.into(),
        expires: chrono::Utc::now().timestamp() + STATE_TTL.as_secs() as i64,
    };
    state::remember(&state.pool, &claims)
        .await
        .map_err(ApiError::internal)?;
    let url = authorize(&state::sign(&vault.signing_key(), &claims));
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, url.clone())],
        Json(json!({"authorize_url": url})),
    )
        .into_response())
}

/// A callback's state, checked (signature, provider, expiry) and used up.
pub async fn claims_of(
    state: &AppState,
    vault: &Vault,
    token: Option<String>,
    provider: &str,
) -> Result<Claims, ApiError> {
    let token = token.ok_or_else(|| ApiError::BadRequest("state is required".into()))?;
    let claims = state::verify(
        &vault.signing_key(),
        &token,
        provider,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !state::consume(&state.pool, &claims)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::BadRequest(state::StateError::Used.to_string()));
    }
    Ok(claims)
}

#[derive(Debug, Deserialize)]
pub struct DisconnectBody {
    workspace: Option<String>,
}

/// Removes a workspace's `provider` connection and its secrets.
pub async fn disconnect(
    state: &AppState,
    headers: &HeaderMap,
    q: WorkspaceQuery,
    body: crate::error::OptionalBody,
    provider: &str,
    label: &str,
) -> Result<Json<Value>, ApiError> {
    require_bearer(state, headers)?;
    let from_body = crate::error::optional_body::<DisconnectBody>(state, headers, body)?
        .and_then(|b| b.workspace);
    let ws = workspace(from_body.as_deref().or(q.workspace.as_deref()))?;
    if crate::connections::remove(&state.pool, &ws, provider)
        .await
        .map_err(ApiError::internal)?
    {
        tracing::info!(workspace = %ws, provider, "disconnected");
        Ok(Json(
            json!({"disconnected": true, "workspace": ws, "provider": provider}),
        ))
    } else {
        Err(ApiError::NotFound(format!(
            "workspace {ws} has no {label} connection"
        )))
    }
}

#[derive(Debug, Deserialize)]
pub struct WorkspaceQuery {
    pub workspace: Option<String>,
}

/// The workspace named by a request, checked.
pub fn workspace(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::BadRequest("workspace is required".into()))?;
    crmsync_schema::WorkspaceId::parse(raw)
        .map(|w| w.as_str().to_owned())
        .map_err(|e| ApiError::BadRequest(format!("workspace: {e}")))
}

/// `GET /crm/connections?workspace=W`: a workspace's connections, without secrets.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = workspace(q.workspace.as_deref())?;
    let mut out = Vec::new();
    for provider in crmsync_schema::Provider::ALL {
        if let Some(c) = crate::connections::get(&state.pool, &ws, provider.as_str())
            .await
            .map_err(ApiError::internal)?
        {
            out.push(c);
        }
    }
    Ok(Json(json!({"workspace": ws, "connections": out})))
}

/// A failed grant as an answer: the user's to fix (400) or worth a retry (503).
pub fn oauth_error(e: OAuthError) -> ApiError {
    match e {
        OAuthError::InvalidGrant(_) | OAuthError::Rejected(_) => {
            ApiError::BadRequest(e.to_string())
        }
        OAuthError::Transient(_) => ApiError::Unavailable(e.to_string()),
    }
}
