//! `POST /crm/webhooks/zoho`: a notification callback is accepted only when its
//! channel belongs to an active connection and the echoed token matches that
//! channel's (compared in constant time); then each record it names is stored as a
//! raw event (without the token), and the answer is 200 once JetStream has them all.
//! Zoho does not retry callbacks, so a lost one is found by the poller.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crmsync_adapters::zoho::notification::Notification;
use crmsync_schema::WorkspaceId;

use super::{body_of, count_delivery, count_published, count_refused, require_json};
use crate::connections::{self, ChannelOwner};
use crate::publish::publish_all;
use crate::{ApiError, AppState};

pub async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let result = handle(&state, &headers, body).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    count_delivery(&state.metrics, "zoho", status);
    result
}

fn refuse(state: &AppState, reason: &'static str) -> ApiError {
    count_refused(&state.metrics, "zoho", reason);
    tracing::warn!(reason, "Zoho notification refused");
    ApiError::Unauthorized("unknown notification channel or wrong token".into())
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_of(body, state.max_body_bytes)?;
    require_json(headers)?;
    let vault = crate::oauth::vault(state)?;
    let notification =
        Notification::parse(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let owner: Option<ChannelOwner> = connections::zoho_channel(
        &state.pool,
        vault,
        &notification.channel_id,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "Zoho notification: the channel could not be looked up");
        ApiError::Unavailable("the channel could not be checked; retry later".into())
    })?;
    let Some(owner) = owner else {
        return Err(refuse(state, "unknown_channel"));
    };
    let echoed = notification
        .token
        .as_ref()
        .map_or(&[][..], |t| t.expose().as_bytes());
    if !bool::from(echoed.ct_eq(owner.token.expose().as_bytes())) {
        return Err(refuse(state, "mismatch"));
    }
    let org = WorkspaceId::parse(owner.account_id.clone())
        .map_err(|e| ApiError::internal(format!("the connection's org id: {e}")))?;
    let events = notification
        .events(&org)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let published = publish_all(&state.js, &state.subjects, &events)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, events = events.len(), "Zoho notification not stored");
            ApiError::Unavailable("the events could not be stored; retry later".into())
        })?;
    count_published(&state.metrics, "zoho", &events);
    Ok(Json(json!({
        "accepted": events.len(),
        "stored": published.stored,
        "duplicates": published.duplicates,
        "last_sequence": published.last_sequence,
    })))
}
