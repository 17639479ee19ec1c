//! The Odoo emulator beside an engine that can connect to it, and a client of the
//! emulator to read what it holds.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crmsync_adapters::odoo::client::{OdooClient, OdooConfig};
use crmsync_adapters::{Metrics, RateLimiter, Secret, Vault};
use crmsync_sandbox::odoo::{Config, OdooSandbox};
use crmsync_sandbox::server::Running;

use super::hubspot::API_TOKEN;
use super::TestEngine;

pub struct Db {
    pub engine: TestEngine,
    pub odoo: Arc<OdooSandbox>,
    pub running: Running,
}

/// The emulator with `config`, and an engine with a vault and the API token, with
/// `extra` environment on top.
pub async fn start(config: Config, extra: &[(&str, &str)]) -> Db {
    let (odoo, running) = OdooSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_, key) = Vault::generate();
    let mut env = vec![
        ("CRM_API_TOKEN", API_TOKEN),
        ("ENCRYPTION_KEY", key.as_str()),
        ("ODOO_DEFAULT_TIMEOUT", "10"),
    ];
    env.extend_from_slice(extra);
    Db {
        engine: TestEngine::start(&env).await,
        odoo,
        running,
    }
}

/// The emulator with `config` (contacts, companies, deals as given), an engine that
/// polls only when asked, workspace `acme` connected and polled once: the poll's
/// answer beside.
pub async fn connected(contacts: usize, companies: usize, deals: usize) -> (Db, Value) {
    let config = Config {
        contacts,
        companies,
        deals,
        ..Config::default()
    };
    let db = start(
        config,
        &[("CRM_POLL_INTERVAL_SECS", "3600"), ("CRM_SYNC_RPS", "500")],
    )
    .await;
    let (status, answer) = db.post("/crm/odoo/connect", &db.connect_body()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, polled) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200, "{polled}");
    (db, polled)
}

impl Db {
    /// `POST /crm/odoo/connect`'s body for workspace `acme`.
    pub fn connect_body(&self) -> Value {
        let c = self.odoo.credentials(&self.running.base_url);
        json!({"workspace": "acme", "url": c["base_url"], "database": c["database"],
               "login": c["login"], "api_key": c["api_key"]})
    }

    /// POSTs `body` with the bearer token: the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        super::post_json(&self.engine, path, body).await
    }

    pub async fn client(&self) -> OdooClient {
        client(&self.odoo, &self.running.base_url).await
    }
}

/// A client of the emulator at `base_url`, with its own credentials.
pub async fn client(odoo: &OdooSandbox, base_url: &str) -> OdooClient {
    let c = odoo.credentials(base_url);
    OdooClient::connect(
        OdooConfig {
            url: base_url.to_owned(),
            database: c["database"].as_str().unwrap().into(),
            login: c["login"].as_str().unwrap().into(),
            api_key: Secret::new(c["api_key"].as_str().unwrap().into()),
            timeout: Duration::from_secs(10),
        },
        Arc::new(RateLimiter::new(1000.0, 1000.0)),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap()
}
