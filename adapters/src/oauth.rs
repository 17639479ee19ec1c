//! What the OAuth providers share: the tokens a grant gives and why a grant fails.

use serde::Deserialize;

use crate::Secret;

/// Tokens from a grant.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenSet {
    pub access_token: Secret<String>,
    #[serde(default)]
    pub refresh_token: Option<Secret<String>>,
    pub expires_in: u64,
}

/// Why a grant failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// The refresh token (or code) is no longer good: the user must connect again.
    #[error("the provider refused the grant ({0}); the connection must be made again")]
    InvalidGrant(String),
    #[error("the provider refused the request: {0}")]
    Rejected(String),
    #[error("the provider could not be reached: {0}")]
    Transient(String),
}
