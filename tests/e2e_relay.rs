//! The relay end to end: a person on a real Synapse talks to agents served by the Letta stand-in
//! through `letta-matrix serve`, and sees streamed, formatted answers from the agents' ghosts.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::chat::Shown;
use support::stack::{Stack, stack};
use support::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(60);

fn texts(shown: &[Shown]) -> Vec<&str> {
    shown
        .iter()
        .filter(|s| s.msgtype == "m.text")
        .map(|s| s.body.as_str())
        .collect()
}

/// Alice writes `body` in the thread of `root`, as Element does.
async fn say_in_thread(stack: &Stack, room: &str, root: &str, body: &str) {
    let relation =
        json!({"rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": {"event_id": root}});
    stack
        .alice
        .send(
            room,
            json!({"msgtype": "m.text", "body": body, "m.relates_to": relation}),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_person_sees_a_streamed_formatted_answer_with_typing_and_a_read_receipt() {
    let stack = stack("stream.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let answer = "Hello **Alice**, this answer arrives in small pieces, like a modern chat.";
    stack.letta.script_reply(&agent.id, answer);
    stack.letta.set_chunk_chars(4);
    stack
        .letta
        .set_latency(&agent.id, Duration::from_millis(300), Duration::from_millis(80));
    let since = stack.alice.sync(None, 0).await.unwrap()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let asked_at = Instant::now();
    let asked = stack.alice.send_text(&agent.room, "hi there").await.unwrap();

    // Typing and the read receipt arrive while the agent works.
    let (mut typing_seen, mut receipt_seen) = (false, false);
    let mut since = since;
    while !(typing_seen && receipt_seen) && asked_at.elapsed() < PATIENCE {
        let sync = stack.alice.sync(Some(&since), 1000).await.unwrap();
        since = sync["next_batch"].as_str().unwrap().to_owned();
        for event in sync["rooms"]["join"][&agent.room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if event["type"] == "m.typing"
                && event["content"]["user_ids"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(agent.ghost))
            {
                typing_seen = true;
            }
            if event["type"] == "m.receipt" && !event["content"][&asked]["m.read"][&agent.ghost].is_null() {
                receipt_seen = true;
            }
        }
    }
    assert!(typing_seen, "the ghost showed typing");
    assert!(receipt_seen, "the ghost sent a read receipt for the message");

    let shown = stack.wait_for_answers(agent, 1, |s| s[0].body == answer).await;
    assert_eq!(shown.len(), 1, "one answer: {shown:?}");
    let reply = &shown[0];
    assert_eq!(
        reply.formatted.as_deref(),
        Some("<p>Hello <strong>Alice</strong>, this answer arrives in small pieces, like a modern chat.</p>")
    );
    assert!(reply.edits >= 1, "the answer grew by edits while streaming");
    // ~1.7 s of streaming at one edit per 300 ms at most.
    assert!(reply.edits <= 10, "edits are throttled: {}", reply.edits);

    eventually("typing to stop", PATIENCE, || async {
        let sync = stack.alice.sync(Some(&since), 1000).await.unwrap();
        let typing = sync["rooms"]["join"][&agent.room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "m.typing")
            .cloned();
        typing.filter(|t| {
            !t["content"]["user_ids"]
                .as_array()
                .unwrap()
                .contains(&json!(agent.ghost))
        })
    })
    .await;

    let told = stack.letta.user_messages(&agent.id);
    assert_eq!(told.len(), 1);
    assert_eq!(told[0]["name"], "alice");
    assert_eq!(told[0]["content"], format!("alice (@alice:stream.test): hi there"));
    assert_eq!(
        told[0]["otid"].as_str().map(str::len),
        Some(36),
        "an otid derived from the event"
    );
    assert_eq!(stack.letta.turn_requests(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn rooms_run_in_parallel_one_room_keeps_order_and_an_agent_takes_one_turn_at_a_time() {
    // One conversation per agent: its rooms take turns (tests/e2e_conversations.rs has the rest).
    let stack = stack(
        "lanes.test",
        &["Slow", "Quick"],
        &[("LETTA_MATRIX_CONVERSATION_SCOPE", "agent")],
    )
    .await;
    let (slow, quick) = (&stack.agents[0], &stack.agents[1]);
    stack
        .letta
        .set_latency(&slow.id, Duration::from_secs(4), Duration::ZERO);
    stack.alice.send_text(&slow.room, "slow one").await.unwrap();
    stack.alice.send_text(&quick.room, "quick one").await.unwrap();
    let quick_answer = stack
        .wait_for_answers(quick, 1, |s| s[0].body.ends_with("quick one"))
        .await;
    assert!(
        stack.shown(&slow.room, &slow.ghost).await.is_empty(),
        "the quick agent answered while the slow one was still working"
    );
    assert_eq!(texts(&quick_answer), ["You said: alice (@alice:lanes.test): quick one"]);

    for n in 1..=4 {
        stack.alice.send_text(&quick.room, &format!("m{n}")).await.unwrap();
    }
    let answers = stack.wait_for_answers(quick, 5, |s| s[4].body.ends_with("m4")).await;
    let expected: Vec<String> = std::iter::once("quick one".to_owned())
        .chain((1..=4).map(|n| format!("m{n}")))
        .map(|m| format!("You said: alice (@alice:lanes.test): {m}"))
        .collect();
    assert_eq!(texts(&answers), expected, "answers in the order of the messages");

    // The slow agent in a second room (a DM) takes its turns one at a time.
    let dm = stack
        .alice
        .create_room(json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [slow.ghost]}))
        .await
        .unwrap();
    eventually("the ghost joining the DM", PATIENCE, || async {
        stack
            .alice
            .joined_members(&dm)
            .await
            .unwrap()
            .contains(&slow.ghost)
            .then_some(())
    })
    .await;
    stack
        .letta
        .set_latency(&slow.id, Duration::from_millis(800), Duration::ZERO);
    stack.alice.send_text(&dm, "in the DM").await.unwrap();
    stack.alice.send_text(&slow.room, "in the room").await.unwrap();
    eventually("both rooms answered", PATIENCE, || async {
        let dm_answers = stack.shown(&dm, &slow.ghost).await;
        let room_answers = stack.shown(&slow.room, &slow.ghost).await;
        (dm_answers.len() == 1 && room_answers.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        stack.letta.max_concurrent(&slow.id),
        1,
        "never two turns of one agent at once"
    );
    stack.stop().await;
}

#[tokio::test]
async fn people_not_allowed_get_one_notice_and_letta_never_hears_them() {
    let stack = stack(
        "allow.test",
        &["Guarded"],
        &[
            ("LETTA_MATRIX_ALLOW", "@alice:*"),
            ("LETTA_MATRIX_INVITE", "@alice:allow.test,@bob:allow.test"),
        ],
    )
    .await;
    let agent = &stack.agents[0];
    let bob = stack.synapse.register_user("bob", "bob-password").await.unwrap();
    eventually("bob joining", PATIENCE, || async { bob.join(&agent.room).await.ok() }).await;
    bob.send_text(&agent.room, "let me in").await.unwrap();
    bob.send_text(&agent.room, "please").await.unwrap();
    stack.alice.send_text(&agent.room, "I am allowed").await.unwrap();
    let shown = stack
        .wait_for_answers(agent, 2, |s| s.iter().any(|m| m.msgtype == "m.text"))
        .await;
    let notices: Vec<&Shown> = shown.iter().filter(|s| s.msgtype == "m.notice").collect();
    assert_eq!(notices.len(), 1, "one notice however often: {shown:?}");
    assert!(notices[0].body.contains("allow"));
    assert_eq!(texts(&shown), ["You said: alice (@alice:allow.test): I am allowed"]);
    let told = stack.letta.user_messages(&agent.id);
    assert_eq!(told.len(), 1, "bob's messages never reached Letta");
    stack.stop().await;
}

#[tokio::test]
async fn in_a_group_room_the_agent_answers_when_addressed_and_keeps_the_rest_as_context() {
    let stack = stack("group.test", &["Helper", "Scribe"], &[]).await;
    let (helper, scribe) = (&stack.agents[0], &stack.agents[1]);
    let group = stack
        .alice
        .create_room(json!({"name": "team", "invite": [helper.ghost, scribe.ghost]}))
        .await
        .unwrap();
    eventually("both ghosts joining the group", PATIENCE, || async {
        let members = stack.alice.joined_members(&group).await.unwrap();
        (members.contains(&helper.ghost) && members.contains(&scribe.ghost)).then_some(())
    })
    .await;
    stack.alice.send_text(&group, "lunch at noon?").await.unwrap();
    let asked = stack
        .alice
        .send_text(&group, "helper, what did I just ask?")
        .await
        .unwrap();
    let answers = eventually("the addressed answer", PATIENCE, || async {
        let shown = stack.shown(&group, &helper.ghost).await;
        (!shown.is_empty()).then_some(shown)
    })
    .await;
    assert_eq!(answers.len(), 1, "only the addressed message is answered");
    assert_eq!(
        answers[0].content["m.relates_to"]["m.in_reply_to"]["event_id"],
        asked.as_str()
    );
    let contents = |agent_id: &str| -> Vec<String> {
        stack
            .letta
            .user_messages(agent_id)
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        contents(&helper.id),
        [
            "alice (@alice:group.test): lunch at noon?",
            "alice (@alice:group.test): helper, what did I just ask?"
        ],
        "the earlier message went along as context"
    );

    stack.alice.send_text(&group, "scribe, note that down").await.unwrap();
    eventually("the scribe's answer", PATIENCE, || async {
        (!stack.shown(&group, &scribe.ghost).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        contents(&scribe.id),
        [
            "alice (@alice:group.test): lunch at noon?",
            "alice (@alice:group.test): helper, what did I just ask?",
            "alice (@alice:group.test): scribe, note that down"
        ],
        "the scribe follows the whole conversation, the message the helper answered included"
    );
    assert_eq!(contents(&helper.id).len(), 2, "the helper was not addressed again");
    stack.stop().await;
}

#[tokio::test]
async fn a_kill_mid_stream_and_a_restart_yield_exactly_one_complete_answer() {
    let mut stack = stack("crash.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let answer = "This answer is long enough to be cut in the middle by a crash.";
    stack.letta.script_reply(&agent.id, answer);
    stack.letta.set_chunk_chars(4);
    stack
        .letta
        .set_latency(&agent.id, Duration::ZERO, Duration::from_millis(250));
    stack
        .alice
        .send_text(&stack.agents[0].room, "tell me something")
        .await
        .unwrap();
    let partial = eventually("the answer starting to show", PATIENCE, || async {
        let shown = stack.shown(&stack.agents[0].room, &stack.agents[0].ghost).await;
        shown.first().filter(|s| !s.body.is_empty()).cloned()
    })
    .await;
    assert_ne!(partial.body, answer, "the crash comes mid-stream");
    stack.served.take().unwrap().kill().await;
    stack.served = Some(stack.install.serve().await.unwrap());
    let agent = &stack.agents[0];
    let shown = stack.wait_for_answers(agent, 1, |s| s[0].body == answer).await;
    assert_eq!(shown.len(), 1, "one answer, completed by an edit: {shown:?}");
    assert_eq!(shown[0].event_id, partial.event_id);
    assert_eq!(
        stack.letta.turn_requests(),
        1,
        "Letta was asked once; the answer was looked up"
    );
    assert_eq!(stack.letta.user_messages(&agent.id).len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn a_replayed_transaction_or_event_gets_no_second_answer() {
    let stack = stack("replay.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let asked = stack.alice.send_text(&agent.room, "only once").await.unwrap();
    stack.wait_for_answers(agent, 1, |_| true).await;
    let mut event = stack.alice.event(&agent.room, &asked).await.unwrap();
    event["room_id"] = json!(agent.room);
    let hs_token = stack.install.write_registration().await.hs_token;
    let http = reqwest::Client::new();
    for txn in ["replay-1", "replay-1", "replay-2"] {
        let response = http
            .put(format!(
                "{}/_matrix/app/v1/transactions/{txn}",
                stack.install.base_url()
            ))
            .bearer_auth(&hs_token)
            .json(&json!({"events": [event]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.shown(&agent.room, &agent.ghost).await.len(), 1);
    assert_eq!(stack.letta.turn_requests(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn after_synapse_restarts_its_transaction_numbering_messages_are_still_answered() {
    let mut stack = stack("renumber.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    stack.alice.send_text(&agent.room, "before the restart").await.unwrap();
    stack.wait_for_answers(agent, 1, |_| true).await;
    // Synapse on SQLite numbers appservice transactions from its emptied table: 1, 2, 3… again.
    stack.synapse.restart_when_delivered().await.unwrap();
    stack.alice.send_text(&agent.room, "after the restart").await.unwrap();
    let shown = stack
        .wait_for_answers(agent, 2, |s| s[1].body.ends_with("after the restart"))
        .await;
    assert_eq!(shown.len(), 2, "{shown:?}");
    let log = stack.served.as_ref().unwrap().log();
    assert!(
        log.contains("transaction id seen before with other events"),
        "the restart reused transaction ids, as it does in production:\n{log}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn letta_failing_then_recovering_gets_a_notice_then_one_answer() {
    let stack = stack(
        "outage.test",
        &["Helper"],
        &[("LETTA_MATRIX_RELAY_NOTICE_AFTER_MS", "1000")],
    )
    .await;
    let agent = &stack.agents[0];
    stack.letta.set_failing(Some(500));
    stack.alice.send_text(&agent.room, "are you there?").await.unwrap();
    let notice = stack.wait_for_answers(agent, 1, |_| true).await;
    assert_eq!(notice[0].msgtype, "m.notice");
    assert!(notice[0].body.contains("queued"), "{}", notice[0].body);
    stack.letta.set_failing(None);
    let shown = stack
        .wait_for_answers(agent, 2, |s| s.iter().any(|m| m.msgtype == "m.text"))
        .await;
    assert_eq!(texts(&shown), ["You said: alice (@alice:outage.test): are you there?"]);
    assert_eq!(
        stack.letta.user_messages(&agent.id).len(),
        1,
        "asked once after the outage"
    );
    stack.stop().await;
}

#[tokio::test]
async fn images_are_described_and_threads_are_answered_in_thread() {
    let stack = stack("content.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    stack
        .alice
        .send(
            &agent.room,
            json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://content.test/abc", "info": {"mimetype": "image/png", "size": 2048}}),
        )
        .await
        .unwrap();
    stack
        .wait_for_answers(agent, 1, |s| s[0].body.contains("cat.png"))
        .await;
    let told = stack.letta.user_messages(&agent.id);
    assert_eq!(
        told[0]["content"],
        "alice (@alice:content.test): [alice sent an image: cat.png (mxc://content.test/abc, image/png, 2048 bytes)]"
    );

    let root = stack.alice.send_text(&agent.room, "a topic").await.unwrap();
    stack
        .wait_for_answers(agent, 2, |s| s[1].body.ends_with("a topic"))
        .await;
    say_in_thread(&stack, &agent.room, &root, "in the thread").await;
    let shown = stack
        .wait_for_answers(agent, 3, |s| s[2].body.ends_with("in the thread"))
        .await;
    assert_eq!(shown[2].content["m.relates_to"]["rel_type"], "m.thread");
    assert_eq!(shown[2].content["m.relates_to"]["event_id"], root.as_str());
    stack.stop().await;
}

#[tokio::test]
async fn a_busy_agent_is_waited_for_without_bothering_anyone() {
    let stack = stack(
        "busy.test",
        &["Helper"],
        &[("LETTA_MATRIX_RELAY_NOTICE_AFTER_MS", "500")],
    )
    .await;
    let agent = &stack.agents[0];
    stack.letta.set_failing(Some(409));
    stack
        .alice
        .send_text(&agent.room, "when you have a moment")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stack.shown(&agent.room, &agent.ghost).await.is_empty(),
        "no notice for a busy agent"
    );
    stack.letta.set_failing(None);
    let shown = stack.wait_for_answers(agent, 1, |_| true).await;
    assert_eq!(
        texts(&shown),
        ["You said: alice (@alice:busy.test): when you have a moment"]
    );
    assert_eq!(shown.len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn reasoning_shows_as_a_collapsed_notice_only_where_the_room_asks_for_it() {
    let stack = stack("reasoning.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let answered = |text: &'static str| {
        let stack = &stack;
        async move {
            eventually("the answer", PATIENCE, || async {
                let shown = stack.shown(&agent.room, &agent.ghost).await;
                shown.iter().any(|s| s.body == text).then_some(shown)
            })
            .await
        }
    };
    stack.letta.script_reasoning(&agent.id, "The person greets me.");
    stack.letta.script_reply(&agent.id, "Hello!");
    stack.alice.send_text(&agent.room, "hi").await.unwrap();
    let shown = answered("Hello!").await;
    assert!(
        shown.iter().all(|s| s.msgtype != "m.notice"),
        "reasoning is hidden by default: {shown:?}"
    );

    stack
        .alice
        .put_state(
            &agent.room,
            "org.lettamatrix.settings",
            "",
            json!({"show_reasoning": true}),
        )
        .await
        .unwrap();
    stack.letta.script_reasoning(&agent.id, "They ask about <the> weather.");
    stack.letta.script_reply(&agent.id, "Sunny.");
    stack.alice.send_text(&agent.room, "weather?").await.unwrap();
    let shown = answered("Sunny.").await;
    let notices: Vec<&Shown> = shown.iter().filter(|s| s.msgtype == "m.notice").collect();
    assert_eq!(notices.len(), 1, "{shown:?}");
    assert_eq!(
        notices[0].formatted.as_deref(),
        Some(
            "<details><summary>Reasoning</summary><pre><code>They ask about &lt;the&gt; weather.</code></pre></details>"
        )
    );
    let position = |event_id: &str| shown.iter().position(|s| s.event_id == event_id).unwrap();
    let answer = shown.iter().find(|s| s.body == "Sunny.").unwrap();
    assert!(
        position(&notices[0].event_id) < position(&answer.event_id),
        "the reasoning comes before the answer it led to"
    );

    // In a thread, the reasoning stays in the thread with the answer.
    let root = stack.alice.send_text(&agent.room, "a topic").await.unwrap();
    answered("You said: alice (@alice:reasoning.test): a topic").await;
    stack.letta.script_reasoning(&agent.id, "A question in a thread.");
    stack.letta.script_reply(&agent.id, "Threaded.");
    say_in_thread(&stack, &agent.room, &root, "in the thread").await;
    let shown = answered("Threaded.").await;
    let threaded: Vec<&Shown> = shown
        .iter()
        .filter(|s| s.content["m.relates_to"]["rel_type"] == "m.thread")
        .collect();
    assert_eq!(threaded.len(), 2, "{shown:?}");
    assert_eq!(threaded[0].msgtype, "m.notice");
    assert!(threaded[0].body.contains("A question in a thread."));
    assert_eq!(threaded[1].body, "Threaded.");
    for message in threaded {
        assert_eq!(message.content["m.relates_to"]["event_id"], root.as_str());
    }
    stack.stop().await;
}

#[tokio::test]
async fn an_answer_too_long_for_one_event_continues_in_further_messages() {
    let stack = stack("long.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let paragraphs: Vec<String> = (0..30)
        .map(|n| {
            format!(
                "**Paragraph {n}:** {}",
                "a rather long sentence to fill the page. ".repeat(20).trim()
            )
        })
        .collect();
    let answer = paragraphs.join("\n\n");
    // With its HTML, an edit of the whole answer would be over 100 KB: far past 64 KB.
    assert!(answer.len() > 25_000);
    stack.letta.script_reply(&agent.id, &answer);
    stack.letta.set_chunk_chars(700);
    // Streamed slowly enough to be shown growing, by edits that each carry the text so far.
    stack
        .letta
        .set_latency(&agent.id, Duration::ZERO, Duration::from_millis(20));
    stack.alice.send_text(&agent.room, "tell me everything").await.unwrap();
    let shown = stack
        .wait_for_answers(agent, 1, |shown| {
            shown
                .last()
                .is_some_and(|s| s.body.ends_with(paragraphs.last().unwrap().as_str()))
        })
        .await;
    assert!(shown.len() >= 4, "{} messages", shown.len());
    let bodies: Vec<&str> = shown.iter().map(|s| s.body.as_str()).collect();
    assert_eq!(bodies.join("\n\n"), answer, "every word, in order, once");
    assert!(
        bodies.iter().all(|body| body.starts_with("**Paragraph ")),
        "cut between paragraphs"
    );
    stack.stop().await;
}
