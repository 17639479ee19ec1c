//! A connection's rate allowance shared by every process through Postgres: limiters
//! of separate processes (each with its own pool and bucket) under one key keep to one
//! allowance together, a pause in one holds the others, and a limiter whose database
//! is gone goes on at its own bucket's pace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crmsync_adapters::{RateLimiter, SharedBudget};
use crmsync_engine::budget::{budget_key, PgBudget};
use crmsync_schema::Provider;

async fn pool() -> sqlx::PgPool {
    crmsync_testkit::migrated_database(&crmsync_projectors::MIGRATOR)
        .await
        .1
}

/// A process's own small pool on the test database.
async fn own_pool(pool: &sqlx::PgPool) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

#[tokio::test]
async fn limiters_in_separate_processes_keep_to_one_allowance_together() {
    let pool = pool().await;
    let (rate, burst) = (20.0, 4.0);
    let key = budget_key(Provider::HubSpot, "acme", "all");
    // Three "processes": a pool and a bucket each, one key.
    let mut limiters = Vec::new();
    for _ in 0..3 {
        let budget: Arc<dyn SharedBudget> = Arc::new(PgBudget::new(own_pool(&pool).await));
        // A loaded machine may answer slowly: the local bucket must not decide alone.
        limiters.push(Arc::new(
            RateLimiter::new(rate, burst)
                .shared(budget, key.clone())
                .with_shared_timeout(Duration::from_secs(60)),
        ));
    }
    let times = Arc::new(Mutex::new(Vec::new()));
    let per_process = 30;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..per_process {
            let (limiter, times) = (limiter.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                limiter.acquire().await;
                times.lock().unwrap().push(Instant::now());
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3 * per_process);
    // Alone, each bucket would let its 30 through in (30 - burst) / rate = 1.3 s.
    // Together they keep to one allowance: all 90 take at least (90 - burst) / rate
    // = 4.3 s (a slow machine only makes it longer: the shared budget is waited for).
    let span = *times.iter().max().unwrap() - started;
    let least = Duration::from_secs_f64((3.0 * per_process as f64 - burst) / rate - 0.1);
    assert!(
        span >= least,
        "90 requests in {span:?}; one allowance needs {least:?}"
    );
}

#[tokio::test]
async fn a_pause_in_one_process_holds_the_others_and_a_lost_database_holds_nobody() {
    let pool = pool().await;
    let key = budget_key(Provider::Zoho, "acme", "all");
    let limiter = |budget: PgBudget| {
        RateLimiter::new(50.0, 5.0)
            .shared(Arc::new(budget), key.clone())
            .with_shared_timeout(Duration::from_secs(60))
    };
    let first = limiter(PgBudget::new(own_pool(&pool).await));
    let second = limiter(PgBudget::new(own_pool(&pool).await));
    second.acquire().await;
    // A 429 in the first: its pause is shared (in the background), so the second's next
    // request waits it out too.
    let paused_at = Instant::now();
    first.pause(Duration::from_secs(3));
    crmsync_testkit::eventually(Duration::from_secs(10), || async {
        let ahead: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM tat - now())::float8 FROM crm_rate_budgets WHERE key = $1",
        )
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap();
        (ahead > 1.0).then_some(())
    })
    .await
    .expect("the pause reaches the shared budget");
    second.acquire().await;
    assert!(
        paused_at.elapsed() >= Duration::from_millis(2900),
        "the second process went on {:?} after the pause",
        paused_at.elapsed()
    );

    // The database gone: requests go on at the local bucket's pace.
    let gone = own_pool(&pool).await;
    let alone = RateLimiter::new(50.0, 5.0).shared(
        Arc::new(PgBudget::new(gone.clone())),
        budget_key(Provider::Odoo, "acme", "all"),
    );
    gone.close().await;
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(30), alone.acquire())
            .await
            .expect("a request without its shared budget still goes");
    }
}
