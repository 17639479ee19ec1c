//! Entity links (`CrmEntityLink`): every `crm.result` event — a CRM's id for something
//! the app pushed — becomes a row of `crm_entity_links`, acknowledged only after the
//! commit, so the app can map its calls to CRM records (and back) with SQL. The
//! contact and deal a push named by the app's own id (`app_id`, beside a CRM id, email
//! or phone) are linked too, so later pushes can name them by that id alone.
//!
//! The same event makes the call an app-born activity: its row in `activities` takes
//! the fields crmsync wrote, which the app is the authority for from then on (see
//! `crmsync_schema::conflict`); where the CRM's copy was projected first and differs,
//! the difference is kept as a conflict.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crmsync_projectors::tables::{record_conflicts, ConflictAt};
use crmsync_schema::conflict::{app_born_activity, app_fields};
use crmsync_schema::{binding, envelope::data_bytes, FieldSet, Version};

use crate::topology::Topology;

const CONSUMER: &str = "link-results";

#[derive(Debug, Deserialize)]
struct Pushed {
    call_id: String,
    workspace: String,
    provider: String,
    crm_id: String,
    /// The CRM account the record lives in (the projection's workspace).
    #[serde(default)]
    account: Option<String>,
    /// The fields crmsync wrote, as the CRM's mapping reads them.
    #[serde(default)]
    fields: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The app's contact and deal ids the push named, with the CRM records they
    /// resolved to.
    #[serde(default)]
    links: Vec<Link>,
    /// When the app asked for the push: the links' order.
    #[serde(default)]
    requested_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Deserialize)]
struct Link {
    entity_type: String,
    app_id: String,
    crm_id: String,
}

