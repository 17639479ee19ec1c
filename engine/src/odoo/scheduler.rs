//! The Odoo scheduler: polls each connection whose scheduler is on every
//! `interval_secs` (`CRM_POLL_INTERVAL_SECS` by default, five minutes), sweeping
//! deletes every [`SWEEP_EVERY`] polls. Several workers may run it: a poll is run by
//! the one that holds the connection's lease, a `crm_cursors` key taken by
//! compare-and-set and held for the poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crmsync_schema::Provider;

use super::{Connected, Odoo};

/// Polls between two delete sweeps.
pub const SWEEP_EVERY: u32 = 5;

fn lease_key(workspace: &str) -> String {
    format!("lease.odoo.{}", hex::encode(workspace))
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
                    // One poll reads every model: any stopped object stops it.
                    let pool = odoo.pool();
                    if crate::pause::is_paused(pool, &connection.workspace, Provider::Odoo, "?")
                        .await
                    {
                        continue;
                    }
                    let ttl = odoo.timeout * 20 + Duration::from_secs(60);
                    match crate::lease::take(
                        &odoo.cursors,
                        &lease_key(&connection.workspace),
                        &holder,
                        ttl,
                    )
                    .await
                    {
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
                        crate::lease::release(
                            &odoo.cursors,
                            &lease_key(&connection.workspace),
                            &holder,
                        )
                        .await;
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
                    crate::lease::release(
                        &odoo.cursors,
                        &lease_key(&connection.workspace),
                        &holder,
                    )
                    .await;
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
