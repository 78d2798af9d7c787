//! History import, measured: how many Letta messages per second reach a new agent room on a real
//! Synapse (each one a timestamped send by the bot or the ghost, recorded in our database).
//!
//! `cargo bench --bench history` prints the figures (needs `SYNAPSE_PYTHON`, as `scripts/test`
//! sets). Under `cargo test` it imports a handful.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::service::process_cpu_seconds;
use support::stack::stack_prepared;
use support::wait::eventually;

fn imported(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("letta_matrix_history_imported_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let measure = std::env::args().any(|arg| arg == "--bench");
    let total: usize = if measure { 1000 } else { 20 };
    let limit = total.to_string();
    let stack = stack_prepared(
        "history.bench",
        &["Veteran"],
        &[
            ("LETTA_MATRIX_HISTORY_IMPORT_LIMIT", limit.as_str()),
            ("LETTA_MATRIX_LOG_FILTER", "warn"),
        ],
        |letta, ids| {
            for n in 0..total {
                let role = if n % 2 == 0 { "user" } else { "assistant" };
                let date = format!(
                    "2025-01-{:02}T{:02}:{:02}:00+00:00",
                    1 + n / 1440,
                    (n / 60) % 24,
                    n % 60
                );
                letta.add_history(&ids[0], role, &format!("message {n} of the agent's past"), &date);
            }
        },
    )
    .await;
    let metrics_url = format!("{}/metrics", stack.install.base_url());
    let read = || async { imported(&reqwest::get(&metrics_url).await.unwrap().text().await.unwrap()) };
    let served = stack.served.as_ref().unwrap();
    let (synapse_pid, serve_pid) = (stack.synapse.pid().unwrap(), served.pid() as u32);
    let (synapse_cpu, serve_cpu) = (process_cpu_seconds(synapse_pid), process_cpu_seconds(serve_pid));
    let (started, already) = (Instant::now(), read().await);
    eventually("the whole history imported", Duration::from_secs(900), || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (read().await as usize >= total).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let measured = total as u64 - already;
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("## History import on Synapse 1.163.2 ({profile} `serve`, SQLite)\n");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| {measured} messages imported (of {total}; the rest before timing began) | {:.1} s, {:.0} messages/s |",
        elapsed.as_secs_f64(),
        measured as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| CPU meanwhile: Synapse / letta-matrix | {:.1} s / {:.1} s |\n",
        process_cpu_seconds(synapse_pid) - synapse_cpu,
        process_cpu_seconds(serve_pid) - serve_cpu
    );
    stack.stop().await;
}