async fn apply(pool: &PgPool, msg: &Message) -> Result<(), String> {
    let event =
        binding::from_message(msg.headers.as_ref(), &msg.payload).map_err(|e| e.to_string())?;
    let pushed: Pushed = serde_json::from_slice(&data_bytes(&event)).map_err(|e| e.to_string())?;
    let version = Version::new(
        crmsync_schema::cloudevents::AttributesReader::time(&event)
            .copied()
            .unwrap_or_default(),
        crmsync_schema::cloudevents::AttributesReader::id(&event),
    );
    // When the app asked for the push (results from before 2026-11-28 carry no such
    // time: theirs stands in).
    let at = pushed.requested_at.unwrap_or_else(|| {
        crmsync_schema::cloudevents::AttributesReader::time(&event)
            .copied()
            .unwrap_or_default()
    });
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let call = ("call", pushed.call_id.as_str(), pushed.crm_id.as_str());
    let named = pushed
        .links
        .iter()
        .filter(|l| matches!(l.entity_type.as_str(), "contact" | "deal"))
        .map(|l| (l.entity_type.as_str(), l.app_id.as_str(), l.crm_id.as_str()));
    for (entity_type, app_id, crm_id) in std::iter::once(call).chain(named) {
        let link = EntityLink {
            workspace: &pushed.workspace,
            entity_type,
            app_id,
            provider: &pushed.provider,
            crm_id,
            account: pushed.account.as_deref(),
            at,
        };
        link.record(&mut *tx).await.map_err(|e| e.to_string())?;
    }
    if let (Some(account), Some(fields)) = (&pushed.account, &pushed.fields) {
        app_born(&mut tx, &pushed, account, fields, &version)
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// A row of `crm_entity_links`: the app's id for a record, and the CRM's.
#[derive(Debug)]
pub struct EntityLink<'a> {
    pub workspace: &'a str,
    pub entity_type: &'a str,
    pub app_id: &'a str,
    pub provider: &'a str,
    pub crm_id: &'a str,
    /// The CRM account the record lives in.
    pub account: Option<&'a str>,
    /// When the app asked for the push that made the link: links are ordered by it.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl EntityLink<'_> {
    /// Records the link, replacing the app id's earlier one in that CRM unless that
    /// came from a push the app asked for later.
    pub async fn record(
        &self,
        db: impl sqlx::Executor<'_, Database = sqlx::Postgres>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO crm_entity_links AS l
                 (workspace_id, entity_type, app_id, provider, crm_id, account_id, linked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (workspace_id, entity_type, app_id, provider) DO UPDATE
                 SET crm_id = EXCLUDED.crm_id,
                     account_id = coalesce(EXCLUDED.account_id, l.account_id),
                     linked_at = EXCLUDED.linked_at,
                     updated_at = now()
                 WHERE l.linked_at IS NULL OR l.linked_at <= EXCLUDED.linked_at",
        )
        .bind(self.workspace)
        .bind(self.entity_type)
        .bind(self.app_id)
        .bind(self.provider)
        .bind(self.crm_id)
        .bind(self.account)
        .bind(self.at)
        .execute(db)
        .await?;
        Ok(())
    }
}

/// A replay's step for a `crm.result` event: the call's app-born row in `target`.
/// (Links and conflicts were recorded when the event was first seen.)
pub async fn replay_result(
    tx: &mut sqlx::PgConnection,
    target: &str,
    event: &crmsync_schema::cloudevents::Event,
) -> Result<(), String> {
    let pushed: Pushed = serde_json::from_slice(&data_bytes(event)).map_err(|e| e.to_string())?;
    let version = Version::new(
        crmsync_schema::cloudevents::AttributesReader::time(event)
            .copied()
            .unwrap_or_default(),
        crmsync_schema::cloudevents::AttributesReader::id(event),
    );
    if let (Some(account), Some(fields)) = (&pushed.account, &pushed.fields) {
        let app = app_fields(fields, &version);
        write_app_born(tx, target, &pushed, account, &app, &version)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Makes the pushed call an app-born activity with the fields crmsync wrote.
async fn app_born(
    tx: &mut sqlx::PgConnection,
    pushed: &Pushed,
    account: &str,
    fields: &std::collections::BTreeMap<String, serde_json::Value>,
    version: &Version,
) -> Result<(), sqlx::Error> {
    let app = app_fields(fields, version);
    // The CRM's copy, if projected first: where it differs, a conflict.
    let stored: Option<(serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT fields, field_versions FROM activities
         WHERE workspace_id = $1 AND provider = $2 AND remote_id = $3 FOR UPDATE",
    )
    .bind(account)
    .bind(&pushed.provider)
    .bind(&pushed.crm_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((fields, versions)) = stored {
        let crm = FieldSet {
            fields: serde_json::from_value(fields).unwrap_or_default(),
            versions: serde_json::from_value(versions).unwrap_or_default(),
        };
        let at = ConflictAt {
            workspace: account,
            provider: &pushed.provider,
            object: "activity",
            remote_id: &pushed.crm_id,
            app_workspace: Some(&pushed.workspace),
        };
        record_conflicts(tx, &at, &app_born_activity(&app, &crm).conflicts).await?;
    }
    write_app_born(tx, "activities", pushed, account, &app, version).await
}

/// Writes the app's fields of a pushed call into `target` (`activities`, or a replay's
/// shadow of it): they win over the CRM's, whatever order the two came in.
async fn write_app_born(
    tx: &mut sqlx::PgConnection,
    target: &str,
    pushed: &Pushed,
    account: &str,
    app: &FieldSet,
    version: &Version,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {target} AS a (workspace_id, provider, remote_id, fields, field_versions,
                                      app_workspace, app_call_id, app_fields, app_version,
                                      source_updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $4, $8, $9)
         ON CONFLICT (workspace_id, provider, remote_id) DO UPDATE SET
             fields = a.fields || EXCLUDED.fields,
             field_versions = a.field_versions || EXCLUDED.field_versions,
             app_workspace = EXCLUDED.app_workspace,
             app_call_id = EXCLUDED.app_call_id,
             app_fields = EXCLUDED.app_fields,
             app_version = EXCLUDED.app_version,
             source_updated_at = GREATEST(a.source_updated_at, EXCLUDED.source_updated_at),
             projected_at = now()",
    ))
    .bind(account)
    .bind(&pushed.provider)
    .bind(&pushed.crm_id)
    .bind(serde_json::to_value(&app.fields).unwrap_or_default())
    .bind(serde_json::to_value(&app.versions).unwrap_or_default())
    .bind(&pushed.workspace)
    .bind(&pushed.call_id)
    .bind(version.as_str())
    .bind(version.time())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    topology: Topology,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        name: Some(CONSUMER.into()),
        description: Some("crmsync entity links from crm.result events".into()),
        filter_subject: format!("{}.result.>", topology.subjects.root()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // Like the projectors': messages pulled but not applied when a worker stops
        // come back to the next one after this.
        ack_wait: topology.policy.retry_base,
        max_ack_pending: 1_000,
        ..Default::default()
    };
    // A stream that is briefly missing (being recreated) is waited for, not fatal.
    let mut messages = loop {
        let opened = async {
            let consumer: jetstream::consumer::PullConsumer = js
                .create_consumer_on_stream(config.clone(), topology.events_stream())
                .await
                .map_err(|e| anyhow::anyhow!("creating consumer {CONSUMER}: {e}"))?;
            consumer
                .stream()
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("opening consumer {CONSUMER}: {e}"))
        };
        match opened.await {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(error = %e, "entity links wait for their consumer");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(msg)) => match apply(&pool, &msg).await {
                Ok(()) => {
                    let _ = msg.ack().await;
                }
                // Left for redelivery (Postgres away) — a malformed result is logged
                // and redelivered until someone looks; it holds nothing else back.
                Err(reason) => tracing::warn!(reason, "entity link not recorded yet"),
            },
            Some(Err(e)) => tracing::debug!(error = %e, "result consumer hiccup"),
            None => break,
        }
    }
    Ok(())
}
