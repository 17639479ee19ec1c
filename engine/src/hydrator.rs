//! The hydrator: provider notifications are thin (HubSpot: one property or just an
//! id; Zoho: ids only), so for every record they mention it reads the whole record
//! back — coalescing the ids of a batch into one read per account and object — and
//! stores the result as snapshot events. Raw events are acknowledged only after their
//! snapshots are stored; an account without a connection is left to the thin events
//! (and the poller once connected).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crmsync_ingest::publish::publish_all;
use crmsync_schema::{Provider, RawEvent, Subjects};

use crate::topology::Topology;

/// A record a raw event asks to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The provider account (subject `<ws>` token).
    pub account: String,
    pub object: String,
    pub id: String,
}

/// Why a group of records was not read.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to do for now (no connection, or one to be made again).
    Skip(String),
    /// A failure worth another try.
    Retry(String),
    /// Not now: held back for a minute at a time (a CRM still refusing for its rate
    /// limits after the client's own retries).
    Later(String),
}

/// What a provider gives the hydrator.
pub trait Source: Send + Sync + 'static {
    const PROVIDER: Provider;

    /// What a raw event asks to read, if anything.
    fn wanted(&self, subjects: &Subjects, msg: &Message) -> Option<Wanted>;

    /// Reads `ids` of `object` in `account` and returns them as snapshot events.
    fn read(
        &self,
        account: &str,
        object: &str,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<RawEvent>, Outcome>> + Send;
}

/// The consumer's name for a provider.
pub fn consumer_name(provider: Provider) -> String {
    format!("hydrate-{provider}")
}

/// The hydrator's durable consumer: every raw event of the provider.
pub fn consumer_config(topology: &Topology, provider: Provider) -> pull::Config {
    let name = consumer_name(provider);
    pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(format!("crmsync hydrator of {provider} notifications")),
        filter_subject: format!("{}.raw.{provider}.>", topology.subjects.root()),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

pub async fn run<S: Source>(
    source: Arc<S>,
    js: jetstream::Context,
    topology: Topology,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let name = consumer_name(S::PROVIDER);
    let consumer: jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(
            consumer_config(&topology, S::PROVIDER),
            topology.events_stream(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {name}: {e}"))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("opening consumer {name}: {e}"))?;
    let mut chunks = messages.ready_chunks(500);
    tracing::info!(provider = %S::PROVIDER, "hydrator started");
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => break,
            chunk = chunks.next() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let batch: Vec<Message> = chunk.into_iter().filter_map(Result::ok).collect();
        hydrate(source.as_ref(), &js, &topology.subjects, batch).await;
    }
    tracing::info!(provider = %S::PROVIDER, "hydrator stopped");
    Ok(())
}

async fn hydrate<S: Source>(
    source: &S,
    js: &jetstream::Context,
    subjects: &Subjects,
    batch: Vec<Message>,
) {
    let mut groups: BTreeMap<(String, String), (BTreeSet<String>, Vec<Message>)> = BTreeMap::new();
    for msg in batch {
        match source.wanted(subjects, &msg) {
            Some(w) => {
                let group = groups.entry((w.account, w.object)).or_default();
                group.0.insert(w.id);
                group.1.push(msg);
            }
            None => {
                let _ = msg.ack().await;
            }
        }
    }
    for ((account, object), (ids, msgs)) in groups {
        let read = source
            .read(&account, &object, ids.into_iter().collect())
            .await;
        let stored = match read {
            Ok(events) => publish_all(js, subjects, &events)
                .await
                .map_err(|e| Outcome::Retry(e.to_string())),
            Err(e) => Err(e),
        };
        match stored {
            Ok(_) => {
                for m in &msgs {
                    let _ = m.ack().await;
                }
            }
            Err(Outcome::Skip(reason)) => {
                tracing::info!(provider = %S::PROVIDER, account, object, reason, "not hydrated");
                for m in &msgs {
                    let _ = m.ack().await;
                }
            }
            Err(Outcome::Later(reason)) => {
                tracing::debug!(provider = %S::PROVIDER, account, object, reason, "hydration held back");
                for m in &msgs {
                    let _ = m
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(60))))
                        .await;
                }
            }
            Err(Outcome::Retry(reason)) => {
                tracing::warn!(provider = %S::PROVIDER, account, object, reason, "hydration failed; retrying later");
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
                }
            }
        }
    }
}

/// How a failure to get a client is handled: a connection to be made again is
/// skipped, anything else retried.
pub fn client_outcome(e: anyhow::Error) -> Outcome {
    match e.downcast_ref::<crmsync_ingest::connections::ConnectionError>() {
        Some(crmsync_ingest::connections::ConnectionError::Transient(_)) | None => {
            Outcome::Retry(e.to_string())
        }
        Some(_) => Outcome::Skip(e.to_string()),
    }
}
