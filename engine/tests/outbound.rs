//! Call outcomes pushed to HubSpot, Zoho and Odoo at once, against their emulators
//! over HTTP, while they fail requests and a worker restarts: every outcome exists
//! exactly once in each CRM, and repeat pushes, redeliveries and a crash between the
//! CRM's answer and the record change nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use common::{free_port, TestEngine};
use crmsync_adapters::odoo::client::{OdooClient, OdooConfig};
use crmsync_adapters::{Metrics, RateLimiter, Secret, Vault};
use crmsync_sandbox::server::Running;
use crmsync_sandbox::{hubspot, odoo, zoho};
use crmsync_testkit::eventually;

struct Crms {
    hs: Arc<hubspot::HubSpotSandbox>,
    zs: Arc<zoho::ZohoSandbox>,
    od: Arc<odoo::OdooSandbox>,
    _running: Vec<Running>,
    od_url: String,
}

/// Start → the provider's consent page → back to the engine's callback.
async fn oauth_connect(engine: &TestEngine, provider: &str) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut response = client
        .get(engine.url(&format!("/crm/{provider}/start?workspace=acme")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    while response.status().is_redirection() {
        let next = response.headers()["location"].to_str().unwrap().to_owned();
        response = client.get(&next).send().await.unwrap();
    }
    assert_eq!(
        response.status(),
        200,
        "{provider}: {}",
        response.text().await.unwrap()
    );
}

async fn start() -> (Crms, TestEngine) {
    let addr = "127.0.0.1:0".parse().unwrap();
    let small = 40;
    let (hs, h) = hubspot::HubSpotSandbox::start(
        hubspot::Config {
            contacts: small,
            ..Default::default()
        },
        addr,
    )
    .await
    .unwrap();
    let (zs, z) = zoho::ZohoSandbox::start(
        zoho::Config {
            contacts: small,
            ..Default::default()
        },
        addr,
    )
    .await
    .unwrap();
    let (od, o) = odoo::OdooSandbox::start(
        odoo::Config {
            contacts: small,
            ..Default::default()
        },
        addr,
    )
    .await
    .unwrap();
    let (_, key) = Vault::generate();
    let port = free_port().to_string();
    let public = format!("http://127.0.0.1:{port}");
    let zoho_accounts = zoho::DataCentre::Us.accounts_url(&z.base_url);
    let engine = TestEngine::start(&[
        ("PORT", port.as_str()),
        ("CRM_PUBLIC_URL", public.as_str()),
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", key.as_str()),
        ("CRM_HUBSPOT_CLIENT_ID", "hubspot-sandbox-client"),
        ("CRM_HUBSPOT_CLIENT_SECRET", "hubspot-sandbox-secret"),
        ("CRM_HUBSPOT_API_URL", h.base_url.as_str()),
        ("CRM_HUBSPOT_AUTH_URL", h.base_url.as_str()),
        ("CRM_ZOHO_CLIENT_ID", "zoho-sandbox-client"),
        ("CRM_ZOHO_CLIENT_SECRET", "zoho-sandbox-secret"),
        ("CRM_ZOHO_ACCOUNTS_URL", zoho_accounts.as_str()),
        ("CRM_POLL_INTERVAL_SECS", "1"),
        ("CRM_SYNC_RPS", "100"),
        ("CRM_RETRY_BASE_MS", "300"),
        ("CRM_RETRY_MAX_MS", "2000"),
        ("CRM_MAX_DELIVER", "20"),
    ])
    .await;
    let od_url = o.base_url.clone();
    (
        Crms {
            hs,
            zs,
            od,
            _running: vec![h, z, o],
            od_url,
        },
        engine,
    )
}

async fn post(engine: &TestEngine, path: &str, body: &Value) -> (u16, Value) {
    let r = engine
        .http
        .post(engine.url(path))
        .bearer_auth(API_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn outcome(email: &str, n: usize) -> Value {
    json!({
        "workspace": "acme",
        "contact": {"email": email},
        "started_at": "2026-11-27T10:00:00Z",
        "duration_secs": 60 + n,
        "direction": "outbound",
        "disposition": "connected",
        "summary": format!("Call number {n}"),
        "notes": "Wants a demo next week.",
        "recording_url": "https://recordings.example.com/1.mp3",
    })
}

async fn odoo_client(crms: &Crms) -> OdooClient {
    let c = crms.od.credentials(&crms.od_url);
    OdooClient::connect(
        OdooConfig {
            url: crms.od_url.clone(),
            database: c["database"].as_str().unwrap().into(),
            login: c["login"].as_str().unwrap().into(),
            api_key: Secret::new(c["api_key"].as_str().unwrap().into()),
            timeout: Duration::from_secs(10),
        },
        Arc::new(RateLimiter::new(1000.0, 1000.0)),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap()
}

/// How many records each CRM holds for `key`: (HubSpot, Zoho, Odoo).
async fn copies(crms: &Crms, odoo: &OdooClient, key: &str) -> (usize, usize, usize) {
    let hubspot = crms
        .hs
        .snapshot("calls")
        .values()
        .filter(|p| p.get("hs_call_title").is_some_and(|t| t.contains(key)))
        .count();
    let zoho = crms
        .zs
        .records("Calls")
        .iter()
        .filter(|r| r["Subject"].as_str().is_some_and(|s| s.contains(key)))
        .count();
    let odoo = odoo
        .search_ids("mail.message", json!([["body", "ilike", key]]))
        .await
        .unwrap()
        .len();
    (hubspot, zoho, odoo)
}

#[tokio::test]
async fn every_outcome_lands_once_in_every_crm_through_failures_repeats_and_a_restart() {
    let (crms, engine) = start().await;
    oauth_connect(&engine, "hubspot").await;
    oauth_connect(&engine, "zoho").await;
    let c = crms.od.credentials(&crms.od_url);
    let (status, answer) = post(
        &engine,
        "/crm/odoo/connect",
        &json!({"workspace": "acme", "url": crms.od_url, "database": c["database"],
                "login": c["login"], "api_key": c["api_key"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // Contacts every CRM knows (the emulators share their people), once projected.
    // Generous bounds: on a loaded 2-core CI machine the first polls take a while.
    let emails: Vec<String> = eventually(Duration::from_secs(120), || async {
        let emails: Vec<String> = sqlx::query_scalar(
            "SELECT lower(email) FROM contacts WHERE NOT deleted AND email IS NOT NULL
             GROUP BY lower(email) HAVING count(DISTINCT provider) = 3 ORDER BY 1",
        )
        .fetch_all(&engine.pool)
        .await
        .unwrap();
        (emails.len() >= 5).then_some(emails)
    })
    .await
    .expect("contacts known to all three CRMs are projected");

    // Bad pushes are refused with their fields, and nothing is queued.
    let (status, refused) = post(
        &engine,
        "/crm/calls/c-bad/push-to-crm",
        &json!({"workspace": "acme", "started_at": "yesterday"}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = post(
        &engine,
        "/crm/calls/c-bad/push-to-crm",
        &json!({"workspace": "acme", "started_at": "2026-11-27T10:00:00Z", "duration_secs": 5,
                "direction": "sideways", "disposition": "", "contact": {}}),
    )
    .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = refused["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["contact", "direction", "disposition"], "{refused}");
    let mut other = outcome(&emails[0], 0);
    other["workspace"] = json!("nobody");
    assert_eq!(
        post(&engine, "/crm/calls/c-x/push-to-crm", &other).await.0,
        404
    );

    // Pushes while every CRM fails a fifth of its requests, some pushed twice, and
    // the worker restarts half-way.
    for sb in [crms.hs.faults(), crms.zs.faults(), crms.od.faults()] {
        sb.set("errors=0.2".parse().unwrap());
    }
    let calls = 24;
    for n in 0..calls {
        let email = &emails[n % emails.len()];
        let (status, queued) = post(
            &engine,
            &format!("/crm/calls/call-{n}/push-to-crm"),
            &outcome(email, n),
        )
        .await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(queued["providers"].as_array().unwrap().len(), 3);
        if n % 4 == 0 {
            assert_eq!(
                post(
                    &engine,
                    &format!("/crm/calls/call-{n}/push-to-crm"),
                    &outcome(email, n)
                )
                .await
                .0,
                202
            );
        }
    }
    let engine = engine.restart().await;
    let sent = eventually(Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_call_pushes WHERE state = 'sent' AND call_id LIKE 'call-%'",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        (n == 3 * calls as i64).then_some(n)
    })
    .await;
    let states: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT call_id, provider, state, reason FROM crm_call_pushes WHERE state <> 'sent'",
    )
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert!(sent.is_some(), "not sent: {states:?}");
    for sb in [crms.hs.faults(), crms.zs.faults(), crms.od.faults()] {
        sb.set(Default::default());
    }

    // A crash between the CRM's answer and the record: the state says queued again and
    // the command comes again; the dispatcher finds the record instead of a second one.
    sqlx::query("UPDATE crm_call_pushes SET state = 'queued' WHERE call_id = 'call-1'")
        .execute(&engine.pool)
        .await
        .unwrap();
    let mut again = outcome(&emails[1 % emails.len()], 1);
    again["summary"] = json!("Call number 1, pushed again with other words");
    assert_eq!(
        post(&engine, "/crm/calls/call-1/push-to-crm", &again)
            .await
            .0,
        202
    );
    let resent = eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_call_pushes WHERE call_id = 'call-1' AND state = 'sent'",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        (n == 3).then_some(())
    })
    .await;
    assert!(resent.is_some());

    // Exactly once in every CRM.
    let odoo = odoo_client(&crms).await;
    for n in 0..calls {
        let key = crmsync_ingest::calls::push_key(
            "acme",
            &format!("call-{n}"),
            crmsync_schema::Provider::HubSpot,
        );
        let (h, _, _) = copies(&crms, &odoo, &key).await;
        let zkey = crmsync_ingest::calls::push_key(
            "acme",
            &format!("call-{n}"),
            crmsync_schema::Provider::Zoho,
        );
        let (_, z, _) = copies(&crms, &odoo, &zkey).await;
        let okey = crmsync_ingest::calls::push_key(
            "acme",
            &format!("call-{n}"),
            crmsync_schema::Provider::Odoo,
        );
        let (_, _, o) = copies(&crms, &odoo, &okey).await;
        assert_eq!((h, z, o), (1, 1, 1), "call-{n}");
    }

    // Each CRM id is projected as an entity link of the call.
    let linked = eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_entity_links l JOIN crm_call_pushes p
               ON p.workspace_id = l.workspace_id AND p.call_id = l.app_id
              AND p.provider = l.provider AND p.crm_id = l.crm_id
             WHERE l.entity_type = 'call' AND l.app_id LIKE 'call-%'",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        (n == 3 * calls as i64).then_some(())
    })
    .await;
    assert!(
        linked.is_some(),
        "every pushed call is linked to its CRM records"
    );

    // The status names each CRM's record.
    let status: Value = engine
        .http
        .get(engine.url("/crm/calls/call-3?workspace=acme"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let providers = status["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 3, "{status}");
    assert!(
        providers
            .iter()
            .all(|p| p["state"] == json!("sent") && p["crm_id"].is_string()),
        "{status}"
    );
    engine.stop().await;
}

async fn get(engine: &TestEngine, path: &str) -> (u16, Value) {
    let r = engine
        .http
        .get(engine.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn push_state(engine: &TestEngine, call: &str) -> Option<(String, Option<String>)> {
    sqlx::query_as("SELECT state, reason FROM crm_call_pushes WHERE call_id = $1")
        .bind(call)
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_that_cannot_succeed_is_dead_lettered_and_can_be_retried_or_discarded() {
    let (crms, engine) = start().await;
    let c = crms.od.credentials(&crms.od_url);
    let (status, _) = post(
        &engine,
        "/crm/odoo/connect",
        &json!({"workspace": "acme", "url": crms.od_url, "database": c["database"],
                "login": c["login"], "api_key": c["api_key"]}),
    )
    .await;
    assert_eq!(status, 200);
    let unauthorised = engine
        .http
        .get(engine.url("/crm/dlq"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    assert_eq!(get(&engine, "/crm/calls/nope?workspace=acme").await.0, 404);

    let anonymous = engine
        .http
        .post(engine.url("/crm/calls/x/push-to-crm"))
        .json(&outcome("a@example.com", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let mut elsewhere = outcome("a@example.com", 1);
    elsewhere["provider"] = json!("hubspot");
    assert_eq!(
        post(&engine, "/crm/calls/x/push-to-crm", &elsewhere)
            .await
            .0,
        404
    );

    let mut lost = outcome("nobody@nowhere.example", 1);
    lost["provider"] = json!("odoo");
    assert_eq!(
        post(&engine, "/crm/calls/lost/push-to-crm", &lost).await.0,
        202
    );
    let failed = eventually(Duration::from_secs(20), || async {
        push_state(&engine, "lost")
            .await
            .filter(|(state, _)| state == "failed")
    })
    .await
    .expect("the push failed for good");
    assert!(failed.1.unwrap().contains("no odoo contact"));

    let dead_letter = || async {
        let (status, listed) = get(&engine, "/crm/dlq").await;
        assert_eq!(status, 200);
        listed["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["original_subject"]
                    .as_str()
                    .is_some_and(|s| s.contains(".out.odoo."))
            })
            .cloned()
    };
    let first = eventually(Duration::from_secs(10), dead_letter)
        .await
        .expect("the push is in the DLQ");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("no odoo contact"),
        "{first}"
    );
    let id = first["id"].as_u64().unwrap();

    // Retried: back on the outbound stream, out of the DLQ; it fails again, and lands
    // there again.
    let (status, retried) = post(&engine, &format!("/crm/dlq/{id}/retry"), &json!({})).await;
    assert_eq!(status, 200, "{retried}");
    let again = eventually(Duration::from_secs(20), || async {
        dead_letter().await.filter(|m| m["id"].as_u64() != Some(id))
    })
    .await
    .expect("the retried push failed again");
    assert_eq!(push_state(&engine, "lost").await.unwrap().0, "failed");
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM crm_call_pushes WHERE call_id = 'lost'")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    // A retry from the DLQ starts its attempts afresh: one, which failed.
    assert_eq!(attempts, 1);

    // The same outcome pushed again after its failure is a new attempt, not a
    // duplicate JetStream drops.
    let again_id = again["id"].as_u64().unwrap();
    assert_eq!(
        post(&engine, &format!("/crm/dlq/{again_id}/discard"), &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        post(&engine, "/crm/calls/lost/push-to-crm", &lost).await.0,
        202
    );
    let again = eventually(Duration::from_secs(20), || async {
        dead_letter()
            .await
            .filter(|m| m["id"].as_u64() > Some(again_id))
    })
    .await
    .expect("the pushed-again outcome was tried and failed again");

    // Discarded: gone.
    let again_id = again["id"].as_u64().unwrap();
    assert_eq!(
        post(&engine, &format!("/crm/dlq/{again_id}/discard"), &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        post(&engine, &format!("/crm/dlq/{again_id}/discard"), &json!({}))
            .await
            .0,
        404
    );
    assert!(dead_letter().await.is_none());
    engine.stop().await;
}
