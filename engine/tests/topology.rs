//! Stream topology on a real JetStream server.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crmsync_engine::topology::{DeliveryPolicy, Topology};
use crmsync_schema::Provider;

const POLICY: DeliveryPolicy = DeliveryPolicy {
    max_deliver: 4,
    retry_base: Duration::from_secs(10),
    retry_max: Duration::from_secs(60),
};

async fn setup() -> (jetstream::Context, Topology) {
    let js = jetstream::new(crmsync_testkit::nats().await);
    let prefix = crmsync_testkit::unique_name();
    let topology = Topology::new(Some(&prefix), 1, Duration::from_secs(1800), POLICY).unwrap();
    (js, topology)
}

#[tokio::test]
async fn streams_are_created_as_designed_and_a_second_run_changes_nothing() {
    let (js, t) = setup().await;
    let notes = t.ensure(&js).await.unwrap();
    assert_eq!(notes.len(), 4, "{notes:?}");

    let events = js
        .get_stream(t.events_stream())
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;
    assert_eq!(events.retention, stream::RetentionPolicy::Limits);
    assert_eq!(events.storage, stream::StorageType::File);
    assert_eq!(events.duplicate_window, Duration::from_secs(1800));
    assert_eq!(events.max_age, Duration::ZERO);
    assert_eq!(events.subjects, t.subjects.events_wildcards());
    let outbound = js
        .get_stream(t.outbound_stream())
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;
    assert_eq!(outbound.retention, stream::RetentionPolicy::WorkQueue);
    let dlq = js
        .get_stream(t.dlq_stream())
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;
    assert!(dlq.subjects.iter().any(|s| s.contains("MAX_DELIVERIES")));
    js.get_key_value(t.cursor_bucket())
        .await
        .expect("cursor bucket exists");

    assert!(t.ensure(&js).await.unwrap().is_empty(), "idempotent");

    let consumer = t
        .ensure_consumer(&js, t.projector_consumer(Provider::HubSpot))
        .await
        .unwrap();
    let info = consumer.cached_info();
    assert_eq!(info.config.max_deliver, 4);
    assert_eq!(info.config.backoff.len(), 3);
    assert_eq!(
        info.config.ack_policy,
        jetstream::consumer::AckPolicy::Explicit
    );
    for name in [t.events_stream(), t.outbound_stream(), t.dlq_stream()] {
        js.delete_stream(name).await.unwrap();
    }
}

#[tokio::test]
async fn an_existing_stream_with_other_settings_is_updated_where_it_can_be() {
    let (js, t) = setup().await;
    let mut old = t.events_config();
    old.subjects = vec![t.subjects.events_wildcards()[0].clone()];
    old.duplicate_window = Duration::from_secs(120);
    old.storage = stream::StorageType::Memory;
    js.create_stream(old).await.unwrap();

    let notes = t.ensure(&js).await.unwrap();
    let joined = notes.join("\n");
    assert!(joined.contains("cannot be changed in place"), "{joined}");
    assert!(joined.contains("added subjects"), "{joined}");
    assert!(joined.contains("duplicate window"), "{joined}");
    let config = js
        .get_stream(t.events_stream())
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;
    assert_eq!(config.subjects.len(), 3);
    assert_eq!(config.duplicate_window, Duration::from_secs(1800));
    assert_eq!(
        config.storage,
        stream::StorageType::Memory,
        "left as it was"
    );
    for name in [t.events_stream(), t.outbound_stream(), t.dlq_stream()] {
        js.delete_stream(name).await.unwrap();
    }
}

#[tokio::test]
async fn an_events_stream_with_work_queue_retention_stops_start_up() {
    let (js, t) = setup().await;
    let mut wrong = t.events_config();
    wrong.retention = stream::RetentionPolicy::WorkQueue;
    js.create_stream(wrong).await.unwrap();
    let err = t.ensure(&js).await.unwrap_err().to_string();
    assert!(err.contains("retention"), "{err}");
    assert!(err.contains(&t.events_stream()), "{err}");
    js.delete_stream(t.events_stream()).await.unwrap();
}

