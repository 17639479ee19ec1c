//! `crmsync bench`: throughput and latency of the engine's paths, each printed beside
//! the raw ceiling measured in the same run on the same servers, so the ratio holds on
//! a noisy machine. Nothing here is asserted in a test.
//!
//! Runs against `NATS_URL` with its own subject prefix (its streams are deleted
//! afterwards) and against a scratch database `crmsync_bench` on the `DATABASE_URL`
//! server (recreated each run).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::hubspot::webhook::receive_batch;
use crmsync_adapters::Secret;
use crmsync_ingest::publish::publish_all;
use crmsync_projectors::checkpoint;
use crmsync_sandbox::hubspot::webhooks::{signed_headers, EventFactory, Signature};
use crmsync_schema::{Provider, RawEvent};

use crate::app::{Engine, Role};
use crate::config::Settings;
use crate::topology::Topology;

const SECRET: &str = "crmsync-bench-secret";
/// The URL webhooks are signed for (the engine rebuilds it from CRM_PUBLIC_URL).
const PUBLIC_URL: &str = "http://bench.crmsync.local";
const WEBHOOK: &str = "/crm/webhooks/hubspot";
const PORTAL: u64 = 777;
/// The advisory lock a `crmsync bench` holds while it runs (in [`lock_url`]'s
/// database; "crmsync-bench"): benches share their scratch database and streams.
pub const LOCK_KEY: i64 = 0x6372_6d73_6265_6e63;

/// Options of `crmsync bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// ingest, project, replay, e2e (1k events/s), e2e-10k, outbound, or all.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Events per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// One JSON object per scenario instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: only send `--events` webhooks to this URL at `--per-second`, then
    /// exit. The e2e scenarios start their sender this way, in a process of its own,
    /// so that the engine's memory and file descriptors are not the sender's.
    #[arg(long, hide = true, requires = "per_second")]
    pub send_to: Option<String>,
    /// Internal: the sender's pace (with `--send-to`).
    #[arg(long, hide = true, requires = "send_to")]
    pub per_second: Option<usize>,
}

/// One scenario's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub scenario: &'static str,
    pub events: usize,
    pub seconds: f64,
    pub rate: f64,
    pub ceiling_rate: Option<f64>,
    pub ratio: Option<f64>,
    /// Project only: a second bound, the rate at which the same messages can merely
    /// be pulled from JetStream and acknowledged (nothing decoded or written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consume_ceiling_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_mb: f64,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn figures(scenario: &'static str, events: usize, seconds: f64, ceiling: Option<f64>) -> Figures {
    let rate = events as f64 / seconds.max(1e-9);
    Figures {
        scenario,
        events,
        seconds,
        rate,
        ceiling_rate: ceiling,
        ratio: ceiling.map(|c| rate / c),
        consume_ceiling_rate: None,
        p50_ms: None,
        p99_ms: None,
        peak_rss_mb: peak_rss_mb(),
    }
}

/// `n` webhook events: property changes over `n / 4` contacts, at `at` ms onwards.
fn events(n: usize, at: i64) -> Vec<Value> {
    let mut f = EventFactory::new(PORTAL);
    (0..n).map(|i| event(&mut f, i, at)).collect()
}

/// Event `i` of [`events`], from a factory that made events `0..i` before it.
fn event(f: &mut EventFactory, i: usize, at: i64) -> Value {
    let contact = 1 + (i / 4) as u64;
    let name = ["email", "firstname", "lastname", "phone"][i % 4];
    f.property_change("contact", contact, at + i as i64, name, &format!("v{i}"))
}

/// Publishes [`events`] into the raw stream a slice at a time, so that the bench's
/// own copy of them does not count in the engine's peak memory; the last sequence.
async fn publish_events(
    js: &async_nats::jetstream::Context,
    subjects: &crmsync_schema::Subjects,
    n: usize,
    at: i64,
) -> anyhow::Result<u64> {
    let mut f = EventFactory::new(PORTAL);
    let mut last = 0;
    for start in (0..n).step_by(16_000) {
        let slice: Vec<Value> = (start..(start + 16_000).min(n))
            .map(|i| event(&mut f, i, at))
            .collect();
        for chunk in raw_events(&slice)?.chunks(1600) {
            last = last.max(publish_all(js, subjects, chunk).await?.last_sequence);
        }
    }
    Ok(last)
}

