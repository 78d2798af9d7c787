//! Agent sync end to end: the Letta stand-in's agents become ghosts, rooms and a space on a real
//! Synapse, as a person sees them; renames and deletions follow; restarts, outages and crashed
//! passes duplicate nothing.

mod support;

use std::time::Duration;

use letta_matrix::config::Secret;
use letta_matrix::matrix::MatrixClient;
use letta_standin::LettaStandin;
use serde_json::{Value, json};
use support::service::Installation;
use support::stack::sync_passes;
use support::synapse::{Person, Synapse, free_port};
use support::wait::eventually;

const SERVER: &str = "sync.test";
const ADMIN_TOKEN: &str = "status-token-for-tests-0123456789abcdef";
const PATIENCE: Duration = Duration::from_secs(30);

struct Stack {
    synapse: Synapse,
    install: Installation,
    alice: Person,
    as_token: String,
}

/// Synapse with our registration, a person to invite, and an installation pointed at `letta_url`.
async fn stack(letta_url: &str) -> Stack {
    let mut install = Installation::new(SERVER);
    let registration = install.write_registration().await;
    let synapse = Synapse::start(SERVER, &[install.registration_path()]).await.unwrap();
    let alice = synapse.register_user("alice", "alice-password").await.unwrap();
    install.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    install.set("LETTA_MATRIX_LETTA_URL", letta_url);
    install.set("LETTA_MATRIX_INVITE", alice.user_id.clone());
    install.set("LETTA_MATRIX_ADMIN_TOKEN", ADMIN_TOKEN);
    install.set("LETTA_MATRIX_SYNC_INTERVAL_MS", "300");
    Stack {
        synapse,
        install,
        alice,
        as_token: registration.as_token,
    }
}

fn ghost(agent_id: &str) -> String {
    format!("@letta_{agent_id}:{SERVER}")
}

fn alias(agent_id: &str) -> String {
    format!("#letta_{agent_id}:{SERVER}")
}

fn invite_name(state: &[Value]) -> Option<String> {
    state.iter().find(|e| e["type"] == "m.room.name")?["content"]["name"]
        .as_str()
        .map(str::to_owned)
}

/// Waits for the invite to a room named `name` and returns its id.
async fn invited_room(person: &Person, name: &str) -> String {
    eventually(&format!("an invite to `{name}`"), PATIENCE, || async {
        let invites = person.invites().await.unwrap();
        invites
            .into_iter()
            .find(|(_, state)| invite_name(state).as_deref() == Some(name))
            .map(|(room, _)| room)
    })
    .await
}

