//! HubSpot OAuth, the client side: the authorize URL, the code and refresh grants,
//! and which portal a token belongs to.

use std::time::Duration;

use serde::Deserialize;

use crate::Secret;

/// The app's OAuth settings.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: Secret<String>,
    /// `https://app.hubspot.com` (authorize page).
    pub auth_url: String,
    /// `https://api.hubapi.com` (token endpoint and API).
    pub api_url: String,
    pub scopes: Vec<String>,
}

pub use crate::oauth::{OAuthError, TokenSet};

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl OAuthApp {
    /// Where to send the user's browser.
    pub fn authorize_url(&self, redirect_uri: &str, state: &str) -> String {
        let mut url = url::Url::parse(&format!(
            "{}/oauth/authorize",
            self.auth_url.trim_end_matches('/')
        ))
        .expect("CRM_HUBSPOT_AUTH_URL was validated at start-up");
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.scopes.join(" "))
            .append_pair("state", state);
        url.into()
    }

    async fn grant(
        &self,
        http: &reqwest::Client,
        form: &[(&str, &str)],
    ) -> Result<TokenSet, OAuthError> {
        let mut body: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose()),
        ];
        body.extend_from_slice(form);
        let response = http
            .post(format!(
                "{}/oauth/v1/token",
                self.api_url.trim_end_matches('/')
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
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| OAuthError::Transient(format!("unreadable token answer: {e}")));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(OAuthError::Transient(format!("HTTP {status}")));
        }
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            status: None,
            error: None,
            message: None,
        });
        let what = body
            .status
            .clone()
            .or(body.error.clone())
            .unwrap_or_else(|| status.to_string());
        let invalid = body.error.as_deref() == Some("invalid_grant")
            || matches!(
                body.status.as_deref(),
                Some("BAD_REFRESH_TOKEN" | "BAD_AUTH_CODE")
            );
        let message = format!("{what}: {}", body.message.unwrap_or_default());
        if invalid {
            Err(OAuthError::InvalidGrant(message))
        } else {
            Err(OAuthError::Rejected(message))
        }
    }

    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenSet, OAuthError> {
        self.grant(
            http,
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
        refresh_token: &str,
    ) -> Result<TokenSet, OAuthError> {
        self.grant(
            http,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// The portal (hub id) an access token belongs to.
    pub async fn portal_id(
        &self,
        http: &reqwest::Client,
        access_token: &str,
    ) -> Result<String, OAuthError> {
        #[derive(Deserialize)]
        struct Info {
            hub_id: serde_json::Value,
        }
        let response = http
            .get(format!(
                "{}/oauth/v1/access-tokens/{access_token}",
                self.api_url.trim_end_matches('/')
            ))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| OAuthError::Transient(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(OAuthError::Rejected(format!(
                "token introspection answered {}",
                response.status()
            )));
        }
        let info: Info = response
            .json()
            .await
            .map_err(|e| OAuthError::Transient(e.without_url().to_string()))?;
        Ok(match info.hub_id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_every_parameter_encoded() {
        let app = OAuthApp {
            client_id: "abc".into(),
            client_secret: Secret::new("s".into()),
            auth_url: "https://app.hubspot.com/".into(),
            api_url: "https://api.hubapi.com".into(),
            scopes: vec!["crm.objects.contacts.read".into(), "oauth".into()],
        };
        let url = app.authorize_url("https://crm.example.com/crm/hubspot/callback", "x.y+z");
        assert_eq!(
            url,
            "https://app.hubspot.com/oauth/authorize?client_id=abc&redirect_uri=https%3A%2F%2Fcrm.example.com%2Fcrm%2Fhubspot%2Fcallback&scope=crm.objects.contacts.read+oauth&state=x.y%2Bz"
        );
    }
}