/// Starts a scenario's peak memory afresh, where Linux lets a process reset it.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn raw_events(values: &[Value]) -> anyhow::Result<Vec<RawEvent>> {
    Ok(receive_batch(&serde_json::to_vec(values)?)?.events)
}

async fn bench_settings(base: &Settings, prefix: &str) -> anyhow::Result<Settings> {
    let mut url = url::Url::parse(base.database_url.expose()).context("DATABASE_URL")?;
    url.set_path("/crmsync_bench");
    let mut s = base.clone();
    s.database_url = Secret::new(url.to_string());
    s.nats_prefix = Some(prefix.to_owned());
    s.port = 0;
    s.bind = std::net::Ipv4Addr::LOCALHOST.into();
    s.hubspot_client_secret = Some(Secret::new(SECRET.into()));
    s.hubspot_webhook_secret = None;
    s.public_url = Some(PUBLIC_URL.to_owned());
    Ok(s)
}

/// Where benches take their lock: the `postgres` database of `DATABASE_URL`'s server,
/// whose scratch database (`crmsync_bench`) they share.
fn lock_url(settings: &Settings) -> anyhow::Result<String> {
    let mut url = url::Url::parse(settings.database_url.expose()).context("DATABASE_URL")?;
    url.set_path("/postgres");
    Ok(url.to_string())
}

/// A scenario starts on nothing: its scratch database dropped and its streams
/// deleted, whatever an interrupted run left behind.
async fn fresh_database(settings: &Settings) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase;
    let url = settings.database_url.expose();
    if sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::force_drop_database(url).await?;
    }
    let js = async_nats::jetstream::new(crate::app::connect_nats(&settings.nats_url).await?);
    Topology::of(settings)?.delete(&js).await;
    Ok(())
}

/// A POST of `body` to the engine's HubSpot webhook at `url`, signed (v3) now for
/// the URL the engine rebuilds from `CRM_PUBLIC_URL`.
fn signed_post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    let signed = format!("{PUBLIC_URL}{WEBHOOK}");
    let now = Utc::now().timestamp_millis();
    let headers = signed_headers(Signature::V3, SECRET, &signed, &body, now);
    let mut request = http.post(url).body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request
}

