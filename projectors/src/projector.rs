//! A provider's projection: one durable consumer reads all of the provider's raw
//! events and projects each into every table it concerns (its object's table, and the
//! links), in one transaction per batch.

use std::borrow::Borrow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::{self, AckKind, Message};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire as _, PgConnection, PgPool, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::telemetry::{ConsumerLabels, EntityLabels, SyncedLabels};
use crmsync_adapters::Metrics;
use crmsync_adapters::{Retraction, Unlink};
use crmsync_schema::{binding, Change, FieldSet, Provider, Subjects, Version, WorkspaceId};

use crate::mappings::{MappingSet, Mappings};
use crate::tables::{self, RowKey, Table};
use crate::{checkpoint, dlq};

/// How long a batch's write may take before its connection is given up.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How a projector consumes.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// The provider whose events it projects.
    pub provider: Provider,
    /// The tables it projects into: an event concerns its object's table (if listed)
    /// and the tables that read every object (links).
    pub tables: Vec<Table>,
    /// The durable consumer's name, also the checkpoint's key.
    pub consumer: String,
    /// The stream it reads.
    pub stream: String,
    /// Messages fetched and committed together, at most.
    pub batch: usize,
    /// How long a batch short of `batch`, taken from a backlog, waits for more
    /// messages before it is committed (live traffic, a few messages at a time, does
    /// not wait).
    pub linger: Duration,
    /// The consumer's MaxDeliver: at this delivery a failing message is dead-lettered.
    /// Earlier failures are left unacknowledged, so the consumer's BackOff schedule
    /// spaces the retries.
    pub max_deliver: i64,
    /// The consumer's ack wait: held messages are kept in progress well within it.
    pub ack_wait: Duration,
}

impl ProjectorConfig {
    pub fn new(
        provider: Provider,
        tables: impl Into<Vec<Table>>,
        consumer: impl Into<String>,
        stream: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            tables: tables.into(),
            consumer: consumer.into(),
            stream: stream.into(),
            batch: 500,
            linger: Duration::from_millis(5),
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Projects one provider's events from a durable pull consumer into Postgres.
#[derive(Debug)]
pub struct Projector {
    config: ProjectorConfig,
    consumer_config: pull::Config,
    js: jetstream::Context,
    pool: PgPool,
    subjects: Subjects,
    metrics: Arc<Metrics>,
    mappings: Mappings,
    /// The connection commits run on, kept between batches, and when it was taken.
    conn: tokio::sync::Mutex<Option<(PoolConnection<Postgres>, Instant)>>,
    /// A leaked copy of the consumer name, for metric labels (one per projector).
    label: &'static str,
}

/// A message with what it decoded to.
struct Decoded {
    msg: Message,
    seq: u64,
    delivered: i64,
    outcome: Result<Outcome, String>,
    lag: Option<f64>,
    /// How long decoding took.
    took: Duration,
    /// When it was received or last kept in progress.
    kept: Instant,
}

/// What a decoded message asks of the tables.
#[derive(Debug, Default)]
struct Outcome {
    rows: Vec<(Table, RowKey, FieldSet)>,
    retractions: Vec<(WorkspaceId, Provider, Retraction)>,
    unlinks: Vec<(WorkspaceId, Provider, Unlink)>,
    /// The tables it counts for in the metrics: its object's, and any it changes.
    touched: Vec<Table>,
}

/// Why a held batch was not committed.
enum Held {
    /// Postgres refused the data itself.
    Refused(sqlx::Error),
    /// A stop was asked for; the messages are left for redelivery.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("Postgres is unavailable: {0}")]
    Transient(sqlx::Error),
    #[error("the batch was refused: {0}")]
    Data(sqlx::Error),
}

fn classify(e: sqlx::Error) -> BatchError {
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // Connection, transaction rollback, resources, operator intervention, system
        // errors; a read-only server (failover), lock not available, permissions:
        // none of them is the event's fault.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|p| c.starts_with(p))
                || ["25006", "55P03", "42501"].contains(&c.as_ref())
        }),
        _ => false,
    };
    if transient {
        BatchError::Transient(e)
    } else {
        BatchError::Data(e)
    }
}

impl Projector {
    pub fn new(
        config: ProjectorConfig,
        consumer_config: pull::Config,
        js: jetstream::Context,
        pool: PgPool,
        subjects: Subjects,
        metrics: Arc<Metrics>,
    ) -> Self {
        let label = Box::leak(config.consumer.clone().into_boxed_str());
        Self {
            config,
            consumer_config,
            js,
            pool,
            subjects,
            metrics,
            mappings: Mappings::default(),
            conn: tokio::sync::Mutex::new(None),
            label,
        }
    }

