//! The outbound dispatcher: one durable consumer per provider on `CRM_OUTBOUND`
//! pushes each call outcome to the CRM, exactly once across crashes.
//!
//! Before creating anything it looks the record up in the CRM by the command's
//! idempotency key (left in the record: HubSpot's call title, Zoho's call subject, a
//! marker in Odoo's message), so a repeat push, a redelivery after a crash between the
//! CRM's answer and the ack, or a restarted worker finds the record it made. The state
//! (`crm_call_pushes`) says queued, sent (with the CRM id), failed or dead-lettered;
//! the CRM id also goes out as a `crm.result` event. Retryable failures are left
//! unacknowledged for JetStream's BackOff schedule (the clients already retried 429s and 5xx within the call);
//! a failure no retry fixes, or the last delivery, goes to `CRM_DLQ` with its reason.

mod hubspot;
pub mod links;
mod odoo;
mod zoho;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, Message};
use cloudevents::{EventBuilder, EventBuilderV10};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::ProviderError;
use crmsync_ingest::calls::{Command, Target};
use crmsync_ingest::publish::publish_one;
use crmsync_schema::{
    binding, cloudevents, envelope::data_bytes, ObjectType, Provider, RemoteId, WorkspaceId,
};

use crate::topology::Topology;

/// Pushes one dispatcher runs at once.
const PARALLEL: usize = 4;

/// Why a push did not happen.
#[derive(Debug)]
pub enum PushError {
    /// Worth another delivery.
    Retry(String),
    /// No retry will help (an unknown contact, a refused record).
    Fail(String),
}

impl From<ProviderError> for PushError {
    fn from(e: ProviderError) -> Self {
        if e.kind.retryable() || e.kind == crmsync_adapters::ErrorKind::Unauthorized {
            PushError::Retry(e.to_string())
        } else {
            PushError::Fail(e.to_string())
        }
    }
}

impl From<anyhow::Error> for PushError {
    fn from(e: anyhow::Error) -> Self {
        PushError::Retry(format!("{e:#}"))
    }
}

/// Pushes commands for every provider whose connector this process has.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub hubspot: Option<Arc<crate::hubspot::HubSpot>>,
    pub zoho: Option<Arc<crate::zoho::Zoho>>,
    pub odoo: Option<Arc<crate::odoo::Odoo>>,
}

/// The provider account of a workspace's connection.
pub async fn account_of(
    pool: &PgPool,
    workspace: &str,
    provider: Provider,
) -> Result<String, PushError> {
    let account: Option<Option<String>> = sqlx::query_scalar(
        "SELECT account_id FROM crm_connections
         WHERE workspace_id = $1 AND provider = $2 AND status = 'active'",
    )
    .bind(workspace)
    .bind(provider.as_str())
    .fetch_optional(pool)
    .await
    .map_err(|e| PushError::Retry(e.to_string()))?;
    account.flatten().ok_or_else(|| {
        PushError::Fail(format!(
            "workspace {workspace} has no active {provider} connection"
        ))
    })
}

/// The CRM id of a contact: its `crm_id`, else the projected contact with that email
/// or phone.
pub async fn resolve_contact(
    pool: &PgPool,
    provider: Provider,
    account: &str,
    target: Option<&Target>,
) -> Result<Option<String>, PushError> {
    let Some(target) = target else {
        return Ok(None);
    };
    if let Some(id) = &target.crm_id {
        return Ok(Some(id.clone()));
    }
    let found: Option<String> = sqlx::query_scalar(
        "SELECT remote_id FROM contacts
         WHERE workspace_id = $1 AND provider = $2 AND NOT deleted AND merged_into IS NULL
           AND (lower(email) = lower($3) OR phone = $4 OR mobile_phone = $4)
         ORDER BY remote_id LIMIT 1",
    )
    .bind(account)
    .bind(provider.as_str())
    .bind(target.email.as_deref())
    .bind(target.phone.as_deref())
    .fetch_optional(pool)
    .await
    .map_err(|e| PushError::Retry(e.to_string()))?;
    match found {
        Some(id) => Ok(Some(id)),
        None => Err(PushError::Fail(format!(
            "no {provider} contact matches the call's email or phone"
        ))),
    }
}

/// A readable line for the CRM record.
pub fn title(command: &Command) -> String {
    let o = &command.outcome;
    let direction = if o.direction == "inbound" {
        "Inbound"
    } else {
        "Outbound"
    };
    format!("{direction} call: {}", o.disposition)
}

/// Summary and notes, as the record's body.
pub fn body_text(command: &Command) -> String {
    let o = &command.outcome;
    let mut parts: Vec<String> = [o.summary.clone(), o.notes.clone()]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if let Some(url) = &o.recording_url {
        parts.push(format!("Recording: {url}"));
    }
    parts.join("\n\n")
}

