//! Connecting a HubSpot portal over OAuth, against the HubSpot emulator.

mod common;

use std::sync::Arc;

use serde_json::Value;

use common::TestEngine;
use crmsync_adapters::{Secret, Vault};
use crmsync_ingest::connections::{self, ConnectionError};
use crmsync_sandbox::hubspot::{Config, HubSpotSandbox};
use crmsync_sandbox::server::Running;

const API_TOKEN: &str = "control-token-for-tests";

struct Setup {
    engine: TestEngine,
    hs: Arc<HubSpotSandbox>,
    _portal: Running,
    key: String,
    no_redirects: reqwest::Client,
}

async fn setup() -> Setup {
    let (hs, portal) = HubSpotSandbox::start(Config::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_, key) = Vault::generate();
    let base = portal.base_url.clone();
    let engine = TestEngine::start(&[
        ("CRM_PUBLIC_URL", ""),
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", &key),
        ("CRM_HUBSPOT_CLIENT_ID", "hubspot-sandbox-client"),
        ("CRM_HUBSPOT_CLIENT_SECRET", "hubspot-sandbox-secret"),
        ("CRM_HUBSPOT_API_URL", &base),
        ("CRM_HUBSPOT_AUTH_URL", &base),
    ])
    .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Setup {
        engine,
        hs,
        _portal: portal,
        key,
        no_redirects,
    }
}

impl Setup {
    /// Start → HubSpot's authorize page → back to the callback: the callback URL.
    async fn authorize(&self, workspace: &str) -> String {
        let start = self
            .no_redirects
            .get(
                self.engine
                    .url(&format!("/crm/hubspot/start?workspace={workspace}")),
            )
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 302);
        let authorize = start.headers()["location"].to_str().unwrap().to_owned();
        let approved = self.no_redirects.get(&authorize).send().await.unwrap();
        assert_eq!(approved.status(), 303, "{}", approved.text().await.unwrap());
        approved.headers()["location"].to_str().unwrap().to_owned()
    }

    fn vault(&self) -> Vault {
        Vault::parse(&self.key).unwrap()
    }

    async fn token(&self, workspace: &str) -> Result<Secret<String>, ConnectionError> {
        let app = self.engine.settings.hubspot_app().unwrap();
        connections::hubspot_access_token(
            &self.engine.pool,
            &self.vault(),
            &app,
            &reqwest::Client::new(),
            workspace,
        )
        .await
    }
}

#[tokio::test]
async fn a_portal_connects_and_its_tokens_are_stored_encrypted() {
    let s = setup().await;
    let callback = s.authorize("acme").await;
    assert!(
        callback.starts_with(&s.engine.url("/crm/hubspot/callback")),
        "{callback}"
    );
    let connected = s.no_redirects.get(&callback).send().await.unwrap();
    assert_eq!(connected.status(), 200);
    let body: Value = connected.json().await.unwrap();
    assert_eq!(body["account_id"], "62515");
    assert_eq!(body["workspace"], "acme");

    let secrets: Vec<u8> =
        sqlx::query_scalar("SELECT secrets FROM crm_connections WHERE workspace_id = 'acme'")
            .fetch_one(&s.engine.pool)
            .await
            .unwrap();
    let token = s.token("acme").await.unwrap();
    assert!(
        !secrets
            .windows(token.expose().len())
            .any(|w| w == token.expose().as_bytes()),
        "the token is stored in clear"
    );
    let listed = reqwest::Client::new()
        .get(format!(
            "{}/crm/v3/objects/contacts",
            s.engine.settings.hubspot_api_url
        ))
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200, "the stored token works");

    let again = s.no_redirects.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("already used"));

    let list: Value = reqwest::Client::new()
        .get(s.engine.url("/crm/connections?workspace=acme"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["connections"][0]["status"], "active");
    assert!(list.to_string().find(token.expose()).is_none());
}

