//! The Matrix side of one agent: its ghost, its room (in the space, people invited), renames,
//! and its retirement when Letta deletes it.

use ruma::api::client::room::create_room::RoomPowerLevelsContentOverride;
use ruma::api::client::room::create_room::v3::{CreationContent, Request as CreateRoomRequest, RoomPreset};
use ruma::api::error::ErrorKind;
use ruma::events::room::message::RoomMessageEventContent;
use ruma::events::room::name::RoomNameEventContent;
use ruma::events::room::topic::RoomTopicEventContent;
use ruma::events::space::child::SpaceChildEventContent;
use ruma::events::space::parent::SpaceParentEventContent;
use ruma::events::{EmptyStateKey, InitialStateEvent};
use ruma::room::RoomType;
use ruma::serde::Raw;
use ruma::{Int, OwnedRoomAliasId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UserId};

use super::{MANAGEMENT_PREFIX, Reconciler, WorkError};
use crate::letta::Agent;
use crate::store::AgentRecord;

/// The space's name in `bridge_rooms`.
pub const SPACE: &str = "space";
/// People and the bot administer every room we create.
pub(super) const ADMIN_LEVEL: i64 = 100;

impl Reconciler {
    /// The "Letta Agents" space, created once by the bot.
    pub(super) async fn ensure_space(&self) -> Result<OwnedRoomId, WorkError> {
        if let Some(space) = self.store.bridge_room(SPACE).await? {
            return parse_room_id(&space.room_id);
        }
        let alias_localpart = format!("{}agents", self.settings.raw.ghost_prefix);
        let mut request = CreateRoomRequest::new();
        request.name = Some(self.settings.raw.space_name.clone());
        request.topic = Some("Every Letta agent's room".into());
        request.room_alias_name = Some(alias_localpart.clone());
        request.preset = Some(RoomPreset::PrivateChat);
        request.invite = self.settings.invite.clone();
        request.power_level_content_override = Some(self.admin_power_levels(self.namespace.bot(), &[]).await?);
        let mut creation = CreationContent::new();
        creation.room_type = Some(RoomType::Space);
        request.creation_content = Some(Raw::new(&creation).map_err(invalid)?);
        let (space, _) = self
            .create_or_find(request, &alias_localpart, self.namespace.bot())
            .await?;
        let recorded = self.store.set_bridge_room(SPACE, space.as_str()).await?;
        tracing::info!(space = recorded.room_id, "created the agents space");
        parse_room_id(&recorded.room_id)
    }

    /// Gives every configured admin a management room: a direct chat with the bot that takes
    /// commands. Made once per admin; a room that exists is kept.
    pub(super) async fn ensure_management_rooms(&self) -> Result<(), WorkError> {
        for admin in &self.settings.admins {
            let name = format!("{MANAGEMENT_PREFIX}{admin}");
            if self.store.bridge_room(&name).await?.is_some() {
                continue;
            }
            let mut request = CreateRoomRequest::new();
            request.name = Some("letta-matrix management".into());
            request.topic = Some("Commands for the Letta bridge; say `help`".into());
            request.preset = Some(RoomPreset::TrustedPrivateChat);
            request.is_direct = true;
            request.invite = vec![admin.clone()];
            let room = self.matrix.create_room(request, Some(self.namespace.bot())).await?;
            self.store.set_bridge_room(&name, room.as_str()).await?;
            let welcome =
                RoomMessageEventContent::notice_plain("Hello! I run the Letta bridge. Say `help` for what I can do.");
            let txn = OwnedTransactionId::from(format!("management-welcome-{}", room.as_str()));
            self.matrix.send_message(&room, txn, &welcome, None).await?;
            tracing::info!(%admin, %room, "created a management room");
        }
        Ok(())
    }

