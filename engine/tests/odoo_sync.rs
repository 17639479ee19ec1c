//! Odoo kept in step by polling, against the Odoo emulator over HTTP: connecting with
//! an API key (and every way it can be wrong), then the mutation driver's long
//! transactions that commit late with early stamps, bursts sharing one second,
//! no-op writes and deletes; once polling settles, the projection equals the
//! database.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use common::differences;
use common::hubspot::API_TOKEN;
use crmsync_adapters::odoo::client::OdooClient;
use crmsync_engine::odoo::poller::PollReport;
use crmsync_sandbox::odoo::{Config, OdooVersion};
use crmsync_testkit::eventually;

use common::odoo::start;

#[tokio::test]
async fn connecting_checks_the_key_and_says_what_is_wrong() {
    // Odoo Online's release between majors: its version info starts with text.
    let db = start(
        Config {
            version: OdooVersion::Saas18,
            ..Config::default()
        },
        &[("CRM_POLL_INTERVAL_SECS", "3600")],
    )
    .await;
    let good = db.connect_body();
    let unauthorised = db
        .engine
        .http
        .post(db.engine.url("/crm/odoo/connect"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let cases = [
        ("url", json!("http://127.0.0.1:9"), "no Odoo answers"),
        ("url", json!("ftp://example.com"), "not an http(s) URL"),
        ("database", json!("nope"), "no database \"nope\""),
        (
            "login",
            json!("someone@example.com"),
            "refused the login or API key",
        ),
        ("api_key", json!("wrong"), "refused the login or API key"),
        ("api_key", json!(""), "required: api_key"),
    ];
    for (field, value, says) in cases {
        let mut body = good.clone();
        body[field] = value;
        let (status, answer) = db.post("/crm/odoo/connect", &body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{field}: {message}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_connections")
        .fetch_one(&db.engine.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing is stored for a refused connection");

    let (status, answer) = db.post("/crm/odoo/connect", &good).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], json!("saas~18.2"), "{answer}");
    assert_eq!(
        answer["protocol"],
        json!("json-rpc"),
        "Odoo saas~18.2 has no JSON-2"
    );
    let secrets: Vec<u8> = sqlx::query_scalar("SELECT secrets FROM crm_connections")
        .fetch_one(&db.engine.pool)
        .await
        .unwrap();
    let key = good["api_key"].as_str().unwrap().as_bytes();
    assert!(
        !secrets.windows(key.len()).any(|w| w == key),
        "the key is sealed"
    );
    db.engine.stop().await;
}

#[tokio::test]
async fn a_new_api_key_is_used_once_the_connection_is_made_again() {
    let (db, _) = common::odoo::connected(20, 5, 5).await;
    // The user's key expires (Odoo 17+ keys can), and they make a new one.
    db.odoo.rotate_api_key();
    let acme = json!({"workspace": "acme"});
    let poll = || db.post("/crm/odoo/poll", &acme);
    let (status, refused) = poll().await;
    assert_ne!(status, 200, "the old key is refused: {refused}");
    let (status, answer) = db.post("/crm/odoo/connect", &db.connect_body()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, polled) = poll().await;
    assert_eq!(status, 200, "the new key is used at once: {polled}");
    db.engine.stop().await;
}

/// Canonical columns compared, with the Odoo field each comes from.
const PARTNER: &[(&str, &str)] = &[
    ("name", "name"),
    ("email", "email"),
    ("phone", "phone"),
    ("active", "active"),
];
const LEAD: &[(&str, &str)] = &[
    ("name", "name"),
    ("expected_revenue", "amount"),
    ("active", "active"),
    ("partner_id", "contact_id"),
];

type Records = BTreeMap<String, BTreeMap<String, Value>>;

/// A compared column's value: `active` as the boolean it is, any other `false` (Odoo's
/// "empty") as null.
fn compared(column: &str, v: Option<&Value>) -> Value {
    match v {
        Some(Value::Bool(b)) if column == "active" => Value::Bool(*b),
        _ => plain(v),
    }
}

fn plain(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::Number(n)) => json!(n.as_f64()),
        // A many2one: its id.
        Some(Value::Array(pair)) if pair.len() == 2 => plain(pair.first()),
        Some(other) => other.clone(),
    }
}

async fn odoo_state(client: &OdooClient, model: &str, columns: &[(&str, &str)]) -> Records {
    let fields: Vec<&str> = columns.iter().map(|(f, _)| *f).collect();
    client
        .search_read(model, json!([]), &fields, "id asc", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let row = columns
                .iter()
                .map(|(f, c)| ((*c).to_owned(), compared(c, r.get(*f))))
                .collect();
            (r["id"].to_string(), row)
        })
        .collect()
}

