use super::*;

#[test]
fn dates_are_rfc3339() {
    assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339_micros(1_795_000_000_123_456), "2026-11-18T11:06:40.123456Z");
    assert_eq!(rfc3339_micros(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
}

#[test]
fn ids_look_like_letta_ids() {
    let id = uuid_like(7);
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
    assert!(parts[2].starts_with('4'), "version 4: {id}");
    assert_ne!(uuid_like(7), uuid_like(7));
}

#[tokio::test]
async fn lists_newest_first_unless_asked_and_pages_by_cursor() {
    let letta = LettaStandin::start().await;
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| letta.create_agent(name, None))
        .collect();
    let list = |query: String| {
        let url = format!("{}/v1/agents/?{query}", letta.url());
        async move {
            let page: Vec<Value> = reqwest_free_get(&url).await;
            page.iter()
                .map(|a| a["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(String::new()).await,
        [ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    assert_eq!(
        list(format!("order=asc&limit=1&after={}", ids[0])).await,
        [ids[1].clone()]
    );
    letta.delete_agent(&ids[1]);
    assert_eq!(list("order=asc".into()).await, [ids[0].clone(), ids[2].clone()]);
    assert_eq!(letta.requests("GET /v1/agents/"), 3);
}

/// A plain HTTP/1.1 GET over a TCP stream: the stand-in's tests need no HTTP client crate.
async fn reqwest_free_get(url: &str) -> Vec<Value> {
    let (status, body) = call(url, "GET", "", &[]).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// One HTTP/1.0 request (so the answer, even a stream, comes unchunked until close):
/// the status and the body.
async fn call(url: &str, method: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "{method} /{path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

const SDK: (&str, &str) = ("X-Stainless-Package-Version", "1.0.0");

async fn get_json(letta: &LettaStandin, path: &str) -> (u16, Value) {
    let (status, body) = call(&format!("{}{path}", letta.url()), "GET", "", &[SDK]).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn send(letta: &LettaStandin, agent: &str, body: Value) -> (u16, Value) {
    let url = format!("{}/v1/agents/{agent}/messages", letta.url());
    let (status, text) = call(&url, "POST", &body.to_string(), &[SDK]).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A streamed request's frames: `(event name, data)`.
async fn stream(letta: &LettaStandin, agent: &str, messages: Value) -> Vec<(Option<String>, String)> {
    let url = format!("{}/v1/agents/{agent}/messages", letta.url());
    let body = json!({"messages": messages, "streaming": true, "stream_tokens": true});
    let (status, text) = call(&url, "POST", &body.to_string(), &[SDK]).await;
    assert_eq!(status, 200, "{text}");
    text.split("\n\n")
        .filter(|frame| !frame.is_empty())
        .map(|frame| {
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_owned());
                } else if let Some(payload) = line.strip_prefix("data: ") {
                    data = payload.to_owned();
                }
            }
            (event, data)
        })
        .collect()
}

fn kinds(frames: &[(Option<String>, String)]) -> Vec<String> {
    frames
        .iter()
        .map(|(event, data)| match serde_json::from_str::<Value>(data) {
            Ok(value) => {
                let kind = value["message_type"].as_str().unwrap_or_default().to_owned();
                match value["stop_reason"].as_str() {
                    Some(reason) => format!("stop:{reason}"),
                    None => event.clone().map_or(kind.clone(), |e| format!("{e}:{kind}")),
                }
            }
            Err(_) => data.clone(),
        })
        .collect()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text, "otid": format!("otid-{text}")}])
}

fn ids_of(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn message_cursors_mean_newer_and_older_and_desc_pages_read_oldest_first() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    for n in 0..120 {
        letta.add_history(&agent, "user", &format!("m{n}"), "2026-11-01T00:00:00Z");
    }
    let all = letta.messages(&agent);
    let id = |n: usize| all[n]["id"].as_str().unwrap().to_owned();
    let page = |query: String| {
        let letta = &letta;
        let agent = agent.clone();
        async move { get_json(letta, &format!("/v1/agents/{agent}/messages?{query}")).await }
    };
    // Default: desc, limit 100 = the newest 100, oldest first.
    let (_, newest) = page(String::new()).await;
    let texts = ids_of(&newest);
    assert_eq!(
        (texts.len(), texts[0].as_str(), texts[99].as_str()),
        (100, "m20", "m119")
    );
    // `before` is older whatever the order; desc takes the newest of those.
    let (_, older) = page(format!("order=desc&limit=3&before={}", id(20))).await;
    assert_eq!(ids_of(&older), ["m17", "m18", "m19"]);
    let (_, older) = page(format!("order=asc&limit=3&before={}", id(20))).await;
    assert_eq!(ids_of(&older), ["m0", "m1", "m2"]);
    // `after` is newer whatever the order.
    let (_, newer) = page(format!("order=asc&limit=2&after={}", id(5))).await;
    assert_eq!(ids_of(&newer), ["m6", "m7"]);
    let (_, newer) = page(format!("order=desc&limit=2&after={}", id(5))).await;
    assert_eq!(ids_of(&newer), ["m118", "m119"]);
    let (_, both) = page(format!("after={}&before={}", id(5), id(8))).await;
    assert_eq!(ids_of(&both), ["m6", "m7"]);
    // Only the default conversation, which is all the stand-in has.
    let (_, default) = page("conversation_id=default&limit=1".into()).await;
    assert_eq!(ids_of(&default), ["m119"]);
    let (_, other) = page("conversation_id=conv-x".into()).await;
    assert_eq!(other, json!([]));
    let (status, missing) = page("before=message-gone".into()).await;
    assert_eq!(status, 404);
    assert_eq!(
        missing["detail"],
        format!("No message found with id 'message-gone' for agent '{agent}'.")
    );
}

#[tokio::test]
async fn a_step_s_reasoning_and_answer_share_an_id_and_count_as_one_row() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    letta.script_reasoning(&agent, "thinking");
    let frames = stream(&letta, &agent, user("hi")).await;
    let stored = letta.messages(&agent);
    let (reasoning, answer) = (&stored[1], &stored[2]);
    assert_eq!(reasoning["id"], answer["id"]);
    let id = answer["id"].as_str().unwrap();
    assert_eq!(reasoning["otid"], turn::otid_from_id(id, 0));
    assert_eq!(answer["otid"], turn::otid_from_id(id, 1));
    assert_ne!(reasoning["otid"], answer["otid"]);
    // Streamed chunks carry the stored id and otid.
    for (_, data) in &frames {
        let chunk: Value = serde_json::from_str(data).unwrap_or_default();
        if chunk["message_type"] == "assistant_message" {
            assert_eq!((&chunk["id"], &chunk["otid"]), (&answer["id"], &answer["otid"]));
        }
        if chunk["message_type"] == "reasoning_message" {
            assert_eq!((&chunk["id"], &chunk["otid"]), (&reasoning["id"], &reasoning["otid"]));
        }
    }
    // `limit` counts rows: the newest row is the reasoning and the answer together.
    let (_, page) = get_json(&letta, &format!("/v1/agents/{agent}/messages?limit=1")).await;
    let kinds: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reasoning_message", "assistant_message"]);
}

#[tokio::test]
async fn agent_listing_ignores_unknown_cursors_caps_pages_and_lists_sleeptime_companions() {
    let letta = LettaStandin::start().await;
    let ids: Vec<String> = (0..60).map(|n| letta.create_agent(&format!("a{n}"), None)).collect();
    let list = |query: String| {
        let letta = &letta;
        async move {
            let (status, page) = get_json(letta, &format!("/v1/agents/?{query}")).await;
            assert_eq!(status, 200);
            page.as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(String::new()).await.len(), 50, "the default limit");
    assert_eq!(list("limit=0".into()).await.len(), 60, "0 is all");
    assert_eq!(list("order=asc&after=agent-gone&limit=2".into()).await, ids[..2]);
    assert_eq!(list(format!("order=asc&after={}", ids[59])).await, Vec::<String>::new());
    letta.set_agent_page_cap(Some(7));
    assert_eq!(list("order=asc&limit=200".into()).await, ids[..7]);
    letta.set_agent_page_cap(None);

    let main = letta.create_agent_with(&json!({"name": "Sleepy", "enable_sleeptime": true}));
    let (_, newest) = get_json(&letta, "/v1/agents/?limit=2").await;
    let listed: Vec<(&str, &str)> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["agent_type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [("Sleepy-sleeptime", "sleeptime_agent"), ("Sleepy", "letta_v1_agent")]
    );
    let url = format!("{}/v1/agents/", letta.url());
    let body = json!({"name": "Old", "agent_type": "memgpt_v2_agent"}).to_string();
    let (_, created) = call(&url, "POST", &body, &[SDK]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&created).unwrap()["agent_type"],
        "memgpt_v2_agent"
    );
    letta.delete_agent(&main);
    assert_eq!(letta.agent_ids().len(), 61, "the companion goes with its agent");
}

#[tokio::test]
async fn stream_errors_and_stop_reasons_come_as_letta_sends_them() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    letta.script_error(&agent, "llm_error", "model down");
    let frames = stream(&letta, &agent, user("hi")).await;
    assert_eq!(
        kinds(&frames),
        ["ping", "stop:llm_api_error", "error:error_message", "[DONE]"]
    );
    let error: Value = serde_json::from_str(&frames[2].1).unwrap();
    assert_eq!(
        (&error["error_type"], &error["message"]),
        (&json!("llm_error"), &json!("model down"))
    );
    assert!(error["run_id"].as_str().unwrap().starts_with("run-"));
    assert!(letta.messages(&agent).is_empty(), "a failed step stores nothing");

    letta.script_reply(&agent, "cut sh");
    letta.script_stop_reason(&agent, "max_tokens_exceeded");
    let frames = stream(&letta, &agent, user("again")).await;
    let kinds = kinds(&frames);
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["stop:max_tokens_exceeded", "usage_statistics", "[DONE]"]
    );
    assert_eq!(letta.messages(&agent)[1]["content"], "cut sh");
}

