//! The Letta client against the stand-in, which serves Letta 0.16.8's captured shapes: paging,
//! errors, retries.

use std::time::Duration;

use letta_matrix::config::Secret;
use letta_matrix::letta::{LettaClient, LettaError, MessageCreate, StopReason, StreamEvent, find_turn};
use letta_matrix::outbound::RetryPolicy;
use letta_standin::LettaStandin;

fn client(letta: &LettaStandin, token: Option<&str>) -> LettaClient {
    let retry = RetryPolicy {
        attempts: 4,
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };
    LettaClient::new(letta.url().parse().unwrap(), token.map(Secret::new)).with_retry(retry)
}

#[tokio::test]
async fn lists_every_agent_across_pages_oldest_first() {
    let letta = LettaStandin::start().await;
    let created: Vec<String> = (0..450)
        .map(|n| letta.create_agent(&format!("agent {n}"), None))
        .collect();
    let listed = client(&letta, None).list_agents().await.unwrap();
    assert_eq!(listed.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), created);
    assert_eq!(listed[7].name, "agent 7");
    assert_eq!(
        letta.requests("GET /v1/agents/"),
        4,
        "pages of 200: 200 + 200 + 50, then an empty one proves the end"
    );
}

#[tokio::test]
async fn unknown_agent_and_bad_token_are_named() {
    let letta = LettaStandin::start_on("127.0.0.1:0".parse().unwrap(), Some("right".into()))
        .await
        .unwrap();
    let id = letta.create_agent("Helper", Some("helps"));
    let agent = client(&letta, Some("right")).agent(&id).await.unwrap();
    assert_eq!(
        (agent.name.as_str(), agent.description.as_deref()),
        ("Helper", Some("helps"))
    );
    let missing = client(&letta, Some("right")).agent("agent-missing").await.unwrap_err();
    assert!(matches!(missing, LettaError::NotFound { .. }), "{missing}");
    let refused = client(&letta, Some("wrong")).list_agents().await.unwrap_err();
    assert!(matches!(refused, LettaError::Unauthorized { status: 401 }), "{refused}");
    assert!(refused.to_string().contains("letta_token"));
    assert_eq!(letta.requests("GET /v1/agents/"), 1, "a refused token is not retried");
}

#[tokio::test]
async fn server_errors_are_retried_until_letta_recovers() {
    let letta = LettaStandin::start().await;
    letta.create_agent("Helper", None);
    letta.set_failing(Some(500));
    let recovery = async {
        tokio::time::sleep(Duration::from_millis(120)).await;
        letta.set_failing(None);
    };
    let retrying = client(&letta, None);
    let (listed, ()) = tokio::join!(retrying.list_agents(), recovery);
    assert_eq!(listed.unwrap().len(), 1);
    assert!(letta.requests("GET /v1/agents/") >= 2);

    letta.set_failing(Some(503));
    let error = client(&letta, None).list_agents().await.unwrap_err();
    assert!(matches!(error, LettaError::Status { status: 503, .. }), "{error}");
    assert!(error.to_string().contains("503"));
}

#[tokio::test]
async fn unreachable_letta_says_where_it_looked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client =
        LettaClient::new(format!("http://127.0.0.1:{port}").parse().unwrap(), None).with_retry(RetryPolicy::once());
    let error = client.health().await.unwrap_err();
    assert!(matches!(error, LettaError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains(&port.to_string()), "{error}");
}

async fn collect_turn(client: &LettaClient, agent: &str, messages: &[MessageCreate]) -> Vec<StreamEvent> {
    use futures::StreamExt;
    let stream = client.stream_turn(agent, messages).await.unwrap();
    stream.map(|event| event.unwrap()).collect().await
}

#[tokio::test]
async fn a_streamed_turn_arrives_token_by_token_and_is_stored_with_name_and_otid() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    letta.set_chunk_chars(3);
    letta.script_reply(&agent, "Héllo there");
    let client = client(&letta, None);
    let asked = MessageCreate::user("hi".into(), Some("alice".into()), "otid-1".into());
    let events = collect_turn(&client, &agent, std::slice::from_ref(&asked)).await;
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Assistant { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, ["Hél", "lo ", "the", "re"]);
    assert_eq!(events.first(), Some(&StreamEvent::Other), "a ping first");
    assert_eq!(
        &events[events.len() - 3..],
        [
            StreamEvent::Stop(StopReason::EndTurn),
            StreamEvent::Other,
            StreamEvent::Done
        ]
    );

    // The default answer repeats the last message; the history holds both turns, findable by otid.
    let second = MessageCreate::user("again".into(), None, "otid-2".into());
    collect_turn(&client, &agent, &[second]).await;
    let history = client.recent_messages(&agent, 10).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|m| m.message_type.as_str()).collect();
    assert_eq!(
        kinds,
        ["user_message", "assistant_message", "user_message", "assistant_message"]
    );
    let (user, answers) = find_turn(&history, "otid-1").unwrap();
    assert_eq!((user.text(), user.name.as_deref()), ("hi".to_owned(), Some("alice")));
    assert_eq!(answers.iter().map(|a| a.text()).collect::<Vec<_>>(), ["Héllo there"]);
    assert_eq!(find_turn(&history, "otid-2").unwrap().1[0].text(), "You said: again");
    assert_eq!(letta.max_concurrent(&agent), 1);
}

