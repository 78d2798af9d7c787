//! The management room on a real Synapse: an admin's DM with the bot takes commands; others are
//! refused.

mod support;

use std::time::Duration;

use support::chat::shown_messages;
use support::stack::{Stack, stack};
use support::synapse::Person;
use support::wait::eventually;

const SERVER: &str = "manage.test";
const BOT: &str = "@letta_bot:manage.test";
const PATIENCE: Duration = Duration::from_secs(60);

/// Sends `command` as `person` and returns the bot's next notice.
async fn ask(stack: &Stack, person: &Person, room: &str, command: &str) -> String {
    let before = shown_messages(&stack.alice.messages(room, 100).await.unwrap(), BOT).len();
    person.send_text(room, command).await.unwrap();
    eventually(command, PATIENCE, || async {
        let shown = shown_messages(&stack.alice.messages(room, 100).await.unwrap(), BOT);
        shown.get(before).map(|answer| answer.body.clone())
    })
    .await
}

#[tokio::test]
async fn an_admin_manages_the_bridge_from_a_dm_with_the_bot() {
    let stack = stack(SERVER, &["Helper"], &[("LETTA_MATRIX_ADMINS", "@alice:manage.test")]).await;
    let agent = &stack.agents[0];
    let room = eventually("the management room invite", PATIENCE, || async {
        let invites = stack.alice.invites().await.unwrap();
        invites
            .into_iter()
            .find(|(_, state)| {
                state
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "letta-matrix management")
            })
            .map(|(room, _)| room)
    })
    .await;
    stack.alice.join(&room).await.unwrap();

    assert!(
        ask(&stack, &stack.alice, &room, "help")
            .await
            .contains("import-history <agent-id>")
    );
    let agents = ask(&stack, &stack.alice, &room, "agents").await;
    assert!(
        agents.contains("Helper") && agents.contains(&agent.id) && agents.contains(&agent.ghost),
        "{agents}"
    );
    let status = ask(&stack, &stack.alice, &room, "status").await;
    assert!(
        status.contains("Letta: ok") && status.contains("homeserver: ok"),
        "{status}"
    );
    // Nothing else is waiting: the `status` command itself is not counted.
    assert!(status.contains("relay queue: 0 events waiting in 0 rooms"), "{status}");
    assert!(
        status.contains("conversations: scope `room`, 0 rooms with a conversation of their own"),
        "{status}"
    );
    assert!(
        ask(&stack, &stack.alice, &room, "!sync")
            .await
            .contains("sync pass is starting")
    );
    assert!(
        ask(&stack, &stack.alice, &room, "import-history agent-nobody")
            .await
            .contains("no agent")
    );
    assert!(
        ask(&stack, &stack.alice, &room, &format!("import-history {}", agent.id))
            .await
            .contains("Importing")
    );
    assert!(
        ask(&stack, &stack.alice, &room, "invite")
            .await
            .contains("takes other arguments")
    );
    assert!(
        ask(&stack, &stack.alice, &room, "frobnicate")
            .await
            .contains("I do not know `frobnicate`")
    );

    let bob = stack.synapse.register_user("bob", "bob-password").await.unwrap();
    let invited = ask(
        &stack,
        &stack.alice,
        &room,
        &format!("invite {} {}", agent.id, bob.user_id),
    )
    .await;
    assert!(invited.contains("Invited @bob:manage.test"), "{invited}");
    eventually("bob invited to the agent's room", PATIENCE, || async {
        let invites = bob.invites().await.unwrap();
        invites.iter().any(|(r, _)| r == &agent.room).then_some(())
    })
    .await;

    // Someone else in the room is not obeyed.
    stack.alice.invite(&room, &bob.user_id).await.unwrap();
    bob.join(&room).await.unwrap();
    let refused = ask(&stack, &bob, &room, "agents").await;
    assert!(refused.contains("only the bridge's admins"), "{refused}");
    assert_eq!(stack.letta.turn_requests(), 0, "commands never reach Letta");
    stack.stop().await;
}
