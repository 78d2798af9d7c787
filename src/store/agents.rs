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
    /// Inserts the agent or updates what Letta says about it; what the sync reconciler recorded
    /// (room, step) is left alone.
    pub async fn upsert_agent(
        &self,
        agent_id: &str,
        ghost_user_id: &str,
        name: &str,
        description: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agents (agent_id, ghost_user_id, name, description, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (agent_id) DO UPDATE SET name = $3, description = $4, updated_at = $5",
        )
        .bind(agent_id)
        .bind(ghost_user_id)
        .bind(name)
        .bind(description)
        .bind(now)
        .execute(&self.pool)
        .await?;
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

    pub async fn bridge_room(&self, name: &str) -> Result<Option<BridgeRoom>, StoreError> {
        let room = sqlx::query_as("SELECT name, room_id FROM bridge_rooms WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(room)
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
