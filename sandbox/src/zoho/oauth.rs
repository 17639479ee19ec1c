//! Zoho Accounts: the authorization endpoint (auto-approved), the token endpoint and
//! revocation, per data centre.
//!
//! As Zoho: the consent redirect names the user's data centre (`location`) and its
//! accounts server, and the code must be exchanged there; codes are single-use and
//! live 2 minutes; the token endpoint takes its parameters from the query string or a
//! form body and answers errors with HTTP 200 and `{"error": "invalid_code"}` (also
//! for an unknown refresh token), `invalid_client`, `invalid_client_secret`,
//! `invalid_redirect_uri`, `unsupported_grant_type`; access tokens live an hour and
//! work only on their own data centre's API domain; a refresh token mints at most 10
//! access tokens in 10 minutes (then HTTP 400 `Access Denied`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::dc::DataCentre;
use super::store::now_ms;
use super::{base_url, ZohoSandbox};

pub const ACCESS_TTL_MS: i64 = 3_600_000;
const CODE_TTL_MS: i64 = 120_000;
const REFRESH_WINDOW_MS: i64 = 600_000;
const REFRESHES_PER_WINDOW: usize = 10;

/// A consent waiting to be exchanged.
#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    scope: String,
    dc: DataCentre,
    offline: bool,
    expires: i64,
}

/// What an access token allows.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub dc: DataCentre,
    pub scope: Arc<str>,
    pub expires: i64,
    refresh: Option<String>,
}

#[derive(Debug, Clone)]
struct RefreshToken {
    client_id: String,
    dc: DataCentre,
    scope: Arc<str>,
    minted: VecDeque<i64>,
}

/// Every code and token the accounts servers issued.
#[derive(Debug, Default)]
pub struct Tokens {
    codes: HashMap<String, Grant>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
}

/// Why the token endpoint refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidCode,
    InvalidClient,
    InvalidClientSecret,
    InvalidRedirectUri,
    UnsupportedGrantType,
    InvalidRequest,
    TooManyRefreshes,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let error = match self {
            OAuthError::InvalidCode => "invalid_code",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidClientSecret => "invalid_client_secret",
            OAuthError::InvalidRedirectUri => "invalid_redirect_uri",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::TooManyRefreshes => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({
                        "error_description": "You have made too many requests continuously. Please try again after some time.",
                        "error": "Access Denied",
                        "status": "failure",
                    })),
                )
                    .into_response()
            }
        };
        (StatusCode::OK, Json(json!({ "error": error }))).into_response()
    }
}

