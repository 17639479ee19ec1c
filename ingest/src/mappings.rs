//! `/crm/mappings`: a workspace's field mappings per provider and object
//! (`CrmFieldMapping`), on top of the adapters' defaults.
//!
//! - `GET /crm/mappings?workspace=W[&provider=P][&object=O]`: the stored mappings.
//! - `GET /crm/mappings/{provider}/{object}?workspace=W`: the defaults, the rules and
//!   where each default field lands with them.
//! - `PUT …` `{"rules": [...]}`: checked (400 with every problem and where it is),
//!   stored, applied by every projector from its next batch; a replay applies it to
//!   history.
//! - `DELETE …`: back to the defaults.
//!
//! `workspace` is the rows' workspace (the CRM account), as in the projections.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crmsync_adapters::DefaultLanding;
use crmsync_schema::mapping::{Landing, Mapping};
use crmsync_schema::Provider;

use crate::auth::require_bearer;
use crate::error::FieldError;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub struct MappingQuery {
    workspace: Option<String>,
    provider: Option<String>,
    object: Option<String>,
}

/// An object type, by its singular or its table's name.
fn parse_object(raw: &str) -> Result<&'static str, ApiError> {
    match crmsync_schema::ids::singular(raw) {
        "contact" => Ok("contact"),
        "company" => Ok("company"),
        "deal" => Ok("deal"),
        "activity" => Ok("activity"),
        _ => Err(ApiError::BadRequest(format!(
            "object `{raw}` is not one of contacts, companies, deals, activities"
        ))),
    }
}

/// An object type a provider's records are projected as.
fn object_of(provider: Provider, raw: &str) -> Result<&'static str, ApiError> {
    let object = parse_object(raw)?;
    if object == "activity" && provider != Provider::Zoho {
        return Err(ApiError::BadRequest(format!(
            "{provider} activities are kept in the stream but not projected yet, so they have no mapping"
        )));
    }
    Ok(object)
}

fn provider_of(raw: &str) -> Result<Provider, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::BadRequest(format!("provider: {e}")))
}

/// The table a mapping's records are in, for the replay hint.
fn table_of(object: &str) -> &'static str {
    match object {
        "contact" => "contacts",
        "company" => "companies",
        "deal" => "deals",
        _ => "activities",
    }
}

type Row = (String, String, String, Value, i64, DateTime<Utc>);

fn stored(row: &Row) -> Value {
    json!({
        "workspace": row.0, "provider": row.1, "object": row.2,
        "rules": row.3, "revision": row.4, "updated_at": row.5,
    })
}

/// `GET /crm/mappings?workspace=W[&provider=P][&object=O]`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<MappingQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = crate::oauth::workspace(q.workspace.as_deref())?;
    let provider = q.provider.as_deref().map(provider_of).transpose()?;
    let object = q.object.as_deref().map(parse_object).transpose()?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT workspace_id, provider, object, rules, revision, updated_at
         FROM crm_field_mappings
         WHERE workspace_id = $1 AND ($2::text IS NULL OR provider = $2)
           AND ($3::text IS NULL OR object = $3)
         ORDER BY provider, object",
    )
    .bind(&ws)
    .bind(provider.map(Provider::as_str))
    .bind(object)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "mappings": rows.iter().map(stored).collect::<Vec<_>>() }),
    ))
}

/// The defaults, the rules, and where every default field lands with them.
fn describe(provider: Provider, object: &str, ws: &str, mapping: &Mapping) -> Value {
    let landing = DefaultLanding { provider, object };
    let defaults: Vec<Value> = landing
        .default_targets()
        .into_iter()
        .map(|(source, target)| json!({"source": source, "target": target}))
        .collect();
    json!({
        "workspace": ws,
        "provider": provider.as_str(),
        "object": object,
        "defaults": defaults,
        "rules": mapping.rules,
        "replay": format!(
            "crmsync replay --projection {} --workspace {ws}",
            table_of(object)
        ),
    })
}

