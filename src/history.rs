//! History import: an agent's past Letta conversation appears in its room, at its original times.
//!
//! An import is requested when sync sets up an agent's room (or by an operator), claimed with a
//! lease by one worker, and walks the agent's latest messages oldest first. Each message is posted
//! with a txn id derived from its Letta id and recorded against that id, and the import's cursor
//! moves past it; a crash resumes after the cursor, and a message recorded already (by an import
//! or by the relay, which answered it live) is never posted again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, UInt};
use serde_json::json;
use tokio::sync::Notify;

use crate::app::AppState;
use crate::config::Settings;
use crate::error::WorkError;
use crate::letta::{LettaClient, LettaMessage};
use crate::matrix::MatrixClient;
use crate::namespace::Namespace;
use crate::relay::{markdown_content, send_in_pieces};
use crate::store::{HistoryImport, Store};

/// Marks an imported event, so nothing mistakes it for live conversation.
pub const IMPORTED_KEY: &str = "org.lettamatrix.imported";
const LEASE_MS: i64 = 60_000;
const POLL_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Importer {
    settings: Arc<Settings>,
    store: Store,
    matrix: MatrixClient,
    letta: LettaClient,
    namespace: Arc<Namespace>,
    owner: String,
}

impl Importer {
    pub fn new(app: &AppState) -> Self {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("random bytes");
        Self {
            settings: app.settings.clone(),
            store: app.store.clone(),
            matrix: app.matrix.clone(),
            letta: app.letta.clone(),
            namespace: app.namespace.clone(),
            owner: format!("import-{}", hex::encode(random)),
        }
    }

