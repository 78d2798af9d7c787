//! What the relay keeps: claims on inbox rows (leases), one turn record per (event, agent), the
//! messages our ghosts posted, per-agent leases, per-room settings and once-per-room notices.
//!
//! A lane holds the lease of its room's oldest pending row; the next row of that room cannot be
//! claimed while an older one is pending, so a room is answered in order by one worker at a time,
//! whichever replica it runs in.

use super::{Backend, InboxRow, Store, StoreError, now_ms};

const RETURNING_ROW: &str =
    "RETURNING id, event_id, room_id, sender, event_type, kind, event_json, txn_id, received_at, state, attempts";

/// At most this many rooms with pending rows are looked at per claim beyond the heads wanted:
/// rooms being worked on are passed over, and the next claim goes on where this one stopped.
const ROOMS_PASSED_OVER: i64 = 64;

/// Leases the rows `target` names if each is pending, unleased (or its lease ran out) and still
/// its room's oldest pending row, at most `$4` of them in the order `order` gives. Every check is
/// an index probe, whatever the backlog.
fn claim_sql(backend: Backend, target: &str, order: &str) -> String {
    // PostgreSQL: replicas racing for the same head skip the row another has locked (and a row
    // claimed meanwhile fails the lease check again once locked); SQLite has one writer, so the
    // statement alone is atomic.
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    format!(
        "UPDATE inbox SET lease_owner = $1, lease_until = $2 WHERE id IN (
            SELECT i.id FROM inbox i
            WHERE {target} AND i.state = 'pending' AND (i.lease_until IS NULL OR i.lease_until < $3)
              AND NOT EXISTS (SELECT 1 FROM inbox p WHERE p.room_id = i.room_id AND p.state = 'pending' AND p.id < i.id)
            ORDER BY {order} LIMIT $4 {lock})
         {RETURNING_ROW}"
    )
}

/// The head of one room: the first entry of the room in the pending index.
const ONE_ROOM_HEAD: &str =
    "i.id = (SELECT h.id FROM inbox h WHERE h.state = 'pending' AND h.room_id = $5 ORDER BY h.id LIMIT 1)";

