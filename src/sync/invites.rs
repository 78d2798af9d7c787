//! People invite agents into DMs and group rooms: the ghost accepts, and the room is recorded as
//! one of the agent's rooms. Leaves and kicks are recorded too.

use ruma::events::room::member::MembershipState;
use ruma::{OwnedRoomId, OwnedUserId};
use serde::Deserialize;

use super::{Reconciler, SyncError};
use crate::store::{InboxEvent, InboxRow, InboxState};

/// How many membership rows one pass takes on.
const BATCH: i64 = 100;

#[derive(Deserialize)]
struct MembershipEvent {
    room_id: OwnedRoomId,
    state_key: OwnedUserId,
    content: MembershipContent,
}

#[derive(Deserialize)]
struct MembershipContent {
    membership: MembershipState,
    #[serde(default)]
    is_direct: bool,
}

impl Reconciler {
    /// Handles pending membership rows of our users; returns how many were handled.
    pub async fn accept_invites(&self) -> Result<usize, SyncError> {
        let rows = self.store.pending_inbox(InboxEvent::Membership, BATCH).await?;
        for row in &rows {
            match self.handle_membership(row).await {
                Ok(()) => self.store.finish_inbox(row.id, InboxState::Done, None).await?,
                Err(error) => {
                    tracing::warn!(event_id = row.event_id, room_id = row.room_id, %error, "cannot handle a membership change");
                    self.store
                        .finish_inbox(row.id, InboxState::Failed, Some(&error.to_string()))
                        .await?;
                }
            }
        }
        Ok(rows.len())
    }

    async fn handle_membership(&self, row: &InboxRow) -> Result<(), SyncError> {
        let event: MembershipEvent =
            serde_json::from_str(&row.event_json).map_err(|e| SyncError::Invalid(format!("membership event: {e}")))?;
        let target = &event.state_key;
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
        match event.content.membership {
            MembershipState::Invite if agent.deleted_at.is_none() && !own_room => {
                self.matrix.join(event.room_id.clone().into(), target).await?;
                let kind = if event.content.is_direct { "direct" } else { "group" };
                self.store
                    .add_agent_room(event.room_id.as_str(), &agent.agent_id, kind)
                    .await?;
                tracing::info!(agent_id = agent.agent_id, room = %event.room_id, kind, "agent accepted an invite");
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
}
