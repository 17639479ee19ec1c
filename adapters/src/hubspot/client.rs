//! The HubSpot API client: objects v3 (list, batch read, search, create) with
//! per-connection rate limiting, HubSpot's budget headers honoured, and retries by
//! error kind with exponential backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{retry_after, ErrorKind, ProviderError};
use crate::ratelimit::RateLimiter;
use crate::telemetry::{status_label, RequestLabels};
use crate::{Metrics, Secret};

/// One HubSpot object as the API answers it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HsObject {
    pub id: String,
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub archived_at: Option<String>,
}

/// A page of a list or search.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub results: Vec<HsObject>,
    /// The cursor of the next page, if any.
    pub after: Option<String>,
    /// Search only: how many records match in all.
    pub total: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RawPage {
    #[serde(default)]
    results: Vec<HsObject>,
    #[serde(default)]
    paging: Option<Value>,
    #[serde(default)]
    total: Option<u64>,
}

impl From<RawPage> for Page {
    fn from(raw: RawPage) -> Self {
        let after = raw
            .paging
            .as_ref()
            .and_then(|p| p.pointer("/next/after"))
            .and_then(|a| match a {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        Page {
            results: raw.results,
            after,
            total: raw.total,
        }
    }
}

pub use crate::retry::RetryPolicy;

/// A client for one HubSpot connection.
#[derive(Debug, Clone)]
pub struct HubSpotClient {
    http: reqwest::Client,
    base: String,
    token: Arc<tokio::sync::RwLock<Secret<String>>>,
    limiter: Arc<RateLimiter>,
    /// Search's own limit (PROVIDERS.md: about 5 requests a second per account),
    /// on top of the connection's: a burst the general bucket allows would break it.
    search_limiter: Arc<RateLimiter>,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    /// What HubSpot last said was left of its limits.
    budget: Arc<std::sync::Mutex<Option<Budget>>>,
}

/// HubSpot's rate-limit headers as last seen: the 10-second window's remaining
/// requests and size, and the day's remaining requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Budget {
    pub remaining: Option<u64>,
    pub max: Option<u64>,
    pub daily_remaining: Option<u64>,
}

/// Searches a second per connection by default (`CRM_HUBSPOT_SEARCH_RPS`): under
/// HubSpot's ~5/s, whatever else runs.
pub const SEARCH_RPS: f64 = 4.0;

fn object_label(object: &str) -> &'static str {
    match object {
        "contacts" => "contacts",
        "companies" => "companies",
        "deals" => "deals",
        "calls" => "calls",
        "notes" => "notes",
        _ => "other",
    }
}

