//! Transaction ingest, measured on the real `serve` binary over loopback HTTP, on SQLite and on
//! PostgreSQL: how fast the homeserver's transactions are acknowledged, and what it costs.
//!
//! `cargo bench --bench transactions` prints the figures. Under `cargo test` (no `--bench`
//! argument) it runs a few transactions per scenario, so the suite proves the bench still works.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use letta_matrix::store::Store;
use serde_json::{Value, json};
use support::db::TestDatabase;
use support::service::Installation;

struct Scenario {
    name: &'static str,
    events_per_transaction: usize,
    transactions: usize,
    senders: usize,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "1-event txns, 1 sender",
        events_per_transaction: 1,
        transactions: 2000,
        senders: 1,
    },
    Scenario {
        name: "100-event txns, 1 sender",
        events_per_transaction: 100,
        transactions: 300,
        senders: 1,
    },
    Scenario {
        name: "100-event txns, 4 senders",
        events_per_transaction: 100,
        transactions: 300,
        senders: 4,
    },
];
const WARM_UP: usize = 50;
const SMOKE_TRANSACTIONS: usize = 5;

struct Figures {
    acks_per_second: f64,
    events_per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

#[tokio::main]
async fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let mut engines = vec![("sqlite", TestDatabase::sqlite())];
    match std::env::var(support::db::POSTGRES_ENV) {
        Ok(_) => engines.push(("postgres", TestDatabase::postgres().await)),
        Err(_) => eprintln!("{} is unset: PostgreSQL skipped", support::db::POSTGRES_ENV),
    }
    println!("| engine | scenario | acks/s | events/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    let mut footnotes = Vec::new();
    for (engine, database) in engines {
        let mut install = Installation::new("bench.local");
        install.set("LETTA_MATRIX_DATABASE_URL", database.url.clone());
        install.set("LETTA_MATRIX_LOG_FILTER", "warn");
        let registration = install.write_registration().await;
        let served = install.serve().await.expect("serve starts");
        tokio::time::sleep(Duration::from_secs(if measuring { 1 } else { 0 })).await;
        let idle_rss = served.rss_kib();
        let client = reqwest::Client::new();
        let pusher = Pusher {
            client: &client,
            base: install.base_url(),
            token: registration.hs_token.clone(),
        };
        let mut sent_events = 0;
        for (index, scenario) in SCENARIOS.iter().enumerate() {
            let count = if measuring {
                scenario.transactions
            } else {
                SMOKE_TRANSACTIONS
            };
            let warm_up = if measuring { WARM_UP } else { 0 };
            let prefix = format!("{engine}-{index}");
            pusher
                .run(&format!("{prefix}-warm"), scenario.events_per_transaction, warm_up, 1)
                .await;
            let figures = pusher
                .run(&prefix, scenario.events_per_transaction, count, scenario.senders)
                .await;
            sent_events += (warm_up + count) * scenario.events_per_transaction;
            println!(
                "| {engine} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
                scenario.name,
                figures.acks_per_second,
                figures.events_per_second,
                ms(figures.p50),
                ms(figures.p99),
                ms(figures.max)
            );
        }
        let store = Store::connect(&database.url, 1).await.unwrap();
        let stored = store.inbox_size().await.unwrap();
        assert_eq!(
            stored as usize, sent_events,
            "{engine}: every acknowledged event must be stored"
        );
        footnotes.push(format!(
            "{engine}: ready {:.0} ms after start; RSS idle {:.1} MiB, after load {:.1} MiB; {stored} events stored and verified",
            ms(served.ready_after),
            idle_rss as f64 / 1024.0,
            served.rss_kib() as f64 / 1024.0
        ));
        assert_eq!(served.terminate().await, Some(0));
    }
    println!();
    for line in footnotes {
        println!("- {line}");
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

struct Pusher<'a> {
    client: &'a reqwest::Client,
    base: String,
    token: String,
}

impl Pusher<'_> {
    /// Sends `count` transactions, `senders` at a time (Synapse itself uses one), and times each ack.
    async fn run(&self, prefix: &str, events: usize, count: usize, senders: usize) -> Figures {
        let started = Instant::now();
        let lanes = (0..senders).map(|lane| async move {
            let mut latencies = Vec::new();
            for n in (lane..count).step_by(senders) {
                latencies.push(self.push(&format!("{prefix}-{n}"), events).await);
            }
            latencies
        });
        let mut latencies: Vec<Duration> = futures::future::join_all(lanes).await.into_iter().flatten().collect();
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Figures {
            acks_per_second: count as f64 / elapsed,
            events_per_second: (count * events) as f64 / elapsed,
            p50: at(0.50),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }

    async fn push(&self, txn_id: &str, events: usize) -> Duration {
        let body = json!({"events": (0..events).map(|n| event(txn_id, n)).collect::<Vec<Value>>()});
        let started = Instant::now();
        let response = self
            .client
            .put(format!("{}/_matrix/app/v1/transactions/{txn_id}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("serve answers");
        assert_eq!(response.status(), 200, "{txn_id}: {:?}", response.text().await);
        started.elapsed()
    }
}

/// A typical person's message, spread over a few rooms like a busy homeserver's traffic.
fn event(txn_id: &str, n: usize) -> Value {
    json!({
        "type": "m.room.message",
        "event_id": format!("${txn_id}-{n}"),
        "room_id": format!("!room{}:bench.local", n % 10),
        "sender": "@alice:bench.local",
        "origin_server_ts": 1_700_000_000_000u64 + n as u64,
        "content": {"msgtype": "m.text", "body": format!("message {n} of {txn_id}: a sentence of ordinary length for a chat")},
    })
}
