//! Delta polling, the safety net: webhooks are a hint, polling is the truth.
//!
//! Each cycle searches records modified since the cursor minus a lookback (search
//! lags writes), paging by keyset on `hs_object_id` inside the window so that no
//! query ever pages past HubSpot's 10,000-result cap; archived records are found by
//! listing `archived=true`. Every record found is stored as a snapshot event, and
//! only then is the cursor advanced, by compare-and-set in the `crm_cursors` bucket.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::hubspot::client::{HsObject, HubSpotClient};
use crmsync_adapters::hubspot::snapshot::{
    changed_at, links_event, object_of, properties_of, snapshot_event,
};
use crmsync_ingest::publish::publish_all;
use crmsync_schema::subject::escape_token;
use crmsync_schema::{ObjectType, Provider, Subjects, WorkspaceId};
use sqlx::PgPool;

use super::{Connected, HubSpot};
use crate::pause;
use crate::sync_log::{self, Run};

/// The objects crmsync keeps in step, by API type.
pub const OBJECTS: [&str; 3] = ["contacts", "companies", "deals"];

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    /// The newest modification time seen, in ms.
    pub since_ms: i64,
    /// A scan under way, stored after each of its pages: a poll that fails (a token
    /// refused after half an hour of a first scan, a deploy) resumes it at the next
    /// cycle instead of starting again from the first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<Scan>,
    /// The newest archival seen, in ms, for the listing of archived records (kept
    /// apart as they are listed less often; absent, it is `since_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_ms: Option<i64>,
}

/// Where a scan stands: its window, the newest modification it saw and the last id
/// it stored.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Scan {
    /// Modifications from this time on (the cursor less the lookback), in ms.
    pub from_ms: i64,
    /// When the scan began: the cursor never moves past it.
    pub started_ms: i64,
    pub newest_ms: i64,
    pub last_id: u64,
}

/// What one poll of one object did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    pub records: usize,
    pub archived: usize,
    pub pages: usize,
    pub cursor: Cursor,
}

/// Where a connection's cursor for `api_type` lives: per workspace and portal, so
/// that a workspace connected again to another portal starts over (KV keys allow only
/// a few characters, so both are hex-encoded).
pub fn cursor_key(workspace: &str, portal: &str, api_type: &str) -> String {
    format!(
        "hubspot.{}.{}.{api_type}",
        hex::encode(workspace),
        hex::encode(portal)
    )
}

fn modified_ms(record: &HsObject) -> i64 {
    changed_at(record).map_or(0, |t| t.timestamp_millis())
}

async fn store(
    js: &jetstream::Context,
    subjects: &Subjects,
    portal: &WorkspaceId,
    api_type: &str,
    records: &[HsObject],
) -> anyhow::Result<()> {
    let object = object_of(api_type).context("unknown object type")?;
    let events: Vec<_> = records
        .iter()
        .filter_map(|r| snapshot_event(portal, &object, r))
        .collect();
    publish_all(js, subjects, &events)
        .await
        .context("storing polled records")?;
    Ok(())
}

/// After a backfill of `api_type` that began at `started_ms` (so read every record
/// after it): the poll cursor moves there if it is behind, and a scan it had under
/// way is dropped, so the first poll does not read the portal again. Another writer
/// winning is fine: its cursor stands.
pub async fn seed(
    cursors: &kv::Store,
    connection: &Connected,
    api_type: &str,
    started_ms: i64,
) -> anyhow::Result<()> {
    let key = cursor_key(&connection.workspace, &connection.portal, api_type);
    crate::cursor::advance_with(cursors, &key, |c: &Cursor| {
        (c.since_ms < started_ms).then_some(Cursor {
            since_ms: started_ms,
            scan: None,
            ..*c
        })
    })
    .await?;
    Ok(())
}

/// The links crmsync keeps in step: (from, to) API types.
pub const LINKS: [(&str, &str); 3] = [
    ("contacts", "companies"),
    ("deals", "contacts"),
    ("deals", "companies"),
];