impl HubSpotClient {
    pub fn new(
        base: impl Into<String>,
        token: Secret<String>,
        limiter: Arc<RateLimiter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            token: Arc::new(tokio::sync::RwLock::new(token)),
            limiter,
            search_limiter: Arc::new(RateLimiter::new(SEARCH_RPS, 1.0)),
            retry: RetryPolicy::default(),
            metrics,
            budget: Arc::default(),
        }
    }

    /// One cheap read (a contact page of one), not retried: whether the token is
    /// good and the API answers, and what is left of the rate limits.
    pub async fn probe(&self) -> Result<Option<Budget>, ProviderError> {
        self.once(
            "probe",
            "contacts",
            reqwest::Method::GET,
            "/crm/v3/objects/contacts?limit=1",
            None,
        )
        .await?;
        Ok(*self.budget.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps searches to `rps` a second (one at a time).
    pub fn with_search_rps(self, rps: f64) -> Self {
        self.with_search_limiter(Arc::new(RateLimiter::new(rps, 1.0)))
    }

    /// Keeps searches to `limiter` (beside the connection's own).
    pub fn with_search_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.search_limiter = limiter;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Replaces the access token (after a refresh).
    pub async fn set_token(&self, token: Secret<String>) {
        *self.token.write().await = token;
    }

    /// One request, no retry: rate limited, measured, classified.
    async fn once(
        &self,
        operation: &'static str,
        object: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        self.limiter.acquire().await;
        // Every attempt, after the connection's bucket (which a 429 pauses): searches
        // released together by a pause still go out at the search pace.
        if operation == "search" {
            self.search_limiter.acquire().await;
        }
        let token = self.token.read().await.expose().clone();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let fail = |kind: ErrorKind, status: Option<u16>, message: String| ProviderError {
            kind,
            provider: "hubspot",
            operation,
            status,
            message,
        };
        let response = request.send().await;
        let verb: &'static str = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            _ => "OTHER",
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.count(object, verb, "error", ErrorKind::Transient, operation);
                return Err(fail(
                    ErrorKind::Transient,
                    None,
                    e.without_url().to_string(),
                ));
            }
        };
        let status = response.status().as_u16();
        self.observe_budget(response.headers());
        let wait = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            self.count(object, verb, status_label(status), ErrorKind::Transient, "");
            if text.is_empty() {
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
        let kind = ErrorKind::from_status(status, wait);
        if let ErrorKind::RateLimited { retry_after } = kind {
            self.limiter
                .pause(retry_after.unwrap_or(Duration::from_secs(1)));
        }
        self.count(object, verb, status_label(status), kind, operation);
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(fail(kind, Some(status), message))
    }

    fn count(
        &self,
        object: &str,
        verb: &'static str,
        status: &'static str,
        kind: ErrorKind,
        operation: &'static str,
    ) {
        let call = RequestLabels {
            provider: "hubspot",
            object: object_label(object),
            verb,
            status,
        };
        let failed = (!operation.is_empty()).then_some((kind, operation));
        self.metrics.count_call(call, failed);
    }

    /// HubSpot reports what is left of its 10-second window; when nothing is, wait
    /// the window out instead of collecting 429s.
    fn observe_budget(&self, headers: &reqwest::header::HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let budget = Budget {
            remaining: number("x-hubspot-ratelimit-remaining"),
            max: number("x-hubspot-ratelimit-max"),
            daily_remaining: number("x-hubspot-ratelimit-daily-remaining"),
        };
        if budget.remaining.is_some() || budget.daily_remaining.is_some() {
            *self.budget.lock().unwrap_or_else(|e| e.into_inner()) = Some(budget);
        }
        if number("x-hubspot-ratelimit-remaining") == Some(0) {
            let window = number("x-hubspot-ratelimit-interval-milliseconds").unwrap_or(10_000);
            self.limiter
                .pause(Duration::from_millis(window.min(10_000)));
        }
        if number("x-hubspot-ratelimit-daily-remaining") == Some(0) {
            self.limiter.pause(Duration::from_secs(60));
        }
    }

    /// A request retried by kind: 429 after `Retry-After`, transient failures with
    /// exponential backoff and jitter; nothing else.
    async fn call(
        &self,
        operation: &'static str,
        object: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        self.retry
            .run(operation, || {
                self.once(operation, object, method.clone(), path, body)
            })
            .await
    }

    /// One page of `GET /crm/v3/objects/{object}`.
    pub async fn list(
        &self,
        object: &str,
        after: Option<&str>,
        properties: &[&str],
        archived: bool,
    ) -> Result<Page, ProviderError> {
        let mut path = format!(
            "/crm/v3/objects/{object}?limit=100&archived={archived}&properties={}",
            properties.join(",")
        );
        if let Some(after) = after {
            path.push_str("&after=");
            path.push_str(after);
        }
        let v = self
            .call("list", object, reqwest::Method::GET, &path, None)
            .await?;
        parse_page(v, "list")
    }

    /// `POST …/batch/read` for up to 100 ids; ids HubSpot does not know are left out
    /// (a 207 answer), not an error.
    pub async fn batch_read(
        &self,
        object: &str,
        ids: &[String],
        properties: &[&str],
    ) -> Result<Vec<HsObject>, ProviderError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let body = json!({"inputs": inputs, "properties": properties});
            let path = format!("/crm/v3/objects/{object}/batch/read");
            let v = self
                .call(
                    "batch_read",
                    object,
                    reqwest::Method::POST,
                    &path,
                    Some(&body),
                )
                .await?;
            out.extend(parse_page(v, "batch_read")?.results);
        }
        Ok(out)
    }

    /// The ids each of `ids` (of `from`) is linked to among `to` records, through
    /// `POST /crm/v4/associations/{from}/{to}/batch/read`; every asked id is present.
    pub async fn associations(
        &self,
        from: &str,
        to: &str,
        ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ProviderError> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> =
            ids.iter().map(|id| (id.clone(), Vec::new())).collect();
        for chunk in ids.chunks(100) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let path = format!("/crm/v4/associations/{from}/{to}/batch/read");
            let v = self
                .call(
                    "associations",
                    from,
                    reqwest::Method::POST,
                    &path,
                    Some(&json!({"inputs": inputs})),
                )
                .await?;
            for result in v
                .get("results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(from_id) = result.pointer("/from/id").map(id_text) else {
                    continue;
                };
                let links = out.entry(from_id).or_default();
                for to in result
                    .get("to")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = to.get("toObjectId").map(id_text) {
                        links.push(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// One page of `POST …/search`.
    pub async fn search(&self, object: &str, request: &Value) -> Result<Page, ProviderError> {
        let path = format!("/crm/v3/objects/{object}/search");
        let v = self
            .call(
                "search",
                object,
                reqwest::Method::POST,
                &path,
                Some(request),
            )
            .await?;
        parse_page(v, "search")
    }

    /// `POST /crm/v3/objects/{object}`, sent once: a create that failed ambiguously
    /// (timeout, 5xx) may have happened, so its caller looks before trying again.
    pub async fn create(&self, object: &str, body: &Value) -> Result<HsObject, ProviderError> {
        let path = format!("/crm/v3/objects/{object}");
        let v = self
            .once("create", object, reqwest::Method::POST, &path, Some(body))
            .await?;
        serde_json::from_value(v).map_err(|e| ProviderError {
            kind: ErrorKind::Transient,
            provider: "hubspot",
            operation: "create",
            status: None,
            message: format!("unreadable object: {e}"),
        })
    }
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_page(v: Value, operation: &'static str) -> Result<Page, ProviderError> {
    serde_json::from_value::<RawPage>(v)
        .map(Page::from)
        .map_err(|e| ProviderError {
            kind: ErrorKind::Transient,
            provider: "hubspot",
            operation,
            status: None,
            message: format!("unreadable page: {e}"),
        })
}
