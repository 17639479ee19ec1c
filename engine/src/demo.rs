//! `crmsync demo`: the engine's main job on sample CRMs. Starts the HubSpot, Zoho and
//! Odoo emulators in-process with generated data and the engine beside them; sends a
//! signed HubSpot webhook batch and prints the projected rows; connects a `demo`
//! workspace to each emulator (HubSpot's and Zoho's OAuth flows, Odoo's API key), lets
//! the pollers read everything while the emulators' mutation drivers keep changing
//! records, pushes a call outcome to all three CRMs, and prints progress every two
//! seconds. It keeps serving until stopped, or exits once every CRM is projected and
//! the call is in each (`--exit`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crmsync_sandbox::hubspot::webhooks::{sample_contacts_batch, signed_headers, Signature};
use crmsync_sandbox::hubspot::HubSpotSandbox;
use crmsync_sandbox::odoo::OdooSandbox;
use crmsync_sandbox::server::Running;
use crmsync_sandbox::zoho::{DataCentre, ZohoSandbox};

use crmsync_projectors::checkpoint;
use crmsync_schema::Provider;

use crate::app::{Engine, Role};
use crate::config::Settings;
use crate::topology::Topology;

/// HubSpot's documentation example portal.
pub const DEMO_PORTAL: u64 = 62515;

/// Options of `crmsync demo`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DemoOptions {
    /// Exit after printing the projected rows instead of serving on.
    #[arg(long)]
    pub exit: bool,
}

/// The three emulators, in this process.
struct Sandboxes {
    hubspot: Arc<HubSpotSandbox>,
    zoho: Arc<ZohoSandbox>,
    odoo: Arc<OdooSandbox>,
    hubspot_url: String,
    zoho_url: String,
    odoo_url: String,
    _servers: Vec<Running>,
}

/// An emulator's configuration with the demo's data sizes.
macro_rules! sized {
    ($($config:ident)::+) => {
        $($config)::+ {
            contacts: 120,
            companies: 20,
            deals: 30,
            ..Default::default()
        }
    };
}

impl Sandboxes {
    async fn start() -> anyhow::Result<Self> {
        let local: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let (hubspot, hs) = HubSpotSandbox::start(
            crmsync_sandbox::hubspot::Config {
                // Not the sample batch's portal, so its rows print alone.
                portal_id: 7_100_001,
                ..sized!(crmsync_sandbox::hubspot::Config)
            },
            local,
        )
        .await
        .context("starting the HubSpot emulator")?;
        let (zoho, zs) = ZohoSandbox::start(sized!(crmsync_sandbox::zoho::Config), local)
            .await
            .context("starting the Zoho emulator")?;
        let (odoo, od) = OdooSandbox::start(sized!(crmsync_sandbox::odoo::Config), local)
            .await
            .context("starting the Odoo emulator")?;
        Ok(Self {
            hubspot,
            zoho,
            odoo,
            hubspot_url: hs.base_url.clone(),
            zoho_url: zs.base_url.clone(),
            odoo_url: od.base_url.clone(),
            _servers: vec![hs, zs, od],
        })
    }
}

