//! Real faults, on loopback: a nats-server killed with SIGKILL and restarted while
//! webhooks are ingested and projected, and a Postgres killed and restarted while
//! events are projected. Each server is the test's own (a nats-server 2.10+ from
//! `CRMSYNC_NATS_SERVER`; Postgres from its `bin` directory), so nothing else sharing
//! the machine's servers notices. Afterwards the counts reconcile: every event whose
//! webhook was answered 200 is in the stream once, projected once, and nothing was
//! dead-lettered. Also a Postgres connection that goes silent (behind a proxy that
//! stops passing anything, without a reset) while the projector holds it: the
//! projector gives it up and goes on.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use common::{free_port, signed_request, TestEngine};
use crmsync_sandbox::hubspot::webhooks::EventFactory;

/// One nats-server with JetStream on a fixed port and store, to kill and start again.
struct NatsServer {
    bin: String,
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    fn start() -> Self {
        let bin = std::env::var("CRMSYNC_NATS_SERVER").expect(
            "CRMSYNC_NATS_SERVER names a nats-server 2.10+ executable (scripts/services.sh prints it)",
        );
        let store =
            std::env::temp_dir().join(format!("crmsync-{}", crmsync_testkit::unique_name()));
        let mut server = NatsServer {
            bin,
            port: free_port(),
            store,
            child: None,
        };
        server.up();
        server
    }

    fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// kill -9: no flush, no goodbye to the clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let found = crmsync_testkit::eventually(Duration::from_secs(20), || async {
            let client = async_nats::connect(self.url()).await.ok()?;
            async_nats::jetstream::new(client)
                .query_account()
                .await
                .ok()
        })
        .await;
        assert!(
            found.is_some(),
            "nats-server did not start on {}",
            self.url()
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A Postgres cluster of the test's own, to kill and start again.
struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PgServer {
    fn bin() -> PathBuf {
        if let Ok(dir) = std::env::var("CRMSYNC_PG_BIN") {
            return dir.into();
        }
        let out = Command::new("pg_config").arg("--bindir").output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return dir;
            }
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        // By version number: 16 after 9.6.
        found.sort_by_key(|b| {
            let version = b
                .parent()
                .and_then(|v| v.file_name())
                .map(|v| v.to_string_lossy().into_owned());
            version
                .unwrap_or_default()
                .split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        });
        found.pop().filter(|b| b.join("initdb").exists()).expect(
            "no Postgres server binaries: set CRMSYNC_PG_BIN to the directory of initdb and pg_ctl",
        )
    }

    /// `program` as the cluster's owner (Postgres refuses to run as root).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let path = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args).output().unwrap()
    }

    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("crmsync-pg-{}", crmsync_testkit::unique_name()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let owned = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(owned.success());
        }
        let server = PgServer {
            bin: Self::bin(),
            dir,
            port: free_port(),
        };
        let data = server.data();
        let out = server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.up();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").to_string_lossy().into_owned();
        // After a kill, until the old backends have noticed and gone, the data's
        // shared memory is still in use and a start is refused: try again.
        for _ in 0..40 {
            let out = self.run(
                "pg_ctl",
                &[
                    "start",
                    "-w",
                    "-D",
                    &self.data(),
                    "-l",
                    &log,
                    "-o",
                    &options,
                ],
            );
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "Postgres did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// kill -9 of the postmaster: its backends go with it, and the next start
    /// recovers from the write-ahead log.
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(killed.success());
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["stop", "-m", "immediate", "-D", &self.data()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the tests run as root (asked once).
fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// Posts numbered batches of contact creations until `stop`, each retried (as
/// HubSpot retries) until it is answered 200; the ids of every batch answered 200,
/// and how many answers were not 200.
async fn send_until(base: String, stop: Arc<AtomicBool>, per_batch: u64) -> (BTreeSet<u64>, usize) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut factory = EventFactory::new(62515);
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    let at = Utc::now().timestamp_millis();
    for batch in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let ids: Vec<u64> = (0..per_batch).map(|i| batch * per_batch + i + 1).collect();
        let events: Vec<Value> = ids
            .iter()
            .map(|id| factory.creation("contact", *id, at))
            .collect();
        let body = serde_json::to_vec(&events).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match signed_request(&http, &base, &body).send().await {
                Ok(r) if r.status() == 200 => break,
                answer => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "batch {batch} not accepted within 2 minutes: {answer:?}"
                    );
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        accepted.extend(ids);
        // A steady load rather than a flood: the counts matter here, not the rate.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (accepted, refused)
}

/// Waits until the contacts table holds at least `n` rows: how many it holds.
async fn contacts_reach(pool: &sqlx::PgPool, n: i64, within: Duration) -> Option<i64> {
    crmsync_testkit::eventually(within, || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts")
            .fetch_one(pool)
            .await
            .ok()?;
        (count >= n).then_some(count)
    })
    .await
}

