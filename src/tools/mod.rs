//! The agents' Matrix tools: one catalog, one implementation, served two ways.
//!
//! - as MCP tools (`crate::mcp`), for a Letta that can reach us at a public URL;
//! - as a small HTTP API (`http`), which Letta tools of our own making call from Letta's tool
//!   sandbox (`sandbox`): Letta 0.16.8 refuses MCP servers on loopback and private addresses,
//!   which is where most self-hosted Letta and letta-matrix find each other.
//!
//! Either way a call acts for one agent and needs that agent's token: an HMAC of its id under
//! `mcp_secret`, which `provision` stores among the agent's own Letta secrets. An agent cannot
//! act as another even though it names itself (`x-agent-id`).

mod actions;
pub mod http;
pub mod provision;
pub mod sandbox;

use std::sync::{Arc, LazyLock};

use hmac::{Hmac, Mac};
use rmcp::schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::app::AppState;
use crate::config::Secret;

pub use actions::{
    AgentIdArgs, AgentMessageArgs, CreateRoomArgs, InviteArgs, JoinRoomArgs, ReadRoomArgs, RoomArgs, SendMessageArgs,
};

/// The header naming the agent a call acts for.
pub const AGENT_ID_HEADER: &str = "x-agent-id";
/// The agent secret (Letta's per-agent tool environment) that holds the agent's token.
pub const TOKEN_SECRET: &str = "LETTA_MATRIX_TOKEN";

/// The token that lets `agent_id` (and only it) use the tools.
pub fn agent_token(secret: &Secret, agent_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes keys of any size");
    mac.update(b"letta-matrix mcp agent token\n");
    mac.update(agent_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The agent a call acts for, once its token has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub agent_id: String,
}

/// Why a call's credentials were refused; the text is meant for the agent reading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing x-agent-id header: Letta sends it with every tool call of an agent")]
    NoAgent,
    #[error("missing token: the agent's secret LETTA_MATRIX_TOKEN (`letta-matrix mcp-token <agent-id>`)")]
    NoToken,
    #[error("this token does not belong to the agent in x-agent-id")]
    WrongToken,
}

/// Checks a request's `x-agent-id` and token. The token may come as `Bearer <token>` or bare:
/// Letta sends an MCP server's `auth_token` as the whole header value.
pub fn authenticate(secret: &Secret, headers: &::http::HeaderMap) -> Result<Caller, Refusal> {
    let agent_id = headers
        .get(AGENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(Refusal::NoAgent)?;
    let token = crate::appservice::bearer_token(headers)
        .or_else(|| crate::appservice::authorization(headers).map(str::trim))
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("bearer"))
        .ok_or(Refusal::NoToken)?;
    if crate::appservice::tokens_match(token, &agent_token(secret, agent_id)) {
        Ok(Caller {
            agent_id: agent_id.to_owned(),
        })
    } else {
        Err(Refusal::WrongToken)
    }
}

/// Why a tool call did not do what was asked. Every message is written for the calling agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("no tool named `{0}`")]
    Unknown(String),
    /// The arguments are wrong; the agent can fix them.
    #[error("{0}")]
    Invalid(String),
    /// Not allowed for this agent, whatever the arguments.
    #[error("{0}")]
    Refused(String),
    /// The homeserver or our database failed; trying later may work.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self::Refused(message.into())
    }

    pub(crate) fn failed(what: &str, error: impl std::fmt::Display) -> Self {
        Self::Failed(format!("{what}: {error}"))
    }
}

/// Every tool. Names and arguments are those of the older Python system, whose agents' tool
/// rules and memories name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolName {
    AgentMessage,
    ListAgents,
    GetAgentRoom,
    SendMessage,
    ListRooms,
    ReadRoom,
    JoinRoom,
    CreateRoom,
    LeaveRoom,
    InviteUser,
}

impl ToolName {
    pub const ALL: [Self; 10] = [
        Self::AgentMessage,
        Self::ListAgents,
        Self::GetAgentRoom,
        Self::SendMessage,
        Self::ListRooms,
        Self::ReadRoom,
        Self::JoinRoom,
        Self::CreateRoom,
        Self::LeaveRoom,
        Self::InviteUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentMessage => "matrix_agent_message",
            Self::ListAgents => "list_agents",
            Self::GetAgentRoom => "get_agent_room",
            Self::SendMessage => "matrix_send_message",
            Self::ListRooms => "matrix_list_rooms",
            Self::ReadRoom => "matrix_read_room",
            Self::JoinRoom => "matrix_join_room",
            Self::CreateRoom => "matrix_create_room",
            Self::LeaveRoom => "matrix_leave_room",
            Self::InviteUser => "matrix_invite_user",
        }
    }

    pub fn parse(name: &str) -> Result<Self, ToolError> {
        Self::ALL
            .into_iter()
            .find(|tool| tool.as_str() == name)
            .ok_or_else(|| ToolError::Unknown(name.to_owned()))
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::AgentMessage => {
                "Send a message to another agent. It is posted by you, under your name, in the other agent's room; its answer comes back to you as a message."
            }
            Self::ListAgents => "List the agents known to the bridge: id, name, Matrix user id and room.",
            Self::GetAgentRoom => "Get an agent's Matrix room: its id, name and alias.",
            Self::SendMessage => "Post a message as yourself into a Matrix room you are in.",
            Self::ListRooms => "List the Matrix rooms you are in, with name, topic and member count.",
            Self::ReadRoom => {
                "Read the recent text messages of a room you are in, oldest first (limit 1-50, default 10)."
            }
            Self::JoinRoom => "Join a Matrix room by id (room_id) or alias (room_alias).",
            Self::CreateRoom => "Create a Matrix room as yourself, optionally public and with people invited.",
            Self::LeaveRoom => "Leave a Matrix room (not your own agent room).",
            Self::InviteUser => "Invite a Matrix user into a room you are in (only people the bridge allows).",
        }
    }

    /// The JSON Schema of the tool's arguments (an object schema; `{}` properties when none).
    pub fn input_schema(self) -> Arc<Map<String, Value>> {
        static SCHEMAS: LazyLock<Vec<Arc<Map<String, Value>>>> = LazyLock::new(|| {
            ToolName::ALL
                .into_iter()
                .map(|tool| Arc::new(tool.build_schema()))
                .collect()
        });
        let index = Self::ALL.iter().position(|t| *t == self).expect("every tool is in ALL");
        SCHEMAS[index].clone()
    }

    fn build_schema(self) -> Map<String, Value> {
        match self {
            Self::AgentMessage => schema_of::<AgentMessageArgs>(),
            Self::GetAgentRoom => schema_of::<AgentIdArgs>(),
            Self::SendMessage => schema_of::<SendMessageArgs>(),
            Self::ReadRoom => schema_of::<ReadRoomArgs>(),
            Self::JoinRoom => schema_of::<JoinRoomArgs>(),
            Self::CreateRoom => schema_of::<CreateRoomArgs>(),
            Self::LeaveRoom => schema_of::<RoomArgs>(),
            Self::InviteUser => schema_of::<InviteArgs>(),
            Self::ListAgents | Self::ListRooms => {
                let mut schema = Map::new();
                schema.insert("type".into(), "object".into());
                schema.insert("properties".into(), Value::Object(Map::new()));
                schema
            }
        }
    }
}

