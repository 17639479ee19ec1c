//! The contacts projector against real JetStream and Postgres.

mod common;

use std::time::Duration;

use chrono::Utc;
use proptest::prelude::*;
use serde_json::{json, Value};

use common::TestEngine;
use crmsync_adapters::hubspot::webhook::parse_batch;
use crmsync_engine::Role;
use crmsync_ingest::publish::publish_all;
use crmsync_sandbox::hubspot::webhooks::{sample_contacts_batch, EventFactory, Signature};
use crmsync_schema::binding;

#[tokio::test]
async fn a_webhook_batch_is_projected_with_its_checkpoint_in_the_same_commit() {
    let engine = TestEngine::start(&[]).await;
    let batch = sample_contacts_batch(62515, Utc::now().timestamp_millis());
    let last = engine.post_events(Signature::V3, &batch).await;
    engine.wait_projected(last).await;

    let rows = common::contact_rows(&engine.pool, "62515").await;
    assert_eq!(rows.len(), 3);
    let ada = &rows[0];
    assert_eq!(ada["remote_id"], "501");
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["first_name"], "Ada");
    assert_eq!(ada["last_name"], "Lovelace");
    assert_eq!(ada["deleted"], false);
    assert_eq!(ada["fields"]["first_name"], "Ada");
    assert!(ada["field_versions"]["first_name"]
        .as_str()
        .unwrap()
        .contains(":hs-"));
    assert_eq!(rows[1]["job_title"], "Mathematician");
    assert_eq!(
        rows[2]["deleted"], true,
        "a deletion is a tombstone, not a removal"
    );

    let (seq, applied): (i64, i64) = sqlx::query_as(
        "SELECT stream_seq, events_applied FROM projection_checkpoints WHERE consumer = 'proj-hubspot'",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(seq as u64, last);
    assert_eq!(applied, 17);

    let metrics = engine.metrics().await;
    assert!(metrics.contains(r#"crm_entities_synced_total{provider="hubspot",entity_type="contact",direction="inbound"} 17"#), "{metrics}");
    assert!(
        metrics.contains("crm_projection_freshness_seconds_count"),
        "{metrics}"
    );
    engine.stop().await;
}

#[tokio::test]
async fn merges_point_losers_at_the_survivor_and_restores_revive() {
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(9);
    let t = 1_700_000_000_000;
    let events = vec![
        f.creation("contact", 1, t),
        f.creation("contact", 2, t),
        f.merge("contact", 1, &[2], 3, t + 10),
        f.deletion("contact", 1, t + 20),
        f.restore("contact", 1, t + 30),
    ];
    let last = engine.post_events(Signature::V3, &events).await;
    engine.wait_projected(last).await;
    let rows = common::contact_rows(&engine.pool, "9").await;
    let by_id = |id: &str| rows.iter().find(|r| r["remote_id"] == id).unwrap().clone();
    assert_eq!(by_id("1")["merged_into"], "3");
    assert_eq!(by_id("2")["merged_into"], "3");
    assert_eq!(by_id("3")["deleted"], false);
    assert_eq!(by_id("1")["deleted"], false, "restored after its deletion");
    engine.stop().await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_max_deliver_and_blocks_nothing() {
    let engine = TestEngine::start(&[("CRM_MAX_DELIVER", "3"), ("CRM_RETRY_BASE_MS", "100")]).await;
    // A valid CloudEvent on a contact subject whose data no mapping can read.
    let mut f = EventFactory::new(5);
    let good = f.property_change("contact", 1, 1_700_000_000_000, "email", "ok@x.y");
    let body = serde_json::to_vec(&vec![good.clone()]).unwrap();
    let received = parse_batch(&body).unwrap();
    let mut poison = received[0].to_raw_event(0).unwrap();
    poison.id = crmsync_schema::RemoteId::parse("66").unwrap();
    poison.event_id = "poison-1".into();
    poison.version = "poison-1".into();
    poison.data = br#"{"not":"a hubspot event"}"#.to_vec();
    let subjects = engine.topology.subjects.clone();
    publish_all(&engine.js, &subjects, &[poison]).await.unwrap();
    let last = engine.post_events(Signature::V3, &[good]).await;
    engine.wait_projected(last).await;
    assert_eq!(
        common::contact_rows(&engine.pool, "5").await[0]["email"],
        "ok@x.y"
    );

    let mut dlq = engine
        .js
        .get_stream(engine.topology.dlq_stream())
        .await
        .unwrap();
    let found = crmsync_testkit::eventually(Duration::from_secs(20), || {
        let dlq = dlq.clone();
        let subject = subjects.dlq("proj-hubspot");
        async move { dlq.get_last_raw_message_by_subject(&subject).await.ok() }
    })
    .await
    .expect("the poison event reaches the DLQ");
    let h = |n: &str| {
        found
            .headers
            .get(n)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(h("Crm-Dlq-Deliveries"), "3");
    assert_eq!(
        h("Crm-Dlq-Subject"),
        subjects.raw(
            crmsync_schema::Provider::HubSpot,
            &crmsync_schema::WorkspaceId::parse("5").unwrap(),
            &crmsync_schema::ObjectType::contact(),
            &crmsync_schema::RemoteId::parse("66").unwrap(),
        )
    );
    assert!(
        h("Crm-Dlq-Reason").contains("not a valid hubspot event"),
        "{}",
        h("Crm-Dlq-Reason")
    );
    assert_eq!(found.payload.as_ref(), br#"{"not":"a hubspot event"}"#);
    let event = binding::from_message(Some(&found.headers), &found.payload).unwrap();
    assert_eq!(
        crmsync_schema::cloudevents::AttributesReader::id(&event),
        "poison-1"
    );
    assert!(dlq.info().await.unwrap().state.messages >= 1);
    let metrics = engine.metrics().await;
    assert!(
        metrics.contains(r#"crm_dead_lettered_total{consumer="proj-hubspot"} 1"#),
        "{metrics}"
    );
    engine.stop().await;
}

/// A small world of contact changes: few ids, fields and times, so that changes
/// collide on rows and fields.
fn change() -> impl Strategy<Value = (u8, u8, u8, u8)> {
    (0u8..3, 0u8..6, 0u8..4, 0u8..3)
}

fn events_of(changes: &[(u8, u8, u8, u8)]) -> Vec<Value> {
    let mut f = EventFactory::new(77);
    let t = 1_700_000_000_000i64;
    changes
        .iter()
        .map(|&(id, kind, time, value)| {
            let id = 100 + u64::from(id);
            let at = t + i64::from(time) * 1000;
            match kind {
                0 => f.creation("contact", id, at),
                1 => f.deletion("contact", id, at),
                2 => f.restore("contact", id, at),
                3 => f.property_change("contact", id, at, "email", &format!("v{value}@x")),
                4 => f.property_change("contact", id, at, "firstname", &format!("n{value}")),
                _ => f.property_change("contact", id, at, "firstname", ""),
            }
        })
        .collect()
}

/// Posts `events` in `order` in batches of `chunk`, then the events at `replays`
/// again as copies with other ids (as a replay past the duplicate window would), and
/// returns the projected rows.
async fn project(events: &[Value], order: &[usize], chunk: usize, replays: &[usize]) -> Vec<Value> {
    let engine = TestEngine::start_role(Role::All, &[("CRM_BATCH_SIZE", "7")]).await;
    let mut last = 0;
    let ordered: Vec<&Value> = order.iter().map(|&i| &events[i]).collect();
    for batch in ordered.chunks(chunk.max(1)) {
        let batch: Vec<Value> = batch.iter().map(|e| (*e).clone()).collect();
        last = last.max(engine.post_events(Signature::V3, &batch).await);
    }
    let copies: Vec<_> = replays
        .iter()
        .map(|&i| {
            let body = serde_json::to_vec(&json!([events[i]])).unwrap();
            let mut raw = parse_batch(&body).unwrap()[0].to_raw_event(0).unwrap();
            raw.version = format!("replay-{i}-{}", raw.version);
            raw
        })
        .collect();
    if !copies.is_empty() {
        let published = publish_all(&engine.js, &engine.topology.subjects, &copies)
            .await
            .unwrap();
        last = last.max(published.last_sequence);
    }
    engine.wait_projected(last).await;
    let rows = common::contact_rows(&engine.pool, "77").await;
    engine.stop().await;
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn any_permutation_with_duplicates_and_redeliveries_yields_identical_rows(
        changes in prop::collection::vec(change(), 1..25),
        seed in any::<u64>(),
        chunk in 1usize..10,
        replay_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let events = events_of(&changes);
        let n = events.len();
        let mut shuffled: Vec<usize> = (0..n).collect();
        let mut x = seed;
        for i in (1..n).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (x >> 33) as usize % (i + 1));
        }
        // Duplicates inside the posted stream too: the first events again at the end.
        shuffled.extend(0..n.min(3));
        let replays: Vec<usize> = replay_picks.iter().map(|p| p.index(n)).collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (straight, permuted) = runtime.block_on(async {
            let straight = project(&events, &(0..n).collect::<Vec<_>>(), 100, &[]).await;
            let permuted = project(&events, &shuffled, chunk, &replays).await;
            (straight, permuted)
        });
        prop_assert!(!straight.is_empty());
        prop_assert_eq!(straight, permuted);
    }
}

#[tokio::test]
async fn a_postgres_outage_holds_events_without_spending_their_deliveries() {
    // MaxDeliver 2 and a 200 ms ack wait: without in-progress acks the held events
    // would run out of deliveries within the outage.
    let engine = TestEngine::start(&[("CRM_MAX_DELIVER", "2"), ("CRM_RETRY_BASE_MS", "200")]).await;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    let mut admin = crmsync_testkit::admin().await;
    let set_read_only =
        |on: bool| format!("ALTER DATABASE \"{db}\" SET default_transaction_read_only = {on}");
    let kick = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()");
    sqlx::query(&set_read_only(true))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&kick).execute(&mut admin).await.unwrap();

    let batch = sample_contacts_batch(62515, Utc::now().timestamp_millis());
    engine.post_events(Signature::V3, &batch).await;
    // A second batch while the first is held: decoded, it waits for its turn in
    // the projector's pipeline, and must be kept in progress too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let batch = sample_contacts_batch(62516, Utc::now().timestamp_millis());
    let last = engine.post_events(Signature::V3, &batch).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(engine
        .metrics()
        .await
        .contains(r#"error_type="transient",operation="project""#));

    sqlx::query(&set_read_only(false))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&kick).execute(&mut admin).await.unwrap();
    engine.wait_projected(last).await;
    for portal in ["62515", "62516"] {
        let rows = common::contact_rows(&engine.pool, portal).await;
        assert_eq!(rows.len(), 3, "portal {portal}");
        assert_eq!(rows[1]["job_title"], "Mathematician");
    }
    let mut dlq = engine
        .js
        .get_stream(engine.topology.dlq_stream())
        .await
        .unwrap();
    // Neither a dead letter nor the server's max-deliveries advisory.
    let held = dlq.info().await.unwrap().state.messages;
    let mut what = Vec::new();
    for seq in 1..=held {
        if let Ok(m) = dlq.get_raw_message(seq).await {
            what.push(format!(
                "{} {}",
                m.subject,
                String::from_utf8_lossy(&m.payload)
            ));
        }
    }
    assert_eq!(held, 0, "nothing was dead-lettered: {what:#?}");
    assert!(!engine.metrics().await.contains("crm_dead_lettered_total{"));
    engine.stop().await;
}

fn field_set() -> impl Strategy<Value = crmsync_schema::FieldSet> {
    let change = (
        prop::sample::select(vec!["email", "first_name", "$deleted"]),
        0i64..4,
        "[a-zA-Z0-9é😀_-]{0,4}",
        proptest::option::of("[a-zA-Zé]{0,3}"),
    );
    prop::collection::vec(change, 0..6).prop_map(|changes| {
        let mut set = crmsync_schema::FieldSet::default();
        for (field, t, id, value) in changes {
            let time = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + t).unwrap();
            let version = crmsync_schema::Version::new(time, &id);
            set.set(
                field,
                value.map(Value::from).unwrap_or(Value::Null),
                &version,
            );
        }
        set
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Postgres merges exactly as Rust does, even in a database whose default
    /// collation (ICU) orders text differently from byte order.
    #[test]
    fn postgres_merges_field_sets_exactly_as_rust_does(pairs in prop::collection::vec((field_set(), field_set()), 1..8)) {
        // One runtime for every case, so the pool outlives each of them.
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap());
        runtime.block_on(async {
            static POOL: tokio::sync::OnceCell<sqlx::PgPool> = tokio::sync::OnceCell::const_new();
            let pool = POOL
                .get_or_init(|| async {
                    let url = crmsync_testkit::fresh_database_with(
                        "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' TEMPLATE template0",
                    )
                    .await;
                    let pool = sqlx::PgPool::connect(&url).await.unwrap();
                    crmsync_projectors::MIGRATOR.run(&pool).await.unwrap();
                    pool
                })
                .await;
            for (a, b) in &pairs {
                let mut expected = a.clone();
                expected.merge(b);
                let (fields, versions): (Value, Value) = sqlx::query_as(
                    "SELECT m.fields, m.versions FROM crm_merge_fields($1, $2, $3, $4) m",
                )
                .bind(serde_json::to_value(&a.fields).unwrap())
                .bind(serde_json::to_value(&a.versions).unwrap())
                .bind(serde_json::to_value(&b.fields).unwrap())
                .bind(serde_json::to_value(&b.versions).unwrap())
                .fetch_one(pool)
                .await
                .unwrap();
                assert_eq!(fields, serde_json::to_value(&expected.fields).unwrap());
                assert_eq!(versions, serde_json::to_value(&expected.versions).unwrap());
            }
        });
    }
}

#[tokio::test]
async fn companies_and_deals_are_projected_into_their_own_tables() {
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(11);
    let t = 1_700_000_000_000;
    let events = vec![
        f.creation("company", 1, t),
        f.property_change("company", 1, t + 1, "name", "Acme"),
        f.property_change("company", 1, t + 1, "domain", "acme.io"),
        f.creation("deal", 2, t),
        f.property_change("deal", 2, t + 1, "dealname", "Renewal"),
        f.property_change("deal", 2, t + 1, "amount", "1200.50"),
        f.property_change("deal", 3, t + 1, "amount", "n/a"),
        f.deletion("company", 1, t + 5),
    ];
    engine.post_events(Signature::V3, &events).await;
    let pool = engine.pool.clone();
    let rows = crmsync_testkit::eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let companies: Vec<(String, Option<String>, Option<String>, bool)> =
                sqlx::query_as("SELECT remote_id, name, domain, deleted FROM companies WHERE workspace_id = '11'")
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            let deals: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT remote_id, name, amount::text FROM deals WHERE workspace_id = '11' ORDER BY remote_id",
            )
            .fetch_all(&pool)
            .await
            .ok()?;
            let done = companies.first().is_some_and(|c| c.3) && deals.len() == 2 && deals[0].2.is_some();
            done.then_some((companies, deals))
        }
    })
    .await
    .expect("companies and deals are projected");
    let (companies, deals) = rows;
    assert_eq!(
        companies,
        [(
            "1".to_owned(),
            Some("Acme".to_owned()),
            Some("acme.io".to_owned()),
            true
        )]
    );
    assert_eq!(
        deals[0],
        (
            "2".to_owned(),
            Some("Renewal".to_owned()),
            Some("1200.50".to_owned())
        )
    );
    assert_eq!(
        deals[1],
        ("3".to_owned(), None, None),
        "an unreadable amount is NULL, not a poison event"
    );
    let metrics = engine.metrics().await;
    assert!(
        metrics.contains(r#"entity_type="deal",direction="inbound""#),
        "{metrics}"
    );
    engine.stop().await;
}

#[tokio::test]
async fn association_changes_are_projected_as_links_in_any_order() {
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(12);
    let t = 1_700_000_000_000;
    let link = |f: &mut EventFactory, at: i64, removed: bool| {
        let mut e = f.creation("contact", 1, at);
        e["subscriptionType"] = json!("contact.associationChange");
        e["associationType"] = json!("CONTACT_TO_COMPANY");
        e["fromObjectId"] = json!(1);
        e["toObjectId"] = json!(9);
        e["associationRemoved"] = json!(removed);
        e
    };
    // Removed last, delivered first: the removal still wins.
    let events = vec![
        link(&mut f, t + 10, true),
        link(&mut f, t, false),
        f.creation("contact", 1, t),
    ];
    engine.post_events(Signature::V3, &events).await;
    let pool = engine.pool.clone();
    let row = crmsync_testkit::eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, String, String, bool)>(
                "SELECT from_type, from_id, to_type, to_id, removed FROM associations WHERE workspace_id = '12'",
            )
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .filter(|r| r.4)
        }
    })
    .await
    .expect("the link is projected");
    assert_eq!(
        row,
        (
            "contact".into(),
            "1".into(),
            "company".into(),
            "9".into(),
            true
        )
    );
    assert!(
        !engine.metrics().await.contains("crm_dead_lettered_total{"),
        "other events are skipped, not poison"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_link_set_marks_the_links_it_does_not_list_removed() {
    use crmsync_adapters::hubspot::snapshot::links_event;
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(13);
    let t = 1_700_000_000_000;
    let mut add = |to: u64| {
        let mut e = f.creation("contact", 1, t);
        e["subscriptionType"] = json!("contact.associationChange");
        e["associationType"] = json!("CONTACT_TO_COMPANY");
        e["fromObjectId"] = json!(1);
        e["toObjectId"] = json!(to);
        e["associationRemoved"] = json!(false);
        e
    };
    let events = vec![add(8), add(9)];
    engine.post_events(Signature::V3, &events).await;
    let portal = crmsync_schema::WorkspaceId::parse("13").unwrap();
    let later = chrono::DateTime::from_timestamp_millis(t + 60_000).unwrap();
    let set = links_event(
        &portal,
        &crmsync_schema::ObjectType::contact(),
        "1",
        "company",
        &["9".to_owned()],
        later,
    )
    .unwrap();
    publish_all(&engine.js, &engine.topology.subjects, &[set])
        .await
        .unwrap();
    let pool = engine.pool.clone();
    let rows = crmsync_testkit::eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, bool)> = sqlx::query_as(
                "SELECT to_id, removed FROM associations WHERE workspace_id = '13' ORDER BY to_id",
            )
            .fetch_all(&pool)
            .await
            .ok()?;
            (rows.len() == 2 && rows[0].1).then_some(rows)
        }
    })
    .await
    .expect("the sweep's verdict is projected");
    assert_eq!(rows, [("8".to_owned(), true), ("9".to_owned(), false)]);
    engine.stop().await;
}

