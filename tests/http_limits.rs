//! Slow and idle clients against the real binary over TCP: half-open connections, slow heads and
//! slow bodies are cut off, idle keep-alive connections closed, and the connection cap holds
//! without stopping the service.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::service::{Installation, Served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any deadline below: a connection still open after it was never closed.
const PATIENCE: Duration = Duration::from_secs(30);

async fn served(settings: &[(&str, &str)]) -> (Installation, Served, String) {
    let mut install = Installation::new("limits.test");
    for (key, value) in settings {
        install.set(key, *value);
    }
    let hs_token = install.write_registration().await.hs_token;
    let served = install.serve().await.unwrap();
    (install, served, hs_token)
}

async fn connect(install: &Installation) -> TcpStream {
    TcpStream::connect(("127.0.0.1", install.port)).await.unwrap()
}

/// Reads until the server closes the connection; what it sent, or `None` if it never closed.
async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await {
        Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
        Err(_) => None,
    }
}

async fn health(install: &Installation) -> reqwest::StatusCode {
    reqwest::get(format!("{}/health", install.base_url()))
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn half_open_connections_and_slow_heads_are_closed() {
    let (install, _served, _) = served(&[("LETTA_MATRIX_HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let mut connections = Vec::new();
    for n in 0..300 {
        let mut stream = connect(&install).await;
        // Half of them send nothing; the others start a head and never finish it.
        if n % 2 == 1 {
            stream
                .write_all(b"PUT /_matrix/app/v1/transactions/1 HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        connections.push(stream);
    }
    let closed = futures::future::join_all(connections.iter_mut().map(read_to_close)).await;
    assert!(closed.iter().all(Option::is_some), "every connection was closed");
    assert_eq!(health(&install).await, 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (install, _served, _) = served(&[("LETTA_MATRIX_HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let mut connections = Vec::new();
    for _ in 0..50 {
        let mut stream = connect(&install).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        connections.push(stream);
    }
    let closed = futures::future::join_all(connections.iter_mut().map(read_to_close)).await;
    for answer in closed {
        let answer = answer.expect("the idle connection was closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "answered before it idled: {answer}");
    }
}

#[tokio::test]
async fn a_slow_body_is_cut_off_with_408() {
    let (install, _served, hs_token) = served(&[("LETTA_MATRIX_HTTP_BODY_TIMEOUT_MS", "1000")]).await;
    let mut stream = connect(&install).await;
    let head = format!(
        "PUT /_matrix/app/v1/transactions/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hs_token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 100 ms, long past the deadline, until the answer comes.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    let answered = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            received.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&received).ends_with('}') {
                break;
            }
        }
    })
    .await;
    trickle.abort();
    assert!(answered.is_ok(), "the slow body was cut off");
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(body["errcode"], "M_UNKNOWN", "{answer}");
    assert_eq!(health(&install).await, 200);
}

#[tokio::test]
async fn the_connection_cap_holds_and_the_service_answers_after() {
    let (install, _served, _) = served(&[("LETTA_MATRIX_HTTP_MAX_CONNECTIONS", "5")]).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(connect(&install).await);
    }
    let mut waiting = connect(&install).await;
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), waiting.read(&mut first)).await;
    assert!(early.is_err(), "a sixth connection was served while five were open");
    drop(idle);
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, waiting.read_to_end(&mut answer))
        .await
        .expect("answered once the others closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(health(&install).await, 200);
}