    /// Brings one agent fully into Matrix; every step may be repeated safely.
    pub(super) async fn provision(
        &self,
        agent: &Agent,
        record: Option<AgentRecord>,
        space: &RoomId,
    ) -> Result<(), WorkError> {
        let ghost = self.namespace.ghost_for_agent(&agent.id);
        if record.is_none() {
            self.store
                .insert_agent(&agent.id, ghost.as_str(), &agent.name, agent.description.as_deref())
                .await?;
        }
        self.matrix.register_ghost(ghost.localpart()).await?;
        self.matrix.set_display_name(&ghost, &agent.name).await?;
        let room_id = match record.as_ref().and_then(|r| r.room_id.as_deref()) {
            Some(room_id) => {
                let room_id = parse_room_id(room_id)?;
                self.refresh_room(
                    &room_id,
                    &ghost,
                    agent,
                    record.as_ref().expect("a room implies a record"),
                )
                .await?;
                room_id
            }
            None => {
                let room_id = self.create_agent_room(agent, &ghost, space).await?;
                let alias = self.namespace.alias_for_agent(&agent.id);
                self.store
                    .set_agent_room(&agent.id, room_id.as_str(), Some(&alias))
                    .await?;
                room_id
            }
        };
        // The bot holds power in every agent room, to moderate and to post the bridge's notices.
        self.matrix.join(room_id.clone().into(), self.namespace.bot()).await?;
        let child = SpaceChildEventContent::new(vec![self.settings.server_name.clone()]);
        self.matrix.send_state(space, room_id.as_str(), &child, None).await?;
        // The room's past comes from Letta once; a request that exists already stands.
        if self.settings.raw.history_import_limit > 0 {
            self.store.request_history_import(&agent.id, false).await?;
        }
        self.store
            .mark_agent_synced(&agent.id, &agent.name, agent.description.as_deref())
            .await?;
        tracing::info!(agent_id = agent.id, name = agent.name, ghost = %ghost, room = %room_id, "agent is in Matrix");
        Ok(())
    }

    /// The agent room, created as the ghost. Its alias makes creation idempotent: after a crash
    /// between creating the room and recording it, the alias finds the room again.
    async fn create_agent_room(&self, agent: &Agent, ghost: &UserId, space: &RoomId) -> Result<OwnedRoomId, WorkError> {
        let mut request = CreateRoomRequest::new();
        request.name = Some(agent.name.clone());
        request.topic = agent.description.clone().filter(|d| !d.is_empty());
        request.room_alias_name = Some(ghost.localpart().to_owned());
        request.preset = Some(RoomPreset::PrivateChat);
        request.invite = std::iter::once(self.namespace.bot().to_owned())
            .chain(self.settings.invite.iter().cloned())
            .collect();
        request.power_level_content_override = Some(
            self.admin_power_levels(ghost, &[self.namespace.bot().to_owned()])
                .await?,
        );
        let mut parent = SpaceParentEventContent::new(vec![self.settings.server_name.clone()]);
        parent.canonical = true;
        request.initial_state = vec![InitialStateEvent::new(space.to_owned(), parent).to_raw_any()];
        let (room_id, adopted) = self.create_or_find(request, ghost.localpart(), ghost).await?;
        if adopted {
            // Whoever created it may not have invited everyone; invites are idempotent.
            self.invite_people(&room_id, ghost).await?;
        } else {
            metrics::counter!("letta_matrix_rooms_created_total").increment(1);
        }
        Ok(room_id)
    }

