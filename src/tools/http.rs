//! The tools as a plain HTTP API: `POST /tools/<name>` with the arguments as a JSON object, the
//! agent in `x-agent-id` and its token as a bearer token; the answer is the tool's JSON, a refusal
//! Matrix error JSON. Our Letta sandbox tools (`super::sandbox`) call it; it is served wherever
//! `/mcp` is.

use axum::extract::{Request, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::{ToolError, ToolName};
use crate::app::AppState;
use crate::error::{AppError, PathParam};

/// Where the API lives on its listener: `/tools/<name>`.
pub const TOOLS_PATH: &str = "/tools";

pub fn router(state: &AppState) -> Option<Router> {
    state.settings.raw.mcp_secret.as_ref()?;
    Some(
        Router::new()
            .route(
                &format!("{TOOLS_PATH}/{{name}}"),
                post(call).fallback(method_not_allowed),
            )
            .with_state(state.clone()),
    )
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

async fn call(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
    request: Request,
) -> Result<Json<Value>, AppError> {
    let secret = state.settings.raw.mcp_secret.as_ref().ok_or(AppError::Unrecognized)?;
    let caller = super::authenticate(secret, request.headers())?;
    let tool = ToolName::parse(&name)?;
    let (parts, body) = request.into_parts();
    let bytes = crate::appservice::read_limited(body, &parts.headers, state.settings.raw.max_body_bytes).await?;
    let arguments = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&bytes).map_err(|e| AppError::NotJson(e.to_string()))? {
            Value::Object(arguments) => arguments,
            _ => return Err(AppError::BadJson("the arguments are a JSON object".into())),
        }
    };
    let answer = super::call(&state, &caller, tool, arguments)
        .await
        .inspect_err(|error| {
            if matches!(error, ToolError::Failed(_)) {
                tracing::warn!(agent = caller.agent_id, tool = tool.as_str(), %error, "a tool call failed");
            }
        })?;
    Ok(Json(answer))
}
