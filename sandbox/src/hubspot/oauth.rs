//! OAuth 2.0 as HubSpot runs it: an authorize page (approved at once here), the
//! token endpoint with code and refresh grants, and token introspection.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;

use super::store::now_ms;
use super::HubSpotSandbox;

/// Live tokens of the portal.
#[derive(Debug, Default)]
pub struct Tokens {
    /// access token → expiry (ms).
    pub access: HashMap<String, i64>,
    pub refresh: HashMap<String, ()>,
    /// code → (redirect uri, expiry ms); single use.
    pub codes: HashMap<String, (String, i64)>,
}

fn token(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// How long an expired access token is still recognised (and answered as expired
/// rather than unknown) before it is forgotten.
const EXPIRED_KEPT_MS: i64 = 60 * 60 * 1000;

impl Tokens {
    pub fn issue(&mut self, ttl_ms: i64) -> (String, String) {
        let access = self.mint(ttl_ms);
        let refresh = token("na1-refresh");
        self.refresh.insert(refresh.clone(), ());
        (access, refresh)
    }

    /// A new access token; forgets long-expired ones, so long runs do not grow.
    pub fn mint(&mut self, ttl_ms: i64) -> String {
        let now = now_ms();
        self.purge(now);
        let access = token("CKv1-na1");
        self.access
            .insert(access.clone(), now.saturating_add(ttl_ms));
        access
    }

    /// Drops expired codes, and access tokens expired for over an hour.
    pub fn purge(&mut self, now: i64) {
        self.codes.retain(|_, (_, expiry)| *expiry > now);
        self.access
            .retain(|_, expiry| *expiry > now.saturating_sub(EXPIRED_KEPT_MS));
    }
}

fn error(status: &str, message: &str) -> Response {
    let body = json!({
        "status": status,
        "message": message,
        "correlationId": uuid::Uuid::new_v4().to_string(),
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct AuthorizeQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
}

/// `GET /oauth/authorize`: the user approves at once; back to `redirect_uri` with a
/// single-use code.
pub async fn authorize(
    State(hs): State<Arc<HubSpotSandbox>>,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    if q.client_id.as_deref() != Some(hs.config.client_id.as_str()) {
        return error("BAD_CLIENT_ID", "The client_id is not valid for any app.");
    }
    let (Some(redirect), Some(_scope)) = (q.redirect_uri, q.scope) else {
        return error("BAD_REQUEST", "redirect_uri and scope are required");
    };
    let code = token("code");
    {
        let mut tokens = hs.tokens.lock().expect("tokens lock");
        let now = now_ms();
        tokens.purge(now);
        tokens
            .codes
            .insert(code.clone(), (redirect.clone(), now + 10 * 60 * 1000));
    }
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let mut url = format!("{redirect}{sep}code={code}");
    if let Some(state) = q.state {
        url.push_str("&state=");
        url.push_str(&urlencode(&state));
    }
    Redirect::to(&url).into_response()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    redirect_uri: Option<String>,
    code: Option<String>,
    refresh_token: Option<String>,
}

/// `POST /oauth/v1/token`.
pub async fn token_endpoint(
    State(hs): State<Arc<HubSpotSandbox>>,
    Form(f): Form<TokenForm>,
) -> Response {
    if f.client_id.as_deref() != Some(hs.config.client_id.as_str())
        || !crate::secret_eq(f.client_secret.as_deref(), &hs.config.client_secret)
    {
        return error(
            "BAD_CLIENT_ID",
            "missing or invalid client_id or client_secret",
        );
    }
    let ttl = hs.config.token_ttl.as_millis() as i64;
    let mut tokens = hs.tokens.lock().expect("tokens lock");
    match f.grant_type.as_deref() {
        Some("authorization_code") => {
            let code = f.code.unwrap_or_default();
            match tokens.codes.remove(&code) {
                Some((redirect, expiry))
                    if expiry > now_ms() && Some(&redirect) == f.redirect_uri.as_ref() => {}
                Some(_) => {
                    return error(
                        "BAD_AUTH_CODE",
                        "auth code expired or redirect_uri mismatch",
                    )
                }
                None => return error("BAD_AUTH_CODE", "missing or unknown auth code"),
            }
            let (access, refresh) = tokens.issue(ttl);
            Json(json!({"access_token": access, "refresh_token": refresh, "expires_in": ttl / 1000, "token_type": "bearer"})).into_response()
        }
        Some("refresh_token") => {
            let refresh = f.refresh_token.unwrap_or_default();
            if !tokens.refresh.contains_key(&refresh) {
                // HubSpot's status, plus the OAuth 2.0 error code clients match on.
                let body = json!({
                    "status": "BAD_REFRESH_TOKEN",
                    "message": "missing or unknown refresh token",
                    "error": "invalid_grant",
                    "error_description": "missing or unknown refresh token",
                    "correlationId": uuid::Uuid::new_v4().to_string(),
                });
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            let access = tokens.mint(ttl);
            Json(json!({"access_token": access, "refresh_token": refresh, "expires_in": ttl / 1000, "token_type": "bearer"})).into_response()
        }
        _ => error(
            "BAD_GRANT_TYPE",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

/// `GET /oauth/v1/access-tokens/{token}`: who a token belongs to.
pub async fn introspect(
    State(hs): State<Arc<HubSpotSandbox>>,
    Path(token): Path<String>,
) -> Response {
    let expiry = hs
        .tokens
        .lock()
        .expect("tokens lock")
        .access
        .get(&token)
        .copied();
    match expiry {
        Some(at) if at > now_ms() => Json(json!({
            "token": token,
            "user": "sandbox@example.com",
            "hub_domain": "sandbox.hubspot.test",
            "hub_id": hs.config.portal_id,
            "app_id": hs.config.app_id,
            "expires_in": (at - now_ms()) / 1000,
            "token_type": "access",
            "scopes": ["crm.objects.contacts.read", "crm.objects.contacts.write", "crm.objects.companies.read", "crm.objects.deals.read"],
        }))
        .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"status": "error", "message": "The token is not valid or has expired", "category": "OBJECT_NOT_FOUND"})),
        )
            .into_response(),
    }
}

/// Why a bearer token was refused, as HubSpot words it; `None` when it is good.
pub fn check_bearer(hs: &HubSpotSandbox, header: Option<&str>) -> Option<Response> {
    let unauthorized = |category: &str, message: String| {
        let body = json!({
            "status": "error",
            "message": message,
            "correlationId": uuid::Uuid::new_v4().to_string(),
            "category": category,
        });
        Some((StatusCode::UNAUTHORIZED, Json(body)).into_response())
    };
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return unauthorized(
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication."
                .into(),
        );
    };
    let expiry = hs
        .tokens
        .lock()
        .expect("tokens lock")
        .access
        .get(token)
        .copied();
    match expiry {
        None => unauthorized(
            "INVALID_AUTHENTICATION",
            "The OAuth token used to make this call is invalid.".into(),
        ),
        Some(at) if at <= now_ms() => unauthorized(
            "EXPIRED_AUTHENTICATION",
            format!(
                "The OAuth token used to make this call expired {} second(s) ago.",
                (now_ms() - at) / 1000
            ),
        ),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuing_forgets_long_expired_tokens_and_codes() {
        let mut t = Tokens::default();
        let now = now_ms();
        t.access.insert("old".into(), now - EXPIRED_KEPT_MS - 1);
        t.access.insert("recent".into(), now - 1000);
        t.codes.insert("stale".into(), ("r".into(), now - 1));
        t.codes.insert("fresh".into(), ("r".into(), now + 60_000));
        let (access, _) = t.issue(60_000);
        assert!(!t.access.contains_key("old"));
        assert!(t.access.contains_key("recent"), "still answered as expired");
        assert!(t.access.contains_key(&access));
        assert!(!t.codes.contains_key("stale"));
        assert!(t.codes.contains_key("fresh"));
    }
}
