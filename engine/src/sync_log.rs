//! The sync log (`CrmSyncLog`): one row per poll, sweep or backfill of a
//! connection's object, with how it went, and `GET /crm/sync/logs` to read it.
//!
//! Writing a log row never fails the work it describes: a log that cannot be written
//! is a warning. Rows older than [`KEEP`] are pruned hourly.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crmsync_ingest::auth::require_bearer;
use crmsync_ingest::ApiError;
use crmsync_schema::ids::singular;
use crmsync_schema::Provider;

use crate::history::HistoryState;

/// How long log rows are kept.
pub const KEEP: Duration = Duration::from_secs(14 * 24 * 3600);
/// The longest message kept (a provider's error text).
const MAX_MESSAGE: usize = 500;

/// The operations logged.
pub const OPERATIONS: [&str; 3] = ["poll", "sweep", "backfill"];

/// One run of one operation on one connection (and object).
#[derive(Debug)]
pub struct Run<'a> {
    pub workspace: &'a str,
    pub provider: Provider,
    pub object: Option<&'a str>,
    pub operation: &'static str,
    pub started: DateTime<Utc>,
    pub records: u64,
    /// What failed, if it did.
    pub error: Option<String>,
    pub detail: Value,
}

/// Logs a run; a failure to log is only a warning.
pub async fn record(pool: &PgPool, run: Run<'_>) {
    let message = run
        .error
        .as_ref()
        .map(|e| e.chars().take(MAX_MESSAGE).collect::<String>());
    let result = sqlx::query(
        "INSERT INTO crm_sync_logs
            (workspace_id, provider, object, operation, status, records, started_at, message, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(run.workspace)
    .bind(run.provider.as_str())
    .bind(run.object.map(singular))
    .bind(run.operation)
    .bind(if run.error.is_some() { "error" } else { "ok" })
    .bind(i64::try_from(run.records).unwrap_or(i64::MAX))
    .bind(run.started)
    .bind(message)
    .bind(&run.detail)
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, operation = run.operation, "the sync log row was not written");
    }
}

/// Deletes rows older than [`KEEP`], every hour, until `stop`.
pub async fn prune(pool: PgPool, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    loop {
        let pruned = sqlx::query(
            "DELETE FROM crm_sync_logs WHERE finished_at < now() - make_interval(secs => $1)",
        )
        .bind(KEEP.as_secs_f64())
        .execute(&pool)
        .await;
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "pruning the sync log");
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    workspace: Option<String>,
    provider: Option<String>,
    object: Option<String>,
    operation: Option<String>,
    status: Option<String>,
    /// Rows older than this id (the previous page's `next_before`).
    before: Option<i64>,
    limit: Option<i64>,
}

type Row = (
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<String>,
    Value,
);

/// `GET /crm/sync/logs[?workspace=W][&provider=P][&object=O][&operation=poll|sweep|backfill][&status=ok|error][&before=ID][&limit=N]`:
/// newest first.
pub async fn list(
    State(state): State<HistoryState>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state.app, &headers)?;
    if let Some(p) = &q.provider {
        p.parse::<Provider>()
            .map_err(|e| ApiError::BadRequest(format!("provider: {e}")))?;
    }
    if let Some(op) = &q.operation {
        if !OPERATIONS.contains(&op.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "operation `{op}` is not one of {}",
                OPERATIONS.join(", ")
            )));
        }
    }
    if let Some(s) = &q.status {
        if !matches!(s.as_str(), "ok" | "error") {
            return Err(ApiError::BadRequest(format!(
                "status `{s}` is not ok or error"
            )));
        }
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, workspace_id, provider, object, operation, status, records, started_at,
                finished_at, message, detail
         FROM crm_sync_logs
         WHERE ($1::text IS NULL OR workspace_id = $1)
           AND ($2::text IS NULL OR provider = $2)
           AND ($3::text IS NULL OR object = $3)
           AND ($4::text IS NULL OR operation = $4)
           AND ($5::text IS NULL OR status = $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7",
    )
    .bind(q.workspace.as_deref())
    .bind(q.provider.as_deref())
    .bind(q.object.as_deref().map(singular))
    .bind(q.operation.as_deref())
    .bind(q.status.as_deref())
    .bind(q.before)
    .bind(limit)
    .fetch_all(&state.app.pool)
    .await
    .map_err(ApiError::internal)?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.0))
        .flatten();
    let logs: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.0, "workspace": r.1, "provider": r.2, "object": r.3,
                "operation": r.4, "status": r.5, "records": r.6,
                "started_at": r.7, "finished_at": r.8,
                "duration_ms": (r.8 - r.7).num_milliseconds().max(0),
                "message": r.9, "detail": r.10,
            })
        })
        .collect();
    Ok(Json(json!({ "logs": logs, "next_before": next_before })))
}
