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

/// `GET /crm/health`: each connection probed (credentials, a cheap read, HubSpot's
/// rate-limit headers), the verdict public, the details behind the token.
#[tokio::test]
async fn provider_health_probes_each_connection_and_says_what_is_wrong() {
    use common::hubspot::API_TOKEN;
    let portal = common::hubspot::start(Default::default(), &[]).await;
    portal.connect("acme").await;
    let engine = &portal.engine;
    let get = |path: &'static str, token: Option<&'static str>| async move {
        let mut request = engine.http.get(engine.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };

    let (status, body) = get(
        "/crm/health?provider=hubspot&workspace=acme",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["healthy"], true);
    let acme = &body["connections"][0];
    assert_eq!(acme["workspace"], "acme");
    assert_eq!(acme["credentials"]["ok"], true, "{acme}");
    assert_eq!(acme["api"]["ok"], true, "{acme}");
    assert!(acme["api"]["latency_ms"].is_u64(), "{acme}");
    assert!(
        acme["rate_limit"]["provider"]["remaining"].is_u64(),
        "HubSpot's headroom is shown: {acme}"
    );
    assert_eq!(acme["rate_limit"]["crmsync_rps"], 5.0);

    // A probe answers for a while: asking again does not probe HubSpot again.
    let (status, again) = get(
        "/crm/health?provider=hubspot&workspace=acme",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["connections"][0]["checked_at"], acme["checked_at"]);

    // Without the token: the verdict and counts, never a workspace or an account.
    let (status, public) = get("/crm/health?provider=hubspot", None).await;
    assert_eq!(status, 200, "{public}");
    assert_eq!(public["connections"], 1);
    assert_eq!(public["unhealthy"], 0);
    let text = public.to_string();
    assert!(!text.contains("acme") && !text.contains("beta"), "{text}");
    let (status, _) = get("/crm/health?provider=hubspot&workspace=acme", None).await;
    assert_eq!(status, 401);
    let (status, body) = get("/crm/health?provider=pipedrive", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(
        "/crm/health?provider=hubspot&workspace=nobody",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // HubSpot failing: a connection not probed yet says so, with the reason.
    portal.connect("beta").await;
    portal.hs.faults().set("errors=1".parse().unwrap());
    let (status, body) = get("/crm/health?provider=hubspot", Some(API_TOKEN)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["healthy"], false);
    let beta = &body["connections"][1];
    assert_eq!(beta["workspace"], "beta", "{body}");
    assert_eq!(beta["api"]["ok"], false, "{beta}");
    assert!(
        beta["api"]["error"].as_str().unwrap().contains("HTTP 5"),
        "{beta}"
    );
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("hubspot beta:"),
        "{body}"
    );
    let (status, public) = get("/crm/health", None).await;
    assert_eq!(status, 503);
    assert_eq!(public["unhealthy"], 1);
    assert_eq!(
        public["reasons"],
        serde_json::json!(["a hubspot connection is unhealthy"])
    );
    portal.hs.faults().set(Default::default());

    // A connection whose refresh was refused needs connecting again: no probe.
    sqlx::query("UPDATE crm_connections SET status = 'needs_reconnect', last_error = 'invalid_grant' WHERE workspace_id = 'acme'")
        .execute(&engine.pool)
        .await
        .unwrap();
    let (status, body) = get(
        "/crm/health?provider=hubspot&workspace=acme",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("connected again") && reason.contains("invalid_grant"),
        "{reason}"
    );
}

/// Parses OpenMetrics text with the Prometheus client's own parser (Python's
/// `prometheus_client`): the names of the families it read.
fn parse_openmetrics(text: &str) -> Result<Vec<String>, String> {
    const PARSE: &str = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(' '.join(f.name for f in p(sys.stdin.read())))";
    common::python(PARSE, text).map(|out| out.split_whitespace().map(str::to_owned).collect())
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_and_show_consumer_lag_and_dlq_depth() {
    use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(91);
    let at = chrono::Utc::now().timestamp_millis() - 60_000;
    let events: Vec<Value> = (1..=20)
        .map(|c| f.property_change("contact", c, at, "email", &format!("c{c}@example.com")))
        .collect();
    let last = engine.post_events(Signature::V3, &events).await;
    engine.wait_projected(last).await;
    let lag = r#"crm_consumer_lag_events{consumer="proj-hubspot"} 0"#;
    let text = crmsync_testkit::eventually(std::time::Duration::from_secs(15), || async {
        let text = engine.metrics().await;
        text.contains(lag).then_some(text)
    })
    .await
    .expect("the projector's lag is sampled");
    assert!(text.contains("crm_dlq_depth 0"), "{text}");
    assert!(text.contains("crm_events_published_total"), "{text}");
    let families = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for family in [
        "crm_consumer_lag_events",
        "crm_dlq_depth",
        "crm_events_published",
        "crm_projection_freshness_seconds",
        "crm_sync_duration_seconds",
    ] {
        assert!(
            families.iter().any(|f| f == family),
            "{family} in {families:?}"
        );
    }
    // The parser does refuse what is not OpenMetrics.
    assert!(parse_openmetrics(text.trim_end().trim_end_matches("# EOF")).is_err());
    assert!(parse_openmetrics("crm_dlq_depth{ 1\n# EOF\n").is_err());
    engine.stop().await;
}