    /// Creates a room with an alias in our namespace, or finds the one a crashed pass created.
    async fn create_or_find(
        &self,
        request: CreateRoomRequest,
        alias_localpart: &str,
        creator: &UserId,
    ) -> Result<(OwnedRoomId, bool), WorkError> {
        let alias = OwnedRoomAliasId::try_from(format!("#{alias_localpart}:{}", self.settings.server_name))
            .map_err(|e| WorkError::Invalid(format!("alias for {alias_localpart}: {e}")))?;
        match self.matrix.create_room(request, Some(creator)).await {
            Ok(room_id) => Ok((room_id, false)),
            Err(error) if matches!(error.kind(), Some(ErrorKind::RoomInUse)) => {
                let room_id = self.matrix.resolve_alias(&alias).await?.ok_or_else(|| {
                    WorkError::Invalid(format!(
                        "{alias} is taken but does not resolve; remove it from the homeserver"
                    ))
                })?;
                tracing::info!(%alias, %room_id, "found the room a previous pass created");
                self.matrix.join(room_id.clone().into(), creator).await?;
                Ok((room_id, true))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Power level 100 for the configured people and `extra` users. From room version 12 on,
    /// creators outrank every level and may not be listed; before it, the creator must be listed,
    /// or the override would leave it powerless in its own room.
    async fn admin_power_levels(
        &self,
        creator: &UserId,
        extra: &[OwnedUserId],
    ) -> Result<Raw<RoomPowerLevelsContentOverride>, WorkError> {
        let mut levels = RoomPowerLevelsContentOverride::new();
        let creator_listed = (!self.creators_outrank_levels().await?).then(|| creator.to_owned());
        for user in self.settings.invite.iter().chain(extra).chain(creator_listed.iter()) {
            levels.users.insert(user.clone(), Int::from(ADMIN_LEVEL as i32));
        }
        Raw::new(&levels).map_err(invalid)
    }

    /// Whether the rooms we create (in the homeserver's default room version) privilege their
    /// creators. The homeserver is asked once.
    async fn creators_outrank_levels(&self) -> Result<bool, WorkError> {
        let version = self
            .default_room_version
            .get_or_try_init(|| self.matrix.default_room_version())
            .await?;
        Ok(crate::matrix::creators_outrank_levels(version))
    }

    /// An existing room follows the agent: the ghost is back in it (after an undelete), and a
    /// renamed or re-described agent renames it. Unchanged state is not sent again.
    async fn refresh_room(
        &self,
        room_id: &RoomId,
        ghost: &UserId,
        agent: &Agent,
        record: &AgentRecord,
    ) -> Result<(), WorkError> {
        if record.deleted_at.is_some() {
            // The ghost left when the agent was deleted; agent rooms are invite-only.
            self.matrix.ensure_invited(room_id, ghost, None).await?;
        }
        self.matrix.join(room_id.to_owned().into(), ghost).await?;
        if record.name != agent.name {
            self.matrix
                .send_state(
                    room_id,
                    &EmptyStateKey,
                    &RoomNameEventContent::new(agent.name.clone()),
                    Some(ghost),
                )
                .await?;
            tracing::info!(
                agent_id = agent.id,
                from = record.name,
                to = agent.name,
                "agent renamed"
            );
        }
        let description = agent.description.clone().unwrap_or_default();
        if record.description.clone().unwrap_or_default() != description {
            self.matrix
                .send_state(
                    room_id,
                    &EmptyStateKey,
                    &RoomTopicEventContent::new(description),
                    Some(ghost),
                )
                .await?;
        }
        self.invite_people(room_id, ghost).await
    }

    /// The bot and the configured people, invited by the ghost; those already there are fine.
    async fn invite_people(&self, room_id: &RoomId, ghost: &UserId) -> Result<(), WorkError> {
        for person in std::iter::once(self.namespace.bot()).chain(self.settings.invite.iter().map(|u| u.as_ref())) {
            self.matrix.ensure_invited(room_id, person, Some(ghost)).await?;
        }
        Ok(())
    }

    /// Letta deleted the agent: the room says so, leaves the space, and the ghost leaves every
    /// room. The mapping stays, so the room's history remains explained.
    pub(super) async fn retire(&self, record: &AgentRecord, space: &RoomId) -> Result<(), WorkError> {
        let ghost =
            OwnedUserId::try_from(record.ghost_user_id.as_str()).map_err(|e| WorkError::Invalid(e.to_string()))?;
        if let Some(room_id) = record.room_id.as_deref() {
            let room_id = parse_room_id(room_id)?;
            let notice = RoomMessageEventContent::notice_plain(format!(
                "{} was deleted in Letta. This room stays for its history; the agent no longer answers here.",
                record.name
            ));
            let txn_id = OwnedTransactionId::from(format!("retire-{}", record.agent_id));
            self.matrix.send_message(&room_id, txn_id, &notice, None).await?;
            let removed = SpaceChildEventContent::new(Vec::new());
            self.matrix.send_state(space, room_id.as_str(), &removed, None).await?;
            self.matrix.leave(&room_id, &ghost).await?;
        }
        for (room_id, _) in self.store.agent_rooms(&record.agent_id).await? {
            self.matrix.leave(&parse_room_id(&room_id)?, &ghost).await?;
            self.store.mark_agent_room_left(&room_id, &record.agent_id).await?;
        }
        self.store.mark_agent_deleted(&record.agent_id).await?;
        tracing::info!(
            agent_id = record.agent_id,
            name = record.name,
            "agent deleted in Letta; retired its room"
        );
        Ok(())
    }
}

fn parse_room_id(room_id: &str) -> Result<OwnedRoomId, WorkError> {
    OwnedRoomId::try_from(room_id).map_err(|e| WorkError::Invalid(format!("stored room id `{room_id}`: {e}")))
}

fn invalid(error: serde_json::Error) -> WorkError {
    WorkError::Invalid(error.to_string())
}
