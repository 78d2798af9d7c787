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
use super::turn::{self, Delta, End, Part, RowBuilder};
use super::{Shared, World, detail, uuid_like};

/// The stand-in's tokens: this many characters per streamed chunk, as a tokenizer would cut.
const DEFAULT_CHUNK_CHARS: usize = 8;

#[derive(Default)]
pub(crate) struct Chats {
    by_agent: BTreeMap<String, Chat>,
    default_latency: (Duration, Duration),
    chunk_chars: Option<usize>,
    pub(crate) replies: Replies,
}

/// One stored message as Letta's database holds it: one or more listed items sharing an `id`.
pub(crate) struct Row {
    pub items: Vec<Value>,
    /// `None` is the agent's default conversation (the only one the stand-in has so far).
    pub conversation_id: Option<String>,
}

/// A tool call waiting for a person's decision.
pub(crate) struct Pending {
    /// The stored `approval_request_message`.
    pub request: Value,
    pub tool_call_id: String,
}

#[derive(Default)]
pub(crate) struct Chat {
    pub rows: Vec<Row>,
    pub scripted: VecDeque<String>,
    pub scripted_reasoning: VecDeque<String>,
    /// (error_type, message) for the next turns that fail.
    pub scripted_errors: VecDeque<(String, String)>,
    pub scripted_stops: VecDeque<String>,
    /// (tool name, arguments JSON) for the next turns that call a tool.
    pub scripted_tools: VecDeque<(String, String)>,
    pub pending: Option<Pending>,
    latency: Option<(Duration, Duration)>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Chats {
    pub(crate) fn chat(&mut self, agent_id: &str) -> &mut Chat {
        self.by_agent.entry(agent_id.to_owned()).or_default()
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

    /// Every item of the agent's history, oldest first.
    pub(crate) fn messages(&self, agent_id: &str) -> Vec<Value> {
        self.by_agent
            .get(agent_id)
            .map(|c| c.rows.iter().flat_map(|row| row.items.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn pending_approval(&self, agent_id: &str) -> Option<Value> {
        self.by_agent.get(agent_id)?.pending.as_ref().map(|p| p.request.clone())
    }

    pub(crate) fn in_flight(&self, agent_id: &str) -> usize {
        self.by_agent.get(agent_id).map_or(0, |c| c.in_flight)
    }

    pub(crate) fn max_concurrent(&self, agent_id: &str) -> usize {
        self.by_agent.get(agent_id).map_or(0, |c| c.max_in_flight)
    }
}

/// Appends a message to an agent's history directly, e.g. a conversation from before the bridge.
/// `role` is `user`, `assistant` or `reasoning`; each call is one stored row.
pub(crate) fn add_history(world: &mut World, agent_id: &str, role: &str, text: &str, date: &str) {
    let mut row = RowBuilder::new(world, &json!({"run_id": null, "step_id": null})).dated(date);
    match role {
        "assistant" => row.push("assistant_message", json!({"content": text})),
        "reasoning" => row.push("reasoning_message", turn::reasoning_fields(text)),
        _ => row.push("user_message", json!({"content": text})),
    };
    row.store(world, agent_id);
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

/// Letta's "1.0 SDK" test (`is_1_0_sdk_version`): the SDK's version header, no User-Agent at
/// all, or a `letta-client/1.x` one. Only such clients may stream on this route.
pub(crate) fn is_sdk_v1(headers: &HeaderMap) -> bool {
    if headers.contains_key("x-stainless-package-version") {
        return true;
    }
    let Some(agent) = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some((name, version)) = agent.split_once('/') else {
        return false;
    };
    matches!(name, "letta-client" | "@letta-ai/letta-client") && version.starts_with('1')
}

/// An input is an approval if typed so, or untyped with approval fields (Letta's own rule).
fn is_approval(input: &Value) -> bool {
    match input["type"].as_str() {
        Some(kind) => kind == "approval",
        None => input.get("approve").is_some() || input.get("approval_request_id").is_some(),
    }
}

pub(crate) async fn send(
    State(world): State<Shared>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    // This route does not stream unless asked; the conversations route does.
    let streaming = body["streaming"].as_bool().unwrap_or(false);
    send_to(world, agent_id, None, streaming, headers, body).await
}

/// A turn of `agent_id` in `conversation` (`None`: its default one).
pub(crate) async fn send_to(
    world: Shared,
    agent_id: String,
    conversation: Option<String>,
    streaming: bool,
    headers: HeaderMap,
    body: Value,
) -> Response {
    let stream_tokens = body["stream_tokens"].as_bool().unwrap_or(false);
    let (turn, latency, chunk_chars, guard) = {
        let mut locked = world.lock().unwrap();
        if !locked.agents.contains_key(&agent_id) {
            return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
        }
        let inputs = match body["messages"].as_array() {
            Some(inputs) if !inputs.is_empty() => inputs.clone(),
            _ => return detail(StatusCode::UNPROCESSABLE_ENTITY, "Messages must not be empty"),
        };
        if streaming && !is_sdk_v1(&headers) {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "streaming=true is only supported for SDK v1.0+ clients.",
            );
        }
        locked.serving = conversation;
        let turn = if is_approval(&inputs[0]) {
            turn::approve(&mut locked, &agent_id, &inputs[0])
        } else {
            turn::converse(&mut locked, &agent_id, &inputs)
        };
        locked.serving = None;
        let default_latency = locked.chats.default_latency;
        let chunk_chars = locked.chats.chunk_chars.unwrap_or(DEFAULT_CHUNK_CHARS);
        let chat = locked.chats.chat(&agent_id);
        chat.in_flight += 1;
        chat.max_in_flight = chat.max_in_flight.max(chat.in_flight);
        let latency = chat.latency.unwrap_or(default_latency);
        let guard = InFlight {
            world: world.clone(),
            agent_id: agent_id.clone(),
        };
        (turn, latency, chunk_chars, guard)
    };
    let usage = json!({"message_type": "usage_statistics", "completion_tokens": 5 * turn.steps, "prompt_tokens": 10 * turn.steps, "total_tokens": 15 * turn.steps, "step_count": turn.steps, "run_ids": null, "cached_input_tokens": null, "cache_write_tokens": null, "reasoning_tokens": null, "context_tokens": 15});
    let stop = |reason: &str| json!({"message_type": "stop_reason", "stop_reason": reason});
    if !streaming {
        if !turn.parts.is_empty() {
            tokio::time::sleep(latency.0).await;
        }
        drop(guard);
        return match turn.end {
            End::Stop(reason) => {
                let messages: Vec<&Value> = turn.parts.iter().map(|part| &part.item).collect();
                Json(json!({"messages": messages, "stop_reason": stop(&reason), "usage": usage, "logprobs": null, "turns": null}))
                    .into_response()
            }
            End::Error {
                http: (status, body), ..
            } => (status, Json(body)).into_response(),
        };
    }
    let ping = json!({"id": format!("ping-{}", uuid_like(0)), "date": rfc3339_now(), "name": null, "message_type": "ping", "otid": null, "sender_id": null, "step_id": null, "is_err": null, "seq_id": null, "run_id": turn.run_id});
    // (frame, wait before it)
    let mut events: VecDeque<(String, Duration)> = VecDeque::new();
    events.push_back((data(&ping), Duration::ZERO));
    for part in &turn.parts {
        for chunk in chunked(part, stream_tokens, chunk_chars) {
            let wait = if events.len() == 1 { latency.0 } else { latency.1 };
            events.push_back((data(&chunk), wait));
        }
    }
    match &turn.end {
        End::Stop(reason) => {
            events.push_back((data(&stop(reason)), Duration::ZERO));
            events.push_back((data(&usage), Duration::ZERO));
        }
        End::Error { stop_reason, error, .. } => {
            events.push_back((data(&stop(stop_reason)), Duration::ZERO));
            events.push_back((format!("event: error\n{}", data(error)), Duration::ZERO));
        }
    }
    events.push_back(("data: [DONE]\n\n".to_owned(), Duration::ZERO));
    let stream = futures::stream::unfold((events, guard), |(mut events, guard)| async move {
        let (frame, wait) = events.pop_front()?;
        // A zero sleep still waits for the timer's next millisecond tick.
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Some((Ok::<_, Infallible>(frame), (events, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn data(payload: &Value) -> String {
    format!("data: {payload}\n\n")
}

fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    super::rfc3339_micros(now)
}

/// The chunks one part streams as: whole, or (with `stream_tokens`) deltas sharing id and otid.
fn chunked(part: &Part, stream_tokens: bool, chunk_chars: usize) -> Vec<Value> {
    let item = &part.item;
    match part.delta {
        _ if !stream_tokens => vec![item.clone()],
        Delta::Whole => vec![item.clone()],
        Delta::Text(field) => chunks(item[field].as_str().unwrap_or_default(), chunk_chars)
            .into_iter()
            .map(|piece| {
                let mut chunk = item.clone();
                chunk[field] = json!(piece);
                chunk
            })
            .collect(),
        // A tool call streams as `ToolCallDelta`s (one object, not a list): the name and id
        // first, then the arguments piece by piece.
        Delta::ToolCall => {
            let call = &item["tool_call"];
            let first = json!({"name": call["name"], "arguments": null, "tool_call_id": call["tool_call_id"]});
            let pieces = chunks(call["arguments"].as_str().unwrap_or_default(), chunk_chars)
                .into_iter()
                .map(|piece| json!({"name": null, "arguments": piece, "tool_call_id": call["tool_call_id"]}));
            std::iter::once(first)
                .chain(pieces)
                .map(|delta| {
                    let mut chunk = item.clone();
                    chunk["tool_call"] = delta.clone();
                    chunk["tool_calls"] = delta;
                    chunk
                })
                .collect()
        }
    }
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
    pub(crate) conversation_id: Option<String>,
}

/// `GET /v1/agents/{id}/messages` as Letta 0.16.8 answers it: `after` is always newer and
/// `before` always older than the cursor; `desc` picks the newest `limit` rows, `asc` the
/// oldest, and either way the page reads oldest first. `limit` counts rows, not items.
pub(crate) async fn list(
    State(world): State<Shared>,
    Path(agent_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let mut world = world.lock().unwrap();
    if !world.agents.contains_key(&agent_id) {
        return detail(StatusCode::NOT_FOUND, "Agent not found");
    }
    list_rows(&mut world, &agent_id, query)
}

/// A page of the agent's rows; `query.conversation_id` keeps one conversation's (`default`: the
/// default one's), none keeps all.
pub(crate) fn list_rows(world: &mut World, agent_id: &str, query: ListQuery) -> Response {
    let rows = &world.chats.chat(agent_id).rows;
    let position = |cursor: &str| {
        rows.iter()
            .position(|row| row.items.iter().any(|item| item["id"] == cursor))
    };
    let mut range = 0..rows.len();
    for (cursor, newer) in [(&query.after, true), (&query.before, false)] {
        let Some(cursor) = cursor else { continue };
        let Some(at) = position(cursor) else {
            return detail(
                StatusCode::NOT_FOUND,
                format!("No message found with id '{cursor}' for agent '{agent_id}'."),
            );
        };
        if newer {
            range.start = range.start.max(at + 1);
        } else {
            range.end = range.end.min(at);
        }
    }
    let selected: Vec<&Row> = rows
        .get(range.start..range.end.max(range.start))
        .unwrap_or_default()
        .iter()
        .filter(|row| match query.conversation_id.as_deref() {
            None => true,
            Some("default") => row.conversation_id.is_none(),
            Some(id) => row.conversation_id.as_deref() == Some(id),
        })
        .collect();
    let limit = query.limit.unwrap_or(100).min(selected.len());
    let page = if query.order.as_deref() == Some("asc") {
        &selected[..limit]
    } else {
        &selected[selected.len() - limit..]
    };
    let items: Vec<Value> = page.iter().flat_map(|row| row.items.clone()).collect();
    Json(Value::Array(items)).into_response()
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

#[derive(Deserialize)]
pub(crate) struct RunsQuery {
    agent_id: Option<String>,
    #[serde(default)]
    active: bool,
}

/// `GET /v1/runs/`: the stand-in keeps no runs, but says whether one of the agent's turns is still
/// being answered (`active=true`), as the bridge asks before it decides a turn never arrived.
pub(crate) async fn runs(State(world): State<Shared>, Query(query): Query<RunsQuery>) -> Response {
    let world = world.lock().unwrap();
    let running: Vec<Value> = match query.agent_id {
        Some(agent_id) if query.active && world.chats.in_flight(&agent_id) > 0 => {
            vec![json!({"id": format!("run-{}", uuid_like(0)), "agent_id": agent_id, "status": "running"})]
        }
        _ => Vec::new(),
    };
    Json(Value::Array(running)).into_response()
}
