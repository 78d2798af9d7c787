//! People upgrade rooms to new room versions: the agents in them follow to the replacement rooms
//! (asking for an invite where they need one), the space points at an agent's new room, and the
//! conversation goes on there.

mod support;

use std::time::Duration;

use serde_json::json;
use support::stack::{Stack, stack, stack_on_synapse};
use support::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(60);

/// The ghost's notice asking for an invite to the replacement of `room`.
async fn invite_asked_for(stack: &Stack, room: &str, ghost: &str) {
    let asked = eventually("the ghost asking for an invite", PATIENCE, || async {
        let shown = stack.shown(room, ghost).await;
        shown
            .into_iter()
            .find(|s| s.msgtype == "m.notice" && s.body.contains("upgraded"))
    })
    .await;
    assert!(asked.body.contains(ghost), "{}", asked.body);
}

/// Invites the ghost to `room`, then checks that it answers there.
async fn answers_in(stack: &Stack, room: &str, ghost: &str) {
    stack.alice.invite(room, ghost).await.unwrap();
    eventually("the ghost in the new room", PATIENCE, || async {
        let members = stack.alice.joined_members(room).await.unwrap();
        members.iter().any(|m| m == ghost).then_some(())
    })
    .await;
    stack.alice.send_text(room, "after the upgrade").await.unwrap();
    let answers = eventually("the answer in the new room", PATIENCE, || async {
        let shown = stack.shown(room, ghost).await;
        (!shown.is_empty()).then_some(shown)
    })
    .await;
    assert!(answers[0].body.ends_with("after the upgrade"), "{answers:?}");
}

#[tokio::test]
async fn the_agent_follows_its_own_room_to_the_upgraded_one() {
    // From room version 12 only creators may upgrade, and the ghost created the agent's room; on a
    // homeserver that makes older rooms, its people (power level 100) can.
    let stack = stack_on_synapse("upgrade.test", &["Helper"], &[], json!({"default_room_version": "10"})).await;
    let agent = &stack.agents[0];
    let new_room = stack.alice.upgrade_room(&agent.room, "11").await.unwrap();
    invite_asked_for(&stack, &agent.room, &agent.ghost).await;
    let status = stack.install.status().await;
    assert_eq!(status["agents"][0]["room_id"], new_room.as_str(), "{status}");
    assert_eq!(status["agents"][0]["other_rooms"], json!([]));
    answers_in(&stack, &new_room, &agent.ghost).await;

    // The space lists the new room instead of the old one.
    let space = status["space"].as_str().unwrap();
    stack.alice.join(space).await.unwrap();
    let new_child = stack.alice.state(space, "m.space.child", &new_room).await.unwrap();
    assert_eq!(new_child.unwrap()["via"], json!(["upgrade.test"]));
    let old_child = stack.alice.state(space, "m.space.child", &agent.room).await.unwrap();
    assert_eq!(old_child, Some(json!({"via": []})), "the old room left the space");
    stack.stop().await;
}

#[tokio::test]
async fn the_agent_follows_a_direct_chat_to_the_upgraded_one() {
    let stack = stack("upgrade-dm.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let dm = stack
        .alice
        .create_room(json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [agent.ghost]}))
        .await
        .unwrap();
    eventually("the ghost in the DM", PATIENCE, || async {
        let members = stack.alice.joined_members(&dm).await.unwrap();
        members.contains(&agent.ghost).then_some(())
    })
    .await;
    stack.alice.send_text(&dm, "before the upgrade").await.unwrap();
    eventually("the answer in the DM", PATIENCE, || async {
        (!stack.shown(&dm, &agent.ghost).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        stack.letta.conversations(&agent.id),
        1,
        "the DM has a conversation of its own"
    );
    let new_dm = stack.alice.upgrade_room(&dm, "12").await.unwrap();
    invite_asked_for(&stack, &dm, &agent.ghost).await;
    let status = stack.install.status().await;
    assert_eq!(
        status["agents"][0]["other_rooms"],
        json!([{"room_id": new_dm, "kind": "direct"}]),
        "the DM is the new room now"
    );
    answers_in(&stack, &new_dm, &agent.ghost).await;
    assert_eq!(
        stack.letta.conversations(&agent.id),
        1,
        "the upgraded DM goes on in the same conversation"
    );
    stack.stop().await;
}
