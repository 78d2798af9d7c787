use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// One HTTP/1.0 exchange over a plain TCP stream (the stand-in's tests need no HTTP client
/// crate; HTTP/1.0 makes the server end a streamed body by closing the connection).
struct Exchange {
    status: u16,
    head: String,
    body: String,
    /// Each SSE `data:` payload with the time its last byte arrived, from sending the request.
    events: Vec<(Duration, String)>,
}

async fn exchange(standin: &ModelStandin, method: &str, path: &str, body: Option<&Value>) -> Exchange {
    let address = standin.address();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let start = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut arrivals = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await.unwrap();
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&buffer[..read]);
        arrivals.push((raw.len(), start.elapsed()));
    }
    let text = String::from_utf8(raw).unwrap();
    let head_end = text.find("\r\n\r\n").expect("a response head") + 4;
    let head = text[..head_end].to_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text[head_end..].to_owned();
    let mut events = Vec::new();
    let mut offset = head_end;
    for event in body.split_inclusive("\n\n") {
        offset += event.len();
        if let Some(data) = event.strip_prefix("data: ") {
            let arrived = arrivals.iter().find(|(length, _)| *length >= offset).unwrap().1;
            events.push((arrived, data.trim_end().to_owned()));
        }
    }
    Exchange {
        status,
        head,
        body,
        events,
    }
}

/// An unstreamed completion, which must succeed.
async fn complete(standin: &ModelStandin, request: Value) -> Value {
    let reply = exchange(standin, "POST", "/v1/chat/completions", Some(&request)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// A streamed completion, which must succeed: the chunks, checked to end with `[DONE]`.
async fn stream(standin: &ModelStandin, mut request: Value) -> Vec<(Duration, Value)> {
    request["stream"] = json!(true);
    let reply = exchange(standin, "POST", "/v1/chat/completions", Some(&request)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.head.contains("text/event-stream"), "{}", reply.head);
    let (done, chunks) = reply.events.split_last().expect("events");
    assert_eq!(done.1, "[DONE]");
    chunks
        .iter()
        .map(|(at, data)| (*at, serde_json::from_str(data).unwrap()))
        .collect()
}

/// What a client makes of streamed chunks: the content, the calls as (id, name, arguments) and
/// the finish reason.
struct Reassembled {
    content: String,
    calls: Vec<(String, String, String)>,
    finish_reason: String,
}

fn reassemble(chunks: &[(Duration, Value)]) -> Reassembled {
    let mut reassembled = Reassembled {
        content: String::new(),
        calls: Vec::new(),
        finish_reason: String::new(),
    };
    for (_, chunk) in chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(content) = delta["content"].as_str() {
            reassembled.content.push_str(content);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().expect("every tool-call delta has an index") as usize;
            if index == reassembled.calls.len() {
                reassembled.calls.push(Default::default());
            }
            let (id, name, arguments) = &mut reassembled.calls[index];
            id.push_str(call["id"].as_str().unwrap_or_default());
            name.push_str(call["function"]["name"].as_str().unwrap_or_default());
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            reassembled.finish_reason = reason.to_owned();
        }
    }
    reassembled
}

fn user(model: &str, text: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful agent."},
            {"role": "user", "content": text},
        ],
    })
}

fn with_send_message(mut request: Value, tool_choice: &str) -> Value {
    request["tools"] = json!([
        {"type": "function", "function": {"name": "archival_memory_search", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "send_message", "parameters": {
            "type": "object",
            "properties": {"message": {"type": "string"}, "request_heartbeat": {"type": "boolean"}},
            "required": ["message", "request_heartbeat"],
        }}},
    ]);
    request["tool_choice"] = json!(tool_choice);
    request
}

#[tokio::test]
async fn echoes_unstreamed() {
    let standin = ModelStandin::start().await;
    let completion = complete(&standin, user("m", "hello there")).await;
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["id"], "chatcmpl-standin-1");
    assert_eq!(completion["model"], "m");
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "You said: hello there");
    assert_eq!(choice["message"].get("tool_calls"), None);
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &completion["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
    assert_eq!(standin.completions("m"), 1);
    assert_eq!(standin.completions("other"), 0);
}

