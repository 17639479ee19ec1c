//! Call outcomes out to the CRMs: `POST /crm/calls/{call_id}/push-to-crm` validates an
//! outcome, stores it as an app event (`crm.app.<ws>.activity.<call_id>`) and one
//! command per provider on `CRM_OUTBOUND`, and answers 202 once both are stored;
//! `GET /crm/calls/{call_id}` shows each provider's state. The commands carry an
//! idempotency key per (workspace, call, provider) that the dispatcher leaves in the
//! CRM record, so that a repeat push, a redelivery or a restarted worker finds the
//! record instead of creating a second one.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use cloudevents::{EventBuilder, EventBuilderV10};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crmsync_schema::{cloudevents, ObjectType, Provider, RemoteId, WorkspaceId};

use crate::auth::require_bearer;
use crate::error::FieldError;
use crate::oauth::WorkspaceQuery;
use crate::publish::publish_one;
use crate::{ApiError, AppState};

/// Who or what a call belongs to, in a CRM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The app's own id for the record. It resolves through the entity links
    /// (`crm_entity_links`) that earlier pushes naming it with a CRM id, email or phone
    /// recorded, in each CRM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The record's id in the CRM (with one provider only).
    #[serde(default)]
    pub crm_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

/// A call outcome, as the app sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub workspace: String,
    /// `hubspot`, `zoho`, `odoo`, or `all` (every connected provider; the default).
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub contact: Option<Target>,
    #[serde(default)]
    pub deal: Option<Target>,
    pub started_at: DateTime<Utc>,
    pub duration_secs: u64,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// What happened: `connected`, `no_answer`, `voicemail`, `busy`, … (free text).
    pub disposition: String,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub recording_url: Option<String>,
}

/// One push of one outcome to one provider: what `CRM_OUTBOUND` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub call_id: String,
    pub workspace: String,
    pub provider: Provider,
    /// Left in the CRM record; found again before any second create.
    pub key: String,
    pub outcome: Outcome,
    /// Which push of the call this is (the row's `pushes`): a command older than the
    /// row's latest push is stale, and is dropped. Absent from commands queued before
    /// it was added, which count as current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<i32>,
}

/// The idempotency key of a call's push to a provider.
pub fn push_key(workspace: &str, call_id: &str, provider: Provider) -> String {
    let digest = Sha256::digest(format!("{workspace}\n{call_id}\n{provider}"));
    format!("crmsync-{}", hex::encode(&digest[..10]))
}

fn validate(outcome: &Outcome) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    if WorkspaceId::parse(outcome.workspace.clone()).is_err() {
        bad("workspace", "must be a non-empty id");
    }
    if let Some(p) = outcome.provider.as_deref() {
        if p != "all" && p.parse::<Provider>().is_err() {
            bad("provider", "must be hubspot, zoho, odoo or all");
        }
    }
    match &outcome.contact {
        None if outcome.deal.is_none() => bad("contact", "a contact or a deal is required"),
        Some(t)
            if t.app_id.is_none()
                && t.crm_id.is_none()
                && t.email.is_none()
                && t.phone.is_none() =>
        {
            bad("contact", "needs app_id, crm_id, email or phone")
        }
        _ => {}
    }
    if let Some(t) = &outcome.deal {
        if t.crm_id.is_none() && t.app_id.is_none() {
            bad("deal", "needs app_id or crm_id");
        }
        if t.email.is_some() || t.phone.is_some() {
            bad(
                "deal",
                "is found by app_id or crm_id, not by email or phone",
            );
        }
    }
    for (field, target) in [("contact", &outcome.contact), ("deal", &outcome.deal)] {
        if let Some(id) = target.as_ref().and_then(|t| t.app_id.as_deref()) {
            if id.trim().is_empty() || id.chars().count() > 200 || id.contains('\0') {
                bad(&format!("{field}.app_id"), "must be 1-200 characters");
            }
        }
    }
    let single = outcome.provider.as_deref().is_some_and(|p| p != "all");
    let has_crm_id = |t: &Option<Target>| t.as_ref().is_some_and(|t| t.crm_id.is_some());
    if !single && (has_crm_id(&outcome.contact) || has_crm_id(&outcome.deal)) {
        bad("provider", "a crm_id belongs to one CRM: name the provider");
    }
    if !matches!(outcome.direction.as_str(), "inbound" | "outbound") {
        bad("direction", "must be inbound or outbound");
    }
    if outcome.disposition.trim().is_empty() || outcome.disposition.len() > 100 {
        bad("disposition", "must be 1-100 characters");
    }
    if outcome.duration_secs > 24 * 3600 {
        bad("duration_secs", "must be at most a day");
    }
    if let Some(url) = &outcome.recording_url {
        if !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            bad("recording_url", "must be an http(s) URL");
        }
    }
    for (field, text, max) in [
        ("summary", &outcome.summary, 5_000),
        ("notes", &outcome.notes, 50_000),
    ] {
        if text.as_ref().is_some_and(|t| t.len() > max) {
            bad(field, &format!("must be at most {max} bytes"));
        }
    }
    errors
}

