//! Which Letta conversation a room talks in, and what a turn waits for.
//!
//! With `conversation_scope = "room"` every room but the agent's own gets a conversation of its
//! own, made on the room's first turn, so what is said in one room is not in the context of
//! another and rooms are answered at the same time. The agent's own room keeps the default
//! conversation, where its history and imported past are. Letta 0.16.8 gives a conversation a
//! context of its own only for `letta_v1_agent` (tests/letta_contract.rs pins it): other agent
//! types keep every room in the default conversation, one turn at a time, as with `agent` scope.

use ruma::RoomId;

use super::{Relay, WorkError};
use crate::config::ConversationScope;
use crate::letta::{Agent, Conversation};
use crate::store::AgentRecord;

impl Relay {
    pub(super) async fn conversation_for(
        &self,
        agent: &AgentRecord,
        room_id: &RoomId,
    ) -> Result<Conversation, WorkError> {
        let default = Conversation::Default(agent.agent_id.clone());
        if self.settings.raw.conversation_scope == ConversationScope::Agent
            || agent.room_id.as_deref() == Some(room_id.as_str())
        {
            return Ok(default);
        }
        let recorded = match self.store.room_conversation(&agent.agent_id, room_id.as_str()).await? {
            Some(recorded) => recorded,
            None => {
                let made = if isolates(&self.letta.agent(&agent.agent_id).await?) {
                    let summary = format!("Matrix room {room_id}");
                    match self.letta.create_conversation(&agent.agent_id, &summary).await? {
                        Conversation::Own { id, .. } => Some(id),
                        Conversation::Default(_) => None,
                    }
                } else {
                    None
                };
                // A crash before this line leaves an unused conversation in Letta, nothing worse.
                let recorded = self
                    .store
                    .set_room_conversation(&agent.agent_id, room_id.as_str(), made.as_deref())
                    .await?;
                tracing::info!(agent_id = agent.agent_id, %room_id, conversation = ?recorded, "the room has its conversation");
                recorded
            }
        };
        Ok(match recorded {
            Some(id) => Conversation::Own {
                agent_id: agent.agent_id.clone(),
                id,
            },
            None => default,
        })
    }
}

/// Whether Letta gives this agent's conversations a context of their own.
fn isolates(agent: &Agent) -> bool {
    agent.agent_type.as_deref() == Some("letta_v1_agent")
}

/// What turns wait for one another on: one turn at a time per conversation, so per agent in its
/// default conversation.
pub(super) fn serial_key(conversation: &Conversation) -> &str {
    match conversation {
        Conversation::Default(agent_id) => agent_id,
        Conversation::Own { id, .. } => id,
    }
}