impl Dispatcher {
    /// Finds the command's record in the CRM by its key; after an attempt that may
    /// have created it (`settle`), looks a few times, as CRM search lags writes.
    async fn push(&self, command: &Command, settle: bool) -> Result<String, PushError> {
        if settle {
            // Redeliveries come after BackOff[0]; where that is shorter than a CRM's
            // search lag (a few seconds), wait out the rest before looking.
            let lag = Duration::from_secs(3).saturating_sub(self.topology.policy.retry_base);
            tokio::time::sleep(lag).await;
            if let Some(found) = self.find(command).await? {
                return Ok(found);
            }
        }
        self.create(command).await
    }

    async fn find(&self, command: &Command) -> Result<Option<String>, PushError> {
        match command.provider {
            Provider::HubSpot => match &self.hubspot {
                Some(hs) => hubspot::find(hs, command).await,
                None => Ok(None),
            },
            Provider::Zoho => match &self.zoho {
                Some(z) => zoho::find(z, command).await,
                None => Ok(None),
            },
            Provider::Odoo => match &self.odoo {
                Some(o) => odoo::find(o, command).await,
                None => Ok(None),
            },
        }
    }

    async fn create(&self, command: &Command) -> Result<String, PushError> {
        match command.provider {
            Provider::HubSpot => match &self.hubspot {
                Some(hs) => hubspot::push(hs, &self.pool, command).await,
                None => Err(PushError::Retry("this worker does not sync HubSpot".into())),
            },
            Provider::Zoho => match &self.zoho {
                Some(z) => zoho::push(z, &self.pool, command).await,
                None => Err(PushError::Retry("this worker does not sync Zoho".into())),
            },
            Provider::Odoo => match &self.odoo {
                Some(o) => odoo::push(o, &self.pool, command).await,
                None => Err(PushError::Retry("this worker does not sync Odoo".into())),
            },
        }
    }

    async fn set_state(
        &self,
        command: &Command,
        state: &str,
        crm_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE crm_call_pushes SET state = $4, crm_id = COALESCE($5, crm_id), reason = $6,
                    attempts = attempts + 1, updated_at = now()
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
               AND (state <> 'sent' OR $4 = 'sent')",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .bind(state)
        .bind(crm_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the CRM's id as a `crm.result` event.
    async fn result_event(&self, command: &Command, crm_id: &str) -> anyhow::Result<()> {
        let ws = WorkspaceId::parse(command.workspace.clone())?;
        let call = RemoteId::parse(command.call_id.clone())?;
        let mut event = EventBuilderV10::new()
            .id(format!("result-{}-{crm_id}", command.key))
            .source(format!(
                "/crmsync/{}/{}",
                command.provider,
                crmsync_schema::subject::escape_token(ws.as_str())
            ))
            .ty("crmsync.activity.pushed.v1")
            .subject(format!(
                "activity/{}",
                crmsync_schema::subject::escape_token(&command.call_id)
            ))
            .time(chrono::Utc::now())
            .build()?;
        let data = json!({"call_id": command.call_id, "workspace": command.workspace,
                          "provider": command.provider, "crm_id": crm_id, "key": command.key});
        event.set_data("application/json", serde_json::to_vec(&data)?);
        publish_one(
            &self.js,
            self.topology.subjects.result(
                command.provider,
                &ws,
                &ObjectType::parse("activity")?,
                &call,
            ),
            event,
            &format!("result:{}:{crm_id}", command.key),
        )
        .await?;
        Ok(())
    }

    async fn dead_letter(&self, msg: &Message, consumer: &str, reason: &str) {
        let subject = self.topology.subjects.dlq(consumer);
        if let Err(e) = crmsync_projectors::dlq::dead_letter(&self.js, subject, msg, reason).await {
            tracing::error!(error = %e, "dead-lettering a push failed; it will be redelivered");
            return;
        }
        let _ = msg.ack_with(AckKind::Term).await;
    }

    async fn handle(&self, msg: Message, consumer: &str, max_deliver: i64) {
        let command: Command = match binding::from_message(msg.headers.as_ref(), &msg.payload)
            .map_err(|e| e.to_string())
            .and_then(|e| serde_json::from_slice(&data_bytes(&e)).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(reason) => {
                self.dead_letter(&msg, consumer, &format!("unreadable command: {reason}"))
                    .await;
                return;
            }
        };
        // One worker at a time per (call, provider), across processes: a lease on
        // the push's row, renewed while it works, gone with a crashed worker.
        match self.lease(&command).await {
            Ok(Some((state, attempts))) => {
                self.handle_leased(&msg, &command, consumer, max_deliver, state, attempts)
                    .await;
                let _ = self.release(&command).await;
            }
            // Another worker has it now (or its state is out of reach): redelivered
            // later on the BackOff schedule if it still needs doing.
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "push state unreadable; retrying later"),
        }
    }

    /// Takes the push's lease; its state and attempts when taken.
    async fn lease(&self, command: &Command) -> Result<Option<(String, i32)>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE crm_call_pushes SET lease_until = now() + interval '30 seconds'
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
               AND (lease_until IS NULL OR lease_until < now())
             RETURNING state, attempts",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .fetch_optional(&self.pool)
        .await
    }

