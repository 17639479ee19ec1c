//! JSON-2 (Odoo 19): `POST /json/2/<model>/<method>`, bearer API key, named arguments.
//!
//! Checks in Odoo's order: the `X-Odoo-Database` header, when sent, must name the
//! database (else 404: without a database the `/json/2` routes do not exist); the
//! request must be `application/json` (400); the key (401 `Invalid apikey`); the verb
//! (405 unless POST); the body, a JSON object (400); then the model (404), the method
//! (404), the arguments (422) and the call itself. Errors are
//! `{name, message, arguments, context, debug}` with the exception's status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::OdooError;
use super::methods::{self, Call, Protocol};
use super::seed::ADMIN_UID;
use super::OdooSandbox;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn authenticate(sb: &OdooSandbox, headers: &HeaderMap) -> Result<i64, OdooError> {
    let auth = header(headers, header::AUTHORIZATION.as_str()).unwrap_or("");
    let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
    if scheme.eq_ignore_ascii_case("bearer") && sb.is_api_key(Some(token.trim())) {
        Ok(ADMIN_UID)
    } else {
        Err(OdooError::unauthorized("Invalid apikey"))
    }
}

fn call(
    sb: &OdooSandbox,
    model: String,
    method: &Method,
    rpc_method: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OdooError> {
    if let Some(db) = header(headers, "x-odoo-database") {
        if db != sb.database {
            return Err(OdooError::not_found(format!(
                "The requested URL was not found on the server. (database {db:?} not found)"
            )));
        }
    }
    let mime = header(headers, header::CONTENT_TYPE.as_str())
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    if mime.is_some_and(|m| !m.eq_ignore_ascii_case("application/json")) {
        return Err(OdooError::bad_request(
            "Request inferred type is compatible with ['http'] but '/json/2/rpc' was expected",
        ));
    }
    let uid = authenticate(sb, headers)?;
    if method != Method::POST {
        return Err(OdooError::method_not_allowed());
    }
    let mut params = if body.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(OdooError::bad_request(
                    "could not parse the body, expecting a json object",
                ))
            }
            Err(e) => {
                return Err(OdooError::bad_request(format!(
                    "could not parse the body as json: {e}"
                )))
            }
        }
    };
    let ids = params.remove("ids").unwrap_or_else(|| json!([]));
    let context = params.remove("context").unwrap_or_else(|| json!({}));
    methods::execute(
        sb,
        uid,
        Call {
            model,
            method: rpc_method,
            ids,
            args: Vec::new(),
            kwargs: params,
            context,
            protocol: Protocol::Json2,
        },
    )
}

/// `/json/2/{model}/{method}` (any verb; only POST is served).
pub(crate) async fn handle(
    State(sb): State<Arc<OdooSandbox>>,
    Path((model, rpc_method)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match call(&sb, model, &method, rpc_method, &headers, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.json2(),
    }
}
