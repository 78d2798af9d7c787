//! `scripts/demo`, the README's "run" command: Synapse, the stand-in with two agents and
//! letta-matrix come up, the printed user can log in and finds the agents, an agent's answer
//! streams in, a restart keeps the same agents and rooms, and a stop ends it all however it is
//! signalled.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::chat::shown_messages;
use support::synapse::{Person, free_port};
use support::wait::eventually;
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(60);

struct Ports {
    synapse: u16,
    appservice: u16,
    letta: u16,
}

/// How a run is stopped.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Started as a non-interactive shell starts `scripts/demo &` (SIGINT ignored), then SIGINT
    /// to its process group, as `kill -INT -<pgid>` does.
    InterruptGroupOfBackgroundJob,
    /// SIGTERM to the script alone.
    TerminateScript,
    /// SIGTERM to its process group.
    TerminateGroup,
}

/// A running `scripts/demo` in its own process group (the test runner stays out of group signals).
struct Demo {
    child: tokio::process::Child,
    pgid: i32,
}

impl Demo {
    async fn start(state: &Path, ports: &Ports, stop: Stop) -> Demo {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_letta-matrix")).parent().unwrap();
        assert!(
            bin_dir.join("letta-standin").exists(),
            "{} has no letta-standin: build the workspace's binaries first (scripts/test does: cargo build --workspace --bins)",
            bin_dir.display()
        );
        let mut command = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"));
        command
            .env("LETTA_MATRIX_DEMO_DIR", state)
            .env("LETTA_MATRIX_DEMO_BIN_DIR", bin_dir)
            .env("LETTA_MATRIX_DEMO_SYNAPSE_PORT", ports.synapse.to_string())
            .env("LETTA_MATRIX_DEMO_APPSERVICE_PORT", ports.appservice.to_string())
            .env("LETTA_MATRIX_DEMO_LETTA_PORT", ports.letta.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let ignore_interrupt = matches!(stop, Stop::InterruptGroupOfBackgroundJob);
        // SAFETY: between fork and exec only async-signal-safe calls (setpgid, signal) are made.
        unsafe {
            command.pre_exec(move || {
                libc::setpgid(0, 0);
                if ignore_interrupt {
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("scripts/demo starts");
        let pgid = child.id().unwrap() as i32;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = String::new();
        tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                printed.push_str(&line);
                printed.push('\n');
                if line.contains("Stop: Ctrl-C") {
                    return;
                }
            }
            panic!("the demo ended early:\n{printed}");
        })
        .await
        .expect("the demo comes up");
        assert!(
            printed.contains("demo-password") && printed.contains(&format!(":{}", ports.synapse)),
            "{printed}"
        );
        // Keep reading what it prints, so its "stopping" never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Demo { child, pgid }
    }

    /// Stops the demo as `stop` says; it must exit 0 with every part it started gone.
    async fn stop(mut self, stop: Stop, ports: &Ports) {
        let (target, signal) = match stop {
            Stop::InterruptGroupOfBackgroundJob => (-self.pgid, libc::SIGINT),
            Stop::TerminateScript => (self.pgid, libc::SIGTERM),
            Stop::TerminateGroup => (-self.pgid, libc::SIGTERM),
        };
        // SAFETY: kill only sends a signal to the process (group) this test started.
        unsafe { libc::kill(target, signal) };
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the demo stops")
            .unwrap();
        assert!(status.success(), "{stop:?}: {status}");
        for (part, port) in [
            ("Synapse", ports.synapse),
            ("letta-matrix", ports.appservice),
            ("the stand-in", ports.letta),
        ] {
            assert!(
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
                "{stop:?}: {part} still listens on {port}"
            );
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kills the process group this test started (Synapse and all), on a failure only.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }
}

/// The rooms a person is invited to, by id, with their names, kept by incremental syncs: the
/// demo's Synapse answers a repeated initial sync from its cache for two minutes.
#[derive(Default)]
struct Invites {
    since: Option<String>,
    rooms: BTreeMap<String, String>,
}

impl Invites {
    async fn update(&mut self, person: &Person) {
        let sync = person.sync(self.since.as_deref(), 0).await.unwrap();
        if let Some(next) = sync["next_batch"].as_str() {
            self.since = Some(next.to_owned());
        }
        for (room_id, invite) in sync["rooms"]["invite"].as_object().into_iter().flatten() {
            let events = invite["invite_state"]["events"].as_array().into_iter().flatten();
            if let Some(name) = events
                .filter(|e| e["type"] == "m.room.name")
                .find_map(|e| e["content"]["name"].as_str())
            {
                self.rooms.insert(room_id.clone(), name.to_owned());
            }
        }
        for joined in sync["rooms"]["join"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(room, _)| room)
        {
            self.rooms.remove(joined);
        }
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.rooms.values().map(String::as_str).collect();
        names.sort();
        names
    }
}

/// The stand-in's agents as `GET /v1/agents/` lists them: (name, id), sorted.
async fn standin_agents(ports: &Ports) -> Vec<(String, String)> {
    let listed: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{}/v1/agents/", ports.letta))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut agents: Vec<(String, String)> = listed
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    agents.sort();
    agents
}

/// Whether letta-matrix finished a sync pass that reached Letta.
async fn synced(ports: &Ports) -> bool {
    let ready: Value = reqwest::get(format!("http://127.0.0.1:{}/ready", ports.appservice))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["status"] == "ready"
}

#[tokio::test]
async fn the_demo_streams_answers_keeps_its_agents_across_restarts_and_stops_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let ports = Ports {
        synapse: free_port(),
        appservice: free_port(),
        letta: free_port(),
    };
    let base = format!("http://127.0.0.1:{}", ports.synapse);

    let stop = Stop::InterruptGroupOfBackgroundJob;
    let demo = Demo::start(state.path(), &ports, stop).await;
    let person = Person::log_in(&base, "demo", "demo-password")
        .await
        .expect("the printed user logs in");
    let mut invites = Invites::default();
    let started = std::time::Instant::now();
    while invites.rooms.len() < 4 {
        assert!(started.elapsed() < PATIENCE, "invited to {:?} only", invites.names());
        invites.update(&person).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        invites.names(),
        ["Ada", "Grace", "Letta Agents", "letta-matrix management"]
    );
    let agents = standin_agents(&ports).await;

    let ada_room = invites.rooms.iter().find(|(_, name)| *name == "Ada").unwrap().0.clone();
    person.join(&ada_room).await.unwrap();
    person.send_text(&ada_room, "hello there").await.unwrap();
    let answer = eventually("Ada's whole answer", PATIENCE, || async {
        let events = person.messages(&ada_room, 100).await.unwrap();
        let ghost = events
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["sender"].as_str())
            .find(|sender| !["@demo:localhost", "@letta_bot:localhost"].contains(sender))?
            .to_owned();
        shown_messages(&events, &ghost)
            .pop()
            .filter(|answer| answer.body.ends_with("answer here instead."))
    })
    .await;
    assert!(answer.body.contains("\n> hello there\n"), "{answer:?}");
    assert!(
        !answer.body.contains("@demo:localhost") && !answer.body.contains("You said"),
        "the bridge's prefix stays out of the answer: {answer:?}"
    );
    assert!(answer.formatted.is_some(), "Markdown is shown formatted: {answer:?}");
    assert!(answer.edits >= 2, "the answer grew while it streamed: {answer:?}");
    demo.stop(stop, &ports).await;

    // Started again, the demo finds the same agents: no room is retired, none made anew.
    let stop = Stop::TerminateScript;
    let demo = Demo::start(state.path(), &ports, stop).await;
    assert_eq!(standin_agents(&ports).await, agents, "the same agents on every start");
    eventually("a sync pass", PATIENCE, || async { synced(&ports).await.then_some(()) }).await;
    invites.update(&person).await;
    assert_eq!(invites.names(), ["Grace", "Letta Agents", "letta-matrix management"]);
    demo.stop(stop, &ports).await;

    let stop = Stop::TerminateGroup;
    let demo = Demo::start(state.path(), &ports, stop).await;
    assert_eq!(standin_agents(&ports).await, agents);
    demo.stop(stop, &ports).await;
}
