//! Streams, the cursor store and consumers, created idempotently at start-up.
//!
//! - `CRM_EVENTS`: raw, app and result events; limits retention with no limits (the
//!   history is the source of truth), file storage, a duplicate window of at least
//!   15 minutes.
//! - `CRM_OUTBOUND`: commands to providers; work-queue retention.
//! - `CRM_DLQ`: dead letters written by crmsync, and the server's max-deliveries and
//!   terminated advisories for the two streams above, so nothing is only in a log.
//! - KV bucket `crm_cursors`: poll cursors, advanced by compare-and-set.
//!
//! A stream that exists with other settings is brought in line where JetStream allows
//! it (subjects, duplicate window, replicas); what cannot change in place (retention,
//! storage) is explained, and a wrong retention stops start-up because it would lose
//! or keep the wrong events.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, PullConsumer};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, kv};

use crmsync_schema::{Provider, Subjects};

/// Why the topology could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("JetStream: {0}")]
    Nats(String),
    #[error("stream {stream} exists with {field} {have}, crmsync needs {want}; {field} cannot be changed in place: {how}")]
    Immutable {
        stream: String,
        field: &'static str,
        have: String,
        want: String,
        how: &'static str,
    },
}

fn nats_err(e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Nats(e.to_string())
}

/// Names and settings of one installation's streams.
#[derive(Debug, Clone)]
pub struct Topology {
    pub subjects: Subjects,
    name_prefix: String,
    pub replicas: usize,
    pub dedupe_window: Duration,
    pub policy: DeliveryPolicy,
}

/// How consumers retry: MaxDeliver and a BackOff doubling from `retry_base` (which is
/// also the ack wait of a first delivery) up to `retry_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub max_deliver: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl DeliveryPolicy {
    /// One delay per redelivery; JetStream wants fewer than MaxDeliver of them.
    pub fn backoff(&self) -> Vec<Duration> {
        let n = usize::try_from(self.max_deliver.saturating_sub(1))
            .unwrap_or(0)
            .max(1);
        (0..n)
            .map(|i| {
                (self.retry_base * 2u32.saturating_pow(i.min(20) as u32))
                    .min(self.retry_max.max(self.retry_base))
            })
            .collect()
    }
}

impl Topology {
    /// The topology `settings` name (prefix, replicas, dedupe window, delivery).
    pub fn of(settings: &crate::Settings) -> Result<Self, crmsync_schema::subject::SubjectError> {
        Self::new(
            settings.nats_prefix.as_deref(),
            settings.stream_replicas,
            settings.dedupe_window,
            settings.delivery_policy(),
        )
    }

    pub fn new(
        prefix: Option<&str>,
        replicas: usize,
        dedupe_window: Duration,
        policy: DeliveryPolicy,
    ) -> Result<Self, crmsync_schema::subject::SubjectError> {
        let subjects = Subjects::new(prefix)?;
        let name_prefix = match prefix {
            Some(p) if !p.is_empty() => format!("{}_", p.replace('.', "_")),
            _ => String::new(),
        };
        Ok(Self {
            subjects,
            name_prefix,
            replicas,
            dedupe_window,
            policy,
        })
    }

    pub fn events_stream(&self) -> String {
        format!("{}CRM_EVENTS", self.name_prefix)
    }

    pub fn outbound_stream(&self) -> String {
        format!("{}CRM_OUTBOUND", self.name_prefix)
    }

    pub fn dlq_stream(&self) -> String {
        format!("{}CRM_DLQ", self.name_prefix)
    }

    pub fn cursor_bucket(&self) -> String {
        format!("{}crm_cursors", self.name_prefix)
    }

