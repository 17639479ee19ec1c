//! Webhook delivery as HubSpot does it: every change becomes an event; events are
//! sent in batches of up to 100 to the target URL, signed with v1 (or v2) and v3 over
//! the URL exactly as it goes out, and a failed or timed-out batch is retried with
//! growing delays, up to 10 attempts; a 4xx other than 429 is not retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::store::{now_ms, singular, Change};
use super::webhooks::{delivery_headers, subscription_id, Signature};
use crate::faults::FaultState;

/// The most events in one delivery.
pub const MAX_BATCH: usize = 100;
/// Attempts per batch, the first included.
pub const MAX_ATTEMPTS: u32 = 10;

/// Counters of what happened to outgoing webhooks.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub events: AtomicU64,
    pub delivered_batches: AtomicU64,
    pub delivered_events: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub abandoned_batches: AtomicU64,
}

/// Where and how webhooks go.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub target: Option<String>,
    pub signature: Signature,
    pub client_secret: String,
    pub portal_id: u64,
    pub app_id: u64,
    /// How long events gather before a batch leaves.
    pub batch_delay: Duration,
    /// The first retry delay; doubled at each attempt.
    pub retry_base: Duration,
}

/// The queue of events waiting to be sent.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Value>,
    next_event_id: AtomicU64,
    config: Arc<RwLock<DeliveryConfig>>,
    pub stats: Arc<DeliveryStats>,
}

impl Outbox {
    pub fn spawn(config: DeliveryConfig, faults: Arc<FaultState>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = Arc::new(RwLock::new(config));
        let stats = Arc::new(DeliveryStats::default());
        tokio::spawn(run(rx, config.clone(), stats.clone(), faults));
        Self {
            tx,
            next_event_id: AtomicU64::new(1),
            config,
            stats,
        }
    }

    pub fn set_target(&self, target: Option<String>) {
        self.config.write().expect("delivery config").target = target;
    }

    pub fn set_signature(&self, signature: Signature) {
        self.config.write().expect("delivery config").signature = signature;
    }

    /// Queues the webhook events of `changes` made at `at` (ms), their `occurredAt`
    /// (nothing when no target is set).
    pub fn emit(&self, changes: &[Change], at: i64) {
        let (portal, app, has_target) = {
            let c = self.config.read().expect("delivery config");
            (c.portal_id, c.app_id, c.target.is_some())
        };
        if !has_target {
            return;
        }
        for change in changes {
            let id = self.next_event_id.fetch_add(1, Ordering::Relaxed);
            let mut e = json!({
                "eventId": id,
                "portalId": portal,
                "appId": app,
                "occurredAt": at,
                "attemptNumber": 0,
                "changeSource": "CRM",
            });
            let (object, kind, object_id) = match change {
                Change::Created { object_type, id } => {
                    e["changeFlag"] = json!("NEW");
                    (singular(object_type), "creation", *id)
                }
                Change::Property {
                    object_type,
                    id,
                    name,
                    value,
                } => {
                    e["propertyName"] = json!(name);
                    e["propertyValue"] = json!(value);
                    (singular(object_type), "propertyChange", *id)
                }
                Change::Archived { object_type, id } => {
                    e["changeFlag"] = json!("DELETED");
                    (singular(object_type), "deletion", *id)
                }
                Change::Restored { object_type, id } => (singular(object_type), "restore", *id),
                Change::Merged {
                    object_type,
                    primary,
                    merged,
                    new_id,
                } => {
                    e["primaryObjectId"] = json!(primary);
                    e["mergedObjectIds"] = json!([merged]);
                    e["newObjectId"] = json!(new_id);
                    (singular(object_type), "merge", *new_id)
                }
                Change::Associated {
                    from_type,
                    from,
                    to_type,
                    to,
                    removed,
                } => {
                    e["associationType"] = json!(format!(
                        "{}_TO_{}",
                        singular(from_type).to_uppercase(),
                        singular(to_type).to_uppercase()
                    ));
                    e["fromObjectId"] = json!(from);
                    e["toObjectId"] = json!(to);
                    e["associationRemoved"] = json!(removed);
                    (singular(from_type), "associationChange", *from)
                }
            };
            if !matches!(object, "contact" | "company" | "deal") {
                continue;
            }
            let subscription_type = format!("{object}.{kind}");
            e["subscriptionId"] = json!(subscription_id(&subscription_type));
            e["subscriptionType"] = json!(subscription_type);
            e["objectId"] = json!(object_id);
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            let _ = self.tx.send(e);
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Value>,
    config: Arc<RwLock<DeliveryConfig>>,
    stats: Arc<DeliveryStats>,
    faults: Arc<FaultState>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    while let Some(first) = rx.recv().await {
        let delay = config.read().expect("delivery config").batch_delay;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + delay;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        if faults.drop_webhook() {
            stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        tokio::spawn(deliver(
            client.clone(),
            batch,
            config.clone(),
            stats.clone(),
        ));
    }
}

async fn deliver(
    client: reqwest::Client,
    mut batch: Vec<Value>,
    config: Arc<RwLock<DeliveryConfig>>,
    stats: Arc<DeliveryStats>,
) {
    for attempt in 0..MAX_ATTEMPTS {
        let c = config.read().expect("delivery config").clone();
        let Some(target) = c.target else { return };
        for e in &mut batch {
            e["attemptNumber"] = json!(attempt);
        }
        let body = serde_json::to_vec(&batch).expect("JSON");
        // Sign the URL as the request carries it (`http://host` goes out as
        // `http://host/`), so a receiver rebuilding it can check the signature.
        let sent = match reqwest::Url::parse(&target) {
            Ok(url) => {
                let mut request = client.post(url.clone()).body(body.clone());
                for (name, value) in
                    delivery_headers(c.signature, &c.client_secret, url.as_str(), &body, now_ms())
                {
                    request = request.header(name, value);
                }
                request.send().await.map_err(|_| ())
            }
            Err(_) => Err(()),
        };
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                stats.delivered_batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .delivered_events
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Ok(r) => r.status().as_u16() == 429 || r.status().is_server_error(),
            Err(_) => true,
        };
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if !retry {
            break;
        }
        let wait = c.retry_base * 2u32.pow(attempt.min(16));
        tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
    }
    stats.abandoned_batches.fetch_add(1, Ordering::Relaxed);
}
