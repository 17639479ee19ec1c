//! Stream topology on a real JetStream server.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crmsync_engine::topology::{DeliveryPolicy, Topology};
use crmsync_schema::{ObjectType, Provider};

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
        .ensure_consumer(
            &js,
            t.projector_consumer(Provider::HubSpot, &ObjectType::contact()),
        )
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
