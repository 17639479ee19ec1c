//! Call outcomes pushed to HubSpot, Zoho and Odoo at once, against their emulators
//! over HTTP, while they fail requests and a worker restarts: every outcome exists
//! exactly once in each CRM, and repeat pushes, redeliveries and a crash between the
//! CRM's answer and the record change nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use common::{free_port, EngineProcess, TestEngine};
use crmsync_adapters::odoo::client::OdooClient;
use crmsync_adapters::Vault;
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
    oauth_connect_workspace(engine, provider, "acme").await;
}

async fn oauth_connect_workspace(engine: &TestEngine, provider: &str, workspace: &str) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut response = client
        .get(engine.url(&format!("/crm/{provider}/start?workspace={workspace}")))
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

/// The three emulators, each with `contacts` people; HubSpot's limits well above what
/// the tests' connections may send (the load test checks against our own allowance).
async fn start_crms(contacts: usize) -> Crms {
    let addr = "127.0.0.1:0".parse().unwrap();
    let (hs, h) = hubspot::HubSpotSandbox::start(
        hubspot::Config {
            contacts,
            per_ten_seconds: 5_000,
            search_per_second: 500,
            ..Default::default()
        },
        addr,
    )
    .await
    .unwrap();
    let (zs, z) = zoho::ZohoSandbox::start(
        zoho::Config {
            contacts,
            credits_per_day: 1_000_000,
            ..Default::default()
        },
        addr,
    )
    .await
    .unwrap();
    let (od, o) = odoo::OdooSandbox::start(
        odoo::Config {
            contacts,
            ..Default::default()
        },
        addr,
    )
    .await
    .unwrap();
    let od_url = o.base_url.clone();
    Crms {
        hs,
        zs,
        od,
        _running: vec![h, z, o],
        od_url,
    }
}

/// An engine's environment against `crms`, with `overrides` on top.
async fn engine_env(
    crms: &Crms,
    overrides: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let (_, key) = Vault::generate();
    let port = free_port().to_string();
    let public = format!("http://127.0.0.1:{port}");
    let hubspot_url = crms._running[0].base_url.as_str();
    let zoho_accounts = zoho::DataCentre::Us.accounts_url(&crms._running[1].base_url);
    let mut env: Vec<(&str, &str)> = vec![
        ("PORT", port.as_str()),
        ("CRM_PUBLIC_URL", public.as_str()),
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", key.as_str()),
        ("CRM_HUBSPOT_CLIENT_ID", "hubspot-sandbox-client"),
        ("CRM_HUBSPOT_CLIENT_SECRET", "hubspot-sandbox-secret"),
        ("CRM_HUBSPOT_API_URL", hubspot_url),
        ("CRM_HUBSPOT_AUTH_URL", hubspot_url),
        ("CRM_ZOHO_CLIENT_ID", "zoho-sandbox-client"),
        ("CRM_ZOHO_CLIENT_SECRET", "zoho-sandbox-secret"),
        ("CRM_ZOHO_ACCOUNTS_URL", zoho_accounts.as_str()),
        ("CRM_POLL_INTERVAL_SECS", "1"),
        ("CRM_SYNC_RPS", "100"),
        // The emulator allows 500 searches a second.
        ("CRM_HUBSPOT_SEARCH_RPS", "100"),
        ("CRM_RETRY_BASE_MS", "300"),
        ("CRM_RETRY_MAX_MS", "2000"),
        ("CRM_MAX_DELIVER", "20"),
    ];
    env.extend_from_slice(overrides);
    common::test_env(&env).await
}

async fn start() -> (Crms, TestEngine) {
    let crms = start_crms(40).await;
    let env = engine_env(&crms, &[]).await;
    let engine = TestEngine::start_env(crmsync_engine::Role::All, &env).await;
    (crms, engine)
}

