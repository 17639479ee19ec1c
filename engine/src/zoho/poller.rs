//! Delta polling, the safety net: Zoho never retries a notification, so whatever a
//! lost callback hid is found here.
//!
//! Each cycle lists the records modified since the cursor minus a lookback
//! (`If-Modified-Since`), oldest change first, so that a record changed while the
//! list is read moves behind the reader rather than being skipped; pages follow
//! `page_token` — never `page` numbers, whose offsets shift when a record read
//! earlier changes — and where no token is given or tokens run out (Zoho's stop at
//! 100,000 records) the scan starts again from the newest modification seen. Deletions come
//! from the deleted-records API since their own cursor. Records and tombstones are
//! stored as events first; only then are the cursors advanced, by compare-and-set in
//! the `crm_cursors` bucket: the modification cursor after each page, so that a scan
//! that fails resumes near where it stopped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crmsync_adapters::zoho::client::{PageAt, ZohoClient};
use crmsync_adapters::zoho::mapping::fields_to_read;
use crmsync_adapters::zoho::snapshot::{deleted_event, snapshot_event};
use crmsync_adapters::zoho::POLLED;
use crmsync_ingest::publish::publish_all;
use crmsync_schema::{ObjectType, Provider, Subjects, WorkspaceId};

use super::{Connected, Zoho};
use crate::pause;
use crate::sync_log::{self, Run};

/// Records a page-token scan reads before it starts again from its newest
/// modification (Zoho's tokens stop at 100,000).
const TOKEN_SCAN_LIMIT: usize = 90_000;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    /// The newest `Modified_Time` seen, in ms.
    pub modified_ms: i64,
    /// The newest `deleted_time` seen, in ms.
    pub deleted_ms: i64,
}

/// What one poll of one module did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    pub records: usize,
    pub deleted: usize,
    pub pages: usize,
    pub cursor: Cursor,
}

/// Where a connection's cursor for `module` lives: per workspace and org, so that a
/// workspace connected again to another org starts over (hex-encoded: KV keys allow
/// few characters).
pub fn cursor_key(workspace: &str, org: &str, module: &str) -> String {
    format!(
        "zoho.{}.{}.{module}",
        hex::encode(workspace),
        hex::encode(org)
    )
}

/// After a backfill of `module` that read every change up to `modified_ms`: the poll
/// cursor moves there if it is behind, so the first poll does not read the module
/// again. (Deletions keep their own cursor.) Another writer winning is fine: its
/// cursor stands.
pub async fn seed(
    cursors: &kv::Store,
    connection: &Connected,
    module: &str,
    modified_ms: i64,
) -> anyhow::Result<()> {
    let key = cursor_key(&connection.workspace, &connection.org, module);
    crate::cursor::advance_with(cursors, &key, |c: &Cursor| {
        (c.modified_ms < modified_ms).then_some(Cursor { modified_ms, ..*c })
    })
    .await?;
    Ok(())
}

fn time_ms(record: &Value, field: &str) -> Option<i64> {
    record
        .get(field)
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
        .map(|t| t.timestamp_millis())
}

/// What a scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanned {
    pub pages: usize,
    pub records: usize,
    /// The newest `Modified_Time` read, in ms.
    pub newest_ms: Option<i64>,
}

/// Reads every record of `module` modified after `since` (all without it), a page at
/// a time, handing each page to `store` with the time it was asked for (a state read
/// later is at least as new).
pub async fn scan<F, Fut>(
    client: &ZohoClient,
    module: &str,
    since: Option<DateTime<Utc>>,
    mut store: F,
) -> anyhow::Result<Scanned>
where
    F: FnMut(Vec<Value>, DateTime<Utc>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let fields = fields_to_read(module);
    let mut since = since;
    let mut token: Option<String> = None;
    let mut read_in_scan = 0usize;
    let mut scanned = Scanned::default();
    loop {
        let at = match &token {
            Some(t) => PageAt::Token(t),
            None => PageAt::Number(1),
        };
        let asked_at = Utc::now();
        let answer = client.list(module, fields, since, at).await?;
        scanned.pages += 1;
        scanned.records += answer.data.len();
        read_in_scan += answer.data.len();
        let newest = answer
            .data
            .iter()
            .filter_map(|r| time_ms(r, "Modified_Time"))
            .max();
        scanned.newest_ms = scanned.newest_ms.max(newest);
        store(answer.data, asked_at).await?;
        if !answer.more {
            return Ok(scanned);
        }
        match answer.next_page_token {
            Some(t) if read_in_scan < TOKEN_SCAN_LIMIT => token = Some(t),
            _ => {
                // No token, or past what tokens reach: start again from the newest
                // change seen (a second early, as Zoho's times are to the second).
                let restart = newest
                    .and_then(|ms| DateTime::from_timestamp_millis(ms - 1000))
                    .context("a page without modification times")?;
                if since.is_some_and(|s| restart <= s) {
                    anyhow::bail!(
                        "more than {read_in_scan} {module} records share one modification second; the scan cannot advance"
                    );
                }
                since = Some(restart);
                token = None;
                read_in_scan = 0;
            }
        }
    }
}

/// Stores records read at `read_at` as snapshot events; returns the newest
/// modification.
pub async fn store_records(
    js: &jetstream::Context,
    subjects: &Subjects,
    org: &WorkspaceId,
    object: &ObjectType,
    records: &[Value],
    read_at: DateTime<Utc>,
) -> anyhow::Result<Option<i64>> {
    let events: Vec<_> = records
        .iter()
        .filter_map(|r| snapshot_event(org, object, r, read_at))
        .collect();
    publish_all(js, subjects, &events)
        .await
        .context("storing polled records")?;
    Ok(records
        .iter()
        .filter_map(|r| time_ms(r, "Modified_Time"))
        .max())
}

