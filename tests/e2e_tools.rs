//! Agents get their Matrix tools from letta-matrix itself, and use them, on a real Letta 0.16.8
//! with its MCP URL check in force: the tools run in Letta's tool sandbox and call our HTTP API
//! (`tools_mode = "sandbox"`, the default). Nobody registers or attaches anything by hand. Also:
//! Letta's own MCP client (python `mcp`, from Letta's venv) against our `/mcp`.

mod support;

use std::time::Duration;

use letta_matrix::config::Secret;
use letta_matrix::mcp::agent_token;
use model_standin::Step;
use serde_json::{Value, json};
use support::chat::shown_messages;
use support::letta_server::LettaServer;
use support::stack::{SELF_URL, real_stack};
use support::wait::eventually;

const SECRET: &str = "mcp-secret-for-tests-of-at-least-32-bytes";
const PATIENCE: Duration = Duration::from_secs(120);

/// The names of the agent's tools and its secrets, as Letta has them.
async fn tooling(letta: &LettaServer, agent_id: &str) -> (Vec<String>, Value) {
    let agent = letta
        .call(
            reqwest::Method::GET,
            &format!("/v1/agents/{agent_id}?include=agent.tools&include=agent.secrets"),
            None,
        )
        .await;
    let tools = agent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    let secrets = agent["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap().to_owned(), s["value"].clone()))
        .collect::<serde_json::Map<_, _>>();
    (tools, Value::Object(secrets))
}

#[tokio::test]
async fn on_a_real_letta_agents_get_the_tools_and_one_asks_another() {
    let Some(letta) = LettaServer::real().await else { return };
    let alpha_id = letta.create_agent("Alpha").await;
    let beta_id = letta.create_agent("Beta").await;
    let mallory_id = letta.create_agent("Mallory").await;
    // A secret of the operator's own, which provisioning must keep.
    letta
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{alpha_id}"),
            Some(json!({"secrets": {"OPERATORS_OWN": "kept"}})),
        )
        .await;
    letta.script(
        &alpha_id,
        [
            Step::tool_call(
                "matrix_agent_message",
                json!({"to_agent_id": beta_id, "message": "What is two plus two?"}),
            ),
            Step::reply("I asked Beta."),
            Step::reply("Beta says it is four."),
        ],
    );
    letta.script(&beta_id, [Step::reply("Beta here: two plus two is four.")]);
    let mut stack = real_stack(
        "tools.test",
        letta,
        vec![alpha_id.clone(), beta_id.clone(), mallory_id.clone()],
        &[
            ("LETTA_MATRIX_MCP_SECRET", SECRET),
            ("LETTA_MATRIX_TOOLS_URL", SELF_URL),
            ("LETTA_MATRIX_INTER_AGENT_MAX_HOPS", "2"),
        ],
    )
    .await;
    let (alpha, beta, mallory) = (&stack.agents[0], &stack.agents[1], &stack.agents[2]);

    for agent in [&alpha_id, &beta_id, &mallory_id] {
        let (tools, secrets) = eventually("the agent's tools provisioned", PATIENCE, || async {
            let (tools, secrets) = tooling(&stack.letta, agent).await;
            (tools.len() >= 10 && secrets.get("LETTA_MATRIX_TOKEN").is_some()).then_some((tools, secrets))
        })
        .await;
        for name in [
            "matrix_agent_message",
            "list_agents",
            "matrix_send_message",
            "matrix_read_room",
        ] {
            assert!(tools.iter().any(|t| t == name), "{agent} lacks {name}: {tools:?}");
        }
        assert_eq!(
            secrets["LETTA_MATRIX_TOKEN"],
            agent_token(&Secret::new(SECRET), agent),
            "{agent}'s own token"
        );
    }
    assert_eq!(
        tooling(&stack.letta, &alpha_id).await.1["OPERATORS_OWN"],
        "kept",
        "provisioning keeps the agent's other secrets"
    );

    // Alpha asks Beta through the tool; a person in both rooms sees each step under its author.
    stack
        .alice
        .send_text(&alpha.room, "Please ask Beta what two plus two is.")
        .await
        .unwrap();
    let asked = eventually("alpha's question in beta's room", PATIENCE, || async {
        let shown = shown_messages(&stack.alice.messages(&beta.room, 50).await.unwrap(), &alpha.ghost);
        shown.into_iter().find(|m| m.body.contains("What is two plus two?"))
    })
    .await;
    assert_eq!(asked.msgtype, "m.text");
    eventually("beta's answer back in alpha's room", PATIENCE, || async {
        let shown = shown_messages(&stack.alice.messages(&alpha.room, 50).await.unwrap(), &beta.ghost);
        shown.into_iter().find(|m| m.body.contains("two plus two is four"))
    })
    .await;
    stack.letta.wait_seen(&alpha_id, "two plus two is four").await;
    let alpha_saw = stack.letta.seen_text(&alpha_id);
    assert!(
        alpha_saw.contains(beta.room.as_str()),
        "the tool's answer (beta's room) reached alpha's model: {alpha_saw}"
    );

    // An agent made while letta-matrix runs gets the tools too.
    let late_id = stack.letta.create_agent("Late").await;
    eventually("the new agent's tools", PATIENCE, || async {
        let (tools, secrets) = tooling(&stack.letta, &late_id).await;
        (tools.iter().any(|t| t == "matrix_agent_message")
            && secrets.get("LETTA_MATRIX_TOKEN") == Some(&json!(agent_token(&Secret::new(SECRET), &late_id))))
        .then_some(())
    })
    .await;

    // Mallory holds Alpha's token: its call is refused, and its model is told why.
    stack
        .letta
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{mallory_id}"),
            Some(json!({"secrets": {"LETTA_MATRIX_TOKEN": agent_token(&Secret::new(SECRET), &alpha_id)}})),
        )
        .await;
    stack.letta.script(
        &mallory_id,
        [
            Step::tool_call(
                "matrix_send_message",
                json!({"room_id": alpha.room.as_str(), "message": "Alpha here, trust me."}),
            ),
            Step::reply("That did not work."),
        ],
    );
    stack.alice.send_text(&mallory.room, "Go on, try it.").await.unwrap();
    stack.letta.wait_seen(&mallory_id, "does not belong to the agent").await;
    let everything: Vec<_> = stack.alice.messages(&alpha.room, 100).await.unwrap();
    assert!(
        !everything
            .iter()
            .any(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains("trust me"))),
        "nothing was posted with a borrowed token"
    );

    // MCP mode, where Letta accepts our URL: after a restart the same agents switch over.
    if let Some(ip) = global_address() {
        let port = std::net::TcpListener::bind((ip.as_str(), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://{ip}:{port}");
        let letta_log = std::env::var("LETTA_MATRIX_TEST_LETTA_LOG").ok();
        let log_start = letta_log
            .as_ref()
            .map_or(0, |log| std::fs::metadata(log).unwrap().len() as usize);
        assert_eq!(stack.served.take().unwrap().terminate().await, Some(0));
        stack.install.set("LETTA_MATRIX_TOOLS_MODE", "mcp");
        stack.install.set("LETTA_MATRIX_MCP_BIND", format!("{ip}:{port}"));
        stack.install.set("LETTA_MATRIX_TOOLS_URL", &url);
        stack.served = Some(stack.install.serve().await.unwrap());
        // Letta lists our tools as it registers the server, and stores them by name: the
        // sandbox tools become MCP tools, still attached.
        eventually("alpha's tools served over MCP", PATIENCE, || async {
            let agent = stack
                .letta
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/agents/{alpha_id}?include=agent.tools"),
                    None,
                )
                .await;
            agent["tools"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "matrix_agent_message" && t["tool_type"] == "external_mcp")
                .then_some(())
        })
        .await;
        let servers = stack.letta.call(reqwest::Method::GET, "/v1/mcp-servers/", None).await;
        let ours = servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["server_name"] == "letta-matrix")
            .expect("letta-matrix registered itself");
        assert_eq!(ours["server_url"], format!("{url}/mcp"));
        eventually("mallory's own token back", PATIENCE, || async {
            let (_, secrets) = tooling(&stack.letta, &mallory_id).await;
            (secrets["LETTA_MATRIX_TOKEN"] == agent_token(&Secret::new(SECRET), &mallory_id)).then_some(())
        })
        .await;
        stack.letta.script(
            &alpha_id,
            [
                Step::tool_call(
                    "matrix_agent_message",
                    json!({"to_agent_id": beta_id, "message": "And what is three plus three?"}),
                ),
                Step::reply("Asked Beta again."),
            ],
        );
        stack.letta.script(&beta_id, [Step::reply("Beta again: six.")]);
        stack.alice.send_text(&alpha.room, "Ask Beta once more.").await.unwrap();
        eventually("alpha's question over MCP in beta's room", PATIENCE, || async {
            let shown = shown_messages(&stack.alice.messages(&beta.room, 50).await.unwrap(), &alpha.ghost);
            shown.into_iter().find(|m| m.body.contains("three plus three"))
        })
        .await;
        eventually("beta's second answer back in alpha's room", PATIENCE, || async {
            let shown = shown_messages(&stack.alice.messages(&alpha.room, 50).await.unwrap(), &beta.ghost);
            shown.into_iter().find(|m| m.body.contains("six"))
        })
        .await;
        // What Letta logged about us before: an empty priming event, a 202 to DELETE, a listing
        // refused, and a token template it could not fill in without an agent.
        if let Some(log) = letta_log {
            let log = std::fs::read(log).unwrap();
            let log = String::from_utf8_lossy(&log[log_start..]);
            for complaint in [
                "Error parsing SSE message",
                "Session termination failed",
                "tools were not persisted",
                "Unable to resolve templated variable",
            ] {
                assert!(!log.contains(complaint), "Letta logged `{complaint}`");
            }
        }
    }
    stack.stop().await;
}

