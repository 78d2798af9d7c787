//! Agents ↔ ghost users ↔ rooms, and the rooms the bridge itself owns (the space).

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AgentRecord {
    pub agent_id: String,
    pub ghost_user_id: String,
    pub name: String,
    pub description: Option<String>,
    pub room_id: Option<String>,
    pub room_alias: Option<String>,
    pub sync_step: String,
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BridgeRoom {
    pub name: String,
    pub room_id: String,
}

const SELECT_AGENT: &str =
    "SELECT agent_id, ghost_user_id, name, description, room_id, room_alias, sync_step, deleted_at FROM agents";

impl Store {
    /// Records an agent the first time it is seen. `name` and `description` always hold what
    /// Matrix shows, so a difference from Letta's values is a rename still to apply.
    pub async fn insert_agent(
        &self,
        agent_id: &str,
        ghost_user_id: &str,
        name: &str,
        description: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (agent_id, ghost_user_id, name, description, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (agent_id) DO NOTHING",
        )
        .bind(agent_id)
        .bind(ghost_user_id)
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Everything Letta says about the agent is now true in Matrix.
    pub async fn mark_agent_synced(
        &self,
        agent_id: &str,
        name: &str,
        description: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_agent(
            "UPDATE agents SET sync_step = 'ready', name = $2, description = $3, deleted_at = NULL, updated_at = $4 WHERE agent_id = $1",
            agent_id,
            Some((name, description)),
        )
        .await
    }

    /// The agent is gone from Letta; its row stays so its room's history is explained.
    pub async fn mark_agent_deleted(&self, agent_id: &str) -> Result<(), StoreError> {
        self.update_agent(
            "UPDATE agents SET sync_step = 'deleted', deleted_at = $2, updated_at = $2 WHERE agent_id = $1",
            agent_id,
            None,
        )
        .await
    }

    async fn update_agent(
        &self,
        sql: &'static str,
        agent_id: &str,
        names: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        let mut query = sqlx::query(sql).bind(agent_id);
        if let Some((name, description)) = names {
            query = query.bind(name).bind(description);
        }
        query.bind(now_ms()).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_agent_room(
        &self,
        agent_id: &str,
        room_id: &str,
        room_alias: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET room_id = $2, room_alias = $3, updated_at = $4 WHERE agent_id = $1")
            .bind(agent_id)
            .bind(room_id)
            .bind(room_alias)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn agent_by_ghost(&self, ghost_user_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.fetch_agent("ghost_user_id", ghost_user_id).await
    }

    pub async fn agent_by_alias(&self, room_alias: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.fetch_agent("room_alias", room_alias).await
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.fetch_agent("agent_id", agent_id).await
    }

    async fn fetch_agent(&self, column: &'static str, value: &str) -> Result<Option<AgentRecord>, StoreError> {
        let agent = sqlx::query_as(&format!("{SELECT_AGENT} WHERE {column} = $1"))
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        Ok(agent)
    }

    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let agents = sqlx::query_as(&format!("{SELECT_AGENT} ORDER BY created_at, agent_id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(agents)
    }

    /// A room the agent takes part in besides its own (a DM, a group it was invited to).
    pub async fn add_agent_room(&self, room_id: &str, agent_id: &str, kind: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agent_rooms (room_id, agent_id, kind, joined_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_id, agent_id) DO UPDATE SET kind = $3, left_at = NULL",
        )
        .bind(room_id)
        .bind(agent_id)
        .bind(kind)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How the agent came to be in a room it is in (`direct` or `group`), if it is.
    pub async fn agent_room_kind(&self, room_id: &str, agent_id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT kind FROM agent_rooms WHERE room_id = $1 AND agent_id = $2 AND left_at IS NULL")
                .bind(room_id)
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(kind,)| kind))
    }

    pub async fn mark_agent_room_left(&self, room_id: &str, agent_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE agent_rooms SET left_at = $3 WHERE room_id = $1 AND agent_id = $2")
            .bind(room_id)
            .bind(agent_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every agent's other rooms at once, as (agent id, room id, kind), for listings.
    pub async fn all_agent_rooms(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rooms = sqlx::query_as(
            "SELECT agent_id, room_id, kind FROM agent_rooms WHERE left_at IS NULL ORDER BY agent_id, joined_at, room_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rooms)
    }

    /// Rooms the agent is in besides its own, as (room id, kind).
    pub async fn agent_rooms(&self, agent_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rooms = sqlx::query_as(
            "SELECT room_id, kind FROM agent_rooms WHERE agent_id = $1 AND left_at IS NULL ORDER BY joined_at, room_id",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rooms)
    }

    /// The agents that listen in a room, with how they came to be there: `own` (the agent's own
    /// room), `direct` or `group`. Deleted agents are left out.
    pub async fn agents_in_room(&self, room_id: &str) -> Result<Vec<(AgentRecord, String)>, StoreError> {
        let own: Vec<AgentRecord> =
            sqlx::query_as(&format!("{SELECT_AGENT} WHERE room_id = $1 AND deleted_at IS NULL"))
                .bind(room_id)
                .fetch_all(&self.pool)
                .await?;
        let joined: Vec<AgentRecord> = sqlx::query_as(&format!(
            "{SELECT_AGENT} WHERE deleted_at IS NULL AND agent_id IN \
             (SELECT agent_id FROM agent_rooms WHERE room_id = $1 AND left_at IS NULL) ORDER BY agent_id"
        ))
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        let mut agents: Vec<(AgentRecord, String)> = own.into_iter().map(|a| (a, "own".to_owned())).collect();
        for agent in joined {
            if agents.iter().any(|(a, _)| a.agent_id == agent.agent_id) {
                continue;
            }
            let (kind,): (String,) =
                sqlx::query_as("SELECT kind FROM agent_rooms WHERE room_id = $1 AND agent_id = $2")
                    .bind(room_id)
                    .bind(&agent.agent_id)
                    .fetch_one(&self.pool)
                    .await?;
            agents.push((agent, kind));
        }
        Ok(agents)
    }

    pub async fn bridge_room(&self, name: &str) -> Result<Option<BridgeRoom>, StoreError> {
        let room = sqlx::query_as("SELECT name, room_id FROM bridge_rooms WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(room)
    }

    /// The value of a setting as last carried out in Matrix, if ever.
    pub async fn applied_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM applied_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(value,)| value))
    }

    /// Every applied setting whose name starts with `prefix`, as (name, value).
    pub async fn applied_settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query_as("SELECT name, value FROM applied_settings WHERE substr(name, 1, length($1)) = $1")
            .bind(prefix)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }

    pub async fn set_applied_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO applied_settings (name, value, applied_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, applied_at = excluded.applied_at",
        )
        .bind(name)
        .bind(value)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a bridge-owned room once; a second call keeps the first room.
    pub async fn set_bridge_room(&self, name: &str, room_id: &str) -> Result<BridgeRoom, StoreError> {
        sqlx::query(
            "INSERT INTO bridge_rooms (name, room_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(room_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(self.bridge_room(name).await?.expect("the row was just written"))
    }
}
