//! Zoho CRM kept in step end to end, against the Zoho emulator over HTTP: connecting
//! in the user's data centre, notification channels and their tokens, backfill, then
//! notifications (some dropped), deletes and 429 storms while the mutation driver
//! runs; at the end the projection equals the org, record for record.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::differences;
use common::hubspot::API_TOKEN;
use common::zoho::start;
use crmsync_adapters::zoho::client::ZohoClient;
use crmsync_adapters::zoho::MODULES;
use crmsync_adapters::{Metrics, RateLimiter, Vault};
use crmsync_engine::zoho::backfill::backfill;
use crmsync_ingest::connections;
use crmsync_sandbox::zoho::{Config, DataCentre, ZohoSandbox};
use crmsync_testkit::eventually;

/// A write through the emulator's API, as a colleague's integration would make it:
/// `PUT` of `record`, or `DELETE` without one.
async fn api_write(
    org: &common::zoho::Org,
    path: &str,
    record: Option<Value>,
) -> reqwest::Response {
    let token = org.zs.credentials(&org.running.base_url)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!(
        "{}/crm/v8/{path}",
        DataCentre::Us.api_domain(&org.running.base_url)
    );
    let request = match record {
        Some(record) => reqwest::Client::new()
            .put(url)
            .json(&json!({ "data": [record] })),
        None => reqwest::Client::new().delete(url),
    };
    request
        .header("Authorization", format!("Zoho-oauthtoken {token}"))
        .send()
        .await
        .unwrap()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

#[tokio::test]
async fn a_connection_lives_in_the_users_data_centre() {
    let org = start(Config::default(), &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    org.zs.set_data_centre(DataCentre::Eu);
    let answer = org.connect("acme").await;
    let eu_api = DataCentre::Eu.api_domain(&org.running.base_url);
    assert_eq!(answer["api_domain"], json!(eu_api));
    assert_eq!(answer["account_id"], json!(org.zs.org_id()));
    let pool = &org.engine.pool;
    let stored = connections::get(pool, "acme", "zoho")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, "active");
    assert_eq!(
        stored.settings["accounts_server"],
        json!(DataCentre::Eu.accounts_url(&org.running.base_url))
    );
    assert_eq!(stored.settings["location"], json!("eu"));

    // A refused token is refreshed at the EU accounts server and works on the EU API.
    org.zs.expire_access_tokens();
    connections::invalidate_access_token(pool, "acme", "zoho")
        .await
        .unwrap();
    let token = org.token("acme").await.unwrap();
    let client = ZohoClient::new(
        eu_api.clone(),
        token,
        Arc::new(RateLimiter::new(10.0, 10.0)),
        2,
        Arc::new(Metrics::new()),
    );
    assert_eq!(client.org_id().await.unwrap(), org.zs.org_id());

    // The client secret goes to no accounts server but Zoho's (here: the emulator's).
    let callback = org.authorize("other").await;
    let forged = replace_param(
        &callback,
        "accounts-server",
        "https://evil.example/accounts",
    );
    let refused = org.no_redirects.get(&forged).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("not a Zoho accounts server"));
    // A code Zoho does not know.
    let callback = org.authorize("other").await;
    let bogus = replace_param(&callback, "code", "1000.bogus");
    let refused = org.no_redirects.get(&bogus).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(connections::get(pool, "other", "zoho")
        .await
        .unwrap()
        .is_none());
    // Callbacks are single-use.
    let callback = org.authorize("other").await;
    assert_eq!(
        org.no_redirects
            .get(&callback)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        org.no_redirects
            .get(&callback)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let disconnect = org
        .engine
        .http
        .post(org.engine.url("/crm/zoho/disconnect"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"workspace": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(disconnect.status(), 200);
    assert!(connections::get(pool, "other", "zoho")
        .await
        .unwrap()
        .is_none());
    org.engine.stop().await;
}

#[tokio::test]
async fn notifications_need_their_channels_token_and_channels_are_renewed() {
    let org = start(
        Config::default(),
        // No polling after start-up: changes can only come through the channel.
        &[
            ("CRM_POLL_INTERVAL_SECS", "3600"),
            ("CRM_ZOHO_CHANNEL_TTL_SECS", "4"),
            ("CRM_WEBHOOK_MAX_BYTES", "4096"),
        ],
    )
    .await;
    org.connect("acme").await;
    let engine = &org.engine;
    let notify_url = engine.url("/crm/webhooks/zoho");
    let live = || {
        org.zs
            .live_channels()
            .into_iter()
            .find(|(_, url, _)| *url == notify_url)
    };
    let first = eventually(Duration::from_secs(10), || async { live() })
        .await
        .expect("the channel is enabled");
    let stored = connections::get(&engine.pool, "acme", "zoho")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.settings["channel_id"], json!(first.0));

    // Renewed before it expires, and enabled again when Zoho forgot it.
    let renewed = eventually(Duration::from_secs(10), || async {
        live().filter(|c| c.2 > first.2)
    })
    .await;
    assert!(renewed.is_some(), "the channel was renewed");
    org.zs.expire_watch_channels();
    assert!(org.zs.live_channels().is_empty());
    assert!(
        eventually(Duration::from_secs(10), || async { live() })
            .await
            .is_some(),
        "the channel was enabled again"
    );

    // Forged callbacks change nothing.
    let before = engine.events_in_stream().await;
    let callback = |channel: &str, token: &str| {
        json!({"server_time": 1_714_540_000_000_i64, "module": "Contacts", "ids": ["1"],
               "operation": "update", "channel_id": channel, "token": token,
               "resource_uri": "x", "affected_fields": [], "query_params": {}})
        .to_string()
    };
    let json_type = [("content-type", "application/json".to_owned())];
    let channel = first.0.as_str();
    // The channel's own token, one byte off.
    let sealed: Vec<u8> = sqlx::query_scalar(
        "SELECT secrets FROM crm_connections WHERE workspace_id = 'acme' AND provider = 'zoho'",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    let opened: Value =
        serde_json::from_slice(&Vault::parse(&org.key).unwrap().open(&sealed).unwrap()).unwrap();
    let mut off_by_one = opened["channel_token"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    *off_by_one.last_mut().unwrap() ^= 1;
    let off_by_one = String::from_utf8(off_by_one).unwrap();
    let mut oversized = callback(channel, &off_by_one).into_bytes();
    oversized.extend(std::iter::repeat_n(b' ', 4096));
    for (body, status) in [
        (callback(channel, "wrong-token").into_bytes(), 401),
        (callback(channel, "").into_bytes(), 401),
        (callback(channel, &off_by_one).into_bytes(), 401),
        (callback("12345", "wrong-token").into_bytes(), 401),
        (b"{not json".to_vec(), 400),
        (b"{\"channel_id\": \"\xff\xfe\"}".to_vec(), 400),
        (json!({"channel_id": channel}).to_string().into_bytes(), 400),
        (oversized, 413),
    ] {
        let r = engine
            .post_with("/crm/webhooks/zoho", &json_type, &body)
            .await;
        assert_eq!(
            r.status(),
            status,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    let r = engine
        .post_with(
            "/crm/webhooks/zoho",
            &[("content-type", "text/plain".to_owned())],
            callback(channel, "x").as_bytes(),
        )
        .await;
    assert_eq!(r.status(), 415);
    assert_eq!(engine.events_in_stream().await, before);
    let metrics = engine.metrics().await;
    assert!(
        metrics.contains(
            r#"crm_webhook_verification_failures_total{provider="zoho",reason="mismatch"} 3"#
        ),
        "{metrics}"
    );

    // A real change arrives through the channel and is projected, although Zoho has
    // meanwhile refused the engine's access token: INVALID_TOKEN makes it refresh.
    org.zs.expire_access_tokens();
    let id = org.zs.records("Contacts")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let update = api_write(
        &org,
        &format!("Contacts/{id}"),
        Some(json!({"Title": "Chief Notifier"})),
    )
    .await;
    assert_eq!(update.status(), 200, "{}", update.text().await.unwrap());
    let projected = eventually(Duration::from_secs(15), || async {
        let title: Option<String> = sqlx::query_scalar(
            "SELECT job_title FROM contacts WHERE provider = 'zoho' AND remote_id = $1",
        )
        .bind(&id)
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
        .flatten();
        title.filter(|t| t == "Chief Notifier")
    })
    .await;
    assert!(projected.is_some(), "the notified change was projected");
    let metrics = engine.metrics().await;
    assert!(
        metrics.contains(
            r#"crm_requests_total{provider="zoho",object="webhook",verb="POST",status="200"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"provider="zoho",object="contacts",verb="GET",status="401""#),
        "the hydrator met the refused token: {metrics}"
    );
    org.engine.stop().await;
}

/// Waits for the engine's notification channel to be live in the org.
async fn channel_is_enabled(org: &common::zoho::Org) {
    let notify_url = org.engine.url("/crm/webhooks/zoho");
    let live = eventually(Duration::from_secs(10), || async {
        org.zs
            .live_channels()
            .into_iter()
            .find(|c| c.1 == notify_url)
    })
    .await;
    assert!(live.is_some(), "the channel is enabled");
}

/// Waits for as many Zoho contacts in the projection as the org has.
async fn every_contact_is_projected(org: &common::zoho::Org) {
    let want = org_state(&org.zs, "Contacts").len();
    let projected = eventually(Duration::from_secs(30), || async {
        let n = projected(&org.engine.pool, &org.zs.org_id(), "Contacts")
            .await
            .len();
        (n == want).then_some(n)
    })
    .await;
    assert_eq!(projected, Some(want), "every contact is projected");
}

/// Canonical columns compared per module, with the Zoho field each comes from.
fn compared(module: &str) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match module {
        "Contacts" => (
            "contacts",
            &[
                ("First_Name", "first_name"),
                ("Last_Name", "last_name"),
                ("Email", "email"),
                ("Phone", "phone"),
                ("Title", "job_title"),
                ("Lead_Source", "lead_source"),
                ("Interests", "Interests"),
            ],
        ),
        "Accounts" => (
            "companies",
            &[
                ("Account_Name", "name"),
                ("Industry", "industry"),
                ("Phone", "phone"),
                ("Billing_City", "city"),
            ],
        ),
        _ => (
            "deals",
            &[
                ("Deal_Name", "name"),
                ("Stage", "stage"),
                ("Amount", "amount"),
                ("Closing_Date", "close_date"),
            ],
        ),
    }
}

type Records = BTreeMap<String, BTreeMap<String, Value>>;

fn blank_to_null(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(other) => other.clone(),
    }
}

fn org_state(zs: &ZohoSandbox, module: &str) -> Records {
    let (_, columns) = compared(module);
    zs.records(module)
        .into_iter()
        .map(|r| {
            let row = columns
                .iter()
                .map(|(zoho, canonical)| ((*canonical).to_owned(), blank_to_null(r.get(*zoho))))
                .collect();
            (r["id"].as_str().unwrap().to_owned(), row)
        })
        .collect()
}

async fn projected(pool: &sqlx::PgPool, org: &str, module: &str) -> Records {
    let (table, columns) = compared(module);
    let rows: Vec<(String, Value)> = sqlx::query_as(&format!(
        "SELECT remote_id, fields FROM {table}
         WHERE workspace_id = $1 AND provider = 'zoho' AND NOT deleted"
    ))
    .bind(org)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, fields)| {
            let row = columns
                .iter()
                .map(|(_, canonical)| {
                    (
                        (*canonical).to_owned(),
                        blank_to_null(fields.get(*canonical)),
                    )
                })
                .collect();
            (id, row)
        })
        .collect()
}

#[tokio::test]
async fn a_backfill_outlives_its_access_token() {
    let org = start(
        Config {
            contacts: 1_000,
            ..Config::default()
        },
        &[("CRM_POLL_INTERVAL_SECS", "3600")],
    )
    .await;
    org.connect("acme").await;
    let (zs, engine) = (&org.zs, &org.engine);
    let zoho = engine.zoho.clone().unwrap();
    let connection = zoho.connection("acme").await.unwrap();
    let cursors = engine
        .js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .unwrap();
    let resume = crmsync_engine::zoho::backfill::resume_key("acme", &zs.org_id(), "Contacts");

    // Pages come slowly; once the first is stored, the token expires early (as if the
    // backfill had run for an hour, or the token had been revoked).
    zs.faults().set("latency=150ms".parse().unwrap());
    let backfilling = {
        let (zoho, js, subjects) = (
            zoho.clone(),
            engine.js.clone(),
            engine.topology.subjects.clone(),
        );
        let (cursors, connection) = (cursors.clone(), connection.clone());
        tokio::spawn(async move {
            let mut progress = Vec::new();
            let stored = backfill(
                &zoho,
                &js,
                &subjects,
                &cursors,
                &connection,
                "Contacts",
                "contact",
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
    zs.expire_access_tokens();

    let (stored, progress) = backfilling.await.unwrap();
    assert!(
        progress.contains("Contacts: Zoho refused the access token; refreshing it and resuming"),
        "{progress}"
    );
    // The resumed scan starts a second before the newest stored change: a record or
    // two may be stored again (the stream deduplicates them).
    assert!(stored.unwrap() >= 1_000, "{progress}");
    assert!(progress.contains("Contacts: done,"), "{progress}");
    zs.faults().set(Default::default());
    every_contact_is_projected(&org).await;

    // The poll cursor starts at the newest change the backfill read: the first poll
    // reads only what changed since (and the second before it), not the org again.
    let client = zoho.client("acme").await.unwrap();
    let first = crmsync_engine::zoho::poller::poll_once(
        &client,
        &engine.js,
        &engine.topology.subjects,
        &cursors,
        &connection,
        "Contacts",
        "contact",
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert!(first.records < 10, "{first:?}");
    org.engine.stop().await;
}

#[tokio::test]
async fn an_org_stays_in_step_through_dropped_notifications_deletes_and_429_storms() {
    let config = Config {
        contacts: 3_000,
        companies: 400,
        deals: 800,
        concurrency: 10,
        ..Config::default()
    };
    let org = start(
        config,
        &[
            ("CRM_SYNC_RPS", "200"),
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_POLL_LOOKBACK_SECS", "3"),
        ],
    )
    .await;
    org.connect("acme").await;
    let (zs, engine) = (&org.zs, &org.engine);
    let org_id = zs.org_id();

    // Backfill every module (the poller would too; this is the explicit command's path).
    let zoho = engine.zoho.clone().expect("the engine syncs Zoho");
    let connection = zoho.connection("acme").await.unwrap();
    assert_eq!(connection.org, org_id);
    let cursors = engine
        .js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .unwrap();
    let mut progress = Vec::new();
    let mut stored = 0;
    for (module, object) in MODULES {
        stored += backfill(
            &zoho,
            &engine.js,
            &engine.topology.subjects,
            &cursors,
            &connection,
            module,
            object,
            &mut progress,
        )
        .await
        .unwrap();
    }
    assert_eq!(stored, 4_200);
    let progress = String::from_utf8(progress).unwrap();
    assert!(
        progress.contains("Contacts: done, 3000 records"),
        "{progress}"
    );

    // The channel is on; changes flow as notifications (a third dropped) through 429
    // storms while the driver creates, edits and deletes.
    channel_is_enabled(&org).await;
    zs.faults()
        .set("drop-webhooks=0.3,storm=500ms/2s".parse().unwrap());
    for _ in 0..60 {
        zs.mutate(10);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    zs.faults().set(Default::default());

    // Polling closes the gaps: the projection converges on the org.
    let mut last = Vec::new();
    for _ in 0..60 {
        last.clear();
        for (module, _) in MODULES {
            let want = org_state(zs, module);
            let have = projected(&engine.pool, &org_id, module).await;
            last.extend(
                differences(&want, &have)
                    .into_iter()
                    .map(|d| format!("{module} {d}")),
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
    assert!(zs.callbacks_sent() > 0, "notifications were sent");
    let metrics = engine.metrics().await;
    assert!(
        metrics.contains(r#"provider="zoho",error_type="rate_limited""#),
        "the storms were met: {metrics}"
    );
    assert!(
        zs.callbacks_dropped() > 0,
        "and some dropped, which polling made up for"
    );
    let tombstones: i64 =
        sqlx::query_scalar("SELECT count(*) FROM contacts WHERE provider = 'zoho' AND deleted")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    let deleted: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM contacts WHERE provider = 'zoho') - $1::bigint",
    )
    .bind(zs.record_count("Contacts") as i64)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(tombstones, deleted, "every deleted contact is a tombstone");
    // Links follow the lookups: every live deal's contact link is projected.
    let deals = zs.records("Deals");
    let linked = deals
        .iter()
        .filter(|d| d["Contact_Name"].is_object())
        .count() as i64;
    let count_links = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM associations a JOIN deals d
               ON d.workspace_id = a.workspace_id AND d.provider = a.provider
              AND d.remote_id = a.from_id
             WHERE a.provider = 'zoho' AND a.from_type = 'deal' AND a.to_type = 'contact'
               AND NOT a.removed AND NOT d.deleted",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        n
    };
    let links = eventually(Duration::from_secs(30), || async {
        Some(count_links().await).filter(|n| *n == linked)
    })
    .await;
    assert_eq!(links, Some(linked), "have {}", count_links().await);

    // A deal moved to another contact loses its old link.
    let deal = deals
        .iter()
        .find(|d| d["Contact_Name"].is_object())
        .unwrap();
    let deal_id = deal["id"].as_str().unwrap().to_owned();
    let old = deal["Contact_Name"]["id"].as_str().unwrap().to_owned();
    let new = zs
        .records("Contacts")
        .into_iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .find(|c| *c != old)
        .unwrap();
    let moved = api_write(
        &org,
        &format!("Deals/{deal_id}"),
        Some(json!({"Contact_Name": {"id": new}})),
    )
    .await;
    assert_eq!(moved.status(), 200, "{}", moved.text().await.unwrap());
    let link_of = |to: String| {
        let deal_id = deal_id.clone();
        async move {
            let removed: Option<bool> = sqlx::query_scalar(
                "SELECT removed FROM associations WHERE provider = 'zoho'
                   AND from_type = 'deal' AND from_id = $1 AND to_type = 'contact' AND to_id = $2",
            )
            .bind(deal_id)
            .bind(to)
            .fetch_optional(&engine.pool)
            .await
            .unwrap();
            removed
        }
    };
    let settled = eventually(Duration::from_secs(20), || async {
        let (was, is) = (link_of(old.clone()).await, link_of(new.clone()).await);
        (was == Some(true) && is == Some(false)).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "old link {:?}, new link {:?}",
        link_of(old.clone()).await,
        link_of(new.clone()).await
    );
    common::assert_replay_matches(&org.engine).await;
    common::events::assert_contract(&org.engine.js, &org.engine.topology).await;
    org.engine.stop().await;
}

#[tokio::test]
async fn calls_logged_edited_or_deleted_while_notifications_are_lost_are_found_by_polling() {
    let config = Config {
        contacts: 20,
        companies: 5,
        deals: 5,
        ..Config::default()
    };
    let org = start(
        config,
        &[
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_POLL_LOOKBACK_SECS", "3"),
        ],
    )
    .await;
    org.connect("acme").await;
    let (zs, engine) = (&org.zs, &org.engine);
    channel_is_enabled(&org).await;
    // Zoho does not retry a notification: with every one lost, only the poll can
    // tell the engine about these calls.
    zs.faults().set("drop-webhooks=1".parse().unwrap());
    let zoho = engine.zoho.as_ref().unwrap().client("acme").await.unwrap();
    let made = zoho
        .insert(
            "Calls",
            &[
                json!({"Subject": "Kept", "Call_Type": "Inbound",
                       "Call_Start_Time": "2026-11-27T09:00:00+00:00"}),
                json!({"Subject": "Deleted", "Call_Type": "Outbound",
                       "Call_Start_Time": "2026-11-27T10:00:00+00:00"}),
            ],
        )
        .await
        .unwrap();
    let id = |i: usize| {
        made.pointer(&format!("/data/{i}/details/id"))
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    };
    let (kept, gone) = (id(0), id(1));
    let row = |id: String| {
        let pool = engine.pool.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, bool)>(
                "SELECT subject, deleted FROM activities
                 WHERE provider = 'zoho' AND remote_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    for (id, subject) in [(&kept, "Kept"), (&gone, "Deleted")] {
        let projected = eventually(Duration::from_secs(30), || async {
            row(id.clone())
                .await
                .filter(|r| r.0.as_deref() == Some(subject))
        })
        .await;
        assert!(projected.is_some(), "the call {subject:?} is projected");
    }
    assert!(zs.edit_text("Calls", &kept, &[("Subject", "Renamed in Zoho")]));
    let deleted = api_write(&org, &format!("Calls/{gone}"), None).await;
    assert_eq!(deleted.status(), 200, "{}", deleted.text().await.unwrap());
    let renamed = eventually(Duration::from_secs(30), || async {
        row(kept.clone())
            .await
            .filter(|r| r.0.as_deref() == Some("Renamed in Zoho"))
    })
    .await;
    assert_eq!(renamed, Some((Some("Renamed in Zoho".to_owned()), false)));
    let tombstone = eventually(Duration::from_secs(30), || async {
        row(gone.clone()).await.filter(|r| r.1)
    })
    .await;
    assert!(tombstone.is_some(), "the deleted call is a tombstone");
    assert!(
        zs.callbacks_dropped() >= 3,
        "the notifications were lost: {}",
        zs.callbacks_dropped()
    );
    org.engine.stop().await;
}

#[tokio::test]
async fn a_poll_whose_token_is_refused_mid_scan_resumes_near_where_it_stopped() {
    use crmsync_engine::zoho::poller::{cursor_key, poll_once, Cursor};
    let config = Config {
        contacts: 1_000,
        companies: 2,
        deals: 2,
        ..Config::default()
    };
    // The engine's own poller keeps away (its first cycle runs before the connection
    // exists): the test polls by hand.
    let org = start(config, &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    org.connect("acme").await;
    let (zs, engine) = (&org.zs, &org.engine);
    let zoho = engine.zoho.clone().expect("the engine syncs Zoho");
    let connection = zoho.connection("acme").await.unwrap();
    let cursors = engine
        .js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .unwrap();
    let key = cursor_key("acme", &zs.org_id(), "Contacts");
    let cursor = || async {
        let entry = cursors.get(&key).await.unwrap()?;
        Some(serde_json::from_slice::<Cursor>(&entry).unwrap())
    };
    let poll = |client| {
        let (engine, connection, cursors) = (&engine, &connection, &cursors);
        async move {
            poll_once(
                &client,
                &engine.js,
                &engine.topology.subjects,
                cursors,
                connection,
                "Contacts",
                "contact",
                Duration::from_secs(1),
            )
            .await
        }
    };

    // A scan of five pages; Zoho stops taking the token once one page is stored.
    zs.faults().set("latency=1s".parse().unwrap());
    let first = poll(zoho.client("acme").await.unwrap());
    let refuse = async {
        let under_way = eventually(Duration::from_secs(30), || async {
            cursor().await.filter(|c| c.modified_ms > 0)
        })
        .await;
        zs.expire_access_tokens();
        under_way
    };
    let (first, under_way) = tokio::join!(first, refuse);
    assert!(under_way.is_some(), "the cursor moves after a stored page");
    let error = first.expect_err("the refused token ends the poll");
    assert!(zoho.observe("acme", error.as_ref()).await, "{error:#}");

    // The next poll, with a fresh token, starts near where the first stopped.
    zs.faults().set(Default::default());
    let second = poll(zoho.client("acme").await.unwrap()).await.unwrap();
    assert!(
        second.records > 0 && second.records < 1_000,
        "it reads only what the first did not reach: {second:?}"
    );
    every_contact_is_projected(&org).await;
    org.engine.stop().await;
}
