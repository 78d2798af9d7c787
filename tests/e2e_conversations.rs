//! A Letta conversation per room (`conversation_scope`) on Synapse: a DM gets its own
//! conversation and is answered alongside the agent's room; with `agent` scope both share the
//! default conversation and take turns; on the real Letta, what is said in the agent's room is not
//! in the context the model gets for the DM.

mod support;

use std::time::Duration;

use letta_matrix::letta::LettaClient;
use model_standin::Step;
use serde_json::json;
use support::letta_server::LettaServer;
use support::stack::{Stack, real_stack, stack};
use support::synapse::Person;
use support::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(60);

/// Alice opens a DM with the agent's ghost, which joins it.
async fn open_dm(alice: &Person, ghost: &str) -> String {
    let dm = alice
        .create_room(json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [ghost]}))
        .await
        .unwrap();
    eventually("the ghost joining the DM", PATIENCE, || async {
        alice
            .joined_members(&dm)
            .await
            .unwrap()
            .iter()
            .any(|m| m == ghost)
            .then_some(())
    })
    .await;
    dm
}

/// Asks in the DM, kills `serve` once the (slowly streamed) answer starts to show, restarts it, and
/// checks that the one answer shown is completed by an edit of the same event.
async fn kill_mid_answer_and_restart<L>(stack: &mut Stack<L>, dm: &str, ghost: &str, answer: &str) {
    stack.alice.send_text(dm, "tell me something").await.unwrap();
    let partial = eventually("the answer starting to show", PATIENCE, || async {
        stack.shown(dm, ghost).await.into_iter().find(|s| !s.body.is_empty())
    })
    .await;
    assert_ne!(partial.body, answer, "the kill comes mid-answer");
    stack.served.take().unwrap().kill().await;
    stack.served = Some(stack.install.serve().await.unwrap());
    let shown = eventually("the answer completed", Duration::from_secs(120), || async {
        let shown = stack.shown(dm, ghost).await;
        shown.iter().any(|s| s.body == answer).then_some(shown)
    })
    .await;
    assert_eq!(shown.len(), 1, "one answer, completed by an edit: {shown:?}");
    assert_eq!(shown[0].event_id, partial.event_id);
}

