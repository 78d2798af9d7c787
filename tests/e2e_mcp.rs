//! The MCP tool server end to end: rmcp's own client calls every tool against `serve`, a real
//! Synapse and the Letta stand-in; agents message each other through Matrix as themselves.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use letta_matrix::config::Secret;
use letta_matrix::mcp::agent_token;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use support::chat::shown_messages;
use support::letta_server::LettaServer;
use support::stack::{Stack, real_stack, stack};
use support::wait::eventually;

const SECRET: &str = "mcp-secret-for-tests-of-at-least-32-bytes";
const PATIENCE: Duration = Duration::from_secs(60);

type Client = RunningService<RoleClient, ()>;

async fn connect<L>(stack: &Stack<L>, agent_id: &str, token: &str) -> Result<Client, String> {
    let headers = HashMap::from([(
        HeaderName::from_static("x-agent-id"),
        HeaderValue::from_str(agent_id).unwrap(),
    )]);
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", stack.install.base_url()))
        .auth_header(token)
        .custom_headers(headers);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .map_err(|e| e.to_string())
}

async fn client_for<L>(stack: &Stack<L>, agent_id: &str) -> Client {
    connect(stack, agent_id, &agent_token(&Secret::new(SECRET), agent_id))
        .await
        .unwrap()
}

/// Calls a tool; `Ok` holds its JSON answer, `Err` the MCP error's text.
async fn call(client: &Client, tool: &str, arguments: Value) -> Result<Value, String> {
    let arguments = arguments.as_object().cloned().unwrap_or_default();
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
        .await
        .map_err(|e| e.to_string())?;
    let text = result.content[0].as_text().expect("a text answer").text.clone();
    if result.is_error == Some(true) {
        return Err(text);
    }
    Ok(serde_json::from_str(&text).expect("tools answer JSON"))
}

