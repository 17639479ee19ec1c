//! Client-side rate limiting per connection: a token bucket at `CRM_SYNC_RPS`, and a
//! pause when the provider's own headers say its budget is spent.

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
}

/// A token bucket: `rate` requests a second on average, bursts of up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
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
        }
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

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Stops every request for `for_how_long` (a 429's `Retry-After`, or a budget the
    /// provider reports as spent).
    pub fn pause(&self, for_how_long: Duration) {
        let until = Instant::now() + for_how_long;
        let mut b = self.bucket.lock().expect("rate limiter lock");
        if b.paused_until.is_none_or(|u| u < until) {
            b.paused_until = Some(until);
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
