//! `GET /crm/feed?workspace=W[&after=SEQ]`: a live feed of a workspace's projection
//! changes, as server-sent events.
//!
//! Each CRM change to a record of the workspace becomes one `change` event once the
//! projection has settled it (its projector's ack floor reached it: committed by
//! whichever worker had it): its stream sequence as the SSE `id`, the record's
//! provider, object and id, and the projected row as it now stands. The feed reads
//! `CRM_EVENTS` itself, so a client that reconnects with `Last-Event-ID` (or
//! `?after=`) resumes right after the last change it saw and misses none; without
//! either it starts with the next change. `workspace` is the app's (its connected
//! accounts are followed) or a CRM account as in the rows' `workspace_id`. Needs the
//! bearer token. A comment is sent every 15 s to keep proxies from closing the
//! connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy, PullConsumer};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crmsync_ingest::auth::require_bearer;
use crmsync_ingest::ApiError;
use crmsync_projectors::Table;
use crmsync_schema::{Provider, WorkspaceId};

use crate::history::HistoryState;
use crate::topology::Topology;

/// How long a change waits for its projection before it is sent anyway (marked
/// `"projected": false`): a change that was dead-lettered must not stall the feed.
const PROJECTION_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    workspace: Option<String>,
    /// Resume after this stream sequence (as `Last-Event-ID`).
    after: Option<u64>,
}

/// The accounts a workspace name stands for: its connections' accounts, or itself.
async fn accounts(
    state: &HistoryState,
    workspace: &str,
) -> Result<Vec<(Provider, WorkspaceId)>, ApiError> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT provider, account_id FROM crm_connections WHERE workspace_id = $1")
            .bind(workspace)
            .fetch_all(&state.app.pool)
            .await
            .map_err(ApiError::internal)?;
    let connected = !rows.is_empty();
    let mut out: Vec<(Provider, WorkspaceId)> = rows
        .into_iter()
        .filter_map(|(p, account)| Some((p.parse().ok()?, WorkspaceId::parse(account?).ok()?)))
        .collect();
    // Not an app workspace with connections: a CRM account itself.
    if !connected {
        let ws = WorkspaceId::parse(workspace)
            .map_err(|e| ApiError::BadRequest(format!("workspace: {e}")))?;
        out = Provider::ALL.iter().map(|p| (*p, ws.clone())).collect();
    }
    Ok(out)
}

/// `GET /crm/feed?workspace=W[&after=SEQ]`.
pub async fn get(
    State(state): State<HistoryState>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    require_bearer(&state.app, &headers)?;
    let workspace = crmsync_ingest::oauth::workspace(q.workspace.as_deref())?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be a stream sequence".into())
                })?,
        ),
        None => None,
    };
    let after = last_event_id.or(q.after);
    let accounts = accounts(&state, &workspace).await?;
    if accounts.is_empty() {
        return Err(ApiError::NotFound(format!(
            "workspace {workspace}'s connections name no CRM account yet"
        )));
    }
    let filters: Vec<String> = accounts
        .iter()
        .map(|(p, ws)| state.app.subjects.raw_workspace_filter(*p, ws))
        .collect();
    let stream = state
        .app
        .js
        .get_stream(&state.stream)
        .await
        .map_err(ApiError::internal)?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: match after {
                Some(seq) => DeliverPolicy::ByStartSequence {
                    start_sequence: seq.checked_add(1).ok_or_else(|| {
                        ApiError::BadRequest("the resume point is past any sequence".into())
                    })?,
                },
                None => DeliverPolicy::New,
            },
            ..Default::default()
        })
        .await
        .map_err(ApiError::internal)?;
    let messages = consumer.messages().await.map_err(ApiError::internal)?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(state, messages, tx));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Waits until the projector `consumer` has settled stream sequence `seq`: its ack
/// floor reached it, so it and everything before it was committed (or dead-lettered)
/// by whichever worker had it. `Some(false)` when [`PROJECTION_WAIT`] passes first,
/// `None` when the client went away or the engine stops. The consumers' handles are
/// kept in `handles` for the feed's next changes.
async fn settled(
    state: &HistoryState,
    handles: &mut HashMap<String, PullConsumer>,
    consumer: &str,
    seq: u64,
    tx: &mpsc::Sender<Event>,
) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + PROJECTION_WAIT;
    loop {
        if !handles.contains_key(consumer) {
            let found = state
                .app
                .js
                .get_consumer_from_stream(consumer, &state.stream)
                .await;
            if let Ok(c) = found {
                handles.insert(consumer.to_owned(), c);
            }
        }
        if let Some(c) = handles.get_mut(consumer) {
            if let Ok(info) = c.info().await {
                if info.ack_floor.stream_sequence >= seq {
                    return Some(true);
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(false);
        }
        tokio::select! {
            () = tx.closed() => return None,
            () = state.stop.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_millis(25)) => {}
        }
    }
}

/// Sends each change once projected, until the client goes away.
async fn follow(state: HistoryState, mut messages: pull::Ordered, tx: mpsc::Sender<Event>) {
    let mut handles = HashMap::new();
    loop {
        let message = tokio::select! {
            () = tx.closed() => return,
            // Stopping: the stream ends, so the connection closes and the client
            // reconnects (with Last-Event-ID) to another replica.
            () = state.stop.cancelled() => return,
            message = messages.next() => message,
        };
        let message =
            match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "feed: reading the events stream");
                    let _ = tx
                        .send(Event::default().event("error").data(
                            "the events stream was interrupted; reconnect with Last-Event-ID",
                        ))
                        .await;
                    return;
                }
                None => return,
            };
        let Ok(info) = message.info() else { continue };
        let seq = info.stream_sequence;
        let Ok(subject) = state.app.subjects.parse_raw(&message.subject) else {
            continue;
        };
        let Some(table) = Table::for_object(&subject.object) else {
            continue;
        };
        let consumer = Topology::projector_name(subject.provider);
        let Some(projected) = settled(&state, &mut handles, &consumer, seq, &tx).await else {
            return;
        };
        let row: Option<Value> =
            match sqlx::query_scalar(&format!(
                "SELECT to_jsonb(t) - 'field_versions' FROM {} t
             WHERE workspace_id = $1 AND provider = $2 AND remote_id = $3",
                table.name()
            ))
            .bind(subject.workspace.as_str())
            .bind(subject.provider.as_str())
            .bind(subject.id.as_str())
            .fetch_optional(&state.app.pool)
            .await
            {
                Ok(row) => row,
                Err(e) => {
                    tracing::warn!(error = %e, "feed: reading a projected row");
                    let _ =
                        tx.send(Event::default().event("error").data(
                            "the projection could not be read; reconnect with Last-Event-ID",
                        ))
                        .await;
                    return;
                }
            };
        let data = json!({
            "seq": seq,
            "workspace": subject.workspace.as_str(),
            "provider": subject.provider.as_str(),
            "object": subject.object.as_str(),
            "id": subject.id.as_str(),
            "projected": projected,
            "row": row,
        });
        let event = Event::default()
            .id(seq.to_string())
            .event("change")
            .data(data.to_string());
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
