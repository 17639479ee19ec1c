//! HubSpot kept in step end to end, against the HubSpot emulator over HTTP: connect,
//! backfill, then webhooks (some dropped) and polling through 429 storms while the
//! mutation driver runs; at the end the projection equals the portal, record for
//! record.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::differences;
use common::hubspot::start;
use crmsync_engine::hubspot::backfill::backfill;
use crmsync_engine::hubspot::poller::OBJECTS;
use crmsync_sandbox::hubspot::{Config, HubSpotSandbox};
use crmsync_testkit::eventually;

/// Canonical columns compared per table, with the HubSpot property each comes from.
fn compared(api_type: &str) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match api_type {
        "contacts" => (
            "contacts",
            &[
                ("email", "email"),
                ("firstname", "first_name"),
                ("lastname", "last_name"),
                ("phone", "phone"),
                ("jobtitle", "job_title"),
                ("lifecyclestage", "lifecycle_stage"),
            ],
        ),
        "companies" => (
            "companies",
            &[
                ("name", "name"),
                ("domain", "domain"),
                ("industry", "industry"),
                ("city", "city"),
                ("phone", "phone"),
            ],
        ),
        _ => (
            "deals",
            &[
                ("dealname", "name"),
                ("amount", "amount"),
                ("dealstage", "stage"),
                ("pipeline", "pipeline"),
            ],
        ),
    }
}

type Records = BTreeMap<String, BTreeMap<String, Option<String>>>;

fn portal_state(hs: &HubSpotSandbox, api_type: &str) -> Records {
    let (_, columns) = compared(api_type);
    hs.snapshot(api_type)
        .into_iter()
        .map(|(id, props)| {
            let row = columns
                .iter()
                .map(|(hs_name, canonical)| {
                    let v = props.get(*hs_name).filter(|v| !v.is_empty()).cloned();
                    ((*canonical).to_owned(), v)
                })
                .collect();
            (id.to_string(), row)
        })
        .collect()
}

async fn projected(pool: &sqlx::PgPool, portal: &str, api_type: &str) -> Records {
    let (table, columns) = compared(api_type);
    let rows: Vec<(String, Value)> = sqlx::query_as(&format!(
        "SELECT remote_id, fields FROM {table}
         WHERE workspace_id = $1 AND provider = 'hubspot' AND NOT deleted AND merged_into IS NULL"
    ))
    .bind(portal)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, fields)| {
            let row = columns
                .iter()
                .map(|(_, canonical)| {
                    let v = fields
                        .get(*canonical)
                        .and_then(|v| v.as_str())
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned);
                    ((*canonical).to_owned(), v)
                })
                .collect();
            (id, row)
        })
        .collect()
}

