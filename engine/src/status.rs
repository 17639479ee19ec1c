//! `GET /crm/sync/status` and `GET /crm/metrics`: where the sync stands, from
//! JetStream's consumer state, the projection checkpoints and the push table.
//!
//! Lives in the engine because it needs the topology's stream names beside the HTTP
//! state.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crmsync_ingest::auth::require_bearer;
use crmsync_ingest::ApiError;
use crmsync_projectors::Table;
use crmsync_schema::Provider;

use crate::history::HistoryState as EngineState;

/// workspace, provider, account, status, last error, updated at.
type ConnectionRow = (
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    DateTime<Utc>,
);

#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// Only this workspace's connections (consumers and streams are shared).
    workspace: Option<String>,
}

/// The projections' checkpoints by consumer: (stream sequence, events applied, when).
type Checkpoints = BTreeMap<String, (i64, i64, DateTime<Utc>)>;

async fn checkpoints(state: &EngineState) -> Result<Checkpoints, ApiError> {
    Ok(sqlx::query_as::<_, (String, i64, i64, DateTime<Utc>)>(
        "SELECT consumer, stream_seq, events_applied, updated_at FROM projection_checkpoints",
    )
    .fetch_all(&state.app.pool)
    .await
    .map_err(ApiError::internal)?
    .into_iter()
    .map(|(c, s, n, t)| (c, (s, n, t)))
    .collect())
}

/// Each durable consumer of `stream`: what it has still to do.
async fn consumers(
    state: &EngineState,
    stream: &str,
    checkpoints: &Checkpoints,
) -> Result<Vec<Value>, ApiError> {
    let stream_handle = state
        .app
        .js
        .get_stream(stream)
        .await
        .map_err(ApiError::internal)?;
    let mut infos = stream_handle.consumers();
    let mut out = Vec::new();
    while let Some(info) = infos.next().await {
        let info = info.map_err(ApiError::internal)?;
        let name = info.name.clone();
        let role = match name.split('-').next() {
            Some("proj") => "projection",
            Some("hydrate") => "hydration",
            Some("push") => "outbound",
            Some("link") => "entity links",
            _ => "other",
        };
        let behind = info.num_pending + info.num_ack_pending as u64;
        let mut entry = json!({
            "consumer": name,
            "role": role,
            "pending": info.num_pending,
            "unacknowledged": info.num_ack_pending,
            "redelivered": info.num_redelivered,
            "lag_events": behind,
        });
        if let Some((seq, applied, at)) = checkpoints.get(&name) {
            entry["committed_sequence"] = json!(seq);
            entry["events_applied"] = json!(applied);
            entry["last_commit"] = json!(at);
        }
        // How long the oldest event it has not settled has waited (null when that
        // cannot be read).
        entry["lag_seconds"] = if behind == 0 {
            json!(0.0)
        } else {
            let mut filters = info.config.filter_subjects.clone();
            if !info.config.filter_subject.is_empty() {
                filters.push(info.config.filter_subject.clone());
            }
            oldest_waiting(state, stream, &filters, info.ack_floor.stream_sequence + 1)
                .await
                .map_or(Value::Null, |t| {
                    json!((Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                })
        };
        out.push(entry);
    }
    out.sort_by(|a, b| a["consumer"].as_str().cmp(&b["consumer"].as_str()));
    Ok(out)
}

/// When the first message at or after `from` on any of `filters` was stored.
async fn oldest_waiting(
    state: &EngineState,
    stream: &str,
    filters: &[String],
    from: u64,
) -> Option<DateTime<Utc>> {
    let mut oldest: Option<DateTime<Utc>> = None;
    let filters = if filters.is_empty() {
        vec![">".to_owned()]
    } else {
        filters.to_vec()
    };
    for filter in filters {
        let answer: async_nats::jetstream::response::Response<Value> = state
            .app
            .js
            .request(
                format!("STREAM.MSG.GET.{stream}"),
                &json!({"seq": from, "next_by_subj": filter}),
            )
            .await
            .ok()?;
        let async_nats::jetstream::response::Response::Ok(found) = answer else {
            continue;
        };
        let time = found["message"]["time"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))?;
        oldest = Some(oldest.map_or(time, |o| o.min(time)));
    }
    oldest
}

async fn stream_state(state: &EngineState, name: &str) -> Result<Value, ApiError> {
    let mut stream = state
        .app
        .js
        .get_stream(name)
        .await
        .map_err(ApiError::internal)?;
    let info = stream.info().await.map_err(ApiError::internal)?;
    Ok(json!({
        "name": name,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "last_sequence": info.state.last_sequence,
        "consumers": info.state.consumer_count,
    }))
}

async fn pushes(state: &EngineState) -> Result<Value, ApiError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM crm_call_pushes GROUP BY state")
            .fetch_all(&state.app.pool)
            .await
            .map_err(ApiError::internal)?;
    let mut out = json!({"queued": 0, "sent": 0, "failed": 0, "dead_lettered": 0});
    for (s, n) in rows {
        out[s] = json!(n);
    }
    Ok(out)
}

