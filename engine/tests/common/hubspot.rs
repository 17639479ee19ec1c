//! An engine wired to the HubSpot emulator, and the OAuth connect flow through it.

use std::sync::Arc;

use crmsync_adapters::{Secret, Vault};
use crmsync_ingest::connections::{self, ConnectionError};
use crmsync_sandbox::hubspot::{Config, HubSpotSandbox};
use crmsync_sandbox::server::Running;

use super::TestEngine;

pub const API_TOKEN: &str = "control-token-for-tests";

pub struct Portal {
    pub engine: TestEngine,
    pub hs: Arc<HubSpotSandbox>,
    _portal: Running,
    pub key: String,
    pub no_redirects: reqwest::Client,
}

/// The emulator with `config`, and an engine whose HubSpot app is the emulator's,
/// with `extra` environment on top.
pub async fn start(config: Config, extra: &[(&str, &str)]) -> Portal {
    let (hs, portal) = HubSpotSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_, key) = Vault::generate();
    let base = portal.base_url.clone();
    let mut env = vec![
        ("CRM_PUBLIC_URL", ""),
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", key.as_str()),
        ("CRM_HUBSPOT_CLIENT_ID", "hubspot-sandbox-client"),
        ("CRM_HUBSPOT_CLIENT_SECRET", "hubspot-sandbox-secret"),
        ("CRM_HUBSPOT_API_URL", base.as_str()),
        ("CRM_HUBSPOT_AUTH_URL", base.as_str()),
    ];
    env.extend_from_slice(extra);
    let engine = TestEngine::start(&env).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Portal {
        engine,
        hs,
        _portal: portal,
        key,
        no_redirects,
    }
}

impl Portal {
    /// Start → HubSpot's authorize page → back to the callback: the callback URL.
    pub async fn authorize(&self, workspace: &str) -> String {
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

    /// The whole connect flow for `workspace`, callback included.
    pub async fn connect(&self, workspace: &str) {
        let callback = self.authorize(workspace).await;
        let connected = self.no_redirects.get(&callback).send().await.unwrap();
        assert_eq!(connected.status(), 200);
    }

    pub fn vault(&self) -> Vault {
        Vault::parse(&self.key).unwrap()
    }

    pub async fn token(&self, workspace: &str) -> Result<Secret<String>, ConnectionError> {
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
