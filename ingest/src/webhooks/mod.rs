//! Provider webhooks.

pub mod hubspot;
pub mod zoho;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};

use crmsync_adapters::telemetry::{status_label, EntityLabels, RequestLabels, VerificationLabels};
use crmsync_adapters::Metrics;
use crmsync_schema::RawEvent;

use crate::ApiError;

/// The body, or why it could not be read (too large: 413).
pub fn body_of(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { limit },
        _ => ApiError::BadRequest(format!("the body could not be read: {rejection}")),
    })
}

/// `POST /crm/webhooks/{provider}` for any provider but HubSpot and Zoho: 404 that
/// says where webhooks go, rather than the router's empty one.
pub async fn unknown(axum::extract::Path(provider): axum::extract::Path<String>) -> ApiError {
    let shown: String = provider.chars().take(64).collect();
    ApiError::NotFound(format!(
        "no webhooks are received for `{shown}`: HubSpot posts to /crm/webhooks/hubspot, \
         Zoho to /crm/webhooks/zoho, and Odoo is polled"
    ))
}

/// Counts a webhook delivery by its answer.
pub fn count_delivery(metrics: &Metrics, provider: &'static str, status: StatusCode) {
    metrics
        .requests
        .get_or_create(&RequestLabels {
            provider,
            object: "webhook",
            verb: "POST",
            status: status_label(status.as_u16()),
        })
        .inc();
}

/// Counts a refused webhook by reason.
pub fn count_refused(metrics: &Metrics, provider: &'static str, reason: &'static str) {
    metrics
        .webhook_verification_failures
        .get_or_create(&VerificationLabels { provider, reason })
        .inc();
}

/// Counts stored events by object type.
pub fn count_published(metrics: &Metrics, provider: &'static str, events: &[RawEvent]) {
    for event in events {
        let entity_type = match event.object.as_str() {
            "contact" => "contact",
            "company" => "company",
            "deal" => "deal",
            "activity" => "activity",
            _ => "other",
        };
        metrics
            .events_published
            .get_or_create(&EntityLabels {
                provider,
                entity_type,
            })
            .inc();
    }
}

/// The URI the provider called, which its signature covers: `CRM_PUBLIC_URL` and the
/// path, or else what the (proxy's) headers say; never the internal address alone.
pub fn public_uri(public_url: Option<&str>, headers: &HeaderMap, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(base) = public_url {
        return format!("{}{path}", base.trim_end_matches('/'));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let proto = header("x-forwarded-proto")
        .and_then(|p| p.split(',').next())
        .map_or("http", str::trim);
    let host = header("x-forwarded-host")
        .and_then(|h| h.split(',').next())
        .or_else(|| header("host"))
        .map_or("localhost", str::trim);
    format!("{proto}://{host}{path}")
}

/// Whether the request's content type is JSON (`application/json` or `…+json`,
/// parameters aside); none when it has no content type.
pub fn declares_json(headers: &HeaderMap) -> Option<bool> {
    headers.get(axum::http::header::CONTENT_TYPE).map(|v| {
        let ct = v.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence == "application/json" || essence.ends_with("+json")
    })
}

/// Refuses bodies that are not JSON (a missing content type is taken as JSON).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if declares_json(headers).unwrap_or(true) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "webhooks must be sent as application/json".into(),
        ))
    }
}
