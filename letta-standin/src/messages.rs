//! Talking to stand-in agents: `POST /v1/agents/{id}/messages` (plain, step-streamed or
//! token-streamed, in the SSE format a real Letta 0.16.8 sent) and the agent's message list.
//!
//! The answer is stored the moment a request arrives, before any latency or streaming: a real
//! Letta finishes a run server-side even when the client disconnects, and the bridge's crash
//! recovery depends on finding that answer.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::replies::Replies;
use super::{Shared, World, detail, uuid_like};

/// The stand-in's tokens: this many characters per streamed chunk, as a tokenizer would cut.
const DEFAULT_CHUNK_CHARS: usize = 8;

#[derive(Default)]
pub(crate) struct Chats {
    by_agent: BTreeMap<String, Chat>,
    default_latency: (Duration, Duration),
    chunk_chars: Option<usize>,
    replies: Replies,
}

#[derive(Default)]
struct Chat {
    messages: Vec<Value>,
    scripted: VecDeque<String>,
    scripted_reasoning: VecDeque<String>,
    latency: Option<(Duration, Duration)>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Chats {
    fn chat(&mut self, agent_id: &str) -> &mut Chat {
        self.by_agent.entry(agent_id.to_owned()).or_default()
    }

    pub(crate) fn script_reply(&mut self, agent_id: &str, text: &str) {
        self.chat(agent_id).scripted.push_back(text.to_owned());
    }

    pub(crate) fn script_reasoning(&mut self, agent_id: &str, text: &str) {
        self.chat(agent_id).scripted_reasoning.push_back(text.to_owned());
    }

    pub(crate) fn set_latency(&mut self, agent_id: &str, first_token: Duration, per_token: Duration) {
        self.chat(agent_id).latency = Some((first_token, per_token));
    }

    pub(crate) fn set_default_latency(&mut self, first_token: Duration, per_token: Duration) {
        self.default_latency = (first_token, per_token);
    }

    pub(crate) fn set_chunk_chars(&mut self, chars: usize) {
        self.chunk_chars = Some(chars.max(1));
    }

    pub(crate) fn set_replies(&mut self, replies: Replies) {
        self.replies = replies;
    }

    pub(crate) fn messages(&self, agent_id: &str) -> Vec<Value> {
        self.by_agent
            .get(agent_id)
            .map(|c| c.messages.clone())
            .unwrap_or_default()
    }

    pub(crate) fn max_concurrent(&self, agent_id: &str) -> usize {
        self.by_agent.get(agent_id).map_or(0, |c| c.max_in_flight)
    }
}

fn record(world: &mut World, message_type: &str, content: &str, extra: Value) -> Value {
    let mut message = json!({
        "id": format!("message-{}", uuid_like(world.clock)),
        "date": world.tick(),
        "name": null,
        "message_type": message_type,
        "otid": uuid_like(world.clock),
        "sender_id": null,
        "step_id": null,
        "is_err": null,
        "seq_id": null,
        "run_id": null,
        "content": content,
    });
    if let (Some(message), Value::Object(extra)) = (message.as_object_mut(), extra) {
        message.extend(extra);
    }
    message
}

/// Reasoning keeps its text in `reasoning`, not `content`.
fn reasoning_message(world: &mut World, text: &str, extra: Value) -> Value {
    let mut message = record(world, "reasoning_message", "", extra);
    let fields = message.as_object_mut().expect("a message is an object");
    fields.remove("content");
    fields.insert("source".into(), json!("reasoner_model"));
    fields.insert("reasoning".into(), json!(text));
    fields.insert("signature".into(), Value::Null);
    message
}

/// Appends a message to an agent's history directly, e.g. a conversation from before the bridge.
/// `role` is `user`, `assistant` or `reasoning`.
pub(crate) fn add_history(world: &mut World, agent_id: &str, role: &str, text: &str, date: &str) {
    let mut message = match role {
        "assistant" => record(world, "assistant_message", text, json!({})),
        "reasoning" => reasoning_message(world, text, json!({})),
        _ => record(world, "user_message", text, json!({})),
    };
    message["date"] = json!(date);
    world.chats.chat(agent_id).messages.push(message);
}

/// Text of a Letta input message: a string, or typed parts.
fn input_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Counts a request in flight for its agent until dropped, wherever the response ends.
struct InFlight {
    world: Shared,
    agent_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut world) = self.world.lock() {
            let chat = world.chats.chat(&self.agent_id);
            chat.in_flight = chat.in_flight.saturating_sub(1);
        }
    }
}