    /// Runs requested imports one at a time (each is many homeserver writes) until aborted.
    pub fn spawn(self, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.run_next().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "history import failed; a new request retries it"),
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
        })
    }

    /// Runs the oldest requested import, if any; true when there was one.
    pub async fn run_next(&self) -> Result<bool, WorkError> {
        let Some(import) = self.store.claim_history_import(&self.owner, LEASE_MS).await? else {
            return Ok(false);
        };
        let agent_id = import.agent_id.clone();
        match self.run(&import).await {
            Ok(imported) => {
                self.store
                    .finish_history_import(&agent_id, &self.owner, "done", None)
                    .await?;
                tracing::info!(agent_id, imported, "history import finished");
                Ok(true)
            }
            Err(WorkError::LeaseLost) => Ok(true),
            Err(error) => {
                self.store
                    .finish_history_import(&agent_id, &self.owner, "failed", Some(&error.to_string()))
                    .await?;
                Err(error)
            }
        }
    }

    /// Imports what is left of `import`; returns how many messages this run posted.
    async fn run(&self, import: &HistoryImport) -> Result<usize, WorkError> {
        let agent = self
            .store
            .agent(&import.agent_id)
            .await?
            .ok_or_else(|| WorkError::Invalid(format!("no agent {}", import.agent_id)))?;
        let room = agent
            .room_id
            .as_deref()
            .ok_or_else(|| WorkError::Invalid(format!("agent {} has no room yet", agent.agent_id)))?;
        let room = OwnedRoomId::try_from(room).map_err(|e| WorkError::Invalid(e.to_string()))?;
        let ghost =
            OwnedUserId::try_from(agent.ghost_user_id.as_str()).map_err(|e| WorkError::Invalid(e.to_string()))?;
        let with_reasoning = self.settings.raw.history_include_reasoning;
        let plan = self
            .letta
            .history(
                &agent.agent_id,
                import.cutoff_ms,
                self.settings.raw.history_import_limit,
                |m| {
                    matches!(m.message_type.as_str(), "user_message" | "assistant_message")
                        || (with_reasoning && m.message_type == "reasoning_message")
                },
            )
            .await?;
        // Resume after the cursor; a cursor no longer in the plan means start over (and skip what
        // is recorded).
        let start = import
            .last_letta_id
            .as_ref()
            .and_then(|last| plan.iter().position(|m| m.key() == last.as_str()))
            .map_or(0, |at| at + 1);
        tracing::info!(
            agent_id = agent.agent_id,
            total = plan.len(),
            resume_at = start,
            "importing history"
        );
        // The answers to messages the relay sent are the relay's to post, even while it is still
        // posting them.
        let mut relay_runs = std::collections::HashSet::new();
        for message in plan.iter().filter(|m| m.message_type == "user_message") {
            if let (Some(otid), Some(run)) = (&message.otid, &message.run_id)
                && self.store.otid_from_relay(otid).await?
            {
                relay_runs.insert(run.clone());
            }
        }
        let started = Instant::now();
        let mut posted = 0;
        for message in &plan[start..] {
            let relays = message.run_id.as_ref().is_some_and(|run| relay_runs.contains(run));
            if !relays && !self.already_in_matrix(message).await? {
                let event_id = self.post(&room, &ghost, &agent.agent_id, message).await?;
                self.store
                    .record_sent(
                        event_id.as_str(),
                        room.as_str(),
                        &agent.agent_id,
                        &import_txn(&agent.agent_id, &message.key()),
                        None,
                        Some(&message.key()),
                    )
                    .await?;
                posted += 1;
                metrics::counter!("letta_matrix_history_imported_total").increment(1);
                if posted % 50 == 0 {
                    tracing::info!(
                        agent_id = agent.agent_id,
                        posted,
                        of = plan.len() - start,
                        "importing history"
                    );
                }
            }
            if !self
                .store
                .advance_history_import(&agent.agent_id, &self.owner, &message.key(), LEASE_MS)
                .await?
            {
                return Err(WorkError::LeaseLost);
            }
        }
        metrics::histogram!("letta_matrix_history_import_seconds").record(started.elapsed().as_secs_f64());
        Ok(posted)
    }

    async fn already_in_matrix(&self, message: &LettaMessage) -> Result<bool, WorkError> {
        if self.store.letta_message_in_matrix(&message.key()).await? {
            return Ok(true);
        }
        match message.otid.as_deref() {
            Some(otid) if message.message_type == "user_message" => Ok(self.store.otid_from_relay(otid).await?),
            _ => Ok(false),
        }
    }

    /// Posts one message at its original time: people's by the bot, quoting who wrote them; the
    /// agent's by its ghost.
    async fn post(
        &self,
        room: &OwnedRoomId,
        ghost: &OwnedUserId,
        agent_id: &str,
        message: &LettaMessage,
    ) -> Result<ruma::OwnedEventId, WorkError> {
        let text = message.text();
        let marker = json!({"letta_message_id": message.id, "message_type": message.message_type});
        let (sender, markdown, msgtype): (&ruma::UserId, String, &str) = match message.message_type.as_str() {
            "user_message" => {
                let name = message.name.as_deref().filter(|n| !n.is_empty()).unwrap_or("user");
                (self.namespace.bot(), format!("**{name}:** {text}"), "m.text")
            }
            "reasoning_message" => (ghost, format!("_Reasoning:_ {text}"), "m.notice"),
            _ => (ghost, text, "m.text"),
        };
        let timestamp = message
            .date_ms()
            .and_then(|ms| UInt::new(ms.max(0) as u64))
            .map(MilliSecondsSinceUnixEpoch);
        let txn = import_txn(agent_id, &message.key());
        // A message too long for one event goes in several, all at its time.
        let event_id = send_in_pieces(&self.matrix, room, sender, (&markdown, &txn), timestamp, |piece| {
            let mut content = markdown_content(piece, msgtype);
            content[IMPORTED_KEY] = marker.clone();
            content
        })
        .await?;
        Ok(event_id)
    }
}

fn import_txn(agent_id: &str, letta_id: &str) -> String {
    format!("import-{agent_id}-{letta_id}")
}
