//! `/healthz`, `/readyz` and `/metrics`, and what each role serves.

mod common;

use serde_json::Value;

use common::TestEngine;
use crmsync_engine::Role;

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let engine = TestEngine::start(&[]).await;
    let health = engine
        .http
        .get(engine.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let ready = engine.http.get(engine.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["nats"], "ok");
    assert_eq!(ready["checks"]["postgres"], "ok");
    assert_eq!(ready["checks"]["migrations"], "ok");

    let metrics = engine
        .http
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let content_type = metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(metrics.text().await.unwrap().ends_with("# EOF\n"));
    engine.stop().await;
}

#[tokio::test]
async fn readiness_fails_with_the_reason_when_migrations_are_missing() {
    let engine = TestEngine::start(&[]).await;
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&engine.pool)
        .await
        .unwrap();
    let ready = engine.http.get(engine.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(ready["checks"]["migrations"]
        .as_str()
        .unwrap()
        .contains("this build needs"));
    engine.stop().await;
}

#[tokio::test]
async fn a_worker_serves_health_but_not_webhooks() {
    let engine = TestEngine::start_role(Role::Worker, &[]).await;
    assert_eq!(
        engine
            .http
            .get(engine.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let hook = engine
        .http
        .post(engine.url("/crm/webhooks/hubspot"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 404);
    engine.stop().await;
}
