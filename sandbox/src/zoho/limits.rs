//! API credits and concurrency.
//!
//! Credits are the org's, over a rolling 24 hours: a call costs 1; insert, update,
//! upsert and delete cost 1 per 10 records; COQL costs 1, 2 or 3 by its LIMIT (≤ 200,
//! ≤ 1,000, ≤ 2,000), roughly as Zoho's credit table says. Concurrency counts the
//! requests in flight per access token. Over either: 429 `TOO_MANY_REQUESTS` (Zoho
//! sends no `Retry-After`). A request refused for auth or concurrency costs nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::error::ApiError;
use super::store::now_ms;

const WINDOW_MS: i64 = 24 * 3_600_000;

/// The org's limits and what is in use.
#[derive(Debug)]
pub struct Limits {
    credits_per_day: AtomicU64,
    /// Requests refused for want of credits.
    credit_refusals: AtomicU64,
    concurrency: usize,
    spent: Mutex<VecDeque<(i64, u64)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    hold: watch::Sender<bool>,
}

/// A place among the requests in flight for one token, given back on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    token: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.limits.in_flight();
        if let Some(n) = in_flight.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.token);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Credits for a write of `records` records.
pub fn write_cost(records: usize) -> u64 {
    records.div_ceil(10).max(1) as u64
}

/// Credits for a COQL query with this LIMIT.
pub fn coql_cost(limit: usize) -> u64 {
    match limit {
        0..=200 => 1,
        201..=1000 => 2,
        _ => 3,
    }
}

impl Limits {
    pub fn new(credits_per_day: u64, concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            credits_per_day: AtomicU64::new(credits_per_day),
            credit_refusals: AtomicU64::new(0),
            concurrency: concurrency.max(1),
            spent: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(HashMap::new()),
            hold: watch::Sender::new(false),
        })
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        lock(&self.in_flight)
    }

    /// Takes a place for `token`, or 429 when it has `concurrency` requests running.
    pub fn enter(self: &Arc<Self>, token: &str) -> Result<Slot, ApiError> {
        let mut in_flight = self.in_flight();
        let n = in_flight.entry(token.to_owned()).or_insert(0);
        if *n >= self.concurrency {
            return Err(ApiError::too_many_requests(
                "concurrency limit exceeded: too many requests are running for this token",
            ));
        }
        *n += 1;
        Ok(Slot {
            limits: self.clone(),
            token: token.to_owned(),
        })
    }

    fn used_locked(spent: &mut VecDeque<(i64, u64)>) -> u64 {
        let since = now_ms() - WINDOW_MS;
        while spent.front().is_some_and(|(t, _)| *t <= since) {
            spent.pop_front();
        }
        spent.iter().map(|(_, c)| c).sum()
    }

    /// Spends `credits`, or 429 when the last 24 hours leave too few.
    pub fn charge(&self, credits: u64) -> Result<(), ApiError> {
        if credits == 0 {
            return Ok(());
        }
        let mut spent = lock(&self.spent);
        let used = Self::used_locked(&mut spent);
        if used + credits > self.credits_per_day.load(Ordering::Relaxed) {
            self.credit_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::too_many_requests(
                "You have reached the API credit limit of your edition for the last 24 hours",
            ));
        }
        spent.push_back((now_ms(), credits));
        Ok(())
    }

    pub fn credits_used(&self) -> u64 {
        Self::used_locked(&mut lock(&self.spent))
    }

    pub fn credits_remaining(&self) -> u64 {
        self.credits_per_day
            .load(Ordering::Relaxed)
            .saturating_sub(self.credits_used())
    }

    pub fn credit_refusals(&self) -> u64 {
        self.credit_refusals.load(Ordering::Relaxed)
    }

    /// The org's edition changed: `credits` a day from now on.
    pub fn set_credits_per_day(&self, credits: u64) {
        self.credits_per_day.store(credits, Ordering::Relaxed);
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight().values().sum()
    }

    /// While held, authorised requests wait (keeping their place) before they run.
    pub fn set_hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    pub async fn wait_while_held(&self) {
        let mut rx = self.hold.subscribe();
        let _ = rx.wait_for(|held| !*held).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_run_out_and_places_come_back() {
        let limits = Limits::new(5, 2);
        limits.charge(3).unwrap();
        assert_eq!(limits.charge(3).unwrap_err().code, "TOO_MANY_REQUESTS");
        limits.charge(2).unwrap();
        assert_eq!(limits.credits_remaining(), 0);
        let a = limits.enter("t").unwrap();
        let _b = limits.enter("t").unwrap();
        assert!(limits.enter("t").is_err());
        assert!(limits.enter("other").is_ok());
        drop(a);
        assert!(limits.enter("t").is_ok());
        assert_eq!(write_cost(1), 1);
        assert_eq!(write_cost(100), 10);
        assert_eq!(coql_cost(2000), 3);
    }
}
