//! The store on both real engines: every query runs on SQLite and on PostgreSQL.

mod support;

use letta_matrix::store::{InboxEvent, InboxState, NewInboxEvent, Store, TransactionOutcome, transaction_key};
use support::db::TestDatabase;

on_both_engines!(
    transaction_is_stored_once,
    event_in_two_transactions_is_stored_once,
    large_transaction_keeps_order_per_room,
    concurrent_delivery_of_one_transaction_stores_once,
    reused_transaction_id_with_other_events_is_processed,
    any_transaction_id_is_stored,
    migrations_are_tracked,
    agents_are_found_by_ghost_and_alias,
    agent_rooms_track_joins_and_leaves,
    bridge_room_is_recorded_once,
    applied_settings_are_replaced,
    old_transaction_ids_are_pruned,
    a_rooms_conversation_is_chosen_once,
    applied_settings_are_listed_by_prefix,
);

fn message(n: usize, room: &str) -> NewInboxEvent {
    NewInboxEvent {
        event_id: format!("$event{n}"),
        room_id: room.to_owned(),
        sender: "@alice:example.org".into(),
        event_type: "m.room.message".into(),
        kind: InboxEvent::Message,
        event_json: format!(r#"{{"n":{n}}}"#),
    }
}

async fn transaction_is_stored_once(db: TestDatabase) {
    let store = db.open().await;
    let events = vec![message(1, "!a:x"), message(2, "!a:x")];
    assert_eq!(
        store.record_transaction("t1", &events).await.unwrap(),
        TransactionOutcome::Stored { events: 2 }
    );
    assert_eq!(
        store.record_transaction("t1", &events).await.unwrap(),
        TransactionOutcome::Duplicate
    );
    let lane = store.inbox_for_room("!a:x").await.unwrap();
    assert_eq!(lane.len(), 2);
    assert_eq!(lane[0].event_json, r#"{"n":1}"#);
    assert_eq!(
        (lane[0].state.as_str(), lane[0].kind.as_str(), lane[0].txn_id.as_str()),
        ("pending", "message", transaction_key("t1").as_str())
    );
    assert!(store.is_transaction_processed("t1").await.unwrap());
    assert_eq!(store.inbox_count(InboxState::Pending).await.unwrap(), 2);
}

async fn event_in_two_transactions_is_stored_once(db: TestDatabase) {
    let store = db.open().await;
    store.record_transaction("t1", &[message(1, "!a:x")]).await.unwrap();
    let second = store
        .record_transaction("t2", &[message(1, "!a:x"), message(2, "!a:x")])
        .await
        .unwrap();
    assert_eq!(second, TransactionOutcome::Stored { events: 1 });
    assert_eq!(store.inbox_for_room("!a:x").await.unwrap().len(), 2);
    // An empty transaction still counts as processed.
    assert_eq!(
        store.record_transaction("t3", &[]).await.unwrap(),
        TransactionOutcome::Stored { events: 0 }
    );
    assert!(store.is_transaction_processed("t3").await.unwrap());
}

async fn large_transaction_keeps_order_per_room(db: TestDatabase) {
    let store = db.open().await;
    let events: Vec<_> = (0..250)
        .map(|n| message(n, if n % 2 == 0 { "!even:x" } else { "!odd:x" }))
        .collect();
    assert_eq!(
        store.record_transaction("big", &events).await.unwrap(),
        TransactionOutcome::Stored { events: 250 }
    );
    let even = store.inbox_for_room("!even:x").await.unwrap();
    assert_eq!(even.len(), 125);
    let order: Vec<_> = even.iter().map(|row| row.event_id.clone()).collect();
    let expected: Vec<_> = (0..250).step_by(2).map(|n| format!("$event{n}")).collect();
    assert_eq!(order, expected);
    assert!(even.windows(2).all(|pair| pair[0].id < pair[1].id));
}

async fn concurrent_delivery_of_one_transaction_stores_once(db: TestDatabase) {
    let store = db.open().await;
    let events: Vec<_> = (0..20).map(|n| message(n, "!a:x")).collect();
    let attempts = (0..4).map(|_| {
        let store: Store = store.clone();
        let events = events.clone();
        tokio::spawn(async move { store.record_transaction("same", &events).await.unwrap() })
    });
    let outcomes = futures::future::join_all(attempts).await;
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), TransactionOutcome::Stored { .. }))
        .count();
    assert_eq!(stored, 1, "{outcomes:?}");
    assert_eq!(store.inbox_for_room("!a:x").await.unwrap().len(), 20);
}

