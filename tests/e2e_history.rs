//! History import on a real Synapse: an agent's past Letta conversation appears in its new room
//! in order, at its original times, exactly once, even across a `kill -9`.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::stack::{Stack, stack_prepared};
use support::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(90);

fn date(n: usize) -> String {
    format!(
        "2025-03-{:02}T{:02}:{:02}:00+00:00",
        1 + n / 600,
        (n / 60) % 10 + 8,
        n % 60
    )
}

fn ms(date: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(date).unwrap().timestamp_millis()
}

/// A conversation of `count` messages, alternating person and agent.
fn conversation(count: usize) -> Vec<(&'static str, String, String)> {
    (0..count)
        .map(|n| {
            let role = if n % 2 == 0 { "user" } else { "assistant" };
            (role, format!("message {n}"), date(n))
        })
        .collect()
}

/// A stack whose one agent, `name`, has `history` (role, text, date) in Letta before `serve` starts.
async fn stack_with_history(
    server: &str,
    name: &str,
    settings: &[(&str, &str)],
    history: &[(&str, String, String)],
) -> Stack {
    stack_prepared(server, &[name], settings, |letta, ids| {
        for (role, text, date) in history {
            letta.add_history(&ids[0], role, text, date);
        }
    })
    .await
}

/// The imported events alice sees in the agent's room, oldest first.
async fn imported(stack: &Stack) -> Vec<Value> {
    let room = &stack.agents[0].room;
    let mut events: Vec<Value> = stack
        .alice
        .messages(room, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e["content"]["org.lettamatrix.imported"].is_null())
        .collect();
    events.reverse();
    events
}

fn body_text(event: &Value) -> String {
    let body = event["content"]["body"].as_str().unwrap();
    body.strip_prefix("**user:** ").unwrap_or(body).to_owned()
}

