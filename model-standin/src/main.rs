//! `model-standin`: the model stand-in as a process, for pointing a Letta at by hand. Every model
//! name echoes the user ("You said: ..."); scripting is for the library's callers.

use std::net::{Ipv4Addr, SocketAddr};

use clap::Parser;
use model_standin::ModelStandin;

#[derive(Parser)]
#[command(about = "An OpenAI-compatible model server stand-in that echoes the user")]
struct Args {
    /// The loopback port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let standin = ModelStandin::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    println!("{}", standin.url());
    println!("llm_config: {}", standin.llm_config("standin"));
    println!("embedding_config: {}", standin.embedding_config());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
