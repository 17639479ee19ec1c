//! One error type for every HTTP answer that is not a success: clear to the caller,
//! never leaking internals.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the body is larger than the {limit} bytes accepted (CRM_WEBHOOK_MAX_BYTES)")]
    TooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the state it would act on.
    #[error("{0}")]
    Conflict(String),
    /// A request refused field by field: 400 with every problem listed.
    #[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

/// A request body that may be left out, read whole (up to the body limit).
pub type OptionalBody = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// A JSON body that may be left out (its fields can come in the query): none when
/// the request has no body (whatever its headers say), else the body, which must be
/// declared and parse as JSON.
pub fn optional_body<T: serde::de::DeserializeOwned>(
    state: &crate::AppState,
    headers: &axum::http::HeaderMap,
    body: OptionalBody,
) -> Result<Option<T>, ApiError> {
    let bytes = crate::webhooks::body_of(body, state.max_body_bytes)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // Unlike a webhook's, a control-API body must say it is JSON.
    if crate::webhooks::declares_json(headers) != Some(true) {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be JSON, sent with content-type: application/json".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("the body: {e}")))
}

/// One field of a request and what is wrong with it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl ApiError {
    /// Why a JSON body was refused: 413 when it is over `limit` bytes, 415 when it is
    /// not declared as JSON, else 400 with serde's reason (which names the place).
    pub fn json_body(rejection: JsonRejection, limit: usize) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { limit },
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with content-type: application/json".into(),
            ),
            _ => ApiError::BadRequest(format!("the body: {}", rejection.body_text())),
        }
    }

    /// An internal failure: logged in full, answered as 503 without details.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError::Unavailable("a dependency is unavailable; try again".into())
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let mut error = json!({"code": code, "message": self.to_string()});
        if let ApiError::Invalid(fields) = &self {
            error["fields"] = json!(fields);
        }
        let body = Json(json!({ "error": error }));
        let mut response = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                "5".parse().expect("valid header"),
            );
        }
        response
    }
}
