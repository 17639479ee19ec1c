//! Connecting providers: OAuth start and callback, disconnect, and the list of
//! connections.

pub mod hubspot;
pub mod state;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::require_bearer;
use crate::{ApiError, AppState};

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
