//! The inbox under a backlog, on SQLite and on PostgreSQL, through the store calls the relay makes:
//!
//! - one claim's time with an empty inbox and with the backlog waiting;
//! - drain: 200,000 pending rows (in one room; spread over 1,000 rooms) claimed and finished by an
//!   instant agent with the relay's concurrency (a dispatcher filling free lanes, each lane working
//!   its room in order until it is empty, as `relay::Relay` does);
//! - ingest: 100-event transactions sent one at a time (as Synapse does) while that relay works,
//!   timed with an empty inbox and while it drains the backlog.
//!
//! `cargo bench --bench inbox` prints the figures (`-- backlog=N` for a smaller backlog). Under `cargo test` (no `--bench` argument) it
//! runs the same steps small, so the suite proves the bench still works.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use letta_matrix::store::{InboxEvent, InboxState, NewInboxEvent, Store};
use support::db::TestDatabase;
use tokio::sync::{Notify, Semaphore};

const OWNER: &str = "relay-bench";
const LEASE_MS: i64 = 30_000;
/// `relay_concurrency` and `database_max_connections` as `serve` has them by default.
const LANES: usize = 128;
const CONNECTIONS: u32 = 8;
/// As the relay's dispatcher: it looks for work nobody announced this often.
const POLL_INTERVAL: Duration = Duration::from_millis(1000);
const INGEST_EVENTS: usize = 100;
const INGEST_ROOMS: usize = 10;

struct Sizes {
    backlog: usize,
    spread_rooms: usize,
    ingest_transactions: usize,
}

const MEASURE: Sizes = Sizes {
    backlog: 200_000,
    spread_rooms: 1_000,
    ingest_transactions: 300,
};
const SMOKE: Sizes = Sizes {
    backlog: 2_000,
    spread_rooms: 20,
    ingest_transactions: 5,
};

#[tokio::main]
async fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let mut sizes = if measuring { MEASURE } else { SMOKE };
    // `-- backlog=N` for a quicker measuring run.
    if let Some(backlog) = std::env::args().find_map(|arg| arg.strip_prefix("backlog=").and_then(|n| n.parse().ok())) {
        sizes.backlog = backlog;
    }
    let postgres = std::env::var(support::db::POSTGRES_ENV).is_ok();
    if !postgres {
        eprintln!("{} is unset: PostgreSQL skipped", support::db::POSTGRES_ENV);
    }
    println!(
        "| engine | backlog | one claim, empty / backlog ms | drain rows/s | ingest p50 / p99 ms, empty | ingest p50 / p99 ms, draining |"
    );
    println!("|---|---|---|---|---|---|");
    for engine in ["sqlite", "postgres"] {
        if engine == "postgres" && !postgres {
            continue;
        }
        for rooms in [1, sizes.spread_rooms] {
            let database = match engine {
                "sqlite" => TestDatabase::sqlite(),
                _ => TestDatabase::postgres().await,
            };
            let store = Store::connect(&database.url, CONNECTIONS).await.unwrap();
            store.migrate().await.unwrap();
            let figures = scenario(&store, &sizes, rooms).await;
            println!(
                "| {engine} | {} pending in {rooms} room{} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} |",
                sizes.backlog,
                if rooms == 1 { "" } else { "s" },
                ms(figures.claim_empty),
                ms(figures.claim_backlog),
                figures.drain_rows_per_second,
                ms(figures.ingest_empty.0),
                ms(figures.ingest_empty.1),
                ms(figures.ingest_draining.0),
                ms(figures.ingest_draining.1),
            );
            store.close().await;
        }
    }
}

struct Figures {
    claim_empty: Duration,
    claim_backlog: Duration,
    drain_rows_per_second: f64,
    ingest_empty: (Duration, Duration),
    ingest_draining: (Duration, Duration),
}

async fn scenario(store: &Store, sizes: &Sizes, rooms: usize) -> Figures {
    let claim_empty = one_claim(store).await;
    let relay = BenchRelay::start(store.clone());
    let ingest_empty = ingest(store, &relay, "empty", sizes.ingest_transactions).await;
    relay.wait_drained(sizes.ingest_transactions * INGEST_EVENTS).await;
    relay.stop().await;

    fill(store, sizes.backlog, rooms).await;
    let claim_backlog = one_claim(store).await;
    let relay = BenchRelay::start(store.clone());
    let started = Instant::now();
    let ingest_draining = ingest(store, &relay, "draining", sizes.ingest_transactions).await;
    let drained = sizes.backlog + sizes.ingest_transactions * INGEST_EVENTS;
    relay.wait_drained(drained).await;
    let elapsed = started.elapsed();
    relay.stop().await;
    assert_eq!(
        store.inbox_count(InboxState::Pending).await.unwrap(),
        0,
        "every row was drained"
    );
    Figures {
        claim_empty,
        claim_backlog,
        drain_rows_per_second: drained as f64 / elapsed.as_secs_f64(),
        ingest_empty,
        ingest_draining,
    }
}

