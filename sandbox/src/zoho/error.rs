//! Zoho's error answers: `{"code", "details", "message", "status": "error"}`, the same
//! shape for a whole request and for one record of a bulk request. Codes, messages and
//! details follow Zoho's published v8 examples.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// One Zoho error.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// The JSON body, also used as one entry of a bulk answer.
    pub fn body(&self) -> Value {
        json!({
            "code": self.code,
            "details": self.details,
            "message": self.message,
            "status": "error",
        })
    }

    pub fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "invalid oauth token",
        )
    }

    pub fn authentication_failure() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_FAILURE",
            "Authentication failed",
        )
    }

    pub fn scope_mismatch() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "OAUTH_SCOPE_MISMATCH",
            "Unauthorized",
        )
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", message)
    }

    pub fn invalid_module() -> Self {
        Self::bad_request(
            "INVALID_MODULE",
            "the module name given seems to be invalid",
        )
        .with_details(json!({"resource_path_index": 0}))
    }

    pub fn invalid_url() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "INVALID_URL_PATTERN",
            "Please check if the URL trying to access is a correct one",
        )
    }

    pub fn invalid_method() -> Self {
        Self::bad_request(
            "INVALID_REQUEST_METHOD",
            "The http request method type is not a valid one",
        )
    }

    pub fn required_param(param: &str) -> Self {
        Self::bad_request("REQUIRED_PARAM_MISSING", "required param is missing")
            .with_details(json!({"param_name": param}))
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request("INVALID_DATA", message).with_details(json!({"param_name": param}))
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::bad_request("INVALID_DATA", message)
    }

    /// A field of record `index` in a bulk body.
    pub fn invalid_field(index: usize, api_name: &str, expected: Option<&str>) -> Self {
        let mut details = json!({
            "api_name": api_name,
            "json_path": format!("$.data[{index}].{api_name}"),
        });
        if let Some(expected) = expected {
            details["expected_data_type"] = json!(expected);
        }
        Self::bad_request("INVALID_DATA", "invalid data").with_details(details)
    }

    pub fn mandatory_missing(index: usize, api_name: &str) -> Self {
        Self::bad_request("MANDATORY_NOT_FOUND", "required field not found").with_details(json!({
            "api_name": api_name,
            "json_path": format!("$.data[{index}].{api_name}"),
        }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Zoho's 429, also the faults module's answer during a storm.
pub fn too_many_requests_response() -> Response {
    ApiError::too_many_requests("API calls are throttled: too many requests").into_response()
}
