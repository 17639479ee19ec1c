//! `POST /crm/webhooks/hubspot`: verify, wrap each event as a raw CloudEvent, publish,
//! and answer 200 only once JetStream has stored all of them.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use crmsync_adapters::hubspot::webhook::{self, SignedRequest, VerifyError};

use super::{count_delivery, count_published, count_refused, public_uri, require_json};
use crate::publish::publish_all;
use crate::{ApiError, AppState};

pub async fn receive(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = handle(&state, &method, &uri, &headers, body).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    count_delivery(&state.metrics, "hubspot", status);
    result
}

/// The body, read up to `limit` bytes: HubSpot's batches may be far larger than the
/// other routes' bodies (the router's limit), so this route reads its own.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::TooLarge { limit }
        } else {
            ApiError::BadRequest(format!("the body could not be read: {e}"))
        }
    })
}

async fn handle(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_limited(body, state.hubspot_max_body_bytes).await?;
    let secret = state.hubspot_secret.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "HubSpot webhooks are not configured: set CRM_HUBSPOT_CLIENT_SECRET".into(),
        )
    })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let uri = public_uri(state.public_url.as_deref(), headers, uri);
    let request = SignedRequest {
        method: method.as_str(),
        uri: &uri,
        body: &body,
        signature: header(webhook::SIGNATURE),
        signature_version: header(webhook::SIGNATURE_VERSION),
        signature_v3: header(webhook::SIGNATURE_V3),
        timestamp: header(webhook::TIMESTAMP),
    };
    let secret = secret.expose().as_bytes();
    if let Err(e) = webhook::verify(&request, secret, Utc::now(), state.hubspot_signatures) {
        let reason = match e {
            VerifyError::Missing => "missing",
            VerifyError::UnknownVersion => "unknown_version",
            VerifyError::BadTimestamp => "bad_timestamp",
            VerifyError::StaleTimestamp => "stale_timestamp",
            VerifyError::Mismatch => "mismatch",
            VerifyError::LegacyRefused => "legacy_refused",
        };
        count_refused(&state.metrics, "hubspot", reason);
        if e == VerifyError::LegacyRefused {
            tracing::warn!(reason, "HubSpot webhook refused: signed with v1 or v2 alone (set CRM_HUBSPOT_LEGACY_SIGNATURES=true to accept those)");
        } else {
            tracing::warn!(reason, "HubSpot webhook refused: bad signature");
        }
        return Err(ApiError::Unauthorized(e.to_string()));
    }
    require_json(headers)?;
    let batch = webhook::receive_batch(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !batch.unparsed.is_empty() {
        // Stored verbatim as `unparsed` events: a 4xx would make HubSpot drop the batch.
        tracing::warn!(
            unparsed = batch.unparsed.len(),
            "HubSpot webhook elements stored unparsed"
        );
        for (index, reason) in &batch.unparsed {
            tracing::debug!(index, reason, "unparsed HubSpot webhook element");
        }
    }
    let events = &batch.events;
    let published = publish_all(&state.js, &state.subjects, events)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, events = events.len(), "HubSpot webhook not stored; answering 503 so HubSpot retries");
            ApiError::Unavailable("the events could not be stored; retry later".into())
        })?;
    count_published(&state.metrics, "hubspot", events);
    tracing::debug!(
        stored = published.stored,
        duplicates = published.duplicates,
        "HubSpot webhook stored"
    );
    Ok(Json(json!({
        "accepted": events.len(),
        "unparsed": batch.unparsed.len(),
        "stored": published.stored,
        "duplicates": published.duplicates,
        "last_sequence": published.last_sequence,
    })))
}