/// The association sweep: association changes do not touch a record's modified date,
/// so a lost `associationChange` webhook is never seen by the delta poll. Every so
/// often the complete link sets of every record are read (list, then v4 batch read);
/// a set that differs from the projected links of its record is stored as a link-set
/// event, and the projection marks links missing from it as removed. A set the
/// projection already holds is not stored again: each sweep would otherwise add an
/// event per record to the stream, which keeps its history for ever. Returns how
/// many link sets were stored.
pub async fn sweep_links(
    client: &HubSpotClient,
    pool: &PgPool,
    js: &jetstream::Context,
    subjects: &Subjects,
    connection: &Connected,
) -> anyhow::Result<usize> {
    let at = chrono::Utc::now();
    let portal = WorkspaceId::parse(connection.portal.clone())?;
    let mut stored = 0;
    for (from, to) in LINKS {
        let from_object = object_of(from).context("unknown object type")?;
        let to_object = object_of(to).context("unknown object type")?;
        let mut after: Option<String> = None;
        loop {
            let page = client.list(from, after.as_deref(), &[], false).await?;
            let ids: Vec<String> = page.results.iter().map(|r| r.id.clone()).collect();
            let links = client.associations(from, to, &ids).await?;
            let projected =
                projected_links(pool, &portal, &from_object, to_object.as_str(), &ids).await?;
            let events: Vec<_> = links
                .iter()
                .filter(|(id, to_ids)| {
                    let swept: BTreeSet<String> = to_ids.iter().map(|t| escape_token(t)).collect();
                    projected.get(&escape_token(id)).unwrap_or(&BTreeSet::new()) != &swept
                })
                .filter_map(|(id, to_ids)| {
                    links_event(&portal, &from_object, id, to_object.as_str(), to_ids, at)
                })
                .collect();
            publish_all(js, subjects, &events)
                .await
                .context("storing link sets")?;
            stored += events.len();
            match page.after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    }
    Ok(stored)
}

/// The links to `to_type` records that the projection holds for each of `ids`, by
/// the escaped ids the link rows name.
async fn projected_links(
    pool: &PgPool,
    portal: &WorkspaceId,
    from_type: &ObjectType,
    to_type: &str,
    ids: &[String],
) -> anyhow::Result<HashMap<String, BTreeSet<String>>> {
    let ids: Vec<String> = ids.iter().map(|id| escape_token(id)).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT from_id, to_id FROM associations
         WHERE workspace_id = $1 AND provider = 'hubspot' AND from_type = $2
           AND to_type = $3 AND from_id = ANY($4) AND NOT removed",
    )
    .bind(portal.as_str())
    .bind(escape_token(from_type.as_str()))
    .bind(escape_token(to_type))
    .bind(&ids)
    .fetch_all(pool)
    .await
    .context("reading the projected links")?;
    let mut sets: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (from, to) in rows {
        sets.entry(from).or_default().insert(to);
    }
    Ok(sets)
}

