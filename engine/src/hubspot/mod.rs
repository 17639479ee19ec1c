//! Keeping HubSpot portals in step: clients per connection, the hydrator (thin
//! webhook events → snapshots), the delta poller (the safety net) and backfill.

pub mod backfill;
pub mod hydrator;
pub mod poller;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::budget::{budget_key, PgBudget};
use crmsync_adapters::hubspot::client::HubSpotClient;
use crmsync_adapters::hubspot::oauth::OAuthApp;
use crmsync_adapters::{Metrics, RateLimiter, RateLimits, Secret, Vault};
use crmsync_ingest::connections;

/// Everything needed to call HubSpot for any connected workspace.
#[derive(Debug)]
pub struct HubSpot {
    pool: PgPool,
    vault: Arc<Vault>,
    app: OAuthApp,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    limits: RateLimits,
    /// By workspace and portal.
    clients: Mutex<HashMap<(String, String), HubSpotClient>>,
    /// Tokens HubSpot refused, expired for a refresh.
    refused: connections::Refusals,
}

/// An active connection: the workspace and its portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub workspace: String,
    pub portal: String,
}

impl HubSpot {
    pub fn new(
        pool: PgPool,
        vault: Arc<Vault>,
        app: OAuthApp,
        metrics: Arc<Metrics>,
        limits: RateLimits,
    ) -> Self {
        Self {
            pool,
            vault,
            app,
            http: reqwest::Client::new(),
            metrics,
            limits,
            clients: Mutex::new(HashMap::new()),
            refused: connections::Refusals::new("hubspot"),
        }
    }

    /// After a failed call: a 401 (a token revoked, or expired before its stored
    /// expiry) expires the stored access token, so that the next client refreshes it
    /// (once a minute at most). Whether that was the failure.
    pub async fn observe(
        &self,
        workspace: &str,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> bool {
        self.refused.observe(&self.pool, workspace, error).await
    }

    /// HubSpot answered 401 to a call with the workspace's token (see `observe`).
    pub async fn token_refused(&self, workspace: &str) {
        self.refused.refused(&self.pool, workspace).await;
    }

    /// A client for `workspace` with a fresh access token. Its rate limits
    /// (`CRM_SYNC_RPS`, and the searches') are its portal's: HubSpot counts requests by
    /// portal, so workspaces connected to one portal share them.
    pub async fn client(&self, workspace: &str) -> anyhow::Result<HubSpotClient> {
        let token: Secret<String> = connections::hubspot_access_token(
            &self.pool,
            &self.vault,
            &self.app,
            &self.http,
            workspace,
        )
        .await?;
        let portal = connections::get(&self.pool, workspace, "hubspot")
            .await?
            .and_then(|c| c.account_id)
            .context("the HubSpot connection has no portal; connect it again")?;
        let mut clients = self.clients.lock().await;
        let key = (workspace.to_owned(), portal);
        let client = clients.entry(key.clone()).or_insert_with(|| {
            let portal = key.1.as_str();
            let budget = Arc::new(PgBudget::new(self.pool.clone()));
            let searches = RateLimiter::new(self.limits.search_rps, 1.0).shared(
                budget.clone(),
                budget_key(crmsync_schema::Provider::HubSpot, portal, "search"),
            );
            HubSpotClient::new(
                self.app.api_url.clone(),
                token.clone(),
                self.limits.shared_limiter(
                    budget,
                    budget_key(crmsync_schema::Provider::HubSpot, portal, "all"),
                ),
                self.metrics.clone(),
            )
            .with_search_limiter(Arc::new(searches))
        });
        client.set_token(token).await;
        Ok(client.clone())
    }

    /// The workspace connected to `portal`, if any.
    pub async fn workspace_of(&self, portal: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT workspace_id FROM crm_connections
             WHERE provider = 'hubspot' AND account_id = $1 AND status = 'active'
             ORDER BY workspace_id LIMIT 1",
        )
        .bind(portal)
        .fetch_optional(&self.pool)
        .await
        .context("looking up the connection of a portal")
    }

    /// Every active HubSpot connection.
    pub async fn connected(&self) -> anyhow::Result<Vec<Connected>> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT workspace_id, account_id FROM crm_connections
             WHERE provider = 'hubspot' AND status = 'active' ORDER BY workspace_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(workspace, portal)| {
                Some(Connected {
                    workspace,
                    portal: portal?,
                })
            })
            .collect())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
