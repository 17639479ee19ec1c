//! Connections: a workspace's link to a provider account, its tokens sealed with age,
//! and access tokens refreshed ahead of expiry, one refresh at a time per connection
//! even across workers (the refresh runs under the row's lock).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;

use std::future::Future;

use crmsync_adapters::hubspot::oauth::OAuthApp;
use crmsync_adapters::oauth::{OAuthError, TokenSet};
use crmsync_adapters::zoho::oauth::ZohoApp;
use crmsync_adapters::{Secret, Vault};

/// Refresh when less than this is left.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

/// A connection as the API shows it: no secrets.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Connection {
    pub workspace_id: String,
    pub provider: String,
    pub account_id: Option<String>,
    pub status: String,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub settings: Value,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What is sealed in `secrets`.
#[derive(Serialize, Deserialize)]
struct Sealed {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// Zoho: the secret token its notification channel echoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel_token: Option<String>,
}

/// How a provider refreshes an access token; `settings` are the connection's (Zoho
/// keeps its accounts server there).
pub trait Refresh: Sync {
    fn refresh_tokens(
        &self,
        http: &reqwest::Client,
        refresh_token: &str,
        settings: &Value,
    ) -> impl Future<Output = Result<TokenSet, OAuthError>> + Send;
}

impl Refresh for OAuthApp {
    async fn refresh_tokens(
        &self,
        http: &reqwest::Client,
        refresh_token: &str,
        _settings: &Value,
    ) -> Result<TokenSet, OAuthError> {
        self.refresh(http, refresh_token).await
    }
}

