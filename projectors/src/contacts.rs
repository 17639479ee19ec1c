//! The contacts projection: normalisation by provider and the batched upsert.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use crmsync_adapters::{hubspot, MappingError, RowChange};
use crmsync_schema::{FieldSet, Provider, RemoteId, Version, WorkspaceId};

/// A contact row's key.
pub type RowKey = (WorkspaceId, Provider, RemoteId);

/// The row changes one contact event implies.
pub fn normalise(
    provider: Provider,
    data: &[u8],
    version: &Version,
) -> Result<Vec<RowChange>, MappingError> {
    match provider {
        Provider::HubSpot => hubspot::mapping::contact_changes(data, version),
        other => Err(MappingError::Malformed {
            provider: other.as_str(),
            reason: "no contact mapping for this provider yet".into(),
        }),
    }
}

/// Upserts the merged changes of a batch: one statement whatever the batch size.
/// Rows are written in key order so concurrent workers lock in the same order.
pub async fn upsert(
    tx: &mut PgConnection,
    rows: &BTreeMap<RowKey, FieldSet>,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut workspaces = Vec::with_capacity(rows.len());
    let mut providers = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut fields = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut updated: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(rows.len());
    for ((ws, provider, id), set) in rows {
        workspaces.push(ws.as_str());
        providers.push(provider.as_str());
        ids.push(id.as_str());
        fields.push(serde_json::to_value(&set.fields).unwrap_or(Value::Null));
        versions.push(serde_json::to_value(&set.versions).unwrap_or(Value::Null));
        updated.push(set.latest_time());
    }
    let result = sqlx::query(
        r#"INSERT INTO contacts AS c
               (workspace_id, provider, remote_id, fields, field_versions, source_updated_at)
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[],
                                $6::timestamptz[])
           ON CONFLICT (workspace_id, provider, remote_id) DO UPDATE SET
               (fields, field_versions) = (
                   SELECT m.fields, m.versions
                   FROM crm_merge_fields(c.fields, c.field_versions,
                                         EXCLUDED.fields, EXCLUDED.field_versions) m),
               source_updated_at = GREATEST(c.source_updated_at, EXCLUDED.source_updated_at),
               projected_at = now()"#,
    )
    .bind(&workspaces)
    .bind(&providers)
    .bind(&ids)
    .bind(&fields)
    .bind(&versions)
    .bind(&updated)
    .execute(tx)
    .await?;
    Ok(result.rows_affected())
}
