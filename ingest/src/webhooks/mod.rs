//! Provider webhooks.

pub mod hubspot;

use axum::http::{HeaderMap, Uri};

use crate::ApiError;

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

/// Refuses bodies that are not JSON (a missing content type is taken as JSON).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(axum::http::header::CONTENT_TYPE) {
        None => Ok(()),
        Some(v) => {
            let ct = v.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence == "application/json" || essence.ends_with("+json") {
                Ok(())
            } else {
                Err(ApiError::UnsupportedMediaType(
                    "webhooks must be sent as application/json".into(),
                ))
            }
        }
    }
}
