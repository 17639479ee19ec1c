//! Consumer checkpoints, written in the transaction of the rows they cover.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// Records that `consumer` has committed `events` events up to `stream_seq`.
pub async fn advance(
    tx: &mut PgConnection,
    consumer: &str,
    stream: &str,
    stream_seq: u64,
    events: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (consumer, stream, stream_seq, events_applied)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (consumer) DO UPDATE SET
             stream_seq = GREATEST(projection_checkpoints.stream_seq, EXCLUDED.stream_seq),
             events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
             updated_at = now()",
    )
    .bind(consumer)
    .bind(stream)
    .bind(i64::try_from(stream_seq).unwrap_or(i64::MAX))
    .bind(i64::try_from(events).unwrap_or(i64::MAX))
    .execute(tx)
    .await?;
    Ok(())
}

/// The committed position of `consumer`: (stream sequence, events applied).
pub async fn position(pool: &PgPool, consumer: &str) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT stream_seq, events_applied FROM projection_checkpoints WHERE consumer = $1",
    )
    .bind(consumer)
    .fetch_optional(pool)
    .await
}

/// Waits until `consumer` has committed up to stream sequence `seq`; `false` when
/// `timeout` passes first.
pub async fn wait_for(
    pool: &PgPool,
    consumer: &str,
    seq: u64,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let reached = position(pool, consumer)
            .await?
            .is_some_and(|(s, _)| u64::try_from(s).unwrap_or(0) >= seq);
        if reached {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