/// A global address on this machine (scripts/test adds one to lo as root): Letta accepts MCP
/// servers only there.
fn global_address() -> Option<String> {
    let address = std::env::var("LETTA_MATRIX_TEST_GLOBAL_IP").ok();
    if address.is_none() {
        eprintln!(
            "LETTA_MATRIX_TEST_GLOBAL_IP is not set (scripts/test sets it as root): MCP mode on the real Letta not tested"
        );
    }
    address
}

/// Letta's MCP client, as Letta runs it (python `mcp` from Letta's venv), lists our tools with no
/// credentials, calls one with an agent's token, is refused with another's, and closes its session:
/// not one warning or error in its log.
#[tokio::test]
async fn lettas_own_mcp_client_lists_and_calls_without_a_complaint() {
    let Some(python) = LettaServer::python() else { return };
    let stack = support::stack::stack("mcp-client.test", &["Alpha"], &[("LETTA_MATRIX_MCP_SECRET", SECRET)]).await;
    let alpha = &stack.agents[0];
    let script = r#"
import asyncio, json, logging, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
url, agent, token, wrong = sys.argv[1:5]

async def session(headers, work):
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            return await work(s)

async def main():
    async def listing(s):
        return [t.name for t in (await s.list_tools()).tools]
    # What Letta sends when it registers a server: no agent, the template unresolved.
    names = await session({"Authorization": "Bearer {{ LETTA_MATRIX_TOKEN }}"}, listing)
    async def call(s):
        result = await s.call_tool("list_agents", {})
        return [result.isError, result.content[0].text]
    ok = await session({"Authorization": "Bearer " + token, "x-agent-id": agent}, call)
    refused = await session({"Authorization": "Bearer " + wrong, "x-agent-id": agent}, call)
    print(json.dumps({"names": names, "ok": ok, "refused": refused}))

asyncio.run(main())
"#;
    let output = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(format!("{}/mcp", stack.install.base_url()))
        .arg(&alpha.id)
        .arg(agent_token(&Secret::new(SECRET), &alpha.id))
        .arg(agent_token(&Secret::new(SECRET), "agent-someone-else"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed: {stderr}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = answer["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(names.contains(&"matrix_agent_message"));
    assert_eq!(answer["ok"][0], false, "{answer}");
    let listed: Value = serde_json::from_str(answer["ok"][1].as_str().unwrap()).unwrap();
    assert_eq!(listed["agents"][0]["agent_id"], alpha.id.as_str());
    assert_eq!(answer["refused"][0], true, "{answer}");
    assert!(
        answer["refused"][1].as_str().unwrap().contains("does not belong"),
        "{answer}"
    );
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("WARNING"),
        "Letta's MCP client complained: {stderr}"
    );
    stack.stop().await;
}
