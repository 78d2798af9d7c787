//! The MCP tool server (Streamable HTTP, rmcp): agents act in Matrix as their own ghosts.
//!
//! Authentication is per agent. Letta names the calling agent in the `x-agent-id` header of every
//! MCP request; the bearer token must be that agent's token, an HMAC of its id under `mcp_secret`
//! (`letta-matrix mcp-token <agent-id>` prints it). In Letta the MCP server is registered once with
//! the auth token `{{ LETTA_MATRIX_TOKEN }}`, an agent-scoped tool variable set per agent, so an
//! agent holds only its own token and cannot act as another, even though the header is
//! self-declared.

mod tools;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use http::StatusCode;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use sha2::Sha256;

use crate::app::AppState;
use crate::config::Secret;

/// Where the MCP endpoint lives on its listener.
pub const MCP_PATH: &str = "/mcp";
/// The header Letta puts on every MCP request with the calling agent's id.
pub const AGENT_ID_HEADER: &str = "x-agent-id";

/// The agent an MCP request acts for, once its token has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub agent_id: String,
}

/// The token that lets `agent_id` (and only it) use the tools.
pub fn agent_token(secret: &Secret, agent_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes keys of any size");
    mac.update(b"letta-matrix mcp agent token\n");
    mac.update(agent_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `/mcp` routes, or `None` when no `mcp_secret` is configured.
pub fn router(state: &AppState) -> Option<Router> {
    let secret = Arc::new(state.settings.raw.mcp_secret.clone()?);
    let tools_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(tools::AgentTools::new(tools_state.clone())),
        Arc::new(LocalSessionManager::default()),
        // Every request carries an agent's token, so the loopback-only Host check (against DNS
        // rebinding from browsers) would only stop Letta reaching us under a service name.
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    );
    Some(
        Router::new()
            .nest_service(MCP_PATH, service)
            .layer(axum::middleware::from_fn_with_state(secret, authenticate)),
    )
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn authenticate(State(secret): State<Arc<Secret>>, mut request: Request, next: Next) -> Response {
    let Some(agent_id) = request
        .headers()
        .get(AGENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
    else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "missing x-agent-id header: Letta sends it with every MCP call",
        );
    };
    // Letta sends `auth_token` as the whole header value; people write it with or without "Bearer ".
    let headers = request.headers();
    let Some(token) =
        crate::appservice::bearer_token(headers).or_else(|| crate::appservice::authorization(headers).map(str::trim))
    else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: use the agent's token from `letta-matrix mcp-token <agent-id>`",
        );
    };
    if !crate::appservice::tokens_match(token, &agent_token(&secret, &agent_id)) {
        return refusal(
            StatusCode::FORBIDDEN,
            "this token does not belong to the agent in x-agent-id",
        );
    }
    request.extensions_mut().insert(Caller { agent_id });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_per_agent_and_per_secret() {
        let secret = Secret::new("s1");
        let token = agent_token(&secret, "agent-a");
        assert_eq!(token.len(), 64);
        assert_eq!(token, agent_token(&secret, "agent-a"));
        assert_ne!(token, agent_token(&secret, "agent-b"));
        assert_ne!(token, agent_token(&Secret::new("s2"), "agent-a"));
    }
}