#[tokio::test]
async fn every_tool_works_as_the_calling_agent_and_bad_arguments_are_explained() {
    let stack = stack(
        "tools.test",
        &["Alpha", "Beta"],
        &[
            ("LETTA_MATRIX_MCP_SECRET", SECRET),
            ("LETTA_MATRIX_ALLOW", "tools.test"),
        ],
    )
    .await;
    let (alpha, beta) = (&stack.agents[0], &stack.agents[1]);
    let client = client_for(&stack, &alpha.id).await;

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "get_agent_room",
            "list_agents",
            "matrix_agent_message",
            "matrix_create_room",
            "matrix_invite_user",
            "matrix_join_room",
            "matrix_leave_room",
            "matrix_list_rooms",
            "matrix_read_room",
            "matrix_send_message"
        ]
    );
    let send_schema = &tools
        .iter()
        .find(|t| t.name == "matrix_agent_message")
        .unwrap()
        .input_schema;
    assert_eq!(send_schema["required"], json!(["to_agent_id", "message"]));

    let listed = call(&client, "list_agents", json!({})).await.unwrap();
    assert_eq!(listed["agents"].as_array().unwrap().len(), 2);
    let listed_beta = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == beta.id.as_str())
        .unwrap();
    assert_eq!(
        (
            listed_beta["name"].as_str(),
            listed_beta["user_id"].as_str(),
            listed_beta["room_id"].as_str()
        ),
        (Some("Beta"), Some(beta.ghost.as_str()), Some(beta.room.as_str()))
    );
    let room = call(&client, "get_agent_room", json!({"agent_id": beta.id}))
        .await
        .unwrap();
    assert_eq!(room["room_id"], beta.room.as_str());

    let posted = call(
        &client,
        "matrix_send_message",
        json!({"room_id": alpha.room, "message": "**notes** to self"}),
    )
    .await
    .unwrap();
    let read = call(&client, "matrix_read_room", json!({"room_id": alpha.room, "limit": 5}))
        .await
        .unwrap();
    let last = read["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["body"].as_str(), last["sender"].as_str()),
        (Some("**notes** to self"), Some(alpha.ghost.as_str()))
    );
    assert_eq!(last["event_id"], posted["event_id"]);

    // Longer than one event can carry: posted as several messages, the first one's id returned.
    let essay: String = (0..45)
        .map(|n| {
            format!(
                "**Note {n}:** {}",
                "a thought worth keeping for later. ".repeat(20).trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    let long = call(
        &client,
        "matrix_send_message",
        json!({"room_id": alpha.room, "message": essay}),
    )
    .await
    .unwrap();
    let read = call(&client, "matrix_read_room", json!({"room_id": alpha.room, "limit": 10}))
        .await
        .unwrap();
    let essay_parts: Vec<&Value> = read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"].as_str().unwrap().starts_with("**Note "))
        .collect();
    assert!(essay_parts.len() >= 3, "{read}");
    assert_eq!(essay_parts[0]["event_id"], long["event_id"]);
    let bodies: Vec<&str> = essay_parts.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert!(bodies.join("\n\n") == essay, "the pieces make up the whole message");

    let rooms = call(&client, "matrix_list_rooms", json!({})).await.unwrap();
    let own = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == alpha.room.as_str())
        .unwrap()
        .clone();
    assert_eq!(own["name"], "Alpha");
    assert!(own["members"].as_u64().unwrap() >= 3, "ghost, bot and alice: {own}");

    let created = call(
        &client,
        "matrix_create_room",
        json!({"name": "Planning", "topic": "what next", "invite_users": ["@alice:tools.test"]}),
    )
    .await
    .unwrap();
    let planning = created["room_id"].as_str().unwrap().to_owned();
    eventually("alice invited to the new room", PATIENCE, || async {
        stack.alice.join(&planning).await.ok()
    })
    .await;
    let public = stack
        .alice
        .create_room(json!({"name": "Lobby", "preset": "public_chat"}))
        .await
        .unwrap();
    let joined = call(&client, "matrix_join_room", json!({"room_id": public}))
        .await
        .unwrap();
    assert_eq!(joined["room_id"], public.as_str());
    assert!(
        stack
            .alice
            .joined_members(&public)
            .await
            .unwrap()
            .contains(&alpha.ghost)
    );
    call(
        &client,
        "matrix_invite_user",
        json!({"room_id": planning, "user_id": beta.ghost}),
    )
    .await
    .unwrap();
    let membership = stack
        .alice
        .state(&planning, "m.room.member", &beta.ghost)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(membership["membership"], "invite");
    call(&client, "matrix_leave_room", json!({"room_id": public}))
        .await
        .unwrap();
    assert!(
        !stack
            .alice
            .joined_members(&public)
            .await
            .unwrap()
            .contains(&alpha.ghost)
    );

    // Bad arguments and forbidden acts are errors that say what is wrong.
    let errors = [
        ("matrix_read_room", json!({"room_id": "not-a-room"}), "not a room id"),
        (
            "matrix_read_room",
            json!({"room_id": alpha.room, "limit": 500}),
            "between 1 and 50",
        ),
        ("matrix_read_room", json!({"room_id": public}), "not in room"),
        (
            "matrix_agent_message",
            json!({"to_agent_id": "agent-nobody", "message": "hi"}),
            "no agent",
        ),
        (
            "matrix_agent_message",
            json!({"to_agent_id": alpha.id, "message": "hi"}),
            "your own id",
        ),
        ("matrix_agent_message", json!({"message": "hi"}), "to_agent_id"),
        ("matrix_join_room", json!({}), "exactly one"),
        (
            "matrix_invite_user",
            json!({"room_id": alpha.room, "user_id": "@mallory:evil.example"}),
            "not allowed",
        ),
        (
            "matrix_leave_room",
            json!({"room_id": alpha.room}),
            "your own agent room",
        ),
    ];
    for (tool, arguments, expected) in errors {
        let error = call(&client, tool, arguments.clone()).await.unwrap_err();
        assert!(error.contains(expected), "{tool} {arguments}: {error}");
    }
    client.cancel().await.unwrap();
    stack.stop().await;
}

/// Listing needs no credentials (Letta lists without an agent); every call needs the caller's own
/// token, over MCP and over the sandbox tools' HTTP API alike, and both answer the same.
#[tokio::test]
async fn an_agent_cannot_act_as_another() {
    let stack = stack("auth.test", &["Alpha", "Beta"], &[("LETTA_MATRIX_MCP_SECRET", SECRET)]).await;
    let (alpha, beta) = (&stack.agents[0], &stack.agents[1]);
    let alphas_token = agent_token(&Secret::new(SECRET), &alpha.id);
    for (agent, token) in [(&beta.id, alphas_token.as_str()), (&alpha.id, "guessed")] {
        let client = connect(&stack, agent, token).await.expect("connecting needs no token");
        let tools = client.list_all_tools().await.expect("listing needs no token");
        assert_eq!(tools.len(), 10);
        let refused = call(&client, "list_agents", json!({})).await.unwrap_err();
        assert!(refused.contains("does not belong"), "{refused}");
        client.cancel().await.unwrap();
    }
    let unauthenticated = connect(&stack, "", "")
        .await
        .expect("no credentials at all still lists");
    assert_eq!(unauthenticated.list_all_tools().await.unwrap().len(), 10);
    let refused = call(&unauthenticated, "list_agents", json!({})).await.unwrap_err();
    assert!(refused.contains("x-agent-id"), "{refused}");
    unauthenticated.cancel().await.unwrap();

    let http = reqwest::Client::new();
    let tool = |name: &str, agent: &str, token: &str, body: &str| {
        http.post(format!("{}/tools/{name}", stack.install.base_url()))
            .header("x-agent-id", agent)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let answered = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = answered(tool("list_agents", &beta.id, &alphas_token, "{}").await.unwrap()).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("does not belong"));
    let (status, body) = answered(tool("list_agents", &alpha.id, "", "{}").await.unwrap()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN")),
        "{body}"
    );
    let (status, body) = answered(tool("rm_rf", &alpha.id, &alphas_token, "{}").await.unwrap()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED")),
        "{body}"
    );
    let (status, body) = answered(tool("get_agent_room", &alpha.id, &alphas_token, "{}").await.unwrap()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("agent_id"), "{body}");
    let (status, body) = answered(tool("get_agent_room", &alpha.id, &alphas_token, "[1]").await.unwrap()).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    let (status, body) = answered(
        tool(
            "matrix_read_room",
            &alpha.id,
            &alphas_token,
            &json!({"room_id": beta.room}).to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "not in beta's room: {body}"
    );

    // The same answer by either road.
    let arguments = json!({"agent_id": beta.id});
    let (status, by_http) = answered(
        tool("get_agent_room", &alpha.id, &alphas_token, &arguments.to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{by_http}");
    let client = client_for(&stack, &alpha.id).await;
    assert_eq!(call(&client, "get_agent_room", arguments).await.unwrap(), by_http);
    assert_eq!(by_http["room_id"], beta.room.as_str());
    client.cancel().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn agents_talk_through_matrix_as_themselves_until_the_hop_limit() {
    let stack = stack(
        "agents.test",
        &["Alpha", "Beta"],
        &[
            ("LETTA_MATRIX_MCP_SECRET", SECRET),
            ("LETTA_MATRIX_INTER_AGENT_MAX_HOPS", "3"),
        ],
    )
    .await;
    let (alpha, beta) = (&stack.agents[0], &stack.agents[1]);
    let client = client_for(&stack, &alpha.id).await;
    let sent = call(
        &client,
        "matrix_agent_message",
        json!({"to_agent_id": beta.id, "message": "Hello Beta"}),
    )
    .await
    .unwrap();
    assert_eq!(sent["room_id"], beta.room.as_str());

    // Beta's room: alpha's message under alpha's name, then beta's answer.
    let from_alpha = eventually("alpha's message in beta's room", PATIENCE, || async {
        let shown = shown_messages(&stack.alice.messages(&beta.room, 50).await.unwrap(), &alpha.ghost);
        (!shown.is_empty()).then_some(shown)
    })
    .await;
    assert_eq!(from_alpha[0].body, "Hello Beta");
    assert_eq!(
        from_alpha[0].content["org.lettamatrix.from_agent_id"],
        alpha.id.as_str()
    );
    assert_eq!(from_alpha[0].content["org.lettamatrix.from_agent_name"], "Alpha");
    // Posted in Matrix first, then relayed: Letta may not have it the moment the room shows it.
    let told_beta = eventually("alpha's message relayed to beta", PATIENCE, || async {
        stack.letta.user_messages(&beta.id).into_iter().next()
    })
    .await;
    let told = told_beta["content"].as_str().unwrap();
    assert!(
        told.contains("Message from agent Alpha") && told.contains(&alpha.id) && told.ends_with("Hello Beta"),
        "{told}"
    );
    assert_eq!(told_beta["name"], "Alpha");

    // The exchange goes back and forth (hops 1, 2, 3) and stops with a notice at hop 4.
    let notice = eventually("the hop limit stopping the exchange", PATIENCE, || async {
        for agent in [alpha, beta] {
            let shown = shown_messages(&stack.alice.messages(&agent.room, 50).await.unwrap(), &agent.ghost);
            if let Some(notice) = shown
                .iter()
                .find(|s| s.msgtype == "m.notice" && s.body.contains("hops"))
            {
                return Some(notice.body.clone());
            }
        }
        None
    })
    .await;
    assert!(notice.contains("3 hops"), "{notice}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (to_alpha, to_beta) = (
        stack.letta.user_messages(&alpha.id).len(),
        stack.letta.user_messages(&beta.id).len(),
    );
    assert_eq!(
        (to_beta, to_alpha),
        (2, 1),
        "beta heard hops 1 and 3, alpha hop 2; hop 4 was stopped"
    );
    let in_alpha_room = shown_messages(&stack.alice.messages(&alpha.room, 50).await.unwrap(), &beta.ghost);
    assert!(
        in_alpha_room
            .iter()
            .any(|m| m.body.starts_with("You said: [Message from agent Alpha")),
        "beta's answer reached alpha's room under beta's name: {in_alpha_room:?}"
    );
    client.cancel().await.unwrap();
    stack.stop().await;
}

/// The same exchange with a real Letta behind both agents: rmcp's client stands in for Letta's
/// MCP client (issue: Letta 0.16.8 refuses MCP servers on loopback), everything else is real.
#[tokio::test]
async fn with_a_real_letta_an_agents_message_reaches_another_and_the_answer_comes_back() {
    let Some(letta) = LettaServer::real().await else { return };
    let alpha_id = letta.create_agent("Alpha").await;
    let beta_id = letta.create_agent("Beta").await;
    letta.script(
        &beta_id,
        [model_standin::Step::reply("Beta here: two plus two is four.")],
    );
    let stack = real_stack(
        "real-mcp.test",
        letta,
        vec![alpha_id.clone(), beta_id.clone()],
        &[
            ("LETTA_MATRIX_MCP_SECRET", SECRET),
            ("LETTA_MATRIX_INTER_AGENT_MAX_HOPS", "2"),
        ],
    )
    .await;
    let (alpha, beta) = (&stack.agents[0], &stack.agents[1]);
    let client = client_for(&stack, &alpha.id).await;
    let sent = call(
        &client,
        "matrix_agent_message",
        json!({"to_agent_id": beta.id, "message": "What is two plus two?"}),
    )
    .await
    .unwrap();
    assert_eq!(sent["room_id"], beta.room.as_str());
    let back = eventually("beta's answer in alpha's room", PATIENCE, || async {
        let shown = shown_messages(&stack.alice.messages(&alpha.room, 50).await.unwrap(), &beta.ghost);
        shown.into_iter().find(|m| m.body.contains("two plus two is four"))
    })
    .await;
    assert_eq!(back.msgtype, "m.text");
    let beta_saw = stack.letta.seen_text(&beta_id);
    assert!(
        beta_saw.contains("Message from agent Alpha") && beta_saw.contains("What is two plus two?"),
        "beta's model was told who wrote: {beta_saw}"
    );
    stack.letta.wait_seen(&alpha_id, "two plus two is four").await;
    client.cancel().await.unwrap();
    stack.stop().await;
}