#[tokio::test]
async fn echoes_streamed_in_small_deltas_with_usage_last() {
    let standin = ModelStandin::start().await;
    let mut request = user("m", "tell me something long enough to split");
    request["stream_options"] = json!({"include_usage": true});
    let chunks = stream(&standin, request).await;

    let reassembled = reassemble(&chunks);
    assert_eq!(reassembled.content, "You said: tell me something long enough to split");
    assert!(reassembled.calls.is_empty());
    assert_eq!(reassembled.finish_reason, "stop");
    let deltas: Vec<&str> = chunks
        .iter()
        .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
        .filter(|c| !c.is_empty())
        .collect();
    assert!(deltas.len() > 5, "{deltas:?}");
    assert!(deltas.iter().all(|d| d.chars().count() <= 4), "{deltas:?}");
    assert_eq!(chunks[0].1["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|(_, c)| c["id"] == "chatcmpl-standin-1"));

    let (_, usage) = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (_, before_usage) = &chunks[chunks.len() - 2];
    assert_eq!(before_usage["choices"][0]["finish_reason"], "stop");
    assert_eq!(before_usage["usage"], Value::Null);
    assert_eq!(standin.completions("m"), 1);

    // Without include_usage no chunk lacks choices.
    let chunks = stream(&standin, user("m", "again")).await;
    assert!(chunks.iter().all(|(_, c)| c["choices"][0].is_object()));
    assert_eq!(chunks.last().unwrap().1["choices"][0]["finish_reason"], "stop");
    assert_eq!(reassemble(&chunks).content, "You said: again");
}

#[tokio::test]
async fn echo_finds_the_humans_text() {
    let standin = ModelStandin::start().await;
    let parts = json!({"model": "m", "messages": [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "You said: first"},
        {"role": "user", "content": [
            {"type": "text", "text": "look at"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "this"},
        ]},
    ]});
    let completion = complete(&standin, parts).await;
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "You said: look at\nthis"
    );

    // Older agent types wrap the human's words, and a heartbeat is Letta talking, not the human.
    let wrapped = json!({"model": "m", "messages": [
        {"role": "system", "content": "persona"},
        {"role": "user", "content": "{\"type\": \"login\", \"last_login\": \"Never\", \"time\": \"now\"}"},
        {"role": "user", "content": "{\"type\": \"user_message\", \"message\": \"hi from Matrix\", \"time\": \"now\"}"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "core_memory_append", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"OK\"}"},
        {"role": "user", "content": "{\"type\": \"heartbeat\", \"reason\": \"[This is an automated system message]\"}"},
    ]});
    let completion = complete(&standin, wrapped).await;
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "You said: hi from Matrix"
    );

    let nobody = json!({"model": "m", "messages": [{"role": "system", "content": "persona"}]});
    let completion = complete(&standin, nobody).await;
    assert_eq!(completion["choices"][0]["message"]["content"], "You said: ");
}

