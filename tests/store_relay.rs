//! The relay's share of the store, on both real engines: claims and leases, turns, sent messages,
//! held context, pruning, per-room settings and notices.

mod support;

use std::collections::HashSet;

use letta_matrix::store::{Backend, InboxEvent, NewInboxEvent, RoomSettings, Store};
use support::db::TestDatabase;

on_both_engines!(
    a_room_is_claimed_head_first_by_one_owner_at_a_time,
    an_expired_lease_is_taken_over,
    racing_claimers_never_share_a_room,
    every_room_gets_its_turn_while_others_keep_getting_messages,
    finishing_a_row_claims_the_rooms_next_one_in_the_same_step,
    a_replica_id_is_held_by_one_process_at_a_time,
    agent_leases_are_exclusive_until_released,
    turns_and_sent_messages_are_remembered,
    held_messages_become_context_since_the_agents_last_turn,
    finished_rows_are_pruned_and_pending_ones_kept,
    notices_settings_redactions_and_newer_rows,
);

fn event(n: usize, room: &str, kind: InboxEvent, json: String) -> NewInboxEvent {
    NewInboxEvent {
        event_id: format!("$e{n}"),
        room_id: room.to_owned(),
        sender: "@alice:example.org".into(),
        event_type: "m.room.message".into(),
        kind,
        event_json: json,
    }
}

async fn with_messages(store: &Store, rooms: &[(&str, usize)]) {
    let mut events = Vec::new();
    let mut n = 0;
    for (room, count) in rooms {
        for _ in 0..*count {
            n += 1;
            events.push(event(n, room, InboxEvent::Message, format!(r#"{{"n":{n}}}"#)));
        }
    }
    store.record_transaction("t", &events).await.unwrap();
}

async fn a_room_is_claimed_head_first_by_one_owner_at_a_time(db: TestDatabase) {
    let store = db.open().await;
    with_messages(&store, &[("!a:x", 3), ("!b:x", 2)]).await;
    let heads = store.claim_room_heads("one", 30_000, 10).await.unwrap();
    let claimed: Vec<(&str, &str)> = heads
        .iter()
        .map(|r| (r.room_id.as_str(), r.event_id.as_str()))
        .collect();
    assert_eq!(claimed, [("!a:x", "$e1"), ("!b:x", "$e4")]);
    assert!(
        store.claim_room_heads("two", 30_000, 10).await.unwrap().is_empty(),
        "held heads block their rooms"
    );
    assert!(
        !store.finish_claimed(heads[0].id, "two", "done", None).await.unwrap(),
        "only the owner finishes"
    );
    assert!(store.finish_claimed(heads[0].id, "one", "done", None).await.unwrap());
    let next = store.claim_room_head("two", 30_000, "!a:x").await.unwrap().unwrap();
    assert_eq!(next.event_id, "$e2");
    assert!(store.claim_room_head("one", 30_000, "!a:x").await.unwrap().is_none());
    assert!(store.renew_inbox_lease(next.id, "two", 30_000).await.unwrap());
    assert!(!store.renew_inbox_lease(next.id, "one", 30_000).await.unwrap());
    store.release_leases("two").await.unwrap();
    assert_eq!(
        store
            .claim_room_head("one", 30_000, "!a:x")
            .await
            .unwrap()
            .unwrap()
            .event_id,
        "$e2"
    );
}

async fn an_expired_lease_is_taken_over(db: TestDatabase) {
    let store = db.open().await;
    with_messages(&store, &[("!a:x", 2)]).await;
    let dead = store.claim_room_heads("dead", -1, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let taken = store.claim_room_heads("alive", 30_000, 10).await.unwrap();
    assert_eq!(taken.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["$e1"]);
    assert!(
        !store.finish_claimed(dead[0].id, "dead", "done", None).await.unwrap(),
        "the dead owner lost it"
    );
}

async fn racing_claimers_never_share_a_room(db: TestDatabase) {
    let store = db.open().await;
    let rooms: Vec<String> = (0..20).map(|r| format!("!r{r}:x")).collect();
    let layout: Vec<(&str, usize)> = rooms.iter().map(|r| (r.as_str(), 3)).collect();
    with_messages(&store, &layout).await;
    let claimers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_room_heads(&format!("owner{i}"), 30_000, 5).await.unwrap() })
        })
        .collect();
    let mut seen_rooms = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        for row in claimer.await.unwrap() {
            total += 1;
            assert!(
                seen_rooms.insert(row.room_id.clone()),
                "room {} claimed twice",
                row.room_id
            );
            assert_eq!(row.attempts, 0);
        }
    }
    assert_eq!(total, 20, "every room's head was claimed exactly once");
}

