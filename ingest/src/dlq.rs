//! The dead-letter queue over HTTP: `GET /crm/dlq` lists what is in `CRM_DLQ` (events
//! a projector could not apply, pushes that failed for good or ran out of deliveries,
//! and JetStream's own advisories), `POST /crm/dlq/{id}/retry` sends a message back to
//! where it came from and removes it, `POST /crm/dlq/{id}/discard` removes it. The id
//! is the message's sequence in `CRM_DLQ`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crmsync_schema::{binding, envelope::data_bytes};

use crate::auth::require_bearer;
use crate::calls::Command;
use crate::{ApiError, AppState};

const REASON: &str = "Crm-Dlq-Reason";
const ORIGINAL_SUBJECT: &str = "Crm-Dlq-Subject";
const CRM_HEADERS: [&str; 6] = [
    "Crm-Dlq-Reason",
    "Crm-Dlq-Subject",
    "Crm-Dlq-Stream",
    "Crm-Dlq-Stream-Seq",
    "Crm-Dlq-Consumer",
    "Crm-Dlq-Deliveries",
];

#[derive(Debug, Deserialize)]
pub struct Page {
    /// List messages after this id.
    after: Option<u64>,
    limit: Option<usize>,
}

async fn stream(state: &AppState) -> Result<async_nats::jetstream::stream::Stream, ApiError> {
    state
        .js
        .get_stream(&state.dlq_stream)
        .await
        .map_err(ApiError::internal)
}

fn header(msg: &async_nats::jetstream::message::StreamMessage, name: &str) -> Option<String> {
    msg.headers.get(name).map(|v| v.as_str().to_owned())
}

/// `GET /crm/dlq?after=ID&limit=N`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let mut stream = stream(&state).await?;
    let info = stream.info().await.map_err(ApiError::internal)?.clone();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut items = Vec::new();
    let mut seq = page.after.map_or(first, |a| a + 1).max(first);
    while seq <= last && items.len() < limit {
        if let Ok(msg) = stream.get_raw_message(seq).await {
            items.push(json!({
                "id": msg.sequence,
                "subject": msg.subject.as_str(),
                "original_subject": header(&msg, ORIGINAL_SUBJECT),
                "reason": header(&msg, REASON),
                "retryable": header(&msg, ORIGINAL_SUBJECT).is_some(),
                "time": msg.time.unix_timestamp(),
                "bytes": msg.payload.len(),
            }));
        }
        seq += 1;
    }
    let next = (seq <= last)
        .then(|| items.last().and_then(|i| i["id"].as_u64()))
        .flatten();
    Ok(Json(
        json!({"messages": items, "total": info.state.messages, "next_after": next}),
    ))
}

/// A DLQ message's id: its stream sequence.
fn sequence(id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        let shown: String = id.chars().take(40).collect();
        ApiError::BadRequest(format!(
            "`{shown}` is not a DLQ message id (a positive sequence number, as GET /crm/dlq lists)"
        ))
    })
}

/// `POST /crm/dlq/{id}/retry`: back to its original subject (a fresh dedupe id, so
/// the stream takes it again), then out of the DLQ; a push's state becomes queued.
pub async fn retry(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let id = sequence(&id)?;
    let stream = stream(&state).await?;
    let msg = stream
        .get_raw_message(id)
        .await
        .map_err(|_| ApiError::NotFound(format!("no message {id} in the DLQ")))?;
    let original = header(&msg, ORIGINAL_SUBJECT).ok_or_else(|| {
        ApiError::BadRequest(format!("message {id} is an advisory: nothing to retry"))
    })?;
    let mut out = async_nats::HeaderMap::new();
    for (name, values) in msg.headers.iter() {
        let name: &str = name.as_ref();
        if CRM_HEADERS.contains(&name) || name == "Nats-Msg-Id" {
            continue;
        }
        for v in values {
            out.append(name, v.as_str());
        }
    }
    // Unique per retry: a DLQ purged and refilled reuses its sequences.
    out.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("retry:{id}:{}", uuid::Uuid::new_v4().simple()).as_str(),
    );
    // The state first: the dispatcher may finish the retried push at once.
    if original.starts_with(&format!("{}.out.", state.subjects.root())) {
        let command = binding::from_message(Some(&msg.headers), &msg.payload)
            .ok()
            .and_then(|e| serde_json::from_slice::<Command>(&data_bytes(&e)).ok());
        if let Some(c) = command {
            // Not when the call was pushed again since: the retried command is stale
            // (the dispatcher drops it) and the newer push's state stands.
            sqlx::query(
                "UPDATE crm_call_pushes SET state = 'queued', reason = 'retried from the DLQ',
                        attempts = 0, updated_at = now()
                 WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
                   AND state <> 'sent' AND ($4::int IS NULL OR pushes = $4)",
            )
            .bind(&c.workspace)
            .bind(&c.call_id)
            .bind(c.provider.as_str())
            .bind(c.push)
            .execute(&state.pool)
            .await
            .map_err(ApiError::internal)?;
        }
    }
    state
        .js
        .publish_with_headers(original.clone(), out, msg.payload.clone())
        .await
        .map_err(ApiError::internal)?
        .await
        .map_err(ApiError::internal)?;
    stream
        .delete_message(id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(id, "dead letter retried");
    Ok(Json(
        json!({"id": id, "retried": true, "subject": original}),
    ))
}

/// `POST /crm/dlq/{id}/discard`.
pub async fn discard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let id = sequence(&id)?;
    let stream = stream(&state).await?;
    if stream.get_raw_message(id).await.is_err() {
        return Err(ApiError::NotFound(format!("no message {id} in the DLQ")));
    }
    stream
        .delete_message(id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(id, "dead letter discarded");
    Ok(Json(json!({"id": id, "discarded": true})))
}