#[tokio::test]
async fn the_latest_history_appears_in_order_at_its_original_times() {
    let history = conversation(8);
    // Reasoning stays out unless `history_include_reasoning`, and does not count against the limit.
    let thought = ("reasoning", "a private thought".to_owned(), date(8));
    let with_thought: Vec<_> = history.iter().cloned().chain([thought]).collect();
    let stack = stack_with_history(
        "history.test",
        "Veteran",
        &[("LETTA_MATRIX_HISTORY_IMPORT_LIMIT", "6")],
        &with_thought,
    )
    .await;
    let agent = &stack.agents[0];
    let events = eventually("the history imported", PATIENCE, || async {
        let events = imported(&stack).await;
        (events.len() >= 6).then_some(events)
    })
    .await;
    let expected: Vec<&(&str, String, String)> = history.iter().skip(2).collect();
    assert_eq!(events.len(), 6, "bounded by history_import_limit");
    for (event, (role, text, date)) in events.iter().zip(expected) {
        assert_eq!(body_text(event), *text);
        assert_eq!(
            event["origin_server_ts"].as_i64(),
            Some(ms(date)),
            "{text} keeps its time"
        );
        let sender = if *role == "user" {
            "@letta_bot:history.test".to_owned()
        } else {
            agent.ghost.clone()
        };
        assert_eq!(event["sender"], sender.as_str(), "{text}");
    }
    assert_eq!(events[0]["content"]["body"], "**user:** message 2");
    assert_eq!(stack.letta.turn_requests(), 0, "nothing imported went back to Letta");

    // A live exchange, then the import asked for again (the admin endpoint, the CLI): neither the
    // history nor what the relay posted live is posted twice.
    stack.alice.send_text(&agent.room, "a live question").await.unwrap();
    stack
        .wait_for_answers(agent, 4, |shown| {
            shown.iter().any(|s| s.body.ends_with("a live question"))
        })
        .await;
    let http = reqwest::Client::new();
    let url = |agent_id: &str| format!("{}/admin/agents/{agent_id}/import-history", stack.install.base_url());
    let queued = http
        .post(url(&agent.id))
        .bearer_auth(support::service::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let unknown = http
        .post(url("agent-nobody"))
        .bearer_auth(support::service::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["errcode"], "M_NOT_FOUND");
    let anonymous = http.post(url(&agent.id)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let (code, stdout, stderr) = stack.install.run(&["import-history", &agent.id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("is in its room"), "{stdout}");
    let (code, _, stderr) = stack.install.run(&["import-history", "agent-nobody"]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("no agent agent-nobody"), "{stderr}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(imported(&stack).await.len(), 6, "a second import adds nothing");
    let live = stack.shown(&agent.room, &agent.ghost).await;
    assert_eq!(
        live.iter().filter(|s| s.body.ends_with("a live question")).count(),
        1,
        "the live answer stays the relay's alone"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_kill_during_import_leaves_every_message_exactly_once() {
    let history = conversation(150);
    let mut stack = stack_with_history("resume.test", "Talkative", &[], &history).await;
    let partial = eventually("the import under way", PATIENCE, || async {
        let count = imported(&stack).await.len();
        (count >= 5).then_some(count)
    })
    .await;
    assert!(partial < 150, "the kill comes mid-import ({partial} of 150)");
    stack.served.take().unwrap().kill().await;
    stack.served = Some(stack.install.serve().await.unwrap());
    eventually("the whole history", PATIENCE, || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (imported(&stack).await.len() >= 150).then_some(())
    })
    .await;
    // Anything posted twice would show up by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = imported(&stack).await;
    let texts: Vec<String> = events.iter().map(body_text).collect();
    let expected: Vec<String> = history.iter().map(|(_, text, _)| text.clone()).collect();
    assert_eq!(texts, expected, "every message once, in order");
    assert_eq!(texts.iter().collect::<HashSet<_>>().len(), 150);
    stack.stop().await;
}

#[tokio::test]
async fn reasoning_is_imported_as_a_notice_when_asked_for() {
    let history = [
        ("user", "hi".to_owned(), date(0)),
        ("reasoning", "a greeting deserves one back".to_owned(), date(1)),
        ("assistant", "hello".to_owned(), date(2)),
    ];
    let stack = stack_with_history(
        "thinking.test",
        "Thinker",
        &[("LETTA_MATRIX_HISTORY_INCLUDE_REASONING", "true")],
        &history,
    )
    .await;
    let agent = &stack.agents[0];
    let events = eventually("the history imported", PATIENCE, || async {
        let events = imported(&stack).await;
        (events.len() >= 3).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 3);
    let reasoning = &events[1];
    assert_eq!(reasoning["sender"], agent.ghost.as_str());
    assert_eq!(reasoning["content"]["msgtype"], "m.notice");
    assert!(
        reasoning["content"]["body"]
            .as_str()
            .unwrap()
            .ends_with("a greeting deserves one back"),
        "{reasoning}"
    );
    assert_eq!(reasoning["origin_server_ts"].as_i64(), Some(ms(&date(1))));
    assert_eq!(body_text(&events[2]), "hello");
    stack.stop().await;
}

#[tokio::test]
async fn a_message_too_long_for_one_event_is_imported_in_several_at_its_time() {
    let long: String = (0..45)
        .map(|n| {
            format!(
                "**Part {n}:** {}",
                "words that make a long message longer. ".repeat(20).trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    // Its text and HTML together are over the 64 KiB a homeserver takes in one event.
    assert!(long.len() > 33_000);
    let history = [
        ("user", "write me an essay".to_owned(), date(0)),
        ("assistant", long.clone(), date(1)),
    ];
    let stack = stack_with_history("long-history.test", "Essayist", &[], &history).await;
    let agent = &stack.agents[0];
    let events = eventually("the history imported", PATIENCE, || async {
        let events = imported(&stack).await;
        let last = events.last()?["content"]["body"].as_str()?.to_owned();
        last.ends_with(long.rsplit("\n\n").next().unwrap()).then_some(events)
    })
    .await;
    let essay = &events[1..];
    assert!(essay.len() >= 3, "{} events", essay.len());
    let bodies: Vec<&str> = essay.iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(bodies.join("\n\n"), long);
    for event in essay {
        assert_eq!(event["sender"], agent.ghost.as_str());
        assert_eq!(event["origin_server_ts"].as_i64(), Some(ms(&date(1))));
    }
    stack.stop().await;
}
