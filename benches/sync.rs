//! Agent sync, measured: the cost of a pass over many unchanged agents (in process), the time
//! from an agent's creation in Letta to a person's invite, and bringing many new agents into a
//! real Synapse with the `serve` binary (time, the bottleneck, memory).
//!
//! `cargo bench --bench sync` prints the figures (needs `SYNAPSE_PYTHON`, as `scripts/test` sets).
//! Under `cargo test` it runs the same steps on a handful of agents. `-- pass` or `-- synapse` after
//! the command runs one part.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use letta_matrix::app::AppState;
use letta_matrix::config::Settings;
use letta_matrix::letta::AGENTS_PAGE_SIZE;
use letta_matrix::registration;
use letta_standin::LettaStandin;
use support::db::TestDatabase;
use support::service::{Installation, process_cpu_seconds};
use support::synapse::{Person, Synapse};
use support::wait::eventually;

const SERVER: &str = "bench.local";

struct Sizes {
    unchanged_agents: usize,
    passes: usize,
    latency_samples: usize,
    new_agents: usize,
}

const MEASURE: Sizes = Sizes {
    unchanged_agents: 1000,
    passes: 20,
    latency_samples: 5,
    new_agents: 1000,
};
const SMOKE: Sizes = Sizes {
    unchanged_agents: 20,
    passes: 2,
    latency_samples: 1,
    new_agents: 3,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = if args.iter().any(|arg| arg == "--bench") {
        MEASURE
    } else {
        SMOKE
    };
    // `cargo bench --bench sync -- pass` (or `-- synapse`) runs one part.
    let chosen = |part: &str| args.iter().any(|arg| arg == part);
    let everything = !chosen("pass") && !chosen("synapse");
    if everything || chosen("pass") {
        unchanged_pass_cost(&sizes).await;
    }
    if everything || chosen("synapse") {
        on_synapse(&sizes).await;
    }
}

