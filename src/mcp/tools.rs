//! The tools. Names and arguments are those of the older Python system, whose agents' tool rules and
//! memories name them; every tool acts as the calling agent's ghost and nothing else.

use http::request::Parts;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use ruma::api::client::room::{Visibility, create_room};
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Caller;
use crate::app::AppState;
use crate::relay::{interagent, is_allowed};
use crate::store::AgentRecord;

const READ_LIMIT_MAX: u32 = 50;

#[derive(Clone)]
pub struct AgentTools {
    app: AppState,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AgentMessageArgs {
    /// The Letta id of the agent to message (`agent-…`).
    pub to_agent_id: String,
    /// The message; Markdown is rendered for people reading along.
    pub message: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AgentIdArgs {
    /// A Letta agent id (`agent-…`).
    pub agent_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SendMessageArgs {
    /// A room id (`!…:server`) the calling agent is in.
    pub room_id: String,
    pub message: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadRoomArgs {
    pub room_id: String,
    /// How many recent messages, 1 to 50 (default 10).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct JoinRoomArgs {
    /// A room id (`!…:server`).
    #[serde(default)]
    pub room_id: Option<String>,
    /// A room alias (`#…:server`), instead of `room_id`.
    #[serde(default)]
    pub room_alias: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateRoomArgs {
    pub name: String,
    #[serde(default)]
    pub topic: Option<String>,
    /// Published in the room directory and joinable by anyone (default false).
    #[serde(default)]
    pub is_public: bool,
    /// Matrix user ids to invite; each must be allowed by the bridge's `allow` list.
    #[serde(default)]
    pub invite_users: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RoomArgs {
    pub room_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct InviteArgs {
    pub room_id: String,
    /// The Matrix user id to invite; must be allowed by the bridge's `allow` list.
    pub user_id: String,
}

fn invalid(message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), None)
}

fn failed(what: &str, error: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(format!("{what}: {error}"), None)
}

fn answer(value: Value) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(value.to_string())]))
}

fn room_id(text: &str) -> Result<OwnedRoomId, ErrorData> {
    OwnedRoomId::try_from(text).map_err(|e| invalid(format!("room_id `{text}` is not a room id (!…:server): {e}")))
}

impl AgentTools {
    pub fn new(app: AppState) -> Self {
        Self {
            app,
            tool_router: Self::tool_router(),
        }
    }

    /// The calling agent and its ghost, as authenticated by the `/mcp` middleware.
    async fn caller(&self, parts: &Parts) -> Result<(AgentRecord, OwnedUserId), ErrorData> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .ok_or_else(|| ErrorData::invalid_request("no authenticated agent on this request", None))?;
        let agent = self
            .app
            .store
            .agent(&caller.agent_id)
            .await
            .map_err(|e| failed("database", e))?
            .filter(|agent| agent.deleted_at.is_none())
            .ok_or_else(|| {
                ErrorData::invalid_request(format!("agent {} is not known to the bridge", caller.agent_id), None)
            })?;
        let ghost = OwnedUserId::try_from(agent.ghost_user_id.as_str()).map_err(|e| failed("ghost id", e))?;
        Ok((agent, ghost))
    }

    async fn known_agent(&self, agent_id: &str) -> Result<AgentRecord, ErrorData> {
        self.app
            .store
            .agent(agent_id)
            .await
            .map_err(|e| failed("database", e))?
            .filter(|agent| agent.deleted_at.is_none())
            .ok_or_else(|| invalid(format!("no agent `{agent_id}`; list_agents shows the known ones")))
    }

    async fn ensure_in_room(&self, room: &OwnedRoomId, ghost: &OwnedUserId) -> Result<(), ErrorData> {
        let rooms = self
            .app
            .matrix
            .joined_rooms(ghost)
            .await
            .map_err(|e| failed("homeserver", e))?;
        if rooms.contains(room) {
            Ok(())
        } else {
            Err(ErrorData::invalid_request(
                format!("you are not in room {room}; join it first with matrix_join_room"),
                None,
            ))
        }
    }

    fn check_allowed(&self, user: &str) -> Result<OwnedUserId, ErrorData> {
        let user = OwnedUserId::try_from(user).map_err(|e| invalid(format!("`{user}` is not a user id: {e}")))?;
        let settings = &self.app.settings;
        if self.app.namespace.is_ours(&user) || is_allowed(&settings.allow, &settings.server_name, &user) {
            Ok(user)
        } else {
            Err(ErrorData::invalid_request(
                format!("{user} is not allowed to use this bridge's agents, so agents may not invite them"),
                None,
            ))
        }
    }
}

