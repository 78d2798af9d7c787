//! Conversations as Letta 0.16.8 serves them: `POST /v1/conversations/?agent_id=…` makes one
//! (`conv-…`), `POST /v1/conversations/{id}/messages` talks in it (streaming unless told not to)
//! and `GET …/messages` lists its messages only. `default` with an `agent_id` is the agent's
//! default conversation. Each conversation keeps its own rows; scripts stay the agent's.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::messages::{self, ListQuery};
use super::{Shared, detail, uuid_like};

#[derive(Deserialize)]
pub(crate) struct AgentQuery {
    agent_id: Option<String>,
}

pub(crate) async fn create(
    State(world): State<Shared>,
    Query(query): Query<AgentQuery>,
    body: Option<Json<Value>>,
) -> Response {
    let Some(agent_id) = query.agent_id else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "agent_id is required");
    };
    let mut world = world.lock().unwrap();
    if !world.agents.contains_key(&agent_id) {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    }
    let id = format!("conv-{}", uuid_like(world.clock));
    let now = world.tick();
    world.conversations.insert(id.clone(), agent_id.clone());
    let summary = body.and_then(|Json(body)| body["summary"].as_str().map(str::to_owned));
    Json(json!({
        "id": id,
        "agent_id": agent_id,
        "summary": summary,
        "created_at": now,
        "updated_at": now,
        "last_message_at": null,
        "in_context_message_ids": [],
        "isolated_block_ids": [],
        "model": null,
        "model_settings": null,
    }))
    .into_response()
}

/// The agent a conversation path names, and the conversation (`None`: the default one).
fn resolve(
    world: &Shared,
    conversation_id: &str,
    agent_id: Option<&str>,
) -> Result<(String, Option<String>), (StatusCode, String)> {
    if conversation_id == "default" {
        return match agent_id {
            Some(agent_id) => Ok((agent_id.to_owned(), None)),
            None => Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "agent_id is required with the default conversation".to_owned(),
            )),
        };
    }
    let world = world.lock().unwrap();
    match world.conversations.get(conversation_id) {
        Some(agent_id) => Ok((agent_id.clone(), Some(conversation_id.to_owned()))),
        None => Err((
            StatusCode::NOT_FOUND,
            format!("Conversation with id {conversation_id} not found"),
        )),
    }
}

pub(crate) async fn send(
    State(world): State<Shared>,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (agent_id, conversation) = match resolve(&world, &conversation_id, body["agent_id"].as_str()) {
        Ok(found) => found,
        Err((status, text)) => return detail(status, text),
    };
    let streaming = body["streaming"].as_bool().unwrap_or(true);
    messages::send_to(world, agent_id, conversation, streaming, headers, body).await
}

pub(crate) async fn list(
    State(world): State<Shared>,
    Path(conversation_id): Path<String>,
    Query(agent): Query<AgentQuery>,
    Query(mut page): Query<ListQuery>,
) -> Response {
    let (agent_id, conversation) = match resolve(&world, &conversation_id, agent.agent_id.as_deref()) {
        Ok(found) => found,
        Err((status, text)) => return detail(status, text),
    };
    page.conversation_id = Some(conversation.unwrap_or_else(|| "default".to_owned()));
    let mut world = world.lock().unwrap();
    messages::list_rows(&mut world, &agent_id, page)
}
