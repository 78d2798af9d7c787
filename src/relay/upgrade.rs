//! A room upgraded to a new room version (`m.room.tombstone`): the agents in it follow its people to
//! the replacement room, which is the agent's room (or DM, or group room) from then on.

use ruma::events::space::child::SpaceChildEventContent;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Deserialize;

use super::{Relay, WorkError, parse_room, parse_user};
use crate::store::InboxRow;

#[derive(Deserialize)]
struct Tombstone {
    content: TombstoneContent,
}

#[derive(Deserialize)]
struct TombstoneContent {
    replacement_room: OwnedRoomId,
}

impl Relay {
    pub(super) async fn follow_upgrade(&self, row: &InboxRow) -> Result<(), WorkError> {
        let event: Tombstone =
            serde_json::from_str(&row.event_json).map_err(|e| WorkError::Invalid(format!("tombstone event: {e}")))?;
        let (old, new) = (parse_room(&row.room_id)?, event.content.replacement_room);
        if old == new {
            return Ok(());
        }
        let agents = self.store.agents_in_room(old.as_str()).await?;
        if agents.is_empty() {
            return Ok(());
        }
        self.store.copy_room_settings(old.as_str(), new.as_str()).await?;
        for (agent, kind) in &agents {
            let ghost = parse_user(&agent.ghost_user_id)?;
            // The records move before the join: an invite to the new room that comes later is
            // then an invite to the agent's own room, and is accepted.
            if kind == "own" {
                self.store
                    .set_agent_room(&agent.agent_id, new.as_str(), agent.room_alias.as_deref())
                    .await?;
                self.store.mark_agent_room_left(new.as_str(), &agent.agent_id).await?;
                self.move_in_space(&old, &new).await?;
                // The reconciler caches agent rows; renames must reach the new room.
                self.sync_signal.notify_one();
            } else {
                self.store.add_agent_room(new.as_str(), &agent.agent_id, kind).await?;
                // The conversation goes on in the new room, with what it remembers.
                if let Some(conversation) = self.store.room_conversation(&agent.agent_id, old.as_str()).await? {
                    self.store
                        .set_room_conversation(&agent.agent_id, new.as_str(), conversation.as_deref())
                        .await?;
                }
                self.store.mark_agent_room_left(old.as_str(), &agent.agent_id).await?;
            }
            tracing::info!(agent_id = agent.agent_id, from = %old, to = %new, kind, "following a room upgrade");
            self.join_replacement(&old, &new, &ghost).await?;
        }
        if agents.iter().any(|(_, kind)| kind == "own") {
            // The bot posts the bridge's notices in agent rooms; it may need an invite as well.
            if let Err(error) = self.matrix.join(new.clone().into(), self.namespace.bot()).await {
                tracing::info!(%error, room = %new, "the bot cannot join the upgraded room yet");
            }
        }
        Ok(())
    }

    /// Joins the replacement room, or, when it is invite-only and nobody invited the ghost yet,
    /// asks the people in the old room for an invite.
    async fn join_replacement(&self, old: &RoomId, new: &RoomId, ghost: &UserId) -> Result<(), WorkError> {
        match self.matrix.join(new.to_owned().into(), ghost).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_transient() => Err(error.into()),
            Err(error) => {
                tracing::info!(%error, %ghost, room = %new, "cannot join the upgraded room; asking for an invite");
                let text =
                    format!("This room was upgraded. Invite {ghost} to the new room to go on talking with me there.");
                self.notice_once(old, ghost, &format!("upgrade-{ghost}"), &text).await
            }
        }
    }

    async fn move_in_space(&self, old: &RoomId, new: &RoomId) -> Result<(), WorkError> {
        let Some(space) = self.store.bridge_room(crate::sync::SPACE).await? else {
            return Ok(());
        };
        let space = parse_room(&space.room_id)?;
        let child = SpaceChildEventContent::new(vec![self.settings.server_name.clone()]);
        self.matrix.send_state(&space, new.as_str(), &child, None).await?;
        let removed = SpaceChildEventContent::new(Vec::new());
        self.matrix.send_state(&space, old.as_str(), &removed, None).await?;
        Ok(())
    }
}
