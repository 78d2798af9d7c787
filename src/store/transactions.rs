//! The homeserver's transactions: each one is processed once, together with the events it stores.
//!
//! A transaction is known by its id and by the ids of the events it stores. The id alone is not
//! enough: Synapse on SQLite numbers transactions from 1 again after a restart, and a reused id
//! that brings new events must not be acknowledged unread. A true retry carries the same events,
//! so it is still recognised with one indexed lookup and no write.

use sha2::{Digest, Sha256};

use super::inbox::{NewInboxEvent, insert_events};
use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// The id was seen before with the same events; nothing was written.
    Duplicate,
    /// The id is new; `events` rows were added to the inbox (events already there are skipped).
    Stored { events: u64 },
    /// The id was seen before with other events (the homeserver restarted its numbering); they
    /// were processed as a new transaction.
    Reused { events: u64 },
}

/// The fixed-size key a transaction id is stored under: any id the homeserver sends fits an index
/// and a text column on both engines.
pub fn transaction_key(txn_id: &str) -> String {
    hex::encode(Sha256::digest(txn_id.as_bytes()))
}

/// What a transaction carried, as far as the inbox is concerned: its events' ids, in order.
fn events_key(events: &[NewInboxEvent]) -> String {
    let mut digest = Sha256::new();
    for event in events {
        // Length-prefixed, so no two lists of ids hash the same text.
        digest.update((event.event_id.len() as u64).to_le_bytes());
        digest.update(event.event_id.as_bytes());
    }
    hex::encode(digest.finalize())
}

impl Store {
    /// Records the transaction and its events in one database transaction, so a crash leaves
    /// either both or neither, and the homeserver's retry of the same id finds the right answer.
    pub async fn record_transaction(
        &self,
        txn_id: &str,
        events: &[NewInboxEvent],
    ) -> Result<TransactionOutcome, StoreError> {
        let txn_key = transaction_key(txn_id);
        let events_key = events_key(events);
        let received_at = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let new = sqlx::query(
            "INSERT INTO processed_transactions (txn_key, events_key, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (txn_key) DO NOTHING",
        )
        .bind(&txn_key)
        .bind(&events_key)
        .bind(received_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !new {
            let reused = sqlx::query(
                "UPDATE processed_transactions SET events_key = $2, received_at = $3
                 WHERE txn_key = $1 AND events_key <> $2",
            )
            .bind(&txn_key)
            .bind(&events_key)
            .bind(received_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !reused {
                tx.rollback().await?;
                return Ok(TransactionOutcome::Duplicate);
            }
        }
        let stored = insert_events(&mut tx, &txn_key, received_at, events).await?;
        tx.commit().await?;
        Ok(if new {
            TransactionOutcome::Stored { events: stored }
        } else {
            TransactionOutcome::Reused { events: stored }
        })
    }

    pub async fn is_transaction_processed(&self, txn_id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT txn_key FROM processed_transactions WHERE txn_key = $1")
            .bind(transaction_key(txn_id))
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
