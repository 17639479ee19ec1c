//! Provider errors with a small kind to match on: retry and dead-letter decisions
//! look at the kind, never at strings.

use std::time::Duration;

/// What kind of failure a provider call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429: wait (`Retry-After` when the provider said) and try again.
    RateLimited { retry_after: Option<Duration> },
    /// 401: the token is missing, expired or revoked.
    Unauthorized,
    /// A 4xx that no retry will fix.
    Rejected,
    /// 408, 5xx (but 501), timeouts and connection failures: worth another try.
    Transient,
    /// 404.
    NotFound,
}

impl ErrorKind {
    /// From an HTTP status (and `Retry-After`), as STYLE.md's retry-by-kind says.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            429 => ErrorKind::RateLimited { retry_after },
            401 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            408 => ErrorKind::Transient,
            501 => ErrorKind::Rejected,
            500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Rejected,
        }
    }

    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::RateLimited { .. } | ErrorKind::Transient)
    }

    /// A low-cardinality label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Transient => "transient",
            ErrorKind::NotFound => "not_found",
        }
    }
}

/// A failed provider call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider} {operation} failed ({}): {message}", kind.label())]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub provider: &'static str,
    pub operation: &'static str,
    pub status: Option<u16>,
    /// The provider's own message, trimmed; never a secret.
    pub message: String,
}

/// Parses `Retry-After` in seconds (the HTTP-date form is rare with these APIs and
/// is treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_and_only_some_are_retried() {
        let cases = [
            (429, true, "rate_limited"),
            (401, false, "unauthorized"),
            (404, false, "not_found"),
            (408, true, "transient"),
            (500, true, "transient"),
            (502, true, "transient"),
            (501, false, "rejected"),
            (400, false, "rejected"),
            (409, false, "rejected"),
        ];
        for (status, retry, label) in cases {
            let kind = ErrorKind::from_status(status, None);
            assert_eq!(kind.retryable(), retry, "{status}");
            assert_eq!(kind.label(), label, "{status}");
        }
    }
}
