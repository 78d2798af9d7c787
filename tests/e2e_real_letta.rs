//! The bridge in front of a real Letta 0.16.8 (installed and started by `scripts/test`; only its
//! language model is our model stand-in), a real Synapse and a person: talking, failures and
//! approvals, agent sync, and history import, as they happen with the server people run.

mod support;

use std::time::Duration;

use model_standin::Step;
use serde_json::json;
use support::chat::Shown;
use support::letta_server::LettaServer;
use support::stack::{Stack, real_stack};
use support::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(90);

async fn wait_for(
    stack: &Stack<LettaServer>,
    room: &str,
    ghost: &str,
    what: &str,
    done: impl Fn(&[Shown]) -> bool,
) -> Vec<Shown> {
    eventually(what, PATIENCE, || async {
        let shown = stack.shown(room, ghost).await;
        done(&shown).then_some(shown)
    })
    .await
}

fn has_text(shown: &[Shown], msgtype: &str, needle: &str) -> bool {
    shown.iter().any(|s| s.msgtype == msgtype && s.body.contains(needle))
}

#[tokio::test]
async fn a_person_gets_a_streamed_answer_from_a_real_agent() {
    let Some(letta) = LettaServer::real().await else { return };
    let id = letta.create_agent("Paris Guide").await;
    let stack = real_stack("real-relay.test", letta, vec![id.clone()], &[]).await;
    let agent = &stack.agents[0];
    let answer = "Paris is the capital of France, and it has been for a very long time.";
    stack.letta.script(&id, [Step::reply(answer)]);
    stack.letta.model.set_latency(
        &stack.letta.model_of(&id),
        Duration::from_millis(200),
        Duration::from_millis(60),
    );
    stack
        .alice
        .send_text(&agent.room, "What is the capital of France?")
        .await
        .unwrap();
    let shown = wait_for(&stack, &agent.room, &agent.ghost, "the agent's answer", |shown| {
        shown.iter().any(|s| s.body == answer)
    })
    .await;
    let message = shown.iter().find(|s| s.body == answer).unwrap();
    assert!(
        message.edits >= 1,
        "the answer grew by edits as it streamed: {message:?}"
    );
    let seen = stack.letta.seen_text(&id);
    assert!(
        seen.contains("(@alice:real-relay.test): What is the capital of France?"),
        "the model was told who asked and what: {seen}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn failures_and_tools_needing_approval_are_explained_and_never_leave_an_agent_stuck() {
    let Some(letta) = LettaServer::real().await else { return };
    let id = letta.create_agent("Careful").await;
    let tool = letta.attach_approval_tool(&id).await;
    let stack = real_stack("real-approval.test", letta, vec![id.clone()], &[]).await;
    let agent = &stack.agents[0];

    // The model fails: Letta streams an error event; the person is told, in words.
    stack.letta.script(&id, [Step::Fail(500)]);
    stack.alice.send_text(&agent.room, "Are you there?").await.unwrap();
    wait_for(
        &stack,
        &agent.room,
        &agent.ghost,
        "a notice about the failure",
        |shown| has_text(shown, "m.notice", "error"),
    )
    .await;

    // The agent calls a tool that needs approval: denied with a notice, and the agent carries on.
    stack.letta.script(
        &id,
        [
            Step::tool_call(&tool, json!({"target": "the production database"})),
            Step::reply("Understood: I did not touch the database."),
        ],
    );
    stack
        .alice
        .send_text(&agent.room, "Please wipe the database.")
        .await
        .unwrap();
    let shown = wait_for(
        &stack,
        &agent.room,
        &agent.ghost,
        "the denial and the agent's reaction",
        |shown| has_text(shown, "m.text", "I did not touch the database"),
    )
    .await;
    assert!(
        has_text(&shown, "m.notice", &format!("`{tool}`")),
        "the person is told which tool was denied: {shown:?}"
    );
    assert!(
        stack.letta.seen_text(&id).contains("cannot be approved yet"),
        "the agent was told why"
    );

    // Not stuck: the next message is answered as usual.
    stack.alice.send_text(&agent.room, "Thank you").await.unwrap();
    wait_for(&stack, &agent.room, &agent.ghost, "an ordinary answer", |shown| {
        has_text(shown, "m.text", "You said: ") && shown.last().is_some_and(|s| s.body.contains("Thank you"))
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn real_agents_are_mirrored_renamed_and_retired_but_sleeptime_companions_get_no_room() {
    let Some(letta) = LettaServer::real().await else { return };
    let id = letta
        .create_agent_with("Dreamer", "letta_v1_agent", json!({"enable_sleeptime": true}))
        .await;
    let companions: Vec<String> = letta
        .client()
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.name == "Dreamer-sleeptime" && a.is_sleeptime_companion())
        .map(|a| a.id)
        .collect();
    assert!(!companions.is_empty(), "Letta made a sleeptime companion");
    let stack = real_stack("real-sync.test", letta, vec![id.clone()], &[]).await;
    let agent = &stack.agents[0];
    let status = stack.install.status().await;
    let mirrored: Vec<&str> = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert!(mirrored.contains(&id.as_str()));
    assert!(
        companions.iter().all(|c| !mirrored.contains(&c.as_str())),
        "no companion gets a ghost or a room: {status}"
    );

    stack.letta.rename(&id, "Daydreamer").await;
    eventually("the room named after the new name", PATIENCE, || async {
        let name = stack.alice.state(&agent.room, "m.room.name", "").await.ok()??;
        (name["name"] == "Daydreamer").then_some(())
    })
    .await;
    stack.letta.delete(&id).await;
    let bot = "@letta_bot:real-sync.test";
    wait_for(
        &stack,
        &agent.room,
        bot,
        "the notice that the agent was deleted",
        |shown| has_text(shown, "m.notice", "Daydreamer was deleted in Letta"),
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn a_real_agents_long_history_is_imported_whole_but_not_its_other_conversations() {
    let Some(letta) = LettaServer::real().await else { return };
    let id = letta.create_agent("Archivist").await;
    let inputs: Vec<_> = (0..150)
        .map(|n| {
            json!({"role": "user", "content": format!("old message {n:03}"), "name": "alice", "otid": format!("import-test-{n}")})
        })
        .collect();
    letta
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{id}/messages"),
            Some(json!({"messages": inputs})),
        )
        .await;
    // A conversation of the same agent, elsewhere: not the agent room's history.
    let conversation = letta
        .call(
            reqwest::Method::POST,
            &format!("/v1/conversations/?agent_id={id}"),
            Some(json!({})),
        )
        .await;
    let conversation = conversation["id"].as_str().expect("a conversation id").to_owned();
    letta
        .call(
            reqwest::Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
            Some(json!({"messages": [{"role": "user", "content": "a private conversation elsewhere"}], "streaming": false})),
        )
        .await;

    let stack = real_stack("real-history.test", letta, vec![id.clone()], &[]).await;
    let agent = &stack.agents[0];
    let bot = format!("@letta_bot:{}", "real-history.test");
    let imported = eventually("the whole history in the room", PATIENCE, || async {
        let events = stack.alice.messages(&agent.room, 500).await.ok()?;
        let quoted: Vec<String> = support::chat::shown_messages(&events, &bot)
            .into_iter()
            .map(|s| s.body)
            .filter(|b| b.contains("old message"))
            .collect();
        (quoted.len() >= 150).then_some(quoted)
    })
    .await;
    let expected: Vec<String> = (0..150).map(|n| format!("old message {n:03}")).collect();
    let found: Vec<String> = imported
        .iter()
        .map(|b| {
            b.rsplit("old message ")
                .next()
                .map(|n| format!("old message {n}"))
                .unwrap()
        })
        .collect();
    assert_eq!(found, expected, "all 150, once each, in order");
    // The agent's answer comes after the 150 messages it answers: it may still be on its way.
    eventually("the agent's imported answer", PATIENCE, || async {
        let answers = stack.shown(&agent.room, &agent.ghost).await;
        has_text(&answers, "m.text", "You said: old message 149").then_some(())
    })
    .await;
    let everything = serde_json::Value::from(stack.alice.messages(&agent.room, 500).await.unwrap()).to_string();
    assert!(
        !everything.contains("a private conversation elsewhere"),
        "another conversation's messages stay out of the agent's room"
    );
    stack.stop().await;
}