/// One poll of one object of one connection: every record modified since the cursor
/// (less the lookback), in id order, then, when `archived`, the records archived since
/// their own cursor. HubSpot cannot filter archived records by time: listing them
/// reads every one kept (90 days of deletions), so the poller does it every few
/// polls only (`CRM_HUBSPOT_ARCHIVED_EVERY`), as a safety net under the deletion
/// webhooks.
///
/// The cursor moves to the newest modification seen, but never past the scan's own
/// start. The scan is in id order, so a long one (a first poll, or catching up) may
/// read a record early and a later edit of another late: an edit made to the first
/// while the scan went on is not in this poll, and a cursor at the later edit would
/// put it behind the next poll too. A scan's progress is stored after each page
/// ([`Scan`]): a poll that fails resumes after its last stored page.
#[allow(clippy::too_many_arguments)]
pub async fn poll_once(
    client: &HubSpotClient,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    api_type: &str,
    lookback: Duration,
    archived: bool,
) -> anyhow::Result<PollReport> {
    let key = cursor_key(&connection.workspace, &connection.portal, api_type);
    let mut stored = crate::cursor::load::<Cursor>(cursors, &key).await?;
    let cursor = stored.value;
    let mut scan = cursor.scan.unwrap_or_else(|| Scan {
        from_ms: (cursor.since_ms - lookback.as_millis() as i64).max(0),
        started_ms: Utc::now().timestamp_millis(),
        newest_ms: cursor.since_ms,
        last_id: 0,
    });
    let from = scan.from_ms;
    let portal = WorkspaceId::parse(connection.portal.clone())?;
    let object = object_of(api_type).context("unknown object type")?;
    let modified = if api_type == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    };
    let mut properties = properties_of(object.as_str());
    properties.push(modified);
    let mut report = PollReport {
        cursor,
        ..PollReport::default()
    };
    loop {
        let request = json!({
            "filterGroups": [{"filters": [
                {"propertyName": modified, "operator": "GTE", "value": from.to_string()},
                {"propertyName": "hs_object_id", "operator": "GT", "value": scan.last_id.to_string()},
            ]}],
            "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
            "properties": properties,
            "limit": 200,
        });
        let page = client.search(api_type, &request).await?;
        if page.results.is_empty() {
            break;
        }
        report.pages += 1;
        report.records += page.results.len();
        store(js, subjects, &portal, api_type, &page.results).await?;
        for r in &page.results {
            scan.newest_ms = scan.newest_ms.max(modified_ms(r));
            scan.last_id = scan.last_id.max(r.id.parse().unwrap_or(0));
        }
        if page.results.len() < 200 {
            break;
        }
        let next = Cursor {
            scan: Some(scan),
            ..cursor
        };
        match crate::cursor::write(cursors, &key, &stored, next).await? {
            Some(written) => stored = written,
            None => {
                tracing::info!(workspace = %connection.workspace, api_type, "another poller moved the cursor first");
                return Ok(report);
            }
        }
    }
    // A connection's first poll lists them whatever the cycle.
    let mut archived_ms = cursor.archived_ms.unwrap_or(cursor.since_ms);
    if archived || cursor.archived_ms.is_none() {
        let listed_at = Utc::now().timestamp_millis();
        let from = (archived_ms - lookback.as_millis() as i64).max(0);
        let mut newest = archived_ms;
        let mut after: Option<String> = None;
        loop {
            let page = client
                .list(api_type, after.as_deref(), &properties, true)
                .await?;
            let recent: Vec<HsObject> = page
                .results
                .into_iter()
                .filter(|r| modified_ms(r) >= from)
                .collect();
            report.archived += recent.len();
            store(js, subjects, &portal, api_type, &recent).await?;
            for r in &recent {
                newest = newest.max(modified_ms(r));
            }
            match page.after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        // In id order too: never past the listing's start.
        archived_ms = newest.min(listed_at).max(archived_ms);
    }
    let next = Cursor {
        since_ms: scan.newest_ms.min(scan.started_ms).max(cursor.since_ms),
        scan: None,
        archived_ms: Some(archived_ms),
    };
    let advanced = crate::cursor::advance(cursors, &key, &stored, &next).await?;
    if !advanced {
        tracing::info!(workspace = %connection.workspace, api_type, "another poller advanced the cursor first");
    }
    report.cursor = next;
    Ok(report)
}

/// How often the poller does what.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// Between two polls.
    pub interval: Duration,
    /// How far before its cursor a poll looks again.
    pub lookback: Duration,
    /// Polls between two link sweeps (0: never).
    pub sweep_every: u32,
    /// Polls between two listings of archived records (1: every poll).
    pub archived_every: u32,
}

