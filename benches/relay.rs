//! The relay, measured on a real Synapse with the `serve` binary and the Letta stand-in:
//!
//! - latency: a person's send → the agent's answer in the person's `/sync`, with an instant Letta,
//!   and our own share of it from `/metrics` (txn received → Letta asked; last token → Matrix send);
//! - throughput: many rooms × several messages each with a 200 ms Letta, injected as appservice
//!   transactions so that the person's own sends do not set the pace: one agent per room, then
//!   one agent in every room (DMs), with `conversation_scope` `room` and `agent`.
//!
//! `cargo bench --bench relay` prints the figures (needs `SYNAPSE_PYTHON`, as `scripts/test` sets).
//! Under `cargo test` it runs the same steps small. `-- latency`, `-- throughput` or `-- one-agent`
//! runs one part.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::service::process_cpu_seconds;
use support::stack::{Stack, stack};
use support::wait::eventually;

const SERVER: &str = "relay.bench";

struct Sizes {
    latency_samples: usize,
    rooms: usize,
    messages_per_room: usize,
}

const MEASURE: Sizes = Sizes {
    latency_samples: 100,
    rooms: 100,
    messages_per_room: 10,
};
const SMOKE: Sizes = Sizes {
    latency_samples: 3,
    rooms: 3,
    messages_per_room: 2,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = if args.iter().any(|arg| arg == "--bench") {
        MEASURE
    } else {
        SMOKE
    };
    let chosen = |part: &str| args.iter().any(|arg| arg == part);
    let everything = !chosen("latency") && !chosen("throughput") && !chosen("one-agent");
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("## Relay on Synapse 1.163.2 ({profile} `serve`, SQLite)\n");
    if everything || chosen("latency") {
        latency(&sizes).await;
    }
    if everything || chosen("throughput") {
        throughput(&sizes, Layout::AgentPerRoom).await;
    }
    if everything || chosen("one-agent") {
        throughput(&sizes, Layout::OneAgent { scope: "room" }).await;
        throughput(&sizes, Layout::OneAgent { scope: "agent" }).await;
    }
}