/// Where a connection's sync of each object stands: its poll cursor as stored, its
/// last poll (from the sync log) and last success, and its backfill (a stored resume
/// point means one is under way or was interrupted; the last finished one from the
/// log).
async fn objects(
    state: &EngineState,
    kv: &async_nats::jetstream::kv::Store,
    workspace: &str,
    provider: Provider,
    account: &str,
) -> Result<Vec<Value>, ApiError> {
    // (the log's object, the cursor key, the backfill resume key)
    let keys: Vec<(String, String, Option<String>)> = match provider {
        Provider::HubSpot => crate::hubspot::poller::OBJECTS
            .iter()
            .map(|api| {
                (
                    crmsync_schema::ids::singular(api).to_owned(),
                    crate::hubspot::poller::cursor_key(workspace, account, api),
                    Some(crate::hubspot::backfill::resume_key(
                        workspace, account, api,
                    )),
                )
            })
            .collect(),
        // Every polled module; only the synced ones are backfilled (not Calls).
        Provider::Zoho => crmsync_adapters::zoho::POLLED
            .iter()
            .map(|&(module, object)| {
                let backfilled = crmsync_adapters::zoho::MODULES.contains(&(module, object));
                (
                    object.to_owned(),
                    crate::zoho::poller::cursor_key(workspace, account, module),
                    backfilled
                        .then(|| crate::zoho::backfill::resume_key(workspace, account, module)),
                )
            })
            .collect(),
        Provider::Odoo => crmsync_adapters::odoo::MODELS
            .iter()
            .map(|model| {
                (
                    (*model).to_owned(),
                    crate::odoo::poller::cursor_key(workspace, account, model),
                    None,
                )
            })
            .collect(),
    };
    let read = |key: String| async move {
        kv.get(&key)
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
    };
    let mut out = Vec::new();
    for (object, cursor_key, resume_key) in keys {
        // Odoo polls every model at once: its log rows name no object.
        let logged = (provider != Provider::Odoo).then_some(object.as_str());
        let last = |operation: &'static str, status: Option<&'static str>| {
            sqlx::query_as::<_, (String, i64, DateTime<Utc>, Option<String>)>(
                "SELECT status, records, finished_at, message FROM crm_sync_logs
                 WHERE workspace_id = $1 AND provider = $2 AND object IS NOT DISTINCT FROM $3
                   AND operation = $4 AND ($5::text IS NULL OR status = $5)
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(workspace)
            .bind(provider.as_str())
            .bind(logged)
            .bind(operation)
            .bind(status)
            .fetch_optional(&state.app.pool)
        };
        let shown = |row: Option<(String, i64, DateTime<Utc>, Option<String>)>| {
            row.map(|(status, records, at, message)| {
                json!({"status": status, "records": records, "at": at, "message": message})
            })
        };
        let last_poll = shown(last("poll", None).await.map_err(ApiError::internal)?);
        let last_success = last("poll", Some("ok"))
            .await
            .map_err(ApiError::internal)?
            .map(|r| r.2);
        let backfill = match resume_key {
            Some(key) => json!({
                "resume_point": read(key).await,
                "last": shown(last("backfill", None).await.map_err(ApiError::internal)?),
            }),
            None => Value::Null,
        };
        // Odoo polls its models together: any stopped object stops them all.
        let asked = if provider == Provider::Odoo {
            "?"
        } else {
            object.as_str()
        };
        let stopped = crate::pause::is_paused(&state.app.pool, workspace, provider, asked).await;
        out.push(json!({
            "object": object,
            "stopped": stopped,
            "cursor": read(cursor_key).await,
            "last_poll": last_poll,
            "last_success": last_success,
            "backfill": backfill,
        }));
    }
    Ok(out)
}

/// `GET /crm/sync/status[?workspace=W]` (bearer): every consumer's backlog and last
/// commit, the streams, the connections (of one workspace, if given) with their last
/// error, and the pushes by state.
pub async fn status(
    State(state): State<EngineState>,
    headers: HeaderMap,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state.app, &headers)?;
    let workspace = match q.workspace.as_deref() {
        Some(w) => Some(crmsync_ingest::oauth::workspace(Some(w))?),
        None => None,
    };
    let checkpoints = checkpoints(&state).await?;
    let mut all_consumers = consumers(&state, &state.stream, &checkpoints).await?;
    all_consumers.extend(consumers(&state, &state.outbound, &checkpoints).await?);
    let connections: Vec<ConnectionRow> = sqlx::query_as(
        "SELECT workspace_id, provider, account_id, status, last_error, updated_at
             FROM crm_connections WHERE $1::text IS NULL OR workspace_id = $1
             ORDER BY workspace_id, provider",
    )
    .bind(&workspace)
    .fetch_all(&state.app.pool)
    .await
    .map_err(ApiError::internal)?;
    let kv = state
        .app
        .js
        .get_key_value(&state.cursors)
        .await
        .map_err(ApiError::internal)?;
    let mut out = Vec::new();
    for (ws, provider, account, status, error, at) in connections {
        let objects = match (provider.parse::<Provider>(), &account) {
            (Ok(p), Some(account)) => objects(&state, &kv, &ws, p, account).await?,
            _ => Vec::new(),
        };
        let stopped = match provider.parse::<Provider>() {
            Ok(p) => crate::pause::is_paused(&state.app.pool, &ws, p, "*").await,
            Err(_) => false,
        };
        out.push(
            json!({"workspace": ws, "provider": provider, "account": account,
                        "status": status, "last_error": error, "updated_at": at,
                        "stopped": stopped, "objects": objects}),
        );
    }
    let connections = out;
    Ok(Json(json!({
        "consumers": all_consumers,
        "streams": {
            "events": stream_state(&state, &state.stream).await?,
            "outbound": stream_state(&state, &state.outbound).await?,
            "dead_letters": stream_state(&state, &state.app.dlq_stream).await?,
        },
        "connections": connections,
        "pushes": pushes(&state).await?,
    })))
}

