//! Every Prometheus series crmsync exports, declared once.
//!
//! Label values are `&'static str`: ids, emails and other unbounded values cannot
//! become labels by construction.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub provider: &'static str,
    pub object: &'static str,
    pub verb: &'static str,
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub provider: &'static str,
    pub error_type: &'static str,
    pub operation: &'static str,
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntityLabels {
    pub provider: &'static str,
    pub entity_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncedLabels {
    pub provider: &'static str,
    pub entity_type: &'static str,
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerificationLabels {
    pub provider: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: &'static str,
}

/// A durable consumer, by its name (a fixed set: projections, hydrators, pushes).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub consumer: String,
}

/// An HTTP status as a label value, from a fixed set.
pub fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        207 => "207",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
    }
}

/// The registry and its series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests to and from providers: API calls and webhook deliveries.
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub sync_duration: Family<EntityLabels, Histogram>,
    pub entities_synced: Family<SyncedLabels, Counter>,
    pub webhook_verification_failures: Family<VerificationLabels, Counter>,
    pub events_published: Family<EntityLabels, Counter>,
    pub dead_lettered: Family<ConsumerLabels, Counter>,
    /// Seconds from the provider's time of a change to its projection.
    pub projection_freshness: Family<EntityLabels, Histogram>,
    /// Events each durable consumer has yet to settle (pending + unacknowledged).
    pub consumer_lag: Family<LagLabels, Gauge>,
    /// Messages in the dead-letter stream.
    pub dlq_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "crm_requests",
            "Requests to provider APIs and webhook deliveries from providers",
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "crm_errors",
            "Errors by provider, type and operation",
            errors.clone(),
        );
        let sync_duration = Family::<EntityLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "crm_sync_duration_seconds",
            "Time to project one batch of events",
            sync_duration.clone(),
        );
        let entities_synced = Family::<SyncedLabels, Counter>::default();
        registry.register(
            "crm_entities_synced",
            "Records synced, by direction (inbound: projected from the CRM; outbound: pushed to it)",
            entities_synced.clone(),
        );
        let webhook_verification_failures = Family::<VerificationLabels, Counter>::default();
        registry.register(
            "crm_webhook_verification_failures",
            "Webhook requests refused for their signature or token",
            webhook_verification_failures.clone(),
        );
        let events_published = Family::<EntityLabels, Counter>::default();
        registry.register(
            "crm_events_published",
            "Raw events stored in JetStream (acknowledged)",
            events_published.clone(),
        );
        let dead_lettered = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "crm_dead_lettered",
            "Events moved to the dead-letter stream after their last delivery",
            dead_lettered.clone(),
        );
        let projection_freshness = Family::<EntityLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 20))
        });
        registry.register(
            "crm_projection_freshness_seconds",
            "Seconds from a change at the provider to its projection in Postgres",
            projection_freshness.clone(),
        );
        let consumer_lag = Family::<LagLabels, Gauge>::default();
        registry.register(
            "crm_consumer_lag_events",
            "Events a durable consumer has yet to settle (pending and unacknowledged)",
            consumer_lag.clone(),
        );
        let dlq_depth = Gauge::default();
        registry.register(
            "crm_dlq_depth",
            "Messages in the dead-letter stream",
            dlq_depth.clone(),
        );
        Self {
            registry,
            requests,
            errors,
            sync_duration,
            entities_synced,
            webhook_verification_failures,
            events_published,
            dead_lettered,
            projection_freshness,
            consumer_lag,
            dlq_depth,
        }
    }

    /// Counts one provider API call; a failed one (`failed` names the operation) is
    /// counted as an error too, by kind.
    pub fn count_call(
        &self,
        call: RequestLabels,
        failed: Option<(crate::ErrorKind, &'static str)>,
    ) {
        self.requests.get_or_create(&call).inc();
        if let Some((kind, operation)) = failed {
            self.errors
                .get_or_create(&ErrorLabels {
                    provider: call.provider,
                    error_type: kind.label(),
                    operation,
                    code: call.status,
                })
                .inc();
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_as_the_design_says() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                provider: "hubspot",
                object: "webhook",
                verb: "POST",
                status: "200",
            })
            .inc();
        m.entities_synced
            .get_or_create(&SyncedLabels {
                provider: "hubspot",
                entity_type: "contact",
                direction: "inbound",
            })
            .inc_by(3);
        m.sync_duration
            .get_or_create(&EntityLabels {
                provider: "hubspot",
                entity_type: "contact",
            })
            .observe(0.01);
        let text = m.encode();
        assert!(text.contains(
            r#"crm_requests_total{provider="hubspot",object="webhook",verb="POST",status="200"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"crm_entities_synced_total{provider="hubspot",entity_type="contact",direction="inbound"} 3"#
        ), "{text}");
        assert!(
            text.contains("# TYPE crm_sync_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
