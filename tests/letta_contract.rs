//! The Letta API as this bridge depends on it, written once and run against both servers: the
//! real Letta 0.16.8 (`scripts/test` runs it; its model is the model stand-in) and our stand-in.
//! Where they disagree, the stand-in is wrong.

mod support;

use futures::StreamExt;
use std::collections::BTreeMap;

use letta_matrix::letta::{
    Conversation, LettaError, McpServerConfig, MessageCreate, StopReason, StreamEvent, find_turn,
};
use model_standin::Step;
use serde_json::{Value, json};
use support::letta_server::LettaServer;

fn unique(prefix: &str) -> String {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).unwrap();
    format!("{prefix}-{}", hex::encode(random))
}

fn said(text: &str, otid: &str) -> MessageCreate {
    MessageCreate::user(
        format!("Alice (@alice:contract.test): {text}"),
        Some("Alice".into()),
        otid.into(),
    )
}

/// Every event of a turn, failing the test on a stream error.
async fn turn(letta: &LettaServer, agent: &str, inputs: &[MessageCreate]) -> Vec<StreamEvent> {
    let stream = letta.client().stream_turn(agent, inputs).await.unwrap();
    stream.map(|event| event.unwrap()).collect().await
}

fn answer_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Assistant { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

fn stop_of(events: &[StreamEvent]) -> Option<StopReason> {
    events.iter().rev().find_map(|e| match e {
        StreamEvent::Stop(reason) => Some(reason.clone()),
        _ => None,
    })
}

async fn agents_are_listed_oldest_first_across_pages(letta: &LettaServer) {
    let prefix = unique("listed");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(letta.create_agent(&format!("{prefix}-{n}")).await);
    }
    // By our tag: a shared server's other tests delete agents meanwhile, and a deleted cursor
    // restarts Letta's listing.
    let listed = tagged_client(letta)
        .with_agents_page_size(2)
        .list_agents()
        .await
        .unwrap();
    let ours: Vec<&str> = listed
        .iter()
        .filter(|a| ids.contains(&a.id))
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(ours, ids, "every agent, once, in creation order");
    let third = listed.iter().find(|a| a.id == ids[2]).unwrap();
    assert_eq!(third.name, format!("{prefix}-2"));
    assert_eq!(third.agent_type.as_deref(), Some("letta_v1_agent"));
    // Past the last agent: an empty page, not an error. (Our tag keeps other tests' agents,
    // created or deleted meanwhile on a shared server, out of the page.)
    let page = letta
        .call(
            reqwest::Method::GET,
            &format!(
                "/v1/agents/?limit=5&order=asc&order_by=created_at&tags={}&after={}",
                letta.tag, ids[4]
            ),
            None,
        )
        .await;
    assert_eq!(page, json!([]));
}

/// Our client as configured with `agent_tags` = this test's tag.
fn tagged_client(letta: &LettaServer) -> letta_matrix::letta::LettaClient {
    let env = [
        ("LETTA_MATRIX_SERVER_NAME".to_owned(), "contract.test".to_owned()),
        (
            "LETTA_MATRIX_HOMESERVER_URL".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ),
        ("LETTA_MATRIX_LETTA_URL".to_owned(), letta.url.clone()),
        (
            "LETTA_MATRIX_LETTA_TOKEN".to_owned(),
            letta.token.clone().unwrap_or_default(),
        ),
        ("LETTA_MATRIX_AGENT_TAGS".to_owned(), letta.tag.clone()),
    ];
    let settings = letta_matrix::config::Settings::from_parts("", None, &env).unwrap();
    letta_matrix::letta::LettaClient::from_settings(&settings)
}

