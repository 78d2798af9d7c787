//! The homeserver asks whether users and aliases in our namespace exist, and pings us.

use axum::Json;
use axum::extract::State;
use ruma::{OwnedRoomAliasId, OwnedUserId};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{AppError, PathParam};

/// A user exists for the homeserver when it is our bot or the ghost of an agent we know.
pub async fn query_user(
    State(state): State<AppState>,
    PathParam(user_id): PathParam<String>,
) -> Result<Json<Value>, AppError> {
    let user_id = OwnedUserId::try_from(user_id.as_str())
        .map_err(|e| AppError::InvalidParam(format!("`{user_id}` is not a user id: {e}")))?;
    if !state.namespace.is_ours(&user_id) {
        return Err(AppError::NotFound(format!(
            "{user_id} is outside this appservice's namespace"
        )));
    }
    let known = state.namespace.is_bot(&user_id)
        || state
            .store
            .agent_by_ghost(user_id.as_str())
            .await?
            .is_some_and(|agent| agent.deleted_at.is_none());
    if known {
        Ok(Json(json!({})))
    } else {
        Err(AppError::NotFound(format!("no Letta agent has the user {user_id}")))
    }
}

/// Aliases exist once the agent's room has been created and published by the sync reconciler.
pub async fn query_room_alias(
    State(state): State<AppState>,
    PathParam(room_alias): PathParam<String>,
) -> Result<Json<Value>, AppError> {
    let alias = OwnedRoomAliasId::try_from(room_alias.as_str())
        .map_err(|e| AppError::InvalidParam(format!("`{room_alias}` is not a room alias: {e}")))?;
    let agent = state.store.agent_by_alias(alias.as_str()).await?;
    match agent {
        Some(agent) if agent.room_id.is_some() && agent.deleted_at.is_none() => Ok(Json(json!({}))),
        _ => Err(AppError::NotFound(format!("no agent room has the alias {alias}"))),
    }
}

/// The homeserver's `/ping` check (`POST /_matrix/client/v1/appservice/{id}/ping` on its side).
pub async fn ping(body: axum::body::Bytes) -> Result<Json<Value>, AppError> {
    if !body.is_empty() {
        let parsed: Value = serde_json::from_slice(&body).map_err(|e| AppError::NotJson(e.to_string()))?;
        tracing::info!(
            transaction_id = parsed.get("transaction_id").and_then(|id| id.as_str()),
            "pinged by the homeserver"
        );
    }
    Ok(Json(json!({})))
}
