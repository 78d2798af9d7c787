//! What each tool does, as the calling agent's ghost and nothing else.

use rmcp::schemars;
use ruma::api::client::room::{Visibility, create_room};
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Caller, ToolError};
use crate::app::AppState;
use crate::relay::{interagent, is_allowed};
use crate::store::AgentRecord;

const READ_LIMIT_MAX: u32 = 50;

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

fn room_id(text: &str) -> Result<OwnedRoomId, ToolError> {
    OwnedRoomId::try_from(text)
        .map_err(|e| ToolError::invalid(format!("room_id `{text}` is not a room id (!…:server): {e}")))
}

fn database(error: impl std::fmt::Display) -> ToolError {
    ToolError::failed("database", error)
}

fn homeserver(error: impl std::fmt::Display) -> ToolError {
    ToolError::failed("homeserver", error)
}

/// The tools bound to one authenticated caller: its record and its ghost.
pub(super) struct Actions<'a> {
    app: &'a AppState,
    me: AgentRecord,
    ghost: OwnedUserId,
}

impl<'a> Actions<'a> {
    pub(super) async fn for_caller(app: &'a AppState, caller: &Caller) -> Result<Self, ToolError> {
        let me = app
            .store
            .agent(&caller.agent_id)
            .await
            .map_err(database)?
            .filter(|agent| agent.deleted_at.is_none())
            .ok_or_else(|| ToolError::refused(format!("agent {} is not known to the bridge", caller.agent_id)))?;
        let ghost = OwnedUserId::try_from(me.ghost_user_id.as_str()).map_err(|e| ToolError::failed("ghost id", e))?;
        Ok(Self { app, me, ghost })
    }

    async fn known_agent(&self, agent_id: &str) -> Result<AgentRecord, ToolError> {
        self.app
            .store
            .agent(agent_id)
            .await
            .map_err(database)?
            .filter(|agent| agent.deleted_at.is_none())
            .ok_or_else(|| ToolError::invalid(format!("no agent `{agent_id}`; list_agents shows the known ones")))
    }

    async fn ensure_in_room(&self, room: &OwnedRoomId) -> Result<(), ToolError> {
        let rooms = self.app.matrix.joined_rooms(&self.ghost).await.map_err(homeserver)?;
        if rooms.contains(room) {
            Ok(())
        } else {
            Err(ToolError::refused(format!(
                "you are not in room {room}; join it first with matrix_join_room"
            )))
        }
    }

    fn check_allowed(&self, user: &str) -> Result<OwnedUserId, ToolError> {
        let user =
            OwnedUserId::try_from(user).map_err(|e| ToolError::invalid(format!("`{user}` is not a user id: {e}")))?;
        let settings = &self.app.settings;
        if self.app.namespace.is_ours(&user) || is_allowed(&settings.allow, &settings.server_name, &user) {
            Ok(user)
        } else {
            Err(ToolError::refused(format!(
                "{user} is not allowed to use this bridge's agents, so agents may not invite them"
            )))
        }
    }

    pub(super) async fn agent_message(&self, args: AgentMessageArgs) -> Result<Value, ToolError> {
        if args.to_agent_id == self.me.agent_id {
            return Err(ToolError::invalid("to_agent_id is your own id; message another agent"));
        }
        if args.message.trim().is_empty() {
            return Err(ToolError::invalid("message is empty"));
        }
        let target = self.known_agent(&args.to_agent_id).await?;
        let room = target.room_id.as_deref().ok_or_else(|| {
            ToolError::Failed(format!("agent {} has no room yet; try again shortly", target.agent_id))
        })?;
        let room = room_id(room)?;
        let target_ghost =
            OwnedUserId::try_from(target.ghost_user_id.as_str()).map_err(|e| ToolError::failed("ghost id", e))?;
        let message = interagent::Outgoing {
            text: &args.message,
            hops: 1,
            txn_id: ruma::TransactionId::new(),
        };
        let event_id = interagent::post_as_agent(
            &self.app.matrix,
            &room,
            (&self.me, &self.ghost),
            Some(&target_ghost),
            message,
        )
        .await
        .map_err(|e| ToolError::failed("cannot post the message", e))?;
        Ok(json!({"event_id": event_id, "room_id": room, "to_agent_id": target.agent_id, "to_agent_name": target.name}))
    }

    pub(super) async fn list_agents(&self) -> Result<Value, ToolError> {
        let agents = self.app.store.agents().await.map_err(database)?;
        let listed: Vec<Value> = agents
            .iter()
            .filter(|agent| agent.deleted_at.is_none())
            .map(|agent| {
                json!({"agent_id": agent.agent_id, "name": agent.name, "user_id": agent.ghost_user_id, "room_id": agent.room_id})
            })
            .collect();
        Ok(json!({"agents": listed}))
    }

    pub(super) async fn get_agent_room(&self, args: AgentIdArgs) -> Result<Value, ToolError> {
        let agent = self.known_agent(&args.agent_id).await?;
        Ok(json!({"agent_id": agent.agent_id, "room_id": agent.room_id, "name": agent.name, "alias": agent.room_alias}))
    }