#[tool_router]
impl AgentTools {
    #[tool(
        description = "Send a message to another agent. It is posted by you, under your name, in the other agent's room; its answer comes back to you as a message."
    )]
    async fn matrix_agent_message(
        &self,
        Parameters(args): Parameters<AgentMessageArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (me, my_ghost) = self.caller(&parts).await?;
        if args.to_agent_id == me.agent_id {
            return Err(invalid("to_agent_id is your own id; message another agent"));
        }
        if args.message.trim().is_empty() {
            return Err(invalid("message is empty"));
        }
        let target = self.known_agent(&args.to_agent_id).await?;
        let room = target
            .room_id
            .as_deref()
            .ok_or_else(|| invalid(format!("agent {} has no room yet; try again shortly", target.agent_id)))?;
        let room = room_id(room)?;
        let target_ghost = OwnedUserId::try_from(target.ghost_user_id.as_str()).map_err(|e| failed("ghost id", e))?;
        let message = interagent::Outgoing {
            text: &args.message,
            hops: 1,
            txn_id: ruma::TransactionId::new(),
        };
        let event_id =
            interagent::post_as_agent(&self.app.matrix, &room, (&me, &my_ghost), Some(&target_ghost), message)
                .await
                .map_err(|e| failed("cannot post the message", e))?;
        answer(
            json!({"event_id": event_id, "room_id": room, "to_agent_id": target.agent_id, "to_agent_name": target.name}),
        )
    }

    #[tool(description = "List the agents known to the bridge: id, name, Matrix user id and room.")]
    async fn list_agents(&self, Extension(parts): Extension<Parts>) -> Result<CallToolResult, ErrorData> {
        self.caller(&parts).await?;
        let agents = self.app.store.agents().await.map_err(|e| failed("database", e))?;
        let listed: Vec<Value> = agents
            .iter()
            .filter(|agent| agent.deleted_at.is_none())
            .map(|agent| {
                json!({"agent_id": agent.agent_id, "name": agent.name, "user_id": agent.ghost_user_id, "room_id": agent.room_id})
            })
            .collect();
        answer(json!({"agents": listed}))
    }

    #[tool(description = "Get an agent's Matrix room: its id, name and alias.")]
    async fn get_agent_room(
        &self,
        Parameters(args): Parameters<AgentIdArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        self.caller(&parts).await?;
        let agent = self.known_agent(&args.agent_id).await?;
        answer(
            json!({"agent_id": agent.agent_id, "room_id": agent.room_id, "name": agent.name, "alias": agent.room_alias}),
        )
    }

    #[tool(description = "Post a message as yourself into a Matrix room you are in.")]
    async fn matrix_send_message(
        &self,
        Parameters(args): Parameters<SendMessageArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (me, my_ghost) = self.caller(&parts).await?;
        let room = room_id(&args.room_id)?;
        if args.message.trim().is_empty() {
            return Err(invalid("message is empty"));
        }
        self.ensure_in_room(&room, &my_ghost).await?;
        let message = interagent::Outgoing {
            text: &args.message,
            hops: 1,
            txn_id: ruma::TransactionId::new(),
        };
        let event_id = interagent::post(&self.app.matrix, &room, (&me, &my_ghost), message)
            .await
            .map_err(|e| failed("cannot post the message", e))?;
        answer(json!({"event_id": event_id, "room_id": room}))
    }

    #[tool(description = "List the Matrix rooms you are in, with name, topic and member count.")]
    async fn matrix_list_rooms(&self, Extension(parts): Extension<Parts>) -> Result<CallToolResult, ErrorData> {
        let (_, my_ghost) = self.caller(&parts).await?;
        let matrix = &self.app.matrix;
        let rooms = matrix
            .joined_rooms(&my_ghost)
            .await
            .map_err(|e| failed("homeserver", e))?;
        let mut listed = Vec::new();
        for room in rooms {
            let state = |event_type: StateEventType| matrix.state_content(&room, event_type, "", &my_ghost);
            let name = state(StateEventType::RoomName).await.ok().flatten();
            let topic = state(StateEventType::RoomTopic).await.ok().flatten();
            let members = matrix.joined_member_count(&room, &my_ghost).await.ok();
            listed.push(json!({
                "room_id": room,
                "name": name.as_ref().and_then(|n| n["name"].as_str()),
                "topic": topic.as_ref().and_then(|t| t["topic"].as_str()),
                "members": members,
            }));
        }
        answer(json!({"rooms": listed}))
    }

    #[tool(description = "Read the recent text messages of a room you are in, oldest first (limit 1-50, default 10).")]
    async fn matrix_read_room(
        &self,
        Parameters(args): Parameters<ReadRoomArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (_, my_ghost) = self.caller(&parts).await?;
        let room = room_id(&args.room_id)?;
        let limit = args.limit.unwrap_or(10);
        if !(1..=READ_LIMIT_MAX).contains(&limit) {
            return Err(invalid(format!("limit must be between 1 and {READ_LIMIT_MAX}")));
        }
        self.ensure_in_room(&room, &my_ghost).await?;
        let events = self
            .app
            .matrix
            .recent_events(&room, limit * 3, &my_ghost)
            .await
            .map_err(|e| failed("homeserver", e))?;
        let mut messages: Vec<Value> = events
            .iter()
            .filter(|e| e["type"] == "m.room.message" && e["content"]["m.relates_to"]["rel_type"] != "m.replace")
            .filter_map(|e| {
                Some(json!({
                    "event_id": e["event_id"],
                    "sender": e["sender"],
                    "body": e["content"]["body"].as_str()?,
                    "timestamp_ms": e["origin_server_ts"],
                }))
            })
            .take(limit as usize)
            .collect();
        messages.reverse();
        answer(json!({"room_id": room, "messages": messages}))
    }

    #[tool(description = "Join a Matrix room by id (room_id) or alias (room_alias).")]
    async fn matrix_join_room(
        &self,
        Parameters(args): Parameters<JoinRoomArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (me, my_ghost) = self.caller(&parts).await?;
        let target = match (args.room_id, args.room_alias) {
            (Some(id), None) => id,
            (None, Some(alias)) => alias,
            _ => return Err(invalid("give exactly one of room_id or room_alias")),
        };
        let room = OwnedRoomOrAliasId::try_from(target.as_str())
            .map_err(|e| invalid(format!("`{target}` is neither a room id nor an alias: {e}")))?;
        let joined = self
            .app
            .matrix
            .join(room, &my_ghost)
            .await
            .map_err(|e| failed("cannot join", e))?;
        self.app
            .store
            .add_agent_room(joined.as_str(), &me.agent_id, "group")
            .await
            .map_err(|e| failed("database", e))?;
        answer(json!({"room_id": joined}))
    }

    #[tool(description = "Create a Matrix room as yourself, optionally public and with people invited.")]
    async fn matrix_create_room(
        &self,
        Parameters(args): Parameters<CreateRoomArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (me, my_ghost) = self.caller(&parts).await?;
        if args.name.trim().is_empty() {
            return Err(invalid("name is empty"));
        }
        let invite = args
            .invite_users
            .iter()
            .map(|user| self.check_allowed(user))
            .collect::<Result<Vec<_>, _>>()?;
        let mut request = create_room::v3::Request::new();
        request.name = Some(args.name.clone());
        request.topic = args.topic.clone();
        request.invite = invite;
        if args.is_public {
            request.visibility = Visibility::Public;
            request.preset = Some(create_room::v3::RoomPreset::PublicChat);
        } else {
            request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        }
        let room = self
            .app
            .matrix
            .create_room(request, Some(&my_ghost))
            .await
            .map_err(|e| failed("cannot create the room", e))?;
        self.app
            .store
            .add_agent_room(room.as_str(), &me.agent_id, "group")
            .await
            .map_err(|e| failed("database", e))?;
        answer(json!({"room_id": room, "name": args.name}))
    }

    #[tool(description = "Leave a Matrix room (not your own agent room).")]
    async fn matrix_leave_room(
        &self,
        Parameters(args): Parameters<RoomArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (me, my_ghost) = self.caller(&parts).await?;
        let room = room_id(&args.room_id)?;
        if me.room_id.as_deref() == Some(room.as_str()) {
            return Err(invalid("this is your own agent room; the bridge keeps you in it"));
        }
        self.app
            .matrix
            .leave(&room, &my_ghost)
            .await
            .map_err(|e| failed("cannot leave", e))?;
        self.app
            .store
            .mark_agent_room_left(room.as_str(), &me.agent_id)
            .await
            .map_err(|e| failed("database", e))?;
        answer(json!({"left": room}))
    }

    #[tool(description = "Invite a Matrix user into a room you are in (only people the bridge allows).")]
    async fn matrix_invite_user(
        &self,
        Parameters(args): Parameters<InviteArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let (_, my_ghost) = self.caller(&parts).await?;
        let room = room_id(&args.room_id)?;
        let user = self.check_allowed(&args.user_id)?;
        self.ensure_in_room(&room, &my_ghost).await?;
        self.app
            .matrix
            .ensure_invited(&room, &user, Some(&my_ghost))
            .await
            .map_err(|error| failed("cannot invite", error))?;
        answer(json!({"invited": user, "room_id": room}))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AgentTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Matrix tools for Letta agents: message other agents, and read, post, join, create and leave rooms as yourself.",
        )
    }
}