/// CPU time of the whole process, at nanosecond resolution.
fn process_cpu() -> Duration {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// One pass over agents that all exist in Matrix already: one Letta list call, one database read,
/// no homeserver call (the homeserver URL points nowhere, so a call would fail the pass).
async fn unchanged_pass_cost(sizes: &Sizes) {
    let letta = LettaStandin::start().await;
    let database = TestDatabase::sqlite();
    let env: Vec<(String, String)> = [
        ("LETTA_MATRIX_SERVER_NAME", SERVER.to_owned()),
        ("LETTA_MATRIX_HOMESERVER_URL", "http://127.0.0.1:9".to_owned()),
        ("LETTA_MATRIX_LETTA_URL", letta.url()),
        ("LETTA_MATRIX_DATABASE_URL", database.url.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::from_parts("", None, &env).unwrap();
    let registration = registration::build(&settings, None);
    let store = database.open().await;
    let state = AppState::new(settings, store.clone(), &registration);
    for n in 0..sizes.unchanged_agents {
        let id = letta.create_agent(&format!("Agent {n}"), Some("benchmark agent"));
        let ghost = state.namespace.ghost_for_agent(&id);
        store
            .insert_agent(&id, ghost.as_str(), &format!("Agent {n}"), Some("benchmark agent"))
            .await
            .unwrap();
        store
            .set_agent_room(&id, &format!("!room{n}:{SERVER}"), None)
            .await
            .unwrap();
        store
            .mark_agent_synced(&id, &format!("Agent {n}"), Some("benchmark agent"))
            .await
            .unwrap();
    }
    let reconciler = letta_matrix::sync::Reconciler::new(&state);
    reconciler.pass().await.unwrap();

    let (wall, cpu) = timed(sizes.passes, || async {
        let summary = reconciler.pass().await.unwrap();
        assert_eq!(
            (summary.agents, summary.provisioned, summary.failed),
            (sizes.unchanged_agents, 0, 0)
        );
    })
    .await;
    // The stand-in shares this process; its side of the same list calls is measured alone.
    let http = reqwest::Client::new();
    let (_, standin_cpu) = timed(sizes.passes, || async {
        // The same pages a pass fetches; their content does not change the cost.
        for _ in 0..sizes.unchanged_agents.div_ceil(AGENTS_PAGE_SIZE) {
            let url = format!("{}/v1/agents/?limit={AGENTS_PAGE_SIZE}&order=asc", letta.url());
            http.get(url).send().await.unwrap().bytes().await.unwrap();
        }
    })
    .await;
    println!(
        "## One sync pass over {} unchanged agents (SQLite, in process)\n",
        sizes.unchanged_agents
    );
    println!("| wall per pass | process CPU per pass | of which the stand-in serving the list | our share |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n",
        ms(wall),
        ms(cpu),
        ms(standin_cpu),
        ms(cpu.saturating_sub(standin_cpu))
    );
}

/// Runs `step` `times` times; returns mean wall time and mean process CPU time per run.
async fn timed<F, Fut>(times: usize, mut step: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (wall, cpu) = (Instant::now(), process_cpu());
    for _ in 0..times {
        step().await;
    }
    let runs = times.max(1) as u32;
    (wall.elapsed() / runs, (process_cpu() - cpu) / runs)
}

async fn invited_to(person: &Person, name: &str) -> bool {
    let invites = person.invites().await.unwrap();
    invites.iter().any(|(_, state)| {
        state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name)
    })
}

async fn ready_agents(install: &Installation) -> usize {
    let status = install.status().await;
    status["agents"]
        .as_array()
        .map_or(0, |agents| agents.iter().filter(|a| a["state"] == "ready").count())
}

async fn on_synapse(sizes: &Sizes) {
    let letta = LettaStandin::start().await;
    let mut install = Installation::new(SERVER);
    install.write_registration().await;
    let synapse = Synapse::start(SERVER, &[install.registration_path()])
        .await
        .expect("Synapse (set SYNAPSE_PYTHON)");
    let alice = synapse.register_user("alice", "alice-password").await.unwrap();
    for (key, value) in [
        ("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url()),
        ("LETTA_MATRIX_LETTA_URL", letta.url()),
        ("LETTA_MATRIX_INVITE", alice.user_id.clone()),
        (
            "LETTA_MATRIX_ADMIN_TOKEN",
            "bench-admin-token-0123456789abcdef".to_owned(),
        ),
        ("LETTA_MATRIX_LOG_FILTER", "warn".to_owned()),
    ] {
        install.set(key, value);
    }
    let served = install.serve().await.unwrap();
    let patience = Duration::from_secs(60);
    // The space comes with the first agent; it is set up before anything is timed.
    letta.create_agent("Warm-up", None);
    eventually("the first agent", patience, || async {
        invited_to(&alice, "Warm-up").await.then_some(())
    })
    .await;

    let mut latencies = Vec::new();
    for sample in 0..sizes.latency_samples {
        let name = format!("Latency {sample}");
        let created = Instant::now();
        letta.create_agent(&name, None);
        eventually(&name, patience, || async {
            invited_to(&alice, &name).await.then_some(())
        })
        .await;
        latencies.push(created.elapsed());
    }
    latencies.sort();

    let (synapse_pid, serve_pid) = (synapse.pid().unwrap(), served.pid() as u32);
    let (synapse_cpu, serve_cpu) = (process_cpu_seconds(synapse_pid), process_cpu_seconds(serve_pid));
    let started = Instant::now();
    for n in 0..sizes.new_agents {
        letta.create_agent(&format!("Bulk {n}"), Some("created in bulk"));
    }
    let expected = 1 + sizes.latency_samples + sizes.new_agents;
    eventually("every bulk agent in Matrix", Duration::from_secs(1800), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (ready_agents(&install).await == expected).then_some(())
    })
    .await;
    let bulk = started.elapsed();
    let (synapse_used, serve_used) = (
        process_cpu_seconds(synapse_pid) - synapse_cpu,
        process_cpu_seconds(serve_pid) - serve_cpu,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = served.rss_kib() as f64 / 1024.0;

    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("## On Synapse 1.163.2 ({profile} `serve`, SQLite, sync interval 1 s)\n");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| agent created in Letta → person sees the invite (n={}) | median {:.0} ms, max {:.0} ms |",
        latencies.len(),
        ms(latencies[latencies.len() / 2]),
        ms(*latencies.last().unwrap())
    );
    println!(
        "| {} new agents fully in Matrix | {:.1} s ({:.1} agents/s) |",
        sizes.new_agents,
        bulk.as_secs_f64(),
        sizes.new_agents as f64 / bulk.as_secs_f64()
    );
    println!("| CPU used meanwhile: Synapse / letta-matrix | {synapse_used:.1} s / {serve_used:.1} s |");
    println!("| letta-matrix RSS with {expected} agents | {rss:.1} MiB |");
    assert_eq!(served.terminate().await, Some(0));
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
