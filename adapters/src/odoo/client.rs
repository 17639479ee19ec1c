//! The Odoo client for one connection: authentication with the API key, then every
//! ORM call over JSON-RPC `execute_kw` — or JSON-2 on Odoo 19+, where JSON-RPC is
//! deprecated. Errors come back as HTTP 200 JSON-RPC errors (or JSON-2 4xx/5xx): each
//! is classified so that a wrong database, login or key is told apart from a server
//! that is down.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::{retry_after, ErrorKind, ProviderError};
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;
use crate::telemetry::{status_label, RequestLabels};
use crate::{Metrics, Secret};

/// What a connection needs to reach Odoo.
#[derive(Debug, Clone)]
pub struct OdooConfig {
    /// `https://acme.odoo.com`.
    pub url: String,
    pub database: String,
    pub login: String,
    pub api_key: Secret<String>,
    /// `ODOO_DEFAULT_TIMEOUT`.
    pub timeout: Duration,
}

/// Which API the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    JsonRpc,
    Json2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::JsonRpc => "json-rpc",
            Protocol::Json2 => "json-2",
        }
    }
}

/// Why connecting failed, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no Odoo answers at {0}: check the URL")]
    Unreachable(String),
    #[error("the server at {0} does not look like Odoo: check the URL")]
    NotOdoo(String),
    #[error("Odoo has no database {0:?}")]
    UnknownDatabase(String),
    #[error("Odoo refused the login or API key")]
    BadCredentials,
    #[error("Odoo failed: {0}")]
    Server(String),
}

/// A connected Odoo client.
#[derive(Debug, Clone)]
pub struct OdooClient {
    http: reqwest::Client,
    config: OdooConfig,
    uid: i64,
    protocol: Protocol,
    /// The server's major version (a SaaS series counts as its major).
    major: u64,
    version: String,
    limiter: Arc<RateLimiter>,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
}

fn model_label(model: &str) -> &'static str {
    match model {
        "res.partner" => "partners",
        "crm.lead" => "leads",
        "mail.activity" => "activities",
        "mail.message" => "messages",
        _ => "other",
    }
}

/// The Odoo exception a JSON-RPC error or JSON-2 body names.
fn exception(body: &Value) -> (String, String) {
    let (name, message) = match body.get("error") {
        Some(error) => (
            error.pointer("/data/name").and_then(Value::as_str),
            error
                .pointer("/data/message")
                .or_else(|| error.get("message"))
                .and_then(Value::as_str),
        ),
        None => (
            body.get("name").and_then(Value::as_str),
            body.get("message").and_then(Value::as_str),
        ),
    };
    (
        name.unwrap_or("unknown").to_owned(),
        message.unwrap_or_default().chars().take(300).collect(),
    )
}

fn kind_of(name: &str) -> ErrorKind {
    match name {
        "odoo.exceptions.AccessDenied" => ErrorKind::Unauthorized,
        "odoo.exceptions.AccessError"
        | "odoo.exceptions.UserError"
        | "odoo.exceptions.ValidationError"
        | "odoo.exceptions.MissingError"
        | "builtins.ValueError"
        | "builtins.TypeError"
        | "builtins.KeyError"
        | "werkzeug.exceptions.BadRequest"
        | "werkzeug.exceptions.NotFound"
        | "werkzeug.exceptions.UnprocessableEntity" => ErrorKind::Rejected,
        _ => ErrorKind::Transient,
    }
}