async fn metric(install: &Installation, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", install.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn agents_get_ghosts_rooms_and_space_and_follow_renames_and_deletions() {
    let letta = LettaStandin::start().await;
    let meridian = letta.create_agent("Meridian", Some("A helpful research agent"));
    let atlas = letta.create_agent("Atlas", None);
    let stack = stack(&letta.url()).await;
    let alice = &stack.alice;
    let served = stack.install.serve().await.unwrap();

    let space = invited_room(alice, "Letta Agents").await;
    alice.join(&space).await.unwrap();
    let create = alice.state(&space, "m.room.create", "").await.unwrap().unwrap();
    assert_eq!(create["type"], "m.space");

    let room = invited_room(alice, "Meridian").await;
    let atlas_room = invited_room(alice, "Atlas").await;
    alice.join(&room).await.unwrap();
    alice.join(&atlas_room).await.unwrap();
    let topic = alice.state(&room, "m.room.topic", "").await.unwrap().unwrap();
    assert_eq!(topic["topic"], "A helpful research agent");
    let bot = format!("@letta_bot:{SERVER}");
    let mut members = alice.joined_members(&room).await.unwrap();
    members.sort();
    let mut expected = vec![alice.user_id.clone(), ghost(&meridian), bot.clone()];
    expected.sort();
    assert_eq!(members, expected);
    let levels = alice.state(&room, "m.room.power_levels", "").await.unwrap().unwrap();
    assert_eq!(
        (levels["users"][&alice.user_id].as_i64(), levels["users"][&bot].as_i64()),
        (Some(100), Some(100))
    );
    let creator = alice.state(&room, "m.room.create", "").await.unwrap().unwrap();
    assert_eq!(creator["additional_creators"], Value::Null);
    assert_eq!(
        alice.state(&room, "m.room.canonical_alias", "").await.unwrap().unwrap()["alias"],
        alias(&meridian)
    );
    for agent_room in [&room, &atlas_room] {
        let child = eventually("the room in the space", PATIENCE, || async {
            alice
                .state(&space, "m.space.child", agent_room)
                .await
                .unwrap()
                .filter(|c| c["via"].as_array().is_some_and(|v| !v.is_empty()))
        })
        .await;
        assert_eq!(child["via"], json!([SERVER]));
        assert_eq!(
            alice
                .state(agent_room, "m.space.parent", &space)
                .await
                .unwrap()
                .unwrap()["canonical"],
            true
        );
    }
    assert_eq!(
        alice.display_name(&ghost(&meridian)).await.unwrap().as_deref(),
        Some("Meridian")
    );

    // Unchanged Letta, unchanged Matrix: passes keep listing agents and never call the homeserver.
    let lists_before = sync_passes(&letta);
    let calls_before = metric(&stack.install, "letta_matrix_homeserver_requests_total").await;
    eventually("three more sync passes", PATIENCE, || async {
        (sync_passes(&letta) >= lists_before + 3).then_some(())
    })
    .await;
    assert_eq!(
        metric(&stack.install, "letta_matrix_homeserver_requests_total").await,
        calls_before
    );

    // People talking in agent rooms wake the inbox workers, not Letta: passes stay on the interval.
    let lists_before = sync_passes(&letta);
    let started = std::time::Instant::now();
    for n in 0..15 {
        alice.send_text(&room, &format!("message {n}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let passes = sync_passes(&letta) - lists_before;
    let interval_ticks = started.elapsed().as_millis() as usize / 300 + 1;
    assert!(
        passes <= interval_ticks,
        "{passes} Letta calls in {} ticks",
        interval_ticks
    );

    letta.rename_agent(&meridian, "Meridian II");
    eventually("the rename in the room", PATIENCE, || async {
        let name = alice.state(&room, "m.room.name", "").await.unwrap()?;
        (name["name"] == "Meridian II").then_some(())
    })
    .await;
    assert_eq!(
        alice.display_name(&ghost(&meridian)).await.unwrap().as_deref(),
        Some("Meridian II")
    );
    assert!(
        alice.joined_members(&room).await.unwrap().contains(&ghost(&meridian)),
        "the user id never changes"
    );

    letta.delete_agent(&atlas);
    eventually("the ghost leaving the deleted agent's room", PATIENCE, || async {
        (!alice
            .joined_members(&atlas_room)
            .await
            .unwrap()
            .contains(&ghost(&atlas)))
        .then_some(())
    })
    .await;
    let notices: Vec<Value> = alice.messages(&atlas_room, 20).await.unwrap();
    assert!(
        notices.iter().any(|e| e["content"]["msgtype"] == "m.notice"
            && e["content"]["body"]
                .as_str()
                .unwrap_or("")
                .contains("Atlas was deleted")),
        "{notices:?}"
    );
    let removed = alice
        .state(&space, "m.space.child", &atlas_room)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed["via"], json!([]));

    // The ghost leaves before the pass records the deletion.
    let report = eventually("the deletion recorded", PATIENCE, || async {
        let report = stack.install.status().await;
        let deleted = report["agents"]
            .as_array()?
            .iter()
            .any(|a| a["agent_id"] == atlas.as_str() && a["state"] == "deleted");
        deleted.then_some(report)
    })
    .await;
    let agents = report["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    let by_id = |id: &str| agents.iter().find(|a| a["agent_id"] == id).unwrap().clone();
    assert_eq!(
        (
            by_id(&meridian)["state"].as_str(),
            by_id(&meridian)["in_space"].as_bool()
        ),
        (Some("ready"), Some(true))
    );
    assert_eq!(
        (by_id(&atlas)["state"].as_str(), by_id(&atlas)["room_id"].as_str()),
        (Some("deleted"), Some(atlas_room.as_str()))
    );
    assert_eq!(report["space"], space);
    let unauthorised = reqwest::get(format!("{}/status", stack.install.base_url()))
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);

    // A restart finds everything in place: no second space, room or invite.
    assert_eq!(served.terminate().await, Some(0));
    let restarted = stack.install.serve().await.unwrap();
    let lists = sync_passes(&letta);
    eventually("two passes after the restart", PATIENCE, || async {
        (sync_passes(&letta) >= lists + 2).then_some(())
    })
    .await;
    assert_eq!(metric(&stack.install, "letta_matrix_rooms_created_total").await, 0.0);
    assert!(alice.invites().await.unwrap().is_empty());
    let mut joined = alice.joined_rooms().await.unwrap();
    joined.sort();
    let mut expected = vec![space.clone(), room.clone(), atlas_room.clone()];
    expected.sort();
    assert_eq!(joined, expected);
    assert_eq!(restarted.terminate().await, Some(0));
}

#[tokio::test]
async fn letta_down_at_start_then_back() {
    let letta_port = free_port();
    let letta_url = format!("http://127.0.0.1:{letta_port}");
    let stack = stack(&letta_url).await;
    let served = stack.install.serve().await.unwrap();

    let ready = eventually("/ready to report Letta", PATIENCE, || async {
        let ready = stack.install.ready().await?;
        (ready["letta"] != "not checked yet").then_some(ready)
    })
    .await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["letta"].as_str().unwrap().contains("cannot reach Letta"),
        "{ready}"
    );

    let letta = LettaStandin::start_on(format!("127.0.0.1:{letta_port}").parse().unwrap(), None)
        .await
        .unwrap();
    letta.create_agent("Late", None);
    invited_room(&stack.alice, "Late").await;
    // The invite shows mid-pass; the pass records Letta as healthy when it ends.
    eventually("/ready to see Letta back", PATIENCE, || async {
        let ready = stack.install.ready().await?;
        (ready["status"] == "ready" && ready["letta"] == "ok").then_some(())
    })
    .await;
    assert_eq!(served.terminate().await, Some(0));
}

#[tokio::test]
async fn homeserver_outage_and_crashed_pass_leave_one_room_per_agent() {
    let letta = LettaStandin::start().await;
    let mut stack = stack(&letta.url()).await;
    // A previous pass that created the room and died before recording it: the alias is there.
    let orphan = letta.create_agent("Orphan", None);
    let homeserver = url::Url::parse(&stack.synapse.base_url()).unwrap();
    let matrix = MatrixClient::new(&homeserver, Secret::new(stack.as_token.clone()));
    let orphan_ghost = ruma::OwnedUserId::try_from(ghost(&orphan)).unwrap();
    matrix.register_ghost(orphan_ghost.localpart()).await.unwrap();
    let mut request = ruma::api::client::room::create_room::v3::Request::new();
    request.room_alias_name = Some(orphan_ghost.localpart().to_owned());
    let orphan_room = matrix.create_room(request, Some(&orphan_ghost)).await.unwrap();

    let served = stack.install.serve().await.unwrap();
    invited_room(&stack.alice, "Letta Agents").await;
    let report = eventually("the orphan adopted", PATIENCE, || async {
        let report = stack.install.status().await;
        (report["agents"][0]["state"] == "ready").then_some(report)
    })
    .await;
    assert_eq!(
        report["agents"][0]["room_id"],
        orphan_room.as_str(),
        "the existing room is adopted, not duplicated"
    );

    // The homeserver goes away while a new agent appears; passes fail until it is back.
    stack.synapse.stop().await;
    let during = letta.create_agent("During outage", None);
    let failures = metric(&stack.install, "letta_matrix_sync_errors_total").await;
    eventually("failed passes", PATIENCE, || async {
        (metric(&stack.install, "letta_matrix_sync_errors_total").await > failures).then_some(())
    })
    .await;
    stack.synapse.restart().await.unwrap();
    let room = invited_room(&stack.alice, "During outage").await;
    let report = stack.install.status().await;
    let entry = report["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == during.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["room_id"], room.as_str());
    let invites = stack.alice.invites().await.unwrap();
    let named = invites
        .iter()
        .filter(|(_, state)| invite_name(state).as_deref() == Some("During outage"))
        .count();
    assert_eq!(named, 1, "one room for the agent: {invites:?}");
    assert_eq!(served.terminate().await, Some(0));
}