#[tokio::test]
async fn streams_a_scripted_tool_call_then_echoes() {
    let standin = ModelStandin::start().await;
    let arguments = json!({"query": "what the user likes", "page": 0});
    standin.script("m", [Step::tool_call("archival_memory_search", arguments.clone())]);
    let mut request = user("m", "what do I like?");
    request["tools"] = json!([{"type": "function", "function": {"name": "archival_memory_search"}}]);
    request["tool_choice"] = json!("auto");
    let chunks = stream(&standin, request.clone()).await;

    let reassembled = reassemble(&chunks);
    assert_eq!(reassembled.finish_reason, "tool_calls");
    assert_eq!(reassembled.content, "");
    let [(id, name, streamed_arguments)] = reassembled.calls.as_slice() else {
        panic!("one call: {:?}", reassembled.calls);
    };
    assert_eq!(id, "call_standin_1");
    assert_eq!(name, "archival_memory_search");
    assert_eq!(serde_json::from_str::<Value>(streamed_arguments).unwrap(), arguments);
    let argument_deltas = chunks
        .iter()
        .filter(|(_, c)| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] != "")
        .filter(|(_, c)| c["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert!(argument_deltas > 3, "arguments come in pieces: {argument_deltas}");
    let first_call_delta = chunks
        .iter()
        .find(|(_, c)| c["choices"][0]["delta"]["tool_calls"].is_array())
        .unwrap();
    assert_eq!(
        first_call_delta.1["choices"][0]["delta"]["tool_calls"][0]["type"],
        "function"
    );

    // The script is used up: the default again.
    let chunks = stream(&standin, request).await;
    assert_eq!(reassemble(&chunks).content, "You said: what do I like?");
    assert_eq!(standin.completions("m"), 2);
}

#[tokio::test]
async fn answers_scripted_tool_calls_unstreamed_and_in_parallel() {
    let standin = ModelStandin::start().await;
    standin.script(
        "m",
        [
            Step::tool_call("core_memory_append", json!({"label": "human", "content": "likes tea"})),
            Step::ToolCalls(vec![
                ("web_search".into(), json!({"query": "tea"})),
                ("web_search".into(), json!({"query": "coffee"})),
            ]),
        ],
    );
    let completion = complete(&standin, user("m", "remember: tea")).await;
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["tool_calls"][0]["id"], "call_standin_1");
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "core_memory_append");
    let arguments = message["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"label": "human", "content": "likes tea"})
    );

    let mut request = user("m", "search both");
    request["stream"] = json!(false);
    let completion = complete(&standin, request.clone()).await;
    let calls = completion["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    let ids: Vec<&Value> = calls.iter().map(|c| &c["id"]).collect();
    assert_eq!(ids, [&json!("call_standin_2"), &json!("call_standin_3")]);
    assert_eq!(
        calls[1]["function"]["arguments"],
        json!({"query": "coffee"}).to_string()
    );

    // Streamed, parallel calls keep their own indexes.
    standin.script(
        "m",
        [Step::ToolCalls(vec![
            ("a".into(), json!({"x": 1})),
            ("b".into(), json!({"y": [2, 3]})),
        ])],
    );
    let reassembled = reassemble(&stream(&standin, request).await);
    let names: Vec<(&str, Value)> = reassembled
        .calls
        .iter()
        .map(|(_, name, arguments)| (name.as_str(), serde_json::from_str(arguments).unwrap()))
        .collect();
    assert_eq!(names, [("a", json!({"x": 1})), ("b", json!({"y": [2, 3]}))]);
    assert_eq!(reassembled.calls[0].0, "call_standin_4");
    assert_eq!(reassembled.calls[1].0, "call_standin_5");
}

#[tokio::test]
async fn text_goes_out_as_send_message_when_that_tool_is_offered() {
    let standin = ModelStandin::start().await;
    let memgpt = with_send_message(user("m", "hi"), "required");
    let completion = complete(&standin, memgpt.clone()).await;
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["function"]["name"], "send_message");
    let arguments = message["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"message": "You said: hi", "request_heartbeat": false})
    );

    standin.script("m", [Step::reply("Hello, \"friend\"!")]);
    let reassembled = reassemble(&stream(&standin, memgpt.clone()).await);
    assert_eq!(reassembled.finish_reason, "tool_calls");
    let [(_, name, arguments)] = reassembled.calls.as_slice() else {
        panic!("one call: {:?}", reassembled.calls);
    };
    assert_eq!(name, "send_message");
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"message": "Hello, \"friend\"!", "request_heartbeat": false})
    );

    // Not when the model may not call it, nor when it is not offered (letta_v1_agent).
    let none = with_send_message(user("m", "hi"), "none");
    let completion = complete(&standin, none).await;
    assert_eq!(completion["choices"][0]["message"]["content"], "You said: hi");
    let mut forced_other = memgpt.clone();
    forced_other["tool_choice"] = json!({"type": "function", "function": {"name": "archival_memory_search"}});
    let completion = complete(&standin, forced_other).await;
    assert_eq!(completion["choices"][0]["message"]["content"], "You said: hi");
    let mut forced = memgpt;
    forced["tool_choice"] = json!({"type": "function", "function": {"name": "send_message"}});
    let completion = complete(&standin, forced).await;
    assert_eq!(
        completion["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "send_message"
    );
    let mut v1 = user("m", "hi");
    v1["tools"] = json!([{"type": "function", "function": {"name": "memory_replace"}}]);
    v1["tool_choice"] = json!("auto");
    let completion = complete(&standin, v1).await;
    assert_eq!(completion["choices"][0]["message"]["content"], "You said: hi");
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut bytes = Vec::new();
    for group in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = group.iter().filter(|c| **c != b'=').map(|c| value(*c)).collect();
        let n = digits.iter().fold(0u32, |n, d| (n << 6) | u32::from(*d)) << (6 * (4 - digits.len()));
        bytes.extend_from_slice(&n.to_be_bytes()[1..digits.len()]);
    }
    bytes
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

