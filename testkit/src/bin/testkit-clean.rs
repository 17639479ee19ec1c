//! Removes what tests left behind: databases and JetStream streams and buckets whose
//! names are test names (`t` and 12 hex digits) made more than an hour ago, so a test
//! run in progress elsewhere on the same servers is left alone.

use std::time::Duration;

use futures::StreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// Test names older than an hour.
fn is_stale_test_name(name: &str, now: u64) -> bool {
    is_test_name(name)
        && crmsync_testkit::name_time(name).is_some_and(|t| now.saturating_sub(t) > 3600)
}

fn is_test_name(name: &str) -> bool {
    let head = name.get(..13).unwrap_or("");
    let rest = &name[head.len()..];
    head.len() == 13
        && head.starts_with('t')
        && head[1..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && (rest.is_empty() || rest.starts_with('_'))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let base: PgConnectOptions = crmsync_testkit::database_url().parse()?;
    let mut admin = base.database("postgres").connect().await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&mut admin)
        .await?;
    let mut dropped = 0;
    for name in names.into_iter().filter(|n| is_stale_test_name(n, now)) {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        dropped += 1;
    }
    admin.close().await?;

    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(crmsync_testkit::nats_servers())
        .await?;
    let js = async_nats::jetstream::new(client);
    let mut streams = Vec::new();
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name?;
        let bare = name.strip_prefix("KV_").unwrap_or(&name);
        if is_stale_test_name(bare, now) {
            streams.push(name);
        }
    }
    for name in &streams {
        js.delete_stream(name).await?;
    }
    eprintln!(
        "testkit-clean: dropped {dropped} test databases and {} test streams older than an hour",
        streams.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{is_stale_test_name, is_test_name};

    #[test]
    fn only_test_made_names_match() {
        assert!(is_test_name("t0123456789ab"));
        assert!(is_test_name("t0123456789ab_CRM_EVENTS"));
        assert!(!is_test_name("crmsync"));
        assert!(!is_test_name("CRM_EVENTS"));
        assert!(!is_test_name("t0123456789abc"));
        assert!(!is_test_name("t0123456789AB"));
        let fresh = crmsync_testkit::unique_name();
        let t = crmsync_testkit::name_time(&fresh).unwrap();
        assert!(!is_stale_test_name(&fresh, t + 60));
        assert!(is_stale_test_name(&format!("{fresh}_CRM_EVENTS"), t + 7200));
    }
}
