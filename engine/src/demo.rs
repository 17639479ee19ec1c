//! `crmsync demo`: the engine's main job on a sample. Starts the engine, sends a
//! signed HubSpot webhook batch to it over HTTP, waits until the batch is projected
//! and prints the rows; then keeps serving until stopped (or exits with `--exit`).

use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::Secret;
use crmsync_sandbox::hubspot::webhooks::{sample_contacts_batch, signed_headers, Signature};

use crmsync_projectors::checkpoint;
use crmsync_schema::{ObjectType, Provider};

use crate::app::{Engine, Role};
use crate::config::Settings;
use crate::topology::Topology;

/// HubSpot's documentation example portal.
pub const DEMO_PORTAL: u64 = 62515;
const DEMO_SECRET: &str = "crmsync-demo-client-secret";

/// Options of `crmsync demo`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DemoOptions {
    /// Exit after printing the projected rows instead of serving on.
    #[arg(long)]
    pub exit: bool,
}

#[allow(clippy::print_stdout)]
pub async fn run(
    mut settings: Settings,
    opts: DemoOptions,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if settings.hubspot_webhook_key().is_none() {
        println!("No CRM_HUBSPOT_CLIENT_SECRET set: the demo signs with a built-in demo secret and listens on 127.0.0.1 only.");
        settings.hubspot_client_secret = Some(Secret::new(DEMO_SECRET.to_owned()));
        // The built-in secret is public: never accept webhooks signed with it from afar.
        settings.bind = std::net::Ipv4Addr::LOCALHOST.into();
    }
    let secret = settings
        .hubspot_webhook_key()
        .expect("set above")
        .expose()
        .clone();
    let engine = Engine::build(settings.clone(), Role::All).await?;
    let addr = engine.local_addr();
    let pool = engine.pool().clone();
    let consumer = Topology::projector_name(Provider::HubSpot, &ObjectType::contact());
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
    if opts.exit {
        engine_stop.cancel();
    } else {
        println!(
            "\ncrmsync is serving on {local} (metrics: {local}/metrics). Press Ctrl-C to stop."
        );
    }
    running.await.context("engine task")??;
    Ok(())
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
