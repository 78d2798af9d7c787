//! The command line: `serve`, `registration`, `migrate`, `check`, `health`, `mcp-token`,
//! `import-history`.

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
    /// Ask a running `serve` on this host whether it is up (for container health checks).
    Health,
    /// Import an agent's Letta history into its room (again); messages already there are skipped.
    ImportHistory {
        /// The Letta agent id (`agent-…`).
        agent_id: String,
    },
    /// Print an agent's MCP token (set it as the agent's `LETTA_MATRIX_TOKEN` tool variable in Letta).
    McpToken {
        /// The Letta agent id (`agent-…`).
        agent_id: String,
    },
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
        Command::Health => return health(&settings).await,
        Command::ImportHistory { agent_id } => import_history(settings, &agent_id).await?,
        Command::McpToken { agent_id } => {
            let Some(secret) = settings.raw.mcp_secret.as_ref() else {
                anyhow::bail!(
                    "mcp_secret is not set, so the MCP server is off; set it (or LETTA_MATRIX_MCP_SECRET) first"
                );
            };
            if !agent_id.starts_with("agent-") {
                anyhow::bail!("`{agent_id}` does not look like a Letta agent id (agent-…)");
            }
            println!("{}", letta_matrix::mcp::agent_token(secret, &agent_id));
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

/// Runs the import here (a running `serve` may take it over; either way it ends once).
async fn import_history(settings: Settings, agent_id: &str) -> anyhow::Result<()> {
    let registration = registration::load_for(&settings)?;
    let store = Store::connect(&settings.database_url, 2)
        .await
        .with_context(|| format!("cannot open the database ({})", app::redact_url(&settings.database_url)))?;
    store.migrate().await?;
    if store.agent(agent_id).await?.is_none() {
        anyhow::bail!("no agent {agent_id} in the bridge's database; is it in Letta, and has `serve` synced it?");
    }
    let state = app::AppState::new(settings, store.clone(), &registration);
    store.request_history_import(agent_id, true).await?;
    let importer = letta_matrix::history::Importer::new(&state);
    loop {
        importer.run_next().await?;
        match store.history_import(agent_id).await? {
            Some(import) if import.state == "done" => {
                println!(
                    "history of {agent_id} is in its room ({} messages checked)",
                    import.imported
                );
                return Ok(());
            }
            Some(import) if import.state == "failed" => anyhow::bail!("the import of {agent_id} failed"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

/// `GET /health` on the ops address (or `bind`), on loopback when it listens on all addresses.
async fn health(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut address = settings.raw.ops_bind.unwrap_or(settings.raw.bind);
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = letta_matrix::outbound::http_client(std::time::Duration::from_secs(3));
    match client.get(format!("http://{address}/health")).send().await {
        Ok(response) if response.status().is_success() => {
            println!("healthy ({address})");
            Ok(ExitCode::SUCCESS)
        }
        Ok(response) => {
            eprintln!("unhealthy: {address} answered {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("unhealthy: nothing answers at {address}: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
