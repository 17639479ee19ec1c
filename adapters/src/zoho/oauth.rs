//! Zoho Accounts OAuth, the client side. Zoho has a data centre per region; consent
//! starts at `CRM_ZOHO_ACCOUNTS_URL` and the callback names the user's own accounts
//! server (`accounts-server`), where the code must be exchanged and the refresh token
//! used. The token answer's `api_domain` is the only host the tokens work on.
//!
//! The callback's `accounts-server` is input from a browser: crmsync sends the client
//! secret only to a known Zoho accounts server over HTTPS, or to the origin of the
//! configured accounts URL (the sandbox, a proxy).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::oauth::{OAuthError, TokenSet};
use crate::Secret;

/// Zoho's accounts servers, one per data centre.
pub const ACCOUNTS_HOSTS: [&str; 8] = [
    "accounts.zoho.com",
    "accounts.zoho.eu",
    "accounts.zoho.in",
    "accounts.zoho.com.au",
    "accounts.zoho.jp",
    "accounts.zoho.com.cn",
    "accounts.zohocloud.ca",
    "accounts.zoho.sa",
];

/// The scopes crmsync asks for: records, notifications, org (its id).
pub const SCOPES: &str =
    "ZohoCRM.modules.ALL,ZohoCRM.notifications.ALL,ZohoCRM.org.READ,ZohoCRM.settings.READ";

/// The app's OAuth settings.
#[derive(Debug, Clone)]
pub struct ZohoApp {
    pub client_id: String,
    pub client_secret: Secret<String>,
    /// Where consent starts: `https://accounts.zoho.com`.
    pub accounts_url: String,
}

/// Tokens and the API host they work on.
#[derive(Debug, Clone)]
pub struct ZohoTokens {
    pub tokens: TokenSet,
    /// `https://www.zohoapis.eu`, from the token answer.
    pub api_domain: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    api_domain: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

impl ZohoApp {
    /// Where to send the user's browser.
    pub fn authorize_url(&self, redirect_uri: &str, state: &str) -> String {
        let mut url = url::Url::parse(&format!(
            "{}/oauth/v2/auth",
            self.accounts_url.trim_end_matches('/')
        ))
        .expect("CRM_ZOHO_ACCOUNTS_URL was validated at start-up");
        url.query_pairs_mut()
            .append_pair("scope", SCOPES)
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("access_type", "offline")
            .append_pair("prompt", "consent")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state);
        url.into()
    }

    /// The accounts server a callback named, if crmsync may send the client secret
    /// there; none named means the configured one.
    pub fn accounts_server(&self, named: Option<&str>) -> Result<String, OAuthError> {
        let Some(named) = named.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.accounts_url.trim_end_matches('/').to_owned());
        };
        let refuse = || {
            OAuthError::Rejected(format!(
                "the callback's accounts-server {named:?} is not a Zoho accounts server"
            ))
        };
        let url = url::Url::parse(named).map_err(|_| refuse())?;
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(refuse());
        }
        let configured = url::Url::parse(&self.accounts_url).map_err(|_| refuse())?;
        let known = url.scheme() == "https"
            && url.port().is_none()
            && url.path().trim_end_matches('/').is_empty()
            && url.host_str().is_some_and(|h| ACCOUNTS_HOSTS.contains(&h));
        if known || origin(&url) == origin(&configured) {
            Ok(named.trim_end_matches('/').to_owned())
        } else {
            Err(refuse())
        }
    }

    async fn grant(
        &self,
        http: &reqwest::Client,
        accounts_server: &str,
        form: &[(&str, &str)],
    ) -> Result<ZohoTokens, OAuthError> {
        let mut body: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose()),
        ];
        body.extend_from_slice(form);
        let response = http
            .post(format!(
                "{}/oauth/v2/token",
                accounts_server.trim_end_matches('/')
            ))
            .timeout(Duration::from_secs(30))
            .form(&body)
            .send()
            .await
            .map_err(|e| OAuthError::Transient(e.without_url().to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| OAuthError::Transient(e.without_url().to_string()))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(OAuthError::Transient(format!("HTTP {status}")));
        }
        let answer: Answer = serde_json::from_str(&text).map_err(|_| {
            OAuthError::Transient(format!("unreadable token answer (HTTP {status})"))
        })?;
        // Zoho answers most grant errors with HTTP 200 and `{"error": ...}`.
        if let Some(error) = answer.error {
            let detail = answer.error_description.unwrap_or_default();
            return Err(match error.as_str() {
                // An unknown, used or revoked code or refresh token.
                "invalid_code" | "invalid_grant" => OAuthError::InvalidGrant(error),
                // Too many refreshes in a short time: wait, the token is still good.
                "Access Denied" => OAuthError::Transient(format!("{error}: {detail}")),
                _ => OAuthError::Rejected(format!("{error} {detail}").trim().to_owned()),
            });
        }
        if !status.is_success() {
            return Err(OAuthError::Rejected(format!("HTTP {status}")));
        }
        let access = answer
            .access_token
            .ok_or_else(|| OAuthError::Transient("token answer without access_token".into()))?;
        Ok(ZohoTokens {
            tokens: TokenSet {
                access_token: Secret::new(access),
                refresh_token: answer.refresh_token.map(Secret::new),
                expires_in: answer.expires_in.unwrap_or(3600),
            },
            api_domain: answer.api_domain,
        })
    }

    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        accounts_server: &str,
        code: &str,
        redirect_uri: &str,
    ) -> Result<ZohoTokens, OAuthError> {
        self.grant(
            http,
            accounts_server,
            &[
                ("grant_type", "authorization_code"),
                ("redirect_uri", redirect_uri),
                ("code", code),
            ],
        )
        .await
    }

    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        accounts_server: &str,
        refresh_token: &str,
    ) -> Result<ZohoTokens, OAuthError> {
        self.grant(
            http,
            accounts_server,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }
}

