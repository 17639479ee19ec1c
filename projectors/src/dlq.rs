//! Dead-lettering: a message that failed its last delivery is copied, with why it
//! failed, to the dead-letter stream before it is terminated, so it lives on
//! somewhere other than a log line.

use async_nats::jetstream::{self, Message};

pub const REASON: &str = "Crm-Dlq-Reason";
pub const ORIGINAL_SUBJECT: &str = "Crm-Dlq-Subject";
pub const ORIGINAL_STREAM: &str = "Crm-Dlq-Stream";
pub const ORIGINAL_SEQ: &str = "Crm-Dlq-Stream-Seq";
pub const CONSUMER: &str = "Crm-Dlq-Consumer";
pub const DELIVERIES: &str = "Crm-Dlq-Deliveries";

/// Copies `msg` to `subject` on the dead-letter stream and waits for the ack.
/// Dedupe by origin makes a repeated attempt harmless.
pub async fn dead_letter(
    js: &jetstream::Context,
    subject: String,
    msg: &Message,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let info = msg.info()?;
    let mut headers = msg.headers.clone().unwrap_or_default();
    // The original dedupe id must not make the DLQ drop the copy.
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dlq:{}:{}", info.stream, info.stream_sequence).as_str(),
    );
    let reason: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(500)
        .collect();
    headers.insert(REASON, reason.as_str());
    headers.insert(ORIGINAL_SUBJECT, msg.subject.as_str());
    headers.insert(ORIGINAL_STREAM, info.stream);
    headers.insert(ORIGINAL_SEQ, info.stream_sequence.to_string().as_str());
    headers.insert(CONSUMER, info.consumer);
    headers.insert(DELIVERIES, info.delivered.to_string().as_str());
    js.publish_with_headers(subject, headers, msg.payload.clone())
        .await?
        .await?;
    Ok(())
}
