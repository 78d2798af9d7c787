//! `letta-standin`: the test stand-in as a process, for the local demo and manual testing.

use std::net::SocketAddr;

use clap::Parser;
use letta_standin::LettaStandin;

#[derive(Parser)]
#[command(about = "A Letta REST server stand-in (no LLM): agents live in memory")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8283")]
    bind: SocketAddr,
    /// Require this Bearer token.
    #[arg(long)]
    token: Option<String>,
    /// Create an agent at start: `Name` or `Name:description`; repeatable.
    #[arg(long = "agent")]
    agents: Vec<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let standin = LettaStandin::start_on(args.bind, args.token).await?;
    for spec in &args.agents {
        let (name, description) = match spec.split_once(':') {
            Some((name, description)) => (name, Some(description)),
            None => (spec.as_str(), None),
        };
        let id = standin.create_agent(name, description);
        println!("agent {id} {name}");
    }
    println!("letta-standin listening on {}", standin.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