    /// Consumes until `stop` is cancelled; the batch in hand is finished first, and
    /// what was fetched but not committed is left for redelivery. When the consumer's
    /// message feed ends (NATS restarted, consumer or stream deleted), it is opened
    /// again, creating the consumer anew if needed, with growing delays.
    pub async fn run(self, stop: CancellationToken) -> Result<(), async_nats::Error> {
        let this = Arc::new(self);
        tracing::info!(consumer = %this.config.consumer, "projector started");
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            match this.open().await {
                Ok(messages) => {
                    failures = 0;
                    this.consume(messages, &stop).await;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(consumer = %this.config.consumer, error = %e, failures, "cannot open the consumer; retrying");
                }
            }
            let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(consumer = %this.config.consumer, "projector stopped");
        Ok(())
    }

    async fn open(&self) -> Result<pull::Stream, async_nats::Error> {
        let consumer: PullConsumer = self
            .js
            .create_consumer_on_stream(self.consumer_config.clone(), &self.config.stream)
            .await?;
        Ok(consumer
            .stream()
            .max_messages_per_batch(self.config.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?)
    }

    /// Consumes in a two-stage pipeline. Messages are decoded here as they arrive,
    /// while the batch before them commits in a task of its own (on the other core
    /// when there is one); batches are committed one at a time and in order. Once a
    /// batch is committed the next may start, while its task still acknowledges it.
    ///
    /// Every message delivered is in hand or in the commit, so none ages unseen: when
    /// a commit runs long (Postgres unavailable) the stream is drained, bounded by the
    /// consumer's MaxAckPending; whatever waits longer than a third of the ack wait,
    /// here or in the commit, is kept in progress. An outage spends no delivery and
    /// sends no message to MaxDeliver.
    async fn consume(self: &Arc<Self>, mut messages: pull::Stream, stop: &CancellationToken) {
        enum Step {
            Stop,
            Tick,
            /// The batch in commit is past its commit (`true`: its task goes on to
            /// acknowledge), or ended before (`false`: it panicked, or stopped).
            Committed(bool),
            Lingered,
            /// Boxed: a message is large, and this happens once a chunk.
            Message(Box<Option<Result<Message, pull::MessagesError>>>),
        }
        let batch = self.config.batch.max(1);
        // Progress is sent well within the ack wait, to every message waiting longer
        // than a tick; a commit running for a quarter of it counts as held.
        let tick = self.progress_tick();
        let held_after = self.config.ack_wait / 4;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: VecDeque<Decoded> = VecDeque::new();
        let mut committing: Option<Committing> = None;
        // Tasks past their commit, still acknowledging.
        let mut acking: Vec<JoinHandle<()>> = Vec::new();
        let mut linger_until: Option<tokio::time::Instant> = None;
        let mut last_full = false;
        let mut ended = false;
        loop {
            if committing.is_none() && !pending.is_empty() {
                // Linger: each commit costs a few round trips and a WAL flush, so
                // while there is a backlog a batch short of its size waits a little
                // for more. A backlog shows as many messages in hand, or as a full
                // batch before; live traffic comes a few messages at a time and is
                // committed at once, so its latency is not lengthened.
                let backlog = last_full || pending.len() >= (batch / 4).clamp(1, 64);
                let now = tokio::time::Instant::now();
                let until = *linger_until.get_or_insert(now + self.config.linger);
                let short = pending.len() < batch;
                if !(short && backlog && !ended && now < until) {
                    let cut: Vec<Decoded> = pending.drain(..pending.len().min(batch)).collect();
                    last_full = cut.len() == batch;
                    linger_until = None;
                    let this = Arc::clone(self);
                    let stop = stop.clone();
                    let (committed, done) = oneshot::channel();
                    let task =
                        tokio::spawn(async move { this.process(cut, &stop, committed).await });
                    committing = Some(Committing {
                        done,
                        task,
                        since: Instant::now(),
                    });
                }
            }
            if ended && pending.is_empty() && committing.is_none() {
                break;
            }
            let held = committing
                .as_ref()
                .is_some_and(|c| c.since.elapsed() >= held_after);
            // Two batches ahead at most, unless a commit is held: then everything.
            let room = |pending: &VecDeque<Decoded>| held || pending.len() < 2 * batch;
            let lingering = committing.is_none() && linger_until.is_some();
            let step = tokio::select! {
                biased;
                () = stop.cancelled() => Step::Stop,
                committed = finished(&mut committing) => Step::Committed(committed),
                _ = ticker.tick() => Step::Tick,
                () = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if lingering => Step::Lingered,
                item = messages.next(), if room(&pending) && !ended => Step::Message(Box::new(item)),
            };
            let mut item = match step {
                Step::Stop => break,
                Step::Committed(false) => {
                    // Its task is joined now, so a panic goes on before any later
                    // batch commits.
                    if let Some(c) = committing.take() {
                        join(c.task).await;
                    }
                    continue;
                }
                Step::Committed(true) => {
                    // The next batch may commit while this one is acknowledged.
                    for task in std::mem::take(&mut acking) {
                        if task.is_finished() {
                            join(task).await;
                        } else {
                            acking.push(task);
                        }
                    }
                    acking.extend(committing.take().map(|c| c.task));
                    continue;
                }
                Step::Lingered => continue,
                Step::Tick => {
                    // By age, not only while a commit is held: a backlog drained
                    // during an outage may take a while to commit once it is over.
                    let now = Instant::now();
                    for d in pending.iter_mut() {
                        if now.saturating_duration_since(d.kept) >= tick {
                            keep_in_progress([&*d]).await;
                            d.kept = now;
                        }
                    }
                    continue;
                }
                Step::Message(item) => *item,
            };
            // This message and every one already buffered behind it, while there is
            // room: one pass of the loop per chunk, not per message.
            loop {
                match item {
                    Some(Ok(msg)) => {
                        let d = self.decode(msg);
                        if held {
                            keep_in_progress([&d]).await;
                        }
                        pending.push_back(d);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %self.config.consumer, error = %e, "pull consumer");
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
                if !room(&pending) {
                    break;
                }
                match messages.next().now_or_never() {
                    Some(next) => item = next,
                    None => break,
                }
            }
        }
        // The batch in hand is finished; what waits is left for redelivery.
        acking.extend(committing.take().map(|c| c.task));
        for task in acking {
            join(task).await;
        }
        if ended {
            tracing::warn!(consumer = %self.config.consumer, "message feed ended; reopening");
        }
    }

    /// How often waiting messages are kept in progress: every third of the ack wait.
    fn progress_tick(&self) -> Duration {
        (self.config.ack_wait / 3).max(Duration::from_millis(10))
    }

    fn decode(&self, msg: Message) -> Decoded {
        let started = Instant::now();
        let (seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let mut lag = None;
        let outcome = (|| {
            let subject = self
                .subjects
                .parse_raw(&msg.subject)
                .map_err(|e| e.to_string())?;
            let event =
                binding::view(msg.headers.as_ref(), &msg.payload).map_err(|e| e.to_string())?;
            let time = event.time_or_epoch();
            lag = Some((Utc::now() - time).num_milliseconds().max(0) as f64 / 1000.0);
            let version = Version::new(time, &event.id);
            let change = Change::of_type(&event.ty);
            let object = subject.object.as_str();
            let mut outcome = Outcome::default();
            for &table in &self.config.tables {
                let own = match table.object_filter() {
                    Some(other) if other != object => continue,
                    filter => filter.is_some(),
                };
                let normalised = table
                    .normalise(subject.provider, object, change, &event.data, &version)
                    .map_err(|e| format!("{}: {e}", table.name()))?;
                if own
                    || !normalised.rows.is_empty()
                    || !normalised.retractions.is_empty()
                    || !normalised.unlinks.is_empty()
                {
                    outcome.touched.push(table);
                }
                outcome.rows.extend(normalised.rows.into_iter().map(|c| {
                    (
                        table,
                        (subject.workspace.clone(), subject.provider, c.remote_id),
                        c.fields,
                    )
                }));
                outcome.retractions.extend(
                    normalised
                        .retractions
                        .into_iter()
                        .map(|r| (subject.workspace.clone(), subject.provider, r)),
                );
                outcome.unlinks.extend(
                    normalised
                        .unlinks
                        .into_iter()
                        .map(|u| (subject.workspace.clone(), subject.provider, u)),
                );
            }
            Ok(outcome)
        })();
        Decoded {
            msg,
            seq,
            delivered,
            outcome,
            lag,
            took: started.elapsed(),
            kept: started,
        }
    }

    /// Commits `items` on the projector's connection, kept between batches (a pooled
    /// connection is pinged each time it is lent; this one is not) and given back
    /// once it is older than the pool's `max_lifetime`. After an error it goes back
    /// to the pool, which tests it before lending it again. A write that outlasts
    /// [`COMMIT_TIMEOUT`] (a connection that died silently would wait for TCP to
    /// give up, many minutes) closes the connection and counts as transient.
    async fn commit(&self, items: &[&Decoded]) -> Result<(), BatchError> {
        let mut held = self.conn.lock().await;
        let expired = held.as_ref().is_some_and(|(_, since)| {
            self.pool
                .options()
                .get_max_lifetime()
                .is_some_and(|lifetime| since.elapsed() >= lifetime)
        });
        if expired {
            *held = None;
        }
        let conn = match held.as_mut() {
            Some((conn, _)) => conn,
            None => {
                let conn = self.pool.acquire().await.map_err(classify)?;
                &mut held.insert((conn, Instant::now())).0
            }
        };
        let written = tokio::time::timeout(COMMIT_TIMEOUT, self.write(conn, items)).await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                *held = None;
                Err(classify(e))
            }
            Err(_) => {
                // Mid-statement: closed, not given back. Should the statement still
                // commit, applying it again on retry changes no row.
                if let Some((conn, _)) = held.take() {
                    drop(conn.detach());
                }
                Err(BatchError::Transient(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {COMMIT_TIMEOUT:?}"),
                ))))
            }
        }
    }

    async fn write(&self, conn: &mut PgConnection, items: &[&Decoded]) -> sqlx::Result<()> {
        let advance = checkpoint::Advance {
            consumer: &self.config.consumer,
            stream: &self.config.stream,
            stream_seq: items.iter().map(|d| d.seq).max().unwrap_or(0),
            events: items.len() as u64,
        };
        let outcomes = || outcomes(items);
        let removes_links = outcomes().any(|o| !o.retractions.is_empty() || !o.unlinks.is_empty());
        if !removes_links && outcomes().all(|o| o.rows.is_empty()) {
            // Events that touch no table (Zoho's change notices, which only name
            // ids for the hydrator): the checkpoint alone.
            return checkpoint::advance(conn, &advance).await;
        }
        let one_statement = !removes_links
            && !outcomes()
                .flat_map(|o| o.rows.iter())
                .any(|(t, _, _)| *t == Table::Activities);
        if !one_statement {
            // The activities rule reads before it writes, and retractions update
            // rows an upsert may insert: a transaction of separate statements. The
            // mappings' revision is read under READ COMMITTED, as each statement
            // would read it in a transaction: a mapping committed before this
            // applies.
            let (_, mappings) = self.mappings.current(&mut *conn).await?;
            let tables = map(items, &mappings);
            return self
                .write_in_transaction(conn, items, tables, &advance)
                .await;
        }
        // Upserts only: one statement, which writes only if the mappings they were
        // mapped with are still current (`upsert_with_checkpoint`). So they are read
        // again only when they moved, not in a round trip before each batch.
        let (mut revision, mut mappings) = self.mappings.last_read(&mut *conn).await?;
        loop {
            let tables: Vec<(Table, BTreeMap<RowKey, FieldSet>)> = map(items, &mappings)
                .into_iter()
                .map(|(table, mapped)| (table, fold(mapped)))
                .collect();
            if tables::upsert_with_checkpoint(conn, &tables, &advance, revision).await? {
                return Ok(());
            }
            // A mapping was written since they were read: map with it.
            let refused = revision;
            (revision, mappings) = self.mappings.current(&mut *conn).await?;
            if revision == refused {
                // Refused at the revision that is current: not a mapping's doing, and
                // trying again at once would only repeat it. Held and retried.
                return Err(sqlx::Error::Protocol(format!(
                    "the batch statement wrote nothing at the mappings' current revision {revision}"
                )));
            }
        }
    }

    /// [`Self::write`]'s transaction of separate statements.
    async fn write_in_transaction(
        &self,
        conn: &mut PgConnection,
        items: &[&Decoded],
        tables: Vec<(Table, Vec<(RowKey, FieldSet)>)>,
        advance: &checkpoint::Advance<'_>,
    ) -> sqlx::Result<()> {
        let outcomes = || outcomes(items);
        let mut tx = conn.begin().await?;
        for (table, mut mapped) in tables {
            if table == Table::Activities {
                mapped = tables::rule_activities(&mut tx, mapped).await?;
            }
            tables::upsert(&mut tx, table, &fold(mapped)).await?;
        }
        tables::retract_all(&mut tx, outcomes().flat_map(|o| o.retractions.iter())).await?;
        tables::unlink_all(&mut tx, outcomes().flat_map(|o| o.unlinks.iter())).await?;
        checkpoint::advance(&mut tx, advance).await?;
        tx.commit().await
    }

    /// Commits `decoded`, says so through `committed`, then acknowledges what was
    /// committed and fails the rest.
    async fn process(
        &self,
        decoded: Vec<Decoded>,
        stop: &CancellationToken,
        committed_tx: oneshot::Sender<()>,
    ) {
        let started = Instant::now();
        let (good, mut bad): (Vec<&Decoded>, Vec<(&Decoded, String)>) = {
            let mut good = Vec::new();
            let mut bad = Vec::new();
            for d in &decoded {
                match &d.outcome {
                    Ok(_) => good.push(d),
                    Err(reason) => bad.push((d, reason.clone())),
                }
            }
            (good, bad)
        };
        let mut committed: Vec<&Decoded> = Vec::new();
        let committing = Instant::now();
        match self.commit_holding(&good, stop).await {
            Ok(()) => committed = good,
            Err(Held::Stopped) => return,
            Err(Held::Refused(e)) => {
                // Find the culprits: each message alone.
                tracing::warn!(consumer = %self.config.consumer, error = %e, "batch refused; isolating");
                for d in good {
                    match self.commit_holding(&[d], stop).await {
                        Ok(()) => committed.push(d),
                        Err(Held::Stopped) => break,
                        Err(Held::Refused(e)) => bad.push((d, e.to_string())),
                    }
                }
            }
        }
        let committing = committing.elapsed();
        let _ = committed_tx.send(());
        let acking = Instant::now();
        for d in &committed {
            if let Err(e) = d.msg.ack().await {
                tracing::debug!(error = %e, "ack not sent; the message will be redelivered and skipped");
            }
        }
        tracing::debug!(
            consumer = %self.config.consumer,
            events = committed.len(),
            decode_us = decoded.iter().map(|d| d.took).sum::<Duration>().as_micros() as u64,
            commit_us = committing.as_micros() as u64,
            ack_us = acking.elapsed().as_micros() as u64,
            "batch committed"
        );
        self.record(&committed, started);
        for (d, reason) in bad {
            self.fail(d, &reason).await;
        }
    }

    fn record(&self, committed: &[&Decoded], started: Instant) {
        if committed.is_empty() {
            return;
        }
        let provider = self.config.provider.as_str();
        let took = started.elapsed().as_secs_f64();
        for table in &self.config.tables {
            let of_table = committed
                .iter()
                .filter(|d| d.outcome.as_ref().is_ok_and(|o| o.touched.contains(table)));
            let count = of_table.clone().count();
            if count == 0 {
                continue;
            }
            let entity = EntityLabels {
                provider,
                entity_type: table.object(),
            };
            self.metrics
                .sync_duration
                .get_or_create(&entity)
                .observe(took);
            self.metrics
                .entities_synced
                .get_or_create(&SyncedLabels {
                    provider,
                    entity_type: table.object(),
                    direction: "inbound",
                })
                .inc_by(count as u64);
            let freshness = self.metrics.projection_freshness.get_or_create(&entity);
            for lag in of_table.filter_map(|d| d.lag) {
                freshness.observe(lag);
            }
        }
    }

    fn count_error(&self, error_type: &'static str, operation: &'static str) {
        self.metrics
            .errors
            .get_or_create(&crmsync_adapters::telemetry::ErrorLabels {
                provider: self.config.provider.as_str(),
                error_type,
                operation,
                code: "",
            })
            .inc();
    }

    /// A message that could not be projected: left unacknowledged so the consumer's
    /// BackOff redelivers it later, or dead-lettered at its last delivery.
    async fn fail(&self, d: &Decoded, reason: &str) {
        self.count_error("poison", "project");
        if d.delivered < self.config.max_deliver {
            tracing::info!(consumer = %self.config.consumer, seq = d.seq, delivered = d.delivered, reason, "event not projected; it will be redelivered");
            return;
        }
        let subject = self.subjects.dlq(&self.config.consumer);
        match dlq::dead_letter(&self.js, subject, &d.msg, reason).await {
            Ok(()) => {
                tracing::warn!(consumer = %self.config.consumer, seq = d.seq, reason, "dead-lettered");
                self.metrics
                    .dead_lettered
                    .get_or_create(&ConsumerLabels {
                        consumer: self.label,
                    })
                    .inc();
                let _ = d.msg.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                // The server's max-deliveries advisory still reaches the DLQ stream.
                tracing::error!(consumer = %self.config.consumer, seq = d.seq, error = %e, "could not dead-letter");
            }
        }
    }

    /// Commits `items`, holding on to them while Postgres is unavailable: the
    /// messages are kept in progress (so no delivery is spent and none reaches
    /// MaxDeliver because of an outage) and the commit is retried with growing delays
    /// until it succeeds, the batch itself is refused, or a stop is asked for.
    async fn commit_holding(
        &self,
        items: &[&Decoded],
        stop: &CancellationToken,
    ) -> Result<(), Held> {
        let tick = self.progress_tick();
        let mut delay = Duration::from_millis(100);
        let mut next_try = Instant::now();
        loop {
            if Instant::now() >= next_try {
                // An attempt may hang (Postgres unreachable, the pool waiting for a
                // connection): the batch is kept in progress meanwhile too.
                let attempt = self.commit(items);
                tokio::pin!(attempt);
                let result = loop {
                    tokio::select! {
                        result = &mut attempt => break result,
                        () = tokio::time::sleep(tick) => keep_in_progress(items).await,
                    }
                };
                match result {
                    Ok(()) => return Ok(()),
                    Err(BatchError::Data(e)) => return Err(Held::Refused(e)),
                    Err(BatchError::Transient(e)) => {
                        self.count_error("transient", "project");
                        tracing::warn!(consumer = %self.config.consumer, error = %e, retry_in = ?delay, "batch not committed; holding it until Postgres is back");
                        next_try = Instant::now() + delay;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Err(Held::Stopped),
                () = tokio::time::sleep(tick) => {}
            }
            keep_in_progress(items).await;
        }
    }
}

/// What `items` decoded to, where they could be decoded.
fn outcomes<'a>(items: &'a [&'a Decoded]) -> impl Iterator<Item = &'a Outcome> + 'a {
    items.iter().filter_map(|item| item.outcome.as_ref().ok())
}

/// The rows of `items`, mapped and grouped by table, tables in the order of their
/// names and rows in key order: concurrent workers, and a replay's swap (which
/// locks whole tables by name), lock in the same order.
fn map(items: &[&Decoded], mappings: &MappingSet) -> Vec<(Table, Vec<(RowKey, FieldSet)>)> {
    let mut order = Table::ALL;
    order.sort_by_key(|t| t.name());
    let mut tables = Vec::new();
    for table in order {
        let mapped: Vec<(RowKey, FieldSet)> = outcomes(items)
            .flat_map(|o| o.rows.iter())
            .filter(|(t, _, _)| *t == table)
            .map(|(_, key, fields)| {
                let fields = match mappings.get(table, &key.0, key.1) {
                    Some(compiled) => compiled.apply(fields),
                    None => fields.clone(),
                };
                (key.clone(), fields)
            })
            .collect();
        if !mapped.is_empty() {
            tables.push((table, mapped));
        }
    }
    tables
}

/// Folds a table's changes per row, in key order.
fn fold(mapped: Vec<(RowKey, FieldSet)>) -> BTreeMap<RowKey, FieldSet> {
    let mut rows: BTreeMap<RowKey, FieldSet> = BTreeMap::new();
    for (key, set) in mapped {
        rows.entry(key).or_default().merge(&set);
    }
    rows
}

/// Tells JetStream that `items` are still being worked on: their ack wait starts
/// again, and no delivery is spent on them.
async fn keep_in_progress<'a, D: Borrow<Decoded> + 'a>(items: impl IntoIterator<Item = &'a D>) {
    for d in items {
        let _ = d.borrow().msg.ack_with(AckKind::Progress).await;
    }
}

/// A batch being committed.
struct Committing {
    /// Says (or, dropped, ends) when the commit is over.
    done: oneshot::Receiver<()>,
    task: JoinHandle<()>,
    since: Instant,
}

/// Resolves when the batch in flight is past its commit (`true`), or its task ended
/// before (`false`: it panicked, or stopped); never when there is none.
async fn finished(committing: &mut Option<Committing>) -> bool {
    match committing {
        Some(c) => (&mut c.done).await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Waits for a batch's task to end. A panic in it goes on in the consuming task, as
/// when commits ran there.
async fn join(task: JoinHandle<()>) {
    match task.await {
        Ok(()) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => tracing::error!(error = %e, "a projection commit was cancelled"),
    }
}
