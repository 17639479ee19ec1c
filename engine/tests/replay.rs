//! `crmsync replay`: projections rebuilt from the stream into shadow tables and
//! swapped in while live projection goes on. (The provider sync and outbound tests
//! also replay everything at their end and compare row for row:
//! `common::assert_replay_matches`.)

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;

use common::TestEngine;
use crmsync_engine::replay::{replay, Progress, ReplayOptions, Start, LOCK_KEY, TABLES};
use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};

/// Batches of property changes to contacts of `portal`; the emails they end with.
fn batches(
    portal: u64,
    n: usize,
    first_contact: u64,
) -> (Vec<Vec<Value>>, BTreeMap<String, String>) {
    let mut f = EventFactory::new(portal);
    let at = Utc::now().timestamp_millis() - 600_000;
    let mut last = BTreeMap::new();
    let out = (0..n)
        .map(|b| {
            (0..100)
                .map(|i| {
                    let k = b * 100 + i;
                    let contact = first_contact + (k % 300) as u64;
                    let email = format!("c{contact}-v{k}@example.com");
                    last.insert(contact.to_string(), email.clone());
                    f.property_change("contact", contact, at + k as i64, "email", &email)
                })
                .collect()
        })
        .collect();
    (out, last)
}

async fn emails(pool: &PgPool, portal: u64) -> BTreeMap<String, String> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT remote_id, email FROM contacts WHERE workspace_id = $1")
            .bind(portal.to_string())
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, e)| (id, e.unwrap_or_default()))
        .collect()
}

async fn index_names(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
         WHERE schemaname = current_schema() AND tablename = ANY($1) ORDER BY 1",
    )
    .bind(TABLES.map(|t| t.name()).to_vec())
    .fetch_all(pool)
    .await
    .unwrap()
}

