//! `crmsync replay`: rebuild projections from the event stream into shadow tables and
//! swap them in atomically, while live projection goes on.
//!
//! 1. Each selected table gets an empty shadow, `<table>__replay` (`LIKE <table>
//!    INCLUDING ALL`).
//! 2. The events of the selected objects are read from `CRM_EVENTS` up to its last
//!    sequence when the replay started. They are mapped and merged exactly as the
//!    projectors do (the same `normalise` and `upsert`, per-field versions) and
//!    committed to the shadows in batches. `crm.result` events make pushed calls
//!    app-born activities, as the entity-link consumer does.
//! 3. Catch-up passes read what arrived meanwhile (at most ten). Then, in one
//!    transaction, each live table is locked (waiting at most 5 s, tried five times,
//!    catching up between tries), the last events are applied, the live table is
//!    dropped and the shadow renamed into its place, with the original index names.
//!    Live projectors wait for that lock, then write to the new table. An event they
//!    committed before the lock was read by the catch-up; any other is applied after
//!    the swap, and applying one twice changes nothing. A table whose columns changed
//!    meanwhile (a newer build migrated) is not swapped: the replay fails and can be
//!    run again.
//!
//! A replay only reads the stream and writes its shadows: it publishes nothing, so it
//! can never push to a CRM or call one. That is the fence around outbound side effects:
//! a mapping change replayed over history calls no CRM. Only one replay runs at a time
//! (a Postgres advisory lock).
//!
//! Scope: a partial replay builds only its records in the shadows and, under the
//! lock, replaces those records' rows in the live table; the rest of the table, and
//! whatever live projection writes to it meanwhile, is left alone. A record is in
//! scope by the rows an event writes, not by the event's subject (a merge writes the
//! loser's row from the winner's event).
//! - `--workspace W` rebuilds only the records of the CRM account W.
//! - `--from-seq N` / `--since T` rebuild only the records with events from that point
//!   on, each from its whole history. A record's state depends on every event it has
//!   had, so a partial replay is partial by record, never by event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};

use crmsync_projectors::mappings::{self, MappingSet};
use crmsync_projectors::tables::{self, RowKey, Table};
use crmsync_schema::binding;
use crmsync_schema::cloudevents::AttributesReader;
use crmsync_schema::subject::escape_token;
use crmsync_schema::{Change, FieldSet, Provider, RemoteId, Version, WorkspaceId};

use crate::topology::Topology;

/// The tables a replay can rebuild.
pub const TABLES: [Table; 4] = [
    Table::Contacts,
    Table::Companies,
    Table::Deals,
    Table::Activities,
];

/// Messages committed to the shadows per transaction.
const BATCH: usize = 2_000;
/// Catch-up passes stop when fewer events than this arrived during the last one; the
/// rest is applied under the lock.
const CATCH_UP_UNDER: u64 = 1_000;
/// Catch-up passes before taking the lock, at most.
const CATCH_UP_PASSES: usize = 10;
/// How long the swap waits for the live tables, and how often it tries.
const LOCK_WAIT: Duration = Duration::from_secs(5);
const LOCK_ATTEMPTS: usize = 5;
/// The advisory lock key of replays ("crmsync-replay").
pub const LOCK_KEY: i64 = 0x6372_6d73_7265_706c;

/// Where a partial replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The whole stream: every record is rebuilt.
    All,
    /// Records with events at or after this stream sequence.
    Seq(u64),
    /// Records with events stored at or after this time.
    Time(DateTime<Utc>),
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub tables: Vec<Table>,
    /// Only the records of this CRM account (the rows' `workspace_id`).
    pub workspace: Option<WorkspaceId>,
    pub start: Start,
}

/// Where a replay is, for progress output.
#[derive(Debug, Clone)]
pub struct Progress {
    pub phase: &'static str,
    pub events: u64,
    /// The events the phase will read at most (the stream's span).
    pub of: u64,
    pub rate: f64,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Events read and applied to the shadows.
    pub events: u64,
    /// Rows of each rebuilt table after the swap.
    pub rows: BTreeMap<&'static str, i64>,
    /// Records rebuilt from their events (the rest was copied).
    pub records_in_scope: Option<usize>,
    pub seconds: f64,
}

