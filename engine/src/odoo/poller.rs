//! Polling Odoo on `write_date` without losing anything to its traps (PROVIDERS.md):
//!
//! - `write_date` is the writing transaction's start, shown to the second but stored
//!   to the microsecond: pages are keyed on `(write_date, id)` by second — rows of
//!   the seconds a page completes are taken from it, and the last, possibly split,
//!   second is read whole by id before the scan moves past it — so no page boundary
//!   inside a crowded second loses a row;
//! - long transactions commit late with early stamps, and a strict `>` misses them:
//!   each poll starts again `CRM_POLL_LOOKBACK_SECS` before its cursor (the overlap
//!   window), and rows read again dedupe in JetStream by `(id, write_date, content)`
//!   — so do the no-op writes that bump `write_date`;
//! - deleted records vanish: every few polls, the ids and write dates of partners (by
//!   `is_company`) and leads are compared with the projection's: those gone become
//!   tombstones (as does a partner's row in the table it left when `is_company`
//!   changed), and those live but never projected, or written later than the state
//!   projected (a transaction that committed later than the overlap window), are
//!   read again. Done activities vanish too; activities are not projected yet,
//!   so their ids are not swept.
//!
//! Cursors advance by compare-and-set in `crm_cursors`, only after the events are
//! stored.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crmsync_adapters::odoo::client::OdooClient;
use crmsync_adapters::odoo::mapping::{deleted_event, snapshot_event, write_date};
use crmsync_adapters::odoo::{fields_of, MODELS};
use crmsync_ingest::publish::publish_all;
use crmsync_schema::{ObjectType, Provider, WorkspaceId};

use super::{Connected, Odoo, PROVIDER};
use crate::sync_log::{self, Run};

/// Records a page holds.
const PAGE: usize = 500;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    /// The newest `write_date` seen, in ms (to the second, as Odoo shows it).
    pub write_ms: i64,
}

/// What one poll of a connection did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PollReport {
    pub records: usize,
    pub pages: usize,
    pub deleted: usize,
    /// The newest `write_date` seen per model.
    pub cursors: std::collections::BTreeMap<String, Option<DateTime<Utc>>>,
    pub swept: bool,
}

/// Where a connection's cursor for `model` lives (per workspace and account).
pub fn cursor_key(workspace: &str, account: &str, model: &str) -> String {
    format!(
        "odoo.{}.{}.{}",
        hex::encode(workspace),
        hex::encode(account),
        model.replace('.', "_")
    )
}

fn odoo_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn second_of(record: &Value) -> Option<DateTime<Utc>> {
    write_date(record)
}

impl Odoo {
    async fn store(
        &self,
        account: &WorkspaceId,
        model: &str,
        rows: &[Value],
        read_at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let events: Vec<_> = rows
            .iter()
            .filter_map(|r| snapshot_event(account, model, r, read_at))
            .collect();
        publish_all(&self.js, &self.subjects, &events)
            .await
            .context("storing polled records")?;
        Ok(())
    }