impl OdooClient {
    /// Finds the server's version, authenticates, and picks the protocol: JSON-2
    /// where offered (Odoo 19+), JSON-RPC otherwise.
    pub async fn connect(
        config: OdooConfig,
        limiter: Arc<RateLimiter>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectError> {
        // No redirects: a redirected POST would carry the key to another host.
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        let base = config.url.trim_end_matches('/').to_owned();
        let (major, label) = server_version(&http, &base).await?;
        let rpc = json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {
            "service": "common", "method": "authenticate",
            "args": [config.database, config.login, config.api_key.expose(), {}]}});
        let answer: Value = http
            .post(format!("{base}/jsonrpc"))
            .json(&rpc)
            .send()
            .await
            .map_err(|_| ConnectError::Unreachable(base.clone()))?
            .json()
            .await
            .map_err(|_| ConnectError::NotOdoo(base.clone()))?;
        if answer.get("error").is_some() {
            let (name, message) = exception(&answer);
            return Err(
                if name.starts_with("psycopg2") || message.contains("does not exist") {
                    ConnectError::UnknownDatabase(config.database.clone())
                } else if name == "odoo.exceptions.AccessDenied" {
                    ConnectError::BadCredentials
                } else {
                    ConnectError::Server(format!("{name}: {message}"))
                },
            );
        }
        let uid = match answer.get("result") {
            Some(Value::Number(n)) => n.as_i64().ok_or(ConnectError::BadCredentials)?,
            _ => return Err(ConnectError::BadCredentials),
        };
        Ok(Self {
            http,
            config: OdooConfig {
                url: base,
                ..config
            },
            uid,
            protocol: if major >= 19 {
                Protocol::Json2
            } else {
                Protocol::JsonRpc
            },
            major,
            version: label,
            limiter,
            retry: RetryPolicy::default(),
            metrics,
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn uid(&self) -> i64 {
        self.uid
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn major(&self) -> u64 {
        self.major
    }

    /// One call, no retry.
    async fn once(
        &self,
        model: &str,
        method: &str,
        ids: Option<&[i64]>,
        named: &Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        self.limiter.acquire().await;
        let operation: &'static str = match method {
            "search_read" => "search_read",
            "search" => "search",
            "read" => "read",
            "create" => "create",
            "write" => "write",
            "message_post" => "message_post",
            _ => "call",
        };
        let request = match self.protocol {
            Protocol::JsonRpc => {
                let args: Vec<Value> = ids.map(|i| vec![json!(i)]).unwrap_or_default();
                let body = json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {
                    "service": "object", "method": "execute_kw",
                    "args": [self.config.database, self.uid, self.config.api_key.expose(),
                             model, method, args, named]}});
                self.http
                    .post(format!("{}/jsonrpc", self.config.url))
                    .json(&body)
            }
            Protocol::Json2 => {
                let mut body = named.clone();
                if let Some(ids) = ids {
                    body.insert("ids".into(), json!(ids));
                }
                self.http
                    .post(format!("{}/json/2/{model}/{method}", self.config.url))
                    .bearer_auth(self.config.api_key.expose())
                    .header("X-Odoo-Database", &self.config.database)
                    .json(&body)
            }
        };
        let fail = |kind: ErrorKind, status: Option<u16>, message: String| ProviderError {
            kind,
            provider: "odoo",
            operation,
            status,
            message,
        };
        let labels = |status: &'static str| RequestLabels {
            provider: "odoo",
            object: model_label(model),
            verb: "POST",
            status,
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .count_call(labels("error"), Some((ErrorKind::Transient, operation)));
                return Err(fail(
                    ErrorKind::Transient,
                    None,
                    e.without_url().to_string(),
                ));
            }
        };
        let status = response.status().as_u16();
        let wait = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_str(&text).ok();
        let error = match (&body, status) {
            (Some(b), 200..=299) if b.get("error").is_none() => None,
            (Some(b), _) if status != 429 && status < 500 || b.get("error").is_some() => {
                let (name, message) = exception(b);
                let kind = if (200..300).contains(&status) || status == 422 || status == 404 {
                    kind_of(&name)
                } else {
                    ErrorKind::from_status(status, wait)
                };
                Some((kind, format!("{name}: {message}")))
            }
            // A success that cannot be read (cut off, timed out): try again.
            _ if (200..300).contains(&status) => {
                Some((ErrorKind::Transient, "an unreadable answer".to_owned()))
            }
            _ => Some((
                ErrorKind::from_status(status, wait),
                text.chars().take(200).collect(),
            )),
        };
        if let Some((kind, message)) = error {
            if let ErrorKind::RateLimited { retry_after } = kind {
                self.limiter
                    .pause(retry_after.unwrap_or(Duration::from_secs(1)));
            }
            self.metrics
                .count_call(labels(status_label(status)), Some((kind, operation)));
            return Err(fail(kind, Some(status), message));
        }
        self.metrics.count_call(labels(status_label(status)), None);
        let body = body.unwrap_or(Value::Null);
        Ok(match self.protocol {
            Protocol::JsonRpc => body.get("result").cloned().unwrap_or(Value::Null),
            Protocol::Json2 => body,
        })
    }

    /// A model method, sent once (for writes whose failure may hide a success).
    pub async fn call_once(
        &self,
        model: &str,
        method: &str,
        ids: Option<&[i64]>,
        named: Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        self.once(model, method, ids, &named).await
    }

    /// A model method with named arguments (and the records it runs on), retried by
    /// error kind.
    pub async fn call(
        &self,
        model: &str,
        method: &str,
        ids: Option<&[i64]>,
        named: Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        self.retry
            .run("call", || self.once(model, method, ids, &named))
            .await
    }

    /// `search_read` with archived records included.
    pub async fn search_read(
        &self,
        model: &str,
        domain: Value,
        fields: &[&str],
        order: &str,
        limit: usize,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut named = Map::new();
        named.insert("domain".into(), domain);
        named.insert("fields".into(), json!(fields));
        named.insert("order".into(), json!(order));
        named.insert("limit".into(), json!(limit));
        named.insert("context".into(), json!({"active_test": false}));
        match self.call(model, "search_read", None, named).await? {
            Value::Array(rows) => Ok(rows),
            other => Err(ProviderError {
                kind: ErrorKind::Transient,
                provider: "odoo",
                operation: "search_read",
                status: None,
                message: format!("search_read answered {}", kind_name(&other)),
            }),
        }
    }

    /// Every id of `model` matching `domain`, archived records included.
    pub async fn search_ids(&self, model: &str, domain: Value) -> Result<Vec<i64>, ProviderError> {
        let mut named = Map::new();
        named.insert("domain".into(), domain);
        named.insert("context".into(), json!({"active_test": false}));
        let answer = self.call(model, "search", None, named).await?;
        match answer.as_array() {
            Some(ids) => Ok(ids.iter().filter_map(Value::as_i64).collect()),
            // Never an empty set by mistake: a delete sweep would trust it.
            None => Err(ProviderError {
                kind: ErrorKind::Transient,
                provider: "odoo",
                operation: "search",
                status: None,
                message: format!("search answered {}", kind_name(&answer)),
            }),
        }
    }
}

