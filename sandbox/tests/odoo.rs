//! The Odoo emulator, pinned to PROVIDERS.md (and to Odoo where it is silent) over
//! real HTTP.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crmsync_sandbox::faults::Faults;
use crmsync_sandbox::odoo::{Config, OdooSandbox, OdooVersion};
use crmsync_sandbox::server::Running;

struct Odoo {
    sb: Arc<OdooSandbox>,
    running: Running,
    http: reqwest::Client,
    db: String,
    key: String,
    uid: i64,
}

async fn odoo(config: Config) -> Odoo {
    let (sb, running) = OdooSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let creds = sb.credentials(&running.base_url);
    Odoo {
        db: creds["database"].as_str().unwrap().to_owned(),
        key: creds["api_key"].as_str().unwrap().to_owned(),
        uid: creds["uid"].as_i64().unwrap(),
        sb,
        running,
        http: reqwest::Client::new(),
    }
}

async fn small() -> Odoo {
    odoo(Config::default()).await
}

/// A whole second (so `write_date = '…'` can match the stored microseconds), later
/// than the seeded records' stamps.
fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2099, 3, 1, h, m, s).unwrap()
}

fn rendered(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn ids_of(records: &Value) -> Vec<i64> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

impl Odoo {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url)
    }

    /// A JSON-RPC call; answers the whole envelope.
    async fn rpc(&self, service: &str, method: &str, args: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "method": "call", "id": 7,
                          "params": {"service": service, "method": method, "args": args}});
        let response = self
            .http
            .post(self.url("/jsonrpc"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "JSON-RPC always answers 200");
        response.json().await.unwrap()
    }

    /// `execute_kw` as the API user: the result, or the error's `data`.
    async fn call(
        &self,
        model: &str,
        method: &str,
        args: Value,
        kwargs: Value,
    ) -> Result<Value, Value> {
        let envelope = self
            .rpc(
                "object",
                "execute_kw",
                json!([self.db, self.uid, self.key, model, method, args, kwargs]),
            )
            .await;
        match envelope.get("error") {
            Some(error) => Err(error["data"].clone()),
            None => Ok(envelope["result"].clone()),
        }
    }

    async fn ok(&self, model: &str, method: &str, args: Value, kwargs: Value) -> Value {
        match self.call(model, method, args, kwargs).await {
            Ok(v) => v,
            Err(e) => panic!("{model}.{method} failed: {e}"),
        }
    }

    async fn search_read(&self, model: &str, domain: Value, kwargs: Value) -> Value {
        self.ok(model, "search_read", json!([domain]), kwargs).await
    }

    async fn create_partner(&self, vals: Value) -> i64 {
        self.ok("res.partner", "create", json!([vals]), json!({}))
            .await
            .as_i64()
            .unwrap()
    }

    /// Every id, archived records included: the only way to see deletes.
    async fn all_ids(&self, model: &str) -> BTreeSet<i64> {
        let ids = self
            .ok(
                model,
                "search",
                json!([[]]),
                json!({"context": {"active_test": false}}),
            )
            .await;
        serde_json::from_value(ids).unwrap()
    }

    async fn json2(&self, model: &str, method: &str, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/json/2/{model}/{method}")))
            .header("Authorization", format!("bearer {key}"))
            .header("X-Odoo-Database", &self.db)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn authenticate_with_the_right_database_login_and_key_answers_the_admin_uid() {
    let o = small().await;
    let login = "admin@example.com";
    let uid = o
        .rpc("common", "authenticate", json!([o.db, login, o.key, {}]))
        .await;
    assert_eq!(uid["result"], json!(2));
    assert_eq!(uid["id"], json!(7));
    let uid = o.rpc("common", "login", json!([o.db, login, o.key])).await;
    assert_eq!(uid["result"], json!(2));
}

#[tokio::test]
async fn authenticate_with_a_wrong_login_or_key_answers_false() {
    let o = small().await;
    for (login, key) in [
        ("admin@example.com", "not-the-key"),
        ("someone@example.com", o.key.as_str()),
    ] {
        let r = o
            .rpc("common", "authenticate", json!([o.db, login, key, {}]))
            .await;
        assert_eq!(r["result"], json!(false), "{login}");
        let r = o.rpc("common", "login", json!([o.db, login, key])).await;
        assert_eq!(r["result"], json!(false), "{login}");
    }
}

#[tokio::test]
async fn authenticate_against_a_database_that_does_not_exist_is_an_error_not_false() {
    let o = small().await;
    let r = o
        .rpc(
            "common",
            "authenticate",
            json!(["nope", "admin@example.com", o.key, {}]),
        )
        .await;
    assert!(r.get("result").is_none());
    assert_eq!(r["error"]["code"], json!(200));
    assert_eq!(r["error"]["data"]["name"], "psycopg2.OperationalError");
    assert!(r["error"]["data"]["message"]
        .as_str()
        .unwrap()
        .contains("database \"nope\" does not exist"));
}

#[tokio::test]
async fn execute_kw_with_a_wrong_key_or_uid_is_access_denied() {
    let o = small().await;
    for (uid, key) in [
        (json!(2), "wrong-key"),
        (json!(6), o.key.as_str()),
        (json!(99), o.key.as_str()),
    ] {
        let r = o
            .rpc(
                "object",
                "execute_kw",
                json!([o.db, uid, key, "res.partner", "search", [[]], {}]),
            )
            .await;
        assert_eq!(r["jsonrpc"], "2.0");
        assert_eq!(r["id"], json!(7));
        let error = &r["error"];
        assert_eq!(error["code"], json!(200));
        assert_eq!(error["message"], "Odoo Server Error");
        let data = &error["data"];
        assert_eq!(data["name"], "odoo.exceptions.AccessDenied", "uid {uid}");
        assert_eq!(data["message"], "Access Denied");
        assert_eq!(data["arguments"], json!(["Access Denied"]));
        assert_eq!(data["context"], json!({}));
        assert!(data["debug"].as_str().unwrap().starts_with("Traceback"));
    }
    let r = o
        .rpc(
            "object",
            "execute_kw",
            json!(["other", 2, o.key, "res.partner", "search", [[]], {}]),
        )
        .await;
    assert_eq!(r["error"]["data"]["name"], "psycopg2.OperationalError");
}

#[tokio::test]
async fn search_read_understands_or_not_and_implicit_and_domains() {
    let o = small().await;
    let alpha = o
        .create_partner(json!({"name": "Domain Alpha", "city": "Oslo"}))
        .await;
    let beta = o
        .create_partner(json!({"name": "Domain Beta", "city": "Oslo", "is_company": true}))
        .await;
    let gamma = o
        .create_partner(json!({"name": "Domain Gamma", "city": "Rome", "parent_id": beta}))
        .await;
    let ours = json!(["name", "=like", "Domain %"]);
    let found = |records: Value| ids_of(&records).into_iter().collect::<BTreeSet<_>>();
    let set = |ids: &[i64]| ids.iter().copied().collect::<BTreeSet<_>>();

    let or = o
        .search_read(
            "res.partner",
            json!([ours, "|", ["city", "=", "Rome"], ["is_company", "=", true]]),
            json!({}),
        )
        .await;
    assert_eq!(found(or), set(&[beta, gamma]));
    let not = o
        .search_read(
            "res.partner",
            json!([ours, "!", ["city", "=", "Oslo"]]),
            json!({}),
        )
        .await;
    assert_eq!(found(not), set(&[gamma]));
    let explicit_and = o
        .search_read(
            "res.partner",
            json!(["&", ours, ["city", "in", ["Oslo"]]]),
            json!({}),
        )
        .await;
    assert_eq!(found(explicit_and), set(&[alpha, beta]));
    let ilike = o
        .search_read(
            "res.partner",
            json!([["name", "ilike", "domain al"]]),
            json!({}),
        )
        .await;
    assert_eq!(found(ilike), set(&[alpha]));
    let path = o
        .search_read(
            "res.partner",
            json!([["parent_id.name", "=", "Domain Beta"]]),
            json!({}),
        )
        .await;
    assert_eq!(found(path), set(&[gamma]));
    let not_equal = o
        .search_read(
            "res.partner",
            json!([ours, ["parent_id", "!=", beta]]),
            json!({}),
        )
        .await;
    assert_eq!(
        found(not_equal),
        set(&[alpha, beta]),
        "!= also matches empty values"
    );
    let empty = o
        .search_read(
            "res.partner",
            json!([ours, ["parent_id", "=", false]]),
            json!({"fields": ["name"]}),
        )
        .await;
    assert_eq!(found(empty.clone()), set(&[alpha, beta]));
    assert_eq!(
        empty[0].as_object().unwrap().len(),
        2,
        "id and the fields asked for"
    );
}

fn next_second(rendered: &str) -> String {
    let t = NaiveDateTime::parse_from_str(rendered, "%Y-%m-%d %H:%M:%S").unwrap();
    (t + Duration::seconds(1))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Pages through `ours` by rendered second, with an id keyset inside each second:
/// the hidden microseconds order records within a second, so a cursor of
/// `(rendered write_date, id)` is only consistent with `order: id` inside a
/// one-second window.
async fn walk_by_second(o: &Odoo, ours: &Value, page_size: usize) -> Vec<i64> {
    let first_of = |from: Option<String>| {
        let mut domain = vec![ours.clone()];
        if let Some(from) = from {
            domain.push(json!(["write_date", ">=", from]));
        }
        o.search_read(
            "res.partner",
            Value::Array(domain),
            json!({"fields": ["write_date"], "order": "write_date asc, id asc", "limit": 1}),
        )
    };
    let mut seen = Vec::new();
    let mut head = first_of(None).await;
    while let Some(first) = head.as_array().unwrap().first() {
        let second = first["write_date"].as_str().unwrap().to_owned();
        let next = next_second(&second);
        let mut last_id = 0;
        loop {
            let domain = json!([
                ours,
                ["write_date", ">=", second],
                ["write_date", "<", next],
                ["id", ">", last_id]
            ]);
            let page = o
                .search_read(
                    "res.partner",
                    domain,
                    json!({"fields": ["id"], "order": "id asc", "limit": page_size}),
                )
                .await;
            let page = ids_of(&page);
            assert!(page.len() <= page_size);
            seen.extend(&page);
            match page.last() {
                Some(last) if page.len() == page_size => last_id = *last,
                _ => break,
            }
        }
        head = first_of(Some(next)).await;
    }
    seen
}

#[tokio::test]
async fn keyset_paging_on_write_date_and_id_visits_every_record_once() {
    let o = small().await;
    let mut created = BTreeSet::new();
    // Two transactions per second, interleaved, so that within a second the
    // microseconds and the ids disagree on the order.
    for (second, count) in [(0, 9), (1, 1), (5, 13)] {
        for i in 0..count {
            let micros = if i % 2 == 0 { 900_000 } else { 100_000 };
            o.sb.set_clock(Some(at(9, 0, second) + Duration::microseconds(micros)));
            let name = format!("Page {second}-{i}");
            created.insert(o.create_partner(json!({ "name": name })).await);
        }
    }
    o.sb.set_clock(None);
    let ours = json!(["name", "=like", "Page %"]);
    let seen = walk_by_second(&o, &ours, 4).await;
    assert_eq!(seen.len(), created.len(), "no record twice");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), created);

    let mut by_offset = Vec::new();
    for offset in (0..).step_by(6) {
        let page = o
            .ok(
                "res.partner",
                "search",
                json!([[ours]]),
                json!({"order": "write_date asc, id asc", "limit": 6, "offset": offset}),
            )
            .await;
        let page: Vec<i64> = serde_json::from_value(page).unwrap();
        if page.is_empty() {
            break;
        }
        by_offset.extend(page);
    }
    assert_eq!(
        by_offset.len(),
        created.len(),
        "offset paging on a total order: each once"
    );
    assert_eq!(by_offset.iter().copied().collect::<BTreeSet<_>>(), created);
    let first_second: Vec<i64> = by_offset[..9].to_vec();
    let mut by_id = first_second.clone();
    by_id.sort();
    assert_ne!(
        first_second, by_id,
        "within a second, hidden microseconds order before ids"
    );
}

