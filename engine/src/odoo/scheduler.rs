//! The Odoo scheduler: polls each connection whose scheduler is on every
//! `interval_secs` (`CRM_POLL_INTERVAL_SECS` by default, five minutes), sweeping
//! deletes every [`SWEEP_EVERY`] polls. Several workers may run it: a poll is run by
//! the one that holds the connection's lease, a `crm_cursors` key taken by
//! compare-and-set and held for the poll.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Connected, Odoo};

/// Polls between two delete sweeps.
pub const SWEEP_EVERY: u32 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: i64,
}

fn lease_key(workspace: &str) -> String {
    format!("lease.odoo.{}", hex::encode(workspace))
}

/// Takes (or renews) the lease on `workspace` for `ttl`; false when another holds it.
pub async fn take_lease(
    cursors: &kv::Store,
    workspace: &str,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<bool> {
    let key = lease_key(workspace);
    let now = Utc::now().timestamp_millis();
    let lease = Lease {
        holder: holder.to_owned(),
        until_ms: now + ttl.as_millis() as i64,
    };
    let value: bytes::Bytes = serde_json::to_vec(&lease)?.into();
    Ok(match cursors.entry(&key).await? {
        None => cursors.create(&key, value).await.is_ok(),
        Some(entry) => {
            let current: Option<Lease> = serde_json::from_slice(&entry.value).ok();
            let free = current.is_none_or(|l| l.holder == holder || l.until_ms < now);
            free && cursors.update(&key, value, entry.revision).await.is_ok()
        }
    })
}

/// Gives the lease back, if still held.
pub async fn release_lease(cursors: &kv::Store, workspace: &str, holder: &str) {
    let key = lease_key(workspace);
    if let Ok(Some(entry)) = cursors.entry(&key).await {
        let mine = serde_json::from_slice::<Lease>(&entry.value).is_ok_and(|l| l.holder == holder);
        if mine {
            let gone = Lease {
                holder: String::new(),
                until_ms: 0,
            };
            let value = serde_json::to_vec(&gone).unwrap_or_default().into();
            let _ = cursors.update(&key, value, entry.revision).await;
        }
    }
}

fn time_of(settings: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    settings
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Whether `connection` is due a poll at `now`, and whether that poll sweeps.
pub fn due(connection: &Connected, default_interval: Duration, now: DateTime<Utc>) -> Option<bool> {
    let scheduler = connection.settings.get("scheduler")?;
    if scheduler.get("enabled").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let interval = scheduler
        .get("interval_secs")
        .and_then(Value::as_u64)
        .map_or(default_interval, Duration::from_secs);
    let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::minutes(5));
    let last = time_of(&connection.settings, "/last_poll/at");
    if last.is_some_and(|l| now - l < interval) {
        return None;
    }
    let last_sweep = time_of(&connection.settings, "/last_sweep");
    Some(last_sweep.is_none_or(|s| now - s >= interval * SWEEP_EVERY as i32))
}

/// Runs due polls until stopped.
pub async fn run(
    odoo: Arc<Odoo>,
    default_interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let holder = uuid::Uuid::new_v4().simple().to_string();
    tracing::info!("Odoo scheduler started");
    loop {
        match odoo.connected().await {
            Ok(connections) => {
                for connection in connections {
                    if due(&connection, default_interval, Utc::now()).is_none() {
                        continue;
                    }
                    let ttl = odoo.timeout * 20 + Duration::from_secs(60);
                    match take_lease(&odoo.cursors, &connection.workspace, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot take the Odoo scheduler lease");
                            continue;
                        }
                    }
                    // Another worker may have polled while this one read the list.
                    let fresh = odoo.connection(&connection.workspace).await;
                    let Some(sweep) = fresh
                        .ok()
                        .and_then(|c| due(&c, default_interval, Utc::now()))
                    else {
                        release_lease(&odoo.cursors, &connection.workspace, &holder).await;
                        continue;
                    };
                    match odoo.poll(&connection.workspace, sweep).await {
                        Ok(r) => {
                            tracing::debug!(workspace = %connection.workspace, records = r.records, deleted = r.deleted, "Odoo polled");
                            if sweep {
                                let _ = sqlx::query(
                                    "UPDATE crm_connections SET settings = settings || jsonb_build_object('last_sweep', $2::text)
                                     WHERE workspace_id = $1 AND provider = 'odoo'",
                                )
                                .bind(&connection.workspace)
                                .bind(Utc::now().to_rfc3339())
                                .execute(odoo.pool())
                                .await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(workspace = %connection.workspace, error = %format!("{e:#}"), "Odoo poll failed")
                        }
                    }
                    release_lease(&odoo.cursors, &connection.workspace, &holder).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list Odoo connections"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!("Odoo scheduler stopped");
    Ok(())
}
