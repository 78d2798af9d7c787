//! Letta's conversations (0.16.8 and Cloud, `/v1/conversations`): an agent's separate threads,
//! each with its own message history and context window while memory blocks stay shared. A turn
//! goes to a [`Conversation`]: the agent's default one, or one made for a room.

use std::fmt;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{LettaClient, LettaError, encode};

/// Where a turn goes and whose messages a lookup reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// The agent's default conversation: what its own room and history import use.
    Default(String),
    /// A conversation of its own (`conv-…`), of the agent `agent_id`.
    Own { agent_id: String, id: String },
}

impl Conversation {
    pub fn agent_id(&self) -> &str {
        match self {
            Self::Default(agent_id) | Self::Own { agent_id, .. } => agent_id,
        }
    }

    /// Where its messages are sent and listed. The default one keeps the agent route, which
    /// every Letta serves.
    pub(super) fn messages_path(&self) -> String {
        match self {
            Self::Default(agent_id) => format!("/v1/agents/{}/messages", encode(agent_id)),
            Self::Own { id, .. } => format!("/v1/conversations/{}/messages", encode(id)),
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default(agent_id) => write!(f, "agent {agent_id}"),
            Self::Own { agent_id, id } => write!(f, "conversation {id} of agent {agent_id}"),
        }
    }
}

#[derive(Deserialize)]
struct Created {
    id: String,
    agent_id: String,
}

impl LettaClient {
    /// A new conversation of the agent; `summary` names it (Letta shows it in its ADE).
    pub async fn create_conversation(&self, agent_id: &str, summary: &str) -> Result<Conversation, LettaError> {
        let path = format!("/v1/conversations/?agent_id={}", encode(agent_id));
        let body = json!({ "summary": summary });
        // Not retried: a repeat would make a second conversation.
        let created: Created = self
            .call_once(Method::POST, &path, Some(&body), &format!("agent {agent_id}"))
            .await?;
        Ok(Conversation::Own {
            agent_id: created.agent_id,
            id: created.id,
        })
    }
}

impl LettaClient {
    /// Whether Letta is running a turn of the conversation's agent (in that conversation, for
    /// one of the agent's own): Letta 0.16.8 stores a turn's input only when the turn's step
    /// ends, so until then a lookup by otid cannot tell "never received" from "still running".
    pub async fn has_active_run(&self, conversation: &Conversation) -> Result<bool, LettaError> {
        let mut path = format!(
            "/v1/runs/?active=true&limit=1&agent_id={}",
            encode(conversation.agent_id())
        );
        if let Conversation::Own { id, .. } = conversation {
            path.push_str("&conversation_id=");
            path.push_str(&encode(id));
        }
        let runs: Vec<serde_json::Value> = self.get(&path, &conversation.to_string()).await?;
        Ok(!runs.is_empty())
    }
}