#[tokio::test]
async fn create_write_and_unlink_round_trip() {
    let o = small().await;
    let company = o
        .create_partner(json!({"name": "Round Trip Ltd", "is_company": true}))
        .await;
    let ids = o
        .ok(
            "res.partner",
            "create",
            json!([[{"name": "Ann Round", "parent_id": company, "email": "ann@rt.example"},
                                              {"name": "Bob Round"}]]),
            json!({}),
        )
        .await;
    let ids: Vec<i64> = serde_json::from_value(ids).unwrap();
    assert_eq!(ids.len(), 2, "a list of dicts creates a list of ids");
    let ann = ids[0];
    let read = o
        .ok(
            "res.partner",
            "read",
            json!([
                [ann],
                ["name", "parent_id", "display_name", "phone", "is_company"]
            ]),
            json!({}),
        )
        .await;
    let r = &read[0];
    assert_eq!(r["parent_id"], json!([company, "Round Trip Ltd"]));
    assert_eq!(r["display_name"], "Round Trip Ltd, Ann Round");
    assert_eq!(r["phone"], json!(false), "empty values read as false");
    assert_eq!(r["is_company"], json!(false));

    let done = o
        .ok(
            "res.partner",
            "write",
            json!([[ann], {"phone": "+39 02 1234", "function": "Buyer"}]),
            json!({}),
        )
        .await;
    assert_eq!(done, json!(true));
    let read = o
        .ok(
            "res.partner",
            "read",
            json!([[ann], ["phone", "function"]]),
            json!({}),
        )
        .await;
    assert_eq!(read[0]["phone"], "+39 02 1234");
    assert_eq!(read[0]["function"], "Buyer");

    let lead = o
        .ok(
            "crm.lead",
            "create",
            json!([{"name": "Round trip deal", "partner_id": ann, "expected_revenue": 1200}]),
            json!({}),
        )
        .await
        .as_i64()
        .unwrap();
    let read = o
        .ok(
            "crm.lead",
            "read",
            json!([
                [lead],
                [
                    "type",
                    "stage_id",
                    "email_from",
                    "expected_revenue",
                    "partner_id"
                ]
            ]),
            json!({}),
        )
        .await;
    assert_eq!(read[0]["type"], "opportunity");
    assert_eq!(read[0]["stage_id"], json!([1, "New"]));
    assert_eq!(
        read[0]["email_from"], "ann@rt.example",
        "the customer's email by default"
    );
    assert_eq!(read[0]["expected_revenue"], json!(1200.0));

    assert_eq!(
        o.ok("res.partner", "unlink", json!([[ann]]), json!({}))
            .await,
        json!(true)
    );
    let read = o
        .ok(
            "res.partner",
            "read",
            json!([[ann, ids[1]], ["name"]]),
            json!({}),
        )
        .await;
    assert_eq!(
        ids_of(&read),
        vec![ids[1]],
        "a deleted id is left out of read"
    );
    let read = o
        .ok(
            "crm.lead",
            "read",
            json!([[lead], ["partner_id"]]),
            json!({}),
        )
        .await;
    assert_eq!(
        read[0]["partner_id"],
        json!(false),
        "many2one to a deleted record is emptied"
    );
    let e = o
        .call(
            "res.partner",
            "write",
            json!([[ann], {"name": "Ghost"}]),
            json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["name"], "odoo.exceptions.MissingError");
    let e = o
        .call(
            "res.partner",
            "create",
            json!([{"email": "nameless@example.com"}]),
            json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["name"], "odoo.exceptions.ValidationError");
}

