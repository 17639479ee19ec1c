//! `GET /crm/health[?provider=P][&workspace=W]`: whether each connection works now.
//!
//! For every connection of the provider (or of all): its credentials are good (an
//! access token is at hand, refreshed if due), the API answers a cheap read, what is
//! left of the rate limits (HubSpot says so in its headers; the others are shown
//! with crmsync's own rate), and when its records were last projected. 200 when all
//! are healthy, 503 with the reasons when one is not.
//!
//! No bearer token is needed, as for a load balancer's probe; without a valid one
//! the answer is the verdict and counts alone, never a workspace or an account. A
//! probe's result is kept for [`probe_ttl`], so polling this route cannot spend a
//! customer's CRM quota.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crmsync_ingest::{ApiError, AppState};
use crmsync_schema::Provider;

use crate::hubspot::HubSpot;
use crate::odoo::Odoo;
use crate::zoho::Zoho;

/// How long a connection's probe answers for it. A Zoho probe costs a credit of the
/// org's day (5,000 on the free edition, shared with every integration): every
/// 10 minutes is 144 a day for each process that answers this route. HubSpot's
/// allowance is per 10 s and hundreds of thousands a day; Odoo counts nothing.
pub fn probe_ttl(provider: Provider) -> Duration {
    match provider {
        Provider::Zoho => Duration::from_secs(600),
        Provider::HubSpot | Provider::Odoo => Duration::from_secs(30),
    }
}
/// How long a failed probe answers for its connection, whatever the provider.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// A probe that takes longer has failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection's last probe and when it was made.
type Slot = Arc<Mutex<Option<(Instant, Probe)>>>;

