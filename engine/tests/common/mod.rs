//! A whole engine per test: its own Postgres database and its own NATS prefix (so its
//! own streams) on the real servers, listening on a free loopback port.
#![allow(dead_code)]

pub mod events;
pub mod hubspot;
pub mod odoo;
pub mod zoho;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crmsync_engine::topology::Topology;
use crmsync_engine::{Engine, Role, Settings};
use crmsync_projectors::checkpoint;
use crmsync_sandbox::hubspot::webhooks::{signed_headers, Signature};
use crmsync_schema::Provider;

pub const SECRET: &str = "test-client-secret-0123456789";
pub const PUBLIC_URL: &str = "https://crm.example.test";
pub const WEBHOOK_PATH: &str = "/crm/webhooks/hubspot";

pub struct TestEngine {
    pub addr: SocketAddr,
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub settings: Settings,
    pub http: reqwest::Client,
    /// The HubSpot connector, when the engine syncs HubSpot.
    pub hubspot: Option<std::sync::Arc<crmsync_engine::hubspot::HubSpot>>,
    /// The Zoho connector, when the engine syncs Zoho.
    pub zoho: Option<std::sync::Arc<crmsync_engine::zoho::Zoho>>,
    /// The Odoo connector, when the engine syncs Odoo.
    pub odoo: Option<std::sync::Arc<crmsync_engine::odoo::Odoo>>,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The environment of a test engine, with `overrides` on top.
pub async fn test_env(overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", crmsync_testkit::fresh_database().await),
        ("NATS_URL", crmsync_testkit::nats_url()),
        ("PORT", "0".into()),
        ("CRM_BIND", "127.0.0.1".into()),
        ("CRM_NATS_PREFIX", crmsync_testkit::unique_name()),
        ("CRM_HUBSPOT_CLIENT_SECRET", SECRET.into()),
        ("CRM_PUBLIC_URL", PUBLIC_URL.into()),
        ("CRM_SHUTDOWN_TIMEOUT_SECS", "5".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub fn settings_from(env: &HashMap<String, String>) -> Settings {
    Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings are valid")
}

impl TestEngine {
    pub async fn start(overrides: &[(&str, &str)]) -> Self {
        Self::start_role(Role::All, overrides).await
    }

    pub async fn start_role(role: Role, overrides: &[(&str, &str)]) -> Self {
        Self::start_env(role, &test_env(overrides).await).await
    }

    /// An engine on `env` (from [`test_env`]), e.g. to share it with a process.
    pub async fn start_env(role: Role, env: &HashMap<String, String>) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let settings = settings_from(env);
        let engine = Engine::build(settings.clone(), role)
            .await
            .expect("engine builds");
        let addr = engine.local_addr();
        let pool = engine.pool().clone();
        let topology = engine.topology.clone();
        let js = engine.state.js.clone();
        let hubspot = engine.hubspot();
        let zoho = engine.zoho();
        let odoo = engine.odoo();
        let stop = CancellationToken::new();
        let handle = Some(tokio::spawn(engine.run_until_stopped(stop.clone())));
        Self {
            addr,
            pool,
            js,
            topology,
            settings,
            http: reqwest::Client::new(),
            hubspot,
            zoho,
            odoo,
            stop,
            handle,
        }
    }

    /// Stops the engine (as a killed worker would, mid-work) and starts it again on
    /// the same database, streams and port.
    pub async fn restart(mut self) -> Self {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        let settings = self.settings.clone();
        let engine = Engine::build(settings.clone(), Role::All)
            .await
            .expect("engine builds again");
        let stop = CancellationToken::new();
        let restarted = Self {
            addr: engine.local_addr(),
            pool: engine.pool().clone(),
            js: engine.state.js.clone(),
            topology: engine.topology.clone(),
            settings,
            http: reqwest::Client::new(),
            hubspot: engine.hubspot(),
            zoho: engine.zoho(),
            odoo: engine.odoo(),
            stop: stop.clone(),
            handle: Some(tokio::spawn(engine.run_until_stopped(stop))),
        };
        std::mem::forget(self);
        restarted
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts `body` to the HubSpot webhook, signed as HubSpot would for `PUBLIC_URL`.
    pub async fn post_webhook(&self, signature: Signature, body: &[u8]) -> reqwest::Response {
        let uri = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
        let headers = signed_headers(signature, SECRET, &uri, body, Utc::now().timestamp_millis());
        self.post_with(WEBHOOK_PATH, &headers, body).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.expect("the engine answers")
    }

    /// How many messages the events stream holds.
    pub async fn events_in_stream(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(self.topology.events_stream())
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until the HubSpot projector has committed up to `seq`.
    pub async fn wait_projected(&self, seq: u64) {
        let consumer = Topology::projector_name(Provider::HubSpot);
        let reached = checkpoint::wait_for(&self.pool, &consumer, seq, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(reached, "projection did not reach sequence {seq}");
    }

    /// Posts a signed webhook batch, expects 200 and returns the stream sequence of
    /// its last event.
    pub async fn post_events(&self, signature: Signature, events: &[Value]) -> u64 {
        let response = self
            .post_webhook(signature, &serde_json::to_vec(events).unwrap())
            .await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        answer["last_sequence"].as_u64().unwrap()
    }

    /// Replays in-process, with no progress output.
    pub async fn replay(
        &self,
        options: &crmsync_engine::replay::ReplayOptions,
    ) -> crmsync_engine::replay::Report {
        crmsync_engine::replay::replay(&self.pool, &self.js, &self.topology, options, &mut |_| {})
            .await
            .expect("the replay runs")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("engine task").expect("engine stops cleanly");
        }
        self.topology.delete(&self.js).await;
    }
}

/// The topology of the engines on `env` (for its stream and bucket names).
pub fn topology_of(env: &HashMap<String, String>) -> Topology {
    Topology::of(&settings_from(env)).unwrap()
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Contact rows of a workspace as JSON, in key order, without bookkeeping columns.
pub async fn contact_rows(pool: &PgPool, workspace: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT to_jsonb(c) - 'projected_at' FROM contacts c
         WHERE workspace_id = $1 ORDER BY provider, remote_id",
    )
    .bind(workspace)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// How a synced copy differs from the source, record by record.
pub fn differences<R: PartialEq + std::fmt::Debug>(
    want: &std::collections::BTreeMap<String, R>,
    have: &std::collections::BTreeMap<String, R>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, row) in want {
        match have.get(id) {
            None => out.push(format!("missing {id}")),
            Some(h) if h != row => out.push(format!("{id}: want {row:?}, have {h:?}")),
            _ => {}
        }
    }
    for id in have.keys().filter(|id| !want.contains_key(*id)) {
        out.push(format!("extra {id}"));
    }
    out
}

/// A loopback port free now, for an engine whose public URL must be known up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An engine as its own process (`crmsync serve --role ...`), killed with SIGKILL
/// when dropped. Its log goes to a temporary file, printed by [`EngineProcess::log`].
pub struct EngineProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl EngineProcess {
    /// A process of `role` on `env`, logging to a file named by `name`.
    pub fn start(role: &str, env: &HashMap<String, String>, name: &str) -> Self {
        let log = std::env::temp_dir().join(format!(
            "crmsync-{role}-{}-{name}.log",
            env["CRM_NATS_PREFIX"]
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_crmsync"))
            .args(["serve", "--role", role])
            .envs(env)
            .env("RUST_LOG", "warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        EngineProcess { child, log }
    }

    /// A worker on a port of its own choosing.
    pub fn worker(env: &HashMap<String, String>, n: usize) -> Self {
        let mut env = env.clone();
        env.insert("PORT".into(), "0".into());
        Self::start("worker", &env, &n.to_string())
    }

    /// kill -9: no shutdown, leases and unacknowledged messages left behind.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the process to exit: its exit status and all it
    /// logged. A process still running after a minute and a half (three times the
    /// default shutdown timeout) is killed, and the test fails with its log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running 90 s after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of the replayable tables, without bookkeeping columns, in key order.
pub async fn projection_rows(pool: &PgPool) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for table in crmsync_engine::replay::TABLES {
        let rows: Vec<Value> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) - 'projected_at' FROM {} t
             ORDER BY workspace_id, provider, remote_id",
            table.name()
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        out.push((table.name().to_owned(), rows));
    }
    out
}

/// A full replay of every projection, in-process, while `engine` runs: the rebuilt
/// tables must equal the live ones row for row. Retries once when events arrived
/// meanwhile (a poller's), as then the two may rightly differ.
pub async fn assert_replay_matches(engine: &TestEngine) {
    use crmsync_engine::replay::{ReplayOptions, Start, TABLES};
    let options = ReplayOptions {
        tables: TABLES.to_vec(),
        workspace: None,
        start: Start::All,
    };
    for attempt in 0..2 {
        let before = engine.events_in_stream().await;
        let live = projection_rows(&engine.pool).await;
        let report = engine.replay(&options).await;
        let rebuilt = projection_rows(&engine.pool).await;
        if live == rebuilt {
            assert!(report.events > 0, "the replay read events");
            return;
        }
        if attempt == 1 || engine.events_in_stream().await == before {
            for ((table, want), (_, have)) in live.iter().zip(&rebuilt) {
                let want: std::collections::BTreeMap<String, &Value> =
                    want.iter().map(|r| (r_key(r), r)).collect();
                let have: std::collections::BTreeMap<String, &Value> =
                    have.iter().map(|r| (r_key(r), r)).collect();
                let diff = differences(&want, &have);
                let shown: Vec<String> = diff
                    .iter()
                    .take(2)
                    .map(|d| d.chars().take(1500).collect())
                    .collect();
                assert!(
                    diff.is_empty(),
                    "{table}: the replay differs from the live projection in {} rows: {shown:?}",
                    diff.len()
                );
            }
        }
    }
}

fn r_key(row: &Value) -> String {
    format!(
        "{}/{}/{}",
        row["workspace_id"], row["provider"], row["remote_id"]
    )
}

/// Posts a v3-signed HubSpot batch to the engine at `base` (its URL, no trailing
/// slash), expects 200 and returns the stream sequence of its last event.
pub async fn post_signed(http: &reqwest::Client, base: &str, events: &[Value]) -> u64 {
    let body = serde_json::to_vec(events).unwrap();
    let response = signed_request(http, base, &body)
        .send()
        .await
        .expect("the engine answers");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["last_sequence"].as_u64().unwrap()
}

/// A POST of `body` to the HubSpot webhook of the engine at `base`, signed (v3, now)
/// as HubSpot would for `PUBLIC_URL`.
pub fn signed_request(http: &reqwest::Client, base: &str, body: &[u8]) -> reqwest::RequestBuilder {
    let uri = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
    let headers = signed_headers(
        Signature::V3,
        SECRET,
        &uri,
        body,
        Utc::now().timestamp_millis(),
    );
    let mut request = http
        .post(format!("{}{WEBHOOK_PATH}", base.trim_end_matches('/')))
        .body(body.to_vec());
    for (name, value) in &headers {
        request = request.header(*name, value);
    }
    request
}

/// GET `path` on `engine`, with `token` as bearer if given: the status and the JSON
/// body (null when it is not JSON).
pub async fn get_json(engine: &TestEngine, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = engine.http.get(engine.url(path));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `s` escaped for a query string.
pub fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The fields a 400's answer names, in its order.
pub fn refused_fields(answer: &Value) -> Vec<&str> {
    answer["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no field errors in {answer}"))
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect()
}

/// POSTs `body` to `engine` with the tests' bearer token: the status and the JSON
/// answer (null when there is none).
pub async fn post_json(engine: &TestEngine, path: &str, body: &Value) -> (u16, Value) {
    send_json(engine, reqwest::Method::POST, path, body).await
}

/// PUTs `body` as [`post_json`] POSTs it.
pub async fn put_json(engine: &TestEngine, path: &str, body: &Value) -> (u16, Value) {
    send_json(engine, reqwest::Method::PUT, path, body).await
}

async fn send_json(
    engine: &TestEngine,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let response = engine
        .http
        .request(method, engine.url(path))
        .bearer_auth(hubspot::API_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Runs a Python `script` on `input` with the tests' Python (`CRMSYNC_PYTHON`, from
/// `scripts/services.sh`, with `prometheus_client` and `openapi-spec-validator`): its
/// output, or its error.
pub fn python(script: &str, input: &str) -> Result<String, String> {
    use std::io::Write;
    let python = std::env::var("CRMSYNC_PYTHON")
        .expect("CRMSYNC_PYTHON names the tests' Python: run scripts/services.sh");
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
