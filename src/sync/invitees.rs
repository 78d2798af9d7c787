//! People added to `invite` after rooms exist: they are invited to the space and to every agent
//! room, at the power level the first invitees got. Taking someone off `invite` removes nothing:
//! the bridge does not kick people out of rooms.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use ruma::events::StateEventType;
use ruma::{OwnedUserId, RoomId, UserId};

use super::provision::{ADMIN_LEVEL, SPACE};
use super::{Reconciler, WorkError};
use crate::matrix::MatrixError;

/// The `applied_settings` row holding the invite list as last carried out, one user per line.
const APPLIED_INVITES: &str = "invite";

impl Reconciler {
    /// Brings newly configured invitees into the rooms that exist. Costs one database read per
    /// process once done; rooms made later invite everyone at creation.
    pub(super) async fn ensure_invitees_everywhere(&self) -> Result<(), WorkError> {
        if self.invitees_current.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut configured: Vec<&str> = self.settings.invite.iter().map(|u| u.as_str()).collect();
        configured.sort_unstable();
        let wanted = configured.join("\n");
        // Nothing recorded yet: a new installation, whose rooms are made with the list as it is.
        let applied = self.store.applied_setting(APPLIED_INVITES).await?;
        if let Some(applied) = applied.filter(|applied| *applied != wanted) {
            let before: HashSet<&str> = applied.lines().collect();
            let added: Vec<OwnedUserId> = self
                .settings
                .invite
                .iter()
                .filter(|user| !before.contains(user.as_str()))
                .cloned()
                .collect();
            if !added.is_empty() {
                self.invite_everywhere(&added).await?;
            }
        }
        self.store.set_applied_setting(APPLIED_INVITES, &wanted).await?;
        self.invitees_current.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn invite_everywhere(&self, people: &[OwnedUserId]) -> Result<(), WorkError> {
        let mut rooms = Vec::new();
        if let Some(space) = self.store.bridge_room(SPACE).await? {
            rooms.push((space.room_id, self.namespace.bot().to_owned()));
        }
        for agent in self.store.agents().await? {
            if let (Some(room_id), None) = (agent.room_id, agent.deleted_at) {
                let ghost =
                    OwnedUserId::try_from(agent.ghost_user_id).map_err(|e| WorkError::Invalid(e.to_string()))?;
                rooms.push((room_id, ghost));
            }
        }
        tracing::info!(people = ?people, rooms = rooms.len(), "inviting newly configured people to the existing rooms");
        for (room_id, actor) in rooms {
            let room_id = RoomId::parse(&room_id).map_err(|e| WorkError::Invalid(e.to_string()))?;
            // A room that refuses (the actor lost its power, the room is gone) is reported and
            // passed over; only a homeserver that cannot answer now makes the whole step wait.
            if let Err(error) = self.bring_into_room(&room_id, &actor, people).await {
                if error.is_transient() {
                    return Err(error.into());
                }
                tracing::warn!(room_id = %room_id, %error, "cannot invite the newly configured people here");
            }
        }
        Ok(())
    }

    async fn bring_into_room(
        &self,
        room_id: &RoomId,
        actor: &UserId,
        people: &[OwnedUserId],
    ) -> Result<(), MatrixError> {
        let levels = self
            .matrix
            .state_content(room_id, StateEventType::RoomPowerLevels, "", actor)
            .await?;
        if let Some(mut levels) = levels {
            let users = levels
                .as_object_mut()
                .map(|content| content.entry("users").or_insert_with(|| serde_json::json!({})));
            if let Some(serde_json::Value::Object(users)) = users {
                let mut changed = false;
                for person in people {
                    if users
                        .get(person.as_str())
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0)
                        < ADMIN_LEVEL
                    {
                        users.insert(person.to_string(), ADMIN_LEVEL.into());
                        changed = true;
                    }
                }
                if changed {
                    self.matrix
                        .send_raw_state(room_id, StateEventType::RoomPowerLevels, "", &levels, actor)
                        .await?;
                }
            }
        }
        for person in people {
            self.matrix.ensure_invited(room_id, person, Some(actor)).await?;
        }
        Ok(())
    }
}