#[tokio::test]
async fn streaming_needs_the_sdk_header_and_refusals_are_typed() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    // Letta takes a client with no User-Agent for a 1.0 SDK; one naming itself otherwise is legacy.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/messages", letta.url()))
        .header(reqwest::header::USER_AGENT, "letta-matrix/0.1")
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "streaming": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422, "a real Letta refuses old clients a stream");
    let client = client(&letta, None);
    let asked = [MessageCreate::user("hi".into(), None, "o".into())];
    assert!(matches!(
        client.stream_turn("agent-missing", &asked).await.err(),
        Some(LettaError::NotFound { .. })
    ));
    letta.set_failing(Some(409));
    assert!(matches!(
        client.stream_turn(&agent, &asked).await.err(),
        Some(LettaError::Busy { .. })
    ));
    letta.set_failing(Some(500));
    assert!(matches!(
        client.stream_turn(&agent, &asked).await.err(),
        Some(LettaError::Status { status: 500, .. })
    ));
}

#[tokio::test]
async fn concurrent_turns_of_one_agent_are_counted() {
    let letta = LettaStandin::start().await;
    let agent = letta.create_agent("Helper", None);
    letta.set_latency(&agent, Duration::from_millis(300), Duration::ZERO);
    let client = client(&letta, None);
    let turns = (0..3).map(|n| {
        let client = client.clone();
        let agent = agent.clone();
        async move {
            let asked = [MessageCreate::user(format!("m{n}"), None, format!("o{n}"))];
            collect_turn(&client, &agent, &asked).await
        }
    });
    futures::future::join_all(turns).await;
    assert_eq!(
        letta.max_concurrent(&agent),
        3,
        "the stand-in, like Letta 0.16.8, runs them interleaved"
    );
    assert_eq!(letta.user_messages(&agent).len(), 3);
}

#[tokio::test]
async fn the_cloud_project_goes_with_every_request_and_check_names_it() {
    let letta = LettaStandin::start().await;
    letta.create_agent("Helper", None);
    let env = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    };
    let settings = letta_matrix::config::Settings::from_parts(
        "letta_project = \"team-bots\"",
        None,
        &env(&[
            ("LETTA_MATRIX_SERVER_NAME", "example.org".into()),
            ("LETTA_MATRIX_HOMESERVER_URL", "http://127.0.0.1:9".into()),
            ("LETTA_MATRIX_LETTA_URL", letta.url()),
        ]),
    )
    .unwrap();
    let client = LettaClient::from_settings(&settings);
    client.list_agents().await.unwrap();
    let headers = letta.last_headers("GET /v1/agents/").expect("a request was made");
    assert_eq!(
        headers.get("x-project").and_then(|v| v.to_str().ok()),
        Some("team-bots")
    );
    assert!(headers.contains_key("x-stainless-package-version"));

    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_letta-matrix"))
        .current_dir(dir.path())
        .arg("check")
        .env("LETTA_MATRIX_SERVER_NAME", "example.org")
        .env("LETTA_MATRIX_HOMESERVER_URL", "http://127.0.0.1:9")
        .env("LETTA_MATRIX_LETTA_URL", letta.url())
        .env("LETTA_MATRIX_LETTA_PROJECT", "team-bots")
        .env("LETTA_MATRIX_LOG_FILTER", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ok   letta project: project `team-bots` (X-Project header): 1 agent(s) visible"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_server_that_caps_the_page_size_is_still_listed_whole() {
    let letta = LettaStandin::start().await;
    let created: Vec<String> = (0..7)
        .map(|n| letta.create_agent(&format!("agent {n}"), None))
        .collect();
    letta.set_agent_page_cap(Some(3));
    let listed = client(&letta, None).list_agents().await.unwrap();
    assert_eq!(listed.into_iter().map(|a| a.id).collect::<Vec<_>>(), created);
    assert_eq!(letta.requests("GET /v1/agents/"), 4, "3 + 3 + 1, then the empty page");
}
