//! The bad-input catalogue. Each input gets a clear error and changes nothing; where
//! a case is tested:
//!
//! | input | test |
//! |---|---|
//! | malformed, cut-short, non-object and invalid UTF-8 JSON; oversized bodies; wrong or missing content type (control API) | here, every route |
//! | the same on the webhooks | `webhook.rs` (HubSpot), `zoho_sync.rs` (Zoho) |
//! | signatures wrong by one byte; stale and future timestamps | `webhook.rs`, `fuzz/` (`hubspot_webhook`), `adapters` unit tests |
//! | a Zoho channel token one byte off, an unknown channel | `zoho_sync.rs` |
//! | replayed webhooks | `webhook.rs` (HubSpot retries stored once), `adapters` (Zoho, with and without `server_time`) |
//! | unknown providers, workspaces, calls and DLQ ids | here; `mappings.rs`, `sync_control.rs`, `cli.rs` |
//! | forged, expired, misdirected, unissued and reused OAuth state | `connect.rs`, `zoho_sync.rs` |
//! | ids and field names built to break subjects, SQL and JSON paths; huge values | here; `fuzz/` (`subject_token`); `crmsync-schema` |
//! | any bytes to the parsers | `fuzz/`, corpus checked by `crmsync-fuzzing` |
//! | bad configuration | `cli.rs`, `engine/src/config.rs` |

mod common;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use common::TestEngine;
use crmsync_sandbox::odoo::Config;

/// Sends `body` as given: the status and the JSON answer.
async fn send(
    engine: &TestEngine,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), engine.url(path))
        .bearer_auth(API_TOKEN)
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let answer = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {path}: {status} answered with no JSON: {text:?}"));
    (status, answer)
}

/// Everything a request could have changed: stored events and commands, and the
/// rows of every table a control route writes.
async fn footprint(engine: &TestEngine) -> Vec<(String, i64)> {
    let mut counts = vec![];
    for stream in [
        engine.topology.events_stream(),
        engine.topology.outbound_stream(),
    ] {
        let mut s = engine.js.get_stream(&stream).await.unwrap();
        counts.push((stream, s.info().await.unwrap().state.messages as i64));
    }
    for table in [
        "crm_connections",
        "crm_call_pushes",
        "crm_field_mappings",
        "crm_sync_pauses",
        "crm_sync_logs",
        "contacts",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&engine.pool)
            .await
            .unwrap();
        counts.push((table.to_owned(), n));
    }
    counts
}

/// What a body is, its content type, the body, and the status and words expected.
type Body = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test]
async fn broken_control_api_bodies_get_clear_errors_and_change_nothing() {
    let db = common::odoo::start(
        Config {
            contacts: 5,
            ..Config::default()
        },
        &[
            ("CRM_WEBHOOK_MAX_BYTES", "4096"),
            ("CRM_POLL_INTERVAL_SECS", "3600"),
        ],
    )
    .await;
    let (status, answer) = db.post("/crm/odoo/connect", &db.connect_body()).await;
    assert_eq!(status, 200, "{answer}");
    // No scheduled poll from here on (one may have started at the connect: it is
    // waited for below), so that only the requests can leave a trace.
    let (status, answer) = db
        .post("/crm/odoo/scheduler/stop", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut before = footprint(&db.engine).await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let now = footprint(&db.engine).await;
        if now == before {
            break;
        }
        before = now;
    }

    let oversized =
        serde_json::to_vec(&json!({"workspace": "acme", "notes": "x".repeat(5000)})).unwrap();
    let json = Some("application/json");
    let bodies: Vec<Body> = vec![
        (
            "cut short",
            json,
            b"{\"workspace\": ".to_vec(),
            400,
            "the body",
        ),
        (
            "invalid UTF-8",
            json,
            b"{\"\xff\xfe\": \"acme\"}".to_vec(),
            400,
            "invalid unicode",
        ),
        ("not an object", json, b"[1, 2]".to_vec(), 400, "the body"),
        (
            "oversized",
            json,
            oversized,
            413,
            "larger than the 4096 bytes",
        ),
        (
            "text",
            Some("text/plain"),
            br#"{"workspace": "acme"}"#.to_vec(),
            415,
            "application/json",
        ),
        (
            "no content type",
            None,
            br#"{"workspace": "acme", "provider": "odoo"}"#.to_vec(),
            415,
            "application/json",
        ),
    ];
    let routes = [
        ("POST", "/crm/calls/call-1/push-to-crm"),
        ("PUT", "/crm/mappings/odoo/contacts?workspace=acme"),
        ("POST", "/crm/sync/stop"),
        ("POST", "/crm/sync/start"),
        ("POST", "/crm/odoo/connect"),
        ("POST", "/crm/odoo/poll"),
        ("POST", "/crm/odoo/scheduler/start"),
    ];
    for (method, path) in routes {
        for (what, content_type, body, status, message) in &bodies {
            let (got, answer) = send(&db.engine, method, path, *content_type, body.clone()).await;
            assert_eq!(got, *status, "{method} {path}, {what}: {answer}");
            let text = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(text.contains(message), "{method} {path}, {what}: {text}");
        }
    }
    assert_eq!(
        footprint(&db.engine).await,
        before,
        "a refused request left a trace"
    );

    // A body that may be left out is taken as absent when empty, whatever the
    // headers say (clients that always send a content type, `curl -d ''`).
    for content_type in [
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, answer) = send(
            &db.engine,
            "POST",
            "/crm/odoo/poll?workspace=acme",
            content_type,
            vec![],
        )
        .await;
        assert_eq!(status, 200, "{content_type:?}: {answer}");
    }
}