/// Checks an `api_domain` from a token answer: an absolute http(s) URL with nothing
/// after the host but a path.
pub fn api_domain(raw: &str) -> Result<String, OAuthError> {
    let url = url::Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .filter(|u| u.query().is_none() && u.username().is_empty())
        .ok_or_else(|| OAuthError::Rejected(format!("api_domain {raw:?} is not a URL")))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The org id in `GET /crm/v8/org`'s answer.
pub fn org_id(answer: &Value) -> Option<String> {
    let org = answer.get("org")?.as_array()?.first()?;
    match org.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(accounts: &str) -> ZohoApp {
        ZohoApp {
            client_id: "1000.ABC".into(),
            client_secret: Secret::new("s".into()),
            accounts_url: accounts.into(),
        }
    }

    #[test]
    fn the_authorize_url_asks_for_offline_access() {
        let url =
            app("https://accounts.zoho.com/").authorize_url("https://crm.example.com/cb", "a.b");
        assert!(
            url.starts_with("https://accounts.zoho.com/oauth/v2/auth?scope=ZohoCRM.modules.ALL%2C")
        );
        assert!(url.contains("&client_id=1000.ABC&response_type=code&access_type=offline"));
        assert!(url.ends_with("&redirect_uri=https%3A%2F%2Fcrm.example.com%2Fcb&state=a.b"));
    }

    #[test]
    fn only_zoho_accounts_servers_get_the_client_secret() {
        let a = app("https://accounts.zoho.com");
        for good in [
            "https://accounts.zoho.eu",
            "https://accounts.zohocloud.ca/",
            "https://accounts.zoho.com.au",
        ] {
            assert!(a.accounts_server(Some(good)).is_ok(), "{good}");
        }
        assert_eq!(
            a.accounts_server(None).unwrap(),
            "https://accounts.zoho.com"
        );
        for bad in [
            "http://accounts.zoho.eu",
            "https://accounts.zoho.eu.evil.example",
            "https://evil.example/accounts.zoho.eu",
            "https://accounts.zoho.eu:8443",
            "https://user@accounts.zoho.eu",
            "https://accounts.zoho.eu/?x=1",
            "not a url",
        ] {
            assert!(a.accounts_server(Some(bad)).is_err(), "{bad}");
        }
        let sandbox = app("http://127.0.0.1:9000/com/accounts");
        assert_eq!(
            sandbox
                .accounts_server(Some("http://127.0.0.1:9000/eu/accounts"))
                .unwrap(),
            "http://127.0.0.1:9000/eu/accounts"
        );
        assert!(sandbox
            .accounts_server(Some("http://127.0.0.1:9001/eu/accounts"))
            .is_err());
    }

    #[test]
    fn api_domains_and_org_ids_are_checked() {
        assert_eq!(
            api_domain("https://www.zohoapis.eu/").unwrap(),
            "https://www.zohoapis.eu"
        );
        assert!(api_domain("javascript:alert(1)").is_err());
        assert!(api_domain("https://x.example/?q=1").is_err());
        let answer = serde_json::json!({"org": [{"id": "7001", "company_name": "Acme"}]});
        assert_eq!(org_id(&answer).as_deref(), Some("7001"));
        assert_eq!(org_id(&serde_json::json!({"org": []})), None);
    }
}