#[tokio::test]
async fn an_approval_request_blocks_the_agent_until_answered() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    let url = letta.url();
    let body =
        json!({"source_code": "def lights(on: bool) -> str:\n    return 'ok'\n", "default_requires_approval": true});
    let (_, tool) = call(&format!("{url}/v1/tools/"), "POST", &body.to_string(), &[SDK]).await;
    let tool: Value = serde_json::from_str(&tool).unwrap();
    assert_eq!(tool["name"], "lights");
    let tool_id = tool["id"].as_str().unwrap();
    let attach = format!("{url}/v1/agents/{agent}/tools/attach/{tool_id}");
    assert_eq!(call(&attach, "PATCH", "", &[SDK]).await, (200, "null".to_owned()));

    letta.script_tool_call(&agent, "lights", r#"{"on": true}"#);
    let frames = stream(&letta, &agent, user("lights on")).await;
    let kinds = kinds(&frames);
    assert_eq!(kinds[0], "ping");
    assert!(
        kinds[1..kinds.len() - 3]
            .iter()
            .all(|k| k == "approval_request_message"),
        "{kinds:?}"
    );
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["stop:requires_approval", "usage_statistics", "[DONE]"]
    );
    let chunks: Vec<Value> = frames[1..frames.len() - 3]
        .iter()
        .map(|f| serde_json::from_str(&f.1).unwrap())
        .collect();
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["tool_call"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, r#"{"on": true}"#);
    assert_eq!(chunks[0]["tool_call"]["name"], "lights");
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == chunks[0]["id"] && c["otid"] == chunks[0]["otid"])
    );
    let call_id = chunks[0]["tool_call"]["tool_call_id"].as_str().unwrap().to_owned();

    // Pending: the agent shows it, a stream gets an in-stream conflict, a plain send a 409.
    let (_, shown) = get_json(&letta, &format!("/v1/agents/{agent}?include=agent.pending_approval")).await;
    assert_eq!(
        shown["pending_approval"]["tool_calls"][0]["tool_call_id"],
        call_id.as_str()
    );
    let frames = stream(&letta, &agent, user("hello?")).await;
    assert_eq!(
        self::kinds(&frames),
        ["ping", "stop:error", "error:error_message", "[DONE]"]
    );
    assert!(frames[2].1.contains("waiting for approval"));
    let (status, refused) = send(&letta, &agent, json!({"messages": user("hello?")})).await;
    assert_eq!(status, 409);
    assert_eq!(refused["detail"]["code"], "PENDING_APPROVAL");
    assert_eq!(refused["detail"]["pending_request_id"], shown["pending_approval"]["id"]);

    let deny = |id: &str| json!({"messages": [{"type": "approval", "approvals": [{"type": "approval", "tool_call_id": id, "approve": false, "reason": "not now"}]}]});
    let (status, wrong) = send(&letta, &agent, deny("call_other")).await;
    assert_eq!(status, 400);
    assert_eq!(
        wrong["detail"],
        format!("Invalid tool call IDs. Expected '['{call_id}']', but received '['call_other']'.")
    );
    let (status, answered) = send(&letta, &agent, deny(&call_id)).await;
    assert_eq!(status, 200, "{answered}");
    let said: Vec<&str> = answered["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(said, ["tool_return_message", "assistant_message"]);
    assert_eq!(answered["messages"][1]["content"], "The tool call was denied: not now");
    assert_eq!(answered["messages"][0]["status"], "error");
    assert!(letta.pending_approval(&agent).is_none());
    let stored: Vec<String> = letta
        .messages(&agent)
        .iter()
        .map(|m| m["message_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored,
        [
            "user_message",
            "approval_request_message",
            "approval_response_message",
            "tool_return_message",
            "assistant_message"
        ]
    );
    let (status, nothing) = send(&letta, &agent, deny(&call_id)).await;
    assert_eq!(status, 400);
    assert!(
        nothing["detail"]
            .as_str()
            .unwrap()
            .starts_with("Cannot process approval response")
    );
}

#[tokio::test]
async fn a_tool_without_approval_runs_within_the_turn() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    let tool = letta.create_tool("lights", false);
    letta.attach_tool(&agent, &tool);
    letta.script_tool_call(&agent, "lights", "{}");
    let frames = stream(&letta, &agent, user("go")).await;
    let mut kinds = kinds(&frames);
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ping",
            "tool_call_message",
            "tool_return_message",
            "assistant_message",
            "stop:end_turn",
            "usage_statistics",
            "[DONE]"
        ]
    );
    // An approval rule set by name makes the next call wait.
    let url = format!("{}/v1/agents/{agent}/tools/approval/lights", letta.url());
    let (status, _) = call(&url, "PATCH", r#"{"requires_approval": true}"#, &[SDK]).await;
    assert_eq!(status, 200);
    letta.script_tool_call(&agent, "lights", "{}");
    stream(&letta, &agent, user("again")).await;
    assert!(letta.pending_approval(&agent).is_some());
}