/// Rooms with pending rows after `$1` in room order, at most `$2`, each with its head and lease.
/// A loose scan of the pending index: one probe per room, however many rows wait in it.
const PENDING_ROOMS_AFTER: &str = "WITH RECURSIVE rooms (room_id, n) AS (
        SELECT (SELECT room_id FROM inbox WHERE state = 'pending' AND room_id > $1 ORDER BY room_id LIMIT 1), 1
        UNION ALL
        SELECT (SELECT i.room_id FROM inbox i WHERE i.state = 'pending' AND i.room_id > r.room_id ORDER BY i.room_id LIMIT 1), r.n + 1
        FROM rooms r WHERE r.room_id IS NOT NULL AND r.n < $2
    )
    SELECT r.room_id, h.id, h.lease_until FROM rooms r
    JOIN inbox h ON h.id = (SELECT p.id FROM inbox p WHERE p.state = 'pending' AND p.room_id = r.room_id ORDER BY p.id LIMIT 1)";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TurnRecord {
    pub event_id: String,
    pub agent_id: String,
    pub otid: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SentMessage {
    pub event_id: String,
    pub txn_id: String,
    pub letta_message_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomSettings {
    pub respond_to_all: Option<bool>,
    pub show_reasoning: Option<bool>,
}

impl Store {
    /// Claims up to `limit` room heads for `owner` until `now + lease_ms`. Rooms are visited in
    /// turn (room order, from where the last claim stopped, wrapping around), so every room with
    /// work gets a lane however busy the others are.
    pub async fn claim_room_heads(&self, owner: &str, lease_ms: i64, limit: i64) -> Result<Vec<InboxRow>, StoreError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let start = self.claim_cursor.lock().expect("never poisoned").clone();
        let budget = limit + ROOMS_PASSED_OVER;
        let mut rooms = self.pending_rooms_after(&start, budget).await?;
        if (rooms.len() as i64) < budget && !start.is_empty() {
            let wrapped = self.pending_rooms_after("", budget - rooms.len() as i64).await?;
            rooms.extend(wrapped.into_iter().take_while(|(room, _, _)| *room <= start));
        }
        let free: Vec<i64> = rooms
            .iter()
            .filter(|(_, _, lease_until)| lease_until.is_none_or(|until| until < now))
            .map(|(_, id, _)| *id)
            .collect();
        let mut rows = Vec::new();
        if !free.is_empty() {
            // All free heads go in, so a claimer that loses some to a racing one takes others.
            let placeholders: Vec<String> = (0..free.len()).map(|n| format!("${}", n + 6)).collect();
            let target = format!("i.id IN ({})", placeholders.join(", "));
            let sql = claim_sql(
                self.backend,
                &target,
                "CASE WHEN i.room_id > $5 THEN 0 ELSE 1 END, i.room_id",
            );
            let mut query = sqlx::query_as::<_, InboxRow>(&sql)
                .bind(owner)
                .bind(now + lease_ms)
                .bind(now)
                .bind(limit)
                .bind(&start);
            for id in &free {
                query = query.bind(*id);
            }
            let _turn = self.write_turn().await;
            rows = query.fetch_all(&self.pool).await?;
        }
        // The next claim goes on after the last room taken, or after every room looked at.
        let position = |room: &str| (room <= start.as_str(), room.to_owned());
        let next = match rows.len() as i64 == limit {
            true => rows.iter().map(|row| position(&row.room_id)).max(),
            false => rooms.last().map(|(room, _, _)| position(room)),
        };
        *self.claim_cursor.lock().expect("never poisoned") = next.map(|(_, room)| room).unwrap_or_default();
        rows.sort_by_key(|row| row.id);
        Ok(rows)
    }

    /// Up to `limit` rooms with pending rows after `after`, as (room, head id, head's lease end).
    async fn pending_rooms_after(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64, Option<i64>)>, StoreError> {
        let rooms = sqlx::query_as(PENDING_ROOMS_AFTER)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rooms)
    }

    /// Claims the oldest pending row of one room, if nobody holds it.
    pub async fn claim_room_head(
        &self,
        owner: &str,
        lease_ms: i64,
        room_id: &str,
    ) -> Result<Option<InboxRow>, StoreError> {
        let now = now_ms();
        let sql = claim_sql(self.backend, ONE_ROOM_HEAD, "i.id");
        let query = sqlx::query_as::<_, InboxRow>(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(1_i64)
            .bind(room_id);
        let _turn = self.write_turn().await;
        Ok(query.fetch_optional(&self.pool).await?)
    }

    /// Extends a held lease; false when it is no longer ours (it expired and was taken).
    pub async fn renew_inbox_lease(&self, id: i64, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        let renewed = sqlx::query("UPDATE inbox SET lease_until = $3 WHERE id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(owner)
            .bind(now_ms() + lease_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(renewed == 1)
    }

    /// Closes a claimed row: `done`, `held` (context for later turns), `skipped` or `failed`.
    pub async fn finish_claimed(
        &self,
        id: i64,
        owner: &str,
        state: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let mut connection = self.pool.acquire().await?;
        finish(&mut connection, id, owner, state, error).await
    }

    /// Closes a claimed row and claims its room's next one in the same database transaction: one
    /// durable commit per row instead of two. Returns whether the row was still ours to close, and
    /// the next row (none when the row was not ours: its new owner has the room).
    pub async fn finish_and_claim_next(
        &self,
        row: &InboxRow,
        owner: &str,
        state: &str,
        error: Option<&str>,
        lease_ms: i64,
    ) -> Result<(bool, Option<InboxRow>), StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        if !finish(&mut tx, row.id, owner, state, error).await? {
            tx.rollback().await?;
            return Ok((false, None));
        }
        let now = now_ms();
        let next = sqlx::query_as::<_, InboxRow>(&claim_sql(self.backend, ONE_ROOM_HEAD, "i.id"))
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(1_i64)
            .bind(&row.room_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((true, next))
    }

    /// Extends every lease `owner` holds: rows being worked on and agents taking a turn.
    pub async fn renew_leases(&self, owner: &str, lease_ms: i64) -> Result<(), StoreError> {
        let until = now_ms() + lease_ms;
        sqlx::query("UPDATE inbox SET lease_until = $2 WHERE lease_owner = $1 AND state = 'pending'")
            .bind(owner)
            .bind(until)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE agent_leases SET lease_until = $2 WHERE lease_owner = $1")
            .bind(owner)
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether a redaction of `event_id` arrived after it (its row is later in the same room).
    pub async fn was_redacted(&self, room_id: &str, after_id: i64, event_id: &str) -> Result<bool, StoreError> {
        let redactions: Vec<(String,)> =
            sqlx::query_as("SELECT event_json FROM inbox WHERE room_id = $1 AND id > $2 AND kind = 'redaction'")
                .bind(room_id)
                .bind(after_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(redactions.iter().any(|(json,)| {
            let event: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            // Room versions up to 10 put `redacts` at the top; 11 and later in the content.
            event["redacts"] == event_id || event["content"]["redacts"] == event_id
        }))
    }

    /// Whether the room has more pending rows after `id`: then an answer says which message it answers.
    pub async fn has_newer_pending(&self, room_id: &str, id: i64) -> Result<bool, StoreError> {
        let newer: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM inbox WHERE room_id = $1 AND id > $2 AND state = 'pending' AND kind = 'message' LIMIT 1",
        )
        .bind(room_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(newer.is_some())
    }

    /// Counts a failed attempt on a row that stays pending, keeping the reason for operators.
    pub async fn note_attempt(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE inbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
            .bind(id)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives up every lease `owner` holds, so the rows are claimable at once (a clean shutdown).
    pub async fn release_leases(&self, owner: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE inbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM agent_leases WHERE lease_owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// SQLite serves one process, so any lease found at start belongs to a process that died.
    pub async fn release_dead_leases_if_single_process(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE inbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL")
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM agent_leases").execute(&self.pool).await?;
        sqlx::query("UPDATE history_imports SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes (or extends) the agent's lease unless another owner holds it unexpired. SQLite serves
    /// one process, whose own lock already serialises an agent's turns: no write is needed there.
    pub async fn lease_agent(&self, agent_id: &str, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(true);
        }
        let now = now_ms();
        let _turn = self.write_turn().await;
        let taken = sqlx::query(
            "INSERT INTO agent_leases (agent_id, lease_owner, lease_until) VALUES ($1, $2, $3)
             ON CONFLICT (agent_id) DO UPDATE SET lease_owner = $2, lease_until = $3
             WHERE agent_leases.lease_owner = $2 OR agent_leases.lease_until < $4",
        )
        .bind(agent_id)
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    pub async fn release_agent(&self, agent_id: &str, owner: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        sqlx::query("DELETE FROM agent_leases WHERE agent_id = $1 AND lease_owner = $2")
            .bind(agent_id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn turn(&self, event_id: &str, agent_id: &str) -> Result<Option<TurnRecord>, StoreError> {
        let turn = sqlx::query_as(
            "SELECT event_id, agent_id, otid, state FROM relay_turns WHERE event_id = $1 AND agent_id = $2",
        )
        .bind(event_id)
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(turn)
    }

    /// Records that Letta is about to be asked; an existing record is left as it is.
    pub async fn begin_turn(&self, row: &InboxRow, agent_id: &str, otid: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relay_turns (event_id, agent_id, room_id, inbox_id, otid, state, started_at)
             VALUES ($1, $2, $3, $4, $5, 'asked', $6) ON CONFLICT (event_id, agent_id) DO NOTHING",
        )
        .bind(&row.event_id)
        .bind(agent_id)
        .bind(&row.room_id)
        .bind(row.id)
        .bind(otid)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a turn `answered` or `failed`.
    pub async fn finish_turn(&self, event_id: &str, agent_id: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE relay_turns SET state = $3, finished_at = $4 WHERE event_id = $1 AND agent_id = $2")
            .bind(event_id)
            .bind(agent_id)
            .bind(state)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// People's messages in the room since the agent's last turn there, oldest first, at most
    /// `limit` (the newest ones), all older than `before_id`: those nobody was addressed by and
    /// those another agent answered, so that the agent follows the whole conversation.
    pub async fn held_context(
        &self,
        room_id: &str,
        agent_id: &str,
        before_id: i64,
        limit: i64,
    ) -> Result<Vec<InboxRow>, StoreError> {
        let mut rows: Vec<InboxRow> = sqlx::query_as(
            "SELECT id, event_id, room_id, sender, event_type, kind, event_json, txn_id, received_at, state, attempts FROM inbox
             WHERE room_id = $1 AND kind = 'message' AND state IN ('held', 'done') AND id < $3
               AND id > COALESCE((SELECT MAX(inbox_id) FROM relay_turns WHERE room_id = $1 AND agent_id = $2 AND inbox_id < $3), 0)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(room_id)
        .bind(agent_id)
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        Ok(rows)
    }

    pub async fn record_sent(
        &self,
        event_id: &str,
        room_id: &str,
        agent_id: &str,
        txn_id: &str,
        cause_event_id: Option<&str>,
        letta_message_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sent_messages (event_id, room_id, agent_id, txn_id, cause_event_id, letta_message_id, sent_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (event_id) DO UPDATE SET letta_message_id = COALESCE($6, sent_messages.letta_message_id)",
        )
        .bind(event_id)
        .bind(room_id)
        .bind(agent_id)
        .bind(txn_id)
        .bind(cause_event_id)
        .bind(letta_message_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The message our ghost posted under `txn_id`, if it got that far.
    pub async fn sent_by_txn(&self, txn_id: &str) -> Result<Option<SentMessage>, StoreError> {
        let sent = sqlx::query_as("SELECT event_id, txn_id, letta_message_id FROM sent_messages WHERE txn_id = $1")
            .bind(txn_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(sent)
    }

    /// The agent whose ghost posted `event_id`, if one did.
    pub async fn sender_agent(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        let agent: Option<(String,)> = sqlx::query_as("SELECT agent_id FROM sent_messages WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(agent.map(|(agent,)| agent))
    }

    pub async fn room_settings(&self, room_id: &str) -> Result<RoomSettings, StoreError> {
        let row: Option<(Option<i32>, Option<i32>)> =
            sqlx::query_as("SELECT respond_to_all, show_reasoning FROM room_settings WHERE room_id = $1")
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?;
        let (respond_to_all, show_reasoning) = row.unwrap_or_default();
        Ok(RoomSettings {
            respond_to_all: respond_to_all.map(|v| v != 0),
            show_reasoning: show_reasoning.map(|v| v != 0),
        })
    }

    pub async fn set_room_settings(&self, room_id: &str, settings: RoomSettings) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO room_settings (room_id, respond_to_all, show_reasoning, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_id) DO UPDATE SET respond_to_all = $2, show_reasoning = $3, updated_at = $4",
        )
        .bind(room_id)
        .bind(settings.respond_to_all.map(i32::from))
        .bind(settings.show_reasoning.map(i32::from))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A room's settings carried over to the room that replaces it; settings it has already win.
    pub async fn copy_room_settings(&self, from_room: &str, to_room: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO room_settings (room_id, respond_to_all, show_reasoning, updated_at)
             SELECT $2, respond_to_all, show_reasoning, updated_at FROM room_settings WHERE room_id = $1
             ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(from_room)
        .bind(to_room)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// True the first time a room asks for the notice `kind`; false ever after.
    pub async fn claim_room_notice(&self, room_id: &str, kind: &str) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "INSERT INTO room_notices (room_id, kind, sent_at) VALUES ($1, $2, $3) ON CONFLICT (room_id, kind) DO NOTHING",
        )
        .bind(room_id)
        .bind(kind)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// The latest rows the relay gave up on, as (event id, reason).
    pub async fn recent_failures(&self, limit: i64) -> Result<Vec<(String, String)>, StoreError> {
        let failures = sqlx::query_as(
            "SELECT event_id, COALESCE(last_error, '') FROM inbox WHERE state = 'failed' ORDER BY finished_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(failures)
    }

    /// Rows waiting for the relay, for `/status` and metrics.
    pub async fn inbox_backlog(&self) -> Result<(i64, i64), StoreError> {
        self.inbox_backlog_besides(None).await
    }

    /// The backlog without row `besides`: a command asking for the backlog is itself pending
    /// while it runs, and is not waiting for anyone.
    pub async fn inbox_backlog_besides(&self, besides: Option<i64>) -> Result<(i64, i64), StoreError> {
        // Row ids start at 1, so 0 leaves every row in.
        let (pending, rooms): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT room_id) FROM inbox WHERE state = 'pending' AND id <> $1")
                .bind(besides.unwrap_or(0))
                .fetch_one(&self.pool)
                .await?;
        Ok((pending, rooms))
    }
}

async fn finish(
    connection: &mut sqlx::AnyConnection,
    id: i64,
    owner: &str,
    state: &str,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let finished = sqlx::query(
        "UPDATE inbox SET state = $3, last_error = $4, finished_at = $5, attempts = attempts + 1,
             lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
    )
    .bind(id)
    .bind(owner)
    .bind(state)
    .bind(error)
    .bind(now_ms())
    .execute(connection)
    .await?
    .rows_affected();
    Ok(finished == 1)
}