/// The stream holds each accepted event once, the contacts table each once, and
/// nothing was dead-lettered; a replay of the stream equals the live tables.
async fn assert_reconciled(engine: &TestEngine, accepted: &BTreeSet<u64>) {
    let expected = accepted.len() as i64;
    let projected = contacts_reach(&engine.pool, expected, Duration::from_secs(90)).await;
    assert_eq!(projected, Some(expected), "every accepted event projected");
    let ids: Vec<String> = sqlx::query_scalar("SELECT remote_id FROM contacts")
        .fetch_all(&engine.pool)
        .await
        .unwrap();
    let ids: BTreeSet<u64> = ids.iter().map(|i| i.parse().unwrap()).collect();
    assert_eq!(&ids, accepted);
    assert_eq!(
        engine.events_in_stream().await,
        accepted.len() as u64,
        "each accepted event is in the stream once"
    );
    let mut dlq = engine
        .js
        .get_stream(engine.topology.dlq_stream())
        .await
        .unwrap();
    assert_eq!(
        dlq.info().await.unwrap().state.messages,
        0,
        "nothing dead-lettered"
    );
    common::assert_replay_matches(engine).await;
}

#[tokio::test]
async fn nats_killed_during_ingest_and_projection_loses_and_doubles_nothing() {
    let mut nats = NatsServer::start();
    nats.ready().await;
    let url = nats.url();
    let engine =
        TestEngine::start(&[("NATS_URL", url.as_str()), ("CRM_RETRY_BASE_MS", "200")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_until(engine.url(""), stop.clone(), 50));

    // Let ingest and projection run, then pull the server out from under both.
    let projected = contacts_reach(&engine.pool, 500, Duration::from_secs(30)).await;
    assert!(projected.is_some(), "projection started");
    nats.kill();
    // Longer than JetStream's 5 s publish timeout: webhooks waiting on an ack get 503
    // (and their copies buffered in the client may still land after the restart).
    tokio::time::sleep(Duration::from_secs(8)).await;
    nats.up();
    nats.ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let (accepted, refused) = sender.await.unwrap();
    assert!(
        refused > 0,
        "the outage was felt by the webhooks (none refused)"
    );
    eprintln!(
        "{} events accepted, {refused} deliveries refused",
        accepted.len()
    );
    assert_reconciled(&engine, &accepted).await;
    engine.stop().await;
}

#[tokio::test]
async fn postgres_killed_during_projection_loses_and_doubles_nothing() {
    let pg = PgServer::start();
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE crmsync")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let url = pg.url("crmsync");
    let engine = TestEngine::start(&[
        ("DATABASE_URL", url.as_str()),
        ("CRM_MAX_DELIVER", "3"),
        ("CRM_RETRY_BASE_MS", "200"),
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_until(engine.url(""), stop.clone(), 100));
    let projected = contacts_reach(&engine.pool, 1000, Duration::from_secs(30)).await;
    assert!(projected.is_some(), "projection started");
    let first_start: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    pg.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.up();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let (accepted, _) = sender.await.unwrap();
    // The server did go (a new postmaster), and projection went on after it.
    let started_again: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert!(started_again > first_start, "Postgres was not restarted");
    assert!(
        accepted.len() as i64 > projected.unwrap_or_default(),
        "events came after the restart"
    );
    eprintln!(
        "{} events accepted, {} projected before the kill",
        accepted.len(),
        projected.unwrap_or_default()
    );
    assert_reconciled(&engine, &accepted).await;
    engine.stop().await;
}

use sqlx::Connection as _;

/// A TCP proxy to Postgres that can make every connection open so far go silent:
/// still open, but nothing passes either way, as behind a NAT that forgot them or a
/// server that vanished without a reset. Connections made later pass.
struct SilentProxy {
    addr: std::net::SocketAddr,
    flags: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
}

impl SilentProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flags: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = flags.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(silent.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, silent.clone()));
                tokio::spawn(pass(server_read, client_write, silent));
            }
        });
        Self { addr, flags }
    }

    /// Every connection open now goes silent.
    fn silence(&self) {
        for flag in self.flags.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to`, swallowing everything once `silent`.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Contact property changes `ids`, published straight to the stream; its last
/// sequence.
async fn publish_contacts(engine: &TestEngine, ids: std::ops::Range<u64>) -> u64 {
    let mut f = EventFactory::new(62);
    let at = Utc::now().timestamp_millis();
    let events: Vec<Value> = ids
        .map(|id| f.property_change("contact", id, at, "email", &format!("c{id}@x.y")))
        .collect();
    let raw: Vec<_> =
        crmsync_adapters::hubspot::webhook::parse_batch(&serde_json::to_vec(&events).unwrap())
            .unwrap()
            .iter()
            .map(|e| e.to_raw_event(0).unwrap())
            .collect();
    crmsync_ingest::publish::publish_all(&engine.js, &engine.topology.subjects, &raw)
        .await
        .unwrap()
        .last_sequence
}

/// The projector keeps its connection between batches. When that connection goes
/// silent (no answer, no reset), the write waiting on it is given up after its
/// timeout, the connection closed, and the batch committed on a fresh one.
#[tokio::test]
async fn a_postgres_connection_gone_silent_is_given_up_and_projection_goes_on() {
    let direct_url = crmsync_testkit::fresh_database().await;
    let mut url = url::Url::parse(&direct_url).unwrap();
    let upstream = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap_or(5432)
    );
    let proxy = SilentProxy::start(upstream).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let mut env = common::test_env(&[]).await;
    env.insert("DATABASE_URL".into(), url.to_string());
    let engine = TestEngine::start_env(crmsync_engine::Role::All, &env).await;
    let direct = sqlx::PgPool::connect(&direct_url).await.unwrap();
    let consumer =
        crmsync_engine::topology::Topology::projector_name(crmsync_schema::Provider::HubSpot);
    let projected = |seq: u64, within: Duration| {
        let (direct, consumer) = (direct.clone(), consumer.clone());
        async move {
            crmsync_projectors::checkpoint::wait_for(&direct, &consumer, seq, within)
                .await
                .unwrap()
        }
    };

    let first = publish_contacts(&engine, 1..51).await;
    assert!(projected(first, Duration::from_secs(30)).await);
    proxy.silence();
    let last = publish_contacts(&engine, 51..101).await;
    assert!(
        !projected(last, Duration::from_secs(5)).await,
        "the projector's connection did not go silent: the test proves nothing"
    );
    // The write's timeout (60 s), then a fresh connection (the pool's silent idle
    // ones each time out on their ping first).
    assert!(
        projected(last, Duration::from_secs(240)).await,
        "projection stayed stuck on a silent connection"
    );
    let emails: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT email) FROM contacts WHERE email LIKE 'c%@x.y'")
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!(emails, 100);
    engine.stop().await;
}
