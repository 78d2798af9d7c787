//! History imports: requested per agent, claimed with a lease, resumable from their cursor.

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryImport {
    pub agent_id: String,
    pub state: String,
    pub cutoff_ms: i64,
    pub last_letta_id: Option<String>,
    pub imported: i32,
}

const SELECT_IMPORT: &str = "SELECT agent_id, state, cutoff_ms, last_letta_id, imported FROM history_imports";

impl Store {
    /// Asks for the agent's history to be imported. `again` restarts a finished import with a new
    /// cutoff (what was imported before is recognised and skipped); otherwise an existing request
    /// stands.
    pub async fn request_history_import(&self, agent_id: &str, again: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let sql = if again {
            "INSERT INTO history_imports (agent_id, state, cutoff_ms, requested_at) VALUES ($1, 'pending', $2, $2)
             ON CONFLICT (agent_id) DO UPDATE SET state = 'pending', cutoff_ms = $2, last_letta_id = NULL,
                 imported = 0, requested_at = $2, finished_at = NULL, last_error = NULL"
        } else {
            "INSERT INTO history_imports (agent_id, state, cutoff_ms, requested_at) VALUES ($1, 'pending', $2, $2)
             ON CONFLICT (agent_id) DO NOTHING"
        };
        sqlx::query(sql).bind(agent_id).bind(now).execute(&self.pool).await?;
        Ok(())
    }

    /// Claims the oldest pending import nobody holds.
    pub async fn claim_history_import(&self, owner: &str, lease_ms: i64) -> Result<Option<HistoryImport>, StoreError> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let claimed = sqlx::query_as(
            "UPDATE history_imports SET lease_owner = $1, lease_until = $2 WHERE agent_id = (
                 SELECT agent_id FROM history_imports WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < $3)
                 ORDER BY requested_at LIMIT 1)
             RETURNING agent_id, state, cutoff_ms, last_letta_id, imported",
        )
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed)
    }

    /// Moves the cursor past one imported message and extends the lease.
    pub async fn advance_history_import(
        &self,
        agent_id: &str,
        owner: &str,
        letta_id: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let moved = sqlx::query(
            "UPDATE history_imports SET last_letta_id = $3, imported = imported + 1, lease_until = $4
             WHERE agent_id = $1 AND lease_owner = $2 AND state = 'pending'",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(letta_id)
        .bind(now_ms() + lease_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    /// Ends an import: `done`, or `failed` with the reason (a new request retries it).
    pub async fn finish_history_import(
        &self,
        agent_id: &str,
        owner: &str,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE history_imports SET state = $3, last_error = $4, finished_at = $5, lease_owner = NULL, lease_until = NULL
             WHERE agent_id = $1 AND lease_owner = $2",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(state)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn history_import(&self, agent_id: &str) -> Result<Option<HistoryImport>, StoreError> {
        let found = sqlx::query_as(&format!("{SELECT_IMPORT} WHERE agent_id = $1"))
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found)
    }

    /// Whether a Letta message is already in Matrix: posted by the relay or by an import.
    pub async fn letta_message_in_matrix(&self, letta_id: &str) -> Result<bool, StoreError> {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT event_id FROM sent_messages WHERE letta_message_id = $1 LIMIT 1")
                .bind(letta_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Whether the relay sent a message with this `otid` (so Letta's copy is not history to import).
    pub async fn otid_from_relay(&self, otid: &str) -> Result<bool, StoreError> {
        let found: Option<(String,)> = sqlx::query_as("SELECT event_id FROM relay_turns WHERE otid = $1 LIMIT 1")
            .bind(otid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }
}
