//! `GET /crm/sync/logs` (`CrmSyncLog`): every poll and sweep of a connection is a
//! row, failures with their reason; filtered and paged.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use common::TestEngine;
use crmsync_testkit::eventually;

async fn logs(engine: &TestEngine, query: &str) -> (u16, Value) {
    common::get_json(engine, &format!("/crm/sync/logs{query}"), Some(API_TOKEN)).await
}

#[tokio::test]
async fn polls_are_logged_with_their_outcome_and_the_log_is_filtered_and_paged() {
    let (db, polled) = common::odoo::connected(40, 5, 10).await;
    let engine = &db.engine;
    let database = db.connect_body()["database"].clone();
    // The database is renamed away under the connection: that poll fails.
    let settings = |database: &str| {
        sqlx::query(
            "UPDATE crm_connections SET settings = jsonb_set(settings, '{database}', to_jsonb($1::text))
             WHERE workspace_id = 'acme'",
        )
        .bind(database.to_owned())
        .execute(&engine.pool)
    };
    settings("gone").await.unwrap();
    let (status, _) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_ne!(status, 200);
    settings(database.as_str().unwrap()).await.unwrap();
    let (status, _) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200);

    let (status, all) = logs(engine, "?workspace=acme&provider=odoo").await;
    assert_eq!(status, 200, "{all}");
    let rows = all["logs"].as_array().unwrap();
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    // Newest first: the last poll, the failed one, and before them the first poll
    // (the scheduler may have polled the new connection at once, beside it).
    assert_eq!(statuses[..2], ["ok", "error"], "newest first: {all}");
    assert!(
        statuses.len() >= 3 && statuses[2..].iter().all(|s| *s == "ok"),
        "{all}"
    );
    let first = rows[2..]
        .iter()
        .find(|r| r["records"] == polled["report"]["records"])
        .unwrap_or_else(|| panic!("the first poll, with its records: {all}"));
    assert_eq!(first["operation"], "poll");
    assert!(first["duration_ms"].is_i64(), "{first}");
    assert!(first["message"].is_null());
    let failed = &rows[1];
    assert!(
        failed["message"].as_str().unwrap().contains("gone"),
        "the reason: {failed}"
    );

    // Filters and pages.
    let (_, errors) = logs(engine, "?workspace=acme&status=error").await;
    assert_eq!(errors["logs"].as_array().unwrap().len(), 1, "{errors}");
    let (_, page) = logs(engine, "?workspace=acme&limit=2").await;
    assert_eq!(page["logs"].as_array().unwrap().len(), 2);
    let before = page["next_before"].as_i64().expect("another page");
    let (_, rest) = logs(engine, &format!("?workspace=acme&limit=2&before={before}")).await;
    assert_eq!(
        rest["logs"].as_array().unwrap().len(),
        rows.len() - 2,
        "{rest}"
    );
    let (_, state) =
        common::get_json(engine, "/crm/sync/status?workspace=acme", Some(API_TOKEN)).await;
    let partners = &state["connections"][0]["objects"][0];
    assert_eq!(partners["object"], "res.partner", "{state}");
    assert!(partners["cursor"].is_object(), "{partners}");
    assert_eq!(partners["last_poll"]["status"], "ok", "{partners}");
    let (_, none) = logs(engine, "?workspace=nobody").await;
    assert_eq!(none["logs"], json!([]));

    for bad in ["?provider=pipedrive", "?operation=dance", "?status=meh"] {
        let (status, answer) = logs(engine, bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let (status, _) = common::get_json(engine, "/crm/sync/logs", None).await;
    assert_eq!(status, 401);
    db.engine.stop().await;
}

#[tokio::test]
async fn the_hubspot_poller_logs_each_object_it_polls() {
    let portal =
        common::hubspot::start(Default::default(), &[("CRM_POLL_INTERVAL_SECS", "1")]).await;
    portal.connect("acme").await;
    let objects = eventually(Duration::from_secs(20), || async {
        let (_, answer) = logs(
            &portal.engine,
            "?workspace=acme&provider=hubspot&operation=poll",
        )
        .await;
        let mut objects: Vec<String> = answer["logs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "ok")
            .map(|r| r["object"].as_str().unwrap().to_owned())
            .collect();
        objects.sort();
        objects.dedup();
        (objects.len() == 3).then_some(objects)
    })
    .await
    .expect("a poll of each object is logged");
    assert_eq!(objects, ["company", "contact", "deal"]);

    // The status shows each object's cursor, last poll and backfill.
    let (status, answer) = common::get_json(
        &portal.engine,
        "/crm/sync/status?workspace=acme",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let objects = answer["connections"][0]["objects"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(objects.len(), 3, "{answer}");
    for o in &objects {
        assert!(o["cursor"]["since_ms"].is_i64(), "{o}");
        assert_eq!(o["last_poll"]["status"], "ok", "{o}");
        assert!(o["last_success"].is_string(), "{o}");
        assert_eq!(o["backfill"]["resume_point"], Value::Null, "{o}");
    }
    portal.engine.stop().await;
}
