//! Publishing raw events to JetStream: all of a batch in flight at once, then every
//! acknowledgement awaited.

use std::future::IntoFuture;

use futures::future::join_all;

use crmsync_schema::{binding, RawEvent, Subjects};

/// What JetStream said of a published batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub stored: usize,
    /// Already in the stream (same `Nats-Msg-Id` within the duplicate window).
    pub duplicates: usize,
    /// The highest stream sequence among the batch's events.
    pub last_sequence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event could not be encoded: {0}")]
    Encode(#[from] binding::BindingError),
    #[error("JetStream did not store the event: {0}")]
    NotStored(String),
}

/// Publishes `events` and returns once JetStream has stored every one of them.
pub async fn publish_all(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    events: &[RawEvent],
) -> Result<Published, PublishError> {
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let mut msg = binding::to_binary(event.to_cloudevent())?;
        msg.headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            event.dedupe_key().as_str(),
        );
        let ack = js
            .publish_with_headers(event.subject(subjects), msg.headers, msg.payload.into())
            .await
            .map_err(|e| PublishError::NotStored(e.to_string()))?;
        pending.push(ack);
    }
    let mut published = Published::default();
    for ack in join_all(pending.into_iter().map(|f| f.into_future())).await {
        let ack = ack.map_err(|e| PublishError::NotStored(e.to_string()))?;
        published.last_sequence = published.last_sequence.max(ack.sequence);
        if ack.duplicate {
            published.duplicates += 1;
        } else {
            published.stored += 1;
        }
    }
    Ok(published)
}

/// Publishes one CloudEvent (or command) on `subject` with `msg_id` as its dedupe id;
/// returns once JetStream stored it (`true`) or knew it already (`false`).
pub async fn publish_one(
    js: &async_nats::jetstream::Context,
    subject: String,
    event: crmsync_schema::cloudevents::Event,
    msg_id: &str,
) -> Result<bool, PublishError> {
    let mut msg = binding::to_binary(event)?;
    msg.headers
        .insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    let ack = js
        .publish_with_headers(subject, msg.headers, msg.payload.into())
        .await
        .map_err(|e| PublishError::NotStored(e.to_string()))?
        .await
        .map_err(|e| PublishError::NotStored(e.to_string()))?;
    Ok(!ack.duplicate)
}
