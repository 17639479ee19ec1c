//! `POST /crm/webhooks/hubspot` against a real engine, real JetStream and Postgres.

mod common;

use chrono::Utc;
use serde_json::{json, Value};

use common::{TestEngine, PUBLIC_URL, SECRET, WEBHOOK_PATH};
use crmsync_sandbox::hubspot::webhooks::{
    delivery_headers, sample_contacts_batch, signed_headers, EventFactory, Signature,
};

fn batch() -> Vec<u8> {
    serde_json::to_vec(&sample_contacts_batch(62515, Utc::now().timestamp_millis())).unwrap()
}

fn header<'a>(msg: &'a async_nats::jetstream::message::StreamMessage, name: &str) -> &'a str {
    msg.headers
        .get(name)
        .map(|v| v.as_str())
        .unwrap_or_default()
}

#[tokio::test]
async fn signed_batches_of_every_version_are_stored_as_binary_cloudevents() {
    // v1 and v2 alone are taken only where legacy signatures are accepted.
    let engine = TestEngine::start(&[("CRM_HUBSPOT_LEGACY_SIGNATURES", "true")]).await;
    let mut total = 0;
    for signature in [Signature::V1, Signature::V2, Signature::V3] {
        let mut f = EventFactory::new(62515);
        let events = vec![
            f.creation("contact", 7, 1_700_000_000_000),
            f.property_change("contact", 7, 1_700_000_000_001, "email", "a@b.c"),
        ];
        let body = serde_json::to_vec(&events).unwrap();
        // Each version gets its own event ids, else JetStream would dedupe them.
        let body = String::from_utf8(body)
            .unwrap()
            .replace("\"eventId\":", &format!("\"eventId\":{}", total + 1));
        let response = engine.post_webhook(signature, body.as_bytes()).await;
        assert_eq!(
            response.status(),
            200,
            "{signature:?}: {}",
            response.text().await.unwrap()
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["accepted"], 2);
        assert_eq!(answer["stored"], 2);
        total += 2;
        // The same version's signature over a body one byte off: refused.
        let uri = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
        let now = Utc::now().timestamp_millis();
        let headers = signed_headers(signature, SECRET, &uri, body.as_bytes(), now);
        let mut tampered = body.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        let refused = engine.post_with(WEBHOOK_PATH, &headers, &tampered).await;
        assert_eq!(refused.status(), 401, "{signature:?} over another body");
    }
    assert_eq!(engine.events_in_stream().await, total);

    let stream = engine
        .js
        .get_stream(engine.topology.events_stream())
        .await
        .unwrap();
    let msg = stream.get_raw_message(2).await.unwrap();
    let prefix = engine.topology.subjects.root();
    assert_eq!(
        msg.subject.as_str(),
        format!("{prefix}.raw.hubspot.62515.contact.7")
    );
    assert_eq!(header(&msg, "ce-specversion"), "1.0");
    assert_eq!(header(&msg, "ce-type"), "crmsync.contact.updated.v1");
    assert_eq!(header(&msg, "ce-source"), "/crmsync/hubspot/62515");
    assert_eq!(header(&msg, "ce-subject"), "contact/7");
    assert_eq!(header(&msg, "ce-datacontenttype"), "application/json");
    assert_eq!(header(&msg, "ce-time"), "2023-11-14T22:13:20.001Z");
    assert!(header(&msg, "Nats-Msg-Id").starts_with("hubspot:62515:contact:7:hs-"));
    let data: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(data["propertyName"], "email");
    assert_eq!(data["subscriptionType"], "contact.propertyChange");
    engine.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_with_401_and_store_nothing() {
    let engine = TestEngine::start(&[]).await;
    let body = batch();
    let uri = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
    let now = Utc::now().timestamp_millis();
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    type Headers = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        (
            "no signature",
            vec![("Content-Type", "application/json".into())],
            body.clone(),
        ),
        (
            "body changed by one byte",
            signed_headers(Signature::V3, SECRET, &uri, &body, now),
            tampered.clone(),
        ),
        (
            "v1 alone (the v3 headers stripped)",
            signed_headers(Signature::V1, SECRET, &uri, &body, now),
            body.clone(),
        ),
        (
            "v2 alone",
            signed_headers(Signature::V2, SECRET, &uri, &body, now),
            body.clone(),
        ),
        (
            "a stale v3 beside a good v1, as a replayed delivery",
            delivery_headers(Signature::V1, SECRET, &uri, &body, now - 6 * 60 * 1000),
            body.clone(),
        ),
        (
            "wrong secret",
            signed_headers(Signature::V3, "not-the-secret", &uri, &body, now),
            body.clone(),
        ),
        (
            "internal address signed",
            signed_headers(Signature::V3, SECRET, &engine.url(WEBHOOK_PATH), &body, now),
            body.clone(),
        ),
        (
            "stale timestamp",
            signed_headers(
                Signature::V3,
                SECRET,
                &uri,
                &body,
                now - 5 * 60 * 1000 - 1000,
            ),
            body.clone(),
        ),
        (
            "future timestamp",
            signed_headers(
                Signature::V3,
                SECRET,
                &uri,
                &body,
                now + 5 * 60 * 1000 + 1000,
            ),
            body.clone(),
        ),
    ];
    for (case, headers, body) in cases {
        let response = engine.post_with(WEBHOOK_PATH, &headers, &body).await;
        assert_eq!(response.status(), 401, "{case}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "unauthorized", "{case}");
    }
    assert_eq!(engine.events_in_stream().await, 0);
    let metrics = engine.metrics().await;
    for (reason, n) in [("stale_timestamp", 3), ("legacy_refused", 2)] {
        let line = format!(
            r#"crm_webhook_verification_failures_total{{provider="hubspot",reason="{reason}"}} {n}"#
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains(
            r#"crm_requests_total{provider="hubspot",object="webhook",verb="POST",status="401"} 9"#
        ),
        "{metrics}"
    );
    engine.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_mistyped_bodies_get_clear_errors_and_store_nothing() {
    let engine = TestEngine::start(&[("CRM_WEBHOOK_MAX_BYTES", "4096")]).await;
    let uri = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
    let now = Utc::now().timestamp_millis();
    let cases: Vec<(Vec<u8>, Option<&str>, u16, &str)> = vec![
        (
            b"{\"not\":\"an array\"}".to_vec(),
            None,
            400,
            "not a JSON array",
        ),
        (b"\xff\xfe[".to_vec(), None, 400, "not a JSON array"),
        (vec![b' '; 5000], None, 413, "larger than the 4096 bytes"),
        (b"[]".to_vec(), Some("text/plain"), 415, "application/json"),
    ];
    for (body, content_type, status, message) in cases {
        let mut headers = signed_headers(Signature::V3, SECRET, &uri, &body, now);
        if let Some(ct) = content_type {
            headers[0].1 = ct.to_owned();
        }
        let response = engine.post_with(WEBHOOK_PATH, &headers, &body).await;
        assert_eq!(response.status(), status, "{message}");
        let answer: Value = response.json().await.unwrap();
        let text = answer["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{text}");
    }
    assert_eq!(engine.events_in_stream().await, 0);
    engine.stop().await;
}

#[tokio::test]
async fn the_largest_batch_hubspot_sends_is_stored_whole() {
    // HubSpot sends up to 100 events a request, and a text property holds up to
    // 65,536 characters: 100 such changes in Japanese, with quotes, are more than
    // 16 MiB of JSON. A 413 is a 4xx HubSpot does not retry: the batch would be lost.
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(62515);
    let now = Utc::now().timestamp_millis();
    // Three bytes a character, and quotes and a control character escaped.
    let value: String = "\"会議メモ\"\u{1}x".repeat(65_536 / 8);
    assert_eq!(value.chars().count(), 65_536);
    let events: Vec<Value> = (0..100)
        .map(|i| f.property_change("contact", 9_000 + i, now + i as i64, "notes", &value))
        .collect();
    let body = serde_json::to_vec(&events).unwrap();
    assert!(body.len() > 16 << 20, "{} bytes", body.len());
    let response = engine.post_webhook(Signature::V3, &body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["stored"], 100);
    assert_eq!(engine.events_in_stream().await, 100);

    // Other routes, which read a body before they can refuse its request, keep to
    // 1 MiB: Zoho's notifications name ids only.
    let json_type = [("content-type", "application/json".to_owned())];
    let big = engine
        .post_with("/crm/webhooks/zoho", &json_type, &vec![b' '; 2 << 20])
        .await;
    assert_eq!(big.status(), 413, "{}", big.text().await.unwrap());
    assert_eq!(engine.events_in_stream().await, 100);
}

#[tokio::test]
async fn unreadable_events_are_stored_unparsed_and_the_rest_of_the_batch_is_kept() {
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(62515);
    let good = f.creation("contact", 7, 1_700_000_000_000);
    let body = json!([good, {"eventId": 2, "portalId": 62515}, {"eventId": 3, "portalId": 1, "occurredAt": 1, "subscriptionType": "contact.creation", "objectId": ""}]);
    let response = engine
        .post_webhook(Signature::V3, &serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(
        response.status(),
        200,
        "HubSpot never retries a 4xx: the batch must not be refused"
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["accepted"], 3);
    assert_eq!(answer["unparsed"], 2);
    assert_eq!(engine.events_in_stream().await, 3);
    let stream = engine
        .js
        .get_stream(engine.topology.events_stream())
        .await
        .unwrap();
    let kept = stream.get_raw_message(2).await.unwrap();
    assert!(
        kept.subject
            .as_str()
            .contains(".raw.hubspot.62515.unparsed."),
        "{}",
        kept.subject
    );
    assert_eq!(kept.payload.as_ref(), br#"{"eventId":2,"portalId":62515}"#);
    engine.stop().await;
}

#[tokio::test]
async fn a_retried_webhook_is_stored_once() {
    let engine = TestEngine::start(&[]).await;
    let body = batch();
    let first: Value = engine
        .post_webhook(Signature::V3, &body)
        .await
        .json()
        .await
        .unwrap();
    let retry = String::from_utf8(body)
        .unwrap()
        .replace("\"attemptNumber\":0", "\"attemptNumber\":1");
    let second: Value = engine
        .post_webhook(Signature::V3, retry.as_bytes())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["stored"], 17);
    assert_eq!(second["stored"], 0);
    assert_eq!(second["duplicates"], 17);
    assert_eq!(engine.events_in_stream().await, 17);
    engine.stop().await;
}

#[tokio::test]
async fn without_a_jetstream_ack_the_answer_is_503_so_hubspot_retries() {
    let engine = TestEngine::start(&[]).await;
    engine
        .js
        .delete_stream(engine.topology.events_stream())
        .await
        .unwrap();
    let response = engine.post_webhook(Signature::V3, &batch()).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "unavailable");
    engine.stop().await;
}

#[tokio::test]
async fn without_a_secret_webhooks_are_unavailable_not_accepted() {
    let engine = TestEngine::start(&[("CRM_HUBSPOT_CLIENT_SECRET", "")]).await;
    let response = engine.post_webhook(Signature::V3, &batch()).await;
    assert_eq!(response.status(), 503);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("CRM_HUBSPOT_CLIENT_SECRET"));
    assert_eq!(engine.events_in_stream().await, 0);
    engine.stop().await;
}

#[tokio::test]
async fn without_a_public_url_the_forwarded_headers_give_the_signed_uri() {
    let engine = TestEngine::start(&[("CRM_PUBLIC_URL", "")]).await;
    let body = batch();
    let uri = format!("https://hooks.example.org{WEBHOOK_PATH}?portal=1");
    let mut headers = signed_headers(
        Signature::V3,
        SECRET,
        &uri,
        &body,
        Utc::now().timestamp_millis(),
    );
    headers.push(("X-Forwarded-Proto", "https".into()));
    headers.push(("X-Forwarded-Host", "hooks.example.org".into()));
    let response = engine
        .post_with(&format!("{WEBHOOK_PATH}?portal=1"), &headers, &body)
        .await;
    assert_eq!(response.status(), 200);
    engine.stop().await;
}
