//! The tools as an MCP server (Streamable HTTP, rmcp), for a Letta that reaches us at a public URL.
//!
//! Listing needs no credentials: Letta lists an MCP server's tools when it is registered and from
//! the ADE, with no agent and with `{{ LETTA_MATRIX_TOKEN }}` unresolved, and a listing reveals
//! nothing secret. Every call needs the calling agent's token (`crate::tools::authenticate`); a
//! refused call is a tool error the agent reads, not a broken session.
//!
//! Shaped for Letta's MCP client (python `mcp` 1.12): no empty SSE priming event before an
//! answer, and a session's `DELETE` answered 204 rather than rmcp's 202.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::app::AppState;
use crate::config::Secret;
use crate::tools::{self, Caller, Refusal, ToolName};

pub use crate::tools::{AGENT_ID_HEADER, agent_token};

/// Where the MCP endpoint lives on its listener.
pub const MCP_PATH: &str = "/mcp";

/// The outcome of checking a request's credentials, for the handler to read.
#[derive(Debug, Clone)]
struct Credentials(Result<Caller, Refusal>);

#[derive(Clone)]
struct AgentTools {
    app: AppState,
}

impl AgentTools {
    fn tool(tool: ToolName) -> Tool {
        Tool::new(tool.as_str(), tool.description(), tool.input_schema())
    }
}

fn tool_error(message: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(message)]).into()
}

impl ServerHandler for AgentTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Matrix tools for Letta agents: message other agents, and read, post, join, create and leave rooms as yourself.",
        )
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        ToolName::parse(name).ok().map(Self::tool)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            ToolName::ALL.into_iter().map(Self::tool).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = ToolName::parse(&request.name).map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let credentials = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Credentials>())
            .cloned()
            .unwrap_or(Credentials(Err(Refusal::NoToken)));
        let caller = match credentials.0 {
            Ok(caller) => caller,
            Err(refusal) => return Ok(tool_error(refusal.to_string())),
        };
        let arguments = request.arguments.unwrap_or_default();
        match tools::call(&self.app, &caller, tool, arguments).await {
            Ok(answer) => Ok(CallToolResult::success(vec![ContentBlock::text(answer.to_string())]).into()),
            // As a tool result, not a protocol error: MCP clients show the model only the former.
            Err(error) => Ok(tool_error(error.to_string())),
        }
    }
}

/// The `/mcp` routes, or `None` when no `mcp_secret` is configured.
pub fn router(state: &AppState) -> Option<Router> {
    let secret = Arc::new(state.settings.raw.mcp_secret.clone()?);
    let app = state.clone();
    let mut config = StreamableHttpServerConfig::default();
    // Every call carries an agent's token, so the loopback-only Host check (against DNS
    // rebinding from browsers) would only stop Letta reaching us under a service name.
    config = config.disable_allowed_hosts();
    // A priming event is an empty `data:` line, which Letta's client logs as an error; the
    // session layer adds its own unless told not to.
    config.sse_retry = None;
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.sse_retry = None;
    let service = StreamableHttpService::new(move || Ok(AgentTools { app: app.clone() }), Arc::new(sessions), config);
    Some(
        Router::new()
            .nest_service(MCP_PATH, service)
            .layer(axum::middleware::from_fn_with_state(secret, credentials)),
    )
}

async fn credentials(State(secret): State<Arc<Secret>>, mut request: Request, next: Next) -> Response {
    let checked = tools::authenticate(&secret, request.headers());
    request.extensions_mut().insert(Credentials(checked));
    let closing = request.method() == Method::DELETE;
    let response = next.run(request).await;
    if closing && response.status() == StatusCode::ACCEPTED {
        return StatusCode::NO_CONTENT.into_response();
    }
    response
}