#[tokio::test]
async fn unknown_routes_workspaces_and_ids_are_refused_clearly() {
    let db = common::odoo::start(Config::default(), &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    let before = footprint(&db.engine).await;
    let engine = &db.engine;
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            "/crm/webhooks/pipedrive".into(),
            json!([]),
            404,
            "pipedrive",
        ),
        (
            "POST",
            "/crm/calls/call-1/push-to-crm".into(),
            json!({"workspace": "nobody", "provider": "odoo", "contact": {"email": "a@example.com"},
                   "started_at": "2026-11-28T10:00:00Z", "duration_secs": 5,
                   "direction": "outbound", "disposition": "connected"}),
            404,
            "nobody",
        ),
        (
            "POST",
            "/crm/odoo/poll".into(),
            json!({"workspace": "nobody"}),
            404,
            "nobody",
        ),
        (
            "POST",
            "/crm/odoo/poll".into(),
            json!({"workspace": "a.b.>"}),
            404,
            "a.b.>",
        ),
        (
            "PUT",
            "/crm/mappings/pipedrive/contacts?workspace=acme".into(),
            json!({"rules": []}),
            400,
            "pipedrive",
        ),
        (
            "PUT",
            "/crm/mappings/odoo/contacts'%3B%20DROP%20TABLE%20contacts%3B--?workspace=acme".into(),
            json!({"rules": []}),
            400,
            "DROP TABLE",
        ),
        (
            "POST",
            format!("/crm/calls/{}/push-to-crm", "x".repeat(300)),
            json!({}),
            400,
            "call_id",
        ),
        (
            "POST",
            "/crm/dlq/not-a-number/retry".into(),
            json!({}),
            400,
            "not a DLQ message id",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let (got, answer) = send(
            engine,
            method,
            &path,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{method} {path}: {text}");
    }
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('contacts')::text")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(table.as_deref(), Some("contacts"));
    assert_eq!(
        footprint(engine).await,
        before,
        "a refused request left a trace"
    );
}

/// A property value of 700 KB, and ids and property names written to break
/// subjects, SQL and JSON paths, are stored and projected as they came: each id on
/// one subject token, each name a plain key, every table still there.
#[tokio::test]
async fn huge_values_and_hostile_ids_and_names_are_kept_verbatim() {
    use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};

    let engine = TestEngine::start(&[]).await;
    let at = chrono::Utc::now().timestamp_millis();
    let mut f = EventFactory::new(62515);
    let huge = "é".repeat(350_000);
    let hostile_id = "7.>.* x'; DROP TABLE contacts;--";
    let hostile_name = "x'); DELETE FROM contacts; -- $.a[0] {{}}";
    let mut named = f.property_change("contact", 8, at, hostile_name, "kept");
    named["objectId"] = json!(hostile_id);
    let events = vec![
        f.property_change("contact", 7, at, "notes", &huge),
        named,
        f.creation("contact", 9, at),
    ];
    let last = engine.post_events(Signature::V3, &events).await;
    engine.wait_projected(last).await;

    let stream = engine
        .js
        .get_stream(engine.topology.events_stream())
        .await
        .unwrap();
    let hostile = stream.get_raw_message(last - 1).await.unwrap();
    let subject = hostile.subject.as_str();
    assert!(
        subject.ends_with(".contact.7%2E%3E%2E%2A%20x%27%3B%20DROP%20TABLE%20contacts%3B--"),
        "{subject}"
    );
    let fields = |id: &'static str| {
        let pool = engine.pool.clone();
        async move {
            sqlx::query_scalar::<_, Value>(
                "SELECT fields FROM contacts WHERE workspace_id = '62515' AND remote_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(fields("7").await["notes"].as_str(), Some(huge.as_str()));
    assert_eq!(fields(hostile_id).await[hostile_name], "kept");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts WHERE workspace_id = '62515'")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(n, 3);
    engine.stop().await;
}
