//! End to end on a real Synapse (the pinned PyPI release) with our generated registration and our
//! `serve` binary: a person's message reaches our inbox exactly once, replays store nothing, the
//! ping round-trips, `check` sees the whole chain, SIGTERM stops us cleanly.

mod support;

use std::time::{Duration, Instant};

use letta_matrix::config::Secret;
use letta_matrix::matrix::MatrixClient;
use letta_matrix::store::{InboxRow, Store};
use ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};
use serde_json::json;
use support::service::Installation;
use support::synapse::Synapse;

const SERVER: &str = "e2e.test";

struct Stack {
    synapse: Synapse,
    install: Installation,
    matrix: MatrixClient,
    hs_token: String,
}

async fn stack() -> Stack {
    let mut install = Installation::new(SERVER);
    let registration = install.write_registration().await;
    let synapse = Synapse::start(SERVER, &[install.registration_path()]).await.unwrap();
    install.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    let homeserver = url::Url::parse(&synapse.base_url()).unwrap();
    let matrix = MatrixClient::new(&homeserver, Secret::new(registration.as_token));
    Stack {
        synapse,
        install,
        matrix,
        hs_token: registration.hs_token,
    }
}

/// Polls the inbox until `event_id` arrives: delivery is asynchronous by nature.
async fn wait_for_inbox(store: &Store, event_id: &str) -> InboxRow {
    let started = Instant::now();
    loop {
        if let Some(row) = store.inbox_by_event_id(event_id).await.unwrap() {
            return row;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{event_id} never reached the inbox"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn person_message_reaches_inbox_once_and_replays_store_nothing() {
    let stack = stack().await;
    let served = stack.install.serve().await.unwrap();
    let store = Store::connect(&stack.install.database_url(), 2).await.unwrap();

    let alice = stack.synapse.register_user("alice", "alice-password").await.unwrap();
    let room_id = alice
        .create_room(json!({"name": "e2e", "preset": "private_chat"}))
        .await
        .unwrap();
    let ghost = OwnedUserId::try_from(format!("@letta_agent-e2e:{SERVER}")).unwrap();
    stack.matrix.register_ghost(ghost.localpart()).await.unwrap();
    // Registering twice is what a resumed sync pass does; it must succeed.
    stack.matrix.register_ghost(ghost.localpart()).await.unwrap();
    alice.invite(&room_id, ghost.as_str()).await.unwrap();
    let room = OwnedRoomOrAliasId::try_from(room_id.as_str()).unwrap();
    assert_eq!(stack.matrix.join(room, &ghost).await.unwrap().as_str(), room_id);
    assert!(
        alice
            .joined_members(&room_id)
            .await
            .unwrap()
            .contains(&ghost.to_string())
    );

    let event_id = alice.send_text(&room_id, "hello agent").await.unwrap();
    let row = wait_for_inbox(&store, &event_id).await;
    assert_eq!(
        (row.room_id.as_str(), row.sender.as_str(), row.kind.as_str()),
        (room_id.as_str(), alice.user_id.as_str(), "message")
    );
    let event: serde_json::Value = serde_json::from_str(&row.event_json).unwrap();
    assert_eq!(event["content"]["body"], "hello agent");

    let lane = store.inbox_for_room(&room_id).await.unwrap();
    assert_eq!(lane.iter().filter(|r| r.event_id == event_id).count(), 1);
    let ghost_memberships = lane.iter().filter(|r| r.kind == "membership").count();
    assert_eq!(ghost_memberships, 2, "the ghost's invite and join: {lane:?}");

    // The ghost speaks as itself through identity assertion; the person sees it under its id.
    let room_id_typed = OwnedRoomId::try_from(room_id.as_str()).unwrap();
    let content = ruma::events::room::message::RoomMessageEventContent::text_plain("hello person");
    let txn = ruma::OwnedTransactionId::from("e2e-reply-1");
    let reply = stack
        .matrix
        .send_message(&room_id_typed, txn.clone(), &content, Some(&ghost))
        .await
        .unwrap();
    let again = stack
        .matrix
        .send_message(&room_id_typed, txn, &content, Some(&ghost))
        .await
        .unwrap();
    assert_eq!(reply, again, "the same txn id is one event");
    let messages = alice.messages(&room_id, 5).await.unwrap();
    assert_eq!(messages[0]["sender"], ghost.as_str());
    assert_eq!(messages[0]["content"]["body"], "hello person");

    // A transaction sent again (the homeserver's retry: same id, same events) stores nothing
    // more. The same id with other events is processed (tests/appservice_http.rs): Synapse on
    // SQLite numbers transactions from 1 again after a restart.
    let before = store.inbox_for_room(&room_id).await.unwrap().len();
    let retried = json!({"events": [{
        "type": "m.room.message", "event_id": "$retried", "room_id": room_id, "sender": alice.user_id,
        "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "sent twice"}
    }]});
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .put(format!(
                "{}/_matrix/app/v1/transactions/retry-1",
                stack.install.base_url()
            ))
            .bearer_auth(&stack.hs_token)
            .json(&retried)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(store.inbox_for_room(&room_id).await.unwrap().len(), before + 1);
    assert!(store.inbox_by_event_id("$retried").await.unwrap().is_some());

    assert_eq!(served.terminate().await, Some(0));
}

#[tokio::test]
async fn ping_round_trips_and_check_sees_the_chain() {
    let stack = stack().await;
    let served = stack.install.serve().await.unwrap();
    let duration = stack.matrix.ping("letta").await.unwrap();
    assert!(duration < Duration::from_secs(5));
    assert!(served.log().contains("pinged by the homeserver"), "{}", served.log());
    assert_eq!(
        stack.matrix.whoami().await.unwrap().as_str(),
        format!("@letta_bot:{SERVER}")
    );

    let (code, stdout, _) = stack.install.run(&["check"]).await;
    for line in [
        "ok   database",
        "ok   registration",
        "ok   homeserver",
        "ok   appservice token",
        "ok   room version: new rooms are version 12; creators outrank every power level",
        "ok   appservice ping",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    assert!(stdout.contains("FAIL letta"), "no Letta runs in this test:\n{stdout}");
    assert_eq!(code, Some(1));

    // With serve gone, the homeserver cannot reach us, and check says so and what to do.
    assert_eq!(served.terminate().await, Some(0));
    let (_, stdout, _) = stack.install.run(&["check"]).await;
    assert!(
        stdout.contains("FAIL appservice ping") && stdout.contains("letta-matrix serve"),
        "{stdout}"
    );
}

#[tokio::test]
async fn messages_sent_while_we_are_down_arrive_after_restart() {
    let stack = stack().await;
    let served = stack.install.serve().await.unwrap();
    let alice = stack.synapse.register_user("bob", "bob-password").await.unwrap();
    let room_id = alice.create_room(json!({"name": "outage"})).await.unwrap();
    let ghost = OwnedUserId::try_from(format!("@letta_agent-outage:{SERVER}")).unwrap();
    stack.matrix.register_ghost(ghost.localpart()).await.unwrap();
    alice.invite(&room_id, ghost.as_str()).await.unwrap();
    stack
        .matrix
        .join(OwnedRoomOrAliasId::try_from(room_id.as_str()).unwrap(), &ghost)
        .await
        .unwrap();
    assert_eq!(served.terminate().await, Some(0));

    let event_id = alice.send_text(&room_id, "are you there?").await.unwrap();
    let restarted = stack.install.serve().await.unwrap();
    let store = Store::connect(&stack.install.database_url(), 2).await.unwrap();
    // Synapse backs off after failed deliveries; the retry still has to arrive.
    let started = Instant::now();
    let row = loop {
        if let Some(row) = store.inbox_by_event_id(&event_id).await.unwrap() {
            break row;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the message never arrived:\n{}",
            stack.synapse.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row.room_id, room_id);
    assert_eq!(restarted.terminate().await, Some(0));
}
