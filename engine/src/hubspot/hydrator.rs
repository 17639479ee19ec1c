//! The hydrator: HubSpot webhooks are thin (one property, or just an id), so for
//! every record they mention it reads the whole record back with batch read —
//! coalescing the ids of a batch into one request per portal and object — and stores
//! the result as snapshot events. Raw events are acknowledged only after their
//! snapshots are stored; a portal without a connection is left to the thin events
//! (and the poller once connected).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::hubspot::snapshot::{api_type_of, properties_of, snapshot_event};
use crmsync_adapters::hubspot::webhook::WebhookEvent;
use crmsync_ingest::publish::publish_all;
use crmsync_schema::{binding, envelope::data_bytes, Change, Provider, Subjects, WorkspaceId};

use super::HubSpot;
use crate::topology::Topology;

pub const CONSUMER: &str = "hydrate-hubspot";

/// The hydrator's durable consumer: every raw HubSpot event.
pub fn consumer_config(topology: &Topology) -> pull::Config {
    pull::Config {
        durable_name: Some(CONSUMER.into()),
        name: Some(CONSUMER.into()),
        description: Some("crmsync hydrator of HubSpot webhooks".into()),
        filter_subject: format!("{}.raw.{}.>", topology.subjects.root(), Provider::HubSpot),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// (portal, object) → ids to read.
type Wanted = BTreeMap<(String, String), BTreeSet<String>>;

/// What a message asks the hydrator to read, if anything.
fn wanted(subjects: &Subjects, msg: &Message) -> Option<(String, String, String)> {
    let subject = subjects.parse_raw(&msg.subject).ok()?;
    api_type_of(subject.object.as_str())?;
    let event = binding::from_message(msg.headers.as_ref(), &msg.payload).ok()?;
    let change = Change::of_type(crmsync_schema::cloudevents::AttributesReader::ty(&event))?;
    if !matches!(
        change,
        Change::Created | Change::Updated | Change::Restored | Change::Merged
    ) {
        return None;
    }
    let data: WebhookEvent = serde_json::from_slice(&data_bytes(&event)).ok()?;
    let id = data
        .new_object_id
        .clone()
        .or_else(|| data.record_id().cloned())?
        .0;
    Some((
        subject.workspace.as_str().to_owned(),
        subject.object.as_str().to_owned(),
        id,
    ))
}

pub async fn run(
    hubspot: Arc<HubSpot>,
    js: jetstream::Context,
    topology: Topology,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(consumer_config(&topology), topology.events_stream())
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {CONSUMER}: {e}"))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("opening consumer {CONSUMER}: {e}"))?;
    let mut chunks = messages.ready_chunks(500);
    tracing::info!("hydrator started");
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => break,
            chunk = chunks.next() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let batch: Vec<Message> = chunk.into_iter().filter_map(Result::ok).collect();
        hydrate(&hubspot, &js, &topology.subjects, batch).await;
    }
    tracing::info!("hydrator stopped");
    Ok(())
}

async fn hydrate(
    hubspot: &HubSpot,
    js: &jetstream::Context,
    subjects: &Subjects,
    batch: Vec<Message>,
) {
    let mut groups: Wanted = BTreeMap::new();
    let mut members: BTreeMap<(String, String), Vec<Message>> = BTreeMap::new();
    for msg in batch {
        match wanted(subjects, &msg) {
            Some((portal, object, id)) => {
                groups
                    .entry((portal.clone(), object.clone()))
                    .or_default()
                    .insert(id);
                members.entry((portal, object)).or_default().push(msg);
            }
            None => {
                let _ = msg.ack().await;
            }
        }
    }
    for ((portal, object), ids) in groups {
        let msgs = members
            .remove(&(portal.clone(), object.clone()))
            .unwrap_or_default();
        match read_and_store(hubspot, js, subjects, &portal, &object, ids).await {
            Ok(()) => {
                for m in &msgs {
                    let _ = m.ack().await;
                }
            }
            Err(Outcome::Skip(reason)) => {
                tracing::info!(portal, object, reason, "not hydrated");
                for m in &msgs {
                    let _ = m.ack().await;
                }
            }
            Err(Outcome::Retry(reason)) => {
                tracing::warn!(portal, object, reason, "hydration failed; retrying later");
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
                }
            }
        }
    }
}

enum Outcome {
    /// Nothing to do for now (no connection, or one to be made again).
    Skip(String),
    /// A failure worth another try.
    Retry(String),
}

async fn read_and_store(
    hubspot: &HubSpot,
    js: &jetstream::Context,
    subjects: &Subjects,
    portal: &str,
    object: &str,
    ids: BTreeSet<String>,
) -> Result<(), Outcome> {
    let Some(workspace) = hubspot
        .workspace_of(portal)
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?
    else {
        return Err(Outcome::Skip("the portal has no active connection".into()));
    };
    let client = hubspot.client(&workspace).await.map_err(|e| {
        match e.downcast_ref::<crmsync_ingest::connections::ConnectionError>() {
            Some(crmsync_ingest::connections::ConnectionError::Transient(_)) | None => {
                Outcome::Retry(e.to_string())
            }
            Some(_) => Outcome::Skip(e.to_string()),
        }
    })?;
    let api_type = api_type_of(object).expect("filtered in wanted()");
    let ids: Vec<String> = ids.into_iter().collect();
    let records = client
        .batch_read(api_type, &ids, &properties_of(object))
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?;
    let portal_id = WorkspaceId::parse(portal).map_err(|e| Outcome::Skip(e.to_string()))?;
    let object_type =
        crmsync_schema::ObjectType::parse(object).map_err(|e| Outcome::Skip(e.to_string()))?;
    let events: Vec<_> = records
        .iter()
        .filter_map(|r| snapshot_event(&portal_id, &object_type, r))
        .collect();
    publish_all(js, subjects, &events)
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?;
    Ok(())
}