async fn load(
    state: &AppState,
    ws: &str,
    provider: Provider,
    object: &str,
) -> Result<Option<Row>, ApiError> {
    sqlx::query_as(
        "SELECT workspace_id, provider, object, rules, revision, updated_at
         FROM crm_field_mappings WHERE workspace_id = $1 AND provider = $2 AND object = $3",
    )
    .bind(ws)
    .bind(provider.as_str())
    .bind(object)
    .fetch_optional(&state.pool)
    .await
    .map_err(ApiError::internal)
}

fn rules_of(row: &Row) -> Mapping {
    serde_json::from_value(json!({ "rules": row.3 })).unwrap_or_default()
}

/// Bumps the mappings' revision: the row lock queues writers, so they commit in
/// revision order and no projector misses one.
async fn bump(tx: &mut sqlx::PgConnection) -> Result<i64, ApiError> {
    sqlx::query_scalar(
        "UPDATE crm_field_mappings_revision SET revision = revision + 1 RETURNING revision",
    )
    .fetch_one(tx)
    .await
    .map_err(ApiError::internal)
}

/// `GET /crm/mappings/{provider}/{object}?workspace=W`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((provider, object)): Path<(String, String)>,
    Query(q): Query<MappingQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = crate::oauth::workspace(q.workspace.as_deref())?;
    let provider = provider_of(&provider)?;
    let object = object_of(provider, &object)?;
    let row = load(&state, &ws, provider, object).await?;
    let mapping = row.as_ref().map(rules_of).unwrap_or_default();
    let mut out = describe(provider, object, &ws, &mapping);
    out["revision"] = json!(row.as_ref().map(|r| r.4));
    out["updated_at"] = json!(row.as_ref().map(|r| r.5));
    Ok(Json(out))
}

/// `PUT /crm/mappings/{provider}/{object}?workspace=W` with `{"rules": [...]}`.
pub async fn put(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((provider, object)): Path<(String, String)>,
    Query(q): Query<MappingQuery>,
    body: Result<Json<Mapping>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = crate::oauth::workspace(q.workspace.as_deref())?;
    let provider = provider_of(&provider)?;
    let object = object_of(provider, &object)?;
    let Json(mapping) = body.map_err(|e| ApiError::json_body(e, state.max_body_bytes))?;
    let problems = mapping.problems(&DefaultLanding { provider, object });
    if !problems.is_empty() {
        return Err(ApiError::Invalid(
            problems
                .into_iter()
                .map(|p| FieldError {
                    field: p.field,
                    message: p.message,
                })
                .collect(),
        ));
    }
    let rules = serde_json::to_value(&mapping.rules).map_err(ApiError::internal)?;
    let mut tx = state.pool.begin().await.map_err(ApiError::internal)?;
    let revision = bump(&mut tx).await?;
    let updated_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO crm_field_mappings (workspace_id, provider, object, rules, revision)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (workspace_id, provider, object) DO UPDATE
            SET rules = EXCLUDED.rules, revision = EXCLUDED.revision, updated_at = now()
         RETURNING updated_at",
    )
    .bind(&ws)
    .bind(provider.as_str())
    .bind(object)
    .bind(&rules)
    .bind(revision)
    .fetch_one(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    tracing::info!(%provider, object, rules = mapping.rules.len(), revision, "field mapping stored");
    let mut out = describe(provider, object, &ws, &mapping);
    out["revision"] = json!(revision);
    out["updated_at"] = json!(updated_at);
    Ok(Json(out))
}

/// `DELETE /crm/mappings/{provider}/{object}?workspace=W`: back to the defaults.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((provider, object)): Path<(String, String)>,
    Query(q): Query<MappingQuery>,
) -> Result<StatusCode, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = crate::oauth::workspace(q.workspace.as_deref())?;
    let provider = provider_of(&provider)?;
    let object = object_of(provider, &object)?;
    let mut tx = state.pool.begin().await.map_err(ApiError::internal)?;
    bump(&mut tx).await?;
    let deleted = sqlx::query(
        "DELETE FROM crm_field_mappings WHERE workspace_id = $1 AND provider = $2 AND object = $3",
    )
    .bind(&ws)
    .bind(provider.as_str())
    .bind(object)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::internal)?
    .rows_affected();
    tx.commit().await.map_err(ApiError::internal)?;
    if deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "workspace {ws} has no {provider} {object} mapping"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
