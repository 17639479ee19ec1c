//! Field mappings (`/crm/mappings`): checked when written, applied by the live
//! projectors from their next batch, and applied to history by a replay that calls
//! no CRM.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use common::TestEngine;
use crmsync_adapters::odoo::client::OdooClient;
use crmsync_engine::replay::{ReplayOptions, Start};
use crmsync_projectors::Table;
use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};
use crmsync_schema::mapping::split_name;
use crmsync_testkit::eventually;

async fn send(
    engine: &TestEngine,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = engine.http.request(method, engine.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put(engine: &TestEngine, path: &str, body: Value) -> (u16, Value) {
    send(
        engine,
        reqwest::Method::PUT,
        path,
        Some(API_TOKEN),
        Some(body),
    )
    .await
}

/// The fields of every live row of `table` in `workspace`, by CRM id.
async fn rows(
    pool: &sqlx::PgPool,
    table: &str,
    workspace: &str,
) -> BTreeMap<String, BTreeMap<String, Value>> {
    let rows: Vec<(String, Value)> = sqlx::query_as(&format!(
        "SELECT remote_id, fields FROM {table} WHERE workspace_id = $1 AND NOT deleted"
    ))
    .bind(workspace)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, f)| (id, serde_json::from_value(f).unwrap()))
        .collect()
}

