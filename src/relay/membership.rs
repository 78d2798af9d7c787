//! People invite agents into DMs and group rooms: the ghost accepts, and the room becomes one of
//! the agent's rooms. Leaves and kicks are recorded too. These rows go through the room's lane
//! like messages, so a message sent right after an invite finds the agent already there.

use ruma::events::room::member::MembershipState;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde::Deserialize;

use super::{Relay, WorkError};
use crate::store::InboxRow;

#[derive(Deserialize)]
struct MembershipEvent {
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    state_key: OwnedUserId,
    content: MembershipContent,
}

#[derive(Deserialize)]
struct MembershipContent {
    membership: MembershipState,
    #[serde(default)]
    is_direct: bool,
}

impl Relay {
    pub(super) async fn handle_membership(&self, row: &InboxRow) -> Result<(), WorkError> {
        let event: MembershipEvent =
            serde_json::from_str(&row.event_json).map_err(|e| WorkError::Invalid(format!("membership event: {e}")))?;
        let target = &event.state_key;
        if event.content.membership == MembershipState::Invite && !self.trusts(&event.sender) {
            // Rejecting an invite is leaving the room one is invited to.
            self.matrix.leave(&event.room_id, target).await?;
            tracing::warn!(inviter = %event.sender, invited = %target, room = %event.room_id, "declined an invite from a user `allow` does not admit");
            return Ok(());
        }
        if self.namespace.is_bot(target) {
            if event.content.membership == MembershipState::Invite {
                self.matrix.join(event.room_id.into(), target).await?;
            }
            return Ok(());
        }
        let Some(agent) = self.store.agent_by_ghost(target.as_str()).await? else {
            tracing::info!(user = %target, room = %event.room_id, "membership of a ghost no agent owns; ignored");
            return Ok(());
        };
        let own_room = agent.room_id.as_deref() == Some(event.room_id.as_str());
        // One of our ghosts inviting another is inter-agent delivery, which joins by itself; the
        // room does not become one the invited agent listens in.
        if event.content.membership == MembershipState::Invite && self.namespace.is_ours(&event.sender) {
            return Ok(());
        }
        match event.content.membership {
            MembershipState::Invite if agent.deleted_at.is_none() && !own_room => {
                self.matrix.join(event.room_id.clone().into(), target).await?;
                // A room the agent already knows keeps its kind: the upgrade of a direct chat is
                // invited to without `is_direct`, and is a direct chat still.
                let known = self
                    .store
                    .agent_room_kind(event.room_id.as_str(), &agent.agent_id)
                    .await?;
                let kind = match known.as_deref() {
                    Some(kind) => kind,
                    None if event.content.is_direct => "direct",
                    None => "group",
                };
                self.store
                    .add_agent_room(event.room_id.as_str(), &agent.agent_id, kind)
                    .await?;
                tracing::info!(agent_id = agent.agent_id, room = %event.room_id, kind, "agent accepted an invite");
            }
            // The agent's own room after an upgrade, where nobody had invited the ghost yet.
            MembershipState::Invite if agent.deleted_at.is_none() => {
                self.matrix.join(event.room_id.clone().into(), target).await?;
            }
            MembershipState::Leave | MembershipState::Ban if !own_room => {
                self.store
                    .mark_agent_room_left(event.room_id.as_str(), &agent.agent_id)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whose invites and room settings count: the people agents serve, the admins, and the
    /// bridge itself.
    pub(super) fn trusts(&self, sender: &UserId) -> bool {
        self.namespace.is_ours(sender)
            || self.namespace.is_bot(sender)
            || self.settings.admins.iter().any(|admin| admin == sender)
            || super::is_allowed(&self.settings.allow, &self.settings.server_name, sender)
    }
}