/// What the probes need: a connector per provider this engine can reach.
pub struct Probes {
    pub app: Arc<AppState>,
    pub hubspot: Option<Arc<HubSpot>>,
    pub zoho: Option<Arc<Zoho>>,
    pub odoo: Option<Arc<Odoo>>,
    /// `CRM_SYNC_RPS`, the pace crmsync keeps per connection.
    pub rps: f64,
    /// Each connection's last probe, behind its own lock: concurrent callers wait
    /// for one probe of it, and other connections are not held up.
    cache: std::sync::Mutex<HashMap<(String, Provider), Slot>>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

impl Probes {
    pub fn new(
        app: Arc<AppState>,
        hubspot: Option<Arc<HubSpot>>,
        zoho: Option<Arc<Zoho>>,
        odoo: Option<Arc<Odoo>>,
        rps: f64,
    ) -> Self {
        Self {
            app,
            hubspot,
            zoho,
            odoo,
            rps,
            cache: std::sync::Mutex::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct HealthQuery {
    provider: Option<String>,
    workspace: Option<String>,
}

/// One connection's probe.
#[derive(Debug, Clone)]
struct Probe {
    /// The workspace's sync is stopped: not probed (no CRM call), not unhealthy.
    stopped: bool,
    credentials: Result<(), String>,
    api: Result<u64, String>,
    budget: Option<Value>,
    checked_at: DateTime<Utc>,
}

type ConnectionRow = (String, String, Option<String>, String, Option<String>);

/// `GET /crm/health[?provider=P][&workspace=W]`.
pub async fn get(
    State(probes): State<Arc<Probes>>,
    headers: HeaderMap,
    Query(q): Query<HealthQuery>,
) -> Result<Response, ApiError> {
    let provider: Option<Provider> = q
        .provider
        .as_deref()
        .map(|p| {
            p.parse()
                .map_err(|e| ApiError::BadRequest(format!("provider: {e}")))
        })
        .transpose()?;
    let detailed = crmsync_ingest::auth::require_bearer(&probes.app, &headers).is_ok();
    if q.workspace.is_some() && !detailed {
        return Err(ApiError::Unauthorized(
            "a workspace's health needs the bearer token".into(),
        ));
    }
    let rows: Vec<ConnectionRow> = sqlx::query_as(
        "SELECT workspace_id, provider, account_id, status, last_error FROM crm_connections
         WHERE ($1::text IS NULL OR provider = $1) AND ($2::text IS NULL OR workspace_id = $2)
         ORDER BY provider, workspace_id",
    )
    .bind(provider.map(Provider::as_str))
    .bind(q.workspace.as_deref())
    .fetch_all(&probes.app.pool)
    .await
    .map_err(ApiError::internal)?;
    if rows.is_empty() && q.workspace.is_some() {
        return Err(ApiError::NotFound(format!(
            "workspace {} has no {} connection",
            q.workspace.as_deref().unwrap_or_default(),
            provider.map_or("CRM", Provider::as_str)
        )));
    }
    // Every connection is probed at once (each probe bounded by PROBE_TIMEOUT).
    let probed = futures::future::join_all(rows.into_iter().filter_map(|row| {
        let provider = row.1.parse::<Provider>().ok()?;
        let probes = probes.clone();
        Some(async move {
            let probe = probes
                .check(&row.0, provider, &row.3, row.4.as_deref())
                .await;
            (row, provider, probe)
        })
    }))
    .await;
    let mut connections = Vec::new();
    let mut reasons = Vec::new();
    for ((workspace, _, account, status, last_error), provider, probe) in probed {
        let healthy = probe.credentials.is_ok() && probe.api.is_ok();
        if !healthy {
            let why = probe
                .credentials
                .as_ref()
                .err()
                .or(probe.api.as_ref().err())
                .cloned()
                .unwrap_or_default();
            reasons.push(if detailed {
                format!("{provider} {workspace}: {why}")
            } else {
                format!("a {provider} connection is unhealthy")
            });
        }
        // Only callers who see the details pay for reading it.
        let last_sync = match (&account, detailed) {
            (Some(account), true) => last_projected(&probes.app.pool, account, provider).await?,
            _ => None,
        };
        connections.push(json!({
            "workspace": workspace,
            "provider": provider.as_str(),
            "account": account,
            "status": status,
            "healthy": healthy,
            "credentials": verdict(&probe.credentials.as_ref().map(|_| json!({}))),
            "api": if probe.stopped {
                json!({"skipped": "the sync is stopped: no call to the CRM"})
            } else {
                verdict(&probe.api.as_ref().map(|ms| json!({"latency_ms": ms})))
            },
            "rate_limit": {
                "crmsync_rps": probes.rps,
                "provider": probe.budget,
            },
            "last_sync": last_sync,
            "stopped": probe.stopped,
            "last_error": last_error,
            "checked_at": probe.checked_at,
        }));
    }
    let healthy = reasons.is_empty();
    let mut body = json!({
        "healthy": healthy,
        "provider": provider.map(Provider::as_str),
        "connections": connections.len(),
        "unhealthy": connections.iter().filter(|c| c["healthy"] == json!(false)).count(),
    });
    if !healthy {
        body["reasons"] = json!(reasons);
    }
    if detailed {
        body["connections"] = json!(connections);
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(body)).into_response())
}

fn verdict(result: &Result<Value, &String>) -> Value {
    match result {
        Ok(extra) => {
            let mut v = json!({"ok": true});
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            v
        }
        Err(why) => json!({"ok": false, "error": why}),
    }
}

/// When a record of this account was last projected.
async fn last_projected(
    pool: &sqlx::PgPool,
    account: &str,
    provider: Provider,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    sqlx::query_scalar(
        "SELECT max(t) FROM (
            SELECT max(projected_at) AS t FROM contacts WHERE workspace_id = $1 AND provider = $2
            UNION ALL SELECT max(projected_at) FROM companies WHERE workspace_id = $1 AND provider = $2
            UNION ALL SELECT max(projected_at) FROM deals WHERE workspace_id = $1 AND provider = $2
            UNION ALL SELECT max(projected_at) FROM activities WHERE workspace_id = $1 AND provider = $2
         ) AS latest",
    )
    .bind(account)
    .bind(provider.as_str())
    .fetch_one(pool)
    .await
    .map_err(ApiError::internal)
}

impl Probes {
    /// A connection's health: not probed when its credentials were refused or its
    /// sync is stopped, else its probe (kept for [`probe_ttl`]).
    async fn check(
        &self,
        workspace: &str,
        provider: Provider,
        status: &str,
        last_error: Option<&str>,
    ) -> Probe {
        if status != "active" {
            return Probe {
                stopped: false,
                credentials: Err(format!(
                    "the connection needs to be connected again: {}",
                    last_error.unwrap_or("its credentials were refused")
                )),
                api: Err("not tried without credentials".into()),
                budget: None,
                checked_at: Utc::now(),
            };
        }
        if crate::pause::is_paused(&self.app.pool, workspace, provider, "*").await {
            return Probe {
                stopped: true,
                credentials: Ok(()),
                api: Ok(0),
                budget: None,
                checked_at: Utc::now(),
            };
        }
        let slot = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((workspace.to_owned(), provider))
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((at, probe)) = slot.as_ref() {
            // A failure is kept briefly: it may be over (a timeout, a connection
            // made again), and a monitor should see it go.
            let healthy = probe.credentials.is_ok() && probe.api.is_ok();
            let ttl = if healthy {
                probe_ttl(provider)
            } else {
                FAILURE_TTL
            };
            if at.elapsed() < ttl {
                return probe.clone();
            }
        }
        let probe = match tokio::time::timeout(PROBE_TIMEOUT, self.run(workspace, provider)).await {
            Ok(probe) => probe,
            Err(_) => Probe {
                stopped: false,
                credentials: Ok(()),
                api: Err(format!(
                    "{provider} did not answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
                budget: None,
                checked_at: Utc::now(),
            },
        };
        *slot = Some((Instant::now(), probe.clone()));
        probe
    }

    async fn run(&self, workspace: &str, provider: Provider) -> Probe {
        let checked_at = Utc::now();
        let unconfigured = |what: &str| Probe {
            stopped: false,
            credentials: Err(format!("this engine cannot reach {provider}: {what}")),
            api: Err("not tried".into()),
            budget: None,
            checked_at,
        };
        let started;
        let answer = match provider {
            Provider::HubSpot => {
                let Some(hubspot) = &self.hubspot else {
                    return unconfigured("the HubSpot app is not configured");
                };
                let client = match hubspot.client(workspace).await {
                    Ok(client) => client,
                    Err(e) => return credentials_failed(e, checked_at),
                };
                started = Instant::now();
                client.probe().await.map(|b| b.map(|b| json!(b)))
            }
            Provider::Zoho => {
                let Some(zoho) = &self.zoho else {
                    return unconfigured("the Zoho app is not configured");
                };
                let client = match zoho.client(workspace).await {
                    Ok(client) => client,
                    Err(e) => return credentials_failed(e, checked_at),
                };
                started = Instant::now();
                client.org_id().await.map(|_| None)
            }
            Provider::Odoo => {
                let Some(odoo) = &self.odoo else {
                    return unconfigured("ENCRYPTION_KEY is not set");
                };
                let client = match odoo.connection(workspace).await {
                    Ok(connection) => odoo.client(&connection).await,
                    Err(e) => Err(e),
                };
                let client = match client {
                    Ok(client) => client,
                    Err(e) => return credentials_failed(e, checked_at),
                };
                started = Instant::now();
                client
                    .search_ids("res.partner", json!([["id", "=", 0]]))
                    .await
                    .map(|_| None)
            }
        };
        match answer {
            Ok(budget) => Probe {
                stopped: false,
                credentials: Ok(()),
                api: Ok(started.elapsed().as_millis() as u64),
                budget,
                checked_at,
            },
            Err(e) => api_failed(e, checked_at),
        }
    }
}

fn credentials_failed(e: impl std::fmt::Display, checked_at: DateTime<Utc>) -> Probe {
    Probe {
        stopped: false,
        credentials: Err(e.to_string()),
        api: Err("not tried without credentials".into()),
        budget: None,
        checked_at,
    }
}

fn api_failed(e: crmsync_adapters::ProviderError, checked_at: DateTime<Utc>) -> Probe {
    use crmsync_adapters::ErrorKind;
    let why = match e.status {
        Some(status) => format!("{e} (HTTP {status})"),
        None => e.to_string(),
    };
    let credentials = match e.kind {
        ErrorKind::Unauthorized => Err(why.clone()),
        _ => Ok(()),
    };
    Probe {
        stopped: false,
        credentials,
        api: Err(why),
        budget: None,
        checked_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_of_zoho_probes_spends_few_of_a_free_orgs_credits() {
        // A load balancer asking every few seconds gets the kept probe: at most one
        // call per TTL, per process.
        let per_day = 86_400 / probe_ttl(Provider::Zoho).as_secs();
        assert!(
            per_day * 100 <= 5_000 * 3,
            "{per_day} of 5,000 credits a day"
        );
    }
}