/// Polls every connection and object every `interval`, lists archived records every
/// `archived_every` polls (and at a connection's first), and sweeps links every
/// `sweep_every` polls, until stopped.
pub async fn run(
    hubspot: Arc<HubSpot>,
    js: jetstream::Context,
    subjects: Subjects,
    cursors: kv::Store,
    cadence: Cadence,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Cadence {
        interval,
        lookback,
        sweep_every,
        archived_every,
    } = cadence;
    tracing::info!(?interval, "HubSpot poller started");
    let mut cycle: u32 = 0;
    loop {
        let sweep = sweep_every > 0 && cycle % sweep_every == sweep_every - 1;
        let archived = cycle % archived_every.max(1) == 0;
        cycle = cycle.wrapping_add(1);
        match hubspot.connected().await {
            Ok(connections) => {
                for connection in connections {
                    let log = |object, operation, started, records, error, detail| Run {
                        workspace: &connection.workspace,
                        provider: Provider::HubSpot,
                        object,
                        operation,
                        started,
                        records,
                        error,
                        detail,
                    };
                    let pool = hubspot.pool();
                    if pause::is_paused(pool, &connection.workspace, Provider::HubSpot, "*").await {
                        continue;
                    }
                    let started = Utc::now();
                    let client = match hubspot.client(&connection.workspace).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(workspace = %connection.workspace, error = %e, "cannot poll");
                            let run =
                                log(None, "poll", started, 0, Some(format!("{e:#}")), json!({}));
                            sync_log::record(hubspot.pool(), run).await;
                            continue;
                        }
                    };
                    let mut refused = false;
                    for api_type in OBJECTS {
                        if pause::is_paused(
                            pool,
                            &connection.workspace,
                            Provider::HubSpot,
                            api_type,
                        )
                        .await
                        {
                            continue;
                        }
                        let started = Utc::now();
                        let polled = poll_once(
                            &client,
                            &js,
                            &subjects,
                            &cursors,
                            &connection,
                            api_type,
                            lookback,
                            archived,
                        )
                        .await;
                        let run = match &polled {
                            Ok(r) => {
                                tracing::debug!(workspace = %connection.workspace, api_type, records = r.records, archived = r.archived, "polled");
                                let detail = json!({"pages": r.pages, "archived": r.archived, "cursor_ms": r.cursor.since_ms});
                                log(
                                    Some(api_type),
                                    "poll",
                                    started,
                                    (r.records + r.archived) as u64,
                                    None,
                                    detail,
                                )
                            }
                            Err(e) => {
                                tracing::warn!(workspace = %connection.workspace, api_type, error = %e, "poll failed");
                                log(
                                    Some(api_type),
                                    "poll",
                                    started,
                                    0,
                                    Some(format!("{e:#}")),
                                    json!({}),
                                )
                            }
                        };
                        sync_log::record(hubspot.pool(), run).await;
                        if let Err(e) = &polled {
                            if hubspot.observe(&connection.workspace, e.as_ref()).await {
                                // The rest would be refused too: next cycle.
                                refused = true;
                                break;
                            }
                        }
                    }
                    // The sweep reads every object's links: not while any is stopped.
                    let stopped =
                        pause::is_paused(pool, &connection.workspace, Provider::HubSpot, "?").await;
                    if sweep && !stopped && !refused {
                        let started = Utc::now();
                        let run = match sweep_links(&client, pool, &js, &subjects, &connection)
                            .await
                        {
                            Ok(n) => {
                                tracing::info!(workspace = %connection.workspace, link_sets = n, "links swept");
                                log(
                                    None,
                                    "sweep",
                                    started,
                                    n as u64,
                                    None,
                                    json!({"link_sets": n}),
                                )
                            }
                            Err(e) => {
                                tracing::warn!(workspace = %connection.workspace, error = %e, "link sweep failed");
                                hubspot.observe(&connection.workspace, e.as_ref()).await;
                                log(None, "sweep", started, 0, Some(format!("{e:#}")), json!({}))
                            }
                        };
                        sync_log::record(hubspot.pool(), run).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list connections"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    tracing::info!("HubSpot poller stopped");
    Ok(())
}