fn shadow(table: Table) -> String {
    format!("{}__replay", table.name())
}

/// Which records the replay rebuilds.
struct Scope {
    workspace: Option<WorkspaceId>,
    /// With a start point: the records (table, workspace, provider, id) touched since.
    records: Option<HashSet<(Table, RowKey)>>,
}

impl Scope {
    fn covers(&self, table: Table, key: &RowKey) -> bool {
        self.workspace.as_ref().is_none_or(|w| w == &key.0)
            && self
                .records
                .as_ref()
                .is_none_or(|r| r.contains(&(table, key.clone())))
    }
}

/// One stream message, read for the replay.
enum Item {
    /// A raw CRM change of a selected table's object.
    Raw {
        table: Table,
        rows: Vec<(RowKey, FieldSet)>,
    },
    /// A `crm.result` for a pushed call: (its record's key, the event).
    Result(RowKey, Box<crmsync_schema::cloudevents::Event>),
    /// Not for this replay (another object, unreadable, or an event the projectors
    /// dead-letter too).
    Skip,
}

struct Replayer<'a> {
    pool: &'a PgPool,
    js: &'a jetstream::Context,
    topology: &'a Topology,
    tables: Vec<Table>,
    scope: Scope,
    /// The field mappings as they stood when the replay began, and their revision.
    mappings: MappingSet,
    mappings_revision: i64,
    progress: &'a mut (dyn FnMut(&Progress) + Send + Sync),
    events: u64,
}

/// Rebuilds `options.tables` from the stream and swaps them in; see the module docs.
pub async fn replay(
    pool: &PgPool,
    js: &jetstream::Context,
    topology: &Topology,
    options: &ReplayOptions,
    progress: &mut (dyn FnMut(&Progress) + Send + Sync),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    anyhow::ensure!(!options.tables.is_empty(), "no table to replay");
    for table in &options.tables {
        anyhow::ensure!(
            TABLES.contains(table),
            "{} cannot be replayed",
            table.name()
        );
    }
    let mut guard = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *guard)
        .await?;
    anyhow::ensure!(locked, "another replay is running; wait for it to finish");
    let result = async {
        let mappings_revision = mappings::revision(pool).await?;
        let mappings = MappingSet::load(pool).await?;
        let mut replayer = Replayer {
            pool,
            js,
            topology,
            tables: options.tables.clone(),
            scope: Scope {
                workspace: options.workspace.clone(),
                records: None,
            },
            mappings,
            mappings_revision,
            progress,
            events: 0,
        };
        replayer.run(options.start, started).await
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *guard)
        .await;
    result
}