/// `agent_tags`: only agents carrying one of the tags are listed.
async fn agents_are_listed_by_tag(letta: &LettaServer) {
    let tagged = letta.create_agent(&unique("tagged")).await;
    let other = letta
        .create_agent_with(&unique("untagged"), "letta_v1_agent", json!({"tags": ["someone-else"]}))
        .await;
    let listed = tagged_client(letta).list_agents().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [tagged.as_str()], "only this test's tagged agent");
    assert!(
        letta
            .client()
            .list_agents()
            .await
            .unwrap()
            .iter()
            .any(|a| a.id == other)
    );
}

async fn an_agent_is_created_renamed_and_deleted(letta: &LettaServer) {
    let client = letta.client();
    let name = unique("original");
    let id = letta.create_agent(&name).await;
    assert!(id.starts_with("agent-"), "{id}");
    assert_eq!(client.agent(&id).await.unwrap().name, name);
    letta.rename(&id, "Renamed").await;
    assert_eq!(client.agent(&id).await.unwrap().name, "Renamed");
    letta.delete(&id).await;
    assert!(matches!(client.agent(&id).await, Err(LettaError::NotFound { .. })));
    assert!(!client.list_agents().await.unwrap().iter().any(|a| a.id == id));
}

async fn a_streamed_turn_sends_a_ping_deltas_of_one_message_a_stop_and_done(letta: &LettaServer) {
    let id = letta.create_agent(&unique("streamer")).await;
    let answer = "Here is an answer that arrives in several small pieces.";
    letta.script(&id, [Step::reply(answer)]);
    let events = turn(letta, &id, &[said("hello", &unique("otid"))]).await;
    assert_eq!(events.first(), Some(&StreamEvent::Other), "a ping first: {events:?}");
    assert_eq!(answer_of(&events), answer);
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Assistant { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert!(ids.len() > 1, "token streaming sends pieces: {events:?}");
    assert!(
        ids.iter().all(|piece| *piece == ids[0]),
        "pieces of one message share its id"
    );
    assert_eq!(stop_of(&events), Some(StopReason::EndTurn));
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

async fn a_turn_is_found_again_by_its_otid(letta: &LettaServer) {
    let id = letta.create_agent(&unique("finder")).await;
    let otid = unique("otid");
    letta.script(&id, [Step::reply("Found me.")]);
    turn(letta, &id, &[said("where is my answer?", &otid)]).await;
    let messages = letta.client().recent_messages(&id, 100).await.unwrap();
    let (asked, answers) = find_turn(&messages, &otid).expect("the message is in the list by its otid");
    assert_eq!(asked.name.as_deref(), Some("Alice"));
    assert!(asked.text().ends_with("where is my answer?"), "{}", asked.text());
    let texts: Vec<String> = answers.iter().map(|a| a.text()).collect();
    assert_eq!(texts, ["Found me."]);
    assert!(find_turn(&messages, "never-sent").is_none());
}

/// 0.16.8's cursors: `after` is newer and `before` older whatever the order; a `desc` page holds
/// the newest rows, oldest first; an unknown cursor is 404. The importer's walk must find every
/// message of a history longer than a page.
async fn history_pages_both_ways_over_more_than_a_hundred_messages(letta: &LettaServer) {
    let id = letta.create_agent(&unique("historian")).await;
    let run = unique("h");
    let inputs: Vec<MessageCreate> = (0..130)
        .map(|n| said(&format!("message {n:03}"), &format!("{run}-{n}")))
        .collect();
    letta.script(&id, [Step::reply("That was a lot.")]);
    let events = turn(letta, &id, &inputs).await;
    assert_eq!(stop_of(&events), Some(StopReason::EndTurn));

    let client = letta.client();
    let people = client
        .history(&id, i64::MAX, 1000, |m| m.message_type == "user_message")
        .await
        .unwrap();
    let texts: Vec<String> = people
        .iter()
        .map(|m| m.text())
        .filter(|t| t.contains("message "))
        .collect();
    let expected: Vec<String> = (0..130)
        .map(|n| format!("Alice (@alice:contract.test): message {n:03}"))
        .collect();
    assert_eq!(texts, expected, "every message once, oldest first");
    let bounded = client
        .history(&id, i64::MAX, 10, |m| m.message_type == "user_message")
        .await
        .unwrap();
    assert_eq!(bounded.len(), 10);
    assert!(bounded[9].text().ends_with("message 129"), "the latest ten");

    let list = |query: String| {
        let path = format!("/v1/agents/{id}/messages?{query}");
        async move { letta.call(reqwest::Method::GET, &path, None).await }
    };
    let ids_of = |page: &Value| -> Vec<String> {
        page.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = ids_of(&list("limit=1000&order=asc".into()).await);
    let position = |message: &str| all.iter().position(|m| m == message).unwrap();
    let newest = ids_of(&list("limit=20&order=desc".into()).await);
    let mut positions: Vec<usize> = newest.iter().map(|m| position(m)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "a desc page comes oldest first"
    );
    assert_eq!(*positions.last().unwrap(), all.len() - 1, "and holds the newest");
    let older = ids_of(&list(format!("limit=20&order=desc&before={}", newest[0])).await);
    assert!(!older.is_empty());
    assert!(
        older.iter().all(|m| position(m) < positions[0]),
        "before = older, with desc"
    );
    let newer = ids_of(&list(format!("limit=20&order=desc&after={}", older[0])).await);
    assert!(
        newer.iter().all(|m| position(m) > position(&older[0])),
        "after = newer, with desc"
    );
    let forward = ids_of(&list(format!("limit=20&order=asc&after={}", all[5])).await);
    positions = forward.iter().map(|m| position(m)).collect();
    assert!(positions.iter().all(|p| *p > 5) && positions.windows(2).all(|w| w[0] <= w[1]));
    let unknown = letta
        .request(
            reqwest::Method::GET,
            &format!("/v1/agents/{id}/messages?after=message-00000000-0000-4000-8000-000000000000"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// The items Letta lists for one stored message (what the model said and the tool it called, or
/// reasoning and answer) share an `id` and differ by `otid`; a history keeps every one of them.
async fn one_steps_items_share_an_id_and_the_history_keeps_each(letta: &LettaServer) {
    let id = letta.create_agent(&unique("talker")).await;
    letta.script(
        &id,
        [
            Step::Said {
                text: "Let me look through what we said before.".into(),
                calls: vec![("conversation_search".into(), json!({"query": "weather"}))],
            },
            Step::reply("I found nothing about the weather."),
        ],
    );
    let events = turn(
        letta,
        &id,
        &[said("what did I say about the weather?", &unique("otid"))],
    )
    .await;
    assert!(stop_of(&events).is_some(), "{events:?}");
    let all = letta.client().history(&id, i64::MAX, 1000, |_| true).await.unwrap();
    let shared: Vec<&letta_matrix::letta::LettaMessage> = all
        .iter()
        .filter(|m| all.iter().filter(|other| other.id == m.id).count() > 1)
        .collect();
    assert!(shared.len() >= 2, "items sharing one id: {all:?}");
    let first = shared[0];
    let twins: Vec<_> = shared.iter().filter(|m| m.id == first.id).collect();
    assert!(
        twins
            .windows(2)
            .all(|w| w[0].message_type != w[1].message_type && w[0].otid != w[1].otid),
        "one id, several kinds, distinct otids: {twins:?}"
    );
    let keys: std::collections::HashSet<String> = twins.iter().map(|m| m.key().into_owned()).collect();
    assert_eq!(keys.len(), twins.len(), "each item keeps its own key");
}

async fn two_turns_of_one_agent_at_once_are_both_answered(letta: &LettaServer) {
    let id = letta.create_agent(&unique("twin")).await;
    let (a, b) = (unique("otid"), unique("otid"));
    let (one, two) = ([said("first", &a)], [said("second", &b)]);
    let (first, second) = tokio::join!(turn(letta, &id, &one), turn(letta, &id, &two));
    for events in [&first, &second] {
        assert_eq!(
            stop_of(events),
            Some(StopReason::EndTurn),
            "no busy refusal: {events:?}"
        );
        assert!(!answer_of(events).is_empty());
    }
    let messages = letta.client().recent_messages(&id, 100).await.unwrap();
    assert!(find_turn(&messages, &a).is_some() && find_turn(&messages, &b).is_some());
}

async fn an_unknown_agent_and_a_bad_token_are_told_apart(letta: &LettaServer) {
    let missing = "agent-00000000-0000-4000-8000-000000000000";
    let client = letta.client();
    assert!(matches!(client.agent(missing).await, Err(LettaError::NotFound { .. })));
    assert!(matches!(
        client.stream_turn(missing, &[said("hi", "o")]).await.err(),
        Some(LettaError::NotFound { .. })
    ));
    let wrong = letta_matrix::letta::LettaClient::new(
        letta.url.parse().unwrap(),
        Some(letta_matrix::config::Secret::new("not-the-password")),
    );
    assert!(wrong.health().await.is_ok(), "health needs no token");
    match wrong.verify_token().await {
        Err(LettaError::Unauthorized { status: 401 }) => {}
        other => panic!("a wrong token must be refused with 401, got {other:?}"),
    }
}

/// A tool that needs approval stops the turn with a request naming the call; until it is
/// decided, a new message is refused inside the stream; a denial lets the agent go on.
async fn a_tool_call_waits_for_approval_until_denied(letta: &LettaServer) {
    let id = letta.create_agent(&unique("careful")).await;
    let tool = letta.attach_approval_tool(&id).await;
    letta.script(&id, [Step::tool_call(&tool, json!({"target": "the database"}))]);
    let events = turn(letta, &id, &[said("please do it", &unique("otid"))]).await;
    assert_eq!(stop_of(&events), Some(StopReason::RequiresApproval), "{events:?}");
    let requested: Vec<(&Option<String>, &Vec<String>)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ApprovalRequest {
                name, tool_call_ids, ..
            } => Some((name, tool_call_ids)),
            _ => None,
        })
        .collect();
    assert!(
        requested.iter().any(|(name, _)| name.as_deref() == Some(tool.as_str())),
        "{events:?}"
    );
    let call = requested
        .iter()
        .find_map(|(_, ids)| ids.first())
        .expect("a tool_call_id")
        .clone();

    let client = letta.client();
    assert_eq!(
        client.pending_approvals(&id).await.unwrap(),
        std::slice::from_ref(&call)
    );
    let refused = turn(letta, &id, &[said("hello again", &unique("otid"))]).await;
    let error = refused
        .iter()
        .find_map(|e| match e {
            StreamEvent::Error(text) => Some(text.clone()),
            _ => None,
        })
        .expect("a message while an approval is pending is refused in the stream");
    assert!(
        matches!(
            LettaError::from_stream_error(&error),
            Some(LettaError::Busy {
                kind: letta_matrix::letta::BusyKind::PendingApproval,
                ..
            })
        ),
        "{error}"
    );

    letta.script(&id, [Step::reply("Understood, I will not do it.")]);
    let denial = [letta_matrix::letta::ApprovalDecision::deny(call, "not today")];
    let events: Vec<StreamEvent> = client
        .stream_decisions(&id, &denial)
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(stop_of(&events), Some(StopReason::EndTurn), "{events:?}");
    assert_eq!(answer_of(&events), "Understood, I will not do it.");
    assert!(client.pending_approvals(&id).await.unwrap().is_empty());
    if letta.is_real() {
        assert!(
            letta.seen_text(&id).contains("not today"),
            "the reason reached the model"
        );
    }
}

/// A model failing mid-turn: a stop reason, then `event: error` with a readable message.
async fn a_failing_model_ends_the_stream_with_an_error_event(letta: &LettaServer) {
    let id = letta.create_agent(&unique("fragile")).await;
    letta.script(&id, [Step::Fail(500)]);
    let events = turn(letta, &id, &[said("are you there?", &unique("otid"))]).await;
    assert_eq!(stop_of(&events), Some(StopReason::LlmApiError), "{events:?}");
    let error = events.iter().find_map(|e| match e {
        StreamEvent::Error(text) => Some(text.clone()),
        _ => None,
    });
    assert!(error.is_some_and(|text| !text.is_empty()), "{events:?}");
}

/// What tool provisioning relies on: a tool upserted by name keeps its id and takes the new code;
/// attaching twice attaches once; a secrets PATCH replaces them all (so we merge); relationships
/// and tags come when asked for.
async fn tools_are_upserted_by_name_attached_once_and_secrets_replaced_whole(letta: &LettaServer) {
    let client = letta.client();
    let id = letta.create_agent(&unique("tooled")).await;
    let name = unique("contract_tool").replace('-', "_");
    let schema = |description: &str| {
        json!({"name": name, "description": description, "parameters": {"type": "object",
            "properties": {"x": {"type": "string", "description": "x"}}, "required": ["x"]}})
    };
    let source = |body: &str| {
        format!(
            "def {name}(x: str) -> str:\n    \"\"\"Probe.\n\n    Args:\n        x (str): x\n\n    Returns:\n        str: x\n    \"\"\"\n    return {body}\n"
        )
    };
    let first = client
        .upsert_tool(&source("x"), &schema("first"), "first", &["contract"])
        .await
        .unwrap();
    let second = client
        .upsert_tool(&source("x + x"), &schema("second"), "second", &["contract"])
        .await
        .unwrap();
    assert_eq!(first.id, second.id, "the same tool, by name");
    assert_eq!(
        (second.name.as_str(), second.tags.as_slice()),
        (name.as_str(), ["contract".to_owned()].as_slice())
    );
    client.attach_tool(&id, &first.id).await.unwrap();
    client.attach_tool(&id, &first.id).await.unwrap();
    let tooling = client.agent_tooling(&id).await.unwrap();
    assert_eq!(tooling.tool_ids.iter().filter(|t| **t == first.id).count(), 1);
    assert!(matches!(
        client
            .attach_tool(&id, "tool-00000000-0000-4000-8000-000000000000")
            .await,
        Err(LettaError::NotFound { .. })
    ));
    let secrets = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    client
        .set_agent_secrets(&id, &secrets(&[("A", "1"), ("B", "2")]))
        .await
        .unwrap();
    client.set_agent_secrets(&id, &secrets(&[("B", "3")])).await.unwrap();
    assert_eq!(client.agent_tooling(&id).await.unwrap().secrets, secrets(&[("B", "3")]));
    let listed = tagged_client(letta).list_agents().await.unwrap();
    let agent = listed.iter().find(|a| a.id == id).expect("listed by its tag");
    assert_eq!(agent.tags, std::slice::from_ref(&letta.tag));
}

/// Letta 0.16.8 refuses MCP servers on loopback and private addresses (hence our sandbox tools).
async fn an_mcp_server_on_a_private_address_is_refused(letta: &LettaServer) {
    let client = letta.client();
    for url in [
        "http://127.0.0.1:9/mcp",
        "http://10.1.2.3/mcp",
        "http://192.168.0.2:9000/mcp",
    ] {
        let config = McpServerConfig {
            url: url.into(),
            token_secret: "LETTA_MATRIX_TOKEN".into(),
        };
        match client.create_mcp_server(&unique("private"), &config).await {
            Err(LettaError::Status { status: 422, body }) => assert!(body.contains("Non-public"), "{url}: {body}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

/// The agent's answers start `ms` after they are asked for, on either server.
fn first_token_after(letta: &LettaServer, id: &str, ms: u64) {
    let slow = std::time::Duration::from_millis(ms);
    match &letta.standin {
        Some(standin) => standin.set_latency(id, slow, std::time::Duration::ZERO),
        None => letta
            .model
            .set_latency(&letta.model_of(id), slow, std::time::Duration::ZERO),
    }
}

async fn turn_in(letta: &LettaServer, conversation: &Conversation, inputs: &[MessageCreate]) -> Vec<StreamEvent> {
    let stream = letta.client().stream_turn_in(conversation, inputs).await.unwrap();
    stream.map(|event| event.unwrap()).collect().await
}

/// A conversation of an agent keeps its own messages: its turns are listed in it and found by
/// otid there, and the default conversation (what history import reads) has none of them. On the
/// real server, the model is not sent the default conversation's messages either.
async fn a_conversation_keeps_its_own_messages_and_context(letta: &LettaServer) {
    let client = letta.client();
    let id = letta.create_agent(&unique("many-rooms")).await;
    let default = Conversation::Default(id.clone());
    let told = turn_in(letta, &default, &[said("The code word is marmalade.", &unique("otid"))]).await;
    assert_eq!(stop_of(&told), Some(StopReason::EndTurn), "{told:?}");
    let room_b = client.create_conversation(&id, "Room B").await.unwrap();
    assert!(
        matches!(&room_b, Conversation::Own { agent_id, id: conv } if *agent_id == id && conv.starts_with("conv-")),
        "{room_b:?}"
    );
    let asked = unique("otid");
    let events = turn_in(letta, &room_b, &[said("What is the code word?", &asked)]).await;
    assert_eq!(stop_of(&events), Some(StopReason::EndTurn), "{events:?}");
    assert!(!answer_of(&events).is_empty());

    let in_b = client.recent_messages_in(&room_b, 50).await.unwrap();
    let (_, answers) = find_turn(&in_b, &asked).expect("the turn is found by its otid in its conversation");
    assert!(!answers.is_empty());
    assert!(
        !in_b.iter().any(|m| m.text().contains("marmalade")),
        "room B lists only its own messages: {in_b:?}"
    );
    let history = client.history(&id, i64::MAX, 100, |_| true).await.unwrap();
    assert!(history.iter().any(|m| m.text().contains("marmalade")));
    assert!(
        !history.iter().any(|m| m.text().contains("What is the code word")),
        "the default conversation has none of room B's messages"
    );
    if letta.is_real() {
        let requests = letta.model.requests(&letta.model_of(&id));
        let last = requests.last().expect("the model was asked").to_string();
        assert!(last.contains("What is the code word"), "{last}");
        assert!(
            !last.contains("marmalade"),
            "room B's context holds the default conversation's words: {last}"
        );
    }
    assert!(matches!(
        client
            .create_conversation("agent-00000000-0000-4000-8000-000000000000", "x")
            .await,
        Err(LettaError::NotFound { .. })
    ));
}

/// Two conversations of one agent answer at the same time.
async fn turns_in_two_conversations_of_one_agent_overlap(letta: &LettaServer) {
    let client = letta.client();
    let id = letta.create_agent(&unique("parallel")).await;
    first_token_after(letta, &id, 600);
    let a = client.create_conversation(&id, "Room A").await.unwrap();
    let b = client.create_conversation(&id, "Room B").await.unwrap();
    let (one, two) = ([said("first", &unique("otid"))], [said("second", &unique("otid"))]);
    let (first, second) = tokio::join!(turn_in(letta, &a, &one), turn_in(letta, &b, &two));
    for events in [&first, &second] {
        assert_eq!(stop_of(events), Some(StopReason::EndTurn), "{events:?}");
    }
    let overlapped = match &letta.standin {
        Some(standin) => standin.max_concurrent(&id),
        None => letta.model.max_concurrent(&letta.model_of(&id)),
    };
    assert_eq!(overlapped, 2, "both turns ran at once");
}

/// A turn still being answered is an active run of its agent (and conversation) until it ends:
/// the bridge asks before deciding that a turn it cannot find never arrived.
async fn a_turn_being_answered_is_an_active_run(letta: &LettaServer) {
    let client = letta.client();
    let id = letta.create_agent(&unique("busy")).await;
    first_token_after(letta, &id, 1500);
    let room = client.create_conversation(&id, "Room").await.unwrap();
    for conversation in [Conversation::Default(id.clone()), room] {
        assert!(!client.has_active_run(&conversation).await.unwrap(), "{conversation}");
        let stream = client
            .stream_turn_in(&conversation, &[said("take your time", &unique("otid"))])
            .await
            .unwrap();
        let mut active = false;
        for _ in 0..10 {
            if client.has_active_run(&conversation).await.unwrap() {
                active = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(active, "{conversation}: the turn is an active run while it is answered");
        let events: Vec<StreamEvent> = stream.map(|event| event.unwrap()).collect().await;
        assert_eq!(stop_of(&events), Some(StopReason::EndTurn));
        let mut over = false;
        for _ in 0..50 {
            if !client.has_active_run(&conversation).await.unwrap() {
                over = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(over, "{conversation}: no active run once the turn is over");
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod standin {
            $(#[tokio::test] async fn $name() { super::$name(&super::LettaServer::standin().await).await })*
        }
        mod real {
            $(#[tokio::test] async fn $name() {
                if let Some(letta) = super::LettaServer::real().await { super::$name(&letta).await }
            })*
        }
    };
}

contract!(
    agents_are_listed_oldest_first_across_pages,
    agents_are_listed_by_tag,
    an_agent_is_created_renamed_and_deleted,
    a_streamed_turn_sends_a_ping_deltas_of_one_message_a_stop_and_done,
    a_turn_is_found_again_by_its_otid,
    history_pages_both_ways_over_more_than_a_hundred_messages,
    one_steps_items_share_an_id_and_the_history_keeps_each,
    two_turns_of_one_agent_at_once_are_both_answered,
    an_unknown_agent_and_a_bad_token_are_told_apart,
    a_tool_call_waits_for_approval_until_denied,
    a_failing_model_ends_the_stream_with_an_error_event,
    tools_are_upserted_by_name_attached_once_and_secrets_replaced_whole,
    an_mcp_server_on_a_private_address_is_refused,
    a_conversation_keeps_its_own_messages_and_context,
    turns_in_two_conversations_of_one_agent_overlap,
    a_turn_being_answered_is_an_active_run,
);

/// What Letta 0.16.8 really does with a conversation's context, by agent type (the stand-in has no
/// context to check): a `letta_v1_agent`'s conversation starts from its own messages, while a
/// `memgpt_v2_agent`'s model is still sent the default conversation's. The relay must therefore
/// not count on conversations to keep rooms apart for every agent type.
#[tokio::test]
async fn on_the_real_letta_only_a_v1_agents_conversation_has_its_own_context() {
    let Some(letta) = LettaServer::real().await else { return };
    let client = letta.client();
    for (kind, isolated) in [("letta_v1_agent", true), ("memgpt_v2_agent", false)] {
        let id = letta.create_agent_with(&unique(kind), kind, json!({})).await;
        let told = turn_in(
            &letta,
            &Conversation::Default(id.clone()),
            &[said("The code word is marmalade.", &unique("otid"))],
        )
        .await;
        assert_eq!(stop_of(&told), Some(StopReason::EndTurn), "{kind}: {told:?}");
        let room = client.create_conversation(&id, "Room B").await.unwrap();
        let asked = turn_in(&letta, &room, &[said("What is the code word?", &unique("otid"))]).await;
        assert_eq!(stop_of(&asked), Some(StopReason::EndTurn), "{kind}: {asked:?}");
        let requests = letta.model.requests(&letta.model_of(&id));
        let last = requests.last().expect("the model was asked").to_string();
        assert!(last.contains("What is the code word"), "{kind}: {last}");
        assert_eq!(!last.contains("marmalade"), isolated, "{kind}: isolated is {isolated}");
    }
}
