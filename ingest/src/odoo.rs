//! Odoo's routes: `POST /crm/odoo/connect` (API key, checked by authenticating before
//! it is stored), `POST /crm/odoo/poll` (poll now), `POST /crm/odoo/scheduler/start`
//! and `/stop`, `GET /crm/odoo/status`. All behind the control API's bearer token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crmsync_adapters::oauth::TokenSet;
use crmsync_adapters::odoo::client::{ConnectError, OdooClient, OdooConfig};
use crmsync_adapters::{RateLimiter, Secret};

use crate::auth::require_bearer;
use crate::error::{optional_body, OptionalBody};
use crate::oauth::{workspace, WorkspaceQuery};
use crate::{connections, ApiError, AppState};

const PROVIDER: &str = "odoo";

/// A poll refused because the workspace's sync is stopped (`POST /crm/sync/stop`).
#[derive(Debug, thiserror::Error)]
#[error("the workspace's Odoo sync is stopped; POST /crm/sync/start to poll it")]
pub struct SyncStopped;

/// What the engine lends the API to poll a connection now.
pub trait PollNow: Send + Sync + std::fmt::Debug {
    fn poll_now<'a>(
        &'a self,
        workspace: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Value>> + Send + 'a>>;
}

#[derive(Debug, Deserialize)]
pub struct ConnectBody {
    workspace: Option<String>,
    url: Option<String>,
    database: Option<String>,
    login: Option<String>,
    api_key: Option<String>,
    /// Log pushed calls as done "Call" activities rather than notes.
    #[serde(default)]
    log_activity: bool,
}

fn body_of<T>(state: &AppState, body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::json_body(e, state.max_body_bytes))
}

/// The Odoo account id: `database@host[:port]`.
fn account_of(url: &url::Url, database: &str) -> String {
    let host = url.host_str().unwrap_or("odoo");
    match url.port() {
        Some(port) => format!("{database}@{host}:{port}"),
        None => format!("{database}@{host}"),
    }
}

/// `POST /crm/odoo/connect` `{workspace, url, database, login, api_key}`.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<ConnectBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let body = body_of(&state, body)?;
    let mut missing = Vec::new();
    let mut field = |name: &'static str, v: Option<String>| {
        let v = v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        if v.is_none() {
            missing.push(name);
        }
        v.unwrap_or_default()
    };
    let ws = field("workspace", body.workspace);
    let raw_url = field("url", body.url);
    let database = field("database", body.database);
    let login = field("login", body.login);
    let api_key = field("api_key", body.api_key);
    if !missing.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "required: {}",
            missing.join(", ")
        )));
    }
    let ws = workspace(Some(&ws))?;
    let url = url::Url::parse(&raw_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .filter(|u| u.username().is_empty() && u.query().is_none())
        .ok_or_else(|| ApiError::BadRequest(format!("url {raw_url:?} is not an http(s) URL")))?;
    let vault = crate::oauth::vault(&state)?;
    let base = url.as_str().trim_end_matches('/').to_owned();
    let config = OdooConfig {
        url: base.clone(),
        database: database.clone(),
        login: login.clone(),
        api_key: Secret::new(api_key.clone()),
        timeout: state.odoo_timeout,
    };
    let client = OdooClient::connect(
        config,
        Arc::new(RateLimiter::new(5.0, 5.0)),
        state.metrics.clone(),
    )
    .await
    .map_err(|e| match e {
        ConnectError::Server(_) => ApiError::Unavailable(e.to_string()),
        _ => ApiError::BadRequest(e.to_string()),
    })?;
    let account = account_of(&url, &database);
    let tokens = TokenSet {
        access_token: Secret::new(api_key),
        refresh_token: None,
        expires_in: u64::MAX,
    };
    let settings = json!({
        "url": base,
        "database": database,
        "login": login,
        "uid": client.uid(),
        "version": client.version(),
        "protocol": client.protocol().as_str(),
        "scheduler": {"enabled": true, "interval_secs": state.odoo_poll_interval.as_secs()},
        "log_activity": body.log_activity,
        // Each connect stores a key (a new one, perhaps): workers' clients made
        // with an earlier one are made again.
        "connected_at": chrono::Utc::now().to_rfc3339(),
    });
    connections::save(
        &state.pool,
        vault,
        &ws,
        PROVIDER,
        &account,
        &tokens,
        None,
        &settings,
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("the connection could not be stored: {e}")))?;
    tracing::info!(workspace = %ws, provider = PROVIDER, "connected");
    Ok(Json(json!({
        "connected": true,
        "workspace": ws,
        "provider": PROVIDER,
        "account_id": account,
        "version": client.version(),
        "protocol": client.protocol().as_str(),
    })))
}

