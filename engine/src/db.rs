//! Postgres: connect (creating the database if absent) and migrate.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use crmsync_adapters::Secret;
use crmsync_projectors::MIGRATOR;

/// Connects to `url`, creating the database first when it does not exist.
pub async fn connect(url: &Secret<String>) -> anyhow::Result<PgPool> {
    let url = url.expose();
    let options = PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(10));
    match options.clone().connect(url).await {
        Ok(pool) => Ok(pool),
        // 3D000: the database does not exist. Only then is the maintenance database
        // needed (managed hosts and poolers may not offer it).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            match Postgres::create_database(url).await {
                Ok(()) => tracing::info!("created the database named in DATABASE_URL"),
                // Another replica starting at the same time created it first: 42P04
                // (duplicate database), or 23505 when both inserted into pg_database
                // at once.
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(
                        "the database in DATABASE_URL does not exist and could not be created",
                    ))
                }
            }
            options
                .connect(url)
                .await
                .context("cannot connect to the database in DATABASE_URL")
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot reach Postgres at DATABASE_URL")),
    }
}

/// Applies pending migrations. Safe when several replicas start together: the
/// migrator holds a Postgres advisory lock while it works.
///
/// Migrations newer than this build, applied by a newer replica during a rolling
/// upgrade, are let be (sqlx would refuse to start): crmsync's migrations only add
/// (README, "Upgrade"), so an older replica keeps working until it is replaced.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut migrator = crmsync_projectors::migrator();
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("database migrations failed")?;
    Ok(())
}

/// The newest migration this build carries.
pub fn latest_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}
