//! Agent sync beyond the agent rooms: people inviting agents into DMs, and several replicas on
//! one PostgreSQL database electing one reconciler.

mod support;

use std::time::Duration;

use letta_standin::LettaStandin;
use serde_json::json;
use support::db::TestDatabase;
use support::service::Installation;
use support::synapse::Synapse;
use support::wait::eventually;

const SERVER: &str = "more.test";
const ADMIN_TOKEN: &str = "status-token-for-tests-0123456789abcdef";
const PATIENCE: Duration = Duration::from_secs(30);

async fn installation(synapse_url: Option<&str>, letta_url: &str, database_url: Option<&str>) -> Installation {
    let mut install = Installation::new(SERVER);
    install.set("LETTA_MATRIX_LETTA_URL", letta_url);
    install.set("LETTA_MATRIX_ADMIN_TOKEN", ADMIN_TOKEN);
    install.set("LETTA_MATRIX_SYNC_INTERVAL_MS", "200");
    if let Some(url) = synapse_url {
        install.set("LETTA_MATRIX_HOMESERVER_URL", url);
    }
    if let Some(url) = database_url {
        install.set("LETTA_MATRIX_DATABASE_URL", url);
    }
    install
}

#[tokio::test]
async fn a_person_invites_an_agent_into_a_direct_chat() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    let mut install = installation(None, &letta.url(), None).await;
    install.write_registration().await;
    let synapse = Synapse::start(SERVER, &[install.registration_path()]).await.unwrap();
    install.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    let bob = synapse.register_user("bob", "bob-password").await.unwrap();
    let served = install.serve().await.unwrap();
    let ghost = format!("@letta_{agent}:{SERVER}");
    eventually("the agent in Matrix", PATIENCE, || async {
        (install.status().await["agents"][0]["state"] == "ready").then_some(())
    })
    .await;

    let dm = bob
        .create_room(json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [ghost]}))
        .await
        .unwrap();
    eventually("the ghost joining the DM", PATIENCE, || async {
        bob.joined_members(&dm).await.unwrap().contains(&ghost).then_some(())
    })
    .await;
    let rooms = eventually("the DM recorded", PATIENCE, || async {
        let rooms = install.status().await["agents"][0]["other_rooms"].clone();
        (rooms.as_array()?.len() == 1).then_some(rooms)
    })
    .await;
    assert_eq!(rooms, json!([{"room_id": dm, "kind": "direct"}]));
    assert_eq!(served.terminate().await, Some(0));
}

#[tokio::test]
async fn people_added_to_invite_later_are_brought_into_the_existing_rooms() {
    let letta = LettaStandin::start().await;
    letta.create_agent("Helper", None);
    let mut install = installation(None, &letta.url(), None).await;
    install.write_registration().await;
    let synapse = Synapse::start(SERVER, &[install.registration_path()]).await.unwrap();
    install.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    let alice = synapse.register_user("alice", "alice-password").await.unwrap();
    let bob = synapse.register_user("bob", "bob-password").await.unwrap();
    install.set("LETTA_MATRIX_INVITE", format!("@alice:{SERVER}"));
    let served = install.serve().await.unwrap();
    eventually("the agent in Matrix", PATIENCE, || async {
        (install.status().await["agents"][0]["state"] == "ready").then_some(())
    })
    .await;
    assert_eq!(alice.invites().await.unwrap().len(), 2, "alice: the space and the room");
    assert!(bob.invites().await.unwrap().is_empty());
    assert_eq!(served.terminate().await, Some(0));

    install.set("LETTA_MATRIX_INVITE", format!("@alice:{SERVER},@bob:{SERVER}"));
    let served = install.serve().await.unwrap();
    let status = install.status().await;
    let (space, room) = (
        status["space"].as_str().unwrap().to_owned(),
        status["agents"][0]["room_id"].as_str().unwrap().to_owned(),
    );
    let invited = eventually("bob invited to the space and the room", PATIENCE, || async {
        let mut rooms: Vec<String> = bob.invites().await.unwrap().into_iter().map(|(room, _)| room).collect();
        rooms.sort();
        (rooms.len() == 2).then_some(rooms)
    })
    .await;
    let mut expected = vec![space.clone(), room.clone()];
    expected.sort();
    assert_eq!(invited, expected);
    for room_id in [&space, &room] {
        bob.join(room_id).await.unwrap();
        let levels = bob.state(room_id, "m.room.power_levels", "").await.unwrap().unwrap();
        assert_eq!(levels["users"][format!("@bob:{SERVER}")], 100, "{room_id}: {levels}");
        assert_eq!(levels["users"][format!("@alice:{SERVER}")], 100, "{room_id}: {levels}");
    }
    assert_eq!(served.terminate().await, Some(0));

    // Done once: a restart with the same list invites nobody again.
    bob.leave(&room).await.unwrap();
    let served = install.serve().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(bob.invites().await.unwrap().is_empty(), "bob left, and stays out");
    assert_eq!(served.terminate().await, Some(0));
}

/// The replica that leads, among several sharing one PostgreSQL database.
async fn leaders(replicas: &[&Installation]) -> Vec<usize> {
    let mut leading = Vec::new();
    for (index, install) in replicas.iter().enumerate() {
        if install.ready().await.is_some_and(|r| r["sync"]["leader"] == true) {
            leading.push(index);
        }
    }
    leading
}

#[tokio::test]
async fn replicas_on_postgres_elect_one_reconciler_and_take_over_after_a_crash() {
    let letta = LettaStandin::start().await;
    let database = TestDatabase::postgres().await;
    // No homeserver is needed to watch the election: Letta is empty, so passes call nobody.
    let first = installation(None, &letta.url(), Some(&database.url)).await;
    first.write_registration().await;
    let second = first.replica();
    let first_served = first.serve().await.unwrap();
    let second_served = second.serve().await.unwrap();

    let leading = eventually("one leader", PATIENCE, || async {
        let leading = leaders(&[&first, &second]).await;
        (!leading.is_empty()).then_some(leading)
    })
    .await;
    assert_eq!(leading, [0], "the first replica started first and leads alone");
    // Two agent-list calls a pass (a page, then the empty page that ends the list).
    let calls = letta.requests("GET /v1/agents/");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = letta.requests("GET /v1/agents/") - calls;
    assert!(
        (2..=7).contains(&per_second),
        "one replica polls every 200 ms, not two: {per_second} calls in a second"
    );

    first_served.kill().await;
    let started = std::time::Instant::now();
    eventually("the second replica taking over", PATIENCE, || async {
        second
            .ready()
            .await
            .is_some_and(|r| r["sync"]["leader"] == true)
            .then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took over in {:?}",
        started.elapsed()
    );
    assert_eq!(second_served.terminate().await, Some(0));
}