/// The settings the demo runs with: the environment's, with the emulators as the
/// CRMs, a vault and an API token made up when none is set, and a loopback address
/// (the emulators' OAuth secrets are public).
fn demo_settings(base: &Settings, sandboxes: &Sandboxes) -> anyhow::Result<(Settings, String)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // Its own database and NATS prefix, beside whatever else the servers hold.
    let mut database =
        url::Url::parse(base.database_url.expose()).context("DATABASE_URL is not a URL")?;
    let name = database.path().trim_start_matches('/').to_owned();
    database.set_path(&format!(
        "/{}_demo",
        if name.is_empty() { "crmsync" } else { &name }
    ));
    let prefix = match &base.nats_prefix {
        Some(p) => format!("{p}_demo"),
        None => "crmsync_demo".to_owned(),
    };
    let port = match env("PORT").and_then(|p| p.parse::<u16>().ok()) {
        Some(p) if p != 0 => p,
        _ => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
    };
    let token =
        env("CRM_API_TOKEN").unwrap_or_else(|| format!("demo-{}", uuid::Uuid::new_v4().simple()));
    let key = env("ENCRYPTION_KEY").unwrap_or_else(|| crmsync_adapters::Vault::generate().1);
    let mut overrides: HashMap<&str, String> = HashMap::from([
        ("PORT", port.to_string()),
        ("DATABASE_URL", database.to_string()),
        ("CRM_NATS_PREFIX", prefix),
        ("CRM_BIND", "127.0.0.1".to_owned()),
        ("CRM_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("CRM_API_TOKEN", token.clone()),
        ("ENCRYPTION_KEY", key),
        ("CRM_HUBSPOT_CLIENT_ID", "hubspot-sandbox-client".to_owned()),
        (
            "CRM_HUBSPOT_CLIENT_SECRET",
            "hubspot-sandbox-secret".to_owned(),
        ),
        ("CRM_HUBSPOT_API_URL", sandboxes.hubspot_url.clone()),
        ("CRM_HUBSPOT_AUTH_URL", sandboxes.hubspot_url.clone()),
        ("CRM_ZOHO_CLIENT_ID", "zoho-sandbox-client".to_owned()),
        ("CRM_ZOHO_CLIENT_SECRET", "zoho-sandbox-secret".to_owned()),
        (
            "CRM_ZOHO_ACCOUNTS_URL",
            DataCentre::Us.accounts_url(&sandboxes.zoho_url),
        ),
    ]);
    overrides
        .entry("CRM_POLL_INTERVAL_SECS")
        .or_insert_with(|| env("CRM_POLL_INTERVAL_SECS").unwrap_or_else(|| "3".to_owned()));
    let settings = Settings::from_lookup(|k| overrides.get(k).cloned().or_else(|| env(k)))?;
    Ok((settings, token))
}

/// Starts the demo afresh: drops its database and deletes its streams (its own, named
/// apart from any installation's), so that a new vault key and new emulators meet no
/// state of an earlier run.
#[allow(clippy::print_stdout)]
async fn reset(settings: &Settings) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase as _;
    let url = settings.database_url.expose();
    if sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
        sqlx::Postgres::drop_database(url)
            .await
            .context("dropping the demo's database of an earlier run")?;
    }
    let nats = crate::app::connect_nats(&settings.nats_url).await?;
    let topology = Topology::of(settings)?;
    topology.delete(&async_nats::jetstream::new(nats)).await;
    let name = url::Url::parse(url)
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    println!(
        "The demo runs in its own database ({name}) and NATS streams (prefix {}), reset at each start.",
        settings.nats_prefix.as_deref().unwrap_or_default()
    );
    Ok(())
}

/// The engine's API as the demo calls it.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Ok(request.send().await?)
    }

    /// An OAuth connect: start, the emulator's consent (approved), the callback.
    async fn oauth(&self, provider: &str) -> anyhow::Result<()> {
        let start = format!("{}/crm/{provider}/start?workspace={WORKSPACE}", self.base);
        let mut url = start;
        for _ in 0..3 {
            let response = self.call(reqwest::Method::GET, &url, None).await?;
            match response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
            {
                Some(next) if response.status().is_redirection() => url = next.to_owned(),
                _ if response.status().is_success() => return Ok(()),
                _ => bail!(
                    "connecting {provider}: {} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                ),
            }
        }
        let done = self.call(reqwest::Method::GET, &url, None).await?;
        anyhow::ensure!(
            done.status().is_success(),
            "connecting {provider}: {}",
            done.status()
        );
        Ok(())
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.call(reqwest::Method::POST, &url, Some(body)).await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {answer}");
        Ok(answer)
    }
}

/// The workspace the demo connects.
const WORKSPACE: &str = "demo";
/// The call outcome the demo pushes.
const CALL: &str = "demo-call-1";

