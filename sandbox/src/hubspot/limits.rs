//! HubSpot's rate limits: a rolling 10-second window per portal, and a daily cap for
//! private apps only (calls with an OAuth token of a public app have none), reported in
//! `X-HubSpot-RateLimit-*` headers; search has its own per-second limit.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
struct Windows {
    ten_second: VecDeque<Instant>,
    search: VecDeque<Instant>,
    day_started: Instant,
    day_used: u64,
}

/// The limits of one portal.
#[derive(Debug)]
pub struct Limits {
    pub per_ten_seconds: u32,
    /// The daily cap, and with it the `-Daily*` headers; `None` for OAuth apps.
    pub per_day: Option<u64>,
    pub search_per_second: u32,
    windows: Mutex<Windows>,
}

/// HubSpot's 429 body.
pub fn too_many(policy: &str, message: &str) -> Response {
    let body = json!({
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "policyName": policy,
    });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

/// The 429 of a fault-injected storm.
pub fn storm() -> Response {
    too_many(
        "TEN_SECONDLY_ROLLING",
        "You have reached your ten_secondly_rolling limit.",
    )
}

fn trim(q: &mut VecDeque<Instant>, now: Instant, span: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= span) {
        q.pop_front();
    }
}

impl Limits {
    pub fn new(per_ten_seconds: u32, per_day: Option<u64>, search_per_second: u32) -> Self {
        Self {
            per_ten_seconds,
            per_day,
            search_per_second,
            windows: Mutex::new(Windows {
                ten_second: VecDeque::new(),
                search: VecDeque::new(),
                day_started: Instant::now(),
                day_used: 0,
            }),
        }
    }

    /// Counts one request; answers the headers to add, or HubSpot's 429.
    pub fn admit(&self, search: bool) -> Result<HeaderMap, Response> {
        let now = Instant::now();
        let mut w = self.windows.lock().expect("limits lock");
        if now.duration_since(w.day_started) >= Duration::from_secs(86_400) {
            w.day_started = now;
            w.day_used = 0;
        }
        trim(&mut w.ten_second, now, Duration::from_secs(10));
        trim(&mut w.search, now, Duration::from_secs(1));
        if self.per_day.is_some_and(|cap| w.day_used >= cap) {
            return Err(too_many("DAILY", "You have reached your daily limit."));
        }
        if w.ten_second.len() >= self.per_ten_seconds as usize {
            return Err(too_many(
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
            ));
        }
        if search && w.search.len() >= self.search_per_second as usize {
            return Err(too_many(
                "SECONDLY",
                "You have reached your secondly limit.",
            ));
        }
        w.ten_second.push_back(now);
        if search {
            w.search.push_back(now);
        }
        w.day_used += 1;
        let last_second = w
            .ten_second
            .iter()
            .filter(|t| now.duration_since(**t) < Duration::from_secs(1))
            .count() as u64;
        let secondly = u64::from(self.per_ten_seconds / 10).max(1);
        let mut h = HeaderMap::new();
        let mut set = |name: &'static str, v: u64| {
            h.insert(name, HeaderValue::from(v));
        };
        if let Some(cap) = self.per_day {
            set("x-hubspot-ratelimit-daily", cap);
            set(
                "x-hubspot-ratelimit-daily-remaining",
                cap.saturating_sub(w.day_used),
            );
        }
        set("x-hubspot-ratelimit-max", u64::from(self.per_ten_seconds));
        set(
            "x-hubspot-ratelimit-remaining",
            u64::from(self.per_ten_seconds).saturating_sub(w.ten_second.len() as u64),
        );
        set("x-hubspot-ratelimit-interval-milliseconds", 10_000);
        set("x-hubspot-ratelimit-secondly", secondly);
        set(
            "x-hubspot-ratelimit-secondly-remaining",
            secondly.saturating_sub(last_second),
        );
        Ok(h)
    }
}
