//! The `crmsync` binary: parses the command line, reads the configuration, sets up
//! logging and hands over to the engine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crmsync_engine::app::{shutdown_signal, Engine, Role};
use crmsync_engine::config::{ConfigError, LogFormat, Settings};
use crmsync_engine::demo::{self, DemoOptions};
use crmsync_engine::sandbox_cmd::{self, SandboxOptions};
use crmsync_engine::{db, logging};
use crmsync_schema::Provider;

/// mimalloc rather than the system allocator: projection allocates and frees a few
/// dozen small blocks per event, and glibc's malloc was about a quarter of its CPU
/// time (BENCHMARKS.md, 2026-11-28 (late)).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ABOUT: &str =
    "crmsync: an event-sourced CRM sync engine. CRM changes (webhooks, polling) are \
kept as CloudEvents in NATS JetStream, the source of truth, and projected into Postgres.";

#[derive(Debug, Parser)]
#[command(name = "crmsync", version, about = ABOUT, after_help = env_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: migrate, lay out streams, then serve HTTP and consume.
    #[command(after_help = env_help())]
    Serve {
        /// api: webhooks and the HTTP API; worker: projectors; all: both.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create the database if absent and apply pending migrations, then exit.
    Migrate,
    /// Ask the engine serving on this machine's PORT whether it is ready: exit 0 when
    /// GET PATH answers 200, 1 otherwise (a container health check without curl).
    Check {
        /// The route to ask: /readyz (migrations, NATS) or /healthz (alive).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Start the engine, send it a signed sample HubSpot webhook batch over HTTP, print
    /// the projected contacts, then keep serving (until Ctrl-C) unless --exit.
    #[command(after_help = env_help())]
    Demo(DemoOptions),
    /// Store every record of a connected account as snapshot events, paging the
    /// provider's list API with progress on stderr; resumes where a crashed run
    /// stopped.
    Backfill(BackfillOptions),
    /// Measure ingest, projection and end-to-end latency beside the raw ceilings of the
    /// same run (uses its own NATS prefix and a scratch database crmsync_bench).
    Bench(crmsync_engine::bench::BenchOptions),
    /// Rebuild projections from the event stream into shadow tables and swap them in
    /// atomically while live projection goes on (progress on stderr). Calls no CRM
    /// and publishes nothing: after a mapping change it re-shapes history.
    Replay(ReplayArgs),
    /// Re-encrypt every stored secret to the first identity of ENCRYPTION_KEY (put the
    /// new identity first and keep the old one after it while this runs).
    RotateKey,
    /// Run the HubSpot, Zoho CRM and Odoo emulators standalone (any subset) and print
    /// one JSON object per emulator on stdout: its base URL and the credentials it
    /// accepts. Serves until Ctrl-C.
    Sandbox(SandboxOptions),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Projection {
    Contacts,
    Companies,
    Deals,
    Activities,
    All,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The projection to rebuild.
    #[arg(long, value_enum)]
    projection: Projection,
    /// Only the records of this CRM account (the rows' workspace_id: a HubSpot portal,
    /// a Zoho org, an Odoo database@host).
    #[arg(long)]
    workspace: Option<String>,
    /// Only records with events stored at or after this time (RFC 3339), each rebuilt
    /// from its whole history.
    #[arg(long, conflicts_with = "from_seq")]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only records with events at or after this stream sequence, each rebuilt from
    /// its whole history.
    #[arg(long)]
    from_seq: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct BackfillOptions {
    /// The provider: hubspot or zoho.
    #[arg(long)]
    provider: String,
    /// The workspace whose connection to backfill.
    #[arg(long)]
    workspace: String,
    /// One object only: contacts, companies or deals (default: all three).
    #[arg(long)]
    object: Option<String>,
}

fn env_help() -> String {
    Settings::help_text()
}

#[allow(clippy::print_stderr)]
fn fail(e: &anyhow::Error) -> ExitCode {
    if let Some(config) = e.downcast_ref::<ConfigError>() {
        eprintln!("crmsync: {config}");
        return ExitCode::from(2);
    }
    eprintln!("crmsync: error: {e:#}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Sandbox(opts) = cli.command {
        // The emulators need none of the engine's configuration.
        logging::init(LogFormat::Text);
        return sandbox_cmd::run(opts, shutdown_signal()).await;
    }
    let settings = Settings::from_env()?;
    logging::init(settings.log_format);
    match cli.command {
        Command::Serve { role } => {
            let engine = Engine::build(settings, role).await?;
            engine.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            let pool = db::connect(&settings.database_url).await?;
            db::migrate(&pool).await?;
            tracing::info!(version = db::latest_migration(), "database is up to date");
            Ok(())
        }
        Command::Check { path } => check(settings.port, &path).await,
        Command::Demo(opts) => demo::run(settings, opts, shutdown_signal()).await,
        Command::Backfill(opts) => backfill(settings, opts).await,
        Command::Replay(args) => replay(settings, args).await,
        Command::Bench(opts) => crmsync_engine::bench::run(settings, opts).await,
        Command::RotateKey => {
            let vault = settings.vault().ok_or_else(|| ConfigError {
                name: "ENCRYPTION_KEY",
                problem: "must be set: rotate-key re-encrypts to its first identity".into(),
            })?;
            let pool = db::connect(&settings.database_url).await?;
            db::migrate(&pool).await?;
            let rotated = crmsync_ingest::connections::rotate(&pool, &vault).await?;
            tracing::info!(
                rotated,
                "secrets re-encrypted to the first ENCRYPTION_KEY identity"
            );
            Ok(())
        }
        Command::Sandbox(_) => unreachable!("handled above"),
    }
}

/// GET `path` on the local engine; an error (exit 1) unless it answers 200.
#[allow(clippy::print_stdout)]
async fn check(port: u16, path: &str) -> anyhow::Result<()> {
    if !path.starts_with('/') {
        anyhow::bail!("--path must start with /, e.g. /readyz");
    }
    let url = format!("http://127.0.0.1:{port}{path}");
    // Loopback: never through an HTTP(S)_PROXY of the environment.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let response = client
        .get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        anyhow::bail!("{url} answered {status}: {}", body.trim());
    }
    println!("{url}: {}", body.trim());
    Ok(())
}

/// The Zoho modules `--object` names (all by default).
fn zoho_modules(object: Option<&str>) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
    use crmsync_adapters::zoho::MODULES;
    Ok(match object {
        None => MODULES.to_vec(),
        Some(o) => {
            let wanted = match o {
                "contacts" => "Contacts",
                "companies" => "Accounts",
                "deals" => "Deals",
                other => other,
            };
            let found = MODULES.iter().find(|(m, _)| m.eq_ignore_ascii_case(wanted));
            vec![*found.ok_or_else(|| {
                anyhow::anyhow!("--object must be contacts, companies or deals (got {o:?})")
            })?]
        }
    })
}

/// The HubSpot object types `--object` names (all by default).
fn hubspot_objects(object: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    use crmsync_engine::hubspot::poller::OBJECTS;
    Ok(match object {
        None => OBJECTS.to_vec(),
        Some(o) if OBJECTS.contains(&o) => OBJECTS.iter().copied().filter(|x| *x == o).collect(),
        Some(o) => anyhow::bail!("--object must be contacts, companies or deals (got {o:?})"),
    })
}

/// What a backfill reads, checked before anything is connected.
enum Backfill {
    HubSpot(Vec<&'static str>),
    Zoho(Vec<(&'static str, &'static str)>),
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn replay(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
    use crmsync_engine::replay::{self, ReplayOptions, Start};
    use crmsync_projectors::Table;
    let tables = match args.projection {
        Projection::Contacts => vec![Table::Contacts],
        Projection::Companies => vec![Table::Companies],
        Projection::Deals => vec![Table::Deals],
        Projection::Activities => vec![Table::Activities],
        Projection::All => replay::TABLES.to_vec(),
    };
    let workspace = args
        .workspace
        .map(crmsync_schema::WorkspaceId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--workspace: {e}"))?;
    let start = match (args.since, args.from_seq) {
        (Some(t), _) => Start::Time(t),
        (_, Some(n)) => Start::Seq(n),
        _ => Start::All,
    };
    // The engine is built for its pool, streams and migrations only.
    let mut quiet = settings.clone();
    quiet.port = 0;
    quiet.bind = std::net::Ipv4Addr::LOCALHOST.into();
    let engine = Engine::build(quiet, Role::Api).await?;
    let options = ReplayOptions {
        tables,
        workspace,
        start,
    };
    let mut progress = |p: &replay::Progress| {
        let percent = if p.of == 0 {
            100.0
        } else {
            p.events as f64 * 100.0 / p.of as f64
        };
        eprintln!(
            "replay: {}: {} events read ({percent:.0}% of the stream's span), {:.0}/s",
            p.phase, p.events, p.rate
        );
    };
    let report = replay::replay(
        engine.pool(),
        &engine.state.js,
        &engine.topology,
        &options,
        &mut progress,
    )
    .await?;
    let rows: Vec<String> = report
        .rows
        .iter()
        .map(|(t, n)| format!("{t} {n} rows"))
        .collect();
    let scope = report
        .records_in_scope
        .map(|n| format!(", {n} records in scope"))
        .unwrap_or_default();
    println!(
        "replayed {} events in {:.1}s{scope}; swapped in: {}",
        report.events,
        report.seconds,
        rows.join(", ")
    );
    Ok(())
}

async fn backfill(settings: Settings, opts: BackfillOptions) -> anyhow::Result<()> {
    let what = match opts.provider.as_str() {
        "hubspot" => Backfill::HubSpot(hubspot_objects(opts.object.as_deref())?),
        "zoho" => Backfill::Zoho(zoho_modules(opts.object.as_deref())?),
        other => anyhow::bail!(
            "backfill supports --provider hubspot or zoho (got {other:?}); an Odoo connection is read whole by its first poll (POST /crm/odoo/poll)"
        ),
    };
    let vault = settings.vault().ok_or_else(|| ConfigError {
        name: "ENCRYPTION_KEY",
        problem: "must be set to open the stored tokens".into(),
    })?;
    // The engine is built for its connections only: no port of the running server.
    let mut quiet = settings.clone();
    quiet.port = 0;
    quiet.bind = std::net::Ipv4Addr::LOCALHOST.into();
    let engine = Engine::build(quiet, Role::Api).await?;
    let js = engine.state.js.clone();
    let cursors = js
        .get_key_value(engine.topology.cursor_bucket())
        .await
        .map_err(|e| anyhow::anyhow!("opening the cursor bucket: {e}"))?;
    let vault = std::sync::Arc::new(vault);
    let total = match what {
        Backfill::HubSpot(objects) => {
            backfill_hubspot(&settings, &engine, vault, &cursors, &opts, objects).await?
        }
        Backfill::Zoho(modules) => {
            backfill_zoho(&settings, &engine, vault, &cursors, &opts, modules).await?
        }
    };
    tracing::info!(records = total, workspace = %opts.workspace, "backfill done");
    Ok(())
}

/// A backfill calls the CRM: not while the workspace's sync of the object is stopped.
async fn refuse_if_stopped(
    engine: &Engine,
    workspace: &str,
    provider: Provider,
    object: &str,
) -> anyhow::Result<()> {
    let stopped =
        crmsync_engine::pause::is_paused(engine.pool(), workspace, provider, object).await;
    anyhow::ensure!(
        !stopped,
        "the sync of {workspace}'s {provider} {object} is stopped; POST /crm/sync/start first"
    );
    Ok(())
}

/// Writes a backfill's row in the sync log.
async fn log_backfill(
    engine: &Engine,
    workspace: &str,
    provider: Provider,
    object: &str,
    started: chrono::DateTime<chrono::Utc>,
    result: &anyhow::Result<u64>,
) {
    let run = crmsync_engine::sync_log::Run {
        workspace,
        provider,
        object: Some(object),
        operation: "backfill",
        started,
        records: *result.as_ref().unwrap_or(&0),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        detail: serde_json::json!({}),
    };
    crmsync_engine::sync_log::record(engine.pool(), run).await;
}

async fn backfill_zoho(
    settings: &Settings,
    engine: &Engine,
    vault: std::sync::Arc<crmsync_adapters::Vault>,
    cursors: &async_nats::jetstream::kv::Store,
    opts: &BackfillOptions,
    modules: Vec<(&str, &str)>,
) -> anyhow::Result<u64> {
    use crmsync_engine::zoho::{backfill::backfill as run_backfill, Zoho};
    let app = settings.zoho_app().ok_or_else(|| ConfigError {
        name: "CRM_ZOHO_CLIENT_SECRET",
        problem: "and CRM_ZOHO_CLIENT_ID must be set to call Zoho".into(),
    })?;
    let zoho = Zoho::new(
        engine.pool().clone(),
        vault,
        app,
        engine.state.metrics.clone(),
        settings.rate_limits(),
        settings.zoho_concurrency,
    );
    let connection = zoho.connection(&opts.workspace).await?;
    let mut stderr = std::io::stderr();
    let mut total = 0;
    for (module, object) in modules {
        refuse_if_stopped(engine, &opts.workspace, Provider::Zoho, object).await?;
        let started = chrono::Utc::now();
        let result = run_backfill(
            &zoho,
            &engine.state.js,
            &engine.topology.subjects,
            cursors,
            &connection,
            module,
            object,
            &mut stderr,
        )
        .await;
        log_backfill(
            engine,
            &opts.workspace,
            Provider::Zoho,
            object,
            started,
            &result,
        )
        .await;
        total += result?;
    }
    Ok(total)
}

async fn backfill_hubspot(
    settings: &Settings,
    engine: &Engine,
    vault: std::sync::Arc<crmsync_adapters::Vault>,
    cursors: &async_nats::jetstream::kv::Store,
    opts: &BackfillOptions,
    objects: Vec<&str>,
) -> anyhow::Result<u64> {
    use crmsync_engine::hubspot::{backfill::backfill as run_backfill, HubSpot};
    let app = settings.hubspot_app().ok_or_else(|| ConfigError {
        name: "CRM_HUBSPOT_CLIENT_SECRET",
        problem: "and CRM_HUBSPOT_CLIENT_ID must be set to call HubSpot".into(),
    })?;
    let hubspot = HubSpot::new(
        engine.pool().clone(),
        vault,
        app,
        engine.state.metrics.clone(),
        settings.rate_limits(),
    );
    let connection = hubspot
        .connected()
        .await?
        .into_iter()
        .find(|c| c.workspace == opts.workspace)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "workspace {:?} has no active HubSpot connection",
                opts.workspace
            )
        })?;
    let mut stderr = std::io::stderr();
    let mut total = 0;
    for object in objects {
        refuse_if_stopped(engine, &opts.workspace, Provider::HubSpot, object).await?;
        let started = chrono::Utc::now();
        let result = run_backfill(
            &hubspot,
            &engine.state.js,
            &engine.topology.subjects,
            cursors,
            &connection,
            object,
            &mut stderr,
        )
        .await;
        log_backfill(
            engine,
            &opts.workspace,
            Provider::HubSpot,
            object,
            started,
            &result,
        )
        .await;
        total += result?;
    }
    Ok(total)
}