#[allow(clippy::print_stdout)]
pub async fn run(base: Settings, opts: DemoOptions, stop: CancellationToken) -> anyhow::Result<()> {
    let sandboxes = Sandboxes::start().await?;
    let (settings, token) = demo_settings(&base, &sandboxes)?;
    reset(&settings).await?;
    println!(
        "Emulators: HubSpot {}, Zoho {}, Odoo {} (generated data, mutating as the demo runs).",
        sandboxes.hubspot_url, sandboxes.zoho_url, sandboxes.odoo_url
    );
    let secret = settings
        .hubspot_webhook_key()
        .expect("set above")
        .expose()
        .clone();
    let engine = Engine::build(settings.clone(), Role::All).await?;
    let addr = engine.local_addr();
    let pool = engine.pool().clone();
    let consumer = Topology::projector_name(Provider::HubSpot);
    let local = format!("http://127.0.0.1:{}", addr.port());
    let engine_stop = stop.child_token();
    let running = tokio::spawn(engine.run_until_stopped(engine_stop.clone()));
    let path = "/crm/webhooks/hubspot";
    let signed_uri = format!("{}{path}", settings.public_url.as_deref().unwrap_or(&local));
    let batch = sample_contacts_batch(DEMO_PORTAL, Utc::now().timestamp_millis());
    let body = serde_json::to_vec(&batch)?;
    let mut request = reqwest::Client::new()
        .post(format!("{local}{path}"))
        .body(body.clone());
    for (name, value) in signed_headers(
        Signature::V3,
        &secret,
        &signed_uri,
        &body,
        Utc::now().timestamp_millis(),
    ) {
        request = request.header(name, value);
    }
    let response = request.send().await.context("posting the sample webhook")?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    println!(
        "POST {path}: {} events signed v3 -> {status} {answer}",
        batch.len()
    );
    if !status.is_success() {
        bail!("the engine refused the sample webhook");
    }
    let last = answer["last_sequence"].as_u64().unwrap_or(0);
    if !checkpoint::wait_for(&pool, &consumer, last, Duration::from_secs(30)).await? {
        bail!("the sample batch was not projected within 30 s");
    }
    print_contacts(&pool).await?;

    let api = Api {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        base: local.clone(),
        token: token.clone(),
    };
    println!("\nConnecting workspace `{WORKSPACE}` to each CRM…");
    api.oauth("hubspot").await?;
    api.oauth("zoho").await?;
    let c = sandboxes.odoo.credentials(&sandboxes.odoo_url);
    api.post(
        "/crm/odoo/connect",
        serde_json::json!({"workspace": WORKSPACE, "url": c["base_url"], "database": c["database"],
                           "login": c["login"], "api_key": c["api_key"]}),
    )
    .await?;
    api.post(
        "/crm/odoo/scheduler/start",
        serde_json::json!({"workspace": WORKSPACE, "interval_secs": 5}),
    )
    .await?;
    println!("Connected: hubspot, zoho, odoo. The pollers read everything, then keep up with the emulators' changes.");
    let mut drivers = Vec::new();
    // A token the user set is theirs: named, never echoed. A made-up one is shown.
    let token = if std::env::var("CRM_API_TOKEN").is_ok_and(|v| !v.is_empty()) {
        "$CRM_API_TOKEN".to_owned()
    } else {
        token
    };
    println!(
        "\nAPI token: {token}\n  status:  curl -H \"Authorization: Bearer {token}\" {local}/crm/sync/status\n  feed:    curl -N -H \"Authorization: Bearer {token}\" '{local}/crm/feed?workspace={WORKSPACE}'\n  OpenAPI: {local}/openapi.json   metrics: {local}/metrics\n"
    );
    let mut pushed = false;
    let started = std::time::Instant::now();
    let outcome = loop {
        let counts = progress(&pool).await?;
        let all = ["hubspot", "zoho", "odoo"]
            .iter()
            .all(|p| counts.get(*p).is_some_and(|n| *n > 0));
        if all && !pushed {
            if let Some(email) = shared_email(&pool).await? {
                api.post(
                    &format!("/crm/calls/{CALL}/push-to-crm"),
                    serde_json::json!({
                        "workspace": WORKSPACE, "provider": "all",
                        "contact": {"email": email},
                        "started_at": Utc::now(), "duration_secs": 95,
                        "direction": "outbound", "disposition": "connected",
                        "summary": "crmsync demo call: interested, follow up next week",
                    }),
                )
                .await?;
                println!("Pushed call {CALL} for {email} to every CRM.");
                pushed = true;
                // From now on the emulators' colleagues edit, create and delete.
                drivers = vec![
                    sandboxes.hubspot.spawn_mutations(2.0),
                    sandboxes.zoho.spawn_mutations(2.0),
                    sandboxes.odoo.spawn_mutations(2.0),
                ];
            }
        }
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm_call_pushes WHERE call_id = $1 AND state = 'sent'",
        )
        .bind(CALL)
        .fetch_one(&pool)
        .await?;
        if opts.exit && pushed && sent == 3 {
            println!("Call {CALL} is in all three CRMs.");
            break Ok(());
        }
        if opts.exit && started.elapsed() > Duration::from_secs(120) {
            break Err(anyhow::anyhow!("the demo did not finish within 2 minutes"));
        }
        tokio::select! {
            () = stop.cancelled() => break Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    for driver in drivers {
        driver.abort();
    }
    if !opts.exit {
        println!("\ncrmsync is serving on {local}. Press Ctrl-C to stop.");
    }
    engine_stop.cancel();
    running.await.context("engine task")??;
    outcome
}

/// Prints one line of progress: records projected per provider, events stored,
/// pushes by state; answers the contacts per provider.
#[allow(clippy::print_stdout)]
async fn progress(pool: &sqlx::PgPool) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT 'contacts', provider, count(*) FROM contacts GROUP BY provider
         UNION ALL SELECT 'companies', provider, count(*) FROM companies GROUP BY provider
         UNION ALL SELECT 'deals', provider, count(*) FROM deals GROUP BY provider
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let pushes: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM crm_call_pushes GROUP BY state ORDER BY state")
            .fetch_all(pool)
            .await?;
    let mut line = String::new();
    let mut contacts = HashMap::new();
    for (table, provider, n) in &rows {
        if table == "contacts" {
            contacts.insert(provider.clone(), *n);
        }
        line.push_str(&format!("{table}/{provider}={n} "));
    }
    for (state, n) in &pushes {
        line.push_str(&format!("pushes/{state}={n} "));
    }
    println!("{}", line.trim_end());
    Ok(contacts)
}

/// An email every CRM has a contact for (the emulators share their people).
async fn shared_email(pool: &sqlx::PgPool) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT lower(email) FROM contacts WHERE NOT deleted AND email IS NOT NULL
         GROUP BY lower(email) HAVING count(DISTINCT provider) = 3 ORDER BY 1 LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

#[allow(clippy::print_stdout)]
async fn print_contacts(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT remote_id, email, first_name, last_name, phone, job_title, deleted
         FROM contacts WHERE workspace_id = $1 AND provider = 'hubspot' ORDER BY remote_id",
    )
    .bind(DEMO_PORTAL.to_string())
    .fetch_all(pool)
    .await?;
    println!("\nProjected contacts (workspace {DEMO_PORTAL}, provider hubspot):");
    println!(
        "{:<10} {:<20} {:<10} {:<10} {:<18} {:<14} deleted",
        "remote_id", "email", "first_name", "last_name", "phone", "job_title"
    );
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for (id, email, first, last, phone, job, deleted) in &rows {
        println!(
            "{:<10} {:<20} {:<10} {:<10} {:<18} {:<14} {}",
            id,
            show(email),
            show(first),
            show(last),
            show(phone),
            show(job),
            deleted
        );
    }
    Ok(())
}
