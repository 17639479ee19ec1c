//! The Zoho CRM v8 client for one connection: every call on the connection's
//! `api_domain` with `Authorization: Zoho-oauthtoken`, at most `concurrency` requests
//! in flight (Zoho's per-edition limit), a token bucket in front, and retries by
//! error kind (429 `TOO_MANY_REQUESTS`, which carries no `Retry-After`, pauses the
//! bucket and backs off).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tokio::sync::{RwLock, Semaphore};

use crate::error::{retry_after, ErrorKind, ProviderError};
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;
use crate::telemetry::{status_label, RequestLabels};
use crate::{Metrics, Secret};

/// Records a list page may hold (Zoho's maximum).
pub const PER_PAGE: usize = 200;
/// Ids one `GET /{Module}?ids=` may name.
pub const IDS_PER_CALL: usize = 100;
/// Records `page` reaches; past them only `page_token` pages.
pub const DISCRETE_LIMIT: usize = 2_000;

/// A page of a list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub data: Vec<Value>,
    pub more: bool,
    pub next_page_token: Option<String>,
}

/// Which page to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAt<'a> {
    Number(usize),
    Token(&'a str),
}

/// A client for one Zoho connection.
#[derive(Debug, Clone)]
pub struct ZohoClient {
    http: reqwest::Client,
    api_domain: String,
    token: Arc<RwLock<Secret<String>>>,
    limiter: Arc<RateLimiter>,
    in_flight: Arc<Semaphore>,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
}

fn module_label(module: &str) -> &'static str {
    match module {
        "Contacts" => "contacts",
        "Accounts" => "companies",
        "Deals" => "deals",
        "Calls" => "calls",
        "Leads" => "leads",
        _ => "other",
    }
}