async fn projected(pool: &sqlx::PgPool, tables: &[&str], columns: &[(&str, &str)]) -> Records {
    let mut out = Records::new();
    for table in tables {
        let rows: Vec<(String, Value)> = sqlx::query_as(&format!(
            "SELECT remote_id, fields FROM {table} WHERE provider = 'odoo' AND NOT deleted"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        for (id, fields) in rows {
            let row = columns
                .iter()
                .map(|(_, c)| ((*c).to_owned(), compared(c, fields.get(*c))))
                .collect();
            assert!(
                out.insert(id.clone(), row).is_none(),
                "{id} is live in two tables"
            );
        }
    }
    out
}

#[tokio::test]
async fn polling_loses_nothing_to_late_commits_shared_seconds_no_op_writes_or_deletes() {
    let db = start(
        Config {
            contacts: 1_500,
            companies: 100,
            deals: 300,
            ..Config::default()
        },
        &[
            ("CRM_POLL_INTERVAL_SECS", "1"),
            ("CRM_POLL_LOOKBACK_SECS", "30"),
            ("CRM_SYNC_RPS", "500"),
        ],
    )
    .await;
    let (status, answer) = db.post("/crm/odoo/connect", &db.connect_body()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["protocol"], json!("json-2"));

    // Poll now, by hand: the first poll reads everything.
    let (status, polled) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200, "{polled}");
    assert!(
        polled["report"]["records"].as_u64().unwrap() >= 1_900,
        "{polled}"
    );

    // The colleague works: long transactions, bursts, no-op writes, deletes.
    for _ in 0..60 {
        db.odoo.mutate(5);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..500 {
        if db.odoo.open_driver_transactions() == 0 {
            break;
        }
        db.odoo.mutate(1);
    }
    assert_eq!(db.odoo.open_driver_transactions(), 0);

    let client = db.client().await;
    let mut last = Vec::new();
    for _ in 0..60 {
        let want_partners = odoo_state(&client, "res.partner", PARTNER).await;
        let want_leads = odoo_state(&client, "crm.lead", LEAD).await;
        let have_partners = projected(&db.engine.pool, &["contacts", "companies"], PARTNER).await;
        let have_leads = projected(&db.engine.pool, &["deals"], LEAD).await;
        last = differences(&want_partners, &have_partners)
            .into_iter()
            .map(|d| format!("partner {d}"))
            .chain(
                differences(&want_leads, &have_leads)
                    .into_iter()
                    .map(|d| format!("lead {d}")),
            )
            .collect();
        if last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        last.is_empty(),
        "{} differences, first: {:?}",
        last.len(),
        &last[..last.len().min(10)]
    );
    let deleted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM contacts WHERE provider = 'odoo' AND deleted")
            .fetch_one(&db.engine.pool)
            .await
            .unwrap();
    assert!(deleted > 0, "the driver's deletes became tombstones");

    // The status tells when it last polled and what it found.
    let status = eventually(Duration::from_secs(5), || async {
        let r = db
            .engine
            .http
            .get(db.engine.url("/crm/odoo/status?workspace=acme"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        (v["last_poll"]["ok"] == json!(true)).then_some(v)
    })
    .await
    .expect("a successful poll");
    assert_eq!(status["scheduler"]["enabled"], json!(true));
    assert!(status["lag_seconds"].as_i64().unwrap() < 60, "{status}");
    assert!(status["last_sweep"].is_string(), "{status}");
    let (code, stopped) = db
        .post("/crm/odoo/scheduler/stop", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(stopped["scheduler"]["enabled"], json!(false));
    let (code, started) = db
        .post(
            "/crm/odoo/scheduler/start",
            &json!({"workspace": "acme", "interval_secs": 300}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(started["scheduler"]["interval_secs"], json!(300));
    let (code, _) = db
        .post("/crm/odoo/poll", &json!({"workspace": "nobody"}))
        .await;
    assert_eq!(code, 404);
    common::assert_replay_matches(&db.engine).await;
    common::events::assert_contract(&db.engine.js, &db.engine.topology).await;
    db.engine.stop().await;
}

/// An Odoo connected to an engine whose own polls keep away (hourly), with an overlap
/// window of 30 s.
async fn connected_with_a_short_overlap() -> common::odoo::Db {
    let db = start(
        Config::default(),
        &[
            ("CRM_POLL_INTERVAL_SECS", "3600"),
            ("CRM_POLL_LOOKBACK_SECS", "30"),
        ],
    )
    .await;
    let (status, answer) = db.post("/crm/odoo/connect", &db.connect_body()).await;
    assert_eq!(status, 200, "{answer}");
    db
}

/// A poll now, with the delete sweep (as `POST /crm/odoo/poll` does) or without it
/// (as four scheduled polls in five are); its report.
async fn poll(db: &common::odoo::Db, sweep: bool) -> PollReport {
    let odoo = db.engine.odoo.as_ref().expect("the engine syncs Odoo");
    odoo.poll("acme", sweep).await.expect("the poll runs")
}

#[tokio::test]
async fn an_update_that_commits_later_than_the_overlap_is_found_by_the_sweep() {
    let db = connected_with_a_short_overlap().await;
    poll(&db, false).await;
    let email_of = |id: String| {
        let pool = db.engine.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT email FROM contacts WHERE provider = 'odoo' AND remote_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
        }
    };
    let id: String = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar(
            "SELECT remote_id FROM contacts WHERE provider = 'odoo' AND NOT deleted
             ORDER BY remote_id LIMIT 1",
        )
        .fetch_optional(&db.engine.pool)
        .await
        .unwrap()
    })
    .await
    .expect("the first poll projects the contacts");

    // A long transaction updates a projected partner; others write a minute later,
    // and a poll moves the cursor well past the update's stamp plus the overlap.
    let mut late = db.odoo.begin_transaction();
    let partner: i64 = id.parse().unwrap();
    late.write(
        "res.partner",
        &[partner],
        json!({"email": "committed.late@example.com"}),
    )
    .unwrap();
    db.odoo.advance_clock(chrono::Duration::seconds(60));
    db.odoo.mutate(20);
    let before = poll(&db, false).await;
    // It commits now, stamped a minute before the newest writes: the next poll's
    // overlap does not reach back to it, but the sweep sees that its write date is
    // later than the one projected.
    late.commit();
    let stamp = db.odoo.stored_write_date("res.partner", partner).unwrap();
    let cursor = before.cursors["res.partner"].expect("a partner cursor");
    assert!(stamp.and_utc() < cursor - chrono::Duration::seconds(30));
    poll(&db, true).await;
    db.odoo.set_clock(None);
    assert_eq!(
        eventually(Duration::from_secs(10), || async {
            email_of(id.clone())
                .await
                .filter(|e| e == "committed.late@example.com")
        })
        .await
        .as_deref(),
        Some("committed.late@example.com"),
        "the late update was found"
    );
    db.engine.stop().await;
}

#[tokio::test]
async fn a_transaction_that_commits_late_with_an_early_stamp_is_found_by_the_overlap() {
    // No sweep: it would find the new record whatever the overlap did.
    let db = connected_with_a_short_overlap().await;
    poll(&db, false).await;

    // A long transaction starts and writes; meanwhile others write ten seconds later
    // and a poll moves the cursor past them.
    let mut late = db.odoo.begin_transaction();
    let id = late
        .create(
            "res.partner",
            json!({"name": "Late Larry", "email": "larry@example.com"}),
        )
        .unwrap();
    db.odoo.advance_clock(chrono::Duration::seconds(10));
    db.odoo.mutate(20);
    poll(&db, false).await;
    // Now it commits, stamped with its start: before the cursor.
    late.commit();
    let stamp = db.odoo.stored_write_date("res.partner", id).unwrap();
    assert!(stamp.and_utc() < db.odoo.now() - chrono::Duration::seconds(9));
    poll(&db, false).await;
    db.odoo.set_clock(None);
    assert_eq!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, String>(
                "SELECT email FROM contacts WHERE provider = 'odoo' AND remote_id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&db.engine.pool)
            .await
            .unwrap()
        })
        .await
        .as_deref(),
        Some("larry@example.com"),
        "the late commit was found"
    );
    db.engine.stop().await;
}