fn all() -> ReplayOptions {
    ReplayOptions {
        tables: TABLES.to_vec(),
        workspace: None,
        start: Start::All,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_swaps_in_while_webhooks_keep_coming_and_loses_nothing() {
    let engine = TestEngine::start(&[]).await;
    let (first, _) = batches(31, 30, 1);
    for batch in &first {
        engine.post_events(Signature::V3, batch).await;
    }
    let indexes = index_names(&engine.pool).await;

    // Batches keep arriving, and are projected live, for as long as the replay runs.
    let (more, _) = batches(31, 200, 1);
    let replaying = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let posting = {
        let (replaying, url, http) = (replaying.clone(), engine.url(""), engine.http.clone());
        let more = more.clone();
        tokio::spawn(async move {
            let mut posted = 30;
            let mut last = 0;
            while replaying.load(std::sync::atomic::Ordering::SeqCst) && posted < more.len() {
                last = common::post_signed(&http, &url, &more[posted]).await;
                posted += 1;
            }
            (posted, last)
        })
    };
    let phases = Arc::new(Mutex::new(Vec::new()));
    let seen = phases.clone();
    let mut progress = |p: &Progress| seen.lock().unwrap().push((p.phase, p.events));
    let report = replay(
        &engine.pool,
        &engine.js,
        &engine.topology,
        &all(),
        &mut progress,
    )
    .await
    .unwrap();
    replaying.store(false, std::sync::atomic::Ordering::SeqCst);
    let (posted, last) = posting.await.unwrap();
    assert!(posted > 31, "batches arrived during the replay");
    assert!(report.events >= 3_000, "{report:?}");
    engine.wait_projected(last).await;
    let (_, want) = batches(31, posted, 1);

    // Nothing lost across the swap: every contact has its last email.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while emails(&engine.pool, 31).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projection lost changes across the swap"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        index_names(&engine.pool).await,
        indexes,
        "the indexes keep their names"
    );
    let phases = phases.lock().unwrap().clone();
    assert!(
        phases.iter().any(|(p, n)| *p == "replay" && *n > 0),
        "{phases:?}"
    );
    // And a second replay, with nothing arriving, gives the same rows.
    common::assert_replay_matches(&engine).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_replay_rebuilds_its_scope_from_the_stream_and_leaves_the_rest() {
    let engine = TestEngine::start(&[]).await;
    let (a, want_a) = batches(41, 3, 1);
    let (b, want_b) = batches(42, 3, 1);
    for batch in a.iter().chain(&b) {
        engine.post_events(Signature::V3, batch).await;
    }
    let mark = engine.events_in_stream().await + 1;
    // Later changes to three of portal 42's contacts.
    let mut f = EventFactory::new(42);
    let at = Utc::now().timestamp_millis();
    let late: Vec<Value> = (1..=3)
        .map(|c| f.property_change("contact", c, at, "email", &format!("late{c}@example.com")))
        .collect();
    let last = engine.post_events(Signature::V3, &late).await;
    engine.wait_projected(last).await;
    let mut want_b = want_b;
    for c in 1..=3 {
        want_b.insert(c.to_string(), format!("late{c}@example.com"));
    }
    assert_eq!(emails(&engine.pool, 42).await, want_b);

    // Rows tampered with behind crmsync's back: a replay rebuilds from the stream.
    let tamper = || async {
        sqlx::query(
            "UPDATE contacts SET fields = fields || '{\"email\": \"tampered\"}'
             WHERE workspace_id IN ('41', '42')",
        )
        .execute(&engine.pool)
        .await
        .unwrap();
    };
    tamper().await;
    let only_41 = ReplayOptions {
        workspace: Some(crmsync_schema::WorkspaceId::parse("41").unwrap()),
        ..all()
    };
    // Portal 43 gets its first contacts while portal 41 is replayed: what live
    // projection writes outside the replay's scope is kept.
    let (c, want_c) = batches(43, 20, 1);
    let (pool, js, topology) = (
        engine.pool.clone(),
        engine.js.clone(),
        engine.topology.clone(),
    );
    let replaying =
        tokio::spawn(async move { replay(&pool, &js, &topology, &only_41, &mut |_| {}).await });
    let mut last = 0;
    for batch in &c {
        last = engine.post_events(Signature::V3, batch).await;
    }
    replaying.await.unwrap().unwrap();
    engine.wait_projected(last).await;
    assert_eq!(emails(&engine.pool, 41).await, want_a, "portal 41 rebuilt");
    let tampered = |rows: BTreeMap<String, String>| rows.values().all(|e| e == "tampered");
    assert!(
        tampered(emails(&engine.pool, 42).await),
        "portal 42 left as it was"
    );
    assert_eq!(
        emails(&engine.pool, 43).await,
        want_c,
        "portal 43 kept what live projection wrote"
    );

    tamper().await;
    let since_mark = ReplayOptions {
        start: Start::Seq(mark),
        ..all()
    };
    let report = replay(
        &engine.pool,
        &engine.js,
        &engine.topology,
        &since_mark,
        &mut |_| {},
    )
    .await
    .unwrap();
    // Three of portal 42's contacts, and portal 43's 300, posted after the mark.
    assert_eq!(report.records_in_scope, Some(303));
    let now = emails(&engine.pool, 42).await;
    for (id, email) in &now {
        match id.as_str() {
            "1" | "2" | "3" => assert_eq!(email, &want_b[id], "rebuilt from its whole history"),
            _ => assert_eq!(email, "tampered", "{id} has no events since the mark"),
        }
    }
    assert!(emails(&engine.pool, 41)
        .await
        .values()
        .all(|e| e == "tampered"));
    assert_eq!(emails(&engine.pool, 43).await, want_c);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_command_shows_progress_publishes_nothing_and_runs_alone() {
    let env = common::test_env(&[]).await;
    let engine = TestEngine::start_env(crmsync_engine::Role::All, &env).await;
    let (batches, want) = batches(51, 5, 1);
    let mut last = 0;
    for batch in &batches {
        last = engine.post_events(Signature::V3, batch).await;
    }
    engine.wait_projected(last).await;
    let published = engine.events_in_stream().await;
    let mut outbound = engine
        .js
        .get_stream(engine.topology.outbound_stream())
        .await
        .unwrap();
    let queued = outbound.info().await.unwrap().state.messages;

    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_crmsync"))
            .args(["replay", "--projection", "all"])
            .envs(&env)
            .env("PORT", "0")
            .output()
            .unwrap()
    };
    let out = run();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("replay: replay: 500 events read"),
        "{stderr}"
    );
    assert!(stdout.contains("replayed 500 events"), "{stdout}");
    assert!(stdout.contains("contacts 300 rows"), "{stdout}");
    assert_eq!(emails(&engine.pool, 51).await, want);
    assert_eq!(
        engine.events_in_stream().await,
        published,
        "a replay publishes nothing"
    );
    assert_eq!(
        outbound.info().await.unwrap().state.messages,
        queued,
        "and pushes nothing"
    );

    // One replay at a time.
    let mut holder = engine.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let refused = run();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("another replay is running"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(holder);

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(["replay", "--projection", "tickets"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let both = std::process::Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args([
            "replay",
            "--projection",
            "all",
            "--since",
            "2026-01-01T00:00:00Z",
            "--from-seq",
            "4",
        ])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    engine.stop().await;
}