async fn every_room_gets_its_turn_while_others_keep_getting_messages(db: TestDatabase) {
    let store = db.open().await;
    let rooms: Vec<String> = (0..100).map(|r| format!("!r{r:02}:x")).collect();
    let layout: Vec<(&str, usize)> = rooms.iter().map(|r| (r.as_str(), 1)).collect();
    with_messages(&store, &layout).await;
    let mut served = HashSet::new();
    for round in 0..10 {
        let claimed = store.claim_room_heads("one", 30_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 10, "round {round}");
        let mut more = Vec::new();
        for (n, row) in claimed.iter().enumerate() {
            assert!(served.insert(row.room_id.clone()), "{} served twice", row.room_id);
            store.finish_claimed(row.id, "one", "done", None).await.unwrap();
            // The rooms just served are busy: a message arrives in each at once.
            more.push(event(
                1000 + round * 10 + n,
                &row.room_id,
                InboxEvent::Message,
                "{}".into(),
            ));
        }
        store.record_transaction(&format!("t{round}"), &more).await.unwrap();
    }
    assert_eq!(served.len(), 100, "every room had a turn before any had a second");
}

async fn finishing_a_row_claims_the_rooms_next_one_in_the_same_step(db: TestDatabase) {
    let store = db.open().await;
    with_messages(&store, &[("!a:x", 3), ("!b:x", 1)]).await;
    let first = store.claim_room_head("one", 30_000, "!a:x").await.unwrap().unwrap();
    let (finished, second) = store
        .finish_and_claim_next(&first, "one", "done", None, 30_000)
        .await
        .unwrap();
    let second = second.expect("the room's next row");
    assert!(finished);
    assert_eq!(second.event_id, "$e2");
    assert_eq!(
        store
            .finish_and_claim_next(&second, "two", "done", None, 30_000)
            .await
            .unwrap(),
        (false, None),
        "only the owner finishes, and then nobody else claims the room"
    );
    assert!(
        store.claim_room_head("two", 30_000, "!a:x").await.unwrap().is_none(),
        "the room stays with its owner"
    );
    let (_, third) = store
        .finish_and_claim_next(&second, "one", "held", None, 30_000)
        .await
        .unwrap();
    assert_eq!(third.as_ref().map(|r| r.event_id.as_str()), Some("$e3"));
    assert_eq!(
        store
            .finish_and_claim_next(&third.unwrap(), "one", "done", None, 30_000)
            .await
            .unwrap(),
        (true, None),
        "the room is empty"
    );
    assert_eq!(store.inbox_by_event_id("$e4").await.unwrap().unwrap().state, "pending");
}

