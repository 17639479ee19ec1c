//! JSON-RPC: `POST /jsonrpc` with the `common`, `object` and `db` services, and the
//! version routes.
//!
//! Odoo facts kept here:
//! - `login` and `authenticate` answer `false` for a wrong login or key, but a
//!   database that does not exist fails before that, with `psycopg2.OperationalError`
//!   (the registry cannot open it) — the same for `execute_kw`;
//! - `execute_kw` with a wrong key, or a uid that is not the key's user, raises
//!   `odoo.exceptions.AccessDenied` ("Access Denied", no traceback);
//! - a body that is not JSON answers `werkzeug.exceptions.BadRequest` inside a
//!   JSON-RPC error, still with HTTP 200;
//! - `/web/webclient/version_info` is a JSON-RPC route (also answered on GET here);
//!   `/web/version` is plain JSON.
//!
//! XML-RPC (`/xmlrpc/2/*`) is not emulated.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::errors::OdooError;
use super::methods::{self, Call, Protocol};
use super::seed::ADMIN_UID;
use super::{OdooSandbox, OdooVersion};

pub(crate) fn version_info(version: OdooVersion) -> Value {
    json!({
        "server_version": version.as_str(),
        "server_version_info": version.info(),
        "server_serie": version.as_str(),
        "protocol_version": 1,
    })
}

fn arity(function: &str, args: &[Value], names: &[&str], optional: usize) -> Result<(), OdooError> {
    let required = names.len() - optional;
    if args.len() > names.len() {
        return Err(OdooError::type_error(format!(
            "{function}() takes {} positional arguments but {} were given",
            names.len(),
            args.len()
        )));
    }
    if args.len() < required {
        let missing: Vec<String> = names[args.len()..required]
            .iter()
            .map(|n| format!("'{n}'"))
            .collect();
        return Err(OdooError::type_error(format!(
            "{function}() missing {} required positional argument{}: {}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join(" and ")
        )));
    }
    Ok(())
}

impl OdooSandbox {
    fn check_db(&self, db: &Value) -> Result<(), OdooError> {
        match db.as_str() {
            Some(name) if name == self.database => Ok(()),
            Some(name) => Err(OdooError::unknown_database(name)),
            None => Err(OdooError::unknown_database(&db.to_string())),
        }
    }

    /// The uid a login and key authenticate, if any.
    fn login_uid(&self, login: &Value, key: &Value) -> Option<i64> {
        (login.as_str() == Some(self.login.as_str()) && self.is_api_key(key.as_str()))
            .then_some(ADMIN_UID)
    }

    /// `security.check(db, uid, key)`: the uid must be the key's user.
    fn check_uid(&self, db: &Value, uid: &Value, key: &Value) -> Result<i64, OdooError> {
        self.check_db(db)?;
        let uid = match uid {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => Some(s.trim().parse::<i64>().map_err(|_| {
                OdooError::value_error(format!("invalid literal for int() with base 10: '{s}'"))
            })?),
            _ => None,
        };
        match uid {
            Some(ADMIN_UID) if self.is_api_key(key.as_str()) => Ok(ADMIN_UID),
            _ => Err(OdooError::access_denied()),
        }
    }

    fn common(&self, method: &str, args: &[Value]) -> Result<Value, OdooError> {
        match method {
            "version" => Ok(version_info(self.version)),
            "login" => {
                arity("exp_login", args, &["db", "login", "password"], 0)?;
                self.check_db(&args[0])?;
                Ok(self
                    .login_uid(&args[1], &args[2])
                    .map_or(json!(false), |uid| json!(uid)))
            }
            "authenticate" => {
                arity(
                    "exp_authenticate",
                    args,
                    &["db", "login", "password", "user_agent_env"],
                    0,
                )?;
                self.check_db(&args[0])?;
                Ok(self
                    .login_uid(&args[1], &args[2])
                    .map_or(json!(false), |uid| json!(uid)))
            }
            "about" => Ok(json!("See http://openerp.com")),
            other => Err(OdooError::key_error(format!("'exp_{other}'"))),
        }
    }

    fn object(&self, method: &str, mut args: Vec<Value>) -> Result<Value, OdooError> {
        let (positional, mut kwargs) = match method {
            "execute_kw" => {
                arity(
                    "execute_kw",
                    &args,
                    &["db", "uid", "passwd", "model", "method", "args", "kw"],
                    2,
                )?;
                let kwargs = match args.get(6) {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(other) => {
                        return Err(OdooError::type_error(format!(
                            "argument after ** must be a mapping, not {}",
                            super::domain::py_repr(other)
                        )))
                    }
                };
                let positional = match args.get(5) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(a)) => a.clone(),
                    Some(other) => {
                        return Err(OdooError::type_error(format!(
                            "argument after * must be an iterable, not {}",
                            super::domain::py_repr(other)
                        )))
                    }
                };
                (positional, kwargs)
            }
            "execute" => {
                if args.len() < 5 {
                    arity(
                        "execute",
                        &args,
                        &["db", "uid", "passwd", "model", "method"],
                        0,
                    )?;
                }
                (args.split_off(5), Map::new())
            }
            other => {
                return Err(OdooError::name_error(format!(
                    "Method not available {other}"
                )))
            }
        };
        let uid = self.check_uid(&args[0], &args[1], &args[2])?;
        let context = kwargs.remove("context").unwrap_or_else(|| json!({}));
        let call = Call {
            model: args[3].as_str().unwrap_or_default().to_owned(),
            method: args[4].as_str().unwrap_or_default().to_owned(),
            ids: Value::Null,
            args: positional,
            kwargs,
            context,
            protocol: Protocol::JsonRpc,
        };
        methods::execute(self, uid, call)
    }

    fn db_service(&self, method: &str, args: &[Value]) -> Result<Value, OdooError> {
        match method {
            "list" => Ok(json!([self.database])),
            "db_exist" => Ok(json!(
                args.first().and_then(Value::as_str) == Some(&self.database)
            )),
            "server_version" => Ok(json!(self.version.as_str())),
            other => Err(OdooError::key_error(format!("'exp_{other}'"))),
        }
    }
}

/// `POST /jsonrpc`.
pub(crate) async fn jsonrpc(State(sb): State<Arc<OdooSandbox>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let e = OdooError::bad_request("Invalid JSON data");
            return Json(e.jsonrpc(&Value::Null)).into_response();
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    let service = params.get("service").and_then(Value::as_str).unwrap_or("");
    let method = params.get("method").and_then(Value::as_str).unwrap_or("");
    let args = match params.get("args") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let result = match service {
        "common" => sb.common(method, &args),
        "object" => sb.object(method, args),
        "db" => sb.db_service(method, &args),
        other => Err(OdooError::key_error(format!("'{other}'"))),
    };
    let envelope = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => e.jsonrpc(&id),
    };
    Json(envelope).into_response()
}

/// `/web/webclient/version_info` (JSON-RPC; GET answered too).
pub(crate) async fn webclient_version_info(
    State(sb): State<Arc<OdooSandbox>>,
    body: Bytes,
) -> Response {
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    Json(json!({"jsonrpc": "2.0", "id": id, "result": version_info(sb.version)})).into_response()
}

/// `GET /web/version`.
pub(crate) async fn web_version(State(sb): State<Arc<OdooSandbox>>) -> Response {
    let info = version_info(sb.version);
    Json(json!({
        "version_info": info["server_version_info"],
        "version": sb.version.as_str(),
    }))
    .into_response()
}

/// Werkzeug's 404 page, for every other path (`/json/2/…` on Odoo 17 included).
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.</p>\n",
    )
        .into_response()
}
