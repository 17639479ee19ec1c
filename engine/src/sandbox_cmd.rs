//! `crmsync sandbox`: runs the provider emulators standalone and prints, one JSON
//! object a line on stdout, each one's base URL and the credentials it accepts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio_util::sync::CancellationToken;

use crmsync_sandbox::faults::Faults;
use crmsync_sandbox::hubspot::{self, HubSpotSandbox};

/// Options of `crmsync sandbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxOptions {
    /// Serve the HubSpot emulator on this address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub hubspot: Option<SocketAddr>,
    /// Serve the Zoho CRM emulator on this address.
    #[arg(long, value_name = "ADDR")]
    pub zoho: Option<SocketAddr>,
    /// Serve the Odoo emulator on this address.
    #[arg(long, value_name = "ADDR")]
    pub odoo: Option<SocketAddr>,
    /// Seed of the generated data: the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Contacts to generate in each emulator.
    #[arg(long, default_value_t = 50)]
    pub contacts: usize,
    /// Companies (accounts, partner companies) to generate.
    #[arg(long, default_value_t = 10)]
    pub companies: usize,
    /// Deals (opportunities) to generate.
    #[arg(long, default_value_t = 20)]
    pub deals: usize,
    /// Where HubSpot's webhooks go, e.g. http://127.0.0.1:8080/crm/webhooks/hubspot.
    #[arg(long, value_name = "URL")]
    pub webhook_target: Option<String>,
    /// Changes a second made by the mutation driver in each emulator (0: none).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub mutations_per_sec: f64,
    /// Faults to inject: `SPEC` for every emulator or `PROVIDER:SPEC` for one, e.g.
    /// `hubspot:latency=20ms,errors=0.05,storm=5s/60s,drop-webhooks=0.1`. Repeatable.
    #[arg(long, value_name = "SPEC")]
    pub faults: Vec<String>,
}

impl SandboxOptions {
    /// The faults for `provider`: the general spec, then the provider's own.
    pub fn faults_for(&self, provider: &str) -> anyhow::Result<Faults> {
        let mut spec = String::new();
        for f in &self.faults {
            let (scope, body) = match f.split_once(':') {
                Some((p, body)) if ["hubspot", "zoho", "odoo"].contains(&p) => (Some(p), body),
                _ => (None, f.as_str()),
            };
            if scope.is_none_or(|p| p == provider) {
                spec.push(',');
                spec.push_str(body);
            }
        }
        spec.parse()
            .map_err(|e: String| anyhow::anyhow!("--faults: {e}"))
    }
}

#[allow(clippy::print_stdout)]
pub async fn run(opts: SandboxOptions, stop: CancellationToken) -> anyhow::Result<()> {
    if opts.hubspot.is_none() && opts.zoho.is_none() && opts.odoo.is_none() {
        bail!("name at least one emulator to run: --hubspot ADDR, --zoho ADDR or --odoo ADDR (e.g. 127.0.0.1:0)");
    }
    if let Some(target) = &opts.webhook_target {
        url::Url::parse(target)
            .with_context(|| format!("--webhook-target {target:?} is not a URL"))?;
    }
    let mut running = Vec::new();
    let mut drivers = Vec::new();
    if let Some(addr) = opts.hubspot {
        let config = hubspot::Config {
            seed: opts.seed,
            contacts: opts.contacts,
            companies: opts.companies,
            deals: opts.deals,
            faults: opts.faults_for("hubspot")?,
            webhook_target: opts.webhook_target.clone(),
            ..hubspot::Config::default()
        };
        let (hs, server) = HubSpotSandbox::start(config, addr)
            .await
            .with_context(|| format!("cannot serve the HubSpot emulator on {addr}"))?;
        println!("{}", hs.credentials(&server.base_url));
        drivers.push(hs.spawn_mutations(opts.mutations_per_sec));
        running.push(server);
    }
    if let Some(addr) = opts.zoho {
        let config = crmsync_sandbox::zoho::Config {
            seed: opts.seed,
            contacts: opts.contacts,
            companies: opts.companies,
            deals: opts.deals,
            faults: opts.faults_for("zoho")?,
            ..crmsync_sandbox::zoho::Config::default()
        };
        let (zoho, server) = crmsync_sandbox::zoho::ZohoSandbox::start(config, addr)
            .await
            .with_context(|| format!("cannot serve the Zoho emulator on {addr}"))?;
        println!("{}", zoho.credentials(&server.base_url));
        drivers.push(zoho.spawn_mutations(opts.mutations_per_sec));
        running.push(server);
    }
    if let Some(addr) = opts.odoo {
        let config = crmsync_sandbox::odoo::Config {
            seed: opts.seed,
            contacts: opts.contacts,
            companies: opts.companies,
            deals: opts.deals,
            faults: opts.faults_for("odoo")?,
            ..crmsync_sandbox::odoo::Config::default()
        };
        let (odoo, server) = crmsync_sandbox::odoo::OdooSandbox::start(config, addr)
            .await
            .with_context(|| format!("cannot serve the Odoo emulator on {addr}"))?;
        println!("{}", odoo.credentials(&server.base_url));
        drivers.push(odoo.spawn_mutations(opts.mutations_per_sec));
        running.push(server);
    }
    tracing::info!(emulators = running.len(), "sandbox serving; Ctrl-C to stop");
    stop.cancelled().await;
    for d in drivers {
        d.abort();
    }
    for server in running {
        let _ = tokio::time::timeout(Duration::from_secs(5), server.stop()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        opts: SandboxOptions,
    }

    #[test]
    fn faults_apply_to_all_or_to_one_provider() {
        let cli = Cli::parse_from([
            "x",
            "--faults",
            "latency=5ms",
            "--faults",
            "zoho:errors=0.5",
        ]);
        let zoho = cli.opts.faults_for("zoho").unwrap();
        assert_eq!(zoho.latency, Duration::from_millis(5));
        assert_eq!(zoho.error_rate, 0.5);
        assert_eq!(cli.opts.faults_for("hubspot").unwrap().error_rate, 0.0);
        let bad = Cli::parse_from(["x", "--faults", "odoo:melt=1"]);
        assert!(bad
            .opts
            .faults_for("odoo")
            .unwrap_err()
            .to_string()
            .contains("unknown fault"));
    }
}
