//! The HubSpot client against the HubSpot emulator over HTTP.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crmsync_adapters::hubspot::client::{HubSpotClient, RetryPolicy};
use crmsync_adapters::{ErrorKind, Metrics, RateLimiter, Secret};
use crmsync_sandbox::hubspot::{Config, HubSpotSandbox};
use crmsync_sandbox::server::Running;

async fn setup(config: Config) -> (Arc<HubSpotSandbox>, Running, HubSpotClient, Arc<Metrics>) {
    let (hs, running) = HubSpotSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let token = hs.credentials(&running.base_url)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let metrics = Arc::new(Metrics::new());
    let client = HubSpotClient::new(
        running.base_url.clone(),
        Secret::new(token),
        Arc::new(RateLimiter::new(1000.0, 50.0)),
        metrics.clone(),
    )
    .with_retry(RetryPolicy {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_attempts: 8,
    });
    (hs, running, client, metrics)
}

fn quiet() -> Config {
    Config {
        index_lag: Duration::ZERO,
        ..Config::default()
    }
}

#[tokio::test]
async fn list_pages_reach_every_record_and_batch_read_skips_unknown_ids() {
    let (hs, _running, client, metrics) = setup(Config {
        contacts: 230,
        ..quiet()
    })
    .await;
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list("contacts", after.as_deref(), &["email"], false)
            .await
            .unwrap();
        ids.extend(page.results.iter().map(|r| r.id.clone()));
        match page.after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(ids.len(), 230);
    assert_eq!(ids.len(), hs.snapshot("contacts").len());

    let mut wanted: Vec<String> = ids[..150].to_vec();
    wanted.push("999999999".into());
    let read = client
        .batch_read("contacts", &wanted, &["email", "firstname"])
        .await
        .unwrap();
    assert_eq!(read.len(), 150);
    assert!(read[0].properties["email"].as_str().unwrap().contains('@'));
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"crm_requests_total{provider="hubspot",object="contacts",verb="POST",status="207"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn search_pages_with_the_cursor_hubspot_returns() {
    let (_hs, _running, client, _) = setup(Config {
        contacts: 30,
        ..quiet()
    })
    .await;
    let request = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}], "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}], "limit": 20});
    let first = client.search("contacts", &request).await.unwrap();
    assert_eq!(first.total, Some(30));
    assert_eq!(first.results.len(), 20);
    let mut next = request.clone();
    next["after"] = json!(first.after.clone().unwrap());
    let second = client.search("contacts", &next).await.unwrap();
    assert_eq!(second.results.len(), 10);
    assert!(second.after.is_none());
}

#[tokio::test]
async fn transient_failures_and_429s_are_retried_until_they_pass() {
    let faults = "errors=0.5".parse().unwrap();
    let (hs, _running, client, metrics) = setup(Config { faults, ..quiet() }).await;
    for _ in 0..10 {
        let page = client
            .list("companies", None, &["name"], false)
            .await
            .unwrap();
        assert_eq!(page.results.len(), 10);
    }
    let text = metrics.encode();
    assert!(
        text.contains(r#"error_type="transient",operation="list""#),
        "{text}"
    );

    hs.faults().set("storm=300ms/100s".parse().unwrap());
    let page = client
        .list("companies", None, &["name"], false)
        .await
        .unwrap();
    assert_eq!(page.results.len(), 10);
    assert!(metrics.encode().contains(r#"status="429""#));
}

#[tokio::test]
async fn an_expired_token_is_unauthorized_and_not_retried() {
    let (hs, _running, client, metrics) = setup(quiet()).await;
    hs.expire_access_tokens();
    let err = client.list("contacts", None, &[], false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized);
    assert_eq!(err.status, Some(401));
    assert!(err.message.contains("expired"), "{}", err.message);
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"crm_requests_total{provider="hubspot",object="contacts",verb="GET",status="401"} 1"#
        ),
        "{text}"
    );
}