#[tokio::test]
async fn a_write_that_changes_nothing_still_bumps_write_date() {
    let o = small().await;
    o.sb.set_clock(Some(at(10, 0, 0)));
    let id = o
        .create_partner(json!({"name": "Still Here", "email": "still@example.com"}))
        .await;
    let before = o
        .ok(
            "res.partner",
            "read",
            json!([[id], ["email", "write_date"]]),
            json!({}),
        )
        .await;
    assert_eq!(before[0]["write_date"], "2099-03-01 10:00:00");
    o.sb.advance_clock(Duration::seconds(42));
    o.ok(
        "res.partner",
        "write",
        json!([[id], {"email": "still@example.com"}]),
        json!({}),
    )
    .await;
    let after = o
        .ok(
            "res.partner",
            "read",
            json!([[id], ["email", "write_date"]]),
            json!({}),
        )
        .await;
    assert_eq!(after[0]["email"], before[0]["email"]);
    assert_eq!(after[0]["write_date"], "2099-03-01 10:00:42");
}

#[tokio::test]
async fn a_long_transaction_commits_late_with_an_early_write_date_that_a_strict_poll_misses() {
    let o = small().await;
    let existing = o.create_partner(json!({"name": "Touched Late"})).await;
    o.sb.set_clock(Some(at(12, 0, 0)));
    let mut tx = o.sb.begin_transaction();
    let late = tx
        .create("res.partner", json!({"name": "Born Late"}))
        .unwrap();
    tx.write(
        "res.partner",
        &[existing],
        json!({"function": "Slow Import"}),
    )
    .unwrap();

    o.sb.set_clock(Some(at(12, 0, 30)));
    let quick = o.create_partner(json!({"name": "Quick One"})).await;
    assert!(
        quick > late,
        "ids are drawn when the transaction runs, not when it commits"
    );
    let invisible = o
        .ok("res.partner", "read", json!([[late], ["name"]]), json!({}))
        .await;
    assert_eq!(invisible, json!([]), "uncommitted rows are invisible");

    let since = "2099-03-01 11:59:00";
    let poll = o
        .search_read(
            "res.partner",
            json!([["write_date", ">", since]]),
            json!({"fields": ["write_date"], "order": "write_date asc, id asc"}),
        )
        .await;
    assert_eq!(ids_of(&poll), vec![quick]);
    let cursor = poll[0]["write_date"].as_str().unwrap().to_owned();
    assert_eq!(cursor, "2099-03-01 12:00:30");

    o.sb.advance_clock(Duration::seconds(5));
    tx.commit();
    let read = o
        .ok(
            "res.partner",
            "read",
            json!([[late, existing], ["write_date", "function"]]),
            json!({}),
        )
        .await;
    assert_eq!(
        read[0]["write_date"], "2099-03-01 12:00:00",
        "stamped with the transaction's start"
    );
    assert_eq!(read[1]["function"], "Slow Import");
    assert_eq!(read[1]["write_date"], "2099-03-01 12:00:00");

    let strict = o
        .search_read(
            "res.partner",
            json!([["write_date", ">", cursor]]),
            json!({"fields": ["id"]}),
        )
        .await;
    assert!(
        !ids_of(&strict).contains(&late),
        "a strict > poll misses the late commit"
    );
    assert!(!ids_of(&strict).contains(&existing));
    let overlap = "2099-03-01 11:59:30"; // cursor minus a 60 s window
    let window = o
        .search_read(
            "res.partner",
            json!([["write_date", ">", overlap]]),
            json!({"fields": ["id"]}),
        )
        .await;
    let window = ids_of(&window);
    assert!(window.contains(&late) && window.contains(&existing) && window.contains(&quick));
}