fn since(ms: i64, lookback: Duration) -> Option<DateTime<Utc>> {
    (ms > 0)
        .then(|| DateTime::from_timestamp_millis(ms - lookback.as_millis() as i64))
        .flatten()
}

/// One poll of one module of one connection.
#[allow(clippy::too_many_arguments)]
pub async fn poll_once(
    client: &ZohoClient,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    module: &str,
    object: &str,
    lookback: Duration,
) -> anyhow::Result<PollReport> {
    let key = cursor_key(&connection.workspace, &connection.org, module);
    let stored = crate::cursor::load::<Cursor>(cursors, &key).await?;
    let cursor = stored.value;
    // Moved on after each stored page (pages come oldest change first): a scan that
    // fails resumes from there at the next cycle, not from where this one began.
    let progress = tokio::sync::Mutex::new(stored);
    let org = WorkspaceId::parse(connection.org.clone())?;
    let object = ObjectType::parse(object)?;
    let mut report = PollReport {
        cursor,
        ..PollReport::default()
    };
    let mut next = cursor;
    let scanned = scan(
        client,
        module,
        since(cursor.modified_ms, lookback),
        |page, at| {
            let (org, object, key, progress) = (&org, &object, &key, &progress);
            async move {
                let newest = store_records(js, subjects, org, object, &page, at).await?;
                let mut stored = progress.lock().await;
                if let Some(ms) = newest.filter(|ms| *ms > stored.value.modified_ms) {
                    let next = Cursor {
                        modified_ms: ms,
                        ..stored.value
                    };
                    if let Some(written) = crate::cursor::write(cursors, key, &stored, next).await?
                    {
                        *stored = written;
                    }
                }
                Ok(())
            }
        },
    )
    .await?;
    let stored = progress.into_inner();
    report.pages = scanned.pages;
    report.records = scanned.records;
    next.modified_ms = next.modified_ms.max(scanned.newest_ms.unwrap_or(0));
    let deleted_since = since(cursor.deleted_ms, lookback);
    let mut page = 1;
    loop {
        let answer = client.deleted(module, deleted_since, page).await?;
        let events: Vec<_> = answer
            .data
            .iter()
            .filter_map(|row| deleted_event(&org, &object, row))
            .collect();
        publish_all(js, subjects, &events)
            .await
            .context("storing deletions")?;
        report.deleted += events.len();
        for row in &answer.data {
            if let Some(ms) = time_ms(row, "deleted_time") {
                next.deleted_ms = next.deleted_ms.max(ms);
            }
        }
        if !answer.more {
            break;
        }
        page += 1;
    }
    let advanced = crate::cursor::advance(cursors, &key, &stored, &next).await?;
    if !advanced {
        tracing::info!(workspace = %connection.workspace, module, "another poller advanced the cursor first");
    }
    report.cursor = next;
    Ok(report)
}

/// Polls every connection and module every `interval`, until stopped.
pub async fn run(
    zoho: Arc<Zoho>,
    js: jetstream::Context,
    subjects: Subjects,
    cursors: kv::Store,
    interval: Duration,
    lookback: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(?interval, "Zoho poller started");
    loop {
        match zoho.connected().await {
            Ok(connections) => {
                for connection in connections {
                    poll_connection(&zoho, &js, &subjects, &cursors, &connection, lookback).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list Zoho connections"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    tracing::info!("Zoho poller stopped");
    Ok(())
}

async fn poll_connection(
    zoho: &Zoho,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    lookback: Duration,
) {
    let log = |object, started, records, error, detail| Run {
        workspace: &connection.workspace,
        provider: Provider::Zoho,
        object,
        operation: "poll",
        started,
        records,
        error,
        detail,
    };
    if pause::is_paused(zoho.pool(), &connection.workspace, Provider::Zoho, "*").await {
        return;
    }
    let started = Utc::now();
    let client = match zoho.client(&connection.workspace).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(workspace = %connection.workspace, error = %e, "cannot poll Zoho");
            let run = log(None, started, 0, Some(format!("{e:#}")), json!({}));
            sync_log::record(zoho.pool(), run).await;
            return;
        }
    };
    for (module, object) in POLLED {
        if pause::is_paused(zoho.pool(), &connection.workspace, Provider::Zoho, object).await {
            continue;
        }
        let started = Utc::now();
        let polled = poll_once(
            &client, js, subjects, cursors, connection, module, object, lookback,
        )
        .await;
        let run = match &polled {
            Ok(r) => {
                let detail = json!({"module": module, "pages": r.pages, "deleted": r.deleted});
                log(
                    Some(object),
                    started,
                    (r.records + r.deleted) as u64,
                    None,
                    detail,
                )
            }
            Err(e) => log(
                Some(object),
                started,
                0,
                Some(format!("{e:#}")),
                json!({"module": module}),
            ),
        };
        sync_log::record(zoho.pool(), run).await;
        match polled {
            Ok(r) => {
                tracing::debug!(workspace = %connection.workspace, module, records = r.records, deleted = r.deleted, "polled")
            }
            Err(e) => {
                tracing::warn!(workspace = %connection.workspace, module, error = %e, "Zoho poll failed");
                if zoho.observe(&connection.workspace, e.as_ref()).await {
                    // The other modules would be refused too: next cycle.
                    break;
                }
            }
        }
    }
}
