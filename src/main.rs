//! The command line: `serve`, `registration`, `migrate`, `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use letta_matrix::config::Settings;
use letta_matrix::{app, check, registration, store::Store, telemetry};

#[derive(Parser)]
#[command(
    name = "letta-matrix",
    version,
    about = "A Matrix application service that gives every Letta agent its own Matrix user"
)]
struct Cli {
    /// The TOML config file; every key can also be set as LETTA_MATRIX_<KEY>.
    #[arg(long, short, global = true, env = "LETTA_MATRIX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appservice.
    Serve,
    /// Write the registration file for the homeserver (keeps existing tokens).
    Registration {
        /// Where to write it; defaults to the `registration` config key.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Make new tokens even if the file exists (the homeserver must then reload it).
        #[arg(long)]
        regenerate: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Check the config, database, homeserver and Letta, and say what is wrong.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(settings.raw.log_format, &settings.raw.log_filter);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(run(cli.command, settings)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => app::serve(settings).await?,
        Command::Registration { out, regenerate } => {
            let out = out.unwrap_or_else(|| settings.raw.registration.clone());
            let written = registration::generate(&settings, &out, regenerate)?;
            println!(
                "wrote {} (appservice id `{}`, url {})",
                out.display(),
                written.id,
                written.url.as_deref().unwrap_or("-")
            );
            println!(
                "add it to the homeserver: Synapse `app_service_config_files: [{}]`, then restart the homeserver",
                out.display()
            );
        }
        Command::Migrate => {
            let store = Store::connect(&settings.database_url, 1)
                .await
                .with_context(|| format!("cannot open the database ({})", app::redact_url(&settings.database_url)))?;
            store.migrate().await?;
            store.close().await;
            println!("database migrations are current ({})", store.backend().name());
        }
        Command::Check => {
            let report = check::run(&settings).await;
            print!("{}", report.render());
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