/// One claim of free lanes' worth of room heads, released again at once.
async fn one_claim(store: &Store) -> Duration {
    let started = Instant::now();
    store
        .claim_room_heads("one-claim", LEASE_MS, LANES as i64)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    store.release_leases("one-claim").await.unwrap();
    elapsed
}

/// `count` pending rows, round-robin over `rooms` rooms, in 1,000-event transactions.
async fn fill(store: &Store, count: usize, rooms: usize) {
    let events: Vec<NewInboxEvent> = (0..count)
        .map(|n| {
            message(
                &format!("$backlog-{n}"),
                &format!("!backlog{}:bench.local", n % rooms),
                n,
            )
        })
        .collect();
    for (chunk_number, chunk) in events.chunks(1000).enumerate() {
        store
            .record_transaction(&format!("fill-{chunk_number}"), chunk)
            .await
            .unwrap();
    }
}

/// Sends `count` 100-event transactions one at a time, waking the relay after each as the
/// transaction endpoint does; returns (p50, p99).
async fn ingest(store: &Store, relay: &BenchRelay, label: &str, count: usize) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(count);
    for t in 0..count {
        let events: Vec<NewInboxEvent> = (0..INGEST_EVENTS)
            .map(|n| {
                message(
                    &format!("${label}-{t}-{n}"),
                    &format!("!live{}:bench.local", n % INGEST_ROOMS),
                    n,
                )
            })
            .collect();
        let started = Instant::now();
        store
            .record_transaction(&format!("{label}-{t}"), &events)
            .await
            .unwrap();
        latencies.push(started.elapsed());
        relay.wake.notify_one();
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

fn message(event_id: &str, room_id: &str, n: usize) -> NewInboxEvent {
    NewInboxEvent {
        event_id: event_id.to_owned(),
        room_id: room_id.to_owned(),
        sender: "@alice:bench.local".into(),
        event_type: "m.room.message".into(),
        kind: InboxEvent::Message,
        event_json: format!(
            r#"{{"type":"m.room.message","event_id":"{event_id}","room_id":"{room_id}","sender":"@alice:bench.local","content":{{"msgtype":"m.text","body":"message {n}: a sentence of ordinary length for a chat"}}}}"#
        ),
    }
}

/// The relay's dispatch with an agent that answers at once: what is left is the store's share.
struct BenchRelay {
    wake: Arc<Notify>,
    finished: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
    lanes: Arc<Semaphore>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl BenchRelay {
    fn start(store: Store) -> Self {
        let wake = Arc::new(Notify::new());
        let finished = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let lanes = Arc::new(Semaphore::new(LANES));
        let dispatcher = tokio::spawn(dispatch(
            store,
            lanes.clone(),
            wake.clone(),
            finished.clone(),
            stopped.clone(),
        ));
        Self {
            wake,
            finished,
            stopped,
            lanes,
            dispatcher,
        }
    }

    async fn wait_drained(&self, rows: usize) {
        while self.finished.load(Ordering::Relaxed) < rows {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ends the dispatcher and waits for every lane to end.
    async fn stop(self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.dispatcher.abort();
        let _ = self.dispatcher.await;
        let _all_lanes = self.lanes.acquire_many(LANES as u32).await.unwrap();
    }
}

async fn dispatch(
    store: Store,
    lanes: Arc<Semaphore>,
    wake: Arc<Notify>,
    finished: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
) {
    let lane_ended = Arc::new(Notify::new());
    loop {
        let free = lanes.available_permits();
        if free > 0 {
            for row in store.claim_room_heads(OWNER, LEASE_MS, free as i64).await.unwrap() {
                let permit = lanes.clone().try_acquire_owned().unwrap();
                let (store, ended, finished, stopped) =
                    (store.clone(), lane_ended.clone(), finished.clone(), stopped.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut row = row;
                    while !stopped.load(Ordering::Relaxed) {
                        let (finished_it, next) = store
                            .finish_and_claim_next(&row, OWNER, "done", None, LEASE_MS)
                            .await
                            .unwrap();
                        assert!(finished_it, "the lane's lease held");
                        finished.fetch_add(1, Ordering::Relaxed);
                        match next {
                            Some(next) => row = next,
                            None => break,
                        }
                    }
                    ended.notify_one();
                });
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = lane_ended.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