/// The providers a push goes to: the one named (connected), or every connected one.
async fn providers(state: &AppState, outcome: &Outcome) -> Result<Vec<Provider>, ApiError> {
    let connected: Vec<String> = sqlx::query_scalar(
        "SELECT provider FROM crm_connections WHERE workspace_id = $1 AND status = 'active'
         ORDER BY provider",
    )
    .bind(&outcome.workspace)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    let wanted: Vec<Provider> = match outcome.provider.as_deref() {
        None | Some("all") => connected.iter().filter_map(|p| p.parse().ok()).collect(),
        Some(p) => {
            let p: Provider = p
                .parse()
                .map_err(|_| ApiError::BadRequest("provider".into()))?;
            if !connected.iter().any(|c| c == p.as_str()) {
                return Err(ApiError::NotFound(format!(
                    "workspace {} has no active {p} connection",
                    outcome.workspace
                )));
            }
            vec![p]
        }
    };
    if wanted.is_empty() {
        return Err(ApiError::NotFound(format!(
            "workspace {} has no active CRM connection",
            outcome.workspace
        )));
    }
    Ok(wanted)
}

/// `POST /crm/calls/{call_id}/push-to-crm`.
pub async fn push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(call_id): Path<String>,
    body: Result<Json<Outcome>, JsonRejection>,
) -> Response {
    match push_inner(&state, &headers, call_id, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn push_inner(
    state: &AppState,
    headers: &HeaderMap,
    call_id: String,
    body: Result<Json<Outcome>, JsonRejection>,
) -> Result<Response, ApiError> {
    require_bearer(state, headers)?;
    let call = RemoteId::parse(call_id.clone())
        .ok()
        .filter(|_| call_id.len() <= 200)
        .ok_or_else(|| ApiError::BadRequest("call_id must be 1-200 characters".into()))?;
    let Json(outcome) = body.map_err(|e| ApiError::json_body(e, state.max_body_bytes))?;
    let errors = validate(&outcome);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let targets = providers(state, &outcome).await?;
    let ws = WorkspaceId::parse(outcome.workspace.clone()).expect("validated");
    let body = serde_json::to_vec(&outcome).expect("serialisable");
    let digest = hex::encode(&Sha256::digest(&body)[..8]);

    // The app event: what the app said happened, whatever the CRMs do with it.
    let mut event = EventBuilderV10::new()
        .id(format!(
            "app-call-{}-{digest}",
            push_key(ws.as_str(), &call_id, Provider::HubSpot)
        ))
        .source(format!(
            "/crmsync/app/{}",
            crmsync_schema::subject::escape_token(ws.as_str())
        ))
        .ty("crmsync.activity.call_logged.v1")
        .subject(format!(
            "activity/{}",
            crmsync_schema::subject::escape_token(&call_id)
        ))
        .time(outcome.started_at)
        .build()
        .map_err(ApiError::internal)?;
    event.set_data("application/json", body.clone());
    let activity = ObjectType::parse("activity").expect("a valid object type");
    publish_one(
        &state.js,
        state.subjects.app(&ws, &activity, &call),
        event,
        &format!("app:{}:activity:{call_id}:{digest}", ws.as_str()),
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("the outcome could not be stored: {e}")))?;

    for provider in &targets {
        // A push after `sent` changes nothing (the CRM has the call); any other push
        // queues it again, as a new command.
        let (row_state, pushes): (String, i32) = sqlx::query_as(
            "INSERT INTO crm_call_pushes (workspace_id, call_id, provider, state, outcome)
             VALUES ($1, $2, $3, 'queued', $4)
             ON CONFLICT (workspace_id, call_id, provider) DO UPDATE SET
                 outcome = CASE WHEN crm_call_pushes.state = 'sent'
                                THEN crm_call_pushes.outcome ELSE EXCLUDED.outcome END,
                 pushes = crm_call_pushes.pushes + 1,
                 attempts = CASE WHEN crm_call_pushes.state = 'sent'
                                 THEN crm_call_pushes.attempts ELSE 0 END,
                 updated_at = now(),
                 state = CASE WHEN crm_call_pushes.state = 'sent' THEN 'sent' ELSE 'queued' END,
                 reason = CASE WHEN crm_call_pushes.state = 'sent' THEN crm_call_pushes.reason ELSE NULL END
             RETURNING state, pushes",
        )
        .bind(ws.as_str())
        .bind(&call_id)
        .bind(provider.as_str())
        .bind(serde_json::to_value(&outcome).expect("serialisable"))
        .fetch_one(&state.pool)
        .await
        .map_err(ApiError::internal)?;
        if row_state == "sent" {
            continue;
        }
        let command = Command {
            call_id: call_id.clone(),
            workspace: ws.as_str().to_owned(),
            provider: *provider,
            key: push_key(ws.as_str(), &call_id, *provider),
            outcome: outcome.clone(),
            push: Some(pushes),
        };
        let mut event = EventBuilderV10::new()
            .id(format!("push-{}-{digest}", command.key))
            .source(format!(
                "/crmsync/app/{}",
                crmsync_schema::subject::escape_token(ws.as_str())
            ))
            .ty("crmsync.activity.push_requested.v1")
            .subject(format!(
                "activity/{}",
                crmsync_schema::subject::escape_token(&call_id)
            ))
            .time(Utc::now())
            .build()
            .map_err(ApiError::internal)?;
        event.set_data(
            "application/json",
            serde_json::to_vec(&command).expect("serialisable"),
        );
        publish_one(
            &state.js,
            state.subjects.outbound(*provider, &ws, &call),
            event,
            &format!("out:{provider}:{}:{call_id}:{pushes}", ws.as_str()),
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("the push could not be queued: {e}")))?;
    }
    let status_url = format!(
        "/crm/calls/{}?workspace={}",
        url::form_urlencoded::byte_serialize(call_id.as_bytes()).collect::<String>(),
        url::form_urlencoded::byte_serialize(ws.as_str().as_bytes()).collect::<String>()
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "call_id": call_id,
            "workspace": ws.as_str(),
            "providers": targets,
            "status_url": status_url,
        })),
    )
        .into_response())
}

/// provider, state, crm_id, reason, attempts, updated_at.
type PushRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    i32,
    DateTime<Utc>,
);

/// `GET /crm/calls/{call_id}?workspace=W`: the call's state per provider.
pub async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(call_id): Path<String>,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = crate::oauth::workspace(q.workspace.as_deref())?;
    let rows: Vec<PushRow> = sqlx::query_as(
        "SELECT provider, state, crm_id, reason, attempts, updated_at FROM crm_call_pushes
             WHERE workspace_id = $1 AND call_id = $2 ORDER BY provider",
    )
    .bind(&ws)
    .bind(&call_id)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no push of call {call_id} in workspace {ws}"
        )));
    }
    let providers: Vec<Value> = rows
        .into_iter()
        .map(|(provider, state, crm_id, reason, attempts, updated_at)| {
            json!({"provider": provider, "state": state, "crm_id": crm_id, "reason": reason,
                   "attempts": attempts, "updated_at": updated_at})
        })
        .collect();
    Ok(Json(
        json!({"call_id": call_id, "workspace": ws, "providers": providers}),
    ))
}
