//! The control API's bearer token (`CRM_API_TOKEN`), compared in constant time.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

/// Refuses a request without `Authorization: Bearer $CRM_API_TOKEN`.
pub fn require_bearer(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.api_token else {
        return Err(ApiError::Unauthorized(
            "the control API is disabled: set CRM_API_TOKEN".into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Digests first, so neither the length nor the content leaks through timing.
    let a = Sha256::digest(given.trim().as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    if bool::from(a.ct_eq(&b)) && !given.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "a valid Authorization: Bearer token is required".into(),
        ))
    }
}