/// An upgrade from the per-table consumers of earlier versions: the provider's one
/// consumer starts after what all of them had settled, and they are deleted.
#[tokio::test]
async fn the_provider_consumer_takes_over_from_the_per_table_ones() {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let (js, t) = setup().await;
    t.ensure(&js).await.unwrap();
    let root = t.subjects.root().to_owned();
    // Stream sequences 1..=5: contact, company, contact, company, contact.
    for (i, object) in ["contact", "company", "contact", "company", "contact"]
        .iter()
        .enumerate()
    {
        js.publish(format!("{root}.raw.hubspot.ws1.{object}.{i}"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stream = js.get_stream(t.events_stream()).await.unwrap();
    let legacy = |provider: &str, object: &str, filter: &str| pull::Config {
        durable_name: Some(format!("proj-{provider}-{object}")),
        filter_subject: format!("{root}.raw.{provider}.{filter}"),
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    };
    // The links consumer settled everything, the companies consumer its two events,
    // the deals and activities consumers had none to settle; the contacts consumer
    // only the first of its three.
    for (object, filter, acked) in [
        ("contact", "*.contact.*", 1),
        ("company", "*.company.*", 2),
        ("deal", "*.deal.*", 0),
        ("activity", "*.activity.*", 0),
        ("association", ">", 5),
    ] {
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(legacy("hubspot", object, filter))
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(5)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        let mut n = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.unwrap();
            if n < acked {
                msg.double_ack().await.unwrap();
            }
            n += 1;
        }
    }

    let (config, notes) = t
        .ensure_projector_consumer(&js, Provider::HubSpot)
        .await
        .unwrap();
    assert_eq!(
        config.deliver_policy,
        DeliverPolicy::ByStartSequence { start_sequence: 3 },
        "after the contacts consumer's ack floor, the lowest (event 2 is a company's, \
         none of its business): {notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("starts after stream sequence 2")),
        "{notes:?}"
    );
    let info = stream.consumer_info("proj-hubspot").await.unwrap();
    assert_eq!(info.num_pending, 3, "events 3 to 5 are to be projected");
    for object in ["contact", "company", "deal", "activity", "association"] {
        assert!(
            stream
                .consumer_info(format!("proj-hubspot-{object}"))
                .await
                .is_err(),
            "the old {object} consumer is deleted"
        );
    }

    // Started again: the consumer is kept as it is; an old consumer an old worker
    // recreated meanwhile is deleted.
    let _: jetstream::consumer::PullConsumer = stream
        .create_consumer(legacy("hubspot", "contact", "*.contact.*"))
        .await
        .unwrap();
    let (again, notes) = t
        .ensure_projector_consumer(&js, Provider::HubSpot)
        .await
        .unwrap();
    assert_eq!(notes, ["deleted the old consumer proj-hubspot-contact"]);
    assert_eq!(again.deliver_policy, config.deliver_policy);
    assert!(stream.consumer_info("proj-hubspot-contact").await.is_err());

    // A provider without old consumers reads its events from the start.
    let (zoho, notes) = t
        .ensure_projector_consumer(&js, Provider::Zoho)
        .await
        .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(zoho.deliver_policy, DeliverPolicy::All);
    // So does one where an old table's consumer is missing: that table had settled
    // nothing that can be told.
    let _: jetstream::consumer::PullConsumer = stream
        .create_consumer(legacy("odoo", "contact", "*.contact.*"))
        .await
        .unwrap();
    let (odoo, notes) = t
        .ensure_projector_consumer(&js, Provider::Odoo)
        .await
        .unwrap();
    assert_eq!(odoo.deliver_policy, DeliverPolicy::All, "{notes:?}");
    assert!(stream.consumer_info("proj-odoo-contact").await.is_err());
    t.delete(&js).await;
}
