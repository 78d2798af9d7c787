//! The HTTP surface the homeserver sees, in process against a real SQLite file: authentication,
//! transactions, queries, ops routes, and a clear Matrix error for every kind of bad input.

mod support;

use axum::body::Body;
use http::{Request, StatusCode};
use letta_matrix::app::{AppState, router};
use letta_matrix::config::Settings;
use letta_matrix::registration;
use letta_matrix::store::{InboxState, Store};
use serde_json::{Value, json};
use support::db::TestDatabase;
use tower::ServiceExt;

const SERVER: &str = "example.org";

struct Harness {
    router: axum::Router,
    state: AppState,
    hs_token: String,
    store: Store,
    _db: TestDatabase,
}

async fn harness_with(extra_env: &[(&str, &str)]) -> Harness {
    harness_on(TestDatabase::sqlite(), extra_env).await
}

async fn harness_on(db: TestDatabase, extra_env: &[(&str, &str)]) -> Harness {
    let mut env = vec![
        ("LETTA_MATRIX_SERVER_NAME".to_string(), SERVER.to_string()),
        (
            "LETTA_MATRIX_HOMESERVER_URL".to_string(),
            "http://127.0.0.1:9".to_string(),
        ),
        ("LETTA_MATRIX_DATABASE_URL".to_string(), db.url.clone()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::from_parts("", None, &env).unwrap();
    let registration = registration::build(&settings, None);
    let store = db.open().await;
    let state = AppState::new(settings, store.clone(), &registration);
    Harness {
        router: router(state.clone(), true),
        state,
        hs_token: registration.hs_token,
        store,
        _db: db,
    }
}

async fn harness() -> Harness {
    harness_with(&[]).await
}

impl Harness {
    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    fn put_transaction(&self, txn_id: &str, body: impl Into<Body>) -> Request<Body> {
        Request::put(format!("/_matrix/app/v1/transactions/{txn_id}"))
            .header("Authorization", format!("Bearer {}", self.hs_token))
            .header("Content-Type", "application/json")
            .body(body.into())
            .unwrap()
    }

    fn get(&self, path: &str) -> Request<Body> {
        Request::get(path)
            .header("Authorization", format!("Bearer {}", self.hs_token))
            .body(Body::empty())
            .unwrap()
    }

    async fn stored(&self) -> i64 {
        self.store.inbox_count(InboxState::Pending).await.unwrap()
    }
}

fn text_event(n: u32) -> Value {
    json!({
        "type": "m.room.message", "event_id": format!("$ev{n}"), "room_id": "!room:example.org",
        "sender": "@alice:example.org", "origin_server_ts": 1_700_000_000_000u64 + u64::from(n),
        "content": {"msgtype": "m.text", "body": format!("hello {n}")}
    })
}

fn transaction(events: Vec<Value>) -> String {
    json!({"events": events}).to_string()
}

fn assert_matrix_error(response: &(StatusCode, Value), status: StatusCode, errcode: &str) {
    assert_eq!(response.0, status, "{response:?}");
    assert_eq!(response.1["errcode"], errcode, "{response:?}");
    assert!(
        response.1["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{response:?}"
    );
}

#[tokio::test]
async fn transaction_is_stored_and_replay_is_acknowledged_without_storing() {
    let h = harness().await;
    let body = transaction(vec![text_event(1), text_event(2)]);
    let first = h.call(h.put_transaction("txn1", body.clone())).await;
    assert_eq!(first, (StatusCode::OK, json!({})));
    assert_eq!(h.stored().await, 2);
    let replay = h.call(h.put_transaction("txn1", body)).await;
    assert_eq!(replay, (StatusCode::OK, json!({})));
    assert_eq!(h.stored().await, 2);
    let lane = h.store.inbox_for_room("!room:example.org").await.unwrap();
    assert_eq!(
        lane.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["$ev1", "$ev2"]
    );
}

#[tokio::test]
async fn legacy_query_token_is_accepted() {
    let h = harness().await;
    let request = Request::put(format!("/_matrix/app/v1/transactions/q1?access_token={}", h.hs_token))
        .body(Body::from(transaction(vec![text_event(1)])))
        .unwrap();
    assert_eq!(h.call(request).await.0, StatusCode::OK);
    assert_eq!(h.stored().await, 1);
}

#[tokio::test]
async fn missing_or_wrong_token_is_refused_and_nothing_stored() {
    let h = harness().await;
    let body = transaction(vec![text_event(1)]);
    let missing = Request::put("/_matrix/app/v1/transactions/a")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_matrix_error(&h.call(missing).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let wrong = Request::put("/_matrix/app/v1/transactions/a")
        .header("Authorization", "Bearer not-the-token")
        .body(Body::from(body))
        .unwrap();
    assert_matrix_error(&h.call(wrong).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let query = Request::get("/_matrix/app/v1/users/@letta_bot:example.org")
        .body(Body::empty())
        .unwrap();
    assert_matrix_error(&h.call(query).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    assert_eq!(h.stored().await, 0);
    assert!(!h.store.is_transaction_processed("a").await.unwrap());
}

#[tokio::test]
async fn malformed_bodies_get_matrix_errors_and_nothing_stored() {
    let h = harness().await;
    assert_matrix_error(
        &h.call(h.put_transaction("b1", "{not json")).await,
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
    );
    assert_matrix_error(
        &h.call(h.put_transaction("b2", r#"{"events": 5}"#)).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_matrix_error(
        &h.call(h.put_transaction("b3", "[1,2]")).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_eq!(h.stored().await, 0);
    for txn in ["b1", "b2", "b3"] {
        assert!(
            !h.store.is_transaction_processed(txn).await.unwrap(),
            "{txn} must stay retryable"
        );
    }
}

#[tokio::test]
async fn oversized_body_is_refused_whether_declared_or_streamed() {
    let h = harness_with(&[("LETTA_MATRIX_MAX_BODY_BYTES", "2048")]).await;
    let big = transaction((0..40).map(text_event).collect());
    assert!(big.len() > 2048);
    assert_matrix_error(
        &h.call(h.put_transaction("big", big.clone())).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // Without a Content-Length the limit must still hold while reading.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let streamed = h.put_transaction("big2", Body::from_stream(futures::stream::iter(chunks)));
    assert_matrix_error(&h.call(streamed).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    assert_eq!(h.stored().await, 0);
    let small = transaction(vec![text_event(1)]);
    assert_eq!(h.call(h.put_transaction("small", small)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_unrecognized() {
    let h = harness().await;
    assert_matrix_error(
        &h.call(h.get("/_matrix/app/v1/nothing")).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_matrix_error(
        &h.call(h.get("/elsewhere")).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    let wrong_method = h.get("/_matrix/app/v1/transactions/x");
    assert_matrix_error(
        &h.call(wrong_method).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
}

#[tokio::test]
async fn user_and_alias_queries_answer_only_for_what_we_know() {
    let h = harness().await;
    assert_eq!(
        h.call(h.get("/_matrix/app/v1/users/@letta_bot:example.org")).await,
        (StatusCode::OK, json!({}))
    );
    let unknown = h.call(h.get("/_matrix/app/v1/users/@letta_agent-1:example.org")).await;
    assert_matrix_error(&unknown, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let outside = h.call(h.get("/_matrix/app/v1/users/@alice:example.org")).await;
    assert_matrix_error(&outside, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_matrix_error(
        &h.call(h.get("/_matrix/app/v1/users/alice")).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    h.store
        .insert_agent("agent-1", "@letta_agent-1:example.org", "Helper", None)
        .await
        .unwrap();
    assert_eq!(
        h.call(h.get("/_matrix/app/v1/users/@letta_agent-1:example.org"))
            .await
            .0,
        StatusCode::OK
    );

    let alias = "/_matrix/app/v1/rooms/%23letta_agent-1:example.org";
    assert_matrix_error(&h.call(h.get(alias)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    h.store
        .set_agent_room("agent-1", "!r:example.org", Some("#letta_agent-1:example.org"))
        .await
        .unwrap();
    assert_eq!(h.call(h.get(alias)).await, (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn ping_answers_empty_object() {
    let h = harness().await;
    let ping = Request::post("/_matrix/app/v1/ping")
        .header("Authorization", format!("Bearer {}", h.hs_token))
        .body(Body::from(r#"{"transaction_id":"p1"}"#))
        .unwrap();
    assert_eq!(h.call(ping).await, (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn ops_routes_report_health_readiness_and_metrics() {
    let h = harness().await;
    let plain = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(h.call(plain("/health")).await.1["status"], "ok");
    let ready = h.call(plain("/ready")).await;
    assert_eq!((ready.0, ready.1["database"].as_str()), (StatusCode::OK, Some("ok")));
    h.call(h.put_transaction("m1", transaction(vec![text_event(7)]))).await;
    let (status, Value::String(metrics)) = h.call(plain("/metrics")).await else {
        panic!("metrics are text")
    };
    assert_eq!(status, StatusCode::OK);
    for name in [
        "letta_matrix_transactions_received_total",
        "letta_matrix_events_stored_total",
        "letta_matrix_http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    h.store.close().await;
    let unready = h.call(plain("/ready")).await;
    assert_eq!(unready.0, StatusCode::SERVICE_UNAVAILABLE, "{unready:?}");
}

#[tokio::test]
async fn a_reused_transaction_id_with_new_events_is_stored() {
    let h = harness().await;
    let ok = (StatusCode::OK, json!({}));
    assert_eq!(
        h.call(h.put_transaction("1", transaction(vec![text_event(1)]))).await,
        ok
    );
    // Synapse on SQLite numbers transactions from 1 again after a restart.
    let after_restart = transaction(vec![text_event(2), text_event(3)]);
    assert_eq!(h.call(h.put_transaction("1", after_restart.clone())).await, ok);
    assert_eq!(h.stored().await, 3, "the new events behind the old id are stored");
    assert_eq!(h.call(h.put_transaction("1", after_restart)).await, ok);
    assert_eq!(h.stored().await, 3);
    let (_, Value::String(metrics)) = h.call(Request::get("/metrics").body(Body::empty()).unwrap()).await else {
        panic!("metrics are text")
    };
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("letta_matrix_transactions_reused_total")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_json_array_is_not_a_transaction() {
    let h = harness().await;
    // serde would read the array positionally as the struct's `events` field.
    let array = json!([[text_event(1)]]).to_string();
    assert_matrix_error(
        &h.call(h.put_transaction("arr", array)).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_eq!(h.stored().await, 0);
    assert!(!h.store.is_transaction_processed("arr").await.unwrap());
}

on_both_engines!(what_cannot_be_stored_is_acknowledged_and_the_rest_stored);

/// What PostgreSQL cannot store (a NUL, a 10,000-character key) must not fail the transaction:
/// the homeserver would retry it forever and deliver nothing after it.
async fn what_cannot_be_stored_is_acknowledged_and_the_rest_stored(db: TestDatabase) {
    let h = harness_on(db, &[]).await;
    let ok = (StatusCode::OK, json!({}));
    let long_id = "7".repeat(10_000);
    assert_eq!(
        h.call(h.put_transaction(&long_id, transaction(vec![text_event(1)])))
            .await,
        ok
    );
    assert_eq!(
        h.call(h.put_transaction("a%00b", transaction(vec![text_event(2)])))
            .await,
        ok
    );
    let mut nul_events = Vec::new();
    for field in ["event_id", "room_id", "sender"] {
        let mut event = text_event(10 + nul_events.len() as u32);
        let value = event[field].as_str().unwrap().to_owned();
        event[field] = json!(format!("{}\0{}", &value[..1], &value[1..]));
        nul_events.push(event);
    }
    nul_events.push(text_event(3));
    assert_eq!(h.call(h.put_transaction("nul", transaction(nul_events))).await, ok);
    let lane: Vec<String> = h
        .store
        .inbox_for_room("!room:example.org")
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.event_id)
        .collect();
    assert_eq!(lane, ["$ev1", "$ev2", "$ev3"]);
    assert_eq!(
        h.call(h.put_transaction(&long_id, transaction(vec![text_event(1)])))
            .await,
        ok
    );
    assert!(h.store.is_transaction_processed("a\0b").await.unwrap());
}

#[tokio::test]
async fn ready_answers_at_once_when_the_database_is_gone() {
    let mut db = TestDatabase::postgres().await;
    let url = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = support::proxy::TcpProxy::start(target.parse().unwrap()).await;
    db.url = db.url.replacen(&target, &proxy.address.to_string(), 1);
    let h = harness_on(db, &[]).await;
    let ready = || Request::get("/ready").body(Body::empty()).unwrap();
    assert_eq!(h.call(ready()).await.0, StatusCode::OK);
    proxy.cut().await;
    // The pool alone would keep the probe waiting its 10 s acquire timeout.
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(5), h.call(ready()))
        .await
        .expect("/ready answers while the database is down");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(body["database"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

const ADMIN_TOKEN: &str = "admin-token-for-the-http-tests-0123456789";
const MCP_SECRET: &str = "mcp-secret-for-the-http-tests-0123456789";

#[tokio::test]
async fn a_lowercase_bearer_scheme_is_accepted_on_every_route() {
    let h = harness_with(&[
        ("LETTA_MATRIX_ADMIN_TOKEN", ADMIN_TOKEN),
        ("LETTA_MATRIX_MCP_SECRET", MCP_SECRET),
    ])
    .await;
    let with = |request: http::request::Builder, token: &str| {
        request
            .header("Authorization", format!("bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let query = with(
        Request::get("/_matrix/app/v1/users/@letta_bot:example.org"),
        &h.hs_token,
    );
    assert_eq!(h.call(query).await.0, StatusCode::OK);
    assert_eq!(
        h.call(with(Request::get("/status"), ADMIN_TOKEN)).await.0,
        StatusCode::OK
    );
    let import = with(Request::post("/admin/agents/agent-x/import-history"), ADMIN_TOKEN);
    assert_matrix_error(&h.call(import).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let mcp = letta_matrix::mcp::router(&h.state).unwrap();
    let token = letta_matrix::mcp::agent_token(&letta_matrix::config::Secret::new(MCP_SECRET), "agent-1");
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let request = Request::post("/mcp")
            .header("Host", "letta-matrix")
            .header("Authorization", format!("{scheme} {token}"))
            .header("x-agent-id", "agent-1")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(Body::from(initialize.to_string()))
            .unwrap();
        let response = mcp.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{scheme}: {}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test]
async fn undecodable_paths_and_wrong_methods_get_matrix_errors() {
    let h = harness_with(&[("LETTA_MATRIX_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    for path in ["/_matrix/app/v1/users/%FF", "/_matrix/app/v1/rooms/%23a%FF"] {
        assert_matrix_error(&h.call(h.get(path)).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    }
    let txn = h.put_transaction("%FF", transaction(vec![text_event(1)]));
    assert_matrix_error(&h.call(txn).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let import = Request::post("/admin/agents/%FF/import-history")
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_matrix_error(&h.call(import).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    for (method, path) in [
        ("GET", "/admin/agents/a/import-history"),
        ("DELETE", "/status"),
        ("POST", "/ready"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
            .unwrap();
        assert_matrix_error(&h.call(request).await, StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED");
    }
}
