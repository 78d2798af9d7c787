//! The relay under faults, end to end on a real Synapse with the Letta stand-in: a crash between
//! posting an answer and recording it, a homeserver outage, a failing Letta, a failing turn's log
//! lines, and strangers inviting the agents.

mod support;

use std::time::Duration;

use letta_matrix::config::Secret;
use letta_matrix::matrix::MatrixClient;
use ruma::events::room::message::RoomMessageEventContent;
use serde_json::json;
use sqlx::Connection;
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

fn notices(shown: &[Shown]) -> Vec<&str> {
    shown
        .iter()
        .filter(|s| s.msgtype == "m.notice")
        .map(|s| s.body.as_str())
        .collect()
}

/// The log as text, without the terminal's colour codes.
fn without_colours(log: &str) -> String {
    let mut text = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            text.push(c);
        }
    }
    text
}

/// The appservice's own client, as the service builds it.
async fn appservice_client(stack: &Stack) -> MatrixClient {
    let registration = stack.install.write_registration().await;
    let homeserver = url::Url::parse(&stack.synapse.base_url()).unwrap();
    MatrixClient::new(&homeserver, Secret::new(registration.as_token))
}

#[tokio::test]
async fn a_redone_turn_completes_an_answer_whose_first_post_was_never_recorded() {
    let mut stack = stack("redone.test", &["Helper"], &[]).await;
    let agent = &stack.agents[0];
    let answer = "The whole answer, which a crash must not leave cut short.";
    stack.letta.script_reply(&agent.id, answer);
    // Letta thinks long enough for the crash to come before this try posts anything itself.
    stack
        .letta
        .set_latency(&agent.id, Duration::from_secs(20), Duration::ZERO);
    let asked = stack.alice.send_text(&agent.room, "tell me").await.unwrap();
    eventually("the turn to be asked", PATIENCE, || async {
        (stack.letta.user_messages(&agent.id).len() == 1).then_some(())
    })
    .await;
    // What the crash leaves: the first post of the answer reached the homeserver with the turn's
    // txn id, and the process died before recording it.
    let txn = format!("{}-p0", letta_matrix::relay::txn_base(&asked, &agent.id));
    let ghost = ruma::OwnedUserId::try_from(agent.ghost.as_str()).unwrap();
    let room = ruma::OwnedRoomId::try_from(agent.room.as_str()).unwrap();
    let partial = appservice_client(&stack)
        .await
        .send_message(
            &room,
            txn.into(),
            &RoomMessageEventContent::text_plain("The whole answer"),
            Some(&ghost),
        )
        .await
        .unwrap();
    stack.served.take().unwrap().kill().await;
    stack.served = Some(stack.install.serve().await.unwrap());

    let agent = &stack.agents[0];
    let shown = stack.wait_for_answers(agent, 1, |s| s[0].body == answer).await;
    assert_eq!(shown.len(), 1, "the earlier post, completed by an edit: {shown:?}");
    assert_eq!(shown[0].event_id, partial.as_str());
    assert_eq!(
        stack.letta.turn_requests(),
        1,
        "the answer was looked up, not asked again"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_homeserver_down_for_a_minute_mid_answers_loses_and_doubles_nothing() {
    let names = ["Ada", "Ben", "Cy", "Dee"];
    let mut stack = stack("hsdown.test", &names, &[]).await;
    stack.letta.set_chunk_chars(4);
    let answer = |name: &str| format!("{name} answers at length, so that the outage cuts this answer short.");
    for (n, agent) in stack.agents.iter().enumerate() {
        stack.letta.script_reply(&agent.id, &answer(names[n]));
        // Two answers are showing when the homeserver goes, two are still being thought about.
        let first_token = if n < 2 { Duration::ZERO } else { Duration::from_secs(8) };
        stack
            .letta
            .set_latency(&agent.id, first_token, Duration::from_millis(300));
    }
    for agent in &stack.agents {
        stack.alice.send_text(&agent.room, "talk to me").await.unwrap();
    }
    for agent in &stack.agents[..2] {
        eventually("an answer starting to show", PATIENCE, || async {
            let shown = stack.shown(&agent.room, &agent.ghost).await;
            shown.first().filter(|s| !s.body.is_empty()).cloned()
        })
        .await;
    }
    eventually("every agent asked", PATIENCE, || async {
        (stack.letta.turn_requests() == names.len()).then_some(())
    })
    .await;
    stack.synapse.stop().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    stack.synapse.start_again().await.unwrap();

    for (n, agent) in stack.agents.iter().enumerate() {
        let expected = answer(names[n]);
        let shown = eventually("the complete answer", 2 * PATIENCE, || async {
            let shown = stack.shown(&agent.room, &agent.ghost).await;
            shown.iter().any(|s| s.body == expected).then_some(shown)
        })
        .await;
        assert_eq!(texts(&shown), [expected.as_str()], "once, in full: {shown:?}");
        assert!(notices(&shown).is_empty(), "{shown:?}");
        assert_eq!(stack.letta.user_messages(&agent.id).len(), 1);
    }
    assert_eq!(
        stack.letta.turn_requests(),
        names.len(),
        "Letta was asked once per message"
    );
    let log = stack.served.as_ref().unwrap().log();
    assert!(!log.contains("cannot relay an event"), "no row given up");
    stack.stop().await;
}

#[tokio::test]
async fn every_room_kept_waiting_by_a_failing_letta_is_told_once() {
    let names = ["A1", "A2", "A3", "A4", "A5", "A6"];
    let stack = stack(
        "queued.test",
        &names,
        &[("LETTA_MATRIX_RELAY_NOTICE_AFTER_MS", "28000")],
    )
    .await;
    stack.letta.set_failing(Some(500));
    for agent in &stack.agents {
        stack.alice.send_text(&agent.room, "are you there?").await.unwrap();
    }
    // The outage: thirty seconds, just past the notice delay, so that no retry need fail in
    // between (retries of a fate lookup come 8 to 11 s apart).
    tokio::time::sleep(Duration::from_secs(30)).await;
    stack.letta.set_failing(None);
    for agent in &stack.agents {
        let shown = stack
            .wait_for_answers(agent, 2, |s| s.iter().any(|m| m.msgtype == "m.text"))
            .await;
        let told = notices(&shown);
        assert_eq!(told.len(), 1, "one notice in {}: {shown:?}", agent.room);
        assert!(told[0].contains("queued"), "{}", told[0]);
        assert_eq!(shown[0].msgtype, "m.notice", "the notice comes before the answer");
        assert_eq!(texts(&shown), ["You said: alice (@alice:queued.test): are you there?"]);
        assert_eq!(stack.letta.user_messages(&agent.id).len(), 1, "asked once");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_turns_log_lines_name_its_own_room_and_event_and_a_failed_turn_warns() {
    let stack = stack("logs.test", &["Left", "Right"], &[]).await;
    // Both turns retry at once, interleaving their log lines.
    stack.letta.set_failing(Some(500));
    let mut asked = Vec::new();
    for agent in &stack.agents {
        asked.push(stack.alice.send_text(&agent.room, "hello").await.unwrap());
    }
    let served = stack.served.as_ref().unwrap();
    eventually("both turns retrying", PATIENCE, || async {
        let log = served.log();
        stack
            .agents
            .iter()
            .all(|agent| {
                log.lines()
                    .any(|l| l.contains("Letta turn failed") && l.contains(&agent.id))
            })
            .then_some(())
    })
    .await;
    stack.letta.set_failing(None);
    for agent in &stack.agents {
        stack
            .wait_for_answers(agent, 1, |s| s.iter().any(|m| m.msgtype == "m.text"))
            .await;
    }
    // A refusal fails the turn.
    stack.letta.set_failing(Some(400));
    let refused = stack.alice.send_text(&stack.agents[0].room, "again").await.unwrap();
    stack
        .wait_for_answers(&stack.agents[0], 2, |s| s.iter().any(|m| m.body.contains("refused")))
        .await;
    stack.letta.set_failing(None);

    let log = without_colours(&served.log());
    let turn_lines: Vec<&str> = log.lines().filter(|l| l.contains(" relay:turn: ")).collect();
    assert!(!turn_lines.is_empty(), "{log}");
    for line in &turn_lines {
        assert_eq!(line.matches(" relay:").count(), 1, "one row's span: {line}");
        assert_eq!(line.matches("event_id=").count(), 1, "one row's span: {line}");
        for (agent, event) in stack.agents.iter().zip(&asked) {
            if line.contains(&agent.id) && !line.contains(refused.as_str()) {
                assert!(line.contains(event.as_str()), "the turn's own event: {line}");
                assert!(line.contains(&agent.room), "the turn's own room: {line}");
            }
        }
    }
    let failed: Vec<&str> = turn_lines
        .iter()
        .copied()
        .filter(|l| l.contains("the turn failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    for part in [
        "WARN",
        refused.as_str(),
        stack.agents[0].room.as_str(),
        stack.agents[0].id.as_str(),
        "400",
    ] {
        assert!(failed[0].contains(part), "{part} in {}", failed[0]);
    }
    stack.stop().await;
}

#[tokio::test]
async fn invites_and_settings_from_people_allow_does_not_admit_are_declined_and_ignored() {
    let stack = stack(
        "strangers.test",
        &["Helper"],
        &[
            ("LETTA_MATRIX_ALLOW", "@alice:*"),
            ("LETTA_MATRIX_INVITE", "@alice:strangers.test"),
        ],
    )
    .await;
    let agent = &stack.agents[0];
    let bot = "@letta_bot:strangers.test";
    let mallory = stack
        .synapse
        .register_user("mallory", "mallory-password")
        .await
        .unwrap();
    let dm = mallory
        .create_room(json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [agent.ghost, bot]}))
        .await
        .unwrap();
    for invited in [agent.ghost.as_str(), bot] {
        eventually("the invite declined", PATIENCE, || async {
            let member = mallory.state(&dm, "m.room.member", invited).await.unwrap()?;
            (member["membership"] == "leave").then_some(())
        })
        .await;
    }
    let mut db = sqlx::SqliteConnection::connect(&stack.install.database_url())
        .await
        .unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agent_rooms WHERE room_id = ?")
        .bind(&dm)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "no DM recorded");
    let log = stack.served.as_ref().unwrap().log();
    assert_eq!(log.matches("declined an invite").count(), 2, "one line per invite");

    // In a room of alice's where mallory may change state, her settings count for nothing.
    let group = stack
        .alice
        .create_room(json!({
            "name": "shared", "invite": [agent.ghost, mallory.user_id],
            "power_level_content_override": {"state_default": 0},
        }))
        .await
        .unwrap();
    mallory.join(&group).await.unwrap();
    eventually("the ghost joining", PATIENCE, || async {
        stack
            .alice
            .joined_members(&group)
            .await
            .unwrap()
            .contains(&agent.ghost)
            .then_some(())
    })
    .await;
    mallory
        .put_state(&group, "org.lettamatrix.settings", "", json!({"show_reasoning": true}))
        .await
        .unwrap();
    stack.letta.script_reasoning(&agent.id, "Thinking aloud.");
    stack.letta.script_reply(&agent.id, "First.");
    stack.alice.send_text(&group, "helper, one").await.unwrap();
    let shown = eventually("the answer", PATIENCE, || async {
        let shown = stack.shown(&group, &agent.ghost).await;
        shown.iter().any(|s| s.body == "First.").then_some(shown)
    })
    .await;
    assert!(notices(&shown).is_empty(), "mallory's setting was ignored: {shown:?}");
    // The same setting from alice counts: the test can tell.
    stack
        .alice
        .put_state(&group, "org.lettamatrix.settings", "", json!({"show_reasoning": true}))
        .await
        .unwrap();
    stack.letta.script_reasoning(&agent.id, "Thinking aloud.");
    stack.letta.script_reply(&agent.id, "Second.");
    stack.alice.send_text(&group, "helper, two").await.unwrap();
    let shown = eventually("the answer", PATIENCE, || async {
        let shown = stack.shown(&group, &agent.ghost).await;
        shown.iter().any(|s| s.body == "Second.").then_some(shown)
    })
    .await;
    assert_eq!(notices(&shown).len(), 1, "{shown:?}");
    stack.stop().await;
}
