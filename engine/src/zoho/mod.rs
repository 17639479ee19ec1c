//! Keeping Zoho CRM orgs in step: clients per connection (on the connection's own
//! `api_domain`), the hydrator (notification ids → records), the delta poller with
//! deletions (the safety net, as Zoho never retries a callback), the notification
//! channel keeper, and backfill.

pub mod backfill;
pub mod channels;
pub mod hydrator;
pub mod poller;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::budget::{budget_key, PgBudget};
use crmsync_adapters::zoho::client::ZohoClient;
use crmsync_adapters::zoho::oauth::ZohoApp;
use crmsync_adapters::{Metrics, RateLimits, Secret, Vault};
use crmsync_ingest::connections;

const PROVIDER: &str = "zoho";

/// Everything needed to call Zoho for any connected workspace.
#[derive(Debug)]
pub struct Zoho {
    pool: PgPool,
    vault: Arc<Vault>,
    app: ZohoApp,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    limits: RateLimits,
    concurrency: usize,
    /// By workspace and org.
    clients: Mutex<HashMap<(String, String), ZohoClient>>,
    /// Tokens Zoho refused, expired for a refresh.
    refused: connections::Refusals,
}

/// An active connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub workspace: String,
    /// The org id (the raw subjects' `<ws>` token).
    pub org: String,
    pub settings: Value,
}

impl Connected {
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name).and_then(Value::as_str)
    }
}

impl Zoho {
    pub fn new(
        pool: PgPool,
        vault: Arc<Vault>,
        app: ZohoApp,
        metrics: Arc<Metrics>,
        limits: RateLimits,
        concurrency: usize,
    ) -> Self {
        Self {
            pool,
            vault,
            app,
            http: reqwest::Client::new(),
            metrics,
            limits,
            concurrency,
            clients: Mutex::new(HashMap::new()),
            refused: connections::Refusals::new(PROVIDER),
        }
    }

    /// A client for `workspace` with a fresh access token, on its connection's API
    /// domain; one rate limiter and concurrency bound per connection.
    pub async fn client(&self, workspace: &str) -> anyhow::Result<ZohoClient> {
        let token: Secret<String> = connections::zoho_access_token(
            &self.pool,
            &self.vault,
            &self.app,
            &self.http,
            workspace,
        )
        .await?;
        let connection = connections::get(&self.pool, workspace, PROVIDER)
            .await?
            .context("the Zoho connection vanished")?;
        let domain = connection
            .settings
            .get("api_domain")
            .and_then(Value::as_str)
            .context("the Zoho connection has no api_domain; connect it again")?
            .to_owned();
        // Credits are the org's: workspaces connected to one org share its budget.
        let org = connection
            .account_id
            .context("the Zoho connection has no org; connect it again")?;
        let mut clients = self.clients.lock().await;
        let key = (workspace.to_owned(), org);
        let stale = clients.get(&key).is_some_and(|c| c.api_domain() != domain);
        if stale {
            clients.remove(&key);
        }
        let client = clients.entry(key.clone()).or_insert_with(|| {
            ZohoClient::new(
                domain,
                token.clone(),
                self.limits.shared_limiter(
                    Arc::new(PgBudget::new(self.pool.clone())),
                    budget_key(crmsync_schema::Provider::Zoho, &key.1, "all"),
                ),
                self.concurrency,
                self.metrics.clone(),
            )
        });
        client.set_token(token).await;
        Ok(client.clone())
    }

    /// After a failed call: an `INVALID_TOKEN` answer expires the stored access
    /// token, so that the next client refreshes it (once a minute at most). Whether
    /// that was the failure.
    pub async fn observe(
        &self,
        workspace: &str,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> bool {
        self.refused.observe(&self.pool, workspace, error).await
    }

    /// Zoho answered 401 to a call with the workspace's token (see `observe`).
    pub async fn token_refused(&self, workspace: &str) {
        self.refused.refused(&self.pool, workspace).await;
    }

    /// The workspace connected to `org`, if any.
    pub async fn workspace_of(&self, org: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT workspace_id FROM crm_connections
             WHERE provider = 'zoho' AND account_id = $1 AND status = 'active'
             ORDER BY workspace_id LIMIT 1",
        )
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .context("looking up the connection of an org")
    }

    /// Every active Zoho connection.
    pub async fn connected(&self) -> anyhow::Result<Vec<Connected>> {
        self.active(None).await
    }

    /// The active connection of `workspace`.
    pub async fn connection(&self, workspace: &str) -> anyhow::Result<Connected> {
        self.active(Some(workspace))
            .await?
            .pop()
            .with_context(|| format!("workspace {workspace} has no active Zoho connection"))
    }

    async fn active(&self, workspace: Option<&str>) -> anyhow::Result<Vec<Connected>> {
        let rows = connections::active(&self.pool, PROVIDER, workspace).await?;
        Ok(rows
            .into_iter()
            .map(|(workspace, org, settings)| Connected {
                workspace,
                org,
                settings,
            })
            .collect())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }
}