impl Refresh for ZohoApp {
    async fn refresh_tokens(
        &self,
        http: &reqwest::Client,
        refresh_token: &str,
        settings: &Value,
    ) -> Result<TokenSet, OAuthError> {
        let server =
            self.accounts_server(settings.get("accounts_server").and_then(Value::as_str))?;
        Ok(self.refresh(http, &server, refresh_token).await?.tokens)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("workspace {workspace} has no {provider} connection")]
    NotConnected { workspace: String, provider: String },
    #[error("the {provider} connection of workspace {workspace} must be made again: {reason}")]
    NeedsReconnect {
        workspace: String,
        provider: String,
        reason: String,
    },
    #[error("refreshing the access token failed for now: {0}")]
    Transient(String),
    #[error("stored secrets cannot be opened: {0}")]
    Vault(#[from] crmsync_adapters::vault::VaultError),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

fn seal(vault: &Vault, sealed: &Sealed) -> Result<Vec<u8>, ConnectionError> {
    Ok(vault.seal(&serde_json::to_vec(sealed).expect("serialisable"))?)
}

fn open(vault: &Vault, secrets: &[u8]) -> Result<Sealed, ConnectionError> {
    let plain = vault.open(secrets)?;
    serde_json::from_slice(&plain)
        .map_err(|_| ConnectionError::Vault(crmsync_adapters::vault::VaultError::Decrypt))
}

fn expiry(tokens: &TokenSet) -> DateTime<Utc> {
    Utc::now()
        + chrono::Duration::seconds(
            i64::try_from(tokens.expires_in)
                .unwrap_or(i64::MAX / 2)
                .min(10 * 365 * 86_400),
        )
}

/// Creates or replaces a connection with fresh tokens (and, for Zoho, the token its
/// notification channel will echo).
#[allow(clippy::too_many_arguments)]
pub async fn save(
    pool: &PgPool,
    vault: &Vault,
    workspace: &str,
    provider: &str,
    account_id: &str,
    tokens: &TokenSet,
    channel_token: Option<&str>,
    settings: &Value,
) -> Result<(), ConnectionError> {
    let secrets = seal(
        vault,
        &Sealed {
            access_token: tokens.access_token.expose().clone(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose().clone()),
            channel_token: channel_token.map(str::to_owned),
        },
    )?;
    sqlx::query(
        "INSERT INTO crm_connections
             (workspace_id, provider, account_id, status, secrets, access_expires_at, settings)
         VALUES ($1, $2, $3, 'active', $4, $5, $6)
         ON CONFLICT (workspace_id, provider) DO UPDATE SET
             account_id = EXCLUDED.account_id, status = 'active', secrets = EXCLUDED.secrets,
             access_expires_at = EXCLUDED.access_expires_at, settings = EXCLUDED.settings,
             last_error = NULL, updated_at = now()",
    )
    .bind(workspace)
    .bind(provider)
    .bind(account_id)
    .bind(secrets)
    .bind(expiry(tokens))
    .bind(settings)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get(
    pool: &PgPool,
    workspace: &str,
    provider: &str,
) -> Result<Option<Connection>, sqlx::Error> {
    sqlx::query_as(
        "SELECT workspace_id, provider, account_id, status, access_expires_at, settings,
                last_error, created_at, updated_at
         FROM crm_connections WHERE workspace_id = $1 AND provider = $2",
    )
    .bind(workspace)
    .bind(provider)
    .fetch_optional(pool)
    .await
}

/// Removes a connection and its secrets; false when there was none.
pub async fn remove(pool: &PgPool, workspace: &str, provider: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM crm_connections WHERE workspace_id = $1 AND provider = $2")
        .bind(workspace)
        .bind(provider)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

type Row = (String, Vec<u8>, Option<DateTime<Utc>>);
type LockedRow = (
    String,
    Vec<u8>,
    Option<DateTime<Utc>>,
    Option<String>,
    Value,
);

fn fresh(expires: Option<DateTime<Utc>>) -> bool {
    expires
        .is_some_and(|e| e - Utc::now() > chrono::Duration::from_std(REFRESH_AHEAD).expect("small"))
}

/// A usable HubSpot access token for `workspace`; see [`access_token`].
pub async fn hubspot_access_token(
    pool: &PgPool,
    vault: &Vault,
    app: &OAuthApp,
    http: &reqwest::Client,
    workspace: &str,
) -> Result<Secret<String>, ConnectionError> {
    access_token(pool, vault, app, http, workspace, "hubspot").await
}

/// A usable Zoho access token for `workspace`; see [`access_token`].
pub async fn zoho_access_token(
    pool: &PgPool,
    vault: &Vault,
    app: &ZohoApp,
    http: &reqwest::Client,
    workspace: &str,
) -> Result<Secret<String>, ConnectionError> {
    access_token(pool, vault, app, http, workspace, "zoho").await
}

/// A usable access token of `workspace`'s `provider` connection, refreshed first
/// when it is about to expire. Concurrent callers, in this process or others,
/// refresh once.
pub async fn access_token(
    pool: &PgPool,
    vault: &Vault,
    app: &impl Refresh,
    http: &reqwest::Client,
    workspace: &str,
    provider: &str,
) -> Result<Secret<String>, ConnectionError> {
    let not_connected = || ConnectionError::NotConnected {
        workspace: workspace.to_owned(),
        provider: provider.to_owned(),
    };
    let select = "SELECT status, secrets, access_expires_at FROM crm_connections
                  WHERE workspace_id = $1 AND provider = $2";
    let row: Option<Row> = sqlx::query_as(select)
        .bind(workspace)
        .bind(provider)
        .fetch_optional(pool)
        .await?;
    let (status, secrets, expires) = row.ok_or_else(not_connected)?;
    if status == "active" && fresh(expires) {
        return Ok(Secret::new(open(vault, &secrets)?.access_token));
    }
    let mut tx = pool.begin().await?;
    let row: Option<LockedRow> = sqlx::query_as(
        "SELECT status, secrets, access_expires_at, last_error, settings FROM crm_connections
         WHERE workspace_id = $1 AND provider = $2 FOR UPDATE",
    )
    .bind(workspace)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    let (status, secrets, expires, last_error, settings) = row.ok_or_else(not_connected)?;
    if status != "active" {
        return Err(ConnectionError::NeedsReconnect {
            workspace: workspace.to_owned(),
            provider: provider.to_owned(),
            reason: last_error.unwrap_or_default(),
        });
    }
    let sealed = open(vault, &secrets)?;
    if fresh(expires) {
        // Another caller refreshed while this one waited for the lock.
        return Ok(Secret::new(sealed.access_token));
    }
    let Some(refresh_token) = sealed.refresh_token.clone() else {
        return Err(ConnectionError::NeedsReconnect {
            workspace: workspace.to_owned(),
            provider: provider.to_owned(),
            reason: "no refresh token".into(),
        });
    };
    match app.refresh_tokens(http, &refresh_token, &settings).await {
        Ok(tokens) => {
            let refresh = tokens
                .refresh_token
                .as_ref()
                .map_or(refresh_token.as_str(), |t| t.expose().as_str());
            let secrets = seal(
                vault,
                &Sealed {
                    access_token: tokens.access_token.expose().clone(),
                    refresh_token: Some(refresh.to_owned()),
                    channel_token: sealed.channel_token.clone(),
                },
            )?;
            sqlx::query(
                "UPDATE crm_connections SET secrets = $3, access_expires_at = $4,
                        last_error = NULL, updated_at = now()
                 WHERE workspace_id = $1 AND provider = $2",
            )
            .bind(workspace)
            .bind(provider)
            .bind(secrets)
            .bind(expiry(&tokens))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(workspace, provider, "access token refreshed");
            Ok(tokens.access_token)
        }
        Err(OAuthError::InvalidGrant(reason)) => {
            sqlx::query(
                "UPDATE crm_connections SET status = 'needs_reconnect', last_error = $3,
                        updated_at = now()
                 WHERE workspace_id = $1 AND provider = $2",
            )
            .bind(workspace)
            .bind(provider)
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::warn!(
                workspace,
                provider,
                "refresh token refused; the connection needs to be made again"
            );
            Err(ConnectionError::NeedsReconnect {
                workspace: workspace.to_owned(),
                provider: provider.to_owned(),
                reason,
            })
        }
        Err(e) => Err(ConnectionError::Transient(e.to_string())),
    }
}

/// Re-encrypts every connection's secrets to the vault's first identity; returns how
/// many were re-encrypted.
pub async fn rotate(pool: &PgPool, vault: &Vault) -> Result<u64, ConnectionError> {
    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT workspace_id, provider, secrets FROM crm_connections")
            .fetch_all(pool)
            .await?;
    let mut rotated = 0;
    for (workspace, provider, secrets) in rows {
        if vault.is_current(&secrets) {
            continue;
        }
        let plain = vault.open(&secrets)?;
        let resealed = vault.seal(&plain)?;
        sqlx::query(
            "UPDATE crm_connections SET secrets = $3, updated_at = now()
             WHERE workspace_id = $1 AND provider = $2 AND secrets = $4",
        )
        .bind(&workspace)
        .bind(&provider)
        .bind(resealed)
        .bind(&secrets)
        .execute(pool)
        .await?;
        rotated += 1;
    }
    Ok(rotated)
}

/// Marks a connection's access token as expired, so that the next caller refreshes
/// it (after the provider refused it as invalid).
pub async fn invalidate_access_token(
    pool: &PgPool,
    workspace: &str,
    provider: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE crm_connections SET access_expires_at = now() - interval '1 second'
         WHERE workspace_id = $1 AND provider = $2",
    )
    .bind(workspace)
    .bind(provider)
    .execute(pool)
    .await?;
    Ok(())
}

/// A long run with one token (a backfill) that goes on with a refreshed one when the
/// provider refuses it: at most once a [`Refusals::EVERY`], since a token refused
/// again so soon after its refresh is not a matter of expiry.
#[derive(Debug, Default)]
pub struct Refreshes {
    last: Option<std::time::Instant>,
}

impl Refreshes {
    /// After a failed run, whose token was `refused` or not ([`Refusals::observe`]):
    /// whether to run again with a refreshed token.
    pub fn again(&mut self, refused: bool) -> bool {
        let again = refused && self.last.is_none_or(|at| at.elapsed() >= Refusals::EVERY);
        if again {
            self.last = Some(std::time::Instant::now());
        }
        again
    }
}

/// Access tokens a provider refused (revoked, or expired before the stored expiry):
/// each is marked expired so that the next caller refreshes it, at most once a
/// [`Refusals::EVERY`] per workspace (providers throttle refreshes, and a 401 that a
/// refresh does not cure needs the user, not a refresh loop).
#[derive(Debug)]
pub struct Refusals {
    provider: &'static str,
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Refusals {
    pub const EVERY: Duration = Duration::from_secs(60);

    pub fn new(provider: &'static str) -> Self {
        Self {
            provider,
            last: std::sync::Mutex::default(),
        }
    }

    /// After a failed call: a provider's answer, anywhere in `error`'s chain, that
    /// the token is not valid expires the workspace's stored access token (see
    /// [`Refusals::refused`]). Whether that was the failure.
    pub async fn observe(
        &self,
        pool: &PgPool,
        workspace: &str,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> bool {
        let error: &(dyn std::error::Error + 'static) = error;
        let refused = std::iter::successors(Some(error), |e| e.source())
            .filter_map(|e| e.downcast_ref::<crmsync_adapters::ProviderError>())
            .any(|p| p.kind == crmsync_adapters::ErrorKind::Unauthorized);
        if refused {
            self.refused(pool, workspace).await;
        }
        refused
    }

    /// The provider refused the workspace's access token: it is expired, when it was
    /// not expired within the minute.
    pub async fn refused(&self, pool: &PgPool, workspace: &str) {
        let due = {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            let due = last
                .get(workspace)
                .is_none_or(|at| now.duration_since(*at) >= Self::EVERY);
            if due {
                last.insert(workspace.to_owned(), now);
            }
            due
        };
        if due {
            let provider = self.provider;
            tracing::info!(
                workspace,
                provider,
                "the provider refused the access token; refreshing it"
            );
            if let Err(e) = invalidate_access_token(pool, workspace, provider).await {
                tracing::warn!(error = %e, "could not mark the access token expired");
            }
        }
    }
}

/// The connection a Zoho notification channel belongs to.
#[derive(Debug, Clone)]
pub struct ChannelOwner {
    pub workspace: String,
    /// The Zoho org id.
    pub account_id: String,
    /// The secret the channel echoes.
    pub token: Secret<String>,
}

/// The active connection whose notification channel is `channel_id`, with its token.
pub async fn zoho_channel(
    pool: &PgPool,
    vault: &Vault,
    channel_id: &str,
) -> Result<Option<ChannelOwner>, ConnectionError> {
    let row: Option<(String, Option<String>, Vec<u8>)> = sqlx::query_as(
        "SELECT workspace_id, account_id, secrets FROM crm_connections
         WHERE provider = 'zoho' AND status = 'active' AND settings ->> 'channel_id' = $1",
    )
    .bind(channel_id)
    .fetch_optional(pool)
    .await?;
    let Some((workspace, account_id, secrets)) = row else {
        return Ok(None);
    };
    let Some(token) = open(vault, &secrets)?.channel_token else {
        return Ok(None);
    };
    Ok(Some(ChannelOwner {
        workspace,
        account_id: account_id.unwrap_or_default(),
        token: Secret::new(token),
    }))
}

/// Merges `patch` into the settings of `workspace`'s Zoho connection, if its channel
/// is still `channel_id` (a connection made again meanwhile has a new channel).
pub async fn update_channel_settings(
    pool: &PgPool,
    workspace: &str,
    channel_id: &str,
    patch: &Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE crm_connections SET settings = settings || $3, updated_at = now()
         WHERE workspace_id = $1 AND provider = 'zoho' AND settings ->> 'channel_id' = $2",
    )
    .bind(workspace)
    .bind(channel_id)
    .bind(patch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Active connections of `provider` (of one workspace, if named) that have an
/// account: (workspace, account, settings), by workspace.
pub async fn active(
    pool: &PgPool,
    provider: &str,
    workspace: Option<&str>,
) -> Result<Vec<(String, String, Value)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT workspace_id, account_id, settings FROM crm_connections
         WHERE provider = $1 AND status = 'active' AND account_id IS NOT NULL
           AND ($2::text IS NULL OR workspace_id = $2)
         ORDER BY workspace_id",
    )
    .bind(provider)
    .bind(workspace)
    .fetch_all(pool)
    .await
}
