//! The `crmsync` binary: parses the command line, reads the configuration, sets up
//! logging and hands over to the engine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crmsync_engine::app::{shutdown_signal, Engine, Role};
use crmsync_engine::config::{ConfigError, Settings};
use crmsync_engine::demo::{self, DemoOptions};
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
    }
}