/// `GET /crm/metrics` (bearer): a JSON summary of the sync — records per table and
/// provider (and how many are tombstones), events stored and applied, pushes by state,
/// conflicts kept, dead letters. `/metrics` has the Prometheus series.
pub async fn metrics(
    State(state): State<EngineState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&state.app, &headers)?;
    let mut entities = serde_json::Map::new();
    for table in [
        Table::Contacts,
        Table::Companies,
        Table::Deals,
        Table::Activities,
    ] {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
            "SELECT provider, count(*), count(*) FILTER (WHERE deleted) FROM {}
             GROUP BY provider ORDER BY provider",
            table.name()
        ))
        .fetch_all(&state.app.pool)
        .await
        .map_err(ApiError::internal)?;
        let by_provider: serde_json::Map<String, Value> = rows
            .into_iter()
            .map(|(p, n, d)| (p, json!({"records": n, "deleted": d})))
            .collect();
        entities.insert(table.name().to_owned(), Value::Object(by_provider));
    }
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT sum(events_applied)::bigint FROM projection_checkpoints")
            .fetch_one(&state.app.pool)
            .await
            .map_err(ApiError::internal)?;
    let conflicts: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_conflicts")
        .fetch_one(&state.app.pool)
        .await
        .map_err(ApiError::internal)?;
    let events = stream_state(&state, &state.stream).await?;
    let dead = stream_state(&state, &state.app.dlq_stream).await?;
    Ok(Json(json!({
        "entities": entities,
        "events": {
            "stored": events["messages"],
            "applied_by_projections": applied.unwrap_or(0),
        },
        "pushes": pushes(&state).await?,
        "conflicts": conflicts,
        "dead_letters": dead["messages"],
    })))
}

/// How often the backlog gauges are sampled.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps `/metrics`' backlog gauges current until `stop`: every durable consumer's
/// lag (`crm_consumer_lag_events`) and the dead-letter stream's depth
/// (`crm_dlq_depth`). Each process samples them, so any replica's scrape shows them.
pub async fn sample_gauges(
    js: async_nats::jetstream::Context,
    metrics: std::sync::Arc<crmsync_adapters::Metrics>,
    streams: Vec<String>,
    dlq: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut known = std::collections::BTreeSet::new();
    loop {
        let mut seen = std::collections::BTreeSet::new();
        for name in &streams {
            let Ok(stream) = js.get_stream(name).await else {
                continue;
            };
            let mut infos = stream.consumers();
            while let Some(Ok(info)) = infos.next().await {
                // Durable consumers only: feeds' and replays' come and go with
                // server-made names, and would leave a series each.
                if info.config.durable_name.is_none() {
                    continue;
                }
                let lag = info.num_pending + info.num_ack_pending as u64;
                let labels = crmsync_adapters::telemetry::LagLabels {
                    consumer: info.name.clone(),
                };
                seen.insert(info.name.clone());
                metrics
                    .consumer_lag
                    .get_or_create(&labels)
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
        // A consumer that is gone leaves no stale series.
        for gone in known.difference(&seen) {
            metrics
                .consumer_lag
                .remove(&crmsync_adapters::telemetry::LagLabels {
                    consumer: gone.clone(),
                });
        }
        known = seen;
        if let Ok(mut stream) = js.get_stream(&dlq).await {
            if let Ok(info) = stream.info().await {
                metrics
                    .dlq_depth
                    .set(i64::try_from(info.state.messages).unwrap_or(i64::MAX));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}
