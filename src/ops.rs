//! `/health` (the process answers), `/ready` (it can do its job) and `/metrics` (Prometheus).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use crate::app::AppState;
use crate::error::{AppError, PathParam};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route(
            "/admin/agents/{agent_id}/import-history",
            axum::routing::post(import_history),
        )
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
}

/// The operator's token: `admin_token` must be set, and the request must carry it.
fn require_admin(state: &AppState, headers: &http::HeaderMap) -> Result<(), AppError> {
    let Some(expected) = state.settings.raw.admin_token.as_ref() else {
        return Err(AppError::NotFound(
            "the admin endpoints are off; set admin_token to enable them".into(),
        ));
    };
    let given = crate::appservice::bearer_token(headers).ok_or(AppError::MissingToken)?;
    if !crate::appservice::tokens_match(given, expected.expose()) {
        return Err(AppError::Forbidden);
    }
    Ok(())
}

/// Imports an agent's Letta history into its room again (what is there already is skipped).
async fn import_history(
    State(state): State<AppState>,
    PathParam(agent_id): PathParam<String>,
    headers: http::HeaderMap,
) -> Result<impl IntoResponse, AppError> {
    require_admin(&state, &headers)?;
    if state.store.agent(&agent_id).await?.is_none() {
        return Err(AppError::NotFound(format!("no agent {agent_id}")));
    }
    state.store.request_history_import(&agent_id, true).await?;
    state.history_signal.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": agent_id}))))
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// A database that has not answered `/ready` within this is down for it: otherwise the pool would
/// keep the probe waiting its whole acquire timeout (10 s), longer than most probes wait.
const READY_DATABASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Ready means accepted transactions can be stored: that is what the homeserver depends on, so
/// only the database decides the status code. A Letta outage is reported as `degraded`, because
/// taking us out of service would stop the homeserver from delivering what we can keep for later.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let sync = state.sync_state.read().expect("state lock").clone();
    let letta = if sync.passes == 0 {
        "not checked yet".to_owned()
    } else {
        sync.letta.clone()
    };
    let degraded = letta != "ok";
    let ping = match tokio::time::timeout(READY_DATABASE_TIMEOUT, state.store.ping()).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", READY_DATABASE_TIMEOUT.as_millis())),
    };
    match ping {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({
                "status": if degraded { "degraded" } else { "ready" },
                "database": "ok",
                "letta": letta,
                "sync": {"leader": sync.leader, "last_error": sync.last_error},
            })),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "database": error, "letta": letta})),
        ),
    }
}

/// Agents → ghosts → rooms → space, and the sync state: what an operator checks first. Off
/// unless `admin_token` is set, because it names every user and room.
async fn status(State(state): State<AppState>, headers: http::HeaderMap) -> Result<Json<serde_json::Value>, AppError> {
    require_admin(&state, &headers)?;
    let space = state
        .store
        .bridge_room(crate::sync::SPACE)
        .await?
        .map(|room| room.room_id);
    let mut other_rooms: std::collections::HashMap<String, Vec<serde_json::Value>> = Default::default();
    for (agent_id, room_id, kind) in state.store.all_agent_rooms().await? {
        other_rooms
            .entry(agent_id)
            .or_default()
            .push(json!({"room_id": room_id, "kind": kind}));
    }
    let agents: Vec<serde_json::Value> = state
        .store
        .agents()
        .await?
        .into_iter()
        .map(|agent| {
            json!({
                "in_space": agent.sync_step == "ready" && agent.deleted_at.is_none(),
                "other_rooms": other_rooms.remove(&agent.agent_id).unwrap_or_default(),
                "agent_id": agent.agent_id,
                "name": agent.name,
                "ghost": agent.ghost_user_id,
                "room_id": agent.room_id,
                "room_alias": agent.room_alias,
                "state": agent.sync_step,
                "deleted_at_ms": agent.deleted_at,
            })
        })
        .collect();
    let sync = state.sync_state.read().expect("state lock").clone();
    let (pending, rooms) = state.store.inbox_backlog().await?;
    let conversations = state.store.own_conversations().await?;
    let relay = json!({
        "pending_events": pending,
        "rooms_waiting": rooms,
        "conversation_scope": state.settings.raw.conversation_scope,
        "rooms_with_own_conversation": conversations,
    });
    Ok(Json(
        json!({"space": space, "sync": sync, "relay": relay, "agents": agents}),
    ))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