#[tokio::test]
async fn a_merge_ends_the_links_of_the_records_merged_away() {
    let engine = TestEngine::start(&[]).await;
    let mut f = EventFactory::new(14);
    let t = 1_700_000_000_000;
    let link = |f: &mut EventFactory, kind: &str, from: u64, to: u64| {
        let object = kind.split('_').next().unwrap().to_ascii_lowercase();
        let mut e = f.creation(&object, from, t);
        e["subscriptionType"] = json!(format!("{object}.associationChange"));
        e["associationType"] = json!(kind);
        e["fromObjectId"] = json!(from);
        e["toObjectId"] = json!(to);
        e["associationRemoved"] = json!(false);
        e
    };
    // Contacts 1 and 2 merged into 3: their links, either way, go with them; company
    // 9's link to contact 4 stays. HubSpot announces 3's links on their own.
    let mut events = vec![
        link(&mut f, "CONTACT_TO_COMPANY", 1, 9),
        link(&mut f, "COMPANY_TO_CONTACT", 9, 1),
        link(&mut f, "DEAL_TO_CONTACT", 5, 2),
        link(&mut f, "CONTACT_TO_COMPANY", 4, 9),
        link(&mut f, "COMPANY_TO_CONTACT", 9, 4),
    ];
    engine.post_events(Signature::V3, &events).await;
    events.clear();
    events.push(f.merge("contact", 1, &[2], 3, t + 1_000));
    events.push(link(&mut f, "CONTACT_TO_COMPANY", 3, 9));
    engine.post_events(Signature::V3, &events).await;
    let want = vec![
        "company|9|contact|4".to_owned(),
        "contact|3|company|9".to_owned(),
        "contact|4|company|9".to_owned(),
    ];
    let pool = engine.pool.clone();
    let live = crmsync_testkit::eventually(Duration::from_secs(20), || {
        let (pool, want) = (pool.clone(), want.clone());
        async move {
            let live: Vec<String> = sqlx::query_scalar(
                "SELECT remote_id FROM associations
                 WHERE workspace_id = '14' AND NOT removed ORDER BY remote_id",
            )
            .fetch_all(&pool)
            .await
            .ok()?;
            (live == want).then_some(live)
        }
    })
    .await;
    assert_eq!(live, Some(want.clone()), "the links live at the end");
    engine.stop().await;
}