#[tokio::test]
async fn a_token_guards_everything_but_health_and_headers_are_kept() {
    let letta = LettaStandin::start_on("127.0.0.1:0".parse().unwrap(), Some("secret".into()))
        .await
        .unwrap();
    let url = letta.url();
    assert_eq!(call(&format!("{url}/v1/health/"), "GET", "", &[]).await.0, 200);
    let (status, body) = call(&format!("{url}/v1/agents/"), "GET", "", &[]).await;
    assert_eq!((status, body.as_str()), (401, r#"{"detail":"Unauthorized"}"#));
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(call(&format!("{url}/v1/agents/"), "GET", "", &wrong).await.0, 401);
    let right = [("Authorization", "Bearer secret"), ("X-Project", "demo")];
    assert_eq!(call(&format!("{url}/v1/agents/"), "GET", "", &right).await.0, 200);
    let headers = letta.last_headers("GET /v1/agents/").unwrap();
    assert_eq!(headers["x-project"], "demo");
}

#[tokio::test]
async fn concurrent_turns_of_one_agent_all_succeed() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    letta.set_latency(&agent, Duration::from_millis(200), Duration::ZERO);
    let turns = (0..3).map(|n| send(&letta, &agent, json!({"messages": user(&format!("m{n}"))})));
    let statuses: Vec<u16> = futures::future::join_all(turns)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(statuses, [200, 200, 200]);
    assert_eq!(letta.max_concurrent(&agent), 3);
}

#[test]
fn ids_for_names_are_stable_and_distinct() {
    assert_eq!(agent_id_for("Ada"), agent_id_for("Ada"));
    assert_ne!(agent_id_for("Ada"), agent_id_for("Grace"));
    assert!(agent_id_for("Ada").starts_with("agent-"));
    assert_eq!(agent_id_for("Ada").len(), uuid_like(0).len() + "agent-".len());
}