/// The schema rmcp's tool macros would give (JSON Schema 2020-12), as a map we own.
fn schema_of<T: JsonSchema + 'static>() -> Map<String, Value> {
    let mut schema = (*rmcp::handler::server::common::schema_for_type::<T>()).clone();
    // A title says nothing a model or Letta's schema check needs.
    schema.remove("title");
    schema
}

fn arguments<T: DeserializeOwned>(arguments: Map<String, Value>) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(arguments)).map_err(|e| ToolError::invalid(format!("bad arguments: {e}")))
}

/// Runs one tool for an authenticated caller; the answer is the JSON the agent reads.
pub async fn call(
    app: &AppState,
    caller: &Caller,
    tool: ToolName,
    args: Map<String, Value>,
) -> Result<Value, ToolError> {
    let tools = actions::Actions::for_caller(app, caller).await?;
    match tool {
        ToolName::AgentMessage => tools.agent_message(arguments(args)?).await,
        ToolName::ListAgents => tools.list_agents().await,
        ToolName::GetAgentRoom => tools.get_agent_room(arguments(args)?).await,
        ToolName::SendMessage => tools.send_message(arguments(args)?).await,
        ToolName::ListRooms => tools.list_rooms().await,
        ToolName::ReadRoom => tools.read_room(arguments(args)?).await,
        ToolName::JoinRoom => tools.join_room(arguments(args)?).await,
        ToolName::CreateRoom => tools.create_room(arguments(args)?).await,
        ToolName::LeaveRoom => tools.leave_room(arguments(args)?).await,
        ToolName::InviteUser => tools.invite_user(arguments(args)?).await,
    }
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

    #[test]
    fn every_tool_has_a_unique_name_and_an_object_schema() {
        let mut names: Vec<_> = ToolName::ALL.iter().map(|t| t.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ToolName::ALL.len());
        for tool in ToolName::ALL {
            assert_eq!(ToolName::parse(tool.as_str()), Ok(tool));
            let schema = tool.input_schema();
            assert_eq!(schema["type"], "object", "{}", tool.as_str());
            assert!(schema["properties"].is_object(), "{}", tool.as_str());
        }
        assert_eq!(
            ToolName::AgentMessage.input_schema()["required"],
            serde_json::json!(["to_agent_id", "message"])
        );
        assert!(matches!(ToolName::parse("rm_rf"), Err(ToolError::Unknown(_))));
    }

    #[test]
    fn credentials_name_one_agent() {
        let secret = Secret::new("a-secret-of-at-least-thirty-two-bytes");
        let headers = |agent: Option<&str>, auth: Option<String>| {
            let mut map = ::http::HeaderMap::new();
            if let Some(agent) = agent {
                map.insert(AGENT_ID_HEADER, agent.parse().unwrap());
            }
            if let Some(auth) = auth {
                map.insert(::http::header::AUTHORIZATION, auth.parse().unwrap());
            }
            map
        };
        let token = agent_token(&secret, "agent-a");
        let caller = Caller {
            agent_id: "agent-a".into(),
        };
        assert_eq!(
            authenticate(&secret, &headers(Some("agent-a"), Some(format!("Bearer {token}")))),
            Ok(caller.clone())
        );
        assert_eq!(
            authenticate(&secret, &headers(Some("agent-a"), Some(token.clone()))),
            Ok(caller)
        );
        assert_eq!(
            authenticate(&secret, &headers(Some("agent-b"), Some(format!("bearer {token}")))),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            authenticate(&secret, &headers(None, Some(token.clone()))),
            Err(Refusal::NoAgent)
        );
        assert_eq!(
            authenticate(&secret, &headers(Some("agent-a"), None)),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            authenticate(&secret, &headers(Some("agent-a"), Some("Bearer".into()))),
            Err(Refusal::NoToken)
        );
        // What Letta sends when it could not resolve the agent's secret in its template.
        assert_eq!(
            authenticate(
                &secret,
                &headers(Some("agent-a"), Some("Bearer {{ LETTA_MATRIX_TOKEN }}".into()))
            ),
            Err(Refusal::WrongToken)
        );
    }
}