    /// Reads every record of `model` written since `from` (all without it); returns
    /// (records, pages, newest write date).
    async fn scan(
        &self,
        client: &OdooClient,
        account: &WorkspaceId,
        model: &str,
        from: Option<DateTime<Utc>>,
    ) -> anyhow::Result<(usize, usize, Option<DateTime<Utc>>)> {
        let fields = fields_of(model);
        let (mut records, mut pages, mut newest) = (0usize, 0usize, None);
        let mut cur = from;
        loop {
            let domain = match cur {
                Some(c) => json!([["write_date", ">=", odoo_time(c)]]),
                None => json!([]),
            };
            let read_at = Utc::now();
            let page = client
                .search_read(model, domain, fields, "write_date asc, id asc", PAGE)
                .await?;
            pages += 1;
            newest = newest.max(page.iter().filter_map(second_of).max());
            if page.len() < PAGE {
                records += page.len();
                self.store(account, model, &page, read_at).await?;
                return Ok((records, pages, newest));
            }
            let last = page
                .last()
                .and_then(second_of)
                .context("a record without write_date")?;
            let complete: Vec<Value> = page
                .into_iter()
                .filter(|r| second_of(r).is_some_and(|s| s < last))
                .collect();
            records += complete.len();
            self.store(account, model, &complete, read_at).await?;
            // The last second may go on past the page: read it whole, by id.
            let mut after_id = 0i64;
            loop {
                let domain = json!([
                    ["write_date", ">=", odoo_time(last)],
                    [
                        "write_date",
                        "<",
                        odoo_time(last + chrono::Duration::seconds(1))
                    ],
                    ["id", ">", after_id],
                ]);
                let read_at = Utc::now();
                let rows = client
                    .search_read(model, domain, fields, "id asc", PAGE)
                    .await?;
                pages += 1;
                records += rows.len();
                self.store(account, model, &rows, read_at).await?;
                match rows
                    .last()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_i64)
                {
                    Some(id) if rows.len() == PAGE => after_id = id,
                    _ => break,
                }
            }
            cur = Some(last + chrono::Duration::seconds(1));
        }
    }

    /// One poll of one model: from the cursor minus the overlap window.
    pub async fn poll_model(
        &self,
        client: &OdooClient,
        connection: &Connected,
        model: &str,
    ) -> anyhow::Result<(usize, usize, Option<DateTime<Utc>>)> {
        let key = cursor_key(&connection.workspace, &connection.account, model);
        let stored = crate::cursor::load::<Cursor>(&self.cursors, &key).await?;
        let cursor = stored.value;
        let from = (cursor.write_ms > 0)
            .then(|| {
                DateTime::from_timestamp_millis(cursor.write_ms - self.lookback.as_millis() as i64)
            })
            .flatten();
        let account = WorkspaceId::parse(connection.account.clone())?;
        let (records, pages, newest) = self.scan(client, &account, model, from).await?;
        let next = Cursor {
            write_ms: cursor
                .write_ms
                .max(newest.map_or(0, |t| t.timestamp_millis())),
        };
        if !crate::cursor::advance(&self.cursors, &key, &stored, &next).await? {
            tracing::info!(workspace = %connection.workspace, model, "another poller advanced the cursor first");
        }
        Ok((
            records,
            pages,
            DateTime::from_timestamp_millis(next.write_ms).filter(|_| next.write_ms > 0),
        ))
    }

    /// Reads the records of `model` with these ids and stores them.
    async fn read_ids(
        &self,
        client: &OdooClient,
        account: &WorkspaceId,
        model: &str,
        ids: &[i64],
    ) -> anyhow::Result<()> {
        for chunk in ids.chunks(PAGE) {
            let read_at = Utc::now();
            let domain = json!([["id", "in", chunk]]);
            let rows = client
                .search_read(model, domain, fields_of(model), "id asc", PAGE)
                .await?;
            self.store(account, model, &rows, read_at).await?;
        }
        Ok(())
    }

    /// Every record of `model` matching `domain`, archived ones included, with its
    /// write date; read by id, a page at a time.
    async fn write_dates(
        &self,
        client: &OdooClient,
        model: &str,
        domain: &Value,
    ) -> anyhow::Result<BTreeMap<String, Option<DateTime<Utc>>>> {
        const SWEEP_PAGE: usize = 2_000;
        let mut found = BTreeMap::new();
        let mut after = 0i64;
        loop {
            let mut page_domain = domain.as_array().cloned().unwrap_or_default();
            page_domain.push(json!(["id", ">", after]));
            let page = client
                .search_read(
                    model,
                    Value::Array(page_domain),
                    &["id", "write_date"],
                    "id asc",
                    SWEEP_PAGE,
                )
                .await?;
            for row in &page {
                if let Some(id) = row.get("id").and_then(Value::as_i64) {
                    found.insert(id.to_string(), write_date(row));
                    after = after.max(id);
                }
            }
            if page.len() < SWEEP_PAGE {
                return Ok(found);
            }
        }
    }

    /// Compares each projected table with Odoo: stores a tombstone for every record
    /// gone (or moved to the other partner table), and reads again every live record
    /// never projected or written after the state projected. (A transaction that
    /// commits after the poll's overlap window has passed its early stamp is found
    /// here: its write date is later than the projection's, though before the
    /// cursor.) A record written since its model's `scanned_from` was read by the poll
    /// just made (or is read by the next one), so it is not read again here. Returns
    /// how many tombstones.
    pub async fn sweep_deletes(
        &self,
        client: &OdooClient,
        connection: &Connected,
        scanned_from: &BTreeMap<String, DateTime<Utc>>,
    ) -> anyhow::Result<usize> {
        let account = WorkspaceId::parse(connection.account.clone())?;
        let mut gone = 0;
        let mut gone_partners: Vec<String> = Vec::new();
        for (model, domain, table, object) in [
            (
                "res.partner",
                json!([["is_company", "=", false]]),
                "contacts",
                "contact",
            ),
            (
                "res.partner",
                json!([["is_company", "=", true]]),
                "companies",
                "company",
            ),
            ("crm.lead", json!([]), "deals", "deal"),
        ] {
            // Projected first: what is created after this read is not swept wrongly.
            let projected: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(&format!(
                "SELECT remote_id, source_updated_at FROM {table}
                 WHERE workspace_id = $1 AND provider = 'odoo' AND NOT deleted"
            ))
            .bind(account.as_str())
            .fetch_all(self.pool())
            .await?;
            let live = self.write_dates(client, model, &domain).await?;
            if live.is_empty() && projected.len() > 1 {
                tracing::warn!(workspace = %connection.workspace, table, "Odoo answered no ids at all; not sweeping");
                continue;
            }
            let now = Utc::now();
            let object = ObjectType::parse(object)?;
            let events: Vec<_> = projected
                .iter()
                .filter(|(id, _)| !live.contains_key(id))
                .filter_map(|(id, newest)| {
                    // Never before the newest state projected: clocks differ.
                    let at = newest.map_or(now, |n| now.max(n + chrono::Duration::seconds(1)));
                    deleted_event(&account, &object, id, at)
                })
                .collect();
            publish_all(&self.js, &self.subjects, &events)
                .await
                .context("storing tombstones")?;
            gone += events.len();
            if model == "res.partner" {
                gone_partners.extend(events.iter().map(|e| e.id.as_str().to_owned()));
            }
            let known: BTreeMap<&str, Option<DateTime<Utc>>> = projected
                .iter()
                .map(|(id, at)| (id.as_str(), *at))
                .collect();
            let behind: Vec<i64> = live
                .iter()
                .filter(|(id, written)| {
                    let behind = match known.get(id.as_str()) {
                        None => true,
                        Some(projected) => written.is_some_and(|w| projected.is_none_or(|p| w > p)),
                    };
                    let polled = written
                        .is_some_and(|w| scanned_from.get(model).is_some_and(|from| w >= *from));
                    behind && !polled
                })
                .filter_map(|(id, _)| id.parse().ok())
                .collect();
            tracing::debug!(workspace = %connection.workspace, table, gone = events.len(), read_again = behind.len(), "swept");
            self.read_ids(client, &account, model, &behind).await?;
        }
        // Deleting a partner empties the many2one fields pointing at it without
        // touching those records' write_date (ON DELETE SET NULL): read them again.
        if !gone_partners.is_empty() {
            for (model, table, field) in [
                ("crm.lead", "deals", "contact_id"),
                ("res.partner", "contacts", "company_id"),
            ] {
                let ids: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT remote_id FROM {table}
                     WHERE workspace_id = $1 AND provider = 'odoo' AND NOT deleted
                       AND fields ->> '{field}' = ANY($2)"
                ))
                .bind(account.as_str())
                .bind(&gone_partners)
                .fetch_all(self.pool())
                .await?;
                let ids: Vec<i64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
                self.read_ids(client, &account, model, &ids).await?;
            }
        }
        Ok(gone)
    }

    /// Polls every model of `workspace`'s connection (and sweeps deletes when asked),
    /// then records how it went in the connection's settings (`last_poll`).
    pub async fn poll(&self, workspace: &str, sweep: bool) -> anyhow::Result<PollReport> {
        let connection = self.connection(workspace).await?;
        let started = Utc::now();
        let result = self.poll_connection(&connection, sweep).await;
        let status = match &result {
            Ok(r) => json!({"at": started, "ok": true, "report": r, "error": null}),
            Err(e) => json!({"at": started, "ok": false, "error": format!("{e:#}")}),
        };
        let run = Run {
            workspace,
            provider: Provider::Odoo,
            object: None,
            operation: "poll",
            started,
            records: result
                .as_ref()
                .map_or(0, |r| (r.records + r.deleted) as u64),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            detail: result.as_ref().map_or(json!({}), |r| json!(r)),
        };
        sync_log::record(self.pool(), run).await;
        let mut patch = json!({ "last_poll": status });
        if result.is_ok() {
            patch["last_success"] = json!(started);
        }
        sqlx::query(
            "UPDATE crm_connections SET settings = settings || $3, updated_at = now()
             WHERE workspace_id = $1 AND provider = $2",
        )
        .bind(workspace)
        .bind(PROVIDER)
        .bind(&patch)
        .execute(self.pool())
        .await?;
        result
    }

    async fn poll_connection(
        &self,
        connection: &Connected,
        sweep: bool,
    ) -> anyhow::Result<PollReport> {
        let client = self.client(connection).await?;
        let mut report = PollReport::default();
        for model in MODELS {
            let (records, pages, newest) = self.poll_model(&client, connection, model).await?;
            report.records += records;
            report.pages += pages;
            report.cursors.insert(model.to_owned(), newest);
        }
        if sweep {
            // What the next poll reads again anyway: from each cursor less the overlap.
            let scanned_from = report
                .cursors
                .iter()
                .filter_map(|(model, cursor)| Some((model.clone(), (*cursor)? - self.lookback)))
                .collect();
            report.deleted = self
                .sweep_deletes(&client, connection, &scanned_from)
                .await?;
            report.swept = true;
        }
        Ok(report)
    }
}
