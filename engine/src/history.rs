//! `GET /crm/records/{object}/{id}/history`: a record's field values over time, read
//! from the event log rather than the projection.
//!
//! Every raw event of a record is on its own subject
//! (`crm.raw.<provider>.<ws>.<object>.<id>`), so the history is one filtered read of
//! `CRM_EVENTS`. Each event is normalised as the projector does (the same mapping) and
//! folded under the same per-field versions, so the last `state` is the projected row's
//! fields — unless events on other subjects wrote to the record too (the winner's
//! merge event marking a loser, a Zoho deletion naming several ids) or the app owns
//! some of its fields (a pushed call), which this route does not show yet. Lives in the engine because it needs both the HTTP state and the
//! projectors' mapping.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crmsync_ingest::auth::require_bearer;
use crmsync_ingest::{ApiError, AppState};
use crmsync_projectors::mappings::MappingSet;
use crmsync_projectors::Table;
use crmsync_schema::binding;
use crmsync_schema::mapping::Compiled;
use crmsync_schema::{Change, FieldSet, ObjectType, Provider, RemoteId, Version, WorkspaceId};

/// What the engine's own routes (history, sync status, metrics) need beside the HTTP
/// state.
#[derive(Debug, Clone)]
pub struct HistoryState {
    pub app: Arc<AppState>,
    /// The events stream's name (`CRM_EVENTS`, prefixed).
    pub stream: String,
    /// The outbound stream's name (`CRM_OUTBOUND`, prefixed).
    pub outbound: String,
    /// The cursor bucket's name (poll cursors, backfill resume points).
    pub cursors: String,
    /// Cancelled when the engine stops: long-lived answers (the feed) end then.
    pub stop: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// The CRM account the record lives in, as in the projection's `workspace_id`.
    workspace: Option<String>,
    provider: Option<String>,
    /// Events after this stream sequence (the previous page's `next_after`).
    after: Option<u64>,
    limit: Option<usize>,
}

/// The longest a history read may take before it is answered 503.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn object_of(raw: &str) -> Result<(ObjectType, Table), ApiError> {
    ObjectType::parse(crmsync_schema::ids::singular(raw))
        .ok()
        .and_then(|o| Table::for_object(&o).map(|t| (o, t)))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "object `{raw}` is not one of contacts, companies, deals, activities"
            ))
        })
}

/// `GET /crm/records/{object}/{id}/history?workspace=W&provider=P[&after=SEQ][&limit=N]`.
pub async fn get(
    State(state): State<HistoryState>,
    headers: HeaderMap,
    Path((object, id)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state.app, &headers)?;
    let (object, table) = object_of(&object)?;
    let workspace = crmsync_ingest::oauth::workspace(q.workspace.as_deref())?;
    let workspace =
        WorkspaceId::parse(&workspace).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let provider: Provider = q
        .provider
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("provider is required".into()))?
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("provider: {e}")))?;
    let remote_id = RemoteId::parse(&id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = q.after.unwrap_or(0);
    let subject = state
        .app
        .subjects
        .raw(provider, &workspace, &object, &remote_id);

    let events = tokio::time::timeout(READ_TIMEOUT, read(&state, &subject))
        .await
        .map_err(|_| ApiError::Unavailable("reading the record's events took too long".into()))??;
    if events.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no events for {provider} {object} {id} in workspace {workspace}"
        )));
    }

    let mappings = MappingSet::load(&state.app.pool)
        .await
        .map_err(ApiError::internal)?;
    let mapping = mappings.get(table, &workspace, provider);
    let mut state_now = FieldSet::default();
    let mut out = Vec::new();
    let mut next_after = None;
    for (seq, message) in events {
        let entry = describe(
            table,
            provider,
            &object,
            &remote_id,
            &message,
            mapping,
            &mut state_now,
        );
        if seq <= after {
            continue;
        }
        if out.len() == limit {
            next_after = out.last().and_then(|e: &Value| e["seq"].as_u64());
            break;
        }
        let mut entry = entry;
        entry["seq"] = json!(seq);
        out.push(entry);
    }
    Ok(Json(json!({
        "workspace": workspace.as_str(),
        "provider": provider.as_str(),
        "object": object.as_str(),
        "id": remote_id.as_str(),
        "events": out,
        "next_after": next_after,
    })))
}

/// Every message on `subject`, in stream order, with its sequence.
async fn read(
    state: &HistoryState,
    subject: &str,
) -> Result<Vec<(u64, async_nats::jetstream::Message)>, ApiError> {
    let stream = state
        .app
        .js
        .get_stream(&state.stream)
        .await
        .map_err(ApiError::internal)?;
    // Nothing on the subject: an ordered consumer would wait for a first message.
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(_) => {}
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(ApiError::internal)?;
    let mut messages = consumer.messages().await.map_err(ApiError::internal)?;
    let mut out = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(ApiError::internal)?;
        let info = message.info().map_err(ApiError::internal)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push((seq, message));
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// One event as the history shows it: what it set on the record and the record's
/// fields after it; `state` is folded into `fields`.
fn describe(
    table: Table,
    provider: Provider,
    object: &ObjectType,
    id: &RemoteId,
    message: &async_nats::jetstream::Message,
    mapping: Option<&Compiled>,
    state: &mut FieldSet,
) -> Value {
    let event = match binding::view(message.headers.as_ref(), &message.payload) {
        Ok(event) => event,
        Err(e) => return json!({"error": format!("not a readable event: {e}")}),
    };
    let time = event.time_or_epoch();
    let version = Version::new(time, &event.id);
    let mut set = Map::new();
    let mut error = None;
    match table.normalise(
        provider,
        object.as_str(),
        Change::of_type(&event.ty),
        &event.data,
        &version,
    ) {
        Ok(normalised) => {
            for row in normalised.rows.iter().filter(|r| &r.remote_id == id) {
                let fields = mapping.map_or_else(|| row.fields.clone(), |m| m.apply(&row.fields));
                for (field, value) in &fields.fields {
                    set.insert(field.clone(), value.clone());
                }
                state.merge(&fields);
            }
        }
        Err(e) => error = Some(e.to_string()),
    }
    let mut entry = json!({
        "time": time,
        "type": event.ty,
        "event_id": event.id,
        "set": set,
        "state": state.fields,
    });
    if let Some(e) = error {
        entry["error"] = json!(e);
    }
    entry
}
