//! `POST /crm/sync/stop` and `/start`: a stopped sync makes no CRM call for its scope
//! (polls, pushes), loses nothing, and picks up where it stood when started.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use crmsync_testkit::eventually;

async fn push_state(pool: &sqlx::PgPool, call: &str) -> Option<(String, i32)> {
    sqlx::query_as("SELECT state, attempts FROM crm_call_pushes WHERE call_id = $1")
        .bind(call)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stopped_sync_calls_nothing_and_a_start_catches_up_with_nothing_lost() {
    let (db, _) = common::odoo::connected(30, 5, 5).await;
    let engine = &db.engine;
    let email: String = eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar(
            "SELECT email FROM contacts WHERE provider = 'odoo' AND email IS NOT NULL
             AND NOT deleted ORDER BY remote_id LIMIT 1",
        )
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
    })
    .await
    .expect("a contact is projected");

    // Refused: no token, unknown providers and objects, unknown keys.
    let anonymous = engine
        .http
        .post(engine.url("/crm/sync/stop"))
        .json(&json!({"workspace": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    for bad in [
        json!({"workspace": "acme", "provider": "pipedrive"}),
        json!({"workspace": "acme", "object": "leads"}),
        json!({"workspace": "acme", "colour": "red"}),
        json!({"provider": "odoo"}),
    ] {
        let (status, answer) = db.post("/crm/sync/stop", &bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }

    let (status, stopped) = db
        .post(
            "/crm/sync/stop",
            &json!({"workspace": "acme", "provider": "odoo"}),
        )
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["stopped"][0]["provider"], "odoo");
    assert_eq!(stopped["stopped"][0]["object"], "*");
    let (status, answer) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 409, "a stopped sync is not polled: {answer}");

    // A call outcome waits, queued, without an attempt.
    let calls = db.odoo.faults().requests(|_| true);
    let outcome = json!({
        "workspace": "acme", "provider": "odoo", "contact": {"email": email},
        "started_at": "2026-11-27T10:00:00Z", "duration_secs": 61,
        "direction": "outbound", "disposition": "connected", "summary": "Stopped sync",
    });
    let (status, answer) = db.post("/crm/calls/held/push-to-crm", &outcome).await;
    assert_eq!(status, 202, "{answer}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        push_state(&engine.pool, "held").await,
        Some(("queued".to_owned(), 0))
    );
    let (status, health) = common::get_json(
        engine,
        "/crm/health?provider=odoo&workspace=acme",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "a stopped sync is not unhealthy: {health}");
    assert_eq!(health["connections"][0]["stopped"], true, "{health}");
    assert_eq!(
        db.odoo.faults().requests(|_| true),
        calls,
        "no call to Odoo, not even a probe"
    );
    let (_, state) =
        common::get_json(engine, "/crm/sync/status?workspace=acme", Some(API_TOKEN)).await;
    assert_eq!(state["connections"][0]["stopped"], true, "{state}");

    // A narrower start leaves the workspace's stop in place, and says so.
    let (status, answer) = db
        .post(
            "/crm/sync/start",
            &json!({"workspace": "acme", "provider": "odoo", "object": "contacts"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");

    // Started: the push goes out, polls run again.
    let (status, started) = db
        .post("/crm/sync/start", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(started["stopped"], json!([]));
    let sent = eventually(Duration::from_secs(20), || async {
        push_state(&engine.pool, "held")
            .await
            .filter(|(state, _)| state == "sent")
    })
    .await;
    assert!(sent.is_some(), "the held push is sent after the start");
    let (status, _) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200);
    db.engine.stop().await;
}

#[tokio::test]
async fn stopping_one_object_stops_its_polls_only() {
    let portal =
        common::hubspot::start(Default::default(), &[("CRM_POLL_INTERVAL_SECS", "1")]).await;
    portal.connect("acme").await;
    let engine = &portal.engine;
    let stop = engine
        .http
        .post(engine.url("/crm/sync/stop"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"workspace": "acme", "provider": "hubspot", "object": "contacts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 200);
    let stopped_at: chrono::DateTime<chrono::Utc> = chrono::Utc::now();
    let polls_since = |object: &'static str| async move {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_sync_logs
             WHERE object = $1 AND operation = 'poll' AND started_at > $2",
        )
        .bind(object)
        .bind(stopped_at)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        n
    };
    let companies = eventually(Duration::from_secs(20), || async {
        let n = polls_since("company").await;
        (n >= 2).then_some(n)
    })
    .await;
    assert!(companies.is_some(), "companies are still polled");
    assert_eq!(polls_since("contact").await, 0, "contacts are not");
    let (_, state) =
        common::get_json(engine, "/crm/sync/status?workspace=acme", Some(API_TOKEN)).await;
    let objects: Vec<(Value, Value)> = state["connections"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["object"].clone(), o["stopped"].clone()))
        .collect();
    assert!(
        objects.contains(&(json!("contact"), json!(true))),
        "{objects:?}"
    );
    assert!(
        objects.contains(&(json!("company"), json!(false))),
        "{objects:?}"
    );
    portal.engine.stop().await;
}
