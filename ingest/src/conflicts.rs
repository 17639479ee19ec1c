//! `GET /crm/conflicts`: values a conflict rule did not apply, beside the value kept
//! (ARCHITECTURE.md: activities the app pushed are the app's, so a CRM edit to one is
//! listed here rather than applied). Newest first, paged by id.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::require_bearer;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub struct ConflictQuery {
    /// The app's workspace, or the CRM account the records live in.
    workspace: Option<String>,
    provider: Option<String>,
    object: Option<String>,
    /// Conflicts older than this id (the previous page's `next_before`).
    before: Option<i64>,
    limit: Option<i64>,
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<Value>,
    String,
    Option<String>,
    Option<Value>,
    String,
    String,
    DateTime<Utc>,
);

/// `GET /crm/conflicts?workspace=W[&provider=P][&object=O][&before=ID][&limit=N]`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ConflictQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = crate::oauth::workspace(q.workspace.as_deref())?;
    if let Some(p) = &q.provider {
        p.parse::<crmsync_schema::Provider>()
            .map_err(|e| ApiError::BadRequest(format!("provider: {e}")))?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, workspace_id, provider, object, remote_id, app_workspace, field,
                kept_value, kept_source, kept_version, lost_value, lost_source, lost_version,
                detected_at
         FROM crm_conflicts
         WHERE (workspace_id = $1 OR app_workspace = $1)
           AND ($2::text IS NULL OR provider = $2)
           AND ($3::text IS NULL OR object = $3)
           AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(&ws)
    .bind(q.provider.as_deref())
    .bind(q.object.as_deref())
    .bind(q.before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.0))
        .flatten();
    let conflicts: Vec<Value> = rows
        .into_iter()
        .map(
            |(
                id,
                account,
                provider,
                object,
                remote_id,
                app_ws,
                field,
                kept,
                kept_source,
                kept_version,
                lost,
                lost_source,
                lost_version,
                detected_at,
            )| {
                json!({
                    "id": id, "account": account, "provider": provider, "object": object,
                    "remote_id": remote_id, "workspace": app_ws, "field": field,
                    "kept": {"value": kept, "source": kept_source, "version": kept_version},
                    "lost": {"value": lost, "source": lost_source, "version": lost_version},
                    "detected_at": detected_at,
                })
            },
        )
        .collect();
    Ok(Json(
        json!({"conflicts": conflicts, "next_before": next_before}),
    ))
}
