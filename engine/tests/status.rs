//! `GET /crm/sync/status` and `GET /crm/metrics`.

mod common;

use chrono::Utc;
use serde_json::Value;

use common::TestEngine;
use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};

const TOKEN: &str = "status-test-token-0123456789";

async fn get(engine: &TestEngine, path: &str, token: Option<&str>) -> (u16, Value) {
    common::get_json(engine, path, token).await
}

#[tokio::test]
async fn status_and_metrics_say_where_the_sync_stands() {
    let engine = TestEngine::start(&[("CRM_API_TOKEN", TOKEN)]).await;
    let mut f = EventFactory::new(8080);
    let t = Utc::now().timestamp_millis();
    let events = vec![
        f.creation("company", 10, t),
        f.creation("contact", 1, t + 1),
        f.creation("contact", 2, t + 2),
        f.property_change("contact", 2, t + 3, "email", "b@example.com"),
        f.deletion("contact", 1, t + 4),
    ];
    let last = engine.post_events(Signature::V3, &events).await;
    engine.wait_projected(last).await;
    let companies: i64 = sqlx::query_scalar("SELECT count(*) FROM companies")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(companies, 1, "the company was projected with the contacts");
    sqlx::query(
        "INSERT INTO crm_connections (workspace_id, provider, account_id, secrets, last_error)
         VALUES ('ws-a', 'hubspot', '8080', '\\x00', 'token refresh refused'),
                ('ws-b', 'zoho', '99', '\\x00', NULL)",
    )
    .execute(&engine.pool)
    .await
    .unwrap();

    let (status, body) = get(&engine, "/crm/sync/status?workspace=ws-a", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let contacts = body["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "proj-hubspot")
        .unwrap_or_else(|| panic!("no contacts projector in {body}"));
    assert_eq!(contacts["role"], "projection");
    assert_eq!(contacts["committed_sequence"], last);
    assert_eq!(contacts["lag_events"], 0);
    assert_eq!(contacts["lag_seconds"], 0.0);
    assert!(body["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["consumer"] == "push-hubspot" && c["role"] == "outbound"));
    assert_eq!(body["streams"]["events"]["messages"], 5);
    let connections = body["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1, "only ws-a's: {body}");
    assert_eq!(connections[0]["last_error"], "token refresh refused");
    assert_eq!(body["pushes"]["sent"], 0);

    // A consumer that reads nothing: its backlog and how long its oldest event waited.
    let stream = engine
        .js
        .get_stream(engine.topology.events_stream())
        .await
        .unwrap();
    let root = engine.topology.subjects.root().to_owned();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("proj-idle".into()),
            filter_subject: format!("{root}.raw.hubspot.*.contact.*"),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, body) = get(&engine, "/crm/sync/status", Some(TOKEN)).await;
    let idle = body["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "proj-idle")
        .unwrap();
    assert_eq!(idle["lag_events"], 4, "{idle}");
    assert!(idle["lag_seconds"].as_f64().unwrap() >= 0.3, "{idle}");

    let (status, metrics) = get(&engine, "/crm/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(metrics["entities"]["contacts"]["hubspot"]["records"], 2);
    assert_eq!(metrics["entities"]["contacts"]["hubspot"]["deleted"], 1);
    assert_eq!(metrics["entities"]["companies"]["hubspot"]["records"], 1);
    assert_eq!(metrics["events"]["stored"], 5);
    assert!(
        metrics["events"]["applied_by_projections"]
            .as_i64()
            .unwrap()
            >= 5
    );
    assert_eq!(metrics["conflicts"], 0);

    for path in ["/crm/sync/status", "/crm/metrics"] {
        assert_eq!(get(&engine, path, None).await.0, 401, "{path}");
        assert_eq!(get(&engine, path, Some("wrong")).await.0, 401, "{path}");
    }
    let (status, _) = get(&engine, "/crm/sync/status?workspace=", Some(TOKEN)).await;
    assert_eq!(status, 400);
    engine.stop().await;
}