fn verb_label(method: &reqwest::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

/// `If-Modified-Since` as Zoho documents it (ISO 8601 with an offset).
pub fn http_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

impl ZohoClient {
    pub fn new(
        api_domain: impl Into<String>,
        token: Secret<String>,
        limiter: Arc<RateLimiter>,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            http,
            api_domain: api_domain.into().trim_end_matches('/').to_owned(),
            token: Arc::new(RwLock::new(token)),
            limiter,
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            retry: RetryPolicy::default(),
            metrics,
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn api_domain(&self) -> &str {
        &self.api_domain
    }

    /// Replaces the access token (after a refresh).
    pub async fn set_token(&self, token: Secret<String>) {
        *self.token.write().await = token;
    }

    /// One request, no retry; `Ok(Value::Null)` for 204.
    async fn once(
        &self,
        operation: &'static str,
        module: &str,
        method: reqwest::Method,
        path: &str,
        since: Option<DateTime<Utc>>,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let _place = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.limiter.acquire().await;
        let token = self.token.read().await.expose().clone();
        let mut request = self
            .http
            .request(method.clone(), format!("{}/crm/v8{path}", self.api_domain))
            .header("Authorization", format!("Zoho-oauthtoken {token}"));
        if let Some(since) = since {
            request = request.header("If-Modified-Since", http_time(since));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let fail = |kind: ErrorKind, status: Option<u16>, message: String| ProviderError {
            kind,
            provider: "zoho",
            operation,
            status,
            message,
        };
        let labels = |status: &'static str| RequestLabels {
            provider: "zoho",
            object: module_label(module),
            verb: verb_label(&method),
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
        if (200..300).contains(&status) {
            self.metrics.count_call(labels(status_label(status)), None);
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| {
                fail(
                    ErrorKind::Transient,
                    Some(status),
                    format!("unreadable answer: {e}"),
                )
            });
        }
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = error
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = match (status, code) {
            (_, "TOO_MANY_REQUESTS") | (429, _) => ErrorKind::RateLimited { retry_after: wait },
            (_, "INVALID_TOKEN" | "AUTHENTICATION_FAILURE") => ErrorKind::Unauthorized,
            _ => ErrorKind::from_status(status, wait),
        };
        if let ErrorKind::RateLimited { retry_after } = kind {
            self.limiter
                .pause(retry_after.unwrap_or(Duration::from_secs(1)));
        }
        self.metrics
            .count_call(labels(status_label(status)), Some((kind, operation)));
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map(|m| format!("{code}: {m}"))
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(fail(kind, Some(status), message))
    }

    async fn call(
        &self,
        operation: &'static str,
        module: &str,
        method: reqwest::Method,
        path: &str,
        since: Option<DateTime<Utc>>,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        self.retry
            .run(operation, || {
                self.once(operation, module, method.clone(), path, since, body)
            })
            .await
    }

    /// One page of `GET /{Module}`: records modified after `since` (all without it),
    /// oldest change first, so a record changed while the list is read moves behind
    /// the reader instead of being skipped.
    pub async fn list(
        &self,
        module: &str,
        fields: &[&str],
        since: Option<DateTime<Utc>>,
        at: PageAt<'_>,
    ) -> Result<ListPage, ProviderError> {
        let mut path = format!(
            "/{module}?fields={}&per_page={PER_PAGE}&sort_by=Modified_Time&sort_order=asc",
            fields.join(",")
        );
        match at {
            PageAt::Number(n) => path.push_str(&format!("&page={n}")),
            PageAt::Token(t) => {
                path.push_str("&page_token=");
                path.push_str(
                    &url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>(),
                );
            }
        }
        let v = self
            .call("list", module, reqwest::Method::GET, &path, since, None)
            .await?;
        Ok(page_of(v))
    }

    /// The live records among `ids` (those deleted are left out).
    pub async fn by_ids(
        &self,
        module: &str,
        ids: &[String],
        fields: &[&str],
    ) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_CALL) {
            let path = format!(
                "/{module}?fields={}&per_page={PER_PAGE}&ids={}",
                fields.join(","),
                chunk.join(",")
            );
            let v = self
                .call("read", module, reqwest::Method::GET, &path, None, None)
                .await?;
            out.extend(page_of(v).data);
        }
        Ok(out)
    }

    /// One page of `GET /{Module}/deleted?type=all`, newest first: deletions after
    /// `since` (all without it).
    pub async fn deleted(
        &self,
        module: &str,
        since: Option<DateTime<Utc>>,
        page: usize,
    ) -> Result<ListPage, ProviderError> {
        let path = format!("/{module}/deleted?type=all&per_page={PER_PAGE}&page={page}");
        let v = self
            .call("deleted", module, reqwest::Method::GET, &path, since, None)
            .await?;
        Ok(page_of(v))
    }

    /// `GET /{Module}/search?criteria=`: the first page of matches (empty for none).
    pub async fn search(&self, module: &str, criteria: &str) -> Result<Vec<Value>, ProviderError> {
        let path = format!(
            "/{module}/search?criteria={}",
            url::form_urlencoded::byte_serialize(criteria.as_bytes()).collect::<String>()
        );
        let v = self
            .call("search", module, reqwest::Method::GET, &path, None, None)
            .await?;
        Ok(page_of(v).data)
    }

    /// The org's id (`GET /org`).
    pub async fn org_id(&self) -> Result<String, ProviderError> {
        let v = self
            .call("org", "org", reqwest::Method::GET, "/org", None, None)
            .await?;
        super::oauth::org_id(&v).ok_or_else(|| ProviderError {
            kind: ErrorKind::Rejected,
            provider: "zoho",
            operation: "org",
            status: None,
            message: "the org answer holds no id".into(),
        })
    }

    /// `POST` (enable) or `PUT` (update) `/actions/watch` with `body`.
    pub async fn watch(&self, enable: bool, body: &Value) -> Result<Value, ProviderError> {
        let method = if enable {
            reqwest::Method::POST
        } else {
            reqwest::Method::PUT
        };
        self.call("watch", "watch", method, "/actions/watch", None, Some(body))
            .await
    }

    /// `POST /{Module}`: creates records; the answer per record as Zoho gives it. Sent
    /// once: after an ambiguous failure the caller looks before trying again.
    pub async fn insert(&self, module: &str, records: &[Value]) -> Result<Value, ProviderError> {
        let body = serde_json::json!({ "data": records });
        self.once(
            "create",
            module,
            reqwest::Method::POST,
            &format!("/{module}"),
            None,
            Some(&body),
        )
        .await
    }
}

fn page_of(v: Value) -> ListPage {
    let data = match v.get("data") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let info = v.get("info");
    ListPage {
        more: info
            .and_then(|i| i.get("more_records"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        next_page_token: info
            .and_then(|i| i.get("next_page_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        data,
    }
}