pub(crate) async fn send(
    State(world): State<Shared>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let streaming = body["streaming"].as_bool().unwrap_or(false);
    let stream_tokens = body["stream_tokens"].as_bool().unwrap_or(false);
    let (reasoning, answer, latency, chunk_chars, guard) = {
        let mut locked = world.lock().unwrap();
        if !locked.agents.contains_key(&agent_id) {
            return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
        }
        let inputs = match body["messages"].as_array() {
            Some(inputs) if !inputs.is_empty() => inputs.clone(),
            _ => {
                return detail(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "messages: at least one message is required",
                );
            }
        };
        if streaming && !headers.contains_key("x-stainless-package-version") {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Streaming on this route is only supported for SDK v1.0+ clients; use /messages/stream",
            );
        }
        let run_id = format!("run-{}", uuid_like(locked.clock));
        let step_id = format!("step-{}", uuid_like(locked.clock + 1));
        let ids = json!({"run_id": run_id, "step_id": step_id});
        let mut last_text = String::new();
        for input in &inputs {
            last_text = input_text(&input["content"]);
            let mut message = record(&mut locked, "user_message", &last_text, ids.clone());
            message["name"] = input["name"].clone();
            message["otid"] = input["otid"].clone();
            locked.chats.chat(&agent_id).messages.push(message);
        }
        let replies = locked.chats.replies;
        let agent_name = locked.agents[&agent_id]["name"].as_str().unwrap_or_default().to_owned();
        let chat = locked.chats.chat(&agent_id);
        let text = chat
            .scripted
            .pop_front()
            .unwrap_or_else(|| replies.answer(&agent_name, &last_text));
        let reasoning = chat.scripted_reasoning.pop_front().map(|thought| {
            let message = reasoning_message(&mut locked, &thought, ids.clone());
            locked.chats.chat(&agent_id).messages.push(message.clone());
            message
        });
        let answer = record(&mut locked, "assistant_message", &text, ids);
        let default_latency = locked.chats.default_latency;
        let chunk_chars = locked.chats.chunk_chars.unwrap_or(DEFAULT_CHUNK_CHARS);
        let chat = locked.chats.chat(&agent_id);
        chat.messages.push(answer.clone());
        chat.in_flight += 1;
        chat.max_in_flight = chat.max_in_flight.max(chat.in_flight);
        let latency = chat.latency.unwrap_or(default_latency);
        let guard = InFlight {
            world: world.clone(),
            agent_id: agent_id.clone(),
        };
        (reasoning, answer, latency, chunk_chars, guard)
    };
    let usage = json!({"message_type": "usage_statistics", "completion_tokens": 5, "prompt_tokens": 10, "total_tokens": 15, "step_count": 1, "run_ids": null, "cached_input_tokens": null, "cache_write_tokens": null, "reasoning_tokens": null, "context_tokens": 15});
    let stop = json!({"message_type": "stop_reason", "stop_reason": "end_turn"});
    if !streaming {
        tokio::time::sleep(latency.0).await;
        drop(guard);
        let messages: Vec<&Value> = reasoning.iter().chain([&answer]).collect();
        return Json(
            json!({"messages": messages, "stop_reason": stop, "usage": usage, "logprobs": null, "turns": null}),
        )
        .into_response();
    }
    let pieces = |text: &str| {
        if stream_tokens {
            chunks(text, chunk_chars)
        } else {
            vec![text.to_owned()]
        }
    };
    let ping = json!({"id": format!("ping-{}", uuid_like(0)), "date": answer["date"], "name": null, "message_type": "ping", "otid": null, "sender_id": null, "step_id": null, "is_err": null, "seq_id": null, "run_id": answer["run_id"]});
    // (payload, wait before it)
    let mut events: VecDeque<(String, Duration)> = VecDeque::new();
    events.push_back((ping.to_string(), Duration::ZERO));
    let streamed = reasoning
        .iter()
        .map(|message| (message, "reasoning"))
        .chain([(&answer, "content")]);
    for (message, field) in streamed {
        for piece in pieces(message[field].as_str().unwrap_or_default()) {
            let mut chunk = message.clone();
            chunk[field] = json!(piece);
            let wait = if events.len() == 1 { latency.0 } else { latency.1 };
            events.push_back((chunk.to_string(), wait));
        }
    }
    events.push_back((stop.to_string(), Duration::ZERO));
    events.push_back((usage.to_string(), Duration::ZERO));
    events.push_back(("[DONE]".to_owned(), Duration::ZERO));
    let stream = futures::stream::unfold((events, guard), |(mut events, guard)| async move {
        let (payload, wait) = events.pop_front()?;
        // A zero sleep still waits for the timer's next millisecond tick.
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Some((Ok::<_, Infallible>(format!("data: {payload}\n\n")), (events, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Splits text into pieces of at most `size` characters, never inside a character.
fn chunks(text: &str, size: usize) -> Vec<String> {
    let characters: Vec<char> = text.chars().collect();
    characters.chunks(size).map(|piece| piece.iter().collect()).collect()
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    order: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

/// `GET /v1/agents/{id}/messages`: newest first unless `order=asc`, cursors by message id.
pub(crate) async fn list(
    State(world): State<Shared>,
    Path(agent_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let world = world.lock().unwrap();
    if !world.agents.contains_key(&agent_id) {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    }
    let mut messages = world.chats.messages(&agent_id);
    if query.order.as_deref() != Some("asc") {
        messages.reverse();
    }
    let position = |cursor: &str| messages.iter().position(|m| m["id"] == cursor);
    let start = query.after.as_deref().and_then(position).map_or(0, |at| at + 1);
    let end = query.before.as_deref().and_then(position).unwrap_or(messages.len());
    let page: Vec<Value> = messages[start.min(end)..end]
        .iter()
        .take(query.limit.unwrap_or(100))
        .cloned()
        .collect();
    Json(Value::Array(page)).into_response()
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_never_split_a_character() {
        assert_eq!(chunks("héllo wörld", 4), ["héll", "o wö", "rld"]);
        assert_eq!(chunks("", 4), Vec::<String>::new());
    }
}
