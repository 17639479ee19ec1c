//! Consumer checkpoints, written in the transaction of the rows they cover (or in
//! their statement: `tables::upsert_with_checkpoint`).

use std::time::Duration;

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres};

/// A consumer's progress, as one commit records it.
#[derive(Debug)]
pub struct Advance<'a> {
    pub consumer: &'a str,
    pub stream: &'a str,
    /// The highest stream sequence the commit covers.
    pub stream_seq: u64,
    /// How many events it applied.
    pub events: u64,
}

impl Advance<'_> {
    /// Binds the four parameters of [`sql`].
    pub(crate) fn bind<'q>(
        &self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(self.consumer.to_owned())
            .bind(self.stream.to_owned())
            .bind(i64::try_from(self.stream_seq).unwrap_or(i64::MAX))
            .bind(i64::try_from(self.events).unwrap_or(i64::MAX))
    }
}

/// The checkpoint's upsert, its four parameters numbered from `$first`; `condition`
/// (a `WHERE` clause, or nothing) is put on the row it inserts.
pub(crate) fn sql(first: usize, condition: &str) -> String {
    let [consumer, stream, seq, events] = [0, 1, 2, 3].map(|i| format!("${}", first + i));
    format!(
        "INSERT INTO projection_checkpoints (consumer, stream, stream_seq, events_applied)
         SELECT {consumer}::text, {stream}::text, {seq}::bigint, {events}::bigint{condition}
         ON CONFLICT (consumer) DO UPDATE SET
             stream_seq = GREATEST(projection_checkpoints.stream_seq, EXCLUDED.stream_seq),
             events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
             updated_at = now()"
    )
}

/// Records `advance` on `tx`: in its transaction, or alone.
pub async fn advance(tx: &mut PgConnection, advance: &Advance<'_>) -> Result<(), sqlx::Error> {
    advance.bind(sqlx::query(&sql(1, ""))).execute(tx).await?;
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