/// Who answers in the throughput rooms.
#[derive(Clone, Copy)]
enum Layout {
    /// Each room is its own agent's room.
    AgentPerRoom,
    /// One agent in every room (DMs alice opened with it), with this `conversation_scope`.
    OneAgent { scope: &'static str },
}

/// The stack with `agents` agents, alice in each of their rooms.
async fn bench(agents: usize, settings: &[(&str, &str)]) -> Stack {
    let names: Vec<String> = (0..agents).map(|n| format!("Bench {n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut settings = settings.to_vec();
    settings.push(("LETTA_MATRIX_LOG_FILTER", "warn"));
    stack(SERVER, &names, &settings).await
}

/// `count` DMs alice opens with the ghost, once it has joined each.
async fn direct_rooms(bench: &Stack, ghost: &str, count: usize) -> Vec<String> {
    let mut rooms = Vec::new();
    for _ in 0..count {
        let room = bench
            .alice
            .create_room(json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [ghost]}))
            .await
            .unwrap();
        rooms.push(room);
    }
    for room in &rooms {
        eventually("the ghost joining the DM", Duration::from_secs(120), || async {
            let members = bench.alice.joined_members(room).await.ok()?;
            members.iter().any(|m| m == ghost).then_some(())
        })
        .await;
    }
    rooms
}

/// Sends one message and long-polls `/sync` until the ghost's answer shows; returns the time.
async fn one_round_trip(bench: &Stack, ghost: &str, room: &str, since: &mut String, n: usize) -> Duration {
    let started = Instant::now();
    bench.alice.send_text(room, &format!("ping {n}")).await.unwrap();
    loop {
        let sync = bench.alice.sync(Some(since), 5000).await.unwrap();
        *since = sync["next_batch"].as_str().unwrap().to_owned();
        let timeline = sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if timeline
            .iter()
            .any(|e| e["sender"] == ghost && e["type"] == "m.room.message")
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no answer to ping {n}");
    }
}

async fn latency(sizes: &Sizes) {
    let bench = bench(1, &[]).await;
    let (room, ghost) = (bench.agents[0].room.clone(), bench.agents[0].ghost.clone());
    let mut since = bench.alice.sync(None, 0).await.unwrap()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first round warms connections and caches; it is not counted.
    one_round_trip(&bench, &ghost, &room, &mut since, 0).await;
    let mut samples = Vec::new();
    for n in 1..=sizes.latency_samples {
        samples.push(one_round_trip(&bench, &ghost, &room, &mut since, n).await);
    }
    samples.sort();
    let metrics = reqwest::get(format!("{}/metrics", bench.install.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!("### Latency, instant Letta stand-in (n={})\n", samples.len());
    println!("| figure | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| person's send → answer in the person's `/sync` | {:.1} ms | {:.1} ms |",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );
    for (name, label) in [
        (
            "letta_matrix_relay_pickup_seconds",
            "txn received → Letta request sent (ms clock)",
        ),
        (
            "letta_matrix_relay_finish_seconds",
            "Letta's last token → Matrix send started",
        ),
    ] {
        println!(
            "| {label} | {:.2} ms | {:.2} ms |",
            quantile(&metrics, name, "0.5") * 1000.0,
            quantile(&metrics, name, "0.99") * 1000.0
        );
    }
    println!();
    bench.stop().await;
}

async fn throughput(sizes: &Sizes, layout: Layout) {
    let (bench, rooms) = match layout {
        Layout::AgentPerRoom => {
            let bench = bench(sizes.rooms, &[]).await;
            let rooms = bench.agents.iter().map(|agent| agent.room.clone()).collect();
            (bench, rooms)
        }
        Layout::OneAgent { scope } => {
            let bench = bench(1, &[("LETTA_MATRIX_CONVERSATION_SCOPE", scope)]).await;
            let ghost = bench.agents[0].ghost.clone();
            let rooms = direct_rooms(&bench, &ghost, sizes.rooms).await;
            (bench, rooms)
        }
    };
    let letta_latency = Duration::from_millis(200);
    for agent in &bench.agents {
        bench.letta.set_latency(&agent.id, letta_latency, Duration::ZERO);
    }
    let hs_token = bench.install.write_registration().await.hs_token;
    let http = reqwest::Client::new();
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut events: Vec<Value> = Vec::new();
    for round in 0..sizes.messages_per_room {
        for (index, room) in rooms.iter().enumerate() {
            events.push(json!({
                "type": "m.room.message",
                "event_id": format!("$bench-{index}-{round}"),
                "room_id": room,
                "sender": bench.alice.user_id,
                "origin_server_ts": now_ms(),
                "content": {"msgtype": "m.text", "body": format!("message {round}")},
            }));
        }
    }
    let total = events.len();
    let serve_pid = bench.served.as_ref().unwrap().pid() as u32;
    let synapse_pid = bench.synapse.pid().unwrap();
    let (synapse_cpu, serve_cpu) = (process_cpu_seconds(synapse_pid), process_cpu_seconds(serve_pid));
    let homeserver_calls = |metrics: &str| counter(metrics, "letta_matrix_homeserver_requests_total ");
    let calls_before = homeserver_calls(&metrics_of(&bench).await);
    let started = Instant::now();
    for (n, batch) in events.chunks(100).enumerate() {
        let response = http
            .put(format!(
                "{}/_matrix/app/v1/transactions/bench-{n}",
                bench.install.base_url()
            ))
            .bearer_auth(&hs_token)
            .json(&json!({"events": batch}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let asked = |bench: &Stack| -> usize {
        bench
            .agents
            .iter()
            .map(|agent| bench.letta.user_messages(&agent.id).len())
            .sum()
    };
    let patience = Duration::from_secs(600);
    eventually("Letta asked every message", patience, || async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        (asked(&bench) == total).then_some(())
    })
    .await;
    let all_asked = started.elapsed();
    eventually("every answer posted", patience, || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let metrics = metrics_of(&bench).await;
        (counter(&metrics, "letta_matrix_relay_turns_total{outcome=\"answered\"}") as usize >= total).then_some(())
    })
    .await;
    let all_answered = started.elapsed();
    let calls_per_answer = (homeserver_calls(&metrics_of(&bench).await) - calls_before) / total as f64;
    let (synapse_used, serve_used) = (
        process_cpu_seconds(synapse_pid) - synapse_cpu,
        process_cpu_seconds(serve_pid) - serve_cpu,
    );
    // One conversation answers one message at a time; rooms with their own go side by side.
    let ideal = match layout {
        Layout::OneAgent { scope: "agent" } => letta_latency * total as u32,
        _ => letta_latency * sizes.messages_per_room as u32,
    };
    let max_concurrent = bench
        .agents
        .iter()
        .map(|agent| bench.letta.max_concurrent(&agent.id))
        .max()
        .unwrap_or(0);
    let who = match layout {
        Layout::AgentPerRoom => "an agent per room".to_owned(),
        Layout::OneAgent { scope } => format!("one agent in every room, `conversation_scope = \"{scope}\"`"),
    };
    println!(
        "### Throughput: {} rooms × {} messages, {who}, Letta answering in 200 ms\n",
        sizes.rooms, sizes.messages_per_room
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| ideal (Letta's 200 ms per turn, as parallel as the layout allows) | {:.1} s |",
        ideal.as_secs_f64()
    );
    println!(
        "| all {total} messages delivered to Letta | {:.1} s |",
        all_asked.as_secs_f64()
    );
    println!(
        "| all {total} answers posted to Synapse | {:.1} s ({:.0} answers/s) |",
        all_answered.as_secs_f64(),
        total as f64 / all_answered.as_secs_f64()
    );
    println!("| CPU used meanwhile: Synapse / letta-matrix | {synapse_used:.1} s / {serve_used:.1} s |");
    println!("| homeserver requests per answer | {calls_per_answer:.1} |");
    println!("| most turns of one agent at once | {max_concurrent} |\n");
    match layout {
        Layout::AgentPerRoom | Layout::OneAgent { scope: "agent" } => assert_eq!(max_concurrent, 1),
        Layout::OneAgent { .. } => assert!(max_concurrent > 1, "rooms with conversations of their own overlap"),
    }
    bench.stop().await;
}

async fn metrics_of(bench: &Stack) -> String {
    let url = format!("{}/metrics", bench.install.base_url());
    match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A summary quantile from Prometheus text, e.g. `name{quantile="0.5"} 0.001`.
fn quantile(metrics: &str, name: &str, q: &str) -> f64 {
    let prefix = format!("{name}{{quantile=\"{q}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
