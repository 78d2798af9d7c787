//! The homeserver's transactions: each id is processed once, together with the events it stores.

use super::inbox::{NewInboxEvent, insert_events};
use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// The id was seen before; nothing was written.
    Duplicate,
    /// The id is new; `events` rows were added to the inbox (events already there are skipped).
    Stored { events: u64 },
}

impl Store {
    /// Records the transaction id and its events in one database transaction, so a crash leaves
    /// either both or neither, and the homeserver's retry of the same id finds the right answer.
    pub async fn record_transaction(
        &self,
        txn_id: &str,
        events: &[NewInboxEvent],
    ) -> Result<TransactionOutcome, StoreError> {
        let received_at = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO processed_transactions (txn_id, received_at) VALUES ($1, $2) ON CONFLICT (txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(received_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tx.rollback().await?;
            return Ok(TransactionOutcome::Duplicate);
        }
        let stored = insert_events(&mut tx, txn_id, received_at, events).await?;
        tx.commit().await?;
        Ok(TransactionOutcome::Stored { events: stored })
    }

    pub async fn is_transaction_processed(&self, txn_id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT txn_id FROM processed_transactions WHERE txn_id = $1")
            .bind(txn_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Homeservers only ever retry their latest transaction, so old ids are dead weight.
    pub async fn prune_transactions(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now_ms() - older_than_ms;
        let result = sqlx::query("DELETE FROM processed_transactions WHERE received_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}