/// Webhook batches of 100 over HTTP, 16 in flight, until JetStream acked all; beside
/// a raw publish of the same events with the same headers.
async fn ingest(base: &Settings, n: usize) -> anyhow::Result<Figures> {
    let settings = bench_settings(base, "bench_ingest").await?;
    fresh_database(&settings).await?;
    let engine = Engine::build(settings.clone(), Role::Api).await?;
    let url = format!("http://{}{WEBHOOK}", engine.local_addr());
    let js = engine.state.js.clone();
    let topology = engine.topology.clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(engine.run_until_stopped(stop.clone()));
    let values = events(n, Utc::now().timestamp_millis());
    let bodies: Vec<Vec<u8>> = values
        .chunks(100)
        .map(|c| serde_json::to_vec(c).expect("JSON"))
        .collect();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(bodies.iter())
        .map(|body| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let status = signed_post(&http, &url, body.clone())
                    .send()
                    .await?
                    .status();
                anyhow::ensure!(status.is_success(), "webhook answered {status}");
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    stop.cancel();
    running.await??;
    topology.delete(&js).await;

    // Ceiling: the same events, raw, into a stream of their own.
    let raw = Topology::new(
        Some("bench_raw"),
        1,
        settings.dedupe_window,
        settings.delivery_policy(),
    )?;
    raw.delete(&js).await;
    raw.ensure(&js).await?;
    let events = raw_events(&values)?;
    let started = Instant::now();
    for chunk in events.chunks(1600) {
        publish_all(&js, &raw.subjects, chunk).await?;
    }
    let ceiling = n as f64 / started.elapsed().as_secs_f64();
    raw.delete(&js).await;
    Ok(figures("ingest", n, seconds, Some(ceiling)))
}

/// Events already in the stream → Postgres; beside a raw batched UNNEST upsert of the
/// same rows.
async fn project(base: &Settings, n: usize) -> anyhow::Result<Figures> {
    let settings = bench_settings(base, "bench_project").await?;
    fresh_database(&settings).await?;
    let api = Engine::build(settings.clone(), Role::Api).await?;
    let js = api.state.js.clone();
    let pool = api.pool().clone();
    let topology = api.topology.clone();
    drop(api);
    let at = Utc::now().timestamp_millis();
    let last = publish_events(&js, &topology.subjects, n, at).await?;
    reset_peak_rss();
    let worker = Engine::build(settings.clone(), Role::Worker).await?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let consumer = Topology::projector_name(Provider::HubSpot);
    let done = checkpoint::wait_for(&pool, &consumer, last, Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(done, "the projection did not finish within 10 minutes");
    stop.cancel();
    running.await??;
    let peak = peak_rss_mb();
    let consume = raw_consume_rate(&js, &topology, n, settings.batch_size).await;
    topology.delete(&js).await;

    let ceiling = raw_upsert_rate(&pool, &events(n, at)).await?;
    let mut fig = figures("project", n, seconds, Some(ceiling));
    fig.peak_rss_mb = peak;
    fig.consume_ceiling_rate = Some(consume?);
    Ok(fig)
}

/// The raw ceiling of reading what projection reads: the same `n` messages pulled
/// by a durable consumer of the projector's settings, in pulls of the projector's
/// batch size, each acknowledged, nothing decoded or written; events per second.
/// Projection does this and the upsert on the same cores, so this bounds it too.
async fn raw_consume_rate(
    js: &async_nats::jetstream::Context,
    topology: &Topology,
    n: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let mut config = topology.projector_consumer(Provider::HubSpot);
    config.durable_name = Some("bench-raw-consume".to_owned());
    config.name = config.durable_name.clone();
    let consumer = js
        .create_consumer_on_stream(config, topology.events_stream())
        .await
        .context("creating the raw consumer")?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .context("pulling with the raw consumer")?;
    // Acknowledged a batch at a time in a task of its own, as the projector does,
    // while the next batch is read.
    let mut acking = tokio::task::JoinSet::new();
    let mut batch_in_hand = Vec::with_capacity(batch);
    for i in 0..n {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .context("the raw consumer waited 30 s for a message")?
            .context("the raw consumer's feed ended")?
            .context("the raw consumer's pull")?;
        batch_in_hand.push(msg);
        if batch_in_hand.len() == batch || i + 1 == n {
            let full = std::mem::replace(&mut batch_in_hand, Vec::with_capacity(batch));
            acking.spawn(async move {
                for msg in full {
                    msg.ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("raw ack: {e}"))?;
                }
                anyhow::Ok(())
            });
        }
    }
    while let Some(acked) = acking.join_next().await {
        acked??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The raw ceiling of projection: the rows the projector writes for `values` (the
/// adapter's fields and their versions), upserted with a plain `INSERT … SELECT FROM
/// UNNEST … ON CONFLICT` in batches of 500 events into a scratch copy of the contacts
/// table (its generated columns and indexes, so the same rows in the same shape);
/// events per second. Left out, as the engine's own work: decoding, the mappings'
/// revision check, the per-field merge function and the checkpoint.
async fn raw_upsert_rate(pool: &sqlx::PgPool, values: &[Value]) -> anyhow::Result<f64> {
    use crmsync_projectors::Table;
    use crmsync_schema::{FieldSet, Version};
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE bench_ceiling (LIKE contacts INCLUDING ALL)")
        .execute(pool)
        .await?;
    // The rows of each event, as the projector's decoding yields them.
    let mut changes: Vec<Vec<(String, FieldSet)>> = Vec::with_capacity(values.len());
    for event in raw_events(values)? {
        let version = Version::new(event.time, &event.event_id);
        let normalised = Table::Contacts.normalise(
            event.provider,
            event.object.as_str(),
            Some(event.change),
            &event.data,
            &version,
        )?;
        changes.push(
            normalised
                .rows
                .into_iter()
                .map(|r| (r.remote_id.as_str().to_owned(), r.fields))
                .collect(),
        );
    }
    let started = Instant::now();
    for chunk in changes.chunks(500) {
        // Folded per row first, as the projector does: one statement may not touch a
        // row twice.
        let mut rows: std::collections::BTreeMap<&str, FieldSet> =
            std::collections::BTreeMap::new();
        for (id, set) in chunk.iter().flatten() {
            rows.entry(id.as_str()).or_default().merge(set);
        }
        let ids: Vec<&str> = rows.keys().copied().collect();
        let fields: Vec<Value> = rows.values().map(|s| serde_json::json!(s.fields)).collect();
        let versions: Vec<Value> = rows
            .values()
            .map(|s| serde_json::json!(s.versions))
            .collect();
        let updated: Vec<Option<chrono::DateTime<Utc>>> =
            rows.values().map(FieldSet::latest_time).collect();
        let ws = vec![PORTAL.to_string(); rows.len()];
        let provider = vec!["hubspot"; rows.len()];
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bench_ceiling AS c
                 (workspace_id, provider, remote_id, fields, field_versions, source_updated_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[],
                                  $6::timestamptz[])
             ON CONFLICT (workspace_id, provider, remote_id) DO UPDATE SET
                 fields = c.fields || EXCLUDED.fields,
                 field_versions = c.field_versions || EXCLUDED.field_versions",
        )
        .bind(&ws)
        .bind(&provider)
        .bind(&ids)
        .bind(&fields)
        .bind(&versions)
        .bind(&updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(values.len() as f64 / started.elapsed().as_secs_f64())
}

/// Events already in the stream, rebuilt by `crmsync replay` into a shadow table and
/// swapped in; beside the raw upsert ceiling of the same rows.
#[allow(clippy::print_stderr)]
async fn replay(base: &Settings, n: usize) -> anyhow::Result<Figures> {
    use crate::replay::{replay, ReplayOptions, Start};
    use crmsync_projectors::Table;
    let settings = bench_settings(base, "bench_replay").await?;
    fresh_database(&settings).await?;
    let api = Engine::build(settings.clone(), Role::Api).await?;
    let (js, pool, topology) = (
        api.state.js.clone(),
        api.pool().clone(),
        api.topology.clone(),
    );
    drop(api);
    let at = Utc::now().timestamp_millis();
    publish_events(&js, &topology.subjects, n, at).await?;
    reset_peak_rss();
    let options = ReplayOptions {
        tables: vec![Table::Contacts],
        workspace: None,
        start: Start::All,
    };
    let started = Instant::now();
    let mut progress = |p: &crate::replay::Progress| {
        eprintln!(
            "bench: replay {}: {} of {} events, {:.0}/s",
            p.phase, p.events, p.of, p.rate
        );
    };
    let report = replay(&pool, &js, &topology, &options, &mut progress).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.events as usize == n,
        "the replay read {} of {n} events",
        report.events
    );
    let peak = peak_rss_mb();
    topology.delete(&js).await;
    let ceiling = raw_upsert_rate(&pool, &events(n, at)).await?;
    let mut fig = figures("replay", n, seconds, Some(ceiling));
    fig.peak_rss_mb = peak;
    Ok(fig)
}

/// Call outcomes pushed to the HubSpot emulator (HubSpot's own limit of 100 requests
/// per 10 s) through a connection allowed `CRM_SYNC_RPS` = 6 requests a second: the
/// rate is the API requests per second the emulator saw, the ceiling the allowance.
/// The 429s the emulator answered are printed beside (the target is none).
#[allow(clippy::print_stderr)]
async fn outbound(base: &Settings, n: usize) -> anyhow::Result<Figures> {
    use crmsync_sandbox::hubspot::{Config, HubSpotSandbox};
    // Two requests a push (the key's search, the create): 3 searches a second, under
    // the search limit (CRM_HUBSPOT_SEARCH_RPS, 4), so the connection's bucket sets
    // the pace.
    const RPS: f64 = 6.0;
    let (hs, running) = HubSpotSandbox::start(
        Config {
            contacts: 50,
            index_lag: Duration::ZERO,
            ..Config::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let mut settings = bench_settings(base, "bench_outbound").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (_, key) = crmsync_adapters::Vault::generate();
    settings.port = port;
    settings.public_url = Some(format!("http://127.0.0.1:{port}"));
    settings.api_token = Some(Secret::new(token.clone()));
    settings.encryption_key = Some(Secret::new(key));
    settings.hubspot_client_id = Some("hubspot-sandbox-client".into());
    settings.hubspot_client_secret = Some(Secret::new("hubspot-sandbox-secret".into()));
    settings.hubspot_api_url = running.base_url.clone();
    settings.hubspot_auth_url = running.base_url.clone();
    settings.sync_rps = RPS;
    settings.sync_burst = RPS;
    settings.poll_interval = Duration::from_secs(3600);
    fresh_database(&settings).await?;
    let engine = Engine::build(settings.clone(), Role::All).await?;
    let base_url = format!("http://{}", engine.local_addr());
    let (js, pool, topology) = (
        engine.state.js.clone(),
        engine.pool().clone(),
        engine.topology.clone(),
    );
    let metrics = engine.state.metrics.clone();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(engine.run_until_stopped(stop.clone()));

    // Connect: start → the emulator's consent → the callback.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut response = http
        .get(format!("{base_url}/crm/hubspot/start?workspace=bench"))
        .bearer_auth(&token)
        .send()
        .await?;
    while response.status().is_redirection() {
        let next = response.headers()["location"].to_str()?.to_owned();
        response = http.get(&next).send().await?;
    }
    anyhow::ensure!(
        response.status().is_success(),
        "connecting the emulator failed"
    );
    let api_token = hs.credentials(&running.base_url)["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let list: Value = http
        .get(format!(
            "{}/crm/v3/objects/contacts?limit=50",
            running.base_url
        ))
        .bearer_auth(&api_token)
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<String> = list["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!ids.is_empty(), "the emulator listed no contacts");

    // Quiet first, then every push at once; timed until the last is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = hs.faults().requests(|_| true);
    let started = Instant::now();
    for i in 0..n {
        let outcome = serde_json::json!({
            "workspace": "bench", "provider": "hubspot",
            "contact": {"crm_id": ids[i % ids.len()]},
            "started_at": Utc::now(), "duration_secs": 60, "direction": "outbound",
            "disposition": "connected", "summary": "bench",
        });
        let answer = http
            .post(format!("{base_url}/crm/calls/bench-{i}/push-to-crm"))
            .bearer_auth(&token)
            .json(&outcome)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().as_u16() == 202,
            "a push was refused: {}",
            answer.status()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(n as u64 * 2 + 120);
    loop {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM crm_call_pushes WHERE state = 'sent'")
                .fetch_one(&pool)
                .await?;
        if sent as usize >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{sent} of {n} pushes sent in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = hs.faults().requests(|_| true) - before;
    let refused: u64 = metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("crm_requests_total{") && l.contains(r#"status="429""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum();
    eprintln!("bench: outbound: {n} pushes, {requests} API requests in {seconds:.1}s, {refused} answered 429");
    stop.cancel();
    serving.await??;
    topology.delete(&js).await;
    drop(running);
    let mut fig = figures("outbound", requests, seconds, Some(RPS));
    fig.events = n;
    Ok(fig)
}

/// Webhook → visible in Postgres at `per_second` events a second (see
/// [`send_webhooks`]); latency is the row's projection time minus the time the event
/// was due to be sent.
async fn e2e(base: &Settings, n: usize, per_second: usize) -> anyhow::Result<Figures> {
    let settings = bench_settings(base, "bench_e2e").await?;
    fresh_database(&settings).await?;
    let engine = Engine::build(settings.clone(), Role::All).await?;
    let url = format!("http://{}{WEBHOOK}", engine.local_addr());
    let js = engine.state.js.clone();
    let pool = engine.pool().clone();
    let topology = engine.topology.clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(engine.run_until_stopped(stop.clone()));
    // The sender runs in a child process (`--send-to`), as webhooks come from outside.
    let exe = std::env::current_exe().context("finding the crmsync binary")?;
    let status = tokio::process::Command::new(exe)
        .args(["bench", "--send-to", &url])
        .args(["--events", &n.to_string()])
        .args(["--per-second", &per_second.to_string()])
        .stdin(std::process::Stdio::null())
        // stdout is the bench's figures; the sender's errors go to stderr.
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("starting the webhook sender")?;
    anyhow::ensure!(status.success(), "the webhook sender failed ({status})");
    let consumer = Topology::projector_name(Provider::HubSpot);
    let last = n as u64;
    let done = checkpoint::wait_for(&pool, &consumer, last, Duration::from_secs(120)).await?;
    anyhow::ensure!(done, "the projection did not catch up within 2 minutes");
    // From the first event sent to the last one projected (the start of the
    // transaction that wrote it), both by the rows' times.
    let (p50, p99, seconds): (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                extract(epoch FROM max(projected_at) - min(source_updated_at))::float8
         FROM (SELECT projected_at, source_updated_at,
                      extract(epoch FROM projected_at - source_updated_at) * 1000 AS ms
               FROM contacts) l",
    )
    .fetch_one(&pool)
    .await?;
    let seconds = seconds.context("no row was projected")?;
    stop.cancel();
    running.await??;
    topology.delete(&js).await;
    let name = if per_second >= 10_000 {
        "e2e-10k"
    } else {
        "e2e"
    };
    let mut fig = figures(name, n, seconds, None);
    fig.p50_ms = p50;
    fig.p99_ms = p99;
    Ok(fig)
}

/// Requests the e2e sender has in flight at most, as a CRM's webhook sender keeps
/// to a few connections (HubSpot caps its concurrent requests per app) rather than
/// opening one per event.
const SENDER_CONNECTIONS: usize = 32;

/// The e2e scenarios' sender: `n` events, `per_second` a second in ticks of a
/// millisecond, each stamped with the time it is due. Each request carries the
/// events due and not yet sent, up to 100, as HubSpot batches them; with at most
/// [`SENDER_CONNECTIONS`] requests in flight, events that find them all busy wait
/// here, and their wait counts in the latency. At 1,000 a second that is one event
/// a request. Fails if any request is refused.
async fn send_webhooks(url: &str, n: usize, per_second: usize) -> anyhow::Result<()> {
    use std::sync::Arc;
    use tokio::sync::{mpsc, Mutex};
    let http = reqwest::Client::new();
    let (due, queue) = mpsc::unbounded_channel::<Value>();
    let queue = Arc::new(Mutex::new(queue));
    let senders: Vec<_> = (0..SENDER_CONNECTIONS)
        .map(|_| {
            let (http, url, queue) = (http.clone(), url.to_owned(), Arc::clone(&queue));
            tokio::spawn(async move {
                let (mut refused, mut first) = (0usize, None::<String>);
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut queue = queue.lock().await;
                        match queue.recv().await {
                            Some(event) => batch.push(event),
                            None => break,
                        }
                        while batch.len() < 100 {
                            match queue.try_recv() {
                                Ok(event) => batch.push(event),
                                Err(_) => break,
                            }
                        }
                    }
                    let body = serde_json::to_vec(&batch).expect("JSON");
                    let why = match signed_post(&http, &url, body).send().await {
                        Ok(r) if r.status().is_success() => continue,
                        Ok(r) => format!("answered {}", r.status()),
                        Err(e) => format!("not sent: {e}"),
                    };
                    refused += batch.len();
                    first.get_or_insert(why);
                }
                (refused, first)
            })
        })
        .collect();
    let mut f = EventFactory::new(PORTAL);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let per_tick = (per_second / 1000).max(1);
    for i in 0..n {
        if i % per_tick == 0 {
            tick.tick().await;
        }
        let now = Utc::now().timestamp_millis();
        let event = f.property_change("contact", 1 + i as u64, now, "email", "x@y.z");
        due.send(event).context("the senders stopped")?;
    }
    drop(due);
    let mut refused = 0;
    let mut first = None;
    for s in senders {
        let (r, why) = s.await?;
        refused += r;
        if first.is_none() {
            first = why;
        }
    }
    if let Some(why) = first {
        anyhow::bail!("{refused} of {n} events were refused; the first refusal: {why}");
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
pub async fn run(settings: Settings, opts: BenchOptions) -> anyhow::Result<()> {
    if let Some(url) = &opts.send_to {
        let per_second = opts.per_second.unwrap_or(1_000);
        return send_webhooks(url, opts.events, per_second).await;
    }
    let scenarios: Vec<&str> = match opts.scenario.as_str() {
        "all" => vec!["ingest", "project", "replay", "e2e", "e2e-10k", "outbound"],
        s @ ("ingest" | "project" | "replay" | "e2e" | "e2e-10k" | "outbound") => vec![s],
        other => anyhow::bail!(
            "--scenario must be ingest, project, replay, e2e, e2e-10k, outbound or all (got {other:?})"
        ),
    };
    // Held to the end: the connection closing lets go of the lock.
    let _lock = {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&lock_url(&settings)?)
            .await
            .context("connecting to DATABASE_URL's server")?;
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        anyhow::ensure!(
            free,
            "another `crmsync bench` is running on this database (benches share their scratch \
             database and streams): wait for it to finish"
        );
        conn
    };
    if !opts.json {
        println!(
            "{:<8} {:>8} {:>9} {:>12} {:>12} {:>6} {:>8} {:>8} {:>8}",
            "scenario",
            "events",
            "seconds",
            "events/s",
            "ceiling/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "RSS MB"
        );
    }
    for scenario in scenarios {
        eprintln!("bench: {scenario} with {} events…", opts.events);
        // Each scenario's own peak where Linux lets a process reset VmHWM; else the
        // figure is the peak so far.
        reset_peak_rss();
        let f = match scenario {
            "ingest" => ingest(&settings, opts.events).await?,
            "project" => project(&settings, opts.events).await?,
            "replay" => replay(&settings, opts.events).await?,
            "e2e" => e2e(&settings, opts.events.min(10_000), 1_000).await?,
            "e2e-10k" => e2e(&settings, opts.events.min(50_000), 10_000).await?,
            _ => outbound(&settings, (opts.events / 100).clamp(10, 200)).await?,
        };
        if opts.json {
            println!("{}", serde_json::to_string(&f)?);
        } else {
            let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |x| format!("{x:.p$}"));
            println!(
                "{:<8} {:>8} {:>9.2} {:>12.0} {:>12} {:>6} {:>8} {:>8} {:>8.1}",
                f.scenario,
                f.events,
                f.seconds,
                f.rate,
                opt(f.ceiling_rate, 0),
                opt(f.ratio, 2),
                opt(f.p50_ms, 1),
                opt(f.p99_ms, 1),
                f.peak_rss_mb
            );
            if let Some(consume) = f.consume_ceiling_rate {
                println!(
                    "{:<8} raw JetStream pull + ack of the same messages: {consume:.0} events/s \
                     (ratio to it {:.2})",
                    "",
                    f.rate / consume
                );
            }
        }
    }
    Ok(())
}
