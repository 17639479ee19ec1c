//! OAuth `state`: signed, expiring, bound to a workspace and a provider, and good
//! once (its nonce is consumed in Postgres).
//!
//! Form: `base64url(JSON claims) "." base64url(HMAC-SHA256(key, first part))`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;

/// What a state vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "w")]
    pub workspace: String,
    #[serde(rename = "p")]
    pub provider: String,
    /// Unix seconds.
    #[serde(rename = "e")]
    pub expires: i64,
}

/// Why a state was refused. Safe to show the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the OAuth state is malformed")]
    Malformed,
    #[error("the OAuth state's signature does not match")]
    Forged,
    #[error("the OAuth state has expired; start the connection again")]
    Expired,
    #[error("the OAuth state was issued for another provider")]
    WrongProvider,
    #[error("the OAuth state was already used; start the connection again")]
    Used,
}

fn mac(key: &[u8; 32], payload: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    m.update(payload.as_bytes());
    m
}

pub fn sign(key: &[u8; 32], claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let tag = URL_SAFE_NO_PAD.encode(mac(key, &payload).finalize().into_bytes());
    format!("{payload}.{tag}")
}

/// Checks signature (constant time), provider and expiry; not yet single use.
pub fn verify(key: &[u8; 32], token: &str, provider: &str, now: i64) -> Result<Claims, StateError> {
    let (payload, tag) = token.split_once('.').ok_or(StateError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| StateError::Malformed)?;
    mac(key, payload)
        .verify_slice(&tag)
        .map_err(|_| StateError::Forged)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| StateError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| StateError::Malformed)?;
    if claims.provider != provider {
        return Err(StateError::WrongProvider);
    }
    if claims.expires <= now {
        return Err(StateError::Expired);
    }
    Ok(claims)
}

/// Records a newly issued state's nonce.
pub async fn remember(pool: &PgPool, claims: &Claims) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO crm_oauth_states (nonce, workspace_id, provider, expires_at)
         VALUES ($1, $2, $3, to_timestamp($4))",
    )
    .bind(&claims.nonce)
    .bind(&claims.workspace)
    .bind(&claims.provider)
    .bind(claims.expires as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Uses the state's nonce up: true once, false ever after (or when unknown).
pub async fn consume(pool: &PgPool, claims: &Claims) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE crm_oauth_states SET used_at = now()
         WHERE nonce = $1 AND workspace_id = $2 AND provider = $3
           AND used_at IS NULL AND expires_at > now()",
    )
    .bind(&claims.nonce)
    .bind(&claims.workspace)
    .bind(&claims.provider)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            nonce: "n1".into(),
            workspace: "acme".into(),
            provider: "hubspot".into(),
            expires: 1_000,
        }
    }

    #[test]
    fn a_signed_state_verifies_until_it_expires() {
        let key = [7u8; 32];
        let token = sign(&key, &claims());
        assert_eq!(verify(&key, &token, "hubspot", 999), Ok(claims()));
        assert_eq!(
            verify(&key, &token, "hubspot", 1_000),
            Err(StateError::Expired)
        );
        assert_eq!(
            verify(&key, &token, "zoho", 999),
            Err(StateError::WrongProvider)
        );
    }

    #[test]
    fn forged_and_malformed_states_are_refused() {
        let key = [7u8; 32];
        let token = sign(&key, &claims());
        assert_eq!(
            verify(&[8u8; 32], &token, "hubspot", 0),
            Err(StateError::Forged)
        );
        let (payload, tag) = token.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(br#"{"n":"n1","w":"evil","p":"hubspot","e":9999}"#);
        assert_eq!(
            verify(&key, &format!("{other}.{tag}"), "hubspot", 0),
            Err(StateError::Forged)
        );
        assert_eq!(
            verify(&key, payload, "hubspot", 0),
            Err(StateError::Malformed)
        );
        assert_eq!(
            verify(&key, "a.b!", "hubspot", 0),
            Err(StateError::Malformed)
        );
    }
}