#[test]
fn base64_matches_the_standard_alphabet_and_padding() {
    assert_eq!(embeddings::base64(b""), "");
    assert_eq!(embeddings::base64(b"f"), "Zg==");
    assert_eq!(embeddings::base64(b"fo"), "Zm8=");
    assert_eq!(embeddings::base64(b"foo"), "Zm9v");
    assert_eq!(embeddings::base64(b"foobar\xff"), "Zm9vYmFy/w==");
    assert_eq!(decode_base64("Zm9vYmFy/w=="), b"foobar\xff");
}

#[tokio::test]
async fn embeds_deterministically_as_floats_or_base64() {
    let standin = ModelStandin::start().await;
    let post = |body: Value| {
        let standin = &standin;
        async move {
            let reply = exchange(standin, "POST", "/v1/embeddings", Some(&body)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            serde_json::from_str::<Value>(&reply.body).unwrap()
        }
    };
    let texts = [
        "The user likes green tea",
        "the user LIKES green tea!",
        "Quarterly tax forms",
    ];
    let floats = post(json!({"model": EMBEDDING_MODEL, "input": texts, "encoding_format": "float"})).await;
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], EMBEDDING_MODEL);
    let vectors: Vec<Vec<f32>> = floats["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(index, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], index);
            item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert_eq!(vectors.len(), 3);
    for vector in &vectors {
        assert_eq!(vector.len(), EMBEDDING_DIM);
        assert!((dot(vector, vector) - 1.0).abs() < 1e-4);
    }
    assert_eq!(vectors[0], embed(texts[0]));
    assert_ne!(vectors[0], vectors[1], "different texts embed differently");
    assert!(
        dot(&vectors[0], &vectors[1]) > 0.8,
        "shared words lie close: {}",
        dot(&vectors[0], &vectors[1])
    );
    assert!(
        dot(&vectors[0], &vectors[2]).abs() < 0.2,
        "no shared words: {}",
        dot(&vectors[0], &vectors[2])
    );

    // The openai SDK asks for base64 by default: little-endian f32s.
    let encoded = post(json!({"model": EMBEDDING_MODEL, "input": texts[0], "encoding_format": "base64"})).await;
    let bytes = decode_base64(encoded["data"][0]["embedding"].as_str().unwrap());
    assert_eq!(bytes.len(), EMBEDDING_DIM * 4);
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, vectors[0]);

    // No encoding_format means floats; token arrays are inputs too.
    let tokens = post(json!({"model": EMBEDDING_MODEL, "input": [[1, 2, 3], [1, 2, 3], [4]]})).await;
    let data = tokens["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["embedding"], data[1]["embedding"]);
    assert_ne!(data[0]["embedding"], data[2]["embedding"]);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), EMBEDDING_DIM);
    let single = post(json!({"model": EMBEDDING_MODEL, "input": [1, 2, 3]})).await;
    assert_eq!(single["data"][0]["embedding"], data[0]["embedding"]);

    let reply = exchange(&standin, "POST", "/v1/embeddings", Some(&json!({"input": []}))).await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn records_requests_and_what_the_model_saw() {
    let standin = ModelStandin::start().await;
    let first = with_send_message(user("m", "my cat is called Tom"), "required");
    complete(&standin, first.clone()).await;
    let mut second = json!({"model": "m", "parallel_tool_calls": false, "messages": [
        {"role": "system", "content": "<memory_blocks>The human owns a cat.</memory_blocks>"},
        {"role": "user", "content": [{"type": "text", "text": "what is my cat called?"}]},
    ]});
    second["stream"] = json!(true);
    stream(&standin, second.clone()).await;
    complete(&standin, user("elsewhere", "unrelated words")).await;

    let requests = standin.requests("m");
    assert_eq!(requests, [first, second]);
    assert_eq!(requests[0]["tool_choice"], "required");
    assert_eq!(requests[0]["tools"][1]["function"]["name"], "send_message");
    let seen = standin.seen_text("m");
    for fact in [
        "my cat is called Tom",
        "The human owns a cat.",
        "what is my cat called?",
    ] {
        assert!(seen.contains(fact), "{fact:?} in {seen:?}");
    }
    assert!(!seen.contains("unrelated"), "{seen}");
    assert!(standin.seen_text("elsewhere").contains("unrelated words"));
    assert_eq!(standin.requests("never"), Vec::<Value>::new());
    assert_eq!(standin.seen_text("never"), "");
}