/// The server's major version and label: `/web/version`, else the JSON-RPC route
/// `/web/webclient/version_info` that every Odoo has.
async fn server_version(http: &reqwest::Client, base: &str) -> Result<(u64, String), ConnectError> {
    let unreachable = || ConnectError::Unreachable(base.to_owned());
    let plain = match http.get(format!("{base}/web/version")).send().await {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        Ok(_) => None,
        Err(_) => return Err(unreachable()),
    };
    let info = match plain {
        Some(v) if v.pointer("/version_info/0").is_some() => {
            (v["version_info"].clone(), v.get("version").cloned())
        }
        _ => {
            let rpc = json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {}});
            let answer: Value = http
                .post(format!("{base}/web/webclient/version_info"))
                .json(&rpc)
                .send()
                .await
                .map_err(|_| unreachable())?
                .json()
                .await
                .map_err(|_| ConnectError::NotOdoo(base.to_owned()))?;
            let result = answer.get("result").cloned().unwrap_or(Value::Null);
            (
                result["server_version_info"].clone(),
                result.get("server_version").cloned(),
            )
        }
    };
    let major = info
        .0
        .get(0)
        .and_then(major_version)
        .ok_or_else(|| ConnectError::NotOdoo(base.to_owned()))?;
    let label = info
        .1
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| major.to_string());
    Ok((major, label))
}

/// The major version in the first place of Odoo's `version_info`: a number (`17`),
/// or on Odoo Online's releases between majors the series' name (`"saas~18"`).
fn major_version(first: &Value) -> Option<u64> {
    match first {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.strip_prefix("saas~")?.split('.').next()?.parse().ok(),
        _ => None,
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odoo_exceptions_are_classified() {
        let rpc = json!({"error": {"code": 200, "message": "Odoo Server Error",
            "data": {"name": "odoo.exceptions.AccessDenied", "message": "Access Denied"}}});
        assert_eq!(exception(&rpc).0, "odoo.exceptions.AccessDenied");
        assert_eq!(kind_of(&exception(&rpc).0), ErrorKind::Unauthorized);
        let json2 = json!({"name": "odoo.exceptions.AccessError", "message": "no"});
        assert_eq!(kind_of(&exception(&json2).0), ErrorKind::Rejected);
        assert!(kind_of("odoo.exceptions.SomethingNew").retryable());
    }

    #[test]
    fn major_versions_are_read_from_numbered_and_saas_releases() {
        assert_eq!(major_version(&json!(17)), Some(17));
        assert_eq!(major_version(&json!("saas~18")), Some(18));
        assert_eq!(major_version(&json!("saas~17.4")), Some(17));
        for not_odoo in [json!("18"), json!("saas~"), json!(null), json!(-1)] {
            assert_eq!(major_version(&not_odoo), None, "{not_odoo}");
        }
    }
}