    pub fn events_config(&self) -> stream::Config {
        stream::Config {
            name: self.events_stream(),
            description: Some(
                "crmsync: every CRM, app and result event; the source of truth".into(),
            ),
            subjects: self.subjects.events_wildcards(),
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            duplicate_window: self.dedupe_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn outbound_config(&self) -> stream::Config {
        stream::Config {
            name: self.outbound_stream(),
            description: Some("crmsync: commands to providers, one per message".into()),
            subjects: vec![self.subjects.outbound_wildcard()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: self.dedupe_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn dlq_config(&self) -> stream::Config {
        let mut subjects = vec![self.subjects.dlq_wildcard()];
        for stream in [self.events_stream(), self.outbound_stream()] {
            for advisory in ["MAX_DELIVERIES", "MSG_TERMINATED"] {
                subjects.push(format!("$JS.EVENT.ADVISORY.CONSUMER.{advisory}.{stream}.*"));
            }
        }
        stream::Config {
            name: self.dlq_stream(),
            description: Some("crmsync: dead letters and delivery advisories".into()),
            subjects,
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            duplicate_window: self.dedupe_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Creates or updates the streams and the cursor bucket. Returns what it changed
    /// or could not change, one line each, for the log.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<Vec<String>, TopologyError> {
        let mut notes = Vec::new();
        for want in [
            self.events_config(),
            self.outbound_config(),
            self.dlq_config(),
        ] {
            notes.extend(ensure_stream(js, want).await?);
        }
        let bucket = self.cursor_bucket();
        match js.get_key_value(&bucket).await {
            Ok(_) => {
                // A bucket is a stream: its replicas follow CRM_STREAM_REPLICAS like the
                // other streams' (a bucket made on one node is moved to the cluster).
                let name = format!("KV_{bucket}");
                let mut stream = js
                    .get_stream(&name)
                    .await
                    .map_err(|e| nats_err(format!("reading stream {name}: {e}")))?;
                let mut config = stream
                    .info()
                    .await
                    .map_err(|e| nats_err(format!("reading stream {name}: {e}")))?
                    .config
                    .clone();
                if config.num_replicas != self.replicas {
                    let was = config.num_replicas;
                    config.num_replicas = self.replicas;
                    js.update_stream(config)
                        .await
                        .map_err(|e| nats_err(format!("updating stream {name}: {e}")))?;
                    notes.push(format!(
                        "key-value bucket {bucket}: replicas {was} -> {}",
                        self.replicas
                    ));
                }
            }
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "crmsync: poll cursors per provider, workspace and object".into(),
                    history: 5,
                    storage: StorageType::File,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err(format!("creating key-value bucket {bucket}: {e}")))?;
                notes.push(format!("created key-value bucket {bucket}"));
            }
        }
        Ok(notes)
    }

    /// Deletes the streams and the cursor bucket (benches and tests clean up with it);
    /// what is already gone is let be.
    pub async fn delete(&self, js: &jetstream::Context) {
        for name in [
            self.events_stream(),
            self.outbound_stream(),
            self.dlq_stream(),
            format!("KV_{}", self.cursor_bucket()),
        ] {
            let _ = js.delete_stream(name).await;
        }
    }

    /// The name of a provider's projection consumer, also its checkpoint key.
    pub fn projector_name(provider: Provider) -> String {
        format!("proj-{provider}")
    }

    /// The names of the consumers earlier versions projected with, one per provider
    /// and table (`proj-hubspot-contact`, …, `proj-hubspot-association`).
    pub fn legacy_projector_names(provider: Provider) -> Vec<String> {
        crmsync_projectors::Table::ALL
            .iter()
            .map(|table| format!("proj-{provider}-{}", table.object()))
            .collect()
    }

    /// Creates a provider's projection consumer, or updates the one there is (its
    /// start, which JetStream cannot change, kept); the config to open it with.
    ///
    /// Created where an earlier version's per-table consumers exist, it starts after
    /// the lowest point all of them had settled (every event before it was projected
    /// into every table; those after it, some tables may project again, which the
    /// field versions make harmless); a table whose consumer is missing counts as
    /// having settled nothing. Then, and at every start after (an old worker still
    /// running recreates its consumer), the old consumers are deleted: an upgrade
    /// neither projects the whole history again nor skips an event. Notes for the log.
    pub async fn ensure_projector_consumer(
        &self,
        js: &jetstream::Context,
        provider: Provider,
    ) -> Result<(pull::Config, Vec<String>), TopologyError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let mut config = self.projector_consumer(provider);
        let name = Self::projector_name(provider);
        let stream_name = self.events_stream();
        let mut stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| nats_err(format!("reading stream {stream_name}: {e}")))?;
        let mut notes = Vec::new();
        // Read before the consumers: an old consumer with nothing left to do has
        // settled every event up to here (one published since may not be settled).
        let last = stream
            .info()
            .await
            .map_err(|e| nats_err(format!("reading stream {stream_name}: {e}")))?
            .state
            .last_sequence;
        let legacy_names = Self::legacy_projector_names(provider);
        let mut legacy = Vec::new();
        for old in &legacy_names {
            match stream.consumer_info(&old).await {
                Ok(info) => legacy.push(info),
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
                Err(e) => return Err(nats_err(format!("reading consumer {old}: {e}"))),
            }
        }
        match stream.consumer_info(&name).await {
            Ok(existing) => config.deliver_policy = existing.config.deliver_policy,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                if !legacy.is_empty() {
                    let missing = legacy.len() < legacy_names.len();
                    let settled = legacy
                        .iter()
                        .map(|info| {
                            let done = info.num_pending == 0 && info.num_ack_pending == 0;
                            if done {
                                last.max(info.ack_floor.stream_sequence)
                            } else {
                                info.ack_floor.stream_sequence
                            }
                        })
                        .min()
                        .filter(|_| !missing)
                        .unwrap_or(0);
                    if settled > 0 {
                        config.deliver_policy = consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: settled + 1,
                        };
                    }
                    notes.push(format!(
                        "consumer {name} takes over from {} and starts after stream sequence {settled}",
                        legacy.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                    ));
                }
            }
            Err(e) => return Err(nats_err(format!("reading consumer {name}: {e}"))),
        }
        if let Err(first) = self.ensure_consumer(js, config.clone()).await {
            // Another worker, upgraded at the same time, created it first: its start
            // stands.
            let existing = stream.consumer_info(&name).await.map_err(|_| first)?;
            config.deliver_policy = existing.config.deliver_policy;
            self.ensure_consumer(js, config.clone()).await?;
        }
        // Only once the provider's consumer exists.
        for old in &legacy {
            match stream.delete_consumer(&old.name).await {
                Ok(_) => notes.push(format!("deleted the old consumer {}", old.name)),
                Err(e) => {
                    tracing::warn!(consumer = %old.name, error = %e, "could not delete an old projection consumer; it is deleted at the next start")
                }
            }
        }
        Ok((config, notes))
    }