async fn reused_transaction_id_with_other_events_is_processed(db: TestDatabase) {
    let store = db.open().await;
    let before = vec![message(1, "!a:x"), message(2, "!a:x")];
    store.record_transaction("1", &before).await.unwrap();
    // Synapse on SQLite, restarted, numbers its transactions from 1 again.
    let after = vec![message(3, "!a:x")];
    assert_eq!(
        store.record_transaction("1", &after).await.unwrap(),
        TransactionOutcome::Reused { events: 1 }
    );
    assert_eq!(
        store.record_transaction("1", &after).await.unwrap(),
        TransactionOutcome::Duplicate,
        "the retry of the new transaction is recognised"
    );
    // An old event delivered again with a new one: only the new one is stored.
    let mixed = vec![message(2, "!a:x"), message(4, "!a:x")];
    assert_eq!(
        store.record_transaction("1", &mixed).await.unwrap(),
        TransactionOutcome::Reused { events: 1 }
    );
    let lane: Vec<String> = store
        .inbox_for_room("!a:x")
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.event_id)
        .collect();
    assert_eq!(lane, ["$event1", "$event2", "$event3", "$event4"]);
}

/// PostgreSQL cannot index a 10,000-character text nor store a NUL; the homeserver chooses the id.
async fn any_transaction_id_is_stored(db: TestDatabase) {
    let store = db.open().await;
    for (n, txn_id) in ["x".repeat(10_000), "a\0b".to_owned(), "\u{1F600}/..%".to_owned()]
        .iter()
        .enumerate()
    {
        assert_eq!(
            store.record_transaction(txn_id, &[message(n, "!a:x")]).await.unwrap(),
            TransactionOutcome::Stored { events: 1 },
            "a txn id of {} bytes",
            txn_id.len()
        );
        assert_eq!(
            store.record_transaction(txn_id, &[message(n, "!a:x")]).await.unwrap(),
            TransactionOutcome::Duplicate
        );
        assert!(store.is_transaction_processed(txn_id).await.unwrap());
    }
}

async fn migrations_are_tracked(db: TestDatabase) {
    let fresh = Store::connect(&db.url, 1).await.unwrap();
    assert!(!fresh.pending_migrations().await.unwrap().is_empty());
    fresh.migrate().await.unwrap();
    assert!(fresh.pending_migrations().await.unwrap().is_empty());
    // Running them again is harmless.
    fresh.migrate().await.unwrap();
    fresh.ping().await.unwrap();
}

async fn agents_are_found_by_ghost_and_alias(db: TestDatabase) {
    let store = db.open().await;
    store
        .insert_agent("agent-1", "@letta_agent-1:x", "Helper", Some("helps"))
        .await
        .unwrap();
    // A second sighting does not overwrite what Matrix shows: that is the rename still to apply.
    store
        .insert_agent("agent-1", "@letta_agent-1:x", "Other", None)
        .await
        .unwrap();
    let fresh = store.agent("agent-1").await.unwrap().unwrap();
    assert_eq!(
        (
            fresh.name.as_str(),
            fresh.description.as_deref(),
            fresh.sync_step.as_str()
        ),
        ("Helper", Some("helps"), "new")
    );
    store
        .set_agent_room("agent-1", "!room:x", Some("#letta_agent-1:x"))
        .await
        .unwrap();
    store.mark_agent_synced("agent-1", "Renamed", None).await.unwrap();
    let by_ghost = store.agent_by_ghost("@letta_agent-1:x").await.unwrap().unwrap();
    assert_eq!(
        (
            by_ghost.name.as_str(),
            by_ghost.description,
            by_ghost.sync_step.as_str()
        ),
        ("Renamed", None, "ready")
    );
    assert_eq!(by_ghost.room_id.as_deref(), Some("!room:x"));
    let by_alias = store.agent_by_alias("#letta_agent-1:x").await.unwrap().unwrap();
    assert_eq!(by_alias.agent_id, "agent-1");
    assert!(store.agent_by_ghost("@letta_other:x").await.unwrap().is_none());
    assert_eq!(store.agents().await.unwrap().len(), 1);

    store.mark_agent_deleted("agent-1").await.unwrap();
    let deleted = store.agent("agent-1").await.unwrap().unwrap();
    assert!(
        deleted.deleted_at.is_some() && deleted.room_id.is_some(),
        "the mapping is kept: {deleted:?}"
    );
    store.mark_agent_synced("agent-1", "Back", None).await.unwrap();
    assert!(store.agent("agent-1").await.unwrap().unwrap().deleted_at.is_none());
}

