//! Retry by error kind, shared by every provider client: 429s after `Retry-After`
//! (or the backoff, whichever is longer), transient failures with exponential backoff
//! and jitter (backon), nothing else.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

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
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.min_delay)
                    .with_max_delay(self.max_delay)
                    .with_max_times(self.max_attempts)
                    .with_jitter(),
            )
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
