//! `letta-standin`: the test stand-in as a process, for the local demo and manual testing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use letta_standin::{LettaStandin, Replies, agent_id_for};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "A Letta REST server stand-in (no LLM): agents live in memory")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8283")]
    bind: SocketAddr,
    /// Require this Bearer token.
    #[arg(long)]
    token: Option<String>,
    /// Create an agent at start: `Name` or `Name:description`; repeatable. Its id is made from
    /// its name, so it is the same on every start.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// What agents answer: `echo` ("You said: …") or `friendly` (a short Markdown answer quoting
    /// the message, for the demo).
    #[arg(long, value_enum, default_value_t = Replies::Echo)]
    replies: Replies,
    /// Milliseconds an agent thinks before the first token of an answer.
    #[arg(long, default_value_t = 0)]
    first_token_ms: u64,
    /// Milliseconds between two streamed tokens.
    #[arg(long, default_value_t = 0)]
    token_ms: u64,
    /// Characters in one streamed token.
    #[arg(long, default_value_t = 8)]
    token_chars: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let standin = LettaStandin::start_on(args.bind, args.token).await?;
    standin.set_replies(args.replies);
    standin.set_default_latency(
        Duration::from_millis(args.first_token_ms),
        Duration::from_millis(args.token_ms),
    );
    standin.set_chunk_chars(args.token_chars);
    let mut names = BTreeSet::new();
    for spec in &args.agents {
        let (name, description) = match spec.split_once(':') {
            Some((name, description)) => (name, Some(description)),
            None => (spec.as_str(), None),
        };
        if !names.insert(name) {
            eprintln!("letta-standin: two agents are called {name}; names make ids, so they must differ");
            std::process::exit(2);
        }
        let id = agent_id_for(name);
        standin.create_agent_with_id(&id, name, description);
        println!("agent {id} {name}");
    }
    println!("letta-standin listening on {}", standin.url());
    // SIGTERM is how scripts stop it; either ends it with success.
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