#[tokio::test]
async fn mappings_are_checked_and_live_projection_applies_them_from_the_next_batch() {
    let engine = TestEngine::start(&[("CRM_API_TOKEN", API_TOKEN)]).await;
    let path = "/crm/mappings/hubspot/contacts?workspace=77";

    // The defaults are shown with no rules.
    let (status, shown) = send(&engine, reqwest::Method::GET, path, Some(API_TOKEN), None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["rules"], json!([]));
    assert!(
        shown["defaults"]
            .as_array()
            .unwrap()
            .contains(&json!({"source": "firstname", "target": "first_name"})),
        "{shown}"
    );

    // Refused: without the token, unknown providers and objects, unprojected
    // objects, bodies that are not mappings, and mappings that would lose a field.
    let good = json!({"rules": [
        {"source": "hs_lead_score", "target": "score", "transform": "integer"},
        {"source": "lifecyclestage", "target": "lifecycle_stage",
         "transform": {"map": {"values": {"lead": "new", "customer": "won"}}}},
        {"source": "firstname", "target": "given_name"},
        {"source": ["firstname", "lastname"], "target": "full_name",
         "transform": {"join": {"separator": " "}}},
        {"source": "fax", "target": null},
    ]});
    let (status, _) = send(
        &engine,
        reqwest::Method::PUT,
        path,
        None,
        Some(good.clone()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(
        &engine,
        reqwest::Method::PUT,
        path,
        Some("wrong"),
        Some(good.clone()),
    )
    .await;
    assert_eq!(status, 401);
    for (bad_path, says) in [
        ("/crm/mappings/pipedrive/contacts?workspace=77", "provider"),
        ("/crm/mappings/hubspot/leads?workspace=77", "object `leads`"),
        (
            "/crm/mappings/hubspot/activities?workspace=77",
            "not projected",
        ),
        ("/crm/mappings/hubspot/contacts", "workspace is required"),
    ] {
        let (status, answer) = put(&engine, bad_path, good.clone()).await;
        assert_eq!(status, 400, "{bad_path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{bad_path}: {message}");
    }
    for body in [
        json!({"rules": [{"source": "a", "target": "b", "transform": "uppercase"}]}),
        json!({"rules": "none"}),
        json!([]),
    ] {
        let (status, answer) = put(&engine, path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, answer) = put(
        &engine,
        path,
        json!({"rules": [
            {"source": "mobilephone", "target": "phone"},
            {"source": "a", "target": "$deleted"},
            {"source": "b", "target": "x"}, {"source": "c", "target": "x"},
        ]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let fields = common::refused_fields(&answer);
    assert_eq!(
        fields,
        ["rules[1].target", "rules[3].target", "rules[0].target"],
        "{answer}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_field_mappings")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing refused is stored");

    // Events before the mapping land with the defaults.
    let mut f = EventFactory::new(77);
    let at = Utc::now().timestamp_millis() - 60_000;
    let first = engine
        .post_events(
            Signature::V3,
            &[
                f.property_change("contact", 1, at, "firstname", "Ada"),
                f.property_change("contact", 1, at, "hs_lead_score", "12"),
            ],
        )
        .await;
    engine.wait_projected(first).await;
    let (status, stored) = put(&engine, path, good.clone()).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["rules"], good["rules"]);
    assert_eq!(
        stored["replay"],
        json!("crmsync replay --projection contacts --workspace 77")
    );
    let last = engine
        .post_events(
            Signature::V3,
            &[
                f.property_change("contact", 2, at + 1, "firstname", "Grace"),
                f.property_change("contact", 2, at + 1, "hs_lead_score", "42.0"),
                f.property_change("contact", 2, at + 1, "lifecyclestage", "customer"),
                f.property_change("contact", 2, at + 1, "fax", "+1 555"),
                f.property_change("contact", 2, at + 1, "email", "grace@example.com"),
            ],
        )
        .await;
    engine.wait_projected(last).await;
    let live = rows(&engine.pool, "contacts", "77").await;
    assert_eq!(live["1"]["first_name"], json!("Ada"), "{live:?}");
    assert_eq!(live["1"]["hs_lead_score"], json!("12"), "{live:?}");
    let two = &live["2"];
    assert_eq!(two.get("given_name"), Some(&json!("Grace")), "{two:?}");
    assert_eq!(two.get("score"), Some(&json!(42)), "{two:?}");
    assert_eq!(two.get("lifecycle_stage"), Some(&json!("won")), "{two:?}");
    assert_eq!(
        two.get("email"),
        Some(&json!("grace@example.com")),
        "{two:?}"
    );
    for gone in ["first_name", "hs_lead_score", "fax", "full_name"] {
        assert!(!two.contains_key(gone), "{gone} in {two:?}");
    }
    let (_, listed) = send(
        &engine,
        reqwest::Method::GET,
        "/crm/mappings?workspace=77",
        Some(API_TOKEN),
        None,
    )
    .await;
    assert_eq!(listed["mappings"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["mappings"][0]["object"], json!("contact"));

    // A replay applies it to the earlier events too.
    let options = ReplayOptions {
        tables: vec![Table::Contacts],
        workspace: None,
        start: Start::All,
    };
    engine.replay(&options).await;
    let replayed = rows(&engine.pool, "contacts", "77").await;
    assert_eq!(replayed["1"].get("given_name"), Some(&json!("Ada")));
    assert_eq!(replayed["1"].get("score"), Some(&json!(12)));
    assert!(!replayed["1"].contains_key("first_name"));
    assert_eq!(replayed["2"], live["2"]);

    // Deleted: the defaults again.
    let (status, _) = send(
        &engine,
        reqwest::Method::DELETE,
        path,
        Some(API_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = send(
        &engine,
        reqwest::Method::DELETE,
        path,
        Some(API_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    engine.stop().await;
}

/// Odoo's partners as the emulator holds them: id → (name, function, phone).
async fn partners(client: &OdooClient) -> BTreeMap<String, (Value, Value, Value)> {
    client
        .search_read(
            "res.partner",
            json!([["is_company", "=", false]]),
            &["name", "function", "phone"],
            "id asc",
            0,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let text = |v: &Value| match v {
                Value::String(s) if !s.is_empty() => json!(s),
                _ => Value::Null,
            };
            (
                r["id"].to_string(),
                (text(&r["name"]), text(&r["function"]), text(&r["phone"])),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_mapping_change_and_a_replay_reshape_history_without_calling_the_crm() {
    let (db, _) = common::odoo::connected(300, 30, 40).await;
    let (engine, odoo) = (&db.engine, &db.odoo);
    let client = db.client().await;
    let want = partners(&client).await;
    let workspace: String = eventually(Duration::from_secs(30), || async {
        let ws: Option<String> = sqlx::query_scalar(
            "SELECT workspace_id FROM contacts WHERE provider = 'odoo' AND NOT deleted
             GROUP BY 1 HAVING count(*) = $1",
        )
        .bind(want.len() as i64)
        .fetch_optional(&engine.pool)
        .await
        .unwrap();
        ws
    })
    .await
    .expect("every partner is projected");
    let before = rows(&engine.pool, "contacts", &workspace).await;
    assert!(
        want.values()
            .filter(|(_, function, _)| !function.is_null())
            .count()
            > 10,
        "the emulator's partners have job titles"
    );
    for (id, (_, function, _)) in &want {
        assert_eq!(before[id].get("job_title"), Some(function), "{id}");
    }

    // The workspace's own shape: the job title as `role`, the name split in two
    // under other names, the phone dropped.
    let path = format!("/crm/mappings/odoo/contacts?workspace={workspace}");
    let (status, stored) = put(
        engine,
        &path,
        json!({"rules": [
            {"source": "function", "target": "role"},
            {"source": "name", "target": ["given", "family"], "transform": "split_name"},
            {"source": "phone", "target": null},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{stored}");

    // Records changed after the mapping are projected with it.
    odoo.mutate(40);
    let (status, polled) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200, "{polled}");
    let want = partners(&client).await;
    let changed: Vec<String> = eventually(Duration::from_secs(30), || async {
        let live = rows(&engine.pool, "contacts", &workspace).await;
        let changed: Vec<String> = live
            .iter()
            .filter(|(_, f)| f.contains_key("given"))
            .map(|(id, _)| id.clone())
            .collect();
        (!changed.is_empty()).then_some(changed)
    })
    .await
    .expect("changed partners are projected with the mapping");
    let live = rows(&engine.pool, "contacts", &workspace).await;
    assert!(
        live.values().any(|f| f.contains_key("job_title")),
        "records not changed since keep their earlier shape until a replay"
    );

    // The replay reshapes all of history, with no call to Odoo.
    let calls = odoo.faults().requests(|_| true);
    let options = ReplayOptions {
        tables: vec![Table::Contacts],
        workspace: Some(crmsync_schema::WorkspaceId::parse(workspace.as_str()).unwrap()),
        start: Start::All,
    };
    let report = engine.replay(&options).await;
    assert!(report.events as usize >= want.len(), "{report:?}");
    assert_eq!(
        odoo.faults().requests(|_| true),
        calls,
        "the replay called Odoo"
    );
    let replayed = rows(&engine.pool, "contacts", &workspace).await;
    assert_eq!(replayed.len(), want.len());
    for (id, (name, function, _)) in &want {
        let row = &replayed[id];
        let (given, family) = split_name(name);
        assert_eq!(row.get("role"), Some(function), "{id}: {row:?}");
        assert_eq!(row.get("given"), Some(&given), "{id}: {row:?}");
        assert_eq!(row.get("family"), Some(&family), "{id}: {row:?}");
        for gone in ["job_title", "phone", "name"] {
            assert!(!row.contains_key(gone), "{id}: {gone} in {row:?}");
        }
        // The adapter's own split still lands: no rule moved it.
        assert!(row.contains_key("last_name"), "{id}: {row:?}");
    }
    // Records changed since the mapping held its fields already; the replay drops
    // what the earlier events had left under the default names.
    for id in &changed {
        for field in ["role", "given", "family", "email", "last_name"] {
            assert_eq!(
                replayed[id].get(field),
                live[id].get(field),
                "{id}: {field}"
            );
        }
        let created = !before.contains_key(id);
        assert_eq!(
            live[id].contains_key("job_title"),
            !created,
            "{id}: {:?}",
            live[id]
        );
    }

    // History shows the record as the mapping shapes it.
    let id = &changed[0];
    let (status, history) = send(
        engine,
        reqwest::Method::GET,
        &format!("/crm/records/contacts/{id}/history?workspace={workspace}&provider=odoo"),
        Some(API_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let state: BTreeMap<String, Value> = serde_json::from_value(last["state"].clone()).unwrap();
    assert_eq!(state, replayed[id], "{history}");

    // Back to the defaults, and a replay restores the default shape: nothing was lost.
    let (status, _) = send(
        engine,
        reqwest::Method::DELETE,
        &path,
        Some(API_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);
    engine.replay(&options).await;
    let restored = rows(&engine.pool, "contacts", &workspace).await;
    for (id, (name, function, phone)) in &want {
        let row = &restored[id];
        assert_eq!(row.get("job_title"), Some(function), "{id}: {row:?}");
        assert_eq!(row.get("name"), Some(name), "{id}: {row:?}");
        assert_eq!(row.get("phone"), Some(phone), "{id}: {row:?}");
        assert!(!row.contains_key("role"), "{id}: {row:?}");
    }
    assert_eq!(
        odoo.faults().requests(|_| true),
        calls,
        "no replay called Odoo"
    );
    common::assert_replay_matches(engine).await;
    db.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_swap_in_rows_a_mapping_written_meanwhile_would_undo() {
    let engine = TestEngine::start(&[("CRM_API_TOKEN", API_TOKEN)]).await;
    let mut f = EventFactory::new(78);
    let at = Utc::now().timestamp_millis() - 60_000;
    let last = engine
        .post_events(
            Signature::V3,
            &[f.property_change("contact", 1, at, "hs_lead_score", "12")],
        )
        .await;
    engine.wait_projected(last).await;
    let before = rows(&engine.pool, "contacts", "78").await;
    let options = ReplayOptions {
        tables: vec![Table::Contacts],
        workspace: None,
        start: Start::All,
    };
    // A mapping is written while the replay reads the stream.
    let (pool, url) = (
        engine.pool.clone(),
        engine.url("/crm/mappings/hubspot/contacts?workspace=78"),
    );
    let http = engine.http.clone();
    let mut written = false;
    let mut progress = |_: &crmsync_engine::replay::Progress| {
        if written {
            return;
        }
        written = true;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let r = http
                    .put(&url)
                    .bearer_auth(API_TOKEN)
                    .json(&json!({"rules": [{"source": "hs_lead_score", "target": "score"}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            })
        });
    };
    let refused = crmsync_engine::replay::replay(
        &engine.pool,
        &engine.js,
        &engine.topology,
        &options,
        &mut progress,
    )
    .await
    .expect_err("the replay stops before its swap");
    assert!(
        refused
            .to_string()
            .contains("field mappings changed during the replay"),
        "{refused:#}"
    );
    assert!(written);
    assert_eq!(
        rows(&pool, "contacts", "78").await,
        before,
        "nothing was swapped"
    );
    // Run again, it applies the new mapping.
    engine.replay(&options).await;
    let after = rows(&engine.pool, "contacts", "78").await;
    assert_eq!(after["1"].get("score"), Some(&json!("12")), "{after:?}");
    engine.stop().await;
}
