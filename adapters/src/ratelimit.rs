//! Client-side rate limiting per connection: a token bucket at `CRM_SYNC_RPS`, and a
//! pause when the provider's own headers say its budget is spent.
//!
//! A bucket kept in one process lets N processes send N times the allowance. A
//! [`SharedBudget`] (the engine keeps one in Postgres) holds the connection's allowance
//! for every process at once; the local bucket stays in front of it, so a process never
//! exceeds the allowance on its own, and carries on alone while the shared budget
//! cannot be reached.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Set when the provider said to stop until then.
    paused_until: Option<Instant>,
}

/// A connection's allowance with a provider: `rps` requests a second on average and
/// at most `burst` at once (`CRM_SYNC_RPS`, `CRM_SYNC_BURST`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub rps: f64,
    pub burst: f64,
    /// HubSpot's search endpoints' own limit per connection (requests a second).
    pub search_rps: f64,
}

impl RateLimits {
    /// A fresh bucket, full, for one connection.
    pub fn limiter(self) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(self.rps, self.burst))
    }

    /// A bucket for one connection whose allowance `budget` shares with every process
    /// under `key`.
    pub fn shared_limiter(self, budget: Arc<dyn SharedBudget>, key: String) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(self.rps, self.burst).shared(budget, key))
    }
}

/// A future a [`SharedBudget`] returns.
pub type BudgetFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A connection's allowance shared by every process that calls the provider for it.
pub trait SharedBudget: Send + Sync {
    /// Takes a request's slot under `key` at `rate` a second and bursts of `burst`: how
    /// long the request must wait for it.
    fn reserve<'a>(&'a self, key: &'a str, rate: f64, burst: f64) -> BudgetFuture<'a, Duration>;
    /// Holds every request under `key` for `for_how_long`.
    fn pause<'a>(
        &'a self,
        key: &'a str,
        rate: f64,
        burst: f64,
        for_how_long: Duration,
    ) -> BudgetFuture<'a, ()>;
}

/// How long a request waits for the shared budget's answer before the local bucket
/// decides alone.
const SHARED_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the local bucket decides alone after the shared budget failed or was slow,
/// before it is asked again (so an outage costs one timeout, not one per request).
const SHARED_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest pause shared with other processes: a stored pause outlives the
/// process that took it, so a provider's outsized `Retry-After` must not hold every
/// process for long.
const MAX_SHARED_PAUSE: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Shared {
    budget: Arc<dyn SharedBudget>,
    key: String,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("key", &self.key).finish()
    }
}

/// A token bucket: `rate` requests a second on average, bursts of up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    shared: Option<Shared>,
    /// Set while the shared budget is not asked (it failed or was slow).
    shared_down_until: Mutex<Option<Instant>>,
    /// How long a reservation may take before the local bucket decides alone.
    shared_timeout: Duration,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        let rate = rate.max(0.001);
        let burst = burst.max(1.0);
        Self {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
                paused_until: None,
            }),
            shared: None,
            shared_down_until: Mutex::new(None),
            shared_timeout: SHARED_TIMEOUT,
        }
    }

    /// Waits up to `timeout` for the shared budget's answer (a second by default).
    pub fn with_shared_timeout(mut self, timeout: Duration) -> Self {
        self.shared_timeout = timeout;
        self
    }

    /// The same allowance, shared through `budget` with every limiter under `key`.
    pub fn shared(mut self, budget: Arc<dyn SharedBudget>, key: String) -> Self {
        self.shared = Some(Shared { budget, key });
        self
    }

    /// How long the caller must wait before its request; takes the token.
    fn reserve(&self) -> Duration {
        let now = Instant::now();
        let mut b = self.bucket.lock().expect("rate limiter lock");
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        b.tokens -= 1.0;
        let mut wait = if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.rate)
        };
        if let Some(until) = b.paused_until {
            if until > now {
                wait = wait.max(until - now);
            } else {
                b.paused_until = None;
            }
        }
        wait
    }

    /// Waits for a token: the local bucket's and, where the allowance is shared, the
    /// shared budget's (both taken now, so the later of the two is the request's time).
    pub async fn acquire(&self) {
        let start = Instant::now();
        let mut wait = self.reserve();
        if let Some(shared) = self.shared.as_ref().filter(|_| self.shared_up(start)) {
            let reserved = tokio::time::timeout(
                self.shared_timeout,
                shared.budget.reserve(&shared.key, self.rate, self.burst),
            )
            .await;
            match reserved {
                // Never longer than the longest shared pause (a slot far ahead is left
                // by reservations given up, or a pause stored before the cap).
                Ok(Ok(w)) => wait = wait.max(w.min(MAX_SHARED_PAUSE) + start.elapsed()),
                Ok(Err(e)) => self.shared_down(&shared.key, &e),
                Err(_) => self.shared_down(&shared.key, "no answer in time"),
            }
        }
        let until = start + wait;
        if until > Instant::now() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Whether the shared budget is asked now.
    fn shared_up(&self, now: Instant) -> bool {
        let down = self.shared_down_until.lock().expect("rate limiter lock");
        down.is_none_or(|until| until <= now)
    }

    /// The shared budget failed: the local bucket decides alone for a while.
    fn shared_down(&self, key: &str, why: &str) {
        let mut down = self.shared_down_until.lock().expect("rate limiter lock");
        let now = Instant::now();
        if down.is_none_or(|until| until <= now) {
            tracing::warn!(budget = key, reason = why, after = ?SHARED_RETRY_AFTER,
                "shared rate budget unavailable: this process keeps to the allowance alone until it is asked again");
        }
        *down = Some(now + SHARED_RETRY_AFTER);
    }

    /// Stops every request for `for_how_long` (a 429's `Retry-After`, or a budget the
    /// provider reports as spent), in every process sharing the allowance.
    pub fn pause(&self, for_how_long: Duration) {
        let until = Instant::now() + for_how_long;
        {
            let mut b = self.bucket.lock().expect("rate limiter lock");
            if b.paused_until.is_none_or(|u| u < until) {
                b.paused_until = Some(until);
            }
        }
        if let Some(shared) = self.shared.clone() {
            let (rate, burst) = (self.rate, self.burst);
            let shared_pause = for_how_long.min(MAX_SHARED_PAUSE);
            tokio::spawn(async move {
                let paused = tokio::time::timeout(
                    SHARED_TIMEOUT * 5,
                    shared.budget.pause(&shared.key, rate, burst, shared_pause),
                )
                .await;
                if !matches!(paused, Ok(Ok(()))) {
                    tracing::warn!(budget = shared.key, "a pause was not shared: other processes keep their pace until the provider stops them too");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(5.0, 2.0);
        let start = Instant::now();
        for _ in 0..7 {
            limiter.acquire().await;
        }
        // 2 at once, then 5 more at 5/s: one second of virtual time.
        assert_eq!(start.elapsed().as_millis(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request() {
        let limiter = RateLimiter::new(100.0, 10.0);
        limiter.pause(Duration::from_secs(3));
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
