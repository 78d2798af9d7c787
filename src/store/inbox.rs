//! The inbox: events the homeserver delivered that still need (or had) the relay's attention.
//! It is the source of truth for work: `id` orders each room's lane.

use std::fmt;

use sqlx::{Any, Transaction};

use super::{Store, StoreError};

/// What an inbox row asks of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxEvent {
    /// A room message (or sticker, or encrypted message) someone may want answered.
    Message,
    /// A membership change of one of our users, invites included.
    Membership,
    /// A redaction, so the relay can stop or retract work on the redacted event.
    Redaction,
    /// A change of the room's `org.lettamatrix.settings` state.
    Settings,
    /// A room's `m.room.tombstone`: its agents follow to the replacement room.
    Upgrade,
}

impl InboxEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Membership => "membership",
            Self::Redaction => "redaction",
            Self::Settings => "settings",
            Self::Upgrade => "upgrade",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Message,
            Self::Membership,
            Self::Redaction,
            Self::Settings,
            Self::Upgrade,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for InboxEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxState {
    Pending,
    Done,
    Failed,
}

impl InboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInboxEvent {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub event_type: String,
    pub kind: InboxEvent,
    /// The event exactly as the homeserver sent it, for the relay to parse in full.
    pub event_json: String,
}

impl NewInboxEvent {
    /// PostgreSQL's text holds no NUL character, and a row it refuses would fail the homeserver's
    /// transaction for good; such an event is dropped on both engines alike. (`event_json` keeps
    /// a NUL escaped, as JSON must.)
    pub fn is_storable(&self) -> bool {
        [&self.event_id, &self.room_id, &self.sender, &self.event_type]
            .iter()
            .all(|text| !text.contains('\0'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InboxRow {
    pub id: i64,
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub event_type: String,
    pub kind: String,
    pub event_json: String,
    /// The delivering transaction's key (see `transaction_key`).
    pub txn_id: String,
    pub received_at: i64,
    pub state: String,
    pub attempts: i32,
}

const COLUMNS: &str = "event_id, room_id, sender, event_type, kind, event_json, txn_id, received_at";
const COLUMN_COUNT: usize = 8;
/// Far below both engines' bound-parameter limits, and large enough that a full Synapse
/// transaction (100 events) is one statement.
const ROWS_PER_STATEMENT: usize = 100;

/// Inserts events in multi-row statements; an event id already in the inbox (delivered again in
/// another transaction) is skipped, so the relay never sees it twice.
pub(super) async fn insert_events(
    tx: &mut Transaction<'_, Any>,
    txn_key: &str,
    received_at: i64,
    events: &[NewInboxEvent],
) -> Result<u64, StoreError> {
    let mut stored = 0;
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql = multi_row_insert(chunk.len());
        let mut query = sqlx::query(&sql);
        for event in chunk {
            query = query
                .bind(&event.event_id)
                .bind(&event.room_id)
                .bind(&event.sender)
                .bind(&event.event_type)
                .bind(event.kind.as_str())
                .bind(&event.event_json)
                .bind(txn_key)
                .bind(received_at);
        }
        stored += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(stored)
}

fn multi_row_insert(rows: usize) -> String {
    let mut sql = format!("INSERT INTO inbox ({COLUMNS}) VALUES ");
    for row in 0..rows {
        let placeholders: Vec<String> = (1..=COLUMN_COUNT)
            .map(|c| format!("${}", row * COLUMN_COUNT + c))
            .collect();
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&placeholders.join(", "));
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
    sql
}

const SELECT_ROW: &str = "SELECT id, event_id, room_id, sender, event_type, kind, event_json, txn_id, received_at, state, attempts FROM inbox";

impl Store {
    /// A room's lane, oldest first.
    pub async fn inbox_for_room(&self, room_id: &str) -> Result<Vec<InboxRow>, StoreError> {
        let rows = sqlx::query_as(&format!("{SELECT_ROW} WHERE room_id = $1 ORDER BY id"))
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }

    pub async fn inbox_by_event_id(&self, event_id: &str) -> Result<Option<InboxRow>, StoreError> {
        let row = sqlx::query_as(&format!("{SELECT_ROW} WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row)
    }

    /// Pending rows of one kind, oldest first.
    pub async fn pending_inbox(&self, kind: InboxEvent, limit: i64) -> Result<Vec<InboxRow>, StoreError> {
        let rows = sqlx::query_as(&format!(
            "{SELECT_ROW} WHERE state = 'pending' AND kind = $1 ORDER BY id LIMIT $2"
        ))
        .bind(kind.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Closes a row: `Done`, or `Failed` with the reason kept for the operator.
    pub async fn finish_inbox(&self, id: i64, state: InboxState, error: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE inbox SET state = $2, last_error = $3, finished_at = $4, attempts = attempts + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(error)
        .bind(super::now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Finished rows have served their purpose once they are too old to be a group room's context;
    /// what redoing a turn needs lives in `relay_turns` and `sent_messages`.
    pub async fn prune_finished_inbox(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let cutoff = super::now_ms() - older_than_ms;
        let result = sqlx::query("DELETE FROM inbox WHERE state <> 'pending' AND finished_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// Every row, whatever its state: what was ever accepted.
    pub async fn inbox_size(&self) -> Result<i64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM inbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }

    pub async fn inbox_count(&self, state: InboxState) -> Result<i64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM inbox WHERE state = $1")
            .bind(state.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_across_rows() {
        assert_eq!(
            multi_row_insert(2),
            format!(
                "INSERT INTO inbox ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8), ($9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (event_id) DO NOTHING"
            )
        );
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            InboxEvent::Message,
            InboxEvent::Membership,
            InboxEvent::Redaction,
            InboxEvent::Settings,
        ] {
            assert_eq!(InboxEvent::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(InboxEvent::parse("other"), None);
    }
}
