//! Entity links (`CrmEntityLink`): every `crm.result` event — a CRM's id for something
//! the app pushed — becomes a row of `crm_entity_links`, acknowledged only after the
//! commit, so the app can map its calls to CRM records (and back) with SQL.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crmsync_schema::{binding, envelope::data_bytes};

use crate::topology::Topology;

const CONSUMER: &str = "link-results";

#[derive(Debug, Deserialize)]
struct Pushed {
    call_id: String,
    workspace: String,
    provider: String,
    crm_id: String,
}

async fn apply(pool: &PgPool, msg: &Message) -> Result<(), String> {
    let event =
        binding::from_message(msg.headers.as_ref(), &msg.payload).map_err(|e| e.to_string())?;
    let pushed: Pushed = serde_json::from_slice(&data_bytes(&event)).map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO crm_entity_links (workspace_id, entity_type, app_id, provider, crm_id)
         VALUES ($1, 'call', $2, $3, $4)
         ON CONFLICT (workspace_id, entity_type, app_id, provider)
         DO UPDATE SET crm_id = EXCLUDED.crm_id, updated_at = now()",
    )
    .bind(&pushed.workspace)
    .bind(&pushed.call_id)
    .bind(&pushed.provider)
    .bind(&pushed.crm_id)
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
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
        ack_wait: Duration::from_secs(30),
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