/// A batch that only upserts is written as one statement: the rows of every table and
/// the checkpoint, all of them or none, and the merge rule as in a transaction; none
/// of them when the field mappings moved since the rows were mapped.
#[tokio::test]
async fn one_statement_writes_every_tables_rows_and_the_checkpoint_or_nothing() {
    use std::collections::BTreeMap;

    use crmsync_projectors::tables::{self, RowKey, Table};
    use crmsync_projectors::{checkpoint, MIGRATOR};
    use crmsync_schema::{FieldSet, Provider, RemoteId, Version, WorkspaceId};

    let (_, pool) = crmsync_testkit::migrated_database(&MIGRATOR).await;
    sqlx::query("ALTER TABLE deals ADD CONSTRAINT refused_by_test CHECK (remote_id <> 'refused')")
        .execute(&pool)
        .await
        .unwrap();
    let rows = |id: &str, name: &str, at: i64| {
        let key: RowKey = (
            WorkspaceId::parse("w1").unwrap(),
            Provider::HubSpot,
            RemoteId::parse(id).unwrap(),
        );
        let mut set = FieldSet::default();
        let time = chrono::DateTime::from_timestamp_millis(at).unwrap();
        set.set("name", json!(name), &Version::new(time, &format!("e{at}")));
        BTreeMap::from([(key, set)])
    };
    let advance = |stream_seq| checkpoint::Advance {
        consumer: "proj-test",
        stream: "events",
        stream_seq,
        events: 2,
    };
    let names = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!(
                "SELECT remote_id || '=' || (fields->>'name') FROM {table} ORDER BY remote_id"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    // A contact and a deal, each (id, name, version time), up to stream sequence `seq`.
    let write_at = |contact: (&str, &str, i64), deal: (&str, &str, i64), seq: u64, revision| {
        let tables = [
            (Table::Contacts, rows(contact.0, contact.1, contact.2)),
            (Table::Deals, rows(deal.0, deal.1, deal.2)),
        ];
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            tables::upsert_with_checkpoint(&mut conn, &tables, &advance(seq), revision).await
        }
    };
    let write = |contact, deal, seq| async move {
        let written = write_at(contact, deal, seq, 0).await?;
        assert!(written, "the mappings' revision is still 0");
        Ok::<_, sqlx::Error>(())
    };

    let refused = write(("1", "Ada", 2_000), ("refused", "Big", 2_000), 7)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("refused_by_test"), "{refused}");
    assert!(names("contacts").await.is_empty());
    assert_eq!(
        checkpoint::position(&pool, "proj-test").await.unwrap(),
        None
    );

    write(("1", "Ada", 2_000), ("2", "Big", 2_000), 9)
        .await
        .unwrap();
    assert_eq!(names("contacts").await, ["1=Ada"]);
    assert_eq!(names("deals").await, ["2=Big"]);
    assert_eq!(
        checkpoint::position(&pool, "proj-test").await.unwrap(),
        Some((9, 2))
    );

    // An older value loses, a newer one wins; the checkpoint never moves back.
    write(("1", "Older", 1_000), ("2", "Bigger", 3_000), 8)
        .await
        .unwrap();
    assert_eq!(names("contacts").await, ["1=Ada"]);
    assert_eq!(names("deals").await, ["2=Bigger"]);
    assert_eq!(
        checkpoint::position(&pool, "proj-test").await.unwrap(),
        Some((9, 4))
    );

    // A mapping written since: rows mapped at the old revision are not written, nor
    // is the checkpoint; at the new one they are.
    sqlx::query("UPDATE crm_field_mappings_revision SET revision = revision + 1")
        .execute(&pool)
        .await
        .unwrap();
    let stale = write_at(("3", "Cy", 4_000), ("4", "Huge", 4_000), 10, 0)
        .await
        .unwrap();
    assert!(!stale, "rows mapped at a revision gone by were written");
    assert_eq!(names("contacts").await, ["1=Ada"]);
    assert_eq!(names("deals").await, ["2=Bigger"]);
    assert_eq!(
        checkpoint::position(&pool, "proj-test").await.unwrap(),
        Some((9, 4))
    );
    let current = write_at(("3", "Cy", 4_000), ("4", "Huge", 4_000), 10, 1)
        .await
        .unwrap();
    assert!(current);
    assert_eq!(names("contacts").await, ["1=Ada", "3=Cy"]);
    assert_eq!(names("deals").await, ["2=Bigger", "4=Huge"]);
    assert_eq!(
        checkpoint::position(&pool, "proj-test").await.unwrap(),
        Some((10, 6))
    );
}
