//! Two replicas of `serve` on one PostgreSQL database share the inbox: every message is answered
//! once and in order, and a replica killed mid-turn hands its room over to the other.

mod support;

use std::time::Duration;

use letta_standin::LettaStandin;
use support::chat::shown_messages;
use support::db::TestDatabase;
use support::service::{ADMIN_TOKEN, Installation};
use support::synapse::Synapse;
use support::wait::eventually;

const SERVER: &str = "replicas.test";
const PATIENCE: Duration = Duration::from_secs(60);

fn answered_turns(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("letta_matrix_relay_turns_total{outcome=\"answered\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn replicas_answer_every_message_once_in_order_and_take_over_a_dead_ones_room() {
    let letta = LettaStandin::start().await;
    let agents: Vec<String> = (0..3)
        .map(|n| letta.create_agent(&format!("Agent {n}"), None))
        .collect();
    letta.set_default_latency(Duration::from_millis(150), Duration::ZERO);
    let database = TestDatabase::postgres().await;
    let mut first = Installation::new(SERVER);
    first.set("LETTA_MATRIX_LETTA_URL", letta.url());
    first.set("LETTA_MATRIX_DATABASE_URL", database.url.clone());
    first.set("LETTA_MATRIX_ADMIN_TOKEN", support::service::ADMIN_TOKEN);
    first.set("LETTA_MATRIX_SYNC_INTERVAL_MS", "500");
    first.set("LETTA_MATRIX_INVITE", format!("@alice:{SERVER}"));
    first.set("LETTA_MATRIX_RELAY_LEASE_MS", "2000");
    first.write_registration().await;
    let mut synapse = Synapse::start(SERVER, &[first.registration_path()]).await.unwrap();
    first.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    let second = first.replica();
    let alice = synapse.register_user("alice", "alice-password").await.unwrap();
    let first_served = first.serve().await.unwrap();
    let second_served = second.serve().await.unwrap();

    let mut rooms = Vec::new();
    for agent in &agents {
        let alias = format!("#letta_{agent}:{SERVER}");
        eventually("alice joining an agent room", PATIENCE, || async {
            alice.join(&alias).await.ok()
        })
        .await;
        let status = first.status().await;
        let room = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent_id"] == agent.as_str())
            .and_then(|a| a["room_id"].as_str())
            .unwrap()
            .to_owned();
        rooms.push(room);
    }
    for n in 1..=4 {
        for room in &rooms {
            alice.send_text(room, &format!("m{n}")).await.unwrap();
        }
    }
    for (agent, room) in agents.iter().zip(&rooms) {
        let ghost = format!("@letta_{agent}:{SERVER}");
        let texts = eventually("four answers in the room", PATIENCE, || async {
            let shown = shown_messages(&alice.messages(room, 100).await.unwrap(), &ghost);
            let texts: Vec<String> = shown.into_iter().map(|s| s.body).collect();
            (texts.len() >= 4 && texts[3].ends_with("m4")).then_some(texts)
        })
        .await;
        let expected: Vec<String> = (1..=4)
            .map(|n| format!("You said: alice (@alice:{SERVER}): m{n}"))
            .collect();
        assert_eq!(texts, expected, "once each, in order");
        assert_eq!(letta.user_messages(agent).len(), 4, "Letta heard each message once");
        assert_eq!(letta.max_concurrent(agent), 1);
    }
    let metrics = |install: &Installation| {
        let url = format!("{}/metrics", install.base_url());
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let (by_first, by_second) = (
        answered_turns(&metrics(&first).await),
        answered_turns(&metrics(&second).await),
    );
    assert_eq!(
        by_first + by_second,
        12,
        "12 turns between the replicas ({by_first} + {by_second})"
    );

    // The first replica dies in the middle of a turn; the second finishes it from Letta's record.
    let (slow_agent, slow_room) = (&agents[0], &rooms[0]);
    letta.set_latency(slow_agent, Duration::from_secs(3), Duration::ZERO);
    second_served.kill().await;
    alice.send_text(slow_room, "are you still there?").await.unwrap();
    eventually("Letta working on the turn", PATIENCE, || async {
        (letta.user_messages(slow_agent).len() == 5).then_some(())
    })
    .await;
    first_served.kill().await;
    let second_served = second.serve().await.unwrap();
    let ghost = format!("@letta_{slow_agent}:{SERVER}");
    let texts = eventually("the answer from the surviving replica", PATIENCE, || async {
        let shown = shown_messages(&alice.messages(slow_room, 100).await.unwrap(), &ghost);
        let texts: Vec<String> = shown.into_iter().map(|s| s.body).collect();
        (texts.len() >= 5 && texts[4].ends_with("still there?")).then_some(texts)
    })
    .await;
    assert_eq!(texts.len(), 5, "answered once: {texts:?}");
    assert_eq!(
        letta.user_messages(slow_agent).len(),
        5,
        "found in Letta, not asked again"
    );
    assert_eq!(second_served.terminate().await, Some(0));
    synapse.stop().await;
}

#[tokio::test]
async fn a_replica_killed_and_restarted_takes_its_rooms_back_without_waiting_its_lease() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Agent", None);
    let database = TestDatabase::postgres().await;
    let mut install = Installation::new(SERVER);
    install.set("LETTA_MATRIX_LETTA_URL", letta.url());
    install.set("LETTA_MATRIX_DATABASE_URL", database.url.clone());
    install.set("LETTA_MATRIX_ADMIN_TOKEN", ADMIN_TOKEN);
    install.set("LETTA_MATRIX_SYNC_INTERVAL_MS", "500");
    install.set("LETTA_MATRIX_INVITE", format!("@alice:{SERVER}"));
    // Far longer than the test waits for the answer: only a replica that takes its own rooms back
    // at start can answer in time.
    install.set("LETTA_MATRIX_RELAY_LEASE_MS", "120000");
    install.write_registration().await;
    let mut synapse = Synapse::start(SERVER, &[install.registration_path()]).await.unwrap();
    install.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    let alice = synapse.register_user("alice", "alice-password").await.unwrap();
    let served = install.serve().await.unwrap();
    let alias = format!("#letta_{agent}:{SERVER}");
    eventually("alice joining the agent room", PATIENCE, || async {
        alice.join(&alias).await.ok()
    })
    .await;
    let room = install.status().await["agents"][0]["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ghost = format!("@letta_{agent}:{SERVER}");

    // Killed while Letta works on the turn: the room's row stays leased to this replica.
    letta.set_latency(&agent, Duration::from_secs(3), Duration::ZERO);
    alice.send_text(&room, "are you there?").await.unwrap();
    eventually("Letta working on the turn", PATIENCE, || async {
        (letta.user_messages(&agent).len() == 1).then_some(())
    })
    .await;
    served.kill().await;
    letta.set_latency(&agent, Duration::ZERO, Duration::ZERO);
    let restarted = install.serve().await.unwrap();
    let texts = eventually("the answer after the restart", PATIENCE, || async {
        let shown = shown_messages(&alice.messages(&room, 100).await.unwrap(), &ghost);
        let texts: Vec<String> = shown.into_iter().map(|s| s.body).collect();
        texts.first().is_some_and(|t| t.ends_with("there?")).then_some(texts)
    })
    .await;
    assert_eq!(texts.len(), 1, "answered once: {texts:?}");
    assert_eq!(letta.user_messages(&agent).len(), 1, "found in Letta, not asked again");

    alice.send_text(&room, "and now?").await.unwrap();
    eventually("the next message answered", PATIENCE, || async {
        let shown = shown_messages(&alice.messages(&room, 100).await.unwrap(), &ghost);
        (shown.len() == 2 && shown[1].body.ends_with("now?")).then_some(())
    })
    .await;
    assert_eq!(restarted.terminate().await, Some(0));
    synapse.stop().await;
}
