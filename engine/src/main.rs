//! The `crmsync` binary: parses the command line, reads the configuration, sets up
//! logging and hands over to the engine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crmsync_engine::app::{shutdown_signal, Engine, Role};
use crmsync_engine::config::{ConfigError, LogFormat, Settings};
use crmsync_engine::demo::{self, DemoOptions};
use crmsync_engine::sandbox_cmd::{self, SandboxOptions};
use crmsync_engine::{db, logging};

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
    /// Start the engine, send it a signed sample HubSpot webhook batch over HTTP, print
    /// the projected contacts, then keep serving (until Ctrl-C) unless --exit.
    #[command(after_help = env_help())]
    Demo(DemoOptions),
    /// Re-encrypt every stored secret to the first identity of ENCRYPTION_KEY (put the
    /// new identity first and keep the old one after it while this runs).
    RotateKey,
    /// Run the HubSpot, Zoho CRM and Odoo emulators standalone (any subset) and print
    /// one JSON object per emulator on stdout: its base URL and the credentials it
    /// accepts. Serves until Ctrl-C.
    Sandbox(SandboxOptions),
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
        Command::Demo(opts) => demo::run(settings, opts, shutdown_signal()).await,
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