#[tokio::test]
async fn a_portal_stays_in_step_through_dropped_webhooks_and_429_storms() {
    let contacts = 20_000;
    let config = Config {
        contacts,
        companies: 2_000,
        deals: 4_000,
        per_ten_seconds: 5_000,
        index_lag: Duration::from_millis(500),
        ..Config::default()
    };
    let portal = start(
        config,
        &[
            ("CRM_SYNC_RPS", "200"),
            ("CRM_SYNC_BURST", "400"),
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_POLL_LOOKBACK_SECS", "5"),
        ],
    )
    .await;
    portal.connect("acme").await;
    let (hs, engine) = (&portal.hs, &portal.engine);

    // Backfill every object.
    let hubspot: Arc<_> = engine.hubspot.clone().expect("the engine syncs HubSpot");
    let connection = hubspot.connected().await.unwrap().remove(0);
    assert_eq!(connection.portal, "62515");
    let cursors = engine
        .js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .unwrap();
    let mut progress = Vec::new();
    let mut stored = 0;
    for api_type in OBJECTS {
        stored += backfill(
            &hubspot,
            &engine.js,
            &engine.topology.subjects,
            &cursors,
            &connection,
            api_type,
            &mut progress,
        )
        .await
        .unwrap();
    }
    assert_eq!(stored, 26_000);
    let progress = String::from_utf8(progress).unwrap();
    assert!(
        progress.contains("contacts: done, 20000 records"),
        "{progress}"
    );

    // Changes flow through webhooks (a third dropped) and 429 storms while the driver runs.
    hs.webhooks
        .set_target(Some(engine.url("/crm/webhooks/hubspot")));
    hs.faults()
        .set("drop-webhooks=0.3,storm=300ms/3s".parse().unwrap());
    for _ in 0..40 {
        hs.mutate(10);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hs.faults().set(Default::default());

    // Polling closes the gaps: the projection converges on the portal.
    let mut last = Vec::new();
    for _ in 0..90 {
        last.clear();
        for api_type in OBJECTS {
            let want = portal_state(hs, api_type);
            let have = projected(&engine.pool, "62515", api_type).await;
            last.extend(
                differences(&want, &have)
                    .into_iter()
                    .map(|d| format!("{api_type} {d}")),
            );
        }
        if last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        last.is_empty(),
        "{} differences, first: {:?}",
        last.len(),
        &last[..last.len().min(10)]
    );
    let delivered = hs
        .webhooks
        .stats
        .delivered_events
        .load(std::sync::atomic::Ordering::Relaxed);
    let dropped = hs
        .webhooks
        .stats
        .dropped_batches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(delivered > 0, "webhooks were delivered");
    assert!(
        dropped > 0,
        "and some were dropped, which polling made up for"
    );
    assert_eq!(
        portal_state(hs, "contacts").len(),
        projected(&engine.pool, "62515", "contacts").await.len()
    );
    common::assert_replay_matches(&portal.engine).await;
    common::events::assert_contract(&portal.engine.js, &portal.engine.topology).await;
    portal.engine.stop().await;
}

#[tokio::test]
async fn a_backfill_resumes_after_the_last_stored_page() {
    let portal = start(
        Config {
            contacts: 250,
            ..Config::default()
        },
        &[("CRM_POLL_INTERVAL_SECS", "3600")],
    )
    .await;
    portal.connect("acme").await;
    let (hs, engine) = (&portal.hs, &portal.engine);

    // A crashed run had stored the first page and saved its cursor.
    let ids: Vec<u64> = hs.snapshot("contacts").into_keys().collect();
    let cursors = engine
        .js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .unwrap();
    let resume = crmsync_engine::hubspot::backfill::resume_key("acme", "62515", "contacts");
    cursors
        .put(&resume, ids[100].to_string().into_bytes().into())
        .await
        .unwrap();

    let hubspot = engine.hubspot.clone().unwrap();
    let connection = hubspot.connected().await.unwrap().remove(0);
    let mut progress = Vec::new();
    let stored = backfill(
        &hubspot,
        &engine.js,
        &engine.topology.subjects,
        &cursors,
        &connection,
        "contacts",
        &mut progress,
    )
    .await
    .unwrap();
    assert_eq!(stored, 150, "only the pages after the saved cursor");
    let progress = String::from_utf8(progress).unwrap();
    assert!(
        progress.starts_with(&format!("contacts: resuming after {}", ids[100])),
        "{progress}"
    );
    assert!(
        cursors.get(&resume).await.unwrap().is_none(),
        "a finished backfill forgets its cursor"
    );
    portal.engine.stop().await;
}

#[tokio::test]
async fn a_backfill_outlives_its_access_token() {
    let portal = start(
        Config {
            contacts: 1_000,
            ..Config::default()
        },
        &[("CRM_POLL_INTERVAL_SECS", "3600")],
    )
    .await;
    portal.connect("acme").await;
    let (hs, engine) = (&portal.hs, &portal.engine);
    let hubspot = engine.hubspot.clone().unwrap();
    let connection = hubspot.connected().await.unwrap().remove(0);
    let cursors = engine
        .js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .unwrap();
    let resume = crmsync_engine::hubspot::backfill::resume_key("acme", "62515", "contacts");

    // Pages of 100 come slowly; once the first is stored, the token expires early (as
    // if the backfill had run for 30 minutes, or the token had been revoked).
    hs.faults().set("latency=150ms".parse().unwrap());
    let began = chrono::Utc::now().timestamp_millis();
    let backfilling = {
        let (hubspot, js, subjects) = (
            hubspot.clone(),
            engine.js.clone(),
            engine.topology.subjects.clone(),
        );
        let (cursors, connection) = (cursors.clone(), connection.clone());
        tokio::spawn(async move {
            let mut progress = Vec::new();
            let stored = backfill(
                &hubspot,
                &js,
                &subjects,
                &cursors,
                &connection,
                "contacts",
                &mut progress,
            )
            .await;
            (stored, String::from_utf8(progress).unwrap())
        })
    };
    let first_page = eventually(Duration::from_secs(30), || async {
        cursors.get(&resume).await.ok().flatten()
    })
    .await;
    assert!(first_page.is_some(), "the first page is stored");
    hs.expire_access_tokens();

    let (stored, progress) = backfilling.await.unwrap();
    assert_eq!(stored.unwrap(), 1_000, "{progress}");
    assert!(
        progress.contains("contacts: HubSpot refused the access token; refreshing it and resuming"),
        "{progress}"
    );
    assert!(
        progress.ends_with("contacts: done, 1000 records\n"),
        "{progress}"
    );
    hs.faults().set(Default::default());
    let projected = eventually(Duration::from_secs(30), || async {
        let n = projected(&engine.pool, "62515", "contacts").await.len();
        (n == 1_000).then_some(n)
    })
    .await;
    assert_eq!(projected, Some(1_000), "every contact is projected");

    // The poll cursor starts where the backfill began: the first poll reads only
    // what changed since, not the portal again.
    use crmsync_engine::hubspot::poller::{cursor_key, Cursor};
    let key = cursor_key("acme", "62515", "contacts");
    let cursor: Cursor =
        serde_json::from_slice(&cursors.get(&key).await.unwrap().expect("a poll cursor")).unwrap();
    assert!(cursor.since_ms >= began, "{cursor:?}");
    let client = hubspot.client("acme").await.unwrap();
    let first = poll_contacts(engine, client, &connection, &cursors, false)
        .await
        .unwrap();
    assert_eq!(first.records, 0, "{first:?}");
    portal.engine.stop().await;
}

#[tokio::test]
async fn workspaces_connected_to_one_portal_share_its_rate_budget() {
    let portal = start(Config::default(), &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    portal.connect("acme").await;
    portal.connect("beta").await;
    let engine = &portal.engine;
    let hubspot = engine.hubspot.clone().unwrap();
    for workspace in ["acme", "beta"] {
        let client = hubspot.client(workspace).await.unwrap();
        client
            .list("contacts", None, &["email"], false)
            .await
            .unwrap();
        client
            .search("contacts", &json!({"filterGroups": [], "limit": 1}))
            .await
            .unwrap();
    }
    // HubSpot counts both workspaces' requests against the portal's allowance: so do
    // the budgets.
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM crm_rate_budgets WHERE key LIKE 'hubspot/%' ORDER BY 1",
    )
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert_eq!(keys, ["hubspot/all/62515", "hubspot/search/62515"]);
    portal.engine.stop().await;
}

/// Whether the contact `id` of the test portal is projected as deleted, and its first
/// name.
async fn contact_row(pool: &sqlx::PgPool, id: u64) -> Option<(bool, Option<String>)> {
    sqlx::query_as(
        "SELECT deleted, first_name FROM contacts
         WHERE workspace_id = '62515' AND provider = 'hubspot' AND remote_id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Waits up to `within` for contact `id` to be projected with first name `want`.
async fn first_name_becomes(pool: &sqlx::PgPool, id: u64, want: &str, within: Duration) {
    eventually(within, || async {
        let row = contact_row(pool, id).await?;
        (row.1.as_deref() == Some(want)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("contact {id} projected with first name {want}"));
}

/// A portal of `contacts` contacts (and two companies and deals) connected to an
/// engine with `env`, every webhook lost: only polling brings changes in.
async fn polled_alone(contacts: usize, env: &[(&str, &str)]) -> common::hubspot::Portal {
    let config = Config {
        contacts,
        companies: 2,
        deals: 2,
        ..Config::default()
    };
    let portal = start(config, env).await;
    portal
        .hs
        .webhooks
        .set_target(Some(portal.engine.url("/crm/webhooks/hubspot")));
    portal.hs.faults().set("drop-webhooks=1".parse().unwrap());
    portal.connect("acme").await;
    portal
}

#[tokio::test]
async fn polling_alone_finds_a_long_unedited_record_deleted_and_outlives_a_revoked_token() {
    let portal = polled_alone(
        20,
        &[
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_POLL_LOOKBACK_SECS", "5"),
        ],
    )
    .await;
    let (hs, engine) = (&portal.hs, &portal.engine);
    let ids: Vec<u64> = hs.snapshot("contacts").into_keys().collect();
    let (edited, untouched) = (ids[0], ids[1]);
    let first_name_is =
        |want| first_name_becomes(&engine.pool, edited, want, Duration::from_secs(60));

    // An edit now moves the poll cursor to now.
    let name = |v: &str| [("firstname".to_owned(), v.to_owned())].into();
    hs.update("contacts", edited, &name("Edited")).unwrap();
    first_name_is("Edited").await;

    // A contact last edited at the seed, years ago, is deleted: archiving does not
    // move its last modification, but it changed when it was archived.
    let (deleted, _) = contact_row(&engine.pool, untouched)
        .await
        .expect("projected by the first poll");
    assert!(!deleted);
    hs.archive("contacts", untouched);
    eventually(Duration::from_secs(60), || async {
        let (deleted, _) = contact_row(&engine.pool, untouched).await?;
        deleted.then_some(())
    })
    .await
    .expect("the poller finds the deletion");

    // HubSpot stops taking the access token before its stored expiry: the poller's
    // 401 expires it, and the next cycle refreshes it.
    hs.expire_access_tokens();
    hs.update("contacts", edited, &name("Again")).unwrap();
    first_name_is("Again").await;
    portal.engine.stop().await;
}

#[tokio::test]
async fn archived_records_are_listed_at_a_connections_first_poll_and_then_every_few() {
    // HubSpot cannot filter archived records by time: each listing reads them all.
    // (No link sweep: it lists contacts too.)
    let portal = polled_alone(
        20,
        &[
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_HUBSPOT_ARCHIVED_EVERY", "4"),
            ("CRM_LINK_SWEEP_EVERY", "0"),
        ],
    )
    .await;
    let engine = &portal.engine;
    let polls = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_sync_logs
             WHERE provider = 'hubspot' AND object = 'contact' AND operation = 'poll'
               AND status = 'ok'",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        (n >= 9).then_some(n)
    };
    eventually(Duration::from_secs(60), polls)
        .await
        .expect("nine polls of contacts");
    let metrics = engine.metrics().await;
    let lists =
        r#"crm_requests_total{provider="hubspot",object="contacts",verb="GET",status="200"} "#;
    let listed: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(lists))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    let polled = polls().await.unwrap();
    // At the connection's first poll, then one poll in four.
    assert!(
        listed >= 2 && listed * 2 <= polled,
        "{listed} listings in {polled} polls"
    );
    portal.engine.stop().await;
}

/// One poll of the contacts by hand, looking back a second.
async fn poll_contacts(
    engine: &common::TestEngine,
    client: crmsync_adapters::hubspot::client::HubSpotClient,
    connection: &crmsync_engine::hubspot::Connected,
    cursors: &async_nats::jetstream::kv::Store,
    archived: bool,
) -> anyhow::Result<crmsync_engine::hubspot::poller::PollReport> {
    crmsync_engine::hubspot::poller::poll_once(
        &client,
        &engine.js,
        &engine.topology.subjects,
        cursors,
        connection,
        "contacts",
        Duration::from_secs(1),
        archived,
    )
    .await
}

/// A portal of 1,000 contacts polled by hand (the engine's own poller keeps away: its
/// first cycle runs before the connection exists), with what a poll needs.
async fn polled_by_hand() -> (
    common::hubspot::Portal,
    Arc<crmsync_engine::hubspot::HubSpot>,
    crmsync_engine::hubspot::Connected,
    async_nats::jetstream::kv::Store,
) {
    let portal = polled_alone(1_000, &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    let hubspot = portal
        .engine
        .hubspot
        .clone()
        .expect("the engine syncs HubSpot");
    let connection = hubspot.connected().await.unwrap().remove(0);
    let cursors = portal
        .engine
        .js
        .get_key_value(portal.engine.topology.cursor_bucket())
        .await
        .unwrap();
    (portal, hubspot, connection, cursors)
}

#[tokio::test]
async fn an_edit_made_behind_a_long_scan_is_read_by_the_next_poll() {
    let (portal, hubspot, connection, cursors) = polled_by_hand().await;
    let (hs, engine) = (&portal.hs, &portal.engine);
    let client = hubspot.client("acme").await.unwrap();
    let poll = || poll_contacts(engine, client.clone(), &connection, &cursors, true);
    let ids: Vec<u64> = hs.snapshot("contacts").into_keys().collect();
    let (early, late) = (ids[0], ids[ids.len() - 1]);

    // Every request takes 4 s, so the first poll's scan (five pages of 200 in id
    // order, then the archived) takes about half a minute: page k is read between
    // 4(k-1) and 4k s. The first record is edited after page 1 was read, the last
    // before page 5. (Were the machine so slow that page 1 came after the first edit,
    // the test would pass without showing anything; it cannot fail for it.)
    hs.faults()
        .set("drop-webhooks=1,latency=4s".parse().unwrap());
    let name = |v: &str| [("firstname".to_owned(), v.to_owned())].into();
    let scan = tokio::spawn({
        let hs = hs.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            hs.update("contacts", early, &name("Early")).unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            hs.update("contacts", late, &name("Late")).unwrap();
        }
    });
    let first = poll().await.unwrap();
    scan.await.unwrap();
    assert_eq!(first.records, 1_000, "{first:?}");

    // The next poll reads the first record's edit, which the scan had passed.
    poll().await.unwrap();
    for (id, want) in [(early, "Early"), (late, "Late")] {
        first_name_becomes(&engine.pool, id, want, Duration::from_secs(30)).await;
    }
    portal.engine.stop().await;
}

#[tokio::test]
async fn a_poll_whose_token_is_refused_mid_scan_resumes_after_its_last_stored_page() {
    use crmsync_engine::hubspot::poller::{cursor_key, Cursor};
    let (portal, hubspot, connection, cursors) = polled_by_hand().await;
    let (hs, engine) = (&portal.hs, &portal.engine);
    let key = cursor_key("acme", "62515", "contacts");
    let cursor = || async {
        let entry = cursors.get(&key).await.unwrap()?;
        Some(serde_json::from_slice::<Cursor>(&entry).unwrap())
    };

    // A first scan of five pages, a second a page; HubSpot stops taking the token
    // once the scan has stored a page (as after half an hour of a long one).
    hs.faults()
        .set("drop-webhooks=1,latency=1s".parse().unwrap());
    let client = hubspot.client("acme").await.unwrap();
    let poll = |client| poll_contacts(engine, client, &connection, &cursors, true);
    let first = poll(client);
    let refuse = async {
        let under_way = eventually(Duration::from_secs(30), || async {
            cursor().await?.scan.filter(|s| s.last_id > 0)
        })
        .await;
        hs.expire_access_tokens();
        under_way
    };
    let (first, under_way) = tokio::join!(first, refuse);
    let under_way = under_way.expect("the scan stores where it stands after a page");
    let error = first.expect_err("the refused token ends the poll");
    let stopped_at = cursor().await.unwrap().scan.expect("the scan is kept");
    assert!(stopped_at.last_id >= under_way.last_id);
    assert!(hubspot.observe("acme", error.as_ref()).await, "{error:#}");

    // The next poll, with a fresh token, reads on from there and ends the scan.
    hs.faults().set("drop-webhooks=1".parse().unwrap());
    let client = hubspot.client("acme").await.unwrap();
    let second = poll(client).await.unwrap();
    assert!(
        second.records > 0 && second.records < 1_000,
        "it reads only what the first did not store: {second:?}"
    );
    let done = cursor().await.unwrap();
    assert_eq!(done.scan, None);
    assert!(done.since_ms > 0);
    let projected = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM contacts WHERE workspace_id = '62515' AND provider = 'hubspot'",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        (n == 1_000).then_some(n)
    })
    .await;
    assert_eq!(projected, Some(1_000), "every contact is stored");
    portal.engine.stop().await;
}

/// The live links from `from` records to `to` records the projection holds.
async fn projected_links(
    pool: &sqlx::PgPool,
    from: &str,
    to: &str,
) -> std::collections::BTreeSet<(u64, u64)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT from_id, to_id FROM associations
         WHERE workspace_id = '62515' AND provider = 'hubspot' AND from_type = $1
           AND to_type = $2 AND NOT removed",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(f, t)| (f.parse().unwrap(), t.parse().unwrap()))
        .collect()
}

