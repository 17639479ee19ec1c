//! Test isolation on the real services: each test gets its own NATS subject prefix
//! and stream names on the shared JetStream server, and its own Postgres database,
//! migrated. Nothing is mocked.
//!
//! `NATS_URL` and `DATABASE_URL` say where the servers are (defaults: the local ones);
//! `scripts/services.sh` starts them.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The NATS server tests use.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The Postgres server tests use; the database part names the maintenance database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A short unique name: `t`, the Unix time in 8 hex digits, and 4 random hex digits,
/// so that `testkit-clean` can tell old leftovers from a run in progress.
pub fn unique_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let random = &uuid::Uuid::new_v4().simple().to_string()[..4];
    format!("t{:08x}{random}", secs as u32)
}

/// When a name made by [`unique_name`] was made, in Unix seconds.
pub fn name_time(name: &str) -> Option<u64> {
    let hex = name.strip_prefix('t')?.get(..8)?;
    u64::from_str_radix(hex, 16).ok()
}

/// The servers of [`nats_url`], which may list several, comma-separated.
pub fn nats_servers() -> Vec<async_nats::ServerAddr> {
    nats_url()
        .split(',')
        .map(|s| s.trim().parse().expect("NATS_URL lists server addresses"))
        .collect()
}

/// A client of the NATS server(s) tests use.
pub async fn nats() -> async_nats::Client {
    async_nats::connect(nats_servers())
        .await
        .unwrap_or_else(|e| panic!("NATS at {} (run scripts/services.sh): {e}", nats_url()))
}

/// A fresh, empty database; returns its URL. Migrate it yourself, or use
/// [`migrated_database`].
pub async fn fresh_database() -> String {
    fresh_database_with("").await
}

/// The Postgres server's maintenance database, for statements a database cannot run
/// on itself.
pub async fn admin() -> sqlx::PgConnection {
    let base: PgConnectOptions = database_url()
        .parse()
        .expect("DATABASE_URL is a Postgres URL");
    base.database("postgres")
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Postgres at {} (run scripts/services.sh): {e}",
                database_url()
            )
        })
}

/// A fresh database created with extra `CREATE DATABASE` options (e.g. a collation).
pub async fn fresh_database_with(options: &str) -> String {
    let base: PgConnectOptions = database_url()
        .parse()
        .expect("DATABASE_URL is a Postgres URL");
    let name = unique_name();
    let mut admin = base
        .clone()
        .database("postgres")
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Postgres at {} (run scripts/services.sh): {e}",
                database_url()
            )
        });
    sqlx::query(&format!("CREATE DATABASE \"{name}\" {options}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    let opts = base.database(&name);
    opts.to_url_lossy().to_string()
}

/// A fresh database with every migration applied, and a pool on it.
pub async fn migrated_database(migrator: &sqlx::migrate::Migrator) -> (String, PgPool) {
    let url = fresh_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .expect("connect to the test database");
    migrator.run(&pool).await.expect("migrations apply");
    (url, pool)
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