#[derive(Debug, Deserialize)]
pub struct WorkspaceBody {
    workspace: Option<String>,
    interval_secs: Option<u64>,
}

fn workspace_from(
    state: &AppState,
    headers: &HeaderMap,
    q: &WorkspaceQuery,
    body: OptionalBody,
) -> Result<(String, Option<u64>), ApiError> {
    let body: Option<WorkspaceBody> = optional_body(state, headers, body)?;
    let from_body = body.as_ref().and_then(|b| b.workspace.clone());
    let ws = workspace(from_body.as_deref().or(q.workspace.as_deref()))?;
    Ok((ws, body.and_then(|b| b.interval_secs)))
}

async fn require_connection(
    state: &AppState,
    ws: &str,
) -> Result<connections::Connection, ApiError> {
    connections::get(&state.pool, ws, PROVIDER)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("workspace {ws} has no Odoo connection")))
}

/// `POST /crm/odoo/poll`: polls the workspace's Odoo now and answers what it found.
pub async fn poll(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
    body: OptionalBody,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let (ws, _) = workspace_from(&state, &headers, &q, body)?;
    require_connection(&state, &ws).await?;
    let poller = state.odoo.as_ref().ok_or_else(|| {
        ApiError::Unavailable("Odoo polling is not configured: set ENCRYPTION_KEY".into())
    })?;
    let report = poller
        .poll_now(&ws)
        .await
        .map_err(|e| match e.downcast_ref::<SyncStopped>() {
            Some(stopped) => ApiError::Conflict(stopped.to_string()),
            None => ApiError::Unavailable(format!("the poll failed: {e:#}")),
        })?;
    Ok(Json(
        json!({"workspace": ws, "polled": true, "report": report}),
    ))
}

async fn set_scheduler(
    state: &AppState,
    ws: &str,
    enabled: bool,
    interval: Option<u64>,
) -> Result<Value, ApiError> {
    let current = require_connection(state, ws).await?;
    let interval = match interval {
        Some(secs) if !(1..=86_400).contains(&secs) => {
            return Err(ApiError::BadRequest(
                "interval_secs must be from 1 to 86400".into(),
            ))
        }
        Some(secs) => secs,
        None => current
            .settings
            .pointer("/scheduler/interval_secs")
            .and_then(Value::as_u64)
            .unwrap_or(state.odoo_poll_interval.as_secs()),
    };
    let scheduler = json!({"enabled": enabled, "interval_secs": interval});
    sqlx::query(
        "UPDATE crm_connections SET settings = settings || jsonb_build_object('scheduler', $3::jsonb),
                updated_at = now()
         WHERE workspace_id = $1 AND provider = $2",
    )
    .bind(ws)
    .bind(PROVIDER)
    .bind(&scheduler)
    .execute(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(json!({"workspace": ws, "scheduler": scheduler}))
}

/// `POST /crm/odoo/scheduler/start` `{workspace, interval_secs?}`: polls every
/// interval (once across all workers).
pub async fn scheduler_start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
    body: OptionalBody,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let (ws, interval) = workspace_from(&state, &headers, &q, body)?;
    Ok(Json(set_scheduler(&state, &ws, true, interval).await?))
}

/// `POST /crm/odoo/scheduler/stop` `{workspace}`.
pub async fn scheduler_stop(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
    body: OptionalBody,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let (ws, _) = workspace_from(&state, &headers, &q, body)?;
    Ok(Json(set_scheduler(&state, &ws, false, None).await?))
}

/// `GET /crm/odoo/status?workspace=W`: the scheduler, the last poll (when, what it
/// found, its error) and the lag since the last successful one.
pub async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state, &headers)?;
    let ws = workspace(q.workspace.as_deref())?;
    let c = require_connection(&state, &ws).await?;
    let s = &c.settings;
    let lag = s
        .get("last_success")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds());
    Ok(Json(json!({
        "workspace": ws,
        "account_id": c.account_id,
        "status": c.status,
        "version": s.get("version"),
        "protocol": s.get("protocol"),
        "scheduler": s.get("scheduler"),
        "last_poll": s.get("last_poll"),
        "last_success": s.get("last_success"),
        "last_sweep": s.get("last_sweep"),
        "lag_seconds": lag,
    })))
}