    async fn renew(&self, command: &Command) {
        let _ = sqlx::query(
            "UPDATE crm_call_pushes SET lease_until = now() + interval '30 seconds'
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .execute(&self.pool)
        .await;
    }

    async fn release(&self, command: &Command) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE crm_call_pushes SET lease_until = NULL
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn handle_leased(
        &self,
        msg: &Message,
        command: &Command,
        consumer: &str,
        max_deliver: i64,
        state: String,
        attempts: i32,
    ) {
        if state == "sent" {
            let _ = msg.ack().await;
            return;
        }
        // Keep the message ours while the CRM is slow: progress acks well inside the
        // ack wait (JetStream's BackOff[0]).
        let beat_every = (self.topology.policy.retry_base / 3)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let pushed = {
            let push = self.push(command, attempts > 0);
            tokio::pin!(push);
            let mut beat = tokio::time::interval(beat_every);
            beat.tick().await;
            loop {
                tokio::select! {
                    r = &mut push => break r,
                    _ = beat.tick() => {
                        let _ = msg.ack_with(AckKind::Progress).await;
                        self.renew(command).await;
                    }
                }
            }
        };
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        match pushed {
            Ok(crm_id) => {
                let stored = self.set_state(command, "sent", Some(&crm_id), None).await;
                let result = self.result_event(command, &crm_id).await;
                match (stored, result) {
                    (Ok(()), Ok(())) => {
                        let _ = msg.ack().await;
                    }
                    (s, r) => {
                        tracing::warn!(stored = ?s.err(), result = ?r.err(), "pushed, but not yet recorded; the redelivery will find the record");
                    }
                }
            }
            Err(PushError::Retry(reason)) if delivered < max_deliver => {
                tracing::info!(provider = %command.provider, delivered, reason, "push failed; JetStream will redeliver");
                let _ = self.set_state(command, "queued", None, Some(&reason)).await;
            }
            Err(PushError::Retry(reason)) => {
                tracing::warn!(provider = %command.provider, reason, "push dead-lettered after its last delivery");
                let _ = self
                    .set_state(command, "dead_lettered", None, Some(&reason))
                    .await;
                self.dead_letter(msg, consumer, &reason).await;
            }
            Err(PushError::Fail(reason)) => {
                tracing::warn!(provider = %command.provider, reason, "push failed for good");
                let _ = self.set_state(command, "failed", None, Some(&reason)).await;
                self.dead_letter(msg, consumer, &reason).await;
            }
        }
    }

    /// Consumes `provider`'s commands until stopped.
    pub async fn run(
        self: Arc<Self>,
        provider: Provider,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let config = self.topology.outbound_consumer(provider);
        let name = config.durable_name.clone().unwrap_or_default();
        let max_deliver = config.max_deliver;
        // A stream that is briefly missing (being recreated) is waited for, not fatal.
        let consumer: jetstream::consumer::PullConsumer = loop {
            match self
                .js
                .create_consumer_on_stream(config.clone(), self.topology.outbound_stream())
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, consumer = %name, "the dispatcher waits for its consumer");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        let mut messages = consumer
            .stream()
            // Few pulled ahead: a message waiting here gets no progress acks (and if
            // its ack wait passes, the lock and the state keep a second worker off).
            .max_messages_per_batch(PARALLEL)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("opening consumer {name}: {e}"))
            .context("outbound")?;
        tracing::info!(%provider, "outbound dispatcher started");
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let slot = tokio::select! {
                () = stop.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            };
            let next = tokio::select! {
                () = stop.cancelled() => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    let this = self.clone();
                    let name = name.clone();
                    running.spawn(async move {
                        this.handle(msg, &name, max_deliver).await;
                        drop(slot);
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "outbound consumer hiccup"),
                None => break,
            }
            while running.try_join_next().is_some() {}
        }
        // Pushes under way finish (bounded by the shutdown timeout); the rest are
        // redelivered.
        while running.join_next().await.is_some() {}
        tracing::info!(%provider, "outbound dispatcher stopped");
        Ok(())
    }
}