/// Connects `workspace` to the three CRMs.
async fn connect_all(engine: &TestEngine, crms: &Crms, workspace: &str) {
    oauth_connect_workspace(engine, "hubspot", workspace).await;
    oauth_connect_workspace(engine, "zoho", workspace).await;
    let c = crms.od.credentials(&crms.od_url);
    let (status, answer) = post(
        engine,
        "/crm/odoo/connect",
        &json!({"workspace": workspace, "url": crms.od_url, "database": c["database"],
                "login": c["login"], "api_key": c["api_key"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

/// Emails of contacts every CRM knows (the emulators share their people), once
/// projected. Generous bounds: on a loaded 2-core CI machine the first polls take a
/// while.
async fn shared_contacts(engine: &TestEngine) -> Vec<String> {
    eventually(Duration::from_secs(180), || async {
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
    .expect("contacts known to all three CRMs are projected")
}

async fn post(engine: &TestEngine, path: &str, body: &Value) -> (u16, Value) {
    common::post_json(engine, path, body).await
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
    common::odoo::client(&crms.od, &crms.od_url).await
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
    connect_all(&engine, &crms, "acme").await;
    let emails = shared_contacts(&engine).await;

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
    let fields = common::refused_fields(&refused);
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

    // A crash between the CRM's answer and the record: the state says queued again, no
    // CRM id is known, the crashed worker's lease runs out (30 s in life, 3 s here; in
    // life as here longer than the CRM's search lag) and the command comes again; the
    // dispatcher finds the record instead of making a second one. (Without the lease the
    // simulated crash could come before the CRM's search shows the first record, which
    // no real crash can: CI once caught that.)
    sqlx::query(
        "UPDATE crm_call_pushes SET state = 'queued', crm_id = NULL,
                lease_owner = gen_random_uuid(), lease_until = now() + interval '3 seconds'
         WHERE call_id = 'call-1'",
    )
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
    common::assert_replay_matches(&engine).await;
    common::events::assert_contract(&engine.js, &engine.topology).await;
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

async fn push_row(engine: &TestEngine, call: &str) -> (String, Option<String>, i32) {
    sqlx::query_as("SELECT state, reason, attempts FROM crm_call_pushes WHERE call_id = $1")
        .bind(call)
        .fetch_one(&engine.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_made_again_while_its_first_attempt_runs_is_the_one_that_counts() {
    let (crms, engine) = start().await;
    oauth_connect(&engine, "hubspot").await;
    let email: String = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar(
            "SELECT email FROM contacts WHERE provider = 'hubspot' AND NOT deleted
               AND email IS NOT NULL ORDER BY email LIMIT 1",
        )
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
    })
    .await
    .expect("a HubSpot contact is projected");

    // The first push names nobody HubSpot knows, and its attempt is slow (its search
    // for an earlier copy); meanwhile the app pushes the call again, corrected.
    crms.hs.faults().set("latency=2s".parse().unwrap());
    let mut wrong = outcome("nobody@nowhere.example", 1);
    wrong["provider"] = json!("hubspot");
    assert_eq!(
        post(&engine, "/crm/calls/again/push-to-crm", &wrong)
            .await
            .0,
        202
    );
    let tried = eventually(Duration::from_secs(20), || async {
        (push_row(&engine, "again").await.2 >= 1).then_some(())
    })
    .await;
    assert!(tried.is_some(), "the first push is being tried");
    let mut right = outcome(&email, 1);
    right["provider"] = json!("hubspot");
    assert_eq!(
        post(&engine, "/crm/calls/again/push-to-crm", &right)
            .await
            .0,
        202
    );
    crms.hs.faults().set(Default::default());

    // The first attempt's failure neither overwrites the second push nor ends it.
    let settled = eventually(Duration::from_secs(60), || async {
        let row = push_row(&engine, "again").await;
        (row.0 != "queued").then_some(row)
    })
    .await
    .expect("the push settles");
    assert_eq!(settled.0, "sent", "{settled:?}");
    assert_eq!(settled.1, None, "{settled:?}");
    let key = crmsync_ingest::calls::push_key("acme", "again", crmsync_schema::Provider::HubSpot);
    assert_eq!(
        records_by_key(&crms).get(&key),
        Some(&1),
        "one call in HubSpot"
    );
    assert_eq!(
        push_dead_letters(&engine).await,
        0,
        "the superseded push is not dead-lettered"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_push_made_again_after_an_unanswered_create_finds_the_call_behind_the_search_lag() {
    let crms = start_crms(5).await;
    let env = engine_env(&crms, &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    let engine = TestEngine::start_env(crmsync_engine::Role::All, &env).await;
    oauth_connect(&engine, "hubspot").await;
    let contact = crms.hs.snapshot("contacts").into_keys().next().unwrap();
    let mut body = outcome("nobody@example.com", 1);
    body["contact"] = json!({"crm_id": contact.to_string()});
    body["provider"] = json!("hubspot");

    // HubSpot makes the call but its answer is lost; the search shows the call only
    // after its index lag (two seconds in the emulator).
    crms.hs
        .faults()
        .set("lost-created=1,hang=10ms".parse().unwrap());
    assert_eq!(
        post(&engine, "/crm/calls/unanswered/push-to-crm", &body)
            .await
            .0,
        202
    );
    let tried = eventually(Duration::from_secs(20), || async {
        let (state, reason, attempts) = push_row(&engine, "unanswered").await;
        (state == "queued" && attempts == 1 && reason.is_some()).then_some(())
    })
    .await;
    assert!(tried.is_some(), "the first attempt ended unanswered");
    crms.hs.faults().set(Default::default());
    // The app, seeing no result, pushes the call again at once: a new push, its
    // attempts counted afresh, must still wait for the search to show the call.
    assert_eq!(
        post(&engine, "/crm/calls/unanswered/push-to-crm", &body)
            .await
            .0,
        202
    );
    let settled = eventually(Duration::from_secs(60), || async {
        let row = push_row(&engine, "unanswered").await;
        (row.0 != "queued").then_some(row)
    })
    .await;
    assert_eq!(
        settled.as_ref().map(|r| r.0.as_str()),
        Some("sent"),
        "{settled:?}"
    );
    let key =
        crmsync_ingest::calls::push_key("acme", "unanswered", crmsync_schema::Provider::HubSpot);
    assert_eq!(
        records_by_key(&crms).get(&key),
        Some(&1),
        "one call in HubSpot"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_crm_out_of_api_credits_holds_pushes_without_spending_their_attempts() {
    let crms = start_crms(5).await;
    let env = engine_env(
        &crms,
        &[("CRM_POLL_INTERVAL_SECS", "3600"), ("CRM_MAX_DELIVER", "2")],
    )
    .await;
    let engine = TestEngine::start_env(crmsync_engine::Role::All, &env).await;
    oauth_connect(&engine, "zoho").await;
    let contact = crms.zs.records("Contacts")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The org's allowance for the day is spent (other integrations used it).
    crms.zs.set_credits_per_day(crms.zs.credits_used());
    let mut body = outcome("nobody@example.com", 1);
    body["contact"] = json!({"crm_id": contact});
    body["provider"] = json!("zoho");
    assert_eq!(
        post(&engine, "/crm/calls/held/push-to-crm", &body).await.0,
        202
    );
    // Refused for its rate again and again: three attempts' worth of refusals, more
    // than CRM_MAX_DELIVER allows, and still queued, its attempts unspent.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut per_attempt = None;
    let held = loop {
        let (state, reason, attempts) = push_row(&engine, "held").await;
        if state != "queued" {
            break Err((state, reason, attempts));
        }
        let refused = crms.zs.credit_refusals();
        if reason
            .as_deref()
            .is_some_and(|r| r.contains("credit limit"))
        {
            // The first attempt's refusals (the client's own retries included).
            let per = *per_attempt.get_or_insert(refused);
            if refused >= 3 * per {
                break Ok(attempts);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the push is refused for its rate several times: {refused} refusals, {reason:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(matches!(held, Ok(attempts) if attempts <= 1), "{held:?}");

    // The allowance comes back: the push goes out, once.
    crms.zs.set_credits_per_day(1_000_000);
    let state = eventually(Duration::from_secs(60), || async {
        let row = push_row(&engine, "held").await;
        (row.0 != "queued").then_some(row)
    })
    .await;
    assert_eq!(
        state.as_ref().map(|r| r.0.as_str()),
        Some("sent"),
        "{state:?}"
    );
    assert_eq!(push_dead_letters(&engine).await, 0);
    engine.stop().await;
}

#[tokio::test]
async fn a_failed_push_whose_dead_letter_could_not_be_written_is_dead_lettered_when_it_returns() {
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
    // The DLQ is away (its stream lost) when the push fails for good.
    engine
        .js
        .delete_stream(engine.topology.dlq_stream())
        .await
        .unwrap();
    let mut lost = outcome("nobody@nowhere.example", 1);
    lost["provider"] = json!("odoo");
    assert_eq!(
        post(&engine, "/crm/calls/unlettered/push-to-crm", &lost)
            .await
            .0,
        202
    );
    let failed = eventually(Duration::from_secs(20), || async {
        push_state(&engine, "unlettered")
            .await
            .filter(|(state, _)| state == "failed")
    })
    .await;
    assert!(failed.is_some(), "the push failed for good");

    // The DLQ comes back: the command, still unacknowledged, returns and its dead
    // letter is written then.
    engine.topology.ensure(&engine.js).await.unwrap();
    let lettered = eventually(Duration::from_secs(30), || async {
        (push_dead_letters(&engine).await == 1).then_some(())
    })
    .await;
    assert!(lettered.is_some(), "the failed push is in the DLQ");
    engine.stop().await;
}

/// The dead letters of pushes (not the stream advisories beside them).
async fn push_dead_letters(engine: &TestEngine) -> i64 {
    let mut after = None;
    let mut n = 0;
    loop {
        let path = match after {
            Some(a) => format!("/crm/dlq?limit=500&after={a}"),
            None => "/crm/dlq?limit=500".to_owned(),
        };
        let (status, page) = get(engine, &path).await;
        assert_eq!(status, 200, "{page}");
        n += page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains(".dlq.push-"))
            })
            .count() as i64;
        match page["next_after"].as_u64() {
            Some(a) => after = Some(a),
            None => return n,
        }
    }
}

/// How many records carry each idempotency key in each CRM.
fn records_by_key(crms: &Crms) -> std::collections::HashMap<String, usize> {
    let mut found = std::collections::HashMap::new();
    let texts = crms
        .hs
        .snapshot("calls")
        .values()
        .filter_map(|p| p.get("hs_call_title").cloned())
        .chain(
            crms.zs
                .records("Calls")
                .iter()
                .filter_map(|r| r["Subject"].as_str().map(str::to_owned)),
        )
        .chain(
            crms.od
                .column("mail.message", "body")
                .iter()
                .filter_map(|b| b.as_str().map(str::to_owned)),
        )
        .collect::<Vec<_>>();
    for text in texts {
        // Keys are `crmsync-` and 20 hex digits (see `push_key`); a record counts
        // once however often it names its key.
        let mut keys = std::collections::BTreeSet::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("crmsync-") {
            let key: String = rest[at..].chars().take(8 + 20).collect();
            if key.len() == 28 && key[8..].chars().all(|c| c.is_ascii_hexdigit()) {
                keys.insert(key);
            }
            rest = &rest[at + 8..];
        }
        for key in keys {
            *found.entry(key).or_default() += 1;
        }
    }
    found
}

#[tokio::test]
async fn two_thousand_outcomes_through_storms_lost_answers_and_a_killed_worker_land_once_each() {
    let crms = start_crms(30).await;
    let (rps, burst) = (80.0, 10.0);
    let rps_s = rps.to_string();
    let burst_s = burst.to_string();
    let env = engine_env(
        &crms,
        &[
            ("CRM_POLL_INTERVAL_SECS", "2"),
            ("CRM_SYNC_RPS", rps_s.as_str()),
            ("CRM_SYNC_BURST", burst_s.as_str()),
            ("CRM_RETRY_BASE_MS", "500"),
            ("CRM_RETRY_MAX_MS", "3000"),
            ("CRM_MAX_DELIVER", "25"),
        ],
    )
    .await;
    let engine = TestEngine::start_env(crmsync_engine::Role::Api, &env).await;
    for ws in ["acme", "globex"] {
        connect_all(&engine, &crms, ws).await;
    }
    // Two workers push at once, as replicas do; they share each connection's
    // allowance through Postgres.
    let mut worker = Some(EngineProcess::worker(&env, 1));
    let beside = EngineProcess::worker(&env, 3);
    let emails = shared_contacts(&engine).await;

    // Storms of 429s, 5xx, requests that hang, and answers lost after the CRM made
    // the record.
    for faults in [crms.hs.faults(), crms.zs.faults(), crms.od.faults()] {
        faults.set(
            "errors=0.03,timeouts=0.01,lost=0.02,hang=700ms,storm=400ms/5s"
                .parse()
                .unwrap(),
        );
    }
    let pushed_at = std::time::Instant::now();
    // One big workspace's backlog first, then a small one's.
    let big = 1_900;
    let small = 100;
    let jobs: Vec<(&str, usize)> = (0..big)
        .map(|n| ("acme", n))
        .chain((0..small).map(|n| ("globex", n)))
        .collect();
    use futures::StreamExt as _;
    let statuses: Vec<u16> = futures::stream::iter(jobs)
        .map(|(ws, n)| {
            let engine = &engine;
            let emails = &emails;
            async move {
                let mut body = outcome(&emails[n % emails.len()], n);
                body["workspace"] = json!(ws);
                post(engine, &format!("/crm/calls/{ws}-{n}/push-to-crm"), &body)
                    .await
                    .0
            }
        })
        .buffered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "every push is queued");
    let total = 3 * (big + small) as i64;

    let count = |sql: &'static str| {
        let pool = engine.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let sent_so_far = || count("SELECT count(*) FROM crm_call_pushes WHERE state = 'sent'");
    let sent_at_least = |n: i64| async move {
        eventually(Duration::from_secs(300), || async {
            (sent_so_far().await >= n).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{n} pushes sent"));
    };
    // kill -9 the worker mid-load, and start another.
    sent_at_least(600).await;
    worker.take().unwrap().kill();
    let _worker = EngineProcess::worker(&env, 2);
    // Once more have gone, the worker beside stops (SIGTERM, mid-push): it exits
    // cleanly, and the new worker pushes all that is left on its own.
    sent_at_least(sent_so_far().await + 300).await;
    // Waited for off the runtime: the emulators answering its last requests run on it.
    let (stopped, log) = tokio::task::spawn_blocking(move || beside.terminate())
        .await
        .unwrap();
    assert!(stopped.success(), "worker log:\n{log}");
    let settled_so_far = || {
        count(
            "SELECT count(*) FROM crm_call_pushes
             WHERE state IN ('sent', 'failed', 'dead_lettered')",
        )
    };
    assert!(
        settled_so_far().await < total,
        "pushes are left for the new worker"
    );

    let settled = eventually(Duration::from_secs(600), || async {
        let n = settled_so_far().await;
        (n == total).then_some(n)
    })
    .await;
    let took = pushed_at.elapsed();
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT provider, state, count(*) FROM crm_call_pushes GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert!(settled.is_some(), "unsettled after {took:?}: {states:?}");
    for faults in [crms.hs.faults(), crms.zs.faults(), crms.od.faults()] {
        faults.set(Default::default());
    }

    // Nothing unaccounted for: sent + dead-lettered = pushed, and each dead letter is
    // in the DLQ.
    let sent = count("SELECT count(*) FROM crm_call_pushes WHERE state = 'sent'").await;
    let dead =
        count("SELECT count(*) FROM crm_call_pushes WHERE state IN ('failed', 'dead_lettered')")
            .await;
    assert_eq!(sent + dead, total, "{states:?}");
    assert_eq!(push_dead_letters(&engine).await, dead, "{states:?}");
    assert!(
        sent >= total * 99 / 100,
        "nearly all get through the storms: {states:?}"
    );

    // Exactly once in each CRM: every sent push's key once, none twice.
    let found = records_by_key(&crms);
    let pushes: Vec<(String, String, String)> =
        sqlx::query_as("SELECT call_id, provider, state FROM crm_call_pushes")
            .fetch_all(&engine.pool)
            .await
            .unwrap();
    for (call, provider, state) in &pushes {
        let (ws, _) = call.split_once('-').unwrap();
        let provider: crmsync_schema::Provider = provider.parse().unwrap();
        let key = crmsync_ingest::calls::push_key(ws, call, provider);
        let copies = found.get(&key).copied().unwrap_or(0);
        if state == "sent" {
            assert_eq!(copies, 1, "{call} in {provider}");
        } else {
            assert!(copies <= 1, "{call} in {provider}: {copies}");
        }
    }
    assert!(found.values().all(|n| *n == 1), "no key twice in a CRM");

    // No emulator saw more API requests than two connections' allowance (rate and
    // burst each), with a few to spare for connect-time calls outside the buckets,
    // though two workers sent them.
    let allowed = (2.0 * (rps + burst)) as usize + 10;
    for (name, faults) in [
        ("hubspot", crms.hs.faults()),
        ("zoho", crms.zs.faults()),
        ("odoo", crms.od.faults()),
    ] {
        let peak = faults.peak_requests(Duration::from_secs(1), |p| !p.contains("/oauth/"));
        assert!(
            peak <= allowed,
            "{name} saw {peak} requests within a second"
        );
    }

    // Fair shares: the small workspace, queued behind the big one's backlog, was not
    // served after it.
    for provider in ["hubspot", "zoho", "odoo"] {
        let (globex_done, acme_done): (
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
        ) = sqlx::query_as(
            "SELECT max(updated_at) FILTER (WHERE workspace_id = 'globex'),
                        max(updated_at) FILTER (WHERE workspace_id = 'acme')
                 FROM crm_call_pushes WHERE provider = $1",
        )
        .bind(provider)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        assert!(
            globex_done < acme_done,
            "{provider}: the small workspace finished at {globex_done}, the big one at {acme_done}"
        );
    }
    eprintln!("{total} pushes settled in {took:?}: {states:?}");
    engine.stop().await;
}

#[tokio::test]
async fn crm_edits_to_a_pushed_call_are_conflicts_and_calls_born_in_the_crm_follow_it() {
    let (crms, engine) = start().await;
    oauth_connect(&engine, "zoho").await;
    let email: String = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar(
            "SELECT lower(email) FROM contacts WHERE provider = 'zoho' AND NOT deleted
               AND email IS NOT NULL ORDER BY 1 LIMIT 1",
        )
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
    })
    .await
    .expect("Zoho contacts are projected");
    eventually(Duration::from_secs(30), || async {
        (!crms.zs.live_channels().is_empty()).then_some(())
    })
    .await
    .expect("the notification channel is on");

    let mut call = outcome(&email, 7);
    call["provider"] = json!("zoho");
    assert_eq!(
        post(&engine, "/crm/calls/c-7/push-to-crm", &call).await.0,
        202
    );
    let crm_id: String = eventually(Duration::from_secs(30), || async {
        sqlx::query_scalar(
            "SELECT crm_id FROM crm_call_pushes WHERE call_id = 'c-7' AND state = 'sent'",
        )
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
        .flatten()
    })
    .await
    .expect("the call is in Zoho");
    let row = |id: String| {
        let pool = engine.pool.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, Option<String>, Option<String>, Value)>(
                "SELECT app_call_id, subject, body, fields FROM activities
                 WHERE provider = 'zoho' AND remote_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let (app_call, subject, body, _) = eventually(Duration::from_secs(20), || async {
        row(crm_id.clone()).await.filter(|r| r.0.is_some())
    })
    .await
    .expect("the pushed call is an app-born activity");
    assert_eq!(app_call.as_deref(), Some("c-7"));
    let subject = subject.unwrap();
    assert!(subject.ends_with("Outbound call: connected"), "{subject}");
    let body = body.unwrap();

    // A colleague edits the call in Zoho: the subject (crmsync's) and its purpose
    // (not crmsync's).
    assert!(crms.zs.edit_text(
        "Calls",
        &crm_id,
        &[
            ("Subject", "Edited by a colleague"),
            ("Call_Purpose", "Prospecting")
        ]
    ));
    let conflict: Value = eventually(Duration::from_secs(30), || async {
        let (status, listed) = get(&engine, "/crm/conflicts?workspace=acme").await;
        assert_eq!(status, 200, "{listed}");
        listed["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["remote_id"] == json!(crm_id))
            .cloned()
    })
    .await
    .expect("the edit is a conflict");
    assert_eq!(conflict["field"], json!("subject"), "{conflict}");
    assert_eq!(conflict["kept"]["value"], json!(subject));
    assert_eq!(conflict["kept"]["source"], json!("app"));
    assert_eq!(conflict["lost"]["value"], json!("Edited by a colleague"));
    assert_eq!(conflict["lost"]["source"], json!("crm"));
    assert_eq!(conflict["workspace"], json!("acme"));
    // Not applied; the field crmsync did not write follows the CRM.
    let followed = eventually(Duration::from_secs(20), || async {
        row(crm_id.clone())
            .await
            .filter(|r| r.3["purpose"] == json!("Prospecting"))
    })
    .await
    .expect("the purpose follows Zoho");
    assert_eq!(followed.1.as_deref(), Some(subject.as_str()));
    assert_eq!(followed.2.as_deref(), Some(body.as_str()));
    let conflicts: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_conflicts")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(
        conflicts, 1,
        "the unedited fields and the purpose are no conflicts"
    );

    // The list needs the bearer token and a workspace.
    let anonymous = engine
        .http
        .get(engine.url("/crm/conflicts?workspace=acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(get(&engine, "/crm/conflicts").await.0, 400);
    assert_eq!(
        get(&engine, "/crm/conflicts?workspace=acme&provider=salesforce")
            .await
            .0,
        400
    );

    // A call logged in Zoho by a colleague follows Zoho, edits included.
    let zoho = engine.zoho.as_ref().unwrap().client("acme").await.unwrap();
    let made = zoho
        .insert(
            "Calls",
            &[json!({"Subject": "Logged by hand", "Call_Type": "Inbound",
                     "Call_Start_Time": "2026-11-27T09:00:00+00:00"})],
        )
        .await
        .unwrap();
    let theirs = made
        .pointer("/data/0/details/id")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(30), || async {
        row(theirs.clone())
            .await
            .filter(|r| r.1.as_deref() == Some("Logged by hand"))
    })
    .await
    .expect("a CRM-born call is projected");
    assert!(crms
        .zs
        .edit_text("Calls", &theirs, &[("Subject", "Renamed by hand")]));
    let renamed = eventually(Duration::from_secs(30), || async {
        row(theirs.clone())
            .await
            .filter(|r| r.1.as_deref() == Some("Renamed by hand"))
    })
    .await;
    assert!(renamed.is_some(), "a CRM-born call's edits apply");
    assert!(row(theirs).await.unwrap().0.is_none());
    let conflicts: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_conflicts")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(conflicts, 1);
    common::assert_replay_matches(&engine).await;
    common::events::assert_contract(&engine.js, &engine.topology).await;
    engine.stop().await;
}

#[tokio::test]
async fn odoo_can_log_calls_as_done_activities_once_each_through_lost_answers() {
    let (crms, engine) = start().await;
    let c = crms.od.credentials(&crms.od_url);
    let (status, answer) = post(
        &engine,
        "/crm/odoo/connect",
        &json!({"workspace": "acme", "url": crms.od_url, "database": c["database"],
                "login": c["login"], "api_key": c["api_key"], "log_activity": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let email: String = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar(
            "SELECT lower(email) FROM contacts WHERE provider = 'odoo' AND NOT deleted
               AND email IS NOT NULL ORDER BY 1 LIMIT 1",
        )
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
    })
    .await
    .expect("Odoo contacts are projected");
    // A third of the answers are lost after Odoo acted: an activity made but not
    // known, or marked done without our knowing.
    crms.od.faults().set("lost=0.3,hang=200ms".parse().unwrap());
    let calls = 6;
    for n in 0..calls {
        let mut call = outcome(&email, n);
        call["provider"] = json!("odoo");
        assert_eq!(
            post(&engine, &format!("/crm/calls/a-{n}/push-to-crm"), &call)
                .await
                .0,
            202
        );
    }
    let sent = eventually(Duration::from_secs(90), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_call_pushes WHERE call_id LIKE 'a-%' AND state = 'sent'",
        )
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        (n == calls as i64).then_some(())
    })
    .await;
    crms.od.faults().set(Default::default());
    assert!(sent.is_some(), "every call is logged");
    let found = records_by_key(&crms);
    let open: Vec<String> = crms
        .od
        .column("mail.activity", "summary")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    let bodies: Vec<String> = crms
        .od
        .column("mail.message", "body")
        .iter()
        .filter_map(|b| b.as_str().map(str::to_owned))
        .collect();
    for n in 0..calls {
        let key = crmsync_ingest::calls::push_key(
            "acme",
            &format!("a-{n}"),
            crmsync_schema::Provider::Odoo,
        );
        assert_eq!(found.get(&key), Some(&1), "a-{n} logged once");
        assert!(
            !open.iter().any(|s| s.contains(&key)),
            "a-{n}: no activity left open"
        );
        let body = bodies.iter().find(|b| b.contains(&key)).unwrap();
        assert!(body.contains("done") && body.contains("Feedback"), "{body}");
        assert!(
            !body.contains("&lt;"),
            "the feedback is text, not markup: {body}"
        );
    }
    common::events::assert_contract(&engine.js, &engine.topology).await;
    engine.stop().await;
}

#[tokio::test]
async fn the_providers_say_whether_they_can_be_connected_and_what_is_missing() {
    let (_crms, engine) = start().await;
    let (anonymous, _) = common::get_json(&engine, "/crm/providers", None).await;
    assert_eq!(anonymous, 401);
    let (status, listed) = get(&engine, "/crm/providers").await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hubspot", "zoho", "odoo"]);
    for p in listed["providers"].as_array().unwrap() {
        assert_eq!(p["ready"], json!(true), "{p}");
        assert_eq!(p["missing"], json!([]), "{p}");
    }
    assert_eq!(
        listed["providers"][0]["webhook_url"],
        json!(engine.url("/crm/webhooks/hubspot"))
    );
    engine.stop().await;

    // Without an encryption key or OAuth apps, nothing can be connected, and the
    // answer says which variables are missing.
    let bare = TestEngine::start(&[("CRM_API_TOKEN", API_TOKEN)]).await;
    let (status, listed) = get(&bare, "/crm/providers").await;
    assert_eq!(status, 200, "{listed}");
    let hubspot = &listed["providers"][0];
    assert_eq!(hubspot["ready"], json!(false));
    let missing: Vec<&str> = hubspot["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(missing.contains(&"ENCRYPTION_KEY"), "{missing:?}");
    assert!(missing.contains(&"CRM_HUBSPOT_CLIENT_ID"), "{missing:?}");
    assert_eq!(listed["providers"][2]["missing"], json!(["ENCRYPTION_KEY"]));
    bare.stop().await;
}

#[tokio::test]
async fn a_push_refused_for_its_token_refreshes_it_and_is_sent() {
    let crms = start_crms(5).await;
    // No polls to refresh the token first: the push must.
    let env = engine_env(&crms, &[("CRM_POLL_INTERVAL_SECS", "3600")]).await;
    let engine = TestEngine::start_env(crmsync_engine::Role::All, &env).await;
    oauth_connect(&engine, "hubspot").await;
    oauth_connect(&engine, "zoho").await;
    // Both CRMs stop taking the access tokens long before their stored expiry.
    crms.hs.expire_access_tokens();
    crms.zs.expire_access_tokens();
    let hubspot_contact = crms.hs.snapshot("contacts").into_keys().next().unwrap();
    let zoho_contact = crms.zs.records("Contacts")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (provider, contact) in [
        ("hubspot", hubspot_contact.to_string()),
        ("zoho", zoho_contact),
    ] {
        let call = format!("refused-{provider}");
        let mut body = outcome("nobody@example.com", 1);
        body["contact"] = json!({"crm_id": contact});
        body["provider"] = json!(provider);
        let (status, answer) =
            post(&engine, &format!("/crm/calls/{call}/push-to-crm"), &body).await;
        assert_eq!(status, 202, "{answer}");
        let state = eventually(Duration::from_secs(60), || async {
            let (state, reason) = push_state(&engine, &call).await?;
            (state != "queued").then_some((state, reason))
        })
        .await;
        assert_eq!(
            state.as_ref().map(|(s, _)| s.as_str()),
            Some("sent"),
            "{provider}: {state:?}"
        );
    }
    engine.stop().await;
}

/// The CRM records each provider's push of `call` went to, of `object` (`contacts` or
/// `deals`): HubSpot's associated records, Zoho's `Who_Id` or `What_Id`, the Odoo
/// record (`res.partner` or `crm.lead`) the message was posted on.
fn attached_to(crms: &Crms, key: &str, object: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let zoho_lookup = if object == "deals" {
        "/What_Id/id"
    } else {
        "/Who_Id/id"
    };
    let hs_calls: Vec<u64> = crms
        .hs
        .snapshot("calls")
        .into_iter()
        .filter(|(_, p)| p.get("hs_call_title").is_some_and(|t| t.contains(key)))
        .map(|(id, _)| id)
        .collect();
    let hubspot = crms
        .hs
        .links("calls", object)
        .into_iter()
        .filter(|(call, _)| hs_calls.contains(call))
        .map(|(_, record)| record.to_string())
        .collect();
    let zoho = crms
        .zs
        .records("Calls")
        .iter()
        .filter(|r| r["Subject"].as_str().is_some_and(|s| s.contains(key)))
        .filter_map(|r| {
            r.pointer(zoho_lookup)
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let bodies = crms.od.column("mail.message", "body");
    let models = crms.od.column("mail.message", "model");
    let ids = crms.od.column("mail.message", "res_id");
    let odoo = bodies
        .iter()
        .zip(models.iter().zip(ids.iter()))
        .filter(|(b, _)| b.as_str().is_some_and(|b| b.contains(key)))
        .inspect(|(b, _)| {
            // The note is posted as html, not as text showing its tags.
            let b = b.as_str().unwrap_or_default();
            assert!(b.contains("<b>") && !b.contains("&lt;"), "{b}");
        })
        .map(|(_, (model, id))| format!("{}:{id}", model.as_str().unwrap_or("?")))
        .collect();
    (hubspot, zoho, odoo)
}

/// The id in `provider` among `(provider, remote id)` rows.
fn id_in(rows: &[(String, String)], provider: &str) -> String {
    rows.iter()
        .find(|(p, _)| p == provider)
        .map(|(_, id)| id.clone())
        .unwrap_or_else(|| panic!("no {provider} id in {rows:?}"))
}

/// Waits until every provider's push of `call` is settled, and returns the states.
async fn settled(engine: &TestEngine, call: &str) -> Vec<(String, String, Option<String>)> {
    eventually(Duration::from_secs(120), || async {
        let states: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT provider, state, reason FROM crm_call_pushes WHERE call_id = $1
             ORDER BY provider",
        )
        .bind(call)
        .fetch_all(&engine.pool)
        .await
        .unwrap();
        (states.len() == 3 && states.iter().all(|(_, s, _)| s != "queued")).then_some(states)
    })
    .await
    .unwrap_or_else(|| panic!("{call} settles in every CRM"))
}

#[tokio::test]
async fn contacts_and_deals_named_by_the_apps_own_id_resolve_through_links_earlier_pushes_made() {
    let (crms, engine) = start().await;
    connect_all(&engine, &crms, "acme").await;
    let emails = shared_contacts(&engine).await;
    let key = |call: &str, provider| crmsync_ingest::calls::push_key("acme", call, provider);
    let ids_of = |email: String| {
        let pool = engine.pool.clone();
        async move {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT provider, remote_id FROM contacts
                 WHERE lower(email) = $1 AND NOT deleted ORDER BY provider",
            )
            .bind(email)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };

    // Refused: a deal named by email, an empty app id, a contact named by nothing.
    let mut bad = outcome(&emails[0], 0);
    bad["deal"] = json!({"email": "x@example.com"});
    bad["contact"] = json!({"app_id": ""});
    let (status, refused) = post(&engine, "/crm/calls/l-bad/push-to-crm", &bad).await;
    assert_eq!(status, 400, "{refused}");
    let fields = common::refused_fields(&refused);
    assert_eq!(fields, ["deal", "deal", "contact.app_id"], "{refused}");

    // An app id nothing links yet: each CRM's push fails with the reason.
    let mut unknown = outcome(&emails[0], 1);
    unknown["contact"] = json!({"app_id": "c-42"});
    assert_eq!(
        post(&engine, "/crm/calls/l-0/push-to-crm", &unknown)
            .await
            .0,
        202
    );
    for (provider, state, reason) in settled(&engine, "l-0").await {
        assert_ne!(state, "sent", "{provider}");
        let reason = reason.unwrap_or_default();
        assert!(
            reason.contains("app_id is linked to no live"),
            "{provider}: {reason}"
        );
    }

    // Named by app id and email: each CRM's contact for the email is linked.
    let mut first = outcome(&emails[0], 2);
    first["contact"] = json!({"app_id": "c-42", "email": emails[0]});
    assert_eq!(
        post(&engine, "/crm/calls/l-1/push-to-crm", &first).await.0,
        202
    );
    let states = settled(&engine, "l-1").await;
    assert!(states.iter().all(|(_, s, _)| s == "sent"), "{states:?}");

    // Named by app id alone, as soon as the first push shows as sent: the same
    // contact in each CRM.
    let mut second = outcome(&emails[0], 3);
    second["contact"] = json!({"app_id": "c-42"});
    assert_eq!(
        post(&engine, "/crm/calls/l-2/push-to-crm", &second).await.0,
        202
    );
    let contacts = ids_of(emails[0].clone()).await;
    assert_eq!(contacts.len(), 3, "{contacts:?}");
    let links: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider, crm_id FROM crm_entity_links
         WHERE workspace_id = 'acme' AND entity_type = 'contact' AND app_id = 'c-42'
         ORDER BY provider",
    )
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert_eq!(
        links, contacts,
        "linked in each CRM before the push shows as sent"
    );
    let states = settled(&engine, "l-2").await;
    assert!(states.iter().all(|(_, s, _)| s == "sent"), "{states:?}");
    let id = |provider: &str| id_in(&contacts, provider);
    use crmsync_schema::Provider::{HubSpot, Odoo, Zoho};
    assert_eq!(
        attached_to(&crms, &key("l-2", HubSpot), "contacts").0,
        [id("hubspot")]
    );
    assert_eq!(
        attached_to(&crms, &key("l-2", Zoho), "contacts").1,
        [id("zoho")]
    );
    assert_eq!(
        attached_to(&crms, &key("l-2", Odoo), "contacts").2,
        [format!("res.partner:{}", id("odoo"))]
    );

    // An email beside the app id wins over its link and re-points it (in Zoho here).
    let moved = ids_of(emails[3].clone()).await;
    let moved_zoho = id_in(&moved, "zoho");
    let mut repoint = outcome(&emails[3], 6);
    repoint["contact"] = json!({"app_id": "c-42", "email": emails[3]});
    repoint["provider"] = json!("zoho");
    assert_eq!(
        post(&engine, "/crm/calls/l-6/push-to-crm", &repoint)
            .await
            .0,
        202
    );
    eventually(Duration::from_secs(60), || async {
        (push_state(&engine, "l-6").await?.0 == "sent").then_some(())
    })
    .await
    .expect("l-6 is sent");
    assert_eq!(
        attached_to(&crms, &key("l-6", Zoho), "contacts").1,
        [moved_zoho.as_str()]
    );
    let relinked: String = sqlx::query_scalar(
        "SELECT crm_id FROM crm_entity_links
         WHERE entity_type = 'contact' AND app_id = 'c-42' AND provider = 'zoho'",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(relinked, moved_zoho);

    // HubSpot merges the linked contact with another (into a record of a new id, as
    // HubSpot does): the link follows the merge.
    let other = id_in(&ids_of(emails[1].clone()).await, "hubspot");
    let merged = crms
        .hs
        .merge(
            "contacts",
            other.parse().unwrap(),
            id("hubspot").parse().unwrap(),
        )
        .unwrap();
    let survivor = merged["id"].as_str().unwrap().to_owned();
    assert_ne!(survivor, id("hubspot"));
    eventually(Duration::from_secs(60), || async {
        let merged: Option<String> = sqlx::query_scalar(
            "SELECT merged_into FROM contacts WHERE provider = 'hubspot' AND remote_id = $1",
        )
        .bind(id("hubspot"))
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        merged.filter(|m| *m == survivor)
    })
    .await
    .expect("the merge is projected");
    let mut third = outcome(&emails[0], 4);
    third["contact"] = json!({"app_id": "c-42"});
    third["provider"] = json!("hubspot");
    assert_eq!(
        post(&engine, "/crm/calls/l-3/push-to-crm", &third).await.0,
        202
    );
    eventually(Duration::from_secs(60), || async {
        (push_state(&engine, "l-3").await?.0 == "sent").then_some(())
    })
    .await
    .expect("l-3 is sent");
    assert_eq!(
        attached_to(&crms, &key("l-3", HubSpot), "contacts").0,
        [survivor]
    );

    // A deal named by app id and CRM id in each CRM (a new HubSpot deal, a Zoho deal
    // and an Odoo lead the emulators seeded), then by app id alone in all three at
    // once: each CRM's call goes to its own deal.
    let hubspot_deal = crms.hs.create(
        "deals",
        [("dealname".to_owned(), "Renewal".to_owned())].into(),
    );
    let zoho_deal = crms.zs.records("Deals")[0]["id"]
        .as_str()
        .expect("the Zoho emulator seeds deals")
        .to_owned();
    let odoo_lead = *crms
        .od
        .ids("crm.lead")
        .first()
        .expect("the Odoo emulator seeds leads");
    let deals = [
        (HubSpot, "l-4-hubspot", hubspot_deal.to_string()),
        (Zoho, "l-4-zoho", zoho_deal),
        (Odoo, "l-4-odoo", odoo_lead.to_string()),
    ];
    // Where each provider's call went: (deal, and the contact it names beside it).
    let went_to = |call: &str, provider| {
        let key = key(call, provider);
        let [deals, contacts] = ["deals", "contacts"].map(|object| {
            let (h, z, o) = attached_to(&crms, &key, object);
            match provider {
                HubSpot => h,
                Zoho => z,
                Odoo => o,
            }
        });
        (deals, contacts)
    };
    for (provider, call, deal) in &deals {
        let mut push = outcome(&emails[2], 5);
        push["deal"] = json!({"app_id": "d-7", "crm_id": deal});
        push["provider"] = json!(provider.as_str());
        assert_eq!(
            post(&engine, &format!("/crm/calls/{call}/push-to-crm"), &push)
                .await
                .0,
            202
        );
        eventually(Duration::from_secs(60), || async {
            (push_state(&engine, call).await?.0 == "sent").then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{call} is sent"));
        // The link is recorded before the next push names the deal alone.
        eventually(Duration::from_secs(30), || async {
            sqlx::query_scalar::<_, String>(
                "SELECT crm_id FROM crm_entity_links
                 WHERE entity_type = 'deal' AND app_id = 'd-7' AND provider = $1",
            )
            .bind(provider.as_str())
            .fetch_optional(&engine.pool)
            .await
            .unwrap()
            .filter(|d| d == deal)
        })
        .await
        .unwrap_or_else(|| panic!("the {provider} deal is linked"));
    }
    let mut alone = outcome(&emails[2], 7);
    alone["deal"] = json!({"app_id": "d-7"});
    assert_eq!(
        post(&engine, "/crm/calls/l-5/push-to-crm", &alone).await.0,
        202
    );
    let states = settled(&engine, "l-5").await;
    assert!(states.iter().all(|(_, s, _)| s == "sent"), "{states:?}");
    let contact = ids_of(emails[2].clone()).await;
    for (provider, call, deal) in &deals {
        for call in [*call, "l-5"] {
            let (to_deals, to_contacts) = went_to(call, *provider);
            match provider {
                // Odoo posts the note on the lead instead of the partner.
                Odoo => assert_eq!(to_deals, [format!("crm.lead:{deal}")], "{call}"),
                _ => {
                    assert_eq!(to_deals, [deal.as_str()], "{call} in {provider}");
                    let contact = id_in(&contact, provider.as_str());
                    assert_eq!(to_contacts, [contact], "{call} in {provider}");
                }
            }
        }
    }
    common::events::assert_contract(&engine.js, &engine.topology).await;
    engine.stop().await;
}