#[tokio::test]
async fn honours_latency_per_model() {
    let standin = ModelStandin::start().await;
    // Only lower bounds are timed (a sleep never ends early); the fast model's head start on a
    // loaded machine is the slow one's whole first-token wait.
    let first_token = Duration::from_millis(1000);
    let per_token = Duration::from_millis(20);
    standin.set_latency("slow", first_token, per_token);
    let (slow, fast) = tokio::join!(stream(&standin, user("slow", "abcdefgh")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream(&standin, user("fast", "abcdefgh")).await
    });
    let (fast_done, _) = fast.last().unwrap();
    assert!(
        *fast_done < slow[0].0,
        "the fast model answers while the slow one thinks"
    );
    assert!(slow[0].0 >= first_token, "{:?}", slow[0].0);
    let times: Vec<Duration> = slow.iter().map(|(at, _)| *at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let waits = u32::try_from(slow.len() - 1).unwrap();
    assert!(*times.last().unwrap() >= first_token + per_token * waits, "{times:?}");

    // Unstreamed, the whole answer takes as long.
    let start = Instant::now();
    complete(&standin, user("slow", "abcdefgh")).await;
    assert!(start.elapsed() >= first_token + per_token * 4, "{:?}", start.elapsed());
}

#[tokio::test]
async fn counts_concurrent_completions_per_model() {
    let standin = ModelStandin::start().await;
    standin.set_latency("busy", Duration::from_millis(200), Duration::ZERO);
    let busy = |text: &'static str| stream(&standin, user("busy", text));
    tokio::join!(busy("a"), busy("b"), busy("c"));
    assert_eq!(standin.max_concurrent("busy"), 3);
    assert_eq!(standin.completions("busy"), 3);

    complete(&standin, user("calm", "a")).await;
    complete(&standin, user("calm", "b")).await;
    assert_eq!(standin.max_concurrent("calm"), 1);
    assert_eq!(standin.max_concurrent("never"), 0);
}

#[tokio::test]
async fn fails_as_scripted_once_and_without_retries() {
    let standin = ModelStandin::start().await;
    standin.script("m", [Step::Fail(503), Step::Fail(429), Step::reply("back")]);
    let mut request = user("m", "hi");
    request["stream"] = json!(true);
    for status in [503, 429] {
        let reply = exchange(&standin, "POST", "/v1/chat/completions", Some(&request)).await;
        assert_eq!(reply.status, status);
        assert!(
            reply.head.to_lowercase().contains("x-should-retry: false"),
            "{}",
            reply.head
        );
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "model stand-in told to fail", "type": "server_error", "code": null}})
        );
    }
    assert_eq!(reassemble(&stream(&standin, request.clone()).await).content, "back");
    assert_eq!(standin.requests("m").len(), 3);
    assert_eq!(standin.completions("m"), 1);
    assert_eq!(standin.max_concurrent("m"), 1);
}

#[tokio::test]
async fn lists_models_and_rejects_bad_bodies() {
    let standin = ModelStandin::start().await;
    standin.script("scripted", [Step::Echo]);
    let reply = exchange(&standin, "GET", "/v1/models", None).await;
    assert_eq!(reply.status, 200);
    let list: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["scripted", "standin", EMBEDDING_MODEL] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }

    let reply = exchange(&standin, "POST", "/v1/chat/completions", None).await;
    assert_eq!(reply.status, 400);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn configs_point_letta_here_and_drop_stops_the_server() {
    let standin = ModelStandin::start().await;
    let url = standin.url();
    assert_eq!(url, format!("http://{}/v1", standin.address()));
    assert_eq!(
        standin.llm_config("agent-model"),
        json!({
            "model": "agent-model",
            "model_endpoint_type": "openai",
            "model_endpoint": url,
            "context_window": 32000,
            "put_inner_thoughts_in_kwargs": false,
        })
    );
    let embedding = standin.embedding_config();
    assert_eq!(embedding["embedding_endpoint_type"], "openai");
    assert_eq!(embedding["embedding_endpoint"], url);
    assert_eq!(embedding["embedding_model"], "standin-embed");
    assert_eq!(embedding["embedding_dim"], 1536);

    let address = standin.address();
    drop(standin);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}
