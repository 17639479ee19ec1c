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

/// A short unique name: `t` and 12 hex digits.
pub fn unique_name() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub async fn nats() -> async_nats::Client {
    async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("NATS at {} (run scripts/services.sh): {e}", nats_url()))
}

/// A fresh, empty database; returns its URL. Migrate it yourself, or use
/// [`migrated_database`].
pub async fn fresh_database() -> String {
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
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
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