impl Replayer<'_> {
    async fn run(&mut self, start: Start, started: Instant) -> anyhow::Result<Report> {
        let until = self.last_sequence().await?;
        let mut report = Report::default();
        if start != Start::All {
            let records = self.touched_since(start, until).await?;
            report.records_in_scope = Some(records.len());
            self.scope.records = Some(records);
        }
        self.prepare_shadows().await?;
        let mut done = self.apply_range(1, until, "replay", None).await?;
        for table in &self.tables {
            sqlx::query(&format!("ANALYZE {}", shadow(*table)))
                .execute(self.pool)
                .await?;
        }
        let mut attempt = 0;
        let mut tx = loop {
            // Catch up with what arrived meanwhile, outside the lock, while it is a
            // lot (a bounded number of passes: the stream may never be still).
            for _ in 0..CATCH_UP_PASSES {
                let last = self.last_sequence().await?;
                if last.saturating_sub(done) < CATCH_UP_UNDER {
                    break;
                }
                done = self.apply_range(done + 1, last, "catch-up", None).await?;
            }
            match self.lock().await {
                Ok(tx) => break tx,
                Err(e) if attempt < LOCK_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "the live tables are busy; catching up and trying again");
                }
                Err(e) => return Err(e.context("the live tables could not be locked for the swap")),
            }
        };
        // A mapping written meanwhile reached the live projectors but not this
        // replay: swapping would revert its rows. (The share lock holds new writes
        // until the swap commits.)
        let now: i64 =
            sqlx::query_scalar("SELECT revision FROM crm_field_mappings_revision FOR SHARE")
                .fetch_one(&mut *tx)
                .await?;
        anyhow::ensure!(
            now == self.mappings_revision,
            "the field mappings changed during the replay (revision {} → {now}); run it again to apply them",
            self.mappings_revision
        );
        let last = self.last_sequence().await?;
        self.apply_range(done + 1, last, "swap", Some(&mut *tx))
            .await?;
        for table in self.sorted_tables() {
            same_columns(&mut tx, table).await?;
            if self.partial() {
                self.replace_in_scope(&mut tx, table).await?;
            } else {
                swap(&mut tx, table).await?;
            }
        }
        tx.commit().await?;
        for table in &self.tables {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name()))
                .fetch_one(self.pool)
                .await?;
            report.rows.insert(table.name(), n);
        }
        report.events = self.events;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// A transaction holding every live table of the replay, waiting at most
    /// `LOCK_WAIT` for them (readers and writers queue behind a waiting lock).
    async fn lock(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            LOCK_WAIT.as_millis()
        ))
        .execute(&mut *tx)
        .await?;
        for table in self.sorted_tables() {
            sqlx::query(&format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                table.name()
            ))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("SET LOCAL lock_timeout = 0")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Tables in one fixed order, so that two lockers never deadlock.
    fn sorted_tables(&self) -> Vec<Table> {
        let mut t = self.tables.clone();
        t.sort_by_key(|t| t.name());
        t.dedup();
        t
    }

    async fn last_sequence(&self) -> anyhow::Result<u64> {
        let mut stream = self
            .js
            .get_stream(self.topology.events_stream())
            .await
            .context("opening the events stream")?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// The subjects this replay reads: each table's raw events (of the workspace, if
    /// one is given) and, for activities, the results of pushes.
    fn filters(&self) -> Vec<String> {
        let root = self.topology.subjects.root();
        let ws = self
            .scope
            .workspace
            .as_ref()
            .map_or("*".to_owned(), |w| escape_token(w.as_str()));
        let mut out: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{root}.raw.*.{ws}.{}.*", t.object()))
            .collect();
        if self.tables.contains(&Table::Activities) {
            out.push(format!("{root}.result.*.*.activity.*"));
        }
        out
    }

    /// Reads the messages of this replay's subjects from `from` to `until`, in batches.
    async fn read(
        &self,
        from: u64,
        until: u64,
    ) -> anyhow::Result<Option<jetstream::consumer::pull::Ordered>> {
        if from > until {
            return Ok(None);
        }
        let stream = self.js.get_stream(self.topology.events_stream()).await?;
        let mut consumer: jetstream::consumer::Consumer<pull::OrderedConfig> = stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: self.filters(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await?;
        if consumer.info().await?.num_pending == 0 {
            return Ok(None);
        }
        Ok(Some(consumer.messages().await?))
    }

    /// Applies the range `from..=until` to the shadows: in batches of their own, or in
    /// `tx` (the swap's). Returns `until`.
    async fn apply_range(
        &mut self,
        from: u64,
        until: u64,
        phase: &'static str,
        mut tx: Option<&mut PgConnection>,
    ) -> anyhow::Result<u64> {
        let Some(mut messages) = self.read(from, until).await? else {
            return Ok(until.max(from.saturating_sub(1)));
        };
        let span = until + 1 - from;
        let started = Instant::now();
        let mut shown = Instant::now();
        let mut read = 0u64;
        let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
        // Batches of their own are written by a task of their own, one at a time and
        // in order, while the next batch is read and decoded here: a two-stage
        // pipeline, as in the projectors. In the swap's transaction they are written
        // in turn.
        let mut writing: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
        let outcome: anyhow::Result<()> = async {
            while let Some((message, last)) = next_until(&mut messages, until).await? {
                read += 1;
                batch.push(self.item(&message));
                if batch.len() >= BATCH {
                    let folded = fold(&mut batch);
                    match tx.as_deref_mut() {
                        Some(tx) => folded.write(tx).await?,
                        None => {
                            if let Some(previous) = writing.take() {
                                previous.await??;
                            }
                            writing = Some(tokio::spawn(folded.commit(self.pool.clone())));
                        }
                    }
                }
                let report = |read: u64| Progress {
                    phase,
                    events: read,
                    of: span,
                    rate: read as f64 / started.elapsed().as_secs_f64().max(1e-9),
                };
                if shown.elapsed() >= Duration::from_secs(1) {
                    shown = Instant::now();
                    (self.progress)(&report(read));
                }
                if last {
                    break;
                }
            }
            Ok(())
        }
        .await;
        // Whatever happened, no write is left running behind the caller's back.
        if let Some(previous) = writing.take() {
            let written = previous.await;
            if outcome.is_ok() {
                written??;
            }
        }
        outcome?;
        self.flush(&mut batch, tx).await?;
        self.events += read;
        (self.progress)(&Progress {
            phase,
            events: read,
            of: span,
            rate: read as f64 / started.elapsed().as_secs_f64().max(1e-9),
        });
        Ok(until)
    }

    fn item(&self, message: &Message) -> Item {
        let Ok(event) = binding::view(message.headers.as_ref(), &message.payload) else {
            return Item::Skip;
        };
        if let Ok(subject) = self.topology.subjects.parse_raw(&message.subject) {
            let Some(table) = Table::for_object(&subject.object) else {
                return Item::Skip;
            };
            if !self.tables.contains(&table) {
                return Item::Skip;
            }
            let version = Version::new(event.time_or_epoch(), &event.id);
            let Ok(mut normalised) = table.normalise(
                subject.provider,
                subject.object.as_str(),
                Change::of_type(&event.ty),
                &event.data,
                &version,
            ) else {
                return Item::Skip;
            };
            self.mappings
                .apply(table, &subject.workspace, subject.provider, &mut normalised);
            // One event may write several records (a merge, a Zoho deletion of many
            // ids): the scope is decided row by row.
            let rows: Vec<(RowKey, FieldSet)> = normalised
                .rows
                .into_iter()
                .map(|c| {
                    (
                        (subject.workspace.clone(), subject.provider, c.remote_id),
                        c.fields,
                    )
                })
                .filter(|(key, _)| self.scope.covers(table, key))
                .collect();
            return if rows.is_empty() {
                Item::Skip
            } else {
                Item::Raw { table, rows }
            };
        }
        // A push's result: the call's record is (account, provider, crm id).
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(account), Some(provider), Some(crm_id)) =
            (text("account"), text("provider"), text("crm_id"))
        else {
            return Item::Skip;
        };
        let (Ok(ws), Ok(provider), Ok(id)) = (
            WorkspaceId::parse(account),
            provider.parse::<Provider>(),
            RemoteId::parse(crm_id),
        ) else {
            return Item::Skip;
        };
        let key = (ws, provider, id);
        if !self.scope.covers(Table::Activities, &key) {
            return Item::Skip;
        }
        // Results are few: the whole event, as the entity-link consumer reads it.
        match binding::from_message(message.headers.as_ref(), &message.payload) {
            Ok(event) => Item::Result(key, Box::new(event)),
            Err(_) => Item::Skip,
        }
    }

    /// Commits a batch to the shadows: in `tx` when given, else in a transaction of
    /// its own.
    async fn flush(
        &self,
        batch: &mut Vec<Item>,
        tx: Option<&mut PgConnection>,
    ) -> anyhow::Result<()> {
        let folded = fold(batch);
        match tx {
            Some(tx) => folded.write(tx).await,
            None => folded.commit(self.pool.clone()).await,
        }
    }

    /// The records of the selected tables with events from `start` on (pass one of a
    /// partial replay).
    async fn touched_since(
        &mut self,
        start: Start,
        until: u64,
    ) -> anyhow::Result<HashSet<(Table, RowKey)>> {
        let from = match start {
            Start::All => 1,
            Start::Seq(n) => n.max(1),
            Start::Time(t) => {
                let stream = self.js.get_stream(self.topology.events_stream()).await?;
                let mut probe: jetstream::consumer::Consumer<pull::OrderedConfig> = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subjects: self.filters(),
                        deliver_policy: DeliverPolicy::ByStartTime {
                            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                                t.timestamp_nanos_opt().unwrap_or(0) as i128,
                            )?,
                        },
                        ..Default::default()
                    })
                    .await?;
                let info = probe.info().await?;
                if info.num_pending == 0 {
                    return Ok(HashSet::new());
                }
                let mut first = probe.messages().await?;
                match first.next().await {
                    Some(Ok(m)) => {
                        m.info()
                            .map_err(|e| anyhow::anyhow!("{e}"))?
                            .stream_sequence
                    }
                    _ => return Ok(HashSet::new()),
                }
            }
        };
        let mut records = HashSet::new();
        let Some(mut messages) = self.read(from, until).await? else {
            return Ok(records);
        };
        let mut read = 0u64;
        while let Some((message, last)) = next_until(&mut messages, until).await? {
            read += 1;
            match self.item(&message) {
                Item::Raw { table, rows } => {
                    records.extend(rows.into_iter().map(|(key, _)| (table, key)));
                }
                Item::Result(key, _) => {
                    records.insert((Table::Activities, key));
                }
                Item::Skip => {}
            }
            if last {
                break;
            }
        }
        (self.progress)(&Progress {
            phase: "scope",
            events: read,
            of: until + 1 - from,
            rate: 0.0,
        });
        Ok(records)
    }

    /// Creates the (empty) shadows.
    async fn prepare_shadows(&self) -> anyhow::Result<()> {
        for table in &self.tables {
            let (live, shadow) = (table.name(), shadow(*table));
            let mut tx = self.pool.begin().await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL)"
            ))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Whether the replay rebuilds a whole table or only some of its records.
    fn partial(&self) -> bool {
        self.scope.workspace.is_some() || self.scope.records.is_some()
    }

    /// A partial replay's end, under the lock: the live table's rows in scope are
    /// replaced by the shadow's; the rest of the live table is left as it is, with
    /// whatever live projection wrote to it meanwhile.
    async fn replace_in_scope(&self, tx: &mut PgConnection, table: Table) -> anyhow::Result<()> {
        let (live, shadow) = (table.name(), shadow(table));
        let mut conditions = Vec::new();
        if self.scope.workspace.is_some() {
            conditions.push("l.workspace_id = $1".to_owned());
        }
        if let Some(records) = &self.scope.records {
            sqlx::query(
                "CREATE TEMP TABLE IF NOT EXISTS replay_scope
                     (workspace_id text, provider text, remote_id text) ON COMMIT DROP",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query("TRUNCATE replay_scope")
                .execute(&mut *tx)
                .await?;
            let mut columns: [Vec<&str>; 3] = Default::default();
            for (t, (ws, provider, id)) in records {
                if *t == table {
                    columns[0].push(ws.as_str());
                    columns[1].push(provider.as_str());
                    columns[2].push(id.as_str());
                }
            }
            sqlx::query(
                "INSERT INTO replay_scope SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
            )
            .bind(&columns[0])
            .bind(&columns[1])
            .bind(&columns[2])
            .execute(&mut *tx)
            .await?;
            conditions.push(
                "EXISTS (SELECT 1 FROM replay_scope k WHERE k.workspace_id = l.workspace_id
                             AND k.provider = l.provider AND k.remote_id = l.remote_id)"
                    .to_owned(),
            );
        }
        let delete = format!("DELETE FROM {live} l WHERE {}", conditions.join(" AND "));
        let mut query = sqlx::query(&delete);
        if let Some(w) = &self.scope.workspace {
            query = query.bind(w.as_str());
        }
        query.execute(&mut *tx).await?;
        let columns = writable_columns(tx, live).await?;
        sqlx::query(&format!(
            "INSERT INTO {live} ({columns}) SELECT {columns} FROM {shadow}"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DROP TABLE {shadow}"))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// The columns of `table` that can be written (not generated), quoted, comma-separated.
async fn writable_columns(tx: &mut PgConnection, table: &str) -> anyhow::Result<String> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(column_name::text) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1
           AND is_generated = 'NEVER' ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    Ok(columns.join(", "))
}

/// A batch merged per row, ready to be written to the shadows.
#[derive(Default)]
struct Folded {
    rows: HashMap<Table, BTreeMap<RowKey, FieldSet>>,
    results: Vec<crmsync_schema::cloudevents::Event>,
}

/// Merges the changes of `batch` (emptied) per table and row.
fn fold(batch: &mut Vec<Item>) -> Folded {
    let mut folded = Folded::default();
    for item in batch.drain(..) {
        match item {
            Item::Raw {
                table,
                rows: changes,
            } => {
                let table_rows = folded.rows.entry(table).or_default();
                for (key, set) in changes {
                    table_rows.entry(key).or_default().merge(&set);
                }
            }
            Item::Result(_, event) => folded.results.push(*event),
            Item::Skip => {}
        }
    }
    folded
}

impl Folded {
    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.results.is_empty()
    }

    /// Writes to the shadows in `conn`.
    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        for (table, rows) in &self.rows {
            tables::upsert_into(conn, *table, &shadow(*table), rows).await?;
        }
        // After the CRM's changes: the app's fields win whatever the order.
        for event in self.results {
            let applied =
                crate::outbound::links::replay_result(conn, &shadow(Table::Activities), &event)
                    .await;
            if let Err(e) = applied {
                // As the entity-link consumer would have dead-lettered it.
                tracing::warn!(error = %e, event = %event.id(), "a push result skipped");
            }
        }
        Ok(())
    }

    /// Writes to the shadows in a transaction of its own.
    async fn commit(self, pool: PgPool) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut tx = pool.begin().await?;
        self.write(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The next message at or before `until`, and whether it is the last one of the range
/// (the range's end, or nothing more on the subjects); `None` past the range.
async fn next_until(
    messages: &mut pull::Ordered,
    until: u64,
) -> anyhow::Result<Option<(Message, bool)>> {
    let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .context("the events stream stopped answering")?;
    let Some(message) = next else {
        return Ok(None);
    };
    let message = message?;
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    if seq > until {
        return Ok(None);
    }
    Ok(Some((message, seq == until || pending == 0)))
}

/// Refuses to swap when the live table's columns changed since the shadow was made (a
/// newer build migrated meanwhile): the swap would lose them.
async fn same_columns(tx: &mut PgConnection, table: Table) -> anyhow::Result<()> {
    let columns = |name: String| {
        sqlx::query_scalar::<_, String>(
            "SELECT column_name::text || ' ' || data_type || ' ' || is_generated
             FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY 1",
        )
        .bind(name)
    };
    let live = columns(table.name().to_owned()).fetch_all(&mut *tx).await?;
    let shadow = columns(shadow(table)).fetch_all(&mut *tx).await?;
    anyhow::ensure!(
        live == shadow,
        "{} changed shape during the replay (a migration ran); run the replay again",
        table.name()
    );
    Ok(())
}

/// Puts `table`'s shadow in its place (the caller holds the lock), keeping the live
/// table's index names so later migrations find them.
async fn swap(tx: &mut PgConnection, table: Table) -> anyhow::Result<()> {
    let (live, shadow) = (table.name(), shadow(table));
    let indexes = |name: String| {
        sqlx::query_as::<_, (String, String)>(
            "SELECT indexname::text, regexp_replace(indexdef, '^.* USING ', '')
             FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1",
        )
        .bind(name)
    };
    let names: BTreeMap<String, String> = indexes(live.to_owned())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(name, def)| (def, name))
        .collect();
    let shadows = indexes(shadow.clone()).fetch_all(&mut *tx).await?;
    sqlx::query(&format!("DROP TABLE {live}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {live}"))
        .execute(&mut *tx)
        .await?;
    for (name, def) in shadows {
        if let Some(original) = names.get(&def) {
            let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
            sqlx::query(&format!(
                "ALTER INDEX {} RENAME TO {}",
                quote(&name),
                quote(original)
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}