#[tokio::test]
async fn forged_or_missing_states_and_tokens_are_refused() {
    let s = setup().await;
    let start = s
        .no_redirects
        .get(s.engine.url("/crm/hubspot/start?workspace=acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 401, "the start needs the control API token");
    let callback = s.authorize("acme").await;
    let forged = callback.replace("state=", "state=x");
    let r = s.no_redirects.get(&forged).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let tampered_code = format!("{}0", callback);
    let r = s.no_redirects.get(&tampered_code).send().await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "a wrong state signature is refused before any exchange"
    );
    let r = s
        .no_redirects
        .get(s.engine.url("/crm/hubspot/callback?code=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .no_redirects
        .get(s.engine.url("/crm/hubspot/callback?error=access_denied"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(connections::get(&s.engine.pool, "acme", "hubspot")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn tokens_refresh_once_for_many_callers_and_a_revoked_grant_needs_reconnection() {
    let s = setup().await;
    let callback = s.authorize("acme").await;
    assert_eq!(
        s.no_redirects.get(&callback).send().await.unwrap().status(),
        200
    );
    let before = s.token("acme").await.unwrap();

    sqlx::query("UPDATE crm_connections SET access_expires_at = now()")
        .execute(&s.engine.pool)
        .await
        .unwrap();
    let callers = (0..5).map(|_| s.token("acme"));
    let tokens: Vec<String> = futures::future::join_all(callers)
        .await
        .into_iter()
        .map(|t| t.unwrap().expose().clone())
        .collect();
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "one refresh served every caller"
    );
    assert_ne!(&tokens[0], before.expose());
    let expires: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT access_expires_at FROM crm_connections")
            .fetch_one(&s.engine.pool)
            .await
            .unwrap();
    assert!(expires > chrono::Utc::now() + chrono::Duration::minutes(20));

    s.hs.revoke_refresh_tokens();
    sqlx::query("UPDATE crm_connections SET access_expires_at = now()")
        .execute(&s.engine.pool)
        .await
        .unwrap();
    let err = s.token("acme").await.unwrap_err();
    assert!(
        matches!(err, ConnectionError::NeedsReconnect { .. }),
        "{err}"
    );
    let c = connections::get(&s.engine.pool, "acme", "hubspot")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, "needs_reconnect");
    assert!(c.last_error.unwrap().contains("BAD_REFRESH_TOKEN"));
}

#[tokio::test]
async fn disconnect_removes_the_connection_and_its_secrets() {
    let s = setup().await;
    let callback = s.authorize("acme").await;
    assert_eq!(
        s.no_redirects.get(&callback).send().await.unwrap().status(),
        200
    );
    let http = reqwest::Client::new();
    let url = s.engine.url("/crm/hubspot/disconnect");
    let body = serde_json::json!({"workspace": "acme"});
    assert_eq!(
        http.post(&url).json(&body).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        http.post(&url)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(&url)
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_connections")
        .fetch_one(&s.engine.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(
        http.post(&url)
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn rotate_key_reencrypts_every_secret_to_the_new_identity() {
    let s = setup().await;
    let callback = s.authorize("acme").await;
    assert_eq!(
        s.no_redirects.get(&callback).send().await.unwrap().status(),
        200
    );
    let before = s.token("acme").await.unwrap();
    let (_, new_key) = Vault::generate();
    let both = Vault::parse(&format!("{new_key}\n{}", s.key)).unwrap();
    assert_eq!(connections::rotate(&s.engine.pool, &both).await.unwrap(), 1);
    assert_eq!(
        connections::rotate(&s.engine.pool, &both).await.unwrap(),
        0,
        "idempotent"
    );
    let secrets: Vec<u8> = sqlx::query_scalar("SELECT secrets FROM crm_connections")
        .fetch_one(&s.engine.pool)
        .await
        .unwrap();
    let new_only = Vault::parse(&new_key).unwrap();
    assert!(new_only
        .open(&secrets)
        .unwrap()
        .windows(before.expose().len())
        .any(|w| w == before.expose().as_bytes()));
    assert!(
        s.vault().open(&secrets).is_err(),
        "the old key alone no longer opens it"
    );
}