/// The default conversation's texts, as history import reads them.
async fn default_conversation(client: &LettaClient, agent_id: &str) -> String {
    client
        .history(agent_id, i64::MAX, 100, |_| true)
        .await
        .unwrap()
        .iter()
        .map(|m| m.text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The DM and the agent's room, each with one slow turn, sent together; `(most turns of the agent
/// at once, the default conversation's text)` once both are answered.
async fn both_rooms_at_once(scope: &str, server: &str) -> (usize, String) {
    let stack = stack(server, &["Slow"], &[("LETTA_MATRIX_CONVERSATION_SCOPE", scope)]).await;
    let agent = &stack.agents[0];
    let dm = open_dm(&stack.alice, &agent.ghost).await;
    stack
        .letta
        .set_latency(&agent.id, Duration::from_millis(800), Duration::ZERO);
    stack.alice.send_text(&dm, "in the DM").await.unwrap();
    stack.alice.send_text(&agent.room, "in the room").await.unwrap();
    eventually("both rooms answered", PATIENCE, || async {
        let in_dm = stack.shown(&dm, &agent.ghost).await;
        let in_room = stack.shown(&agent.room, &agent.ghost).await;
        (in_dm.iter().any(|m| m.body.ends_with("in the DM")) && in_room.iter().any(|m| m.body.ends_with("in the room")))
            .then_some(())
    })
    .await;
    let relay = &stack.install.status().await["relay"];
    assert_eq!(relay["conversation_scope"], scope);
    assert_eq!(
        relay["rooms_with_own_conversation"],
        if scope == "room" { 1 } else { 0 }
    );
    let client = LettaClient::new(stack.letta.url().parse().unwrap(), None);
    let result = (
        stack.letta.max_concurrent(&agent.id),
        default_conversation(&client, &agent.id).await,
    );
    stack.stop().await;
    result
}

#[tokio::test]
async fn with_room_scope_a_dm_has_its_own_conversation_and_is_answered_alongside_the_agent_room() {
    let (at_once, default) = both_rooms_at_once("room", "rooms.test").await;
    assert_eq!(at_once, 2, "the two rooms' turns ran at the same time");
    assert!(default.contains("in the room"), "{default}");
    assert!(
        !default.contains("in the DM"),
        "the DM talks in a conversation of its own: {default}"
    );
}

#[tokio::test]
async fn with_agent_scope_every_room_shares_the_default_conversation_one_turn_at_a_time() {
    let (at_once, default) = both_rooms_at_once("agent", "one.test").await;
    assert_eq!(at_once, 1, "never two turns of one agent at once");
    assert!(
        default.contains("in the room") && default.contains("in the DM"),
        "{default}"
    );
}

#[tokio::test]
async fn on_a_real_letta_what_is_said_in_the_agent_room_stays_out_of_a_dm() {
    let Some(letta) = LettaServer::real().await else { return };
    let id = letta.create_agent("Keeper").await;
    let stack = real_stack("private.test", letta, vec![id.clone()], &[]).await;
    let agent = &stack.agents[0];
    stack
        .alice
        .send_text(&agent.room, "The code word is marmalade.")
        .await
        .unwrap();
    stack.wait_for_answers(agent, 1, |_| true).await;
    let dm = open_dm(&stack.alice, &agent.ghost).await;
    stack.letta.script(&id, [Step::reply("I do not know any code word.")]);
    stack.alice.send_text(&dm, "What is the code word?").await.unwrap();
    eventually("the answer in the DM", PATIENCE, || async {
        let shown = stack.shown(&dm, &agent.ghost).await;
        shown.into_iter().find(|m| m.body.contains("do not know"))
    })
    .await;
    let requests = stack.letta.model.requests(&stack.letta.model_of(&id));
    let last = requests.last().expect("the model was asked").to_string();
    assert!(last.contains("What is the code word"), "{last}");
    assert!(
        !last.contains("marmalade"),
        "the agent room's words reached the DM's context: {last}"
    );

    // Both rooms at once: the model is asked for both together.
    let model = stack.letta.model_of(&id);
    stack
        .letta
        .model
        .set_latency(&model, Duration::from_millis(1500), Duration::ZERO);
    stack.alice.send_text(&dm, "first, in the DM").await.unwrap();
    stack.alice.send_text(&agent.room, "second, in the room").await.unwrap();
    eventually("both answered", PATIENCE, || async {
        let in_dm = stack.shown(&dm, &agent.ghost).await;
        let in_room = stack.shown(&agent.room, &agent.ghost).await;
        (in_dm.iter().any(|m| m.body.contains("first, in the DM"))
            && in_room.iter().any(|m| m.body.contains("second, in the room")))
        .then_some(())
    })
    .await;
    assert_eq!(
        stack.letta.model.max_concurrent(&model),
        2,
        "the two rooms' turns overlapped"
    );
    stack.stop().await;
}

/// A kill while a DM's answer streams: after the restart the turn is found by its otid in the
/// DM's conversation, and completed, without asking Letta again.
#[tokio::test]
async fn a_kill_mid_answer_in_a_dm_is_recovered_from_its_conversation() {
    let mut stack = stack("dm-crash.test", &["Helper"], &[]).await;
    let (id, ghost) = (stack.agents[0].id.clone(), stack.agents[0].ghost.clone());
    let dm = open_dm(&stack.alice, &ghost).await;
    let answer = "A long answer in the DM, cut by a crash and completed from the conversation.";
    stack.letta.script_reply(&id, answer);
    stack.letta.set_chunk_chars(4);
    stack.letta.set_latency(&id, Duration::ZERO, Duration::from_millis(250));
    kill_mid_answer_and_restart(&mut stack, &dm, &ghost, answer).await;
    assert_eq!(
        stack.letta.turn_requests(),
        1,
        "Letta was asked once; the answer was looked up"
    );
    assert_eq!(stack.letta.conversations(&id), 1);
    assert!(
        stack.letta.requests("GET /v1/conversations/{conversation_id}/messages") >= 1,
        "the turn was looked up in the DM's conversation"
    );
    stack.stop().await;
}

/// The same on the real Letta: the answer Letta finished while we were down is found by its otid
/// in the DM's conversation, and the model is not asked a second time.
#[tokio::test]
async fn on_a_real_letta_a_kill_mid_answer_in_a_dm_is_recovered_without_a_second_ask() {
    let Some(letta) = LettaServer::real().await else { return };
    let id = letta.create_agent("Survivor").await;
    let mut stack = real_stack("real-dm-crash.test", letta, vec![id.clone()], &[]).await;
    let ghost = stack.agents[0].ghost.clone();
    let dm = open_dm(&stack.alice, &ghost).await;
    let model = stack.letta.model_of(&id);
    let answer = "Here is a long answer from the real Letta, streamed slowly so that a kill cuts it.";
    stack.letta.script(&id, [Step::reply(answer)]);
    stack
        .letta
        .model
        .set_latency(&model, Duration::ZERO, Duration::from_millis(120));
    kill_mid_answer_and_restart(&mut stack, &dm, &ghost, answer).await;
    assert_eq!(stack.letta.model.completions(&model), 1, "the model was asked once");
    stack.stop().await;
}
