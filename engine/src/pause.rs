//! Stopping and starting a workspace's sync: `POST /crm/sync/stop` and
//! `POST /crm/sync/start` with `{workspace, provider?, object?}`.
//!
//! A stopped sync makes no call to the CRM for its scope: pollers skip it (their
//! cursors stay where they were), hydration of webhook notices is skipped (the first
//! poll after the start reads those records, as their cursor did not move), backfills
//! refuse, and call outcomes wait queued (deferred with JetStream, never dropped).
//! What the CRM sends by itself is still stored and projected: refusing webhooks would
//! lose changes the CRM will not send again. Nothing is lost across a stop, and a
//! start picks up from where the sync stood.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crmsync_ingest::auth::require_bearer;
use crmsync_ingest::ApiError;
use crmsync_schema::ids::singular as object_name;
use crmsync_schema::Provider;

use crate::history::HistoryState;

/// The objects a sync can be stopped for.
pub const OBJECTS: [&str; 4] = ["contact", "company", "deal", "activity"];

/// Whether `workspace`'s sync of `provider`'s `object` is stopped; `*` asks whether
/// the whole connection is, `?` whether any of it is. A failure to read says no (and
/// is logged): the CRM calls it allows would fail the same way.
pub async fn is_paused(pool: &PgPool, workspace: &str, provider: Provider, object: &str) -> bool {
    let object = object_name(object);
    let found = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM crm_sync_pauses
                        WHERE workspace_id = $1 AND provider IN ($2, '*')
                          AND (object = '*' OR object = $3 OR $3 = '?'))",
    )
    .bind(workspace)
    .bind(provider.as_str())
    .bind(object)
    .fetch_one(pool)
    .await;
    found.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read whether the sync is stopped");
        false
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    workspace: String,
    provider: Option<String>,
    object: Option<String>,
}

/// The scope's (workspace, provider or `*`, object or `*`), checked.
fn scope(
    body: Result<Json<Scope>, JsonRejection>,
    limit: usize,
) -> Result<(String, String, String), ApiError> {
    let Json(scope) = body.map_err(|e| ApiError::json_body(e, limit))?;
    let workspace = crmsync_ingest::oauth::workspace(Some(&scope.workspace))?;
    let provider = match scope.provider.as_deref() {
        None | Some("*") | Some("all") => "*".to_owned(),
        Some(p) => p
            .parse::<Provider>()
            .map_err(|e| ApiError::BadRequest(format!("provider: {e}")))?
            .as_str()
            .to_owned(),
    };
    let object = match scope.object.as_deref() {
        None | Some("*") | Some("all") => "*".to_owned(),
        Some(o) if OBJECTS.contains(&object_name(o)) => object_name(o).to_owned(),
        Some(o) => {
            return Err(ApiError::BadRequest(format!(
                "object `{o}` is not one of contacts, companies, deals, activities"
            )))
        }
    };
    Ok((workspace, provider, object))
}

/// The workspace's stopped scopes.
async fn stopped(pool: &PgPool, workspace: &str) -> Result<Value, ApiError> {
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT provider, object, paused_at FROM crm_sync_pauses
         WHERE workspace_id = $1 ORDER BY provider, object",
    )
    .bind(workspace)
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(json!({
        "workspace": workspace,
        "stopped": rows
            .into_iter()
            .map(|(provider, object, at)| json!({"provider": provider, "object": object, "since": at}))
            .collect::<Vec<_>>(),
    }))
}

/// `POST /crm/sync/stop` `{workspace, provider?, object?}`.
pub async fn stop(
    State(state): State<HistoryState>,
    headers: HeaderMap,
    body: Result<Json<Scope>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state.app, &headers)?;
    let (workspace, provider, object) = scope(body, state.app.max_body_bytes)?;
    sqlx::query(
        "INSERT INTO crm_sync_pauses (workspace_id, provider, object) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(&workspace)
    .bind(&provider)
    .bind(&object)
    .execute(&state.app.pool)
    .await
    .map_err(ApiError::internal)?;
    tracing::info!(provider, object, "sync stopped");
    Ok(Json(stopped(&state.app.pool, &workspace).await?))
}

/// `POST /crm/sync/start` `{workspace, provider?, object?}`: ends every stop within
/// the scope (the whole workspace's, without provider and object).
pub async fn start(
    State(state): State<HistoryState>,
    headers: HeaderMap,
    body: Result<Json<Scope>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state.app, &headers)?;
    let (workspace, provider, object) = scope(body, state.app.max_body_bytes)?;
    sqlx::query(
        "DELETE FROM crm_sync_pauses
         WHERE workspace_id = $1 AND ($2 = '*' OR provider = $2) AND ($3 = '*' OR object = $3)",
    )
    .bind(&workspace)
    .bind(&provider)
    .bind(&object)
    .execute(&state.app.pool)
    .await
    .map_err(ApiError::internal)?;
    // A broader stop still covers the scope: say so rather than answer "started".
    let covering: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider, object FROM crm_sync_pauses
         WHERE workspace_id = $1 AND provider IN ($2, '*') AND object IN ($3, '*')",
    )
    .bind(&workspace)
    .bind(&provider)
    .bind(&object)
    .fetch_all(&state.app.pool)
    .await
    .map_err(ApiError::internal)?;
    if let Some((p, o)) = covering.first() {
        return Err(ApiError::Conflict(format!(
            "a broader stop remains (provider {p}, object {o}); start that scope instead"
        )));
    }
    tracing::info!(provider, object, "sync started");
    Ok(Json(stopped(&state.app.pool, &workspace).await?))
}
