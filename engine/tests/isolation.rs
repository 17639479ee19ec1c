//! One workspace never reads or writes another's data. Two workspaces, `acme` and
//! `globex`, are connected to two Odoo databases whose records share ids (both
//! number their partners from the same start) but not contents; every route that
//! takes a workspace is called for one and checked against the other's data.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use common::{get_json, post_json, url_escape, TestEngine};
use crmsync_engine::replay::{ReplayOptions, Start};
use crmsync_projectors::Table;
use crmsync_sandbox::odoo::{Config, OdooSandbox};
use crmsync_sandbox::server::Running;

struct Tenant {
    name: &'static str,
    odoo: std::sync::Arc<OdooSandbox>,
    _running: Running,
    account: String,
}

async fn connect(engine: &TestEngine, name: &'static str, seed: u64) -> Tenant {
    let config = Config {
        seed,
        contacts: 20,
        companies: 4,
        deals: 4,
        ..Config::default()
    };
    let (odoo, running) = OdooSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let c = odoo.credentials(&running.base_url);
    let (status, answer) = post_json(
        engine,
        "/crm/odoo/connect",
        &json!({"workspace": name, "url": c["base_url"], "database": c["database"],
                "login": c["login"], "api_key": c["api_key"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, polled) = post_json(engine, "/crm/odoo/poll", &json!({"workspace": name})).await;
    assert_eq!(status, 200, "{polled}");
    Tenant {
        name,
        odoo,
        _running: running,
        account: answer["account_id"].as_str().unwrap().to_owned(),
    }
}

/// remote id → email of an account's projected contacts.
async fn emails(engine: &TestEngine, account: &str) -> BTreeMap<String, Option<String>> {
    sqlx::query_as("SELECT remote_id, email FROM contacts WHERE workspace_id = $1")
        .bind(account)
        .fetch_all(&engine.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn outcome(workspace: &str, email: &str) -> Value {
    json!({
        "workspace": workspace,
        "provider": "odoo",
        "contact": {"email": email},
        "started_at": "2026-11-28T10:00:00Z",
        "duration_secs": 42,
        "direction": "outbound",
        "disposition": "connected",
        "summary": "isolation check",
    })
}

/// The state of `call`'s Odoo push in `workspace` once it is settled.
async fn settled(engine: &TestEngine, workspace: &str, call: &str) -> Value {
    crmsync_testkit::eventually(Duration::from_secs(30), || async {
        let (status, answer) = get_json(
            engine,
            &format!("/crm/calls/{call}?workspace={workspace}"),
            Some(API_TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let push = answer["providers"][0].clone();
        (push["state"] != "queued").then_some(push)
    })
    .await
    .expect("the push settles")
}

#[tokio::test]
async fn one_workspace_never_reads_or_writes_anothers_data() {
    let engine = TestEngine::start(&[
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", &crmsync_adapters::Vault::generate().1),
        ("CRM_POLL_INTERVAL_SECS", "3600"),
        ("CRM_SYNC_RPS", "500"),
    ])
    .await;
    let acme = connect(&engine, "acme", 1).await;
    let globex = connect(&engine, "globex", 2).await;
    assert_ne!(acme.account, globex.account);

    // The projection: the same ids in both, each with its own CRM's contents.
    let a = emails(&engine, &acme.account).await;
    let g = emails(&engine, &globex.account).await;
    let shared: Vec<&String> = a.keys().filter(|id| g.contains_key(*id)).collect();
    assert!(
        shared.len() >= 10,
        "the two CRMs share ids: {}",
        shared.len()
    );
    let differing = shared.iter().filter(|id| a[**id] != g[**id]).count();
    assert!(differing >= 10, "and differ in content: {differing}");
    let id = shared
        .iter()
        .find(|id| a[**id].is_some() && a[**id] != g[**id])
        .unwrap()
        .to_string();

    // History of a shared id, for acme's account: acme's data only.
    let (status, history) = get_json(
        &engine,
        &format!(
            "/crm/records/contacts/{id}/history?provider=odoo&workspace={}",
            url_escape(&acme.account)
        ),
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let text = history.to_string();
    assert!(text.contains(a[&id].as_deref().unwrap()), "{text}");
    if let Some(theirs) = g[&id].as_deref() {
        assert!(!text.contains(theirs), "globex's email in acme's history");
    }

    // A push for acme naming globex's contact finds nothing in acme's CRM, and
    // globex's CRM is not touched; acme's own contact gets the call in acme's CRM.
    let theirs_only = g
        .values()
        .flatten()
        .find(|e| !a.values().flatten().any(|m| m == *e))
        .expect("an email only globex has")
        .clone();
    let before = (
        acme.odoo.ids("mail.message").len(),
        globex.odoo.ids("mail.message").len(),
    );
    let (status, answer) = post_json(
        &engine,
        "/crm/calls/iso-1/push-to-crm",
        &outcome("acme", &theirs_only),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let push = settled(&engine, "acme", "iso-1").await;
    assert!(
        push["state"] == "failed" || push["state"] == "dead_lettered",
        "{push}"
    );
    assert!(
        push["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no odoo contact matches")),
        "{push}"
    );
    let (status, answer) = post_json(
        &engine,
        "/crm/calls/iso-2/push-to-crm",
        &outcome("acme", a[&id].as_deref().unwrap()),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let push = settled(&engine, "acme", "iso-2").await;
    assert_eq!(push["state"], "sent", "{push}");
    let after = (
        acme.odoo.ids("mail.message").len(),
        globex.odoo.ids("mail.message").len(),
    );
    assert_eq!(
        after,
        (before.0 + 1, before.1),
        "only acme's CRM got a call"
    );
    // Another workspace cannot read acme's call.
    let (status, _) = get_json(
        &engine,
        "/crm/calls/iso-2?workspace=globex",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(status, 404);

    // A mapping for acme's account re-shapes acme's rows only.
    let (status, answer) = common::put_json(
        &engine,
        &format!(
            "/crm/mappings/odoo/contacts?workspace={}",
            url_escape(&acme.account)
        ),
        &json!({"rules": [{"source": "email", "target": "work_email"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    engine
        .replay(&ReplayOptions {
            tables: vec![Table::Contacts],
            workspace: None,
            start: Start::All,
        })
        .await;
    let mapped = |account: String| {
        let pool = engine.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM contacts WHERE workspace_id = $1 AND fields ? 'work_email'",
            )
            .bind(account)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(mapped(acme.account.clone()).await >= 10);
    assert_eq!(mapped(globex.account.clone()).await, 0);

    // Stopping acme's sync leaves globex's running; the logs of one name only it.
    let (status, answer) =
        post_json(&engine, "/crm/sync/stop", &json!({"workspace": "acme"})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post_json(&engine, "/crm/odoo/poll", &json!({"workspace": "acme"})).await;
    assert_eq!(status, 409);
    let (status, answer) =
        post_json(&engine, "/crm/odoo/poll", &json!({"workspace": "globex"})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, logs) = get_json(&engine, "/crm/sync/logs?workspace=acme", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{logs}");
    let rows = logs["logs"].as_array().expect("a list of log rows");
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["workspace"] == "acme"), "{logs}");

    // Started again, acme polls; globex was never stopped.
    let (status, answer) =
        post_json(&engine, "/crm/sync/start", &json!({"workspace": "acme"})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) =
        post_json(&engine, "/crm/odoo/poll", &json!({"workspace": acme.name})).await;
    assert_eq!(status, 200, "{answer}");
    engine.stop().await;
}
