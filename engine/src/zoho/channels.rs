//! The notification channel keeper: every connection gets a watch channel for
//! Contacts, Accounts, Deals and Calls, calling `CRM_PUBLIC_URL/crm/webhooks/zoho`
//! with the connection's sealed token; channels expire (a week at most), so each is
//! renewed when less than half its lifetime is left, and enabled again when Zoho no
//! longer knows it. Without `CRM_PUBLIC_URL` Zoho cannot reach crmsync: the poller
//! alone keeps the connection in step.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crmsync_adapters::zoho::WATCHED;
use crmsync_adapters::ErrorKind;
use crmsync_ingest::connections;

use super::{Connected, Zoho};

/// What the keeper did for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The channel is good for a while yet.
    Fresh,
    Enabled,
    Renewed,
}

/// The URL Zoho posts notifications to.
pub fn notify_url(public_url: &str) -> String {
    format!("{}/crm/webhooks/zoho", public_url.trim_end_matches('/'))
}

fn expiry_of(connection: &Connected) -> Option<DateTime<Utc>> {
    connection
        .setting("channel_expiry")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Enables or renews `connection`'s channel when due.
pub async fn keep(
    zoho: &Zoho,
    connection: &Connected,
    public_url: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<Kept> {
    let channel_id = connection
        .setting("channel_id")
        .context("the connection has no channel id; connect it again")?
        .to_owned();
    let enabled_for = connection.setting("channel_url") == Some(&notify_url(public_url));
    let half = chrono::Duration::from_std(ttl / 2).unwrap_or(chrono::Duration::hours(12));
    if enabled_for && expiry_of(connection).is_some_and(|e| e - now > half) {
        return Ok(Kept::Fresh);
    }
    let owner = connections::zoho_channel(zoho.pool(), zoho.vault(), &channel_id)
        .await?
        .context("the connection's channel token is missing; connect it again")?;
    let expiry = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
    let channel = |id: Value| {
        json!({"watch": [{
            "channel_id": id,
            "events": WATCHED.iter().map(|m| format!("{m}.all")).collect::<Vec<_>>(),
            "channel_expiry": expiry.to_rfc3339_opts(SecondsFormat::Secs, false),
            "token": owner.token.expose(),
            "notify_url": notify_url(public_url),
            "return_affected_field_values": false,
        }]})
    };
    let id = channel_id
        .parse::<u64>()
        .map_or_else(|_| json!(channel_id), |n| json!(n));
    let client = zoho.client(&connection.workspace).await?;
    let mut kept = Kept::Renewed;
    let answer = if enabled_for {
        client.watch(false, &channel(id.clone())).await
    } else {
        Err(crmsync_adapters::ProviderError {
            kind: ErrorKind::NotFound,
            provider: "zoho",
            operation: "watch",
            status: None,
            message: "not enabled yet".into(),
        })
    };
    let answer = match answer {
        Ok(a) if update_succeeded(&a) => a,
        Ok(_) | Err(_) => {
            kept = Kept::Enabled;
            client.watch(true, &channel(id)).await?
        }
    };
    if !update_succeeded(&answer) {
        anyhow::bail!("Zoho did not enable the notification channel: {answer}");
    }
    connections::update_channel_settings(
        zoho.pool(),
        &connection.workspace,
        &channel_id,
        &json!({
            "channel_expiry": expiry.to_rfc3339_opts(SecondsFormat::Secs, true),
            "channel_url": notify_url(public_url),
        }),
    )
    .await?;
    Ok(kept)
}

/// Whether every entry of a watch answer succeeded.
fn update_succeeded(answer: &Value) -> bool {
    answer
        .get("watch")
        .and_then(Value::as_array)
        .is_some_and(|w| {
            !w.is_empty()
                && w.iter()
                    .all(|e| e.get("status").and_then(Value::as_str) == Some("success"))
        })
}

/// How often the keeper looks: often enough to renew a channel in the second half of
/// its life, and to enable a new connection's channel soon after it is made.
pub fn cadence(poll_interval: Duration, ttl: Duration) -> Duration {
    poll_interval
        .min(ttl / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Keeps every connection's channel, every `every`, until stopped.
pub async fn run(
    zoho: Arc<Zoho>,
    public_url: String,
    ttl: Duration,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!("Zoho channel keeper started");
    loop {
        match zoho.connected().await {
            Ok(connections) => {
                for connection in connections {
                    match keep(&zoho, &connection, &public_url, ttl, Utc::now()).await {
                        Ok(Kept::Fresh) => {}
                        Ok(kept) => {
                            tracing::info!(workspace = %connection.workspace, ?kept, "Zoho notification channel kept")
                        }
                        Err(e) => {
                            zoho.observe(&connection.workspace, e.as_ref()).await;
                            tracing::warn!(workspace = %connection.workspace, error = %format!("{e:#}"), "Zoho notification channel not kept; polling covers it")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list Zoho connections"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    tracing::info!("Zoho channel keeper stopped");
    Ok(())
}