async fn a_replica_id_is_held_by_one_process_at_a_time(db: TestDatabase) {
    let store = db.open().await;
    let held = store.try_hold_replica_id("replica-a").await.unwrap();
    assert!(held.is_some());
    if store.backend() == Backend::Sqlite {
        // One process per SQLite file: there is nobody to share an id with.
        return;
    }
    let other = db.open().await;
    assert!(
        other.try_hold_replica_id("replica-a").await.unwrap().is_none(),
        "a live holder keeps the id"
    );
    assert!(other.try_hold_replica_id("replica-b").await.unwrap().is_some());
    drop(held);
    let mut taken = None;
    for _ in 0..100 {
        taken = other.try_hold_replica_id("replica-a").await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(taken.is_some(), "the id is free once its holder's session ends");
}

async fn agent_leases_are_exclusive_until_released(db: TestDatabase) {
    let store = db.open().await;
    if store.backend() == Backend::Sqlite {
        // One process per SQLite file: its in-process lock is the whole story, so every lease is granted.
        assert!(store.lease_agent("agent-1", "one", 30_000).await.unwrap());
        assert!(store.lease_agent("agent-1", "two", 30_000).await.unwrap());
        return;
    }
    assert!(store.lease_agent("agent-1", "one", 30_000).await.unwrap());
    assert!(!store.lease_agent("agent-1", "two", 30_000).await.unwrap());
    assert!(
        store.lease_agent("agent-1", "one", 30_000).await.unwrap(),
        "the owner may renew"
    );
    assert!(
        store.lease_agent("agent-2", "two", 30_000).await.unwrap(),
        "other agents are free"
    );
    store.release_agent("agent-1", "one").await.unwrap();
    assert!(store.lease_agent("agent-1", "two", -1).await.unwrap());
    assert!(
        store.lease_agent("agent-1", "one", 30_000).await.unwrap(),
        "an expired lease is taken over"
    );
}

async fn turns_and_sent_messages_are_remembered(db: TestDatabase) {
    let store = db.open().await;
    with_messages(&store, &[("!a:x", 1)]).await;
    let row = store.claim_room_heads("one", 30_000, 1).await.unwrap().remove(0);
    assert!(store.turn("$e1", "agent-1").await.unwrap().is_none());
    store.begin_turn(&row, "agent-1", "otid-1").await.unwrap();
    store.begin_turn(&row, "agent-1", "otid-other").await.unwrap();
    let turn = store.turn("$e1", "agent-1").await.unwrap().unwrap();
    assert_eq!((turn.otid.as_str(), turn.state.as_str()), ("otid-1", "asked"));
    store.finish_turn("$e1", "agent-1", "answered").await.unwrap();
    assert_eq!(store.turn("$e1", "agent-1").await.unwrap().unwrap().state, "answered");

    store
        .record_sent("$reply", "!a:x", "agent-1", "lm-1-p0", Some("$e1"), Some("message-1"))
        .await
        .unwrap();
    let sent = store.sent_by_txn("lm-1-p0").await.unwrap().unwrap();
    assert_eq!(
        (sent.event_id.as_str(), sent.letta_message_id.as_deref()),
        ("$reply", Some("message-1"))
    );
    assert_eq!(store.sender_agent("$reply").await.unwrap().as_deref(), Some("agent-1"));
    assert!(store.sender_agent("$e1").await.unwrap().is_none());
}

async fn held_messages_become_context_since_the_agents_last_turn(db: TestDatabase) {
    let store = db.open().await;
    let mut events: Vec<NewInboxEvent> = (1..=5)
        .map(|n| event(n, "!g:x", InboxEvent::Message, "{}".into()))
        .collect();
    events.push(event(6, "!g:x", InboxEvent::Membership, "{}".into()));
    events.push(event(7, "!g:x", InboxEvent::Message, "{}".into()));
    store.record_transaction("t", &events).await.unwrap();
    // $e3 was answered by agent-x; $e4 came from a ghost (skipped); $e6 is a membership.
    for (n, state) in ["held", "held", "done", "skipped", "held", "done"].iter().enumerate() {
        let row = store.claim_room_heads("one", 30_000, 1).await.unwrap().remove(0);
        assert_eq!(row.event_id, format!("$e{}", n + 1));
        if n == 2 {
            store.begin_turn(&row, "agent-x", "o").await.unwrap();
        }
        store.finish_claimed(row.id, "one", state, None).await.unwrap();
    }
    let last = store.claim_room_heads("one", 30_000, 1).await.unwrap().remove(0);
    let events = |rows: Vec<letta_matrix::store::InboxRow>| rows.into_iter().map(|r| r.event_id).collect::<Vec<_>>();
    assert_eq!(
        events(store.held_context("!g:x", "agent-x", last.id, 10).await.unwrap()),
        ["$e5"],
        "only what came after agent-x's own turn"
    );
    assert_eq!(
        events(store.held_context("!g:x", "agent-y", last.id, 10).await.unwrap()),
        ["$e1", "$e2", "$e3", "$e5"],
        "agent-y also hears what agent-x was asked"
    );
    assert_eq!(
        events(store.held_context("!g:x", "agent-y", last.id, 2).await.unwrap()),
        ["$e3", "$e5"],
        "the newest ones when bounded"
    );
}

async fn finished_rows_are_pruned_and_pending_ones_kept(db: TestDatabase) {
    let store = db.open().await;
    with_messages(&store, &[("!a:x", 2), ("!b:x", 1)]).await;
    for row in store.claim_room_heads("one", 30_000, 10).await.unwrap() {
        store.finish_claimed(row.id, "one", "done", None).await.unwrap();
    }
    assert_eq!(
        store.prune_finished_inbox(60_000).await.unwrap(),
        0,
        "recent rows are kept"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(store.prune_finished_inbox(1).await.unwrap(), 2);
    assert!(store.inbox_by_event_id("$e1").await.unwrap().is_none());
    assert!(store.inbox_by_event_id("$e3").await.unwrap().is_none());
    let pending = store
        .inbox_by_event_id("$e2")
        .await
        .unwrap()
        .expect("the pending row stays");
    assert_eq!(pending.state, "pending");
}

async fn notices_settings_redactions_and_newer_rows(db: TestDatabase) {
    let store = db.open().await;
    assert!(store.claim_room_notice("!a:x", "not-allowed").await.unwrap());
    assert!(!store.claim_room_notice("!a:x", "not-allowed").await.unwrap());
    assert!(store.claim_room_notice("!b:x", "not-allowed").await.unwrap());

    assert_eq!(store.room_settings("!a:x").await.unwrap(), RoomSettings::default());
    let settings = RoomSettings {
        respond_to_all: Some(true),
        show_reasoning: None,
    };
    store.set_room_settings("!a:x", settings).await.unwrap();
    assert_eq!(store.room_settings("!a:x").await.unwrap(), settings);

    let events = vec![
        event(1, "!a:x", InboxEvent::Message, "{}".into()),
        event(2, "!a:x", InboxEvent::Message, "{}".into()),
        event(
            3,
            "!a:x",
            InboxEvent::Redaction,
            r#"{"content":{"redacts":"$e1"}}"#.into(),
        ),
    ];
    store.record_transaction("t", &events).await.unwrap();
    let first = store.inbox_by_event_id("$e1").await.unwrap().unwrap();
    let second = store.inbox_by_event_id("$e2").await.unwrap().unwrap();
    assert!(store.was_redacted("!a:x", first.id, "$e1").await.unwrap());
    assert!(!store.was_redacted("!a:x", second.id, "$e2").await.unwrap());
    assert!(store.has_newer_pending("!a:x", first.id).await.unwrap());
    assert!(!store.has_newer_pending("!a:x", second.id).await.unwrap());
    let (pending, rooms) = store.inbox_backlog().await.unwrap();
    assert_eq!((pending, rooms), (3, 1));
}