async fn agent_rooms_track_joins_and_leaves(db: TestDatabase) {
    let store = db.open().await;
    store
        .insert_agent("agent-1", "@letta_agent-1:x", "Helper", None)
        .await
        .unwrap();
    store.add_agent_room("!dm:x", "agent-1", "direct").await.unwrap();
    store.add_agent_room("!group:x", "agent-1", "group").await.unwrap();
    store.add_agent_room("!dm:x", "agent-1", "direct").await.unwrap();
    let rooms = store.agent_rooms("agent-1").await.unwrap();
    assert_eq!(
        rooms,
        [
            ("!dm:x".to_owned(), "direct".to_owned()),
            ("!group:x".to_owned(), "group".to_owned())
        ]
    );
    store.mark_agent_room_left("!dm:x", "agent-1").await.unwrap();
    assert_eq!(store.agent_rooms("agent-1").await.unwrap().len(), 1);
    store.add_agent_room("!dm:x", "agent-1", "direct").await.unwrap();
    assert_eq!(
        store.agent_rooms("agent-1").await.unwrap().len(),
        2,
        "a re-invite rejoins"
    );
}

async fn bridge_room_is_recorded_once(db: TestDatabase) {
    let store = db.open().await;
    assert!(store.bridge_room("space").await.unwrap().is_none());
    assert_eq!(
        store.set_bridge_room("space", "!first:x").await.unwrap().room_id,
        "!first:x"
    );
    assert_eq!(
        store.set_bridge_room("space", "!second:x").await.unwrap().room_id,
        "!first:x"
    );
}

async fn applied_settings_are_replaced(db: TestDatabase) {
    let store = db.open().await;
    assert_eq!(store.applied_setting("invite").await.unwrap(), None);
    store.set_applied_setting("invite", "@a:x").await.unwrap();
    store.set_applied_setting("invite", "@a:x\n@b:x").await.unwrap();
    assert_eq!(
        store.applied_setting("invite").await.unwrap().as_deref(),
        Some("@a:x\n@b:x")
    );
    assert_eq!(store.applied_setting("other").await.unwrap(), None);
}

async fn old_transaction_ids_are_pruned(db: TestDatabase) {
    let store = db.open().await;
    store.record_transaction("old", &[]).await.unwrap();
    assert_eq!(store.prune_transactions(60_000).await.unwrap(), 0, "a fresh id is kept");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(store.prune_transactions(1).await.unwrap(), 1);
    assert!(!store.is_transaction_processed("old").await.unwrap());
}

async fn a_rooms_conversation_is_chosen_once(db: TestDatabase) {
    let store = db.open().await;
    assert_eq!(store.room_conversation("agent-a", "!dm:x").await.unwrap(), None);
    let first = store
        .set_room_conversation("agent-a", "!dm:x", Some("conv-1"))
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("conv-1"));
    let again = store
        .set_room_conversation("agent-a", "!dm:x", Some("conv-2"))
        .await
        .unwrap();
    assert_eq!(
        again.as_deref(),
        Some("conv-1"),
        "the first choice stands (another replica's, say)"
    );
    let default = store.set_room_conversation("agent-a", "!group:x", None).await.unwrap();
    assert_eq!(default, None);
    assert_eq!(
        store.room_conversation("agent-a", "!group:x").await.unwrap(),
        Some(None)
    );
    assert_eq!(
        store.room_conversation("agent-b", "!dm:x").await.unwrap(),
        None,
        "per agent"
    );
    assert_eq!(store.own_conversations().await.unwrap(), 1);
}

async fn applied_settings_are_listed_by_prefix(db: TestDatabase) {
    let store = db.open().await;
    store.set_applied_setting("tools:agent-a", "f1").await.unwrap();
    store.set_applied_setting("tools:agent-b", "f2").await.unwrap();
    store.set_applied_setting("invite", "@a:x").await.unwrap();
    let mut tools = store.applied_settings_with_prefix("tools:").await.unwrap();
    tools.sort();
    assert_eq!(
        tools,
        [
            ("tools:agent-a".to_owned(), "f1".to_owned()),
            ("tools:agent-b".to_owned(), "f2".to_owned())
        ]
    );
    assert!(store.applied_settings_with_prefix("nothing:").await.unwrap().is_empty());
}
