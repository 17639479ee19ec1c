//! A client of the Odoo emulator, to read what it holds.

use std::sync::Arc;
use std::time::Duration;

use crmsync_adapters::odoo::client::{OdooClient, OdooConfig};
use crmsync_adapters::{Metrics, RateLimiter, Secret};
use crmsync_sandbox::odoo::OdooSandbox;

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
