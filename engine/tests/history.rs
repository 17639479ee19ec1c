//! `GET /crm/records/{object}/{id}/history`: a record's values over time, from the
//! event log.

mod common;

use chrono::Utc;
use serde_json::{json, Value};

use common::TestEngine;
use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};

const TOKEN: &str = "history-test-token-0123456789";
const PORTAL: u64 = 4242;

async fn get(engine: &TestEngine, path: &str, token: Option<&str>) -> (u16, Value) {
    common::get_json(engine, path, token).await
}

#[tokio::test]
async fn a_records_history_is_read_from_the_event_log_and_ends_at_its_projected_row() {
    let engine = TestEngine::start(&[("CRM_API_TOKEN", TOKEN)]).await;
    let mut f = EventFactory::new(PORTAL);
    let t = Utc::now().timestamp_millis() - 60_000;
    // Out of order on purpose: the late-arriving older email must not win.
    let events = vec![
        f.creation("contact", 7, t),
        f.property_change("contact", 7, t + 1_000, "email", "first@example.com"),
        f.property_change("contact", 7, t + 3_000, "email", "third@example.com"),
        f.property_change("contact", 7, t + 2_000, "email", "second@example.com"),
        f.property_change("contact", 7, t + 4_000, "firstname", "Ada"),
        f.property_change("contact", 8, t + 4_500, "firstname", "Someone else"),
        f.deletion("contact", 7, t + 5_000),
    ];
    let last = engine.post_events(Signature::V3, &events).await;
    engine.wait_projected(last).await;

    let path = format!("/crm/records/contacts/7/history?workspace={PORTAL}&provider=hubspot");
    let (status, history) = get(&engine, &path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{history}");
    let list = history["events"].as_array().unwrap();
    assert_eq!(
        list.len(),
        6,
        "contact 8's event is not contact 7's: {history}"
    );
    let emails: Vec<Value> = list.iter().map(|e| e["set"]["email"].clone()).collect();
    assert_eq!(
        emails[1..4],
        [
            json!("first@example.com"),
            json!("third@example.com"),
            json!("second@example.com")
        ]
    );
    // The state after the late event keeps the newer value.
    assert_eq!(list[3]["state"]["email"], "third@example.com");
    assert_eq!(list[4]["state"]["first_name"], "Ada");
    assert_eq!(list[5]["type"], "crmsync.contact.deleted.v1");
    assert_eq!(list[5]["state"]["$deleted"], true);
    let seqs: Vec<u64> = list.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "stream order");

    // The last state is the projected row's fields.
    let row: Value = sqlx::query_scalar(
        "SELECT fields FROM contacts WHERE workspace_id = $1 AND provider = 'hubspot' AND remote_id = '7'",
    )
    .bind(PORTAL.to_string())
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    let last_state = &list[5]["state"];
    for (field, value) in row.as_object().unwrap() {
        assert_eq!(&last_state[field], value, "{field}");
    }

    // Paging: two at a time, by stream sequence.
    let (_, page) = get(&engine, &format!("{path}&limit=2"), Some(TOKEN)).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_u64().unwrap();
    let (_, rest) = get(
        &engine,
        &format!("{path}&after={after}&limit=10"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 4);
    assert!(rest["next_after"].is_null());
    assert_eq!(
        rest["events"][3]["state"], list[5]["state"],
        "state is folded from the start"
    );

    // Clear errors.
    assert_eq!(get(&engine, &path, None).await.0, 401);
    for (query, status, says) in [
        (
            "contacts/999/history?workspace=4242&provider=hubspot",
            404,
            "no events",
        ),
        (
            "tickets/7/history?workspace=4242&provider=hubspot",
            400,
            "tickets",
        ),
        (
            "contacts/7/history?workspace=4242&provider=salesforce",
            400,
            "provider",
        ),
        ("contacts/7/history?provider=hubspot", 400, "workspace"),
        ("contacts/7/history?workspace=4242", 400, "provider"),
        // Ids made of subject syntax stay one record.
        (
            "contacts/7.%3E/history?workspace=4242&provider=hubspot",
            404,
            "no events",
        ),
    ] {
        let (got, body) = get(&engine, &format!("/crm/records/{query}"), Some(TOKEN)).await;
        assert_eq!(got, status, "{query}: {body}");
        assert!(body.to_string().contains(says), "{query}: {body}");
    }
    engine.stop().await;
}
