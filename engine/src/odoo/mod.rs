//! Keeping Odoo databases in step by polling (Odoo has no webhooks by default):
//! clients per connection, the `write_date` poller with its overlap window and delete
//! sweeps (`poller`), and the scheduler that runs polls once across workers under a
//! lease (`scheduler`).

pub mod poller;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::budget::{budget_key, PgBudget};
use crmsync_adapters::oauth::{OAuthError, TokenSet};
use crmsync_adapters::odoo::client::{OdooClient, OdooConfig};
use crmsync_adapters::{Metrics, RateLimits, Secret, Vault};
use crmsync_ingest::connections::{self, Refresh};
use crmsync_schema::{Provider, Subjects};

pub const PROVIDER: &str = "odoo";

/// API keys are not refreshed: one that expires (Odoo 17+ can set a date) or is
/// revoked is replaced by connecting again with a new one.
struct NoRefresh;

impl Refresh for NoRefresh {
    async fn refresh_tokens(
        &self,
        _http: &reqwest::Client,
        _refresh_token: &str,
        _settings: &Value,
    ) -> Result<TokenSet, OAuthError> {
        Err(OAuthError::InvalidGrant(
            "an Odoo API key cannot be refreshed".into(),
        ))
    }
}

/// An active Odoo connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Connected {
    pub workspace: String,
    /// `database@host`: the raw subjects' `<ws>` token.
    pub account: String,
    pub settings: Value,
}

/// Everything needed to poll any connected Odoo.
#[derive(Debug)]
pub struct Odoo {
    pool: PgPool,
    vault: Arc<Vault>,
    metrics: Arc<Metrics>,
    limits: RateLimits,
    pub timeout: Duration,
    pub lookback: Duration,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub cursors: kv::Store,
    clients: Mutex<HashMap<String, (Value, OdooClient)>>,
}

impl Odoo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        vault: Arc<Vault>,
        metrics: Arc<Metrics>,
        limits: RateLimits,
        timeout: Duration,
        lookback: Duration,
        js: jetstream::Context,
        subjects: Subjects,
        cursors: kv::Store,
    ) -> Self {
        Self {
            pool,
            vault,
            metrics,
            limits,
            timeout,
            lookback,
            js,
            subjects,
            cursors,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every active Odoo connection.
    pub async fn connected(&self) -> anyhow::Result<Vec<Connected>> {
        self.active(None).await
    }

    /// The active connection of `workspace`.
    pub async fn connection(&self, workspace: &str) -> anyhow::Result<Connected> {
        self.active(Some(workspace))
            .await?
            .pop()
            .with_context(|| format!("workspace {workspace} has no active Odoo connection"))
    }

    async fn active(&self, workspace: Option<&str>) -> anyhow::Result<Vec<Connected>> {
        let rows = connections::active(&self.pool, PROVIDER, workspace).await?;
        Ok(rows
            .into_iter()
            .map(|(workspace, account, settings)| Connected {
                workspace,
                account,
                settings,
            })
            .collect())
    }

    /// A client for `connection` (authenticated once, then kept until the
    /// connection is made again: another server, login or key).
    pub async fn client(&self, connection: &Connected) -> anyhow::Result<OdooClient> {
        let mut clients = self.clients.lock().await;
        // Polls rewrite their status in the settings: only these name the server and
        // the key (stored at `connected_at`).
        let identity = serde_json::json!([
            connection.account,
            connection.settings.get("url"),
            connection.settings.get("database"),
            connection.settings.get("login"),
            connection.settings.get("connected_at"),
        ]);
        if let Some((known, client)) = clients.get(&connection.workspace) {
            if *known == identity {
                return Ok(client.clone());
            }
        }
        let key: Secret<String> = connections::access_token(
            &self.pool,
            &self.vault,
            &NoRefresh,
            &reqwest::Client::new(),
            &connection.workspace,
            PROVIDER,
        )
        .await?;
        let setting = |name: &str| {
            connection
                .settings
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("the Odoo connection has no {name}; connect it again"))
        };
        let config = OdooConfig {
            url: setting("url")?,
            database: setting("database")?,
            login: setting("login")?,
            api_key: key,
            timeout: self.timeout,
        };
        let limiter = self.limits.shared_limiter(
            Arc::new(PgBudget::new(self.pool.clone())),
            // The database's: workspaces connected to one database share it.
            budget_key(crmsync_schema::Provider::Odoo, &connection.account, "all"),
        );
        let client = OdooClient::connect(config, limiter, self.metrics.clone()).await?;
        clients.insert(connection.workspace.clone(), (identity, client.clone()));
        Ok(client)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl crmsync_ingest::odoo::PollNow for Odoo {
    fn poll_now<'a>(
        &'a self,
        workspace: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + Send + 'a>>
    {
        Box::pin(async move {
            if crate::pause::is_paused(self.pool(), workspace, Provider::Odoo, "?").await {
                return Err(crmsync_ingest::odoo::SyncStopped.into());
            }
            let report = self.poll(workspace, true).await?;
            Ok(serde_json::to_value(report)?)
        })
    }
}
