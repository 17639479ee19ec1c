//! Odoo's errors, and how each protocol carries them.
//!
//! Every error is a Python exception on the real server: a fully qualified `name`
//! (`odoo.exceptions.AccessDenied`, `builtins.ValueError`, `werkzeug.exceptions.NotFound`…),
//! a `message`, and `arguments`. JSON-RPC answers HTTP 200 with
//! `{"jsonrpc":"2.0","id":…,"error":{"code":200,"message":"Odoo Server Error","data":{name, debug, message, arguments, context}}}`;
//! JSON-2 answers the exception's HTTP status (`http_status` of the `odoo.exceptions`
//! class: 403 for AccessDenied/AccessError, 404 for MissingError, 422 for UserError
//! and ValidationError, the werkzeug code for HTTP exceptions, 500 otherwise) with
//! `{name, message, arguments, context, debug}` as the body.

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An Odoo server error, as a JSON-RPC or JSON-2 client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct OdooError {
    /// Fully qualified Python exception name, e.g. `odoo.exceptions.AccessDenied`.
    pub name: &'static str,
    pub message: String,
    /// HTTP status JSON-2 answers with.
    pub status: u16,
    /// Werkzeug HTTP exceptions carry `[description, code]` as arguments.
    http_exception: bool,
}

impl fmt::Display for OdooError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for OdooError {}

impl OdooError {
    fn new(name: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
            status,
            http_exception: false,
        }
    }

    fn http(name: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            http_exception: true,
            ..Self::new(name, status, message)
        }
    }

    /// Wrong login, key, uid: Odoo hides the traceback for these.
    pub fn access_denied() -> Self {
        Self::new("odoo.exceptions.AccessDenied", 403, "Access Denied")
    }

    pub fn access_error(message: impl Into<String>) -> Self {
        Self::new("odoo.exceptions.AccessError", 403, message)
    }

    pub fn user_error(message: impl Into<String>) -> Self {
        Self::new("odoo.exceptions.UserError", 422, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("odoo.exceptions.ValidationError", 422, message)
    }

    pub fn missing(message: impl Into<String>) -> Self {
        Self::new("odoo.exceptions.MissingError", 404, message)
    }

    pub fn value_error(message: impl Into<String>) -> Self {
        Self::new("builtins.ValueError", 500, message)
    }

    pub fn type_error(message: impl Into<String>) -> Self {
        Self::new("builtins.TypeError", 500, message)
    }

    pub fn attribute_error(message: impl Into<String>) -> Self {
        Self::new("builtins.AttributeError", 500, message)
    }

    pub fn key_error(message: impl Into<String>) -> Self {
        Self::new("builtins.KeyError", 500, message)
    }

    pub fn name_error(message: impl Into<String>) -> Self {
        Self::new("builtins.NameError", 500, message)
    }

    pub fn index_error(message: impl Into<String>) -> Self {
        Self::new("builtins.IndexError", 500, message)
    }

    /// What psycopg2 raises when the database named in the call does not exist.
    pub fn unknown_database(db: &str) -> Self {
        Self::new(
            "psycopg2.OperationalError",
            500,
            format!(
                "connection to server on socket \"/var/run/postgresql/.s.PGSQL.5432\" failed: FATAL:  database \"{db}\" does not exist\n"
            ),
        )
    }

    pub fn invalid_datetime(value: &str) -> Self {
        Self::new(
            "psycopg2.errors.InvalidDatetimeFormat",
            500,
            format!("invalid input syntax for type timestamp: \"{value}\"\n"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::http("werkzeug.exceptions.BadRequest", 400, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::http("werkzeug.exceptions.Unauthorized", 401, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::http("werkzeug.exceptions.NotFound", 404, message)
    }

    pub fn method_not_allowed() -> Self {
        Self::http(
            "werkzeug.exceptions.MethodNotAllowed",
            405,
            "The method is not allowed for the requested URL.",
        )
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::http("werkzeug.exceptions.UnprocessableEntity", 422, message)
    }

    pub fn is_access_denied(&self) -> bool {
        self.name == "odoo.exceptions.AccessDenied"
    }

    fn arguments(&self) -> Value {
        if self.http_exception {
            json!([self.message, self.status])
        } else {
            json!([self.message])
        }
    }

    fn debug(&self) -> String {
        let last = format!("{}: {}", self.name, self.message);
        if self.is_access_denied() {
            // AccessDenied suppresses its traceback.
            return format!("Traceback (most recent call last):\n{last}\n");
        }
        format!(
            "Traceback (most recent call last):\n  File \"/usr/lib/python3/dist-packages/odoo/http.py\", line 1788, in _serve_db\n    return service_model.retrying(self._serve_ir_http, self.env)\n  File \"/usr/lib/python3/dist-packages/odoo/service/model.py\", line 133, in retrying\n    result = func()\n{last}\n"
        )
    }

    /// The `data` object of a JSON-RPC error, and the whole body of a JSON-2 error.
    pub fn serialized(&self) -> Value {
        json!({
            "name": self.name,
            "message": self.message,
            "arguments": self.arguments(),
            "context": {},
            "debug": self.debug(),
        })
    }

    /// A JSON-RPC 2.0 error envelope (sent with HTTP 200).
    pub fn jsonrpc(&self, id: &Value) -> Value {
        let (code, message) = if self.name == "werkzeug.exceptions.NotFound" {
            (404, "404: Not Found")
        } else {
            (200, "Odoo Server Error")
        };
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": code, "message": message, "data": self.serialized()},
        })
    }

    /// A JSON-2 error response.
    pub fn json2(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.serialized())).into_response()
    }
}
