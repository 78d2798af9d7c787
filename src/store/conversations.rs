//! Rooms ↔ Letta conversations: one per (agent, room), chosen on the room's first turn.

use super::{Store, StoreError, now_ms};

/// A room's recorded conversation: `None` inside is the agent's default conversation.
pub type RoomConversation = Option<String>;

impl Store {
    pub async fn room_conversation(
        &self,
        agent_id: &str,
        room_id: &str,
    ) -> Result<Option<RoomConversation>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT conversation_id FROM room_conversations WHERE agent_id = $1 AND room_id = $2")
                .bind(agent_id)
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(conversation,)| conversation))
    }

    /// Records the room's conversation unless one is recorded already (another replica, or a
    /// turn before a crash), and returns the one that stands.
    pub async fn set_room_conversation(
        &self,
        agent_id: &str,
        room_id: &str,
        conversation_id: Option<&str>,
    ) -> Result<RoomConversation, StoreError> {
        {
            let _turn = self.write_turn().await;
            sqlx::query(
                "INSERT INTO room_conversations (agent_id, room_id, conversation_id, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id, room_id) DO NOTHING",
            )
            .bind(agent_id)
            .bind(room_id)
            .bind(conversation_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        }
        Ok(self
            .room_conversation(agent_id, room_id)
            .await?
            .expect("the row was just written"))
    }

    /// How many rooms talk in a conversation of their own (for `/status`).
    pub async fn own_conversations(&self) -> Result<i64, StoreError> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM room_conversations WHERE conversation_id IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }
}