    /// The durable consumer of a provider's projection: all its raw events, each
    /// delivered and acknowledged once whichever tables it concerns.
    pub fn projector_consumer(&self, provider: Provider) -> pull::Config {
        let name = Self::projector_name(provider);
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some(format!("crmsync projector of {provider} events")),
            filter_subject: self.subjects.raw_provider_filter(provider),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.policy.retry_base,
            max_deliver: self.policy.max_deliver.max(2),
            backoff: self.policy.backoff(),
            max_ack_pending: 20_000,
            ..Default::default()
        }
    }

    /// The outbound dispatcher's durable consumer for one provider's commands.
    pub fn outbound_consumer(&self, provider: Provider) -> pull::Config {
        let name = format!("push-{provider}");
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some(format!("crmsync pushes of call outcomes to {provider}")),
            filter_subject: self.subjects.outbound_filter(provider),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            // The dispatcher sends progress acks faster than the ack wait while a push
            // runs or waits; a crashed worker's commands come back after it.
            ack_wait: self.policy.retry_base,
            // Deliveries are not attempts (a deferred command is delivered again
            // without one): the dispatcher counts attempts in Postgres and
            // dead-letters after CRM_MAX_DELIVER of them.
            max_deliver: -1,
            // No BackOff: the dispatcher's delays are explicit (jittered retries,
            // deferrals), and JetStream would stretch each by the BackOff step of
            // the delivery count.
            backoff: Vec::new(),
            // Deferred commands stay pending with JetStream: room for deep backlogs.
            max_ack_pending: 20_000,
            ..Default::default()
        }
    }

    /// Creates the consumer, or updates it to `config`.
    pub async fn ensure_consumer(
        &self,
        js: &jetstream::Context,
        config: pull::Config,
    ) -> Result<PullConsumer, TopologyError> {
        js.create_consumer_on_stream(config, self.events_stream())
            .await
            .map_err(nats_err)
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<Vec<String>, TopologyError> {
    let name = want.name.clone();
    let existing = match js.get_stream(&name).await {
        Ok(mut s) => s
            .info()
            .await
            .map_err(|e| nats_err(format!("reading stream {name}: {e}")))?
            .config
            .clone(),
        Err(e) => {
            let not_found = matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            if !not_found {
                return Err(nats_err(format!("looking up stream {name}: {e}")));
            }
            js.create_stream(want)
                .await
                .map_err(|e| nats_err(format!("creating stream {name}: {e}")))?;
            return Ok(vec![format!("created stream {name}")]);
        }
    };
    let (config, notes) = reconcile(&existing, &want)?;
    if config != existing {
        js.update_stream(config)
            .await
            .map_err(|e| nats_err(format!("updating stream {name}: {e}")))?;
    }
    Ok(notes)
}

/// What an existing stream should become, and why; pure, so it is tested alone.
pub fn reconcile(
    existing: &stream::Config,
    want: &stream::Config,
) -> Result<(stream::Config, Vec<String>), TopologyError> {
    let name = &want.name;
    if existing.retention != want.retention {
        return Err(TopologyError::Immutable {
            stream: name.clone(),
            field: "retention",
            have: format!("{:?}", existing.retention),
            want: format!("{:?}", want.retention),
            how: "move its messages elsewhere (or back it up), delete the stream and start crmsync again",
        });
    }
    let mut config = existing.clone();
    let mut notes = Vec::new();
    if existing.storage != want.storage {
        notes.push(format!(
            "stream {name} keeps {:?} storage; crmsync wants {:?}, which cannot be changed in place: back it up, delete it and restart to move it",
            existing.storage, want.storage
        ));
    }
    let missing: Vec<&String> = want
        .subjects
        .iter()
        .filter(|s| !existing.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        notes.push(format!("stream {name}: added subjects {missing:?}"));
        config.subjects.extend(missing.into_iter().cloned());
    }
    if existing.duplicate_window < want.duplicate_window {
        notes.push(format!(
            "stream {name}: duplicate window {:?} -> {:?}",
            existing.duplicate_window, want.duplicate_window
        ));
        config.duplicate_window = want.duplicate_window;
    }
    if existing.num_replicas != want.num_replicas {
        notes.push(format!(
            "stream {name}: replicas {} -> {}",
            existing.num_replicas, want.num_replicas
        ));
        config.num_replicas = want.num_replicas;
    }
    if want.retention == RetentionPolicy::Limits
        && (existing.max_age != Duration::ZERO
            || existing.max_bytes > 0
            || existing.max_messages > 0)
    {
        notes.push(format!(
            "stream {name} has limits (max_age {:?}, max_bytes {}, max_msgs {}): older events are discarded and replay cannot rebuild them; left as configured",
            existing.max_age, existing.max_bytes, existing.max_messages
        ));
    }
    Ok((config, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: DeliveryPolicy = DeliveryPolicy {
        max_deliver: 5,
        retry_base: Duration::from_secs(30),
        retry_max: Duration::from_secs(100),
    };

    fn topology() -> Topology {
        Topology::new(Some("t1"), 1, Duration::from_secs(3600), POLICY).unwrap()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_fewer_steps_than_max_deliver() {
        let s = Duration::from_secs;
        assert_eq!(POLICY.backoff(), [s(30), s(60), s(100), s(100)]);
        let c = topology().projector_consumer(Provider::HubSpot);
        assert_eq!(c.max_deliver, 5);
        assert_eq!(c.ack_wait, s(30));
        assert_eq!(c.filter_subject, "t1.crm.raw.hubspot.>");
    }

    #[test]
    fn names_and_subjects_carry_the_prefix() {
        let t = topology();
        assert_eq!(t.events_stream(), "t1_CRM_EVENTS");
        assert_eq!(t.cursor_bucket(), "t1_crm_cursors");
        assert_eq!(
            t.events_config().subjects,
            ["t1.crm.raw.>", "t1.crm.app.>", "t1.crm.result.>"]
        );
        let plain = Topology::new(None, 1, Duration::from_secs(900), POLICY).unwrap();
        assert_eq!(plain.outbound_stream(), "CRM_OUTBOUND");
        assert!(plain
            .dlq_config()
            .subjects
            .contains(&"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.CRM_EVENTS.*".to_owned()));
    }

    #[test]
    fn reconcile_updates_what_can_change_and_explains_the_rest() {
        let t = topology();
        let want = t.events_config();
        let existing = stream::Config {
            subjects: vec!["t1.crm.raw.>".into()],
            storage: StorageType::Memory,
            duplicate_window: Duration::from_secs(120),
            ..want.clone()
        };
        let (config, notes) = reconcile(&existing, &want).unwrap();
        assert_eq!(config.subjects.len(), 3);
        assert_eq!(config.duplicate_window, Duration::from_secs(3600));
        assert_eq!(config.storage, StorageType::Memory);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("cannot be changed in place")),
            "{notes:?}"
        );
        let (same, notes) = reconcile(&want, &want).unwrap();
        assert_eq!(same, want);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_wrong_retention_stops_start_up_with_the_way_out() {
        let t = topology();
        let want = t.events_config();
        let existing = stream::Config {
            retention: RetentionPolicy::WorkQueue,
            ..want.clone()
        };
        let err = reconcile(&existing, &want).unwrap_err().to_string();
        assert!(err.contains("retention"), "{err}");
        assert!(err.contains("delete the stream"), "{err}");
    }
}
