//! `scripts/demo`, the README's "run" command: Synapse, the stand-in with two agents and
//! letta-matrix come up, the printed user can log in and finds the agents, and a stop ends it all.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::synapse::free_port;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_demo_runs_the_whole_stack_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_letta-matrix"))
        .parent()
        .unwrap();
    assert!(
        bin_dir.join("letta-standin").exists(),
        "{} has no letta-standin: build the workspace's binaries first (scripts/test does: cargo build --workspace --bins)",
        bin_dir.display()
    );
    let (synapse_port, appservice_port, letta_port) = (free_port(), free_port(), free_port());
    let mut demo = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"))
        .env("LETTA_MATRIX_DEMO_DIR", dir.path())
        .env("LETTA_MATRIX_DEMO_BIN_DIR", bin_dir)
        .env("LETTA_MATRIX_DEMO_SYNAPSE_PORT", synapse_port.to_string())
        .env("LETTA_MATRIX_DEMO_APPSERVICE_PORT", appservice_port.to_string())
        .env("LETTA_MATRIX_DEMO_LETTA_PORT", letta_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("scripts/demo starts");
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
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
        printed.contains("demo-password") && printed.contains(&format!(":{synapse_port}")),
        "{printed}"
    );

    let base = format!("http://127.0.0.1:{synapse_port}");
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "demo"}, "password": "demo-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"]
        .as_str()
        .expect("the printed user logs in")
        .to_owned();
    // Incremental syncs: identical initial syncs are answered from Synapse's cache.
    let mut since: Option<String> = None;
    // By room: a room seen in two responses (a sync answered with an error starts over) is one room.
    let mut names: std::collections::BTreeMap<String, String> = Default::default();
    for _ in 0..60 {
        let mut url = format!("{base}/_matrix/client/v3/sync?timeout=1000");
        if let Some(since) = &since {
            url.push_str(&format!("&since={since}"));
        }
        let sync: Value = http
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(next) = sync["next_batch"].as_str() {
            since = Some(next.to_owned());
        }
        for (room_id, invite) in sync["rooms"]["invite"].as_object().into_iter().flatten() {
            for event in invite["invite_state"]["events"].as_array().into_iter().flatten() {
                if event["type"] == "m.room.name" {
                    let name = event["content"]["name"].as_str().unwrap().to_owned();
                    names.insert(room_id.clone(), name);
                }
            }
        }
        if names.len() >= 4 {
            break;
        }
    }
    let mut names: Vec<String> = names.into_values().collect();
    names.sort();
    assert_eq!(names, ["Ada", "Grace", "Letta Agents", "letta-matrix management"]);

    let pid = demo.id().unwrap() as i32;
    // SAFETY: kill only sends a signal to the process the test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo stops")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        http.get(format!("{base}/_matrix/client/versions"))
            .send()
            .await
            .is_err(),
        "Synapse stopped with it"
    );
}
