//! The event contract for stream consumers: every event type has a JSON Schema in
//! `schema/json/`, docs/EVENTS.md's examples hold to them, and what the engine
//! publishes validates. (The provider sync and outbound tests check every event of
//! their runs the same way: `common::events::assert_contract`.)

mod common;

use chrono::Utc;
use serde_json::{json, Value};

use common::events::{assert_contract, Contract};
use common::TestEngine;
use crmsync_engine::Role;
use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};

const TOKEN: &str = "events-test-token-0123456789";

/// The CloudEvents of docs/EVENTS.md: its JSON blocks that carry `specversion`.
fn documented_events() -> Vec<Value> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/EVENTS.md"))
        .expect("docs/EVENTS.md");
    doc.split("```json")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter_map(|block| serde_json::from_str::<Value>(block).ok())
        .filter(|v| v.get("specversion").is_some())
        .collect()
}

#[test]
fn every_documented_example_holds_to_its_schema_and_every_type_has_an_example() {
    let contract = Contract::load();
    let examples = documented_events();
    for example in &examples {
        contract.check(example).unwrap();
    }
    let types: std::collections::BTreeSet<&str> =
        examples.iter().filter_map(|e| e["type"].as_str()).collect();
    for needed in [
        "crmsync.contact.created.v1",
        "crmsync.contact.snapshot.v1",
        "crmsync.contact.links.v1",
        "crmsync.deal.deleted.v1",
        "crmsync.activity.call_logged.v1",
        "crmsync.activity.push_requested.v1",
        "crmsync.activity.pushed.v1",
    ] {
        assert!(types.contains(needed), "docs/EVENTS.md shows no {needed}");
    }
    // Every schema file is documented by name.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/EVENTS.md")).unwrap();
    for entry in std::fs::read_dir(common::events::schema_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(doc.contains(&name), "docs/EVENTS.md does not name {name}");
    }
}

#[test]
fn the_schemas_refuse_what_breaks_the_contract() {
    let contract = Contract::load();
    let examples = documented_events();
    let logged = examples
        .iter()
        .find(|e| e["type"] == "crmsync.activity.call_logged.v1")
        .unwrap();
    let raw = examples
        .iter()
        .find(|e| e["type"] == "crmsync.contact.snapshot.v1")
        .unwrap();
    let broken = |base: &Value, pointer: &str, value: Value| {
        let mut e = base.clone();
        *e.pointer_mut(pointer).unwrap() = value;
        e
    };
    for (why, event) in [
        (
            "an unknown direction",
            broken(logged, "/data/direction", json!("sideways")),
        ),
        (
            "a time that is no time",
            broken(logged, "/data/started_at", json!("yesterday")),
        ),
        (
            "a negative duration",
            broken(logged, "/data/duration_secs", json!(-1)),
        ),
        (
            "an unknown provider as source",
            broken(raw, "/source", json!("/crmsync/salesforce/1")),
        ),
        (
            "an unknown change",
            broken(raw, "/type", json!("crmsync.contact.renamed.v1")),
        ),
        (
            "a snapshot without properties",
            broken(raw, "/data", json!({"id": "1"})),
        ),
        (
            "another CloudEvents version",
            broken(raw, "/specversion", json!("0.3")),
        ),
    ] {
        assert!(contract.check(&event).is_err(), "accepted {why}");
    }
}

#[tokio::test]
async fn the_events_an_api_publishes_hold_to_the_contract() {
    // An API alone: the push commands stay in CRM_OUTBOUND to be checked.
    let engine = TestEngine::start_role(Role::Api, &[("CRM_API_TOKEN", TOKEN)]).await;
    sqlx::query(
        "INSERT INTO crm_connections (workspace_id, provider, account_id, secrets)
         VALUES ('ws-events', 'odoo', 'odoo-db', '\\x00'), ('ws-events', 'zoho', '77', '\\x00')",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    let outcome = json!({
        "workspace": "ws-events",
        "contact": {"email": "ada@example.com"},
        "started_at": "2026-11-28T09:30:00Z",
        "duration_secs": 95,
        "direction": "outbound",
        "disposition": "connected",
        "summary": "Interested; send the deck",
    });
    let response = engine
        .http
        .post(engine.url("/crm/calls/call-1/push-to-crm"))
        .bearer_auth(TOKEN)
        .json(&outcome)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let mut f = EventFactory::new(5150);
    let t = Utc::now().timestamp_millis();
    let batch = vec![
        f.creation("contact", 1, t),
        f.property_change("contact", 1, t + 1, "email", "a@example.com"),
        f.deletion("deal", 2, t + 2),
    ];
    engine.post_events(Signature::V3, &batch).await;

    let seen = assert_contract(&engine.js, &engine.topology).await;
    assert_eq!(
        seen.get("crmsync.activity.call_logged.v1"),
        Some(&1),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("crmsync.activity.push_requested.v1"),
        Some(&2),
        "{seen:?}"
    );
    assert_eq!(seen.get("crmsync.contact.created.v1"), Some(&1), "{seen:?}");
    assert_eq!(seen.get("crmsync.deal.deleted.v1"), Some(&1), "{seen:?}");
    engine.stop().await;
}
