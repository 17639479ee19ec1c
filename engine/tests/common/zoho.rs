//! An engine wired to the Zoho emulator, reachable by it (its public URL is its own
//! address, so notification channels call it), and the OAuth connect flow.

use std::sync::Arc;

use crmsync_adapters::{Secret, Vault};
use crmsync_ingest::connections::{self, ConnectionError};
use crmsync_sandbox::server::Running;
use crmsync_sandbox::zoho::{Config, DataCentre, ZohoSandbox};

use super::hubspot::API_TOKEN;
use super::{free_port, TestEngine};

pub struct Org {
    pub engine: TestEngine,
    pub zs: Arc<ZohoSandbox>,
    pub running: Running,
    pub key: String,
    pub no_redirects: reqwest::Client,
}

/// The emulator with `config`, and an engine whose Zoho app is the emulator's, with
/// `extra` environment on top.
pub async fn start(config: Config, extra: &[(&str, &str)]) -> Org {
    let (zs, running) = ZohoSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_, key) = Vault::generate();
    let accounts = DataCentre::Us.accounts_url(&running.base_url);
    let port = free_port().to_string();
    let public = format!("http://127.0.0.1:{port}");
    let mut env = vec![
        ("PORT", port.as_str()),
        ("CRM_PUBLIC_URL", public.as_str()),
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", key.as_str()),
        ("CRM_ZOHO_CLIENT_ID", "zoho-sandbox-client"),
        ("CRM_ZOHO_CLIENT_SECRET", "zoho-sandbox-secret"),
        ("CRM_ZOHO_ACCOUNTS_URL", accounts.as_str()),
    ];
    env.extend_from_slice(extra);
    let engine = TestEngine::start(&env).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Org {
        engine,
        zs,
        running,
        key,
        no_redirects,
    }
}

impl Org {
    /// Start → Zoho's consent page → back: the callback URL Zoho redirects to.
    pub async fn authorize(&self, workspace: &str) -> String {
        let start = self
            .no_redirects
            .get(
                self.engine
                    .url(&format!("/crm/zoho/start?workspace={workspace}")),
            )
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 302);
        let consent = start.headers()["location"].to_str().unwrap().to_owned();
        let approved = self.no_redirects.get(&consent).send().await.unwrap();
        assert_eq!(approved.status(), 302, "{}", approved.text().await.unwrap());
        approved.headers()["location"].to_str().unwrap().to_owned()
    }

    /// The whole connect flow for `workspace`; the callback's answer.
    pub async fn connect(&self, workspace: &str) -> serde_json::Value {
        let callback = self.authorize(workspace).await;
        let connected = self.no_redirects.get(&callback).send().await.unwrap();
        let status = connected.status();
        let body: serde_json::Value = connected.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn vault(&self) -> Vault {
        Vault::parse(&self.key).unwrap()
    }

    pub async fn token(&self, workspace: &str) -> Result<Secret<String>, ConnectionError> {
        let app = self.engine.settings.zoho_app().unwrap();
        connections::zoho_access_token(
            &self.engine.pool,
            &self.vault(),
            &app,
            &reqwest::Client::new(),
            workspace,
        )
        .await
    }
}