fn token_string() -> String {
    format!(
        "1000.{}.{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Tokens {
    /// An access token (and, when `offline`, a refresh token) for `scope` on `dc`.
    pub fn issue(
        &mut self,
        dc: DataCentre,
        scope: &str,
        offline: bool,
        client_id: &str,
    ) -> (String, Option<String>) {
        let scope: Arc<str> = Arc::from(scope);
        let refresh = offline.then(|| {
            let token = token_string();
            self.refresh.insert(
                token.clone(),
                RefreshToken {
                    client_id: client_id.to_owned(),
                    dc,
                    scope: scope.clone(),
                    minted: VecDeque::new(),
                },
            );
            token
        });
        let access = self.mint(dc, scope, refresh.clone());
        (access, refresh)
    }

    fn mint(&mut self, dc: DataCentre, scope: Arc<str>, refresh: Option<String>) -> String {
        let now = now_ms();
        self.purge(now);
        let token = token_string();
        self.access.insert(
            token.clone(),
            AccessToken {
                dc,
                scope,
                expires: now + ACCESS_TTL_MS,
                refresh,
            },
        );
        token
    }

    /// Forgets expired codes and access tokens (Zoho answers an expired token as it
    /// does an unknown one), so long runs do not grow.
    fn purge(&mut self, now: i64) {
        self.codes.retain(|_, g| g.expires >= now);
        self.access.retain(|_, a| a.expires > now);
    }

    pub fn access(&self, token: &str) -> Option<&AccessToken> {
        self.access.get(token)
    }

    pub fn expire_access_tokens(&mut self) {
        let past = now_ms() - 1;
        for t in self.access.values_mut() {
            t.expires = past;
        }
    }

    fn exchange(
        &mut self,
        dc: DataCentre,
        client_id: &str,
        redirect_uri: Option<&str>,
        code: &str,
    ) -> Result<(String, Option<String>, Arc<str>), OAuthError> {
        let grant = self.codes.get(code).ok_or(OAuthError::InvalidCode)?;
        if grant.expires < now_ms() {
            self.codes.remove(code);
            return Err(OAuthError::InvalidCode);
        }
        if grant.dc != dc || grant.client_id != client_id {
            return Err(OAuthError::InvalidCode);
        }
        if redirect_uri.is_some_and(|r| r != grant.redirect_uri) {
            return Err(OAuthError::InvalidRedirectUri);
        }
        let grant = self.codes.remove(code).ok_or(OAuthError::InvalidCode)?;
        let (access, refresh) = self.issue(dc, &grant.scope, grant.offline, client_id);
        Ok((access, refresh, Arc::from(grant.scope.as_str())))
    }

    fn refresh(
        &mut self,
        dc: DataCentre,
        client_id: &str,
        token: &str,
    ) -> Result<(String, Arc<str>), OAuthError> {
        let now = now_ms();
        let entry = self.refresh.get_mut(token).ok_or(OAuthError::InvalidCode)?;
        if entry.dc != dc || entry.client_id != client_id {
            return Err(OAuthError::InvalidCode);
        }
        while entry
            .minted
            .front()
            .is_some_and(|t| *t <= now - REFRESH_WINDOW_MS)
        {
            entry.minted.pop_front();
        }
        if entry.minted.len() >= REFRESHES_PER_WINDOW {
            return Err(OAuthError::TooManyRefreshes);
        }
        entry.minted.push_back(now);
        let scope = entry.scope.clone();
        let access = self.mint(dc, scope.clone(), Some(token.to_owned()));
        Ok((access, scope))
    }

    /// Revokes a refresh token and the access tokens it minted.
    fn revoke(&mut self, token: &str) -> bool {
        if self.refresh.remove(token).is_some() {
            self.access
                .retain(|_, a| a.refresh.as_deref() != Some(token));
            true
        } else {
            self.access.remove(token).is_some()
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `application/x-www-form-urlencoded` pairs.
pub fn parse_form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn consent_error(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<html><body><h1>{message}</h1></body></html>"),
    )
        .into_response()
}

/// `GET {accounts}/oauth/v2/auth`: the user consents at once; the redirect carries
/// the user's data centre, which is the org's, wherever the request was sent.
pub async fn authorize(
    State(sb): State<Arc<ZohoSandbox>>,
    Path(dc): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if DataCentre::parse(&dc).is_none_or(|d| d.suffix() != dc) {
        return super::error::ApiError::invalid_url().into_response();
    }
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if get("response_type") != Some("code") {
        return consent_error("Invalid response_type");
    }
    if get("client_id") != Some(sb.config.client_id.as_str()) {
        return consent_error("Invalid Client");
    }
    let Some(scope) = get("scope") else {
        return consent_error("Invalid Scope");
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return consent_error("Invalid Redirect Uri");
    };
    let Ok(mut target) = reqwest::Url::parse(redirect_uri) else {
        return consent_error("Invalid Redirect Uri");
    };
    let home = sb.home_dc();
    let code = token_string();
    {
        let mut tokens = sb.tokens();
        let now = now_ms();
        tokens.purge(now);
        tokens.codes.insert(
            code.clone(),
            Grant {
                client_id: sb.config.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                scope: scope.to_owned(),
                dc: home,
                offline: get("access_type") == Some("offline"),
                expires: now + CODE_TTL_MS,
            },
        );
    }
    {
        let mut pairs = target.query_pairs_mut();
        if let Some(state) = q.get("state") {
            pairs.append_pair("state", state);
        }
        pairs
            .append_pair("code", &code)
            .append_pair("location", home.location())
            .append_pair("accounts-server", &home.accounts_url(&base_url(&headers)));
    }
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

/// `POST {accounts}/oauth/v2/token`.
pub async fn token(
    State(sb): State<Arc<ZohoSandbox>>,
    Path(dc): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(dc) = DataCentre::parse(&dc).filter(|d| d.suffix() == dc) else {
        return super::error::ApiError::invalid_url().into_response();
    };
    let mut params = parse_form(query.as_deref().unwrap_or(""));
    params.extend(parse_form(&String::from_utf8_lossy(&body)));
    match exchange(&sb, dc, &params) {
        Ok((access, refresh, scope)) => {
            let mut answer = json!({
                "access_token": access,
                "scope": scope.as_ref(),
                "api_domain": dc.api_domain(&base_url(&headers)),
                "token_type": "Bearer",
                "expires_in": ACCESS_TTL_MS / 1000,
            });
            if let Some(refresh) = refresh {
                answer["refresh_token"] = json!(refresh);
            }
            Json(answer).into_response()
        }
        Err(e) => e.into_response(),
    }
}

type Issued = (String, Option<String>, Arc<str>);

fn exchange(
    sb: &ZohoSandbox,
    dc: DataCentre,
    params: &HashMap<String, String>,
) -> Result<Issued, OAuthError> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let grant_type = get("grant_type").ok_or(OAuthError::InvalidRequest)?;
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return Err(OAuthError::UnsupportedGrantType);
    }
    let client_id = get("client_id").ok_or(OAuthError::InvalidClient)?;
    if client_id != sb.config.client_id {
        return Err(OAuthError::InvalidClient);
    }
    if !crate::secret_eq(get("client_secret"), &sb.config.client_secret) {
        return Err(OAuthError::InvalidClientSecret);
    }
    let mut tokens = sb.tokens();
    if grant_type == "authorization_code" {
        let code = get("code").ok_or(OAuthError::InvalidCode)?;
        tokens.exchange(dc, client_id, get("redirect_uri"), code)
    } else {
        let refresh = get("refresh_token").ok_or(OAuthError::InvalidCode)?;
        let (access, scope) = tokens.refresh(dc, client_id, refresh)?;
        Ok((access, None, scope))
    }
}

/// `POST {accounts}/oauth/v2/token/revoke?token=`.
pub async fn revoke(
    State(sb): State<Arc<ZohoSandbox>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut params = parse_form(query.as_deref().unwrap_or(""));
    params.extend(parse_form(&String::from_utf8_lossy(&body)));
    let revoked = params.get("token").is_some_and(|t| sb.tokens().revoke(t));
    if revoked {
        Json(json!({"status": "success"})).into_response()
    } else {
        OAuthError::InvalidRequest.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent_escapes() {
        let f = parse_form("a=b+c&redirect_uri=http%3A%2F%2Fx%2Fcb&empty=&bad=%zz&x");
        assert_eq!(f["a"], "b c");
        assert_eq!(f["redirect_uri"], "http://x/cb");
        assert_eq!(f["empty"], "");
        assert_eq!(f["bad"], "%zz");
        assert_eq!(f["x"], "");
    }

    #[test]
    fn codes_are_single_use_and_bound_to_their_data_centre() {
        let mut t = Tokens::default();
        let grant = Grant {
            client_id: "c".into(),
            redirect_uri: "http://x/cb".into(),
            scope: "ZohoCRM.modules.ALL".into(),
            dc: DataCentre::Eu,
            offline: true,
            expires: now_ms() + CODE_TTL_MS,
        };
        t.codes.insert("code".into(), grant);
        assert_eq!(
            t.exchange(DataCentre::Us, "c", None, "code").unwrap_err(),
            OAuthError::InvalidCode
        );
        let (access, refresh, _) = t.exchange(DataCentre::Eu, "c", None, "code").unwrap();
        assert_eq!(t.access(&access).unwrap().dc, DataCentre::Eu);
        assert!(refresh.is_some());
        assert_eq!(
            t.exchange(DataCentre::Eu, "c", None, "code").unwrap_err(),
            OAuthError::InvalidCode
        );
    }

    #[test]
    fn minting_forgets_expired_tokens_and_codes() {
        let mut t = Tokens::default();
        let (old, _) = t.issue(DataCentre::Us, "ZohoCRM.modules.ALL", true, "c");
        t.expire_access_tokens();
        t.codes.insert(
            "stale".into(),
            Grant {
                client_id: "c".into(),
                redirect_uri: "http://x/cb".into(),
                scope: "ZohoCRM.modules.ALL".into(),
                dc: DataCentre::Us,
                offline: false,
                expires: now_ms() - 1,
            },
        );
        let (fresh, _) = t.issue(DataCentre::Us, "ZohoCRM.modules.ALL", false, "c");
        assert!(t.access(&old).is_none());
        assert!(t.access(&fresh).is_some());
        assert!(t.codes.is_empty());
    }
}