#[tokio::test]
async fn many_records_share_one_rendered_second_and_keep_their_microseconds() {
    let o = small().await;
    let instant = at(8, 15, 0) + Duration::microseconds(250_000);
    o.sb.set_clock(Some(instant));
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            o.create_partner(json!({"name": format!("Same Second {i}")}))
                .await,
        );
    }
    let second = "2099-03-01 08:15:00";
    let ours = json!(["name", "=like", "Same Second %"]);
    let all = o
        .search_read(
            "res.partner",
            json!([ours]),
            json!({"fields": ["write_date"]}),
        )
        .await;
    assert_eq!(all.as_array().unwrap().len(), 30);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["write_date"] == second));
    assert_eq!(
        o.sb.stored_write_date("res.partner", ids[0]).unwrap(),
        instant.naive_utc(),
        "stored to the microsecond"
    );
    let equal = o
        .search_read(
            "res.partner",
            json!([ours, ["write_date", "=", second]]),
            json!({}),
        )
        .await;
    assert_eq!(
        equal,
        json!([]),
        "the hidden microseconds make = on the rendered second fail"
    );
    let after = o
        .search_read(
            "res.partner",
            json!([ours, ["write_date", ">", second]]),
            json!({}),
        )
        .await;
    assert_eq!(
        after.as_array().unwrap().len(),
        30,
        "> on the rendered second still sees that second"
    );
    let window = o
        .search_read(
            "res.partner",
            json!([
                ours,
                ["write_date", ">=", second],
                ["write_date", "<", "2099-03-01 08:15:01"]
            ]),
            json!({}),
        )
        .await;
    assert_eq!(window.as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn deleted_records_vanish_and_only_a_comparison_of_id_sets_reveals_them() {
    let o = small().await;
    let before = o.all_ids("res.partner").await;
    let victim = *before.last().unwrap();
    o.ok("res.partner", "unlink", json!([[victim]]), json!({}))
        .await;
    let after = o.all_ids("res.partner").await;
    let gone: Vec<i64> = before.difference(&after).copied().collect();
    assert_eq!(gone, vec![victim]);
    let trace = o
        .search_read(
            "res.partner",
            json!([["id", "=", victim]]),
            json!({"context": {"active_test": false}}),
        )
        .await;
    assert_eq!(trace, json!([]), "no tombstone, archived or not");
    assert!(!o.sb.ids("res.partner").contains(&victim));
    let again = o
        .ok("res.partner", "unlink", json!([[victim]]), json!({}))
        .await;
    assert_eq!(again, json!(true), "unlinking a deleted record is a no-op");
}

#[tokio::test]
async fn archived_records_hide_from_search_unless_asked_for() {
    let o = small().await;
    let id = o.create_partner(json!({"name": "Archived Archie"})).await;
    o.ok("res.partner", "action_archive", json!([[id]]), json!({}))
        .await;
    let by_name = json!([["name", "=", "Archived Archie"]]);
    assert_eq!(
        o.search_read("res.partner", by_name.clone(), json!({}))
            .await,
        json!([])
    );
    let with_ctx = o
        .search_read(
            "res.partner",
            by_name,
            json!({"context": {"active_test": false}}),
        )
        .await;
    assert_eq!(ids_of(&with_ctx), vec![id]);
    let explicit = o
        .search_read(
            "res.partner",
            json!([["name", "=", "Archived Archie"], ["active", "=", false]]),
            json!({}),
        )
        .await;
    assert_eq!(ids_of(&explicit), vec![id]);
}

#[tokio::test]
async fn a_done_activity_vanishes_and_leaves_a_message_on_its_record() {
    let o = small().await;
    let lead_model = o
        .ok(
            "ir.model",
            "search",
            json!([[["model", "=", "crm.lead"]]]),
            json!({}),
        )
        .await[0]
        .as_i64()
        .unwrap();
    let lead = o
        .ok("crm.lead", "search", json!([[]]), json!({"limit": 1}))
        .await[0]
        .as_i64()
        .unwrap();
    let call = o
        .ok(
            "mail.activity.type",
            "search",
            json!([[["name", "=", "Call"]]]),
            json!({}),
        )
        .await[0]
        .clone();
    let activity = o
        .ok(
            "mail.activity",
            "create",
            json!([{"res_model_id": lead_model, "res_id": lead, "activity_type_id": call,
                    "summary": "Call back", "date_deadline": "2030-01-01"}]),
            json!({}),
        )
        .await
        .as_i64()
        .unwrap();
    let read = o
        .ok(
            "mail.activity",
            "read",
            json!([
                [activity],
                ["res_model", "res_id", "state", "activity_type_id"]
            ]),
            json!({}),
        )
        .await;
    assert_eq!(read[0]["res_model"], "crm.lead");
    assert_eq!(read[0]["res_id"], json!(lead));
    assert_eq!(read[0]["state"], "planned");
    assert_eq!(read[0]["activity_type_id"], json!([call, "Call"]));

    let message = o
        .ok(
            "mail.activity",
            "action_feedback",
            json!([[activity]]),
            json!({"feedback": "Reached them"}),
        )
        .await;
    assert!(message.as_i64().is_some());
    let left = o
        .ok(
            "mail.activity",
            "search",
            json!([[["id", "=", activity]]]),
            json!({}),
        )
        .await;
    assert_eq!(left, json!([]), "a done activity is deleted");
    let logged = o
        .search_read(
            "mail.message",
            json!([
                ["model", "=", "crm.lead"],
                ["res_id", "=", lead],
                ["id", "=", message]
            ]),
            json!({"fields": ["body", "subtype_id"]}),
        )
        .await;
    assert!(logged[0]["body"].as_str().unwrap().contains("Reached them"));
    assert_eq!(logged[0]["subtype_id"], json!([3, "Activities"]));

    let orphan = o
        .call(
            "mail.activity",
            "create",
            json!([{"res_model": "crm.lead", "res_id": lead}]),
            json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        orphan["name"], "odoo.exceptions.ValidationError",
        "res_model_id is required"
    );
}

#[tokio::test]
async fn message_post_logs_a_note_readable_through_mail_message() {
    let o = small().await;
    o.sb.set_clock(Some(at(14, 30, 0)));
    let partner = o.create_partner(json!({"name": "Chatty Cathy"})).await;
    let id = o
        .ok("res.partner", "message_post", json!([[partner]]),
            json!({"body": "Called, no answer <3", "message_type": "comment", "subtype_xmlid": "mail.mt_note"}))
        .await;
    let id = id.as_i64().expect("message_post answers the message id");
    let messages = o
        .search_read("mail.message", json!([["model", "=", "res.partner"], ["res_id", "=", partner]]),
                     json!({"fields": ["body", "date", "message_type", "subtype_id", "author_id", "record_name"]}))
        .await;
    assert_eq!(ids_of(&messages), vec![id]);
    let m = &messages[0];
    assert_eq!(
        m["body"], "<p>Called, no answer &lt;3</p>",
        "a str body is escaped text"
    );
    assert_eq!(m["date"], "2099-03-01 14:30:00");
    assert_eq!(m["message_type"], "comment");
    assert_eq!(m["subtype_id"], json!([2, "Note"]));
    assert_eq!(m["author_id"], json!([3, "Administrator"]));
    assert_eq!(m["record_name"], "Chatty Cathy");

    let several = o
        .call(
            "res.partner",
            "message_post",
            json!([[partner, 1]]),
            json!({"body": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(several["name"], "builtins.ValueError");
    let not_thread = o
        .call(
            "crm.stage",
            "message_post",
            json!([[1]]),
            json!({"body": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(not_thread["name"], "builtins.AttributeError");
}

#[tokio::test]
async fn fields_get_describes_types_labels_and_relations() {
    let o = small().await;
    let fields = o
        .ok(
            "res.partner",
            "fields_get",
            json!([]),
            json!({"attributes": ["string", "type", "required", "relation"]}),
        )
        .await;
    assert_eq!(
        fields["parent_id"],
        json!({"string": "Related Company", "type": "many2one", "required": false, "relation": "res.partner"})
    );
    assert_eq!(fields["is_company"]["type"], "boolean");
    assert_eq!(fields["write_date"]["type"], "datetime");
    assert!(
        fields["name"].get("readonly").is_none(),
        "only the attributes asked for"
    );
    let lead = o
        .ok(
            "crm.lead",
            "fields_get",
            json!([["stage_id", "name", "type"]]),
            json!({}),
        )
        .await;
    assert_eq!(lead.as_object().unwrap().len(), 3);
    assert_eq!(lead["stage_id"]["relation"], "crm.stage");
    assert_eq!(lead["name"]["required"], json!(true));
    assert_eq!(
        lead["type"]["selection"],
        json!([["lead", "Lead"], ["opportunity", "Opportunity"]])
    );
}

#[tokio::test]
async fn version_info_answers_17_saas_18_or_19() {
    for (version, text, version_info) in [
        (OdooVersion::V17, "17.0", json!([17, 0, 0, "final", 0, ""])),
        (
            OdooVersion::Saas18,
            "saas~18.2",
            json!(["saas~18", 2, 0, "final", 0, "e"]),
        ),
        (OdooVersion::V19, "19.0", json!([19, 0, 0, "final", 0, ""])),
    ] {
        let o = odoo(Config {
            version,
            ..Config::default()
        })
        .await;
        let posted: Value = o
            .http
            .post(o.url("/web/webclient/version_info"))
            .json(&json!({"jsonrpc": "2.0", "method": "call", "params": {}, "id": 3}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(posted["id"], json!(3));
        let info = &posted["result"];
        assert_eq!(info["server_version"], text);
        assert_eq!(info["server_serie"], text);
        assert_eq!(info["server_version_info"], version_info);
        assert_eq!(info["protocol_version"], json!(1));
        let got: Value = o
            .http
            .get(o.url("/web/webclient/version_info"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(&got["result"], info);
        let common = o.rpc("common", "version", json!([])).await;
        assert_eq!(&common["result"], info);
        let web: Value = o
            .http
            .get(o.url("/web/version"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(web["version"], text);
        assert_eq!(
            o.sb.credentials("http://x")["json2"],
            json!(version == OdooVersion::V19)
        );
    }
}

#[tokio::test]
async fn json2_answers_with_a_bearer_key_and_refuses_a_bad_one() {
    let o = small().await;
    let r = o
        .json2("res.partner", "search_read", &o.key,
               json!({"domain": [["is_company", "=", true]], "fields": ["name"], "limit": 3, "order": "id asc", "context": {"lang": "en_US"}}))
        .await;
    assert_eq!(r.status(), 200);
    let companies: Value = r.json().await.unwrap();
    assert_eq!(companies.as_array().unwrap().len(), 3);
    assert_eq!(companies[0]["name"], "YourCompany");

    let r = o
        .json2(
            "res.partner",
            "create",
            &o.key,
            json!({"vals_list": [{"name": "Json Two"}]}),
        )
        .await;
    let ids: Vec<i64> = r.json().await.unwrap();
    assert_eq!(ids.len(), 1, "create answers a list of ids");
    let r = o
        .json2(
            "res.partner",
            "write",
            &o.key,
            json!({"ids": ids, "vals": {"city": "Gent"}}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!(true));
    let r = o
        .json2(
            "res.partner",
            "read",
            &o.key,
            json!({"ids": ids, "fields": ["city"]}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()[0]["city"], "Gent");
    let r = o
        .json2(
            "res.partner",
            "search_count",
            &o.key,
            json!({"domain": [["city", "=", "Gent"]]}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!(1));
    let r = o.json2("res.users", "context_get", &o.key, json!({})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["uid"], json!(2));

    let r = o
        .json2(
            "res.partner",
            "search_read",
            "bad-key",
            json!({"domain": []}),
        )
        .await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], "werkzeug.exceptions.Unauthorized");
    assert_eq!(body["message"], "Invalid apikey");
    assert_eq!(body["arguments"], json!(["Invalid apikey", 401]));
    assert!(body.get("context").is_some() && body.get("debug").is_some());

    for (model, method, body, status, name) in [
        (
            "res.nothing",
            "search",
            json!({"domain": []}),
            404,
            "werkzeug.exceptions.NotFound",
        ),
        (
            "res.partner",
            "frobnicate",
            json!({}),
            404,
            "werkzeug.exceptions.NotFound",
        ),
        (
            "res.partner",
            "search",
            json!({"domain": [], "colour": "red"}),
            422,
            "werkzeug.exceptions.UnprocessableEntity",
        ),
        (
            "res.partner",
            "search",
            json!({"ids": [1], "domain": []}),
            422,
            "werkzeug.exceptions.UnprocessableEntity",
        ),
        (
            "crm.lead",
            "create",
            json!({"vals_list": [{"type": "lead"}]}),
            422,
            "odoo.exceptions.ValidationError",
        ),
        (
            "res.partner",
            "write",
            json!({"ids": [999999], "vals": {"name": "x"}}),
            404,
            "odoo.exceptions.MissingError",
        ),
        (
            "res.partner",
            "search",
            json!({"domain": [["nope", "=", 1]]}),
            500,
            "builtins.ValueError",
        ),
    ] {
        let r = o.json2(model, method, &o.key, body).await;
        assert_eq!(r.status(), status, "{model}.{method}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["name"], name, "{model}.{method}: {e}");
    }
    let wrong_db = o
        .http
        .post(o.url("/json/2/res.partner/search"))
        .header("Authorization", format!("bearer {}", o.key))
        .header("X-Odoo-Database", "elsewhere")
        .json(&json!({"domain": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_db.status(), 404);
}

#[tokio::test]
async fn json2_does_not_exist_on_odoo_17() {
    let o = odoo(Config {
        version: OdooVersion::V17,
        ..Config::default()
    })
    .await;
    let r = o
        .json2("res.partner", "search_read", &o.key, json!({"domain": []}))
        .await;
    assert_eq!(r.status(), 404);
    let uid = o
        .rpc(
            "common",
            "authenticate",
            json!([o.db, "admin@example.com", o.key, {}]),
        )
        .await;
    assert_eq!(uid["result"], json!(2), "JSON-RPC still works");
}

#[tokio::test]
async fn unknown_models_methods_and_fields_answer_odoo_errors() {
    for (version, method_message) in [
        (
            OdooVersion::V17,
            "The method 'frobnicate' does not exist on the model 'res.partner'",
        ),
        (
            OdooVersion::V19,
            "The method 'res.partner.frobnicate' does not exist",
        ),
    ] {
        let o = odoo(Config {
            version,
            ..Config::default()
        })
        .await;
        let e = o
            .call("res.nothing", "search", json!([[]]), json!({}))
            .await
            .unwrap_err();
        assert_eq!(e["name"], "odoo.exceptions.UserError");
        assert_eq!(e["message"], "Object res.nothing doesn't exist");
        let e = o
            .call("res.partner", "frobnicate", json!([]), json!({}))
            .await
            .unwrap_err();
        assert_eq!(e["name"], "builtins.AttributeError");
        assert_eq!(e["message"], method_message);
        let e = o
            .call("res.partner", "_private", json!([]), json!({}))
            .await
            .unwrap_err();
        assert_eq!(e["name"], "odoo.exceptions.AccessError");
        let e = o
            .call(
                "res.partner",
                "search_read",
                json!([[["nope", "=", 1]]]),
                json!({}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["name"], "builtins.ValueError");
        assert_eq!(
            e["message"],
            "Invalid field res.partner.nope in leaf ('nope', '=', 1)"
        );
        let e = o
            .call(
                "res.partner",
                "search_read",
                json!([[]]),
                json!({"fields": ["nope"]}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["message"], "Invalid field 'nope' on model 'res.partner'");
        let e = o
            .call("res.partner", "write", json!([[1], {"nope": 1}]), json!({}))
            .await
            .unwrap_err();
        assert_eq!(e["name"], "builtins.ValueError");
        let e = o
            .call(
                "res.partner",
                "search",
                json!([[["name", "~", "x"]]]),
                json!({}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["message"], "Invalid leaf ('name', '~', 'x')");
        let e = o
            .call(
                "res.partner",
                "search",
                json!([["|", ["name", "=", "x"]]]),
                json!({}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["name"], "builtins.ValueError");
        let e = o
            .call(
                "res.partner",
                "search",
                json!([[]]),
                json!({"order": "nope asc"}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["name"], "builtins.ValueError");
        let e = o
            .call(
                "res.partner",
                "search",
                json!([[]]),
                json!({"colour": "red"}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["name"], "builtins.TypeError");
        let e = o
            .call("res.users", "write", json!([[2], {"name": "x"}]), json!({}))
            .await
            .unwrap_err();
        assert_eq!(e["name"], "odoo.exceptions.AccessError");
    }
}

#[tokio::test]
async fn partners_have_a_mobile_on_odoo_17_and_none_on_odoo_19() {
    let v17 = odoo(Config {
        version: OdooVersion::V17,
        ..Config::default()
    })
    .await;
    let read = v17
        .search_read(
            "res.partner",
            json!([["id", ">=", 5]]),
            json!({"fields": ["mobile"]}),
        )
        .await;
    assert!(read
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["mobile"].is_string()));
    let v19 = small().await;
    let e = v19
        .call(
            "res.partner",
            "search_read",
            json!([[]]),
            json!({"fields": ["mobile"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e["message"],
        "Invalid field 'mobile' on model 'res.partner'"
    );
    let fields = v19
        .ok(
            "res.partner",
            "fields_get",
            json!([]),
            json!({"attributes": ["type"]}),
        )
        .await;
    assert!(fields.get("mobile").is_none() && fields.get("phone").is_some());
}

#[tokio::test]
async fn spawned_mutations_run_until_the_sandbox_is_dropped() {
    let sb = OdooSandbox::new(Config::default());
    let messages = sb.ids("mail.message").len();
    let partners = sb.ids("res.partner");
    let driver = sb.spawn_mutations(1000.0);
    while sb.ids("mail.message").len() == messages && sb.ids("res.partner") == partners {
        tokio::task::yield_now().await;
    }
    drop(sb);
    driver
        .await
        .expect("the driver stops on its own once the sandbox is gone");
}

#[tokio::test]
async fn deleting_a_company_empties_its_contacts_parent_without_bumping_their_write_date() {
    let o = small().await;
    o.sb.set_clock(Some(at(7, 0, 0)));
    let company = o
        .create_partner(json!({"name": "Gone Corp", "is_company": true}))
        .await;
    let employee = o
        .create_partner(json!({"name": "Left Behind", "parent_id": company}))
        .await;
    o.sb.set_clock(Some(at(7, 5, 0)));
    o.ok("res.partner", "unlink", json!([[company]]), json!({}))
        .await;
    let read = o
        .ok(
            "res.partner",
            "read",
            json!([[employee], ["parent_id", "write_date"]]),
            json!({}),
        )
        .await;
    assert_eq!(read[0]["parent_id"], json!(false));
    assert_eq!(read[0]["write_date"], "2099-03-01 07:00:00");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_database() {
    let fields = json!([
        "name",
        "email",
        "phone",
        "function",
        "parent_id",
        "city",
        "website",
        "is_company",
        "active"
    ]);
    let lead_fields = json!([
        "name",
        "type",
        "stage_id",
        "expected_revenue",
        "probability",
        "partner_id",
        "email_from",
        "active"
    ]);
    let dump = |o: Odoo| {
        let (fields, lead_fields) = (fields.clone(), lead_fields.clone());
        async move {
            let ctx = json!({"context": {"active_test": false}, "order": "id asc"});
            let mut kw = ctx.clone();
            kw["fields"] = fields;
            let partners = o.search_read("res.partner", json!([]), kw).await;
            let mut kw = ctx.clone();
            kw["fields"] = lead_fields;
            let leads = o.search_read("crm.lead", json!([]), kw).await;
            let mut kw = ctx;
            kw["fields"] = json!(["res_id", "summary", "activity_type_id"]);
            let activities = o.search_read("mail.activity", json!([]), kw).await;
            (partners, leads, activities)
        }
    };
    let a = dump(
        odoo(Config {
            seed: 7,
            ..Config::default()
        })
        .await,
    )
    .await;
    let b = dump(
        odoo(Config {
            seed: 7,
            ..Config::default()
        })
        .await,
    )
    .await;
    let c = dump(
        odoo(Config {
            seed: 8,
            ..Config::default()
        })
        .await,
    )
    .await;
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
    assert_eq!(
        a.0.as_array().unwrap().len(),
        4 + 10 + 50,
        "Odoo's own partners, companies, contacts"
    );
    assert_eq!(a.1.as_array().unwrap().len(), 20);
    assert!(!a.2.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_mutation_driver_makes_the_same_changes_for_the_same_seed() {
    let a = OdooSandbox::new(Config::default());
    let b = OdooSandbox::new(Config::default());
    let models = ["res.partner", "crm.lead", "mail.activity", "mail.message"];
    let before: Vec<Vec<i64>> = models.iter().map(|m| a.ids(m)).collect();
    a.mutate(300);
    b.mutate(300);
    let after: Vec<Vec<i64>> = models.iter().map(|m| a.ids(m)).collect();
    assert_eq!(after, models.iter().map(|m| b.ids(m)).collect::<Vec<_>>());
    assert_ne!(before, after, "300 steps change the database");
    assert!(
        after[3].len() > before[3].len(),
        "notes and done activities leave messages"
    );
}

#[tokio::test]
async fn a_strict_poller_of_the_mutation_driver_misses_writes_an_overlap_window_finds() {
    let o = small().await;
    let start = at(6, 0, 0);
    o.sb.set_clock(Some(start));
    let poll = |since: String| {
        o.search_read(
            "res.partner",
            json!([["write_date", ">", since]]),
            json!({"fields": ["write_date"], "context": {"active_test": false}}),
        )
    };
    let pairs = |records: &Value| -> BTreeSet<(i64, String)> {
        records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_i64().unwrap(),
                    r["write_date"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let mut cursor = rendered(start);
    let (mut strict, mut overlap) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..150 {
        o.sb.advance_clock(Duration::seconds(1));
        o.sb.mutate(1);
        let found = pairs(&poll(cursor.clone()).await);
        let window = NaiveDateTime::parse_from_str(&cursor, "%Y-%m-%d %H:%M:%S").unwrap()
            - Duration::seconds(10);
        overlap.extend(pairs(
            &poll(window.format("%Y-%m-%d %H:%M:%S").to_string()).await,
        ));
        if let Some(max) = found.iter().map(|(_, d)| d.clone()).max() {
            cursor = cursor.max(max);
        }
        strict.extend(found);
    }
    while o.sb.open_driver_transactions() > 0 {
        o.sb.advance_clock(Duration::seconds(1));
        o.sb.mutate(1);
        let window = NaiveDateTime::parse_from_str(&cursor, "%Y-%m-%d %H:%M:%S").unwrap()
            - Duration::seconds(10);
        overlap.extend(pairs(
            &poll(window.format("%Y-%m-%d %H:%M:%S").to_string()).await,
        ));
        cursor = rendered(o.sb.now());
    }
    let last: BTreeSet<(i64, String)> = pairs(&poll(rendered(start)).await);
    let missed: Vec<_> = last.difference(&strict).collect();
    assert!(
        !missed.is_empty(),
        "long transactions publish early stamps after the cursor passed them"
    );
    assert!(
        last.is_subset(&overlap),
        "a 10 s overlap window (longer than any transaction) sees every final version"
    );
}

#[tokio::test]
async fn a_storm_answers_429_with_a_plain_body() {
    let o = small().await;
    o.sb.faults().set("storm=1s/1s".parse::<Faults>().unwrap());
    let r = o
        .http
        .post(o.url("/jsonrpc"))
        .json(&json!({"jsonrpc": "2.0", "method": "call", "params": {"service": "common", "method": "version", "args": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r.text().await.unwrap().contains("Too Many Requests"));
    o.sb.faults().set(Faults::default());
    let ok = o.rpc("common", "version", json!([])).await;
    assert_eq!(ok["result"]["server_version"], "19.0");
}

#[tokio::test]
async fn a_hundred_thousand_partners_are_generated() {
    let config = Config {
        contacts: 100_000,
        companies: 1_000,
        deals: 0,
        ..Config::default()
    };
    let o = odoo(config).await;
    assert_eq!(o.sb.ids("res.partner").len(), 4 + 1_000 + 100_000);
    let contacts = o
        .ok(
            "res.partner",
            "search_count",
            json!([[["is_company", "=", false], ["id", ">=", 5]]]),
            json!({}),
        )
        .await;
    assert_eq!(contacts, json!(100_000));
}
