//! Retry by error kind, shared by every provider client: 429s after `Retry-After`
//! (or the backoff, whichever is longer), transient failures with exponential backoff
//! and jitter (backon), nothing else.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

use crate::error::{ErrorKind, ProviderError};

/// How a client retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_attempts: 6,
        }
    }
}

impl RetryPolicy {
    fn schedule(&self, times: usize) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_max_times(times)
            .with_jitter()
    }

    /// The delay before retry number `retry` (from 1): doubling from `min_delay` up to
    /// `max_delay`, with jitter so that calls failed together spread out.
    pub fn delay(&self, retry: usize) -> Duration {
        let retry = retry.max(1);
        self.schedule(retry)
            .build()
            .nth(retry - 1)
            .unwrap_or(self.max_delay)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts run out.
    pub async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        attempt: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        attempt
            .retry(self.schedule(self.max_attempts))
            .when(|e: &ProviderError| e.kind.retryable())
            .adjust(|e: &ProviderError, delay| match e.kind {
                ErrorKind::RateLimited {
                    retry_after: Some(wait),
                } => delay.map(|d| d.max(wait)),
                _ => delay,
            })
            .notify(|e: &ProviderError, after| {
                tracing::debug!(
                    provider = e.provider,
                    operation,
                    kind = e.kind.label(),
                    ?after,
                    "retrying provider call"
                );
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let policy = RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            max_attempts: 10,
        };
        for retry in 1..=8 {
            let base = Duration::from_secs(1 << (retry - 1)).min(Duration::from_secs(10));
            let d = policy.delay(retry);
            // backon adds up to one base delay of jitter.
            assert!(d >= base && d <= base * 2, "retry {retry}: {d:?}");
        }
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.delay(3)).collect();
        assert!(spread.len() > 1, "jitter spreads retries");
    }
}
