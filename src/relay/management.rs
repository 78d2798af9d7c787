//! The management room: each configured admin has a direct chat with the appservice bot, which
//! takes commands there. Anyone else writing in it is politely refused.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::incoming::Incoming;
use super::{Relay, WorkError, reply, short_hash};
use crate::config::ConversationScope;
use crate::store::InboxRow;
use crate::sync::MANAGEMENT_PREFIX;

const HELP: &str = "Commands:
- `help`: this list
- `agents`: every agent with its Matrix user and room
- `sync`: compare Letta with Matrix now
- `status`: Letta and homeserver health, the relay's queue, recent errors
- `import-history <agent-id>`: import an agent's Letta history into its room again
- `invite <agent-id> <user-id>`: invite someone into an agent's room";

impl Relay {
    /// Whether `room_id` is a management room (one `bridge_rooms` row per admin).
    pub(super) async fn is_management_room(&self, room_id: &str) -> Result<bool, WorkError> {
        for admin in &self.settings.admins {
            if let Some(room) = self.store.bridge_room(&format!("{MANAGEMENT_PREFIX}{admin}")).await?
                && room.room_id == room_id
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) async fn handle_command(&self, row: &InboxRow, incoming: &Incoming) -> Result<&'static str, WorkError> {
        let room: OwnedRoomId = super::parse_room(&row.room_id)?;
        let sender = super::parse_user(&incoming.sender)?;
        let answer = if self.settings.admins.contains(&sender) {
            let text = incoming.body();
            let words: Vec<&str> = text.split_whitespace().collect();
            self.run_command(row, &words).await?
        } else {
            "Sorry, only the bridge's admins can give commands here.".to_owned()
        };
        let txn = format!("management-{}", short_hash(&row.event_id));
        self.matrix
            .send_message(&room, txn.into(), &reply::notice(&answer), Some(self.namespace.bot()))
            .await?;
        Ok("done")
    }

    async fn run_command(&self, row: &InboxRow, words: &[&str]) -> Result<String, WorkError> {
        let command = words.first().map(|w| w.trim_start_matches('!').to_lowercase());
        Ok(match (command.as_deref(), &words[1.min(words.len())..]) {
            (Some("help") | None, _) => HELP.to_owned(),
            (Some("agents"), []) => self.list_agents().await?,
            (Some("sync"), []) => {
                self.sync_signal.notify_one();
                "A sync pass is starting; `agents` and `status` show its result.".to_owned()
            }
            (Some("status"), []) => self.status(row).await?,
            (Some("import-history"), [agent_id]) => match self.store.agent(agent_id).await? {
                Some(_) => {
                    self.store.request_history_import(agent_id, true).await?;
                    self.history_signal.notify_one();
                    format!("Importing the history of {agent_id}; messages already in its room are skipped.")
                }
                None => format!("There is no agent `{agent_id}`; `agents` lists them."),
            },
            (Some("invite"), [agent_id, user]) => self.invite(agent_id, user).await?,
            (Some(known @ ("agents" | "sync" | "status" | "import-history" | "invite")), _) => {
                format!("`{known}` takes other arguments. {HELP}")
            }
            (Some(other), _) => format!("I do not know `{other}`. {HELP}"),
        })
    }

    async fn list_agents(&self) -> Result<String, WorkError> {
        let agents = self.store.agents().await?;
        if agents.is_empty() {
            return Ok("No agents yet: sync has not found any in Letta.".to_owned());
        }
        let mut lines = vec![format!("{} agents:", agents.len())];
        for agent in agents {
            let state = if agent.deleted_at.is_some() {
                " (deleted in Letta)"
            } else {
                ""
            };
            lines.push(format!(
                "- **{}**{state}: `{}`, {}, room {}",
                agent.name,
                agent.agent_id,
                agent.ghost_user_id,
                agent
                    .room_alias
                    .or(agent.room_id)
                    .unwrap_or_else(|| "not made yet".into())
            ));
        }
        Ok(lines.join("\n"))
    }

    /// `command` is the row asking, which is not part of the queue it reports.
    async fn status(&self, command: &InboxRow) -> Result<String, WorkError> {
        let sync = self.sync_state.read().expect("state lock").clone();
        let homeserver = match self.matrix.versions().await {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        };
        let (pending, rooms) = self.store.inbox_backlog_besides(Some(command.id)).await?;
        let mut lines = vec![
            format!(
                "- Letta: {}",
                if sync.passes == 0 {
                    "not checked yet"
                } else {
                    &sync.letta
                }
            ),
            format!("- homeserver: {homeserver}"),
            format!(
                "- agents in Letta: {}; sync passes: {}",
                sync.agents_in_letta, sync.passes
            ),
            format!("- relay queue: {pending} events waiting in {rooms} rooms"),
            format!(
                "- conversations: scope `{}`, {} rooms with a conversation of their own",
                match self.settings.raw.conversation_scope {
                    ConversationScope::Room => "room",
                    ConversationScope::Agent => "agent",
                },
                self.store.own_conversations().await?
            ),
        ];
        if let Some(error) = sync.last_error {
            lines.push(format!("- last sync error: {error}"));
        }
        for (event_id, error) in self.store.recent_failures(3).await? {
            lines.push(format!("- failed: {event_id}: {error}"));
        }
        Ok(lines.join("\n"))
    }

    async fn invite(&self, agent_id: &str, user: &str) -> Result<String, WorkError> {
        let Some(agent) = self.store.agent(agent_id).await? else {
            return Ok(format!("There is no agent `{agent_id}`; `agents` lists them."));
        };
        let Ok(user) = OwnedUserId::try_from(user) else {
            return Ok(format!("`{user}` is not a Matrix user id (@name:server)."));
        };
        let Some(room) = agent.room_id.as_deref() else {
            return Ok(format!("{} has no room yet.", agent.name));
        };
        let room: &RoomId = <&RoomId>::try_from(room).map_err(|e| WorkError::Invalid(e.to_string()))?;
        let bot: &UserId = self.namespace.bot();
        match self.matrix.invite(room, &user, Some(bot)).await {
            Ok(()) => Ok(format!("Invited {user} to {}'s room.", agent.name)),
            Err(error) if error.is_already_in_room() => Ok(format!("{user} is already in {}'s room.", agent.name)),
            Err(error) => Ok(format!("The homeserver refused the invite: {error}")),
        }
    }
}