    pub(super) async fn send_message(&self, args: SendMessageArgs) -> Result<Value, ToolError> {
        let room = room_id(&args.room_id)?;
        if args.message.trim().is_empty() {
            return Err(ToolError::invalid("message is empty"));
        }
        self.ensure_in_room(&room).await?;
        let message = interagent::Outgoing {
            text: &args.message,
            hops: 1,
            txn_id: ruma::TransactionId::new(),
        };
        let event_id = interagent::post(&self.app.matrix, &room, (&self.me, &self.ghost), message)
            .await
            .map_err(|e| ToolError::failed("cannot post the message", e))?;
        Ok(json!({"event_id": event_id, "room_id": room}))
    }

    pub(super) async fn list_rooms(&self) -> Result<Value, ToolError> {
        let matrix = &self.app.matrix;
        let rooms = matrix.joined_rooms(&self.ghost).await.map_err(homeserver)?;
        let mut listed = Vec::new();
        for room in rooms {
            let state = |event_type: StateEventType| matrix.state_content(&room, event_type, "", &self.ghost);
            let name = state(StateEventType::RoomName).await.ok().flatten();
            let topic = state(StateEventType::RoomTopic).await.ok().flatten();
            let members = matrix.joined_member_count(&room, &self.ghost).await.ok();
            listed.push(json!({
                "room_id": room,
                "name": name.as_ref().and_then(|n| n["name"].as_str()),
                "topic": topic.as_ref().and_then(|t| t["topic"].as_str()),
                "members": members,
            }));
        }
        Ok(json!({"rooms": listed}))
    }

    pub(super) async fn read_room(&self, args: ReadRoomArgs) -> Result<Value, ToolError> {
        let room = room_id(&args.room_id)?;
        let limit = args.limit.unwrap_or(10);
        if !(1..=READ_LIMIT_MAX).contains(&limit) {
            return Err(ToolError::invalid(format!(
                "limit must be between 1 and {READ_LIMIT_MAX}"
            )));
        }
        self.ensure_in_room(&room).await?;
        let events = self
            .app
            .matrix
            .recent_events(&room, limit * 3, &self.ghost)
            .await
            .map_err(homeserver)?;
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
        Ok(json!({"room_id": room, "messages": messages}))
    }

    pub(super) async fn join_room(&self, args: JoinRoomArgs) -> Result<Value, ToolError> {
        let target = match (args.room_id, args.room_alias) {
            (Some(id), None) => id,
            (None, Some(alias)) => alias,
            _ => return Err(ToolError::invalid("give exactly one of room_id or room_alias")),
        };
        let room = OwnedRoomOrAliasId::try_from(target.as_str())
            .map_err(|e| ToolError::invalid(format!("`{target}` is neither a room id nor an alias: {e}")))?;
        let joined = self
            .app
            .matrix
            .join(room, &self.ghost)
            .await
            .map_err(|e| ToolError::failed("cannot join", e))?;
        self.app
            .store
            .add_agent_room(joined.as_str(), &self.me.agent_id, "group")
            .await
            .map_err(database)?;
        Ok(json!({"room_id": joined}))
    }

    pub(super) async fn create_room(&self, args: CreateRoomArgs) -> Result<Value, ToolError> {
        if args.name.trim().is_empty() {
            return Err(ToolError::invalid("name is empty"));
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
            .create_room(request, Some(&self.ghost))
            .await
            .map_err(|e| ToolError::failed("cannot create the room", e))?;
        self.app
            .store
            .add_agent_room(room.as_str(), &self.me.agent_id, "group")
            .await
            .map_err(database)?;
        Ok(json!({"room_id": room, "name": args.name}))
    }

    pub(super) async fn leave_room(&self, args: RoomArgs) -> Result<Value, ToolError> {
        let room = room_id(&args.room_id)?;
        if self.me.room_id.as_deref() == Some(room.as_str()) {
            return Err(ToolError::invalid(
                "this is your own agent room; the bridge keeps you in it",
            ));
        }
        self.app
            .matrix
            .leave(&room, &self.ghost)
            .await
            .map_err(|e| ToolError::failed("cannot leave", e))?;
        self.app
            .store
            .mark_agent_room_left(room.as_str(), &self.me.agent_id)
            .await
            .map_err(database)?;
        Ok(json!({"left": room}))
    }

    pub(super) async fn invite_user(&self, args: InviteArgs) -> Result<Value, ToolError> {
        let room = room_id(&args.room_id)?;
        let user = self.check_allowed(&args.user_id)?;
        self.ensure_in_room(&room).await?;
        self.app
            .matrix
            .ensure_invited(&room, &user, Some(&self.ghost))
            .await
            .map_err(|error| ToolError::failed("cannot invite", error))?;
        Ok(json!({"invited": user, "room_id": room}))
    }
}
