//! The Letta client against the stand-in, which serves Letta 0.16.8's captured shapes: paging,
//! errors, retries.

use std::time::Duration;

use letta_matrix::config::Secret;
use letta_matrix::letta::{LettaClient, LettaError};
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
    assert_eq!(letta.requests("GET /v1/agents/"), 3, "pages of 200: 200 + 200 + 50");
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