/// How many link sets each sweep that finished after `since` stored, in order, and
/// whether it also started after `since`.
async fn sweeps_since(
    pool: &sqlx::PgPool,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<(i64, bool)> {
    sqlx::query_as(
        "SELECT records, started_at > $1 FROM crm_sync_logs
         WHERE provider = 'hubspot' AND operation = 'sweep' AND status = 'ok'
           AND finished_at > $1
         ORDER BY id",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_link_sweep_stores_only_the_link_sets_that_changed() {
    // Every association webhook lost: the sweep alone keeps the links, at every poll.
    let portal = polled_alone(
        30,
        &[
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_LINK_SWEEP_EVERY", "1"),
        ],
    )
    .await;
    let (hs, engine) = (&portal.hs, &portal.engine);
    let in_step = || async {
        let want = hs.links("contacts", "companies");
        let have = projected_links(&engine.pool, "contact", "company").await;
        (!want.is_empty() && want == have).then_some(())
    };
    eventually(Duration::from_secs(60), in_step)
        .await
        .expect("the first sweeps project every contact's companies");

    // Once the projection holds every set, a sweep stores none: the stream keeps its
    // history for ever, and a set stored again at each sweep would grow it by every
    // record each time.
    let settled = chrono::Utc::now();
    let nothing = eventually(Duration::from_secs(30), || async {
        sweeps_since(&engine.pool, settled)
            .await
            .into_iter()
            .find(|(n, whole)| *whole && *n == 0)
    })
    .await;
    assert!(
        nothing.is_some(),
        "a sweep with nothing changed stores nothing"
    );
    let before = engine.events_in_stream().await;
    let quiet = chrono::Utc::now();
    eventually(Duration::from_secs(30), || async {
        sweeps_since(&engine.pool, quiet)
            .await
            .into_iter()
            .find(|(_, whole)| *whole)
    })
    .await
    .expect("another sweep");
    assert_eq!(engine.events_in_stream().await, before);

    // A link added in HubSpot, its webhook lost: the next sweep stores that set alone.
    let contact = *hs.snapshot("contacts").keys().next().unwrap();
    let company = hs
        .snapshot("companies")
        .into_keys()
        .find(|c| !hs.links("contacts", "companies").contains(&(contact, *c)))
        .expect("a company the contact is not linked to");
    let linked = chrono::Utc::now();
    hs.associate("contacts", contact, "companies", company);
    // The first sweep to see it (one under way may have read that page before).
    let stored = eventually(Duration::from_secs(30), || async {
        sweeps_since(&engine.pool, linked)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| *n > 0)
    })
    .await;
    assert_eq!(stored, Some(1), "the changed set, and no other");
    eventually(Duration::from_secs(30), in_step)
        .await
        .expect("the new link is projected");
    portal.engine.stop().await;
}
