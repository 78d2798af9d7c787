//! The sync reconciler: turns Letta's agent list into ghost users, agent rooms and the space,
//! and follows renames and deletions. It runs on start and on an interval; with PostgreSQL, only
//! on the replica that holds the leadership lock.
//!
//! Every step is idempotent, so a crash anywhere is finished by the next pass: a ghost that
//! exists is success, an agent room is found again by its alias rather than created twice.

mod invitees;
mod provision;

pub use provision::SPACE;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::app::AppState;
use crate::config::Settings;
use crate::error::WorkError;
use crate::letta::{Agent, LettaClient, LettaError};
use crate::matrix::MatrixClient;
use crate::namespace::Namespace;
use crate::store::{AgentRecord, Leadership, Store, now_ms};
use crate::tools::provision::Provisioner;

/// Management rooms are named `management:<admin user id>` in `bridge_rooms`.
pub const MANAGEMENT_PREFIX: &str = "management:";

/// What the last passes found, for `/ready`, `/status` and the logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncState {
    /// This replica reconciles (always true on SQLite).
    pub leader: bool,
    pub passes: u64,
    pub last_pass_at_ms: Option<i64>,
    pub last_pass_duration_ms: Option<u64>,
    /// `ok`, or why Letta could not be read.
    pub letta: String,
    pub agents_in_letta: usize,
    /// The last error of any kind, kept until a pass succeeds.
    pub last_error: Option<String>,
}

pub type SharedSyncState = Arc<RwLock<SyncState>>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassSummary {
    pub agents: usize,
    pub provisioned: usize,
    pub retired: usize,
    pub failed: usize,
}

/// The agent rows as of the last pass. Only the leader writes them, so they stay true until this
/// replica changes something or (re)gains leadership; an unchanged pass then reads no rows.
type KnownAgents = Arc<tokio::sync::Mutex<Option<HashMap<String, AgentRecord>>>>;

#[derive(Clone)]
pub struct Reconciler {
    known: KnownAgents,
    /// The configured invitees are in every existing room (see `invitees`).
    invitees_current: Arc<AtomicBool>,
    /// The room version the homeserver gives new rooms, once asked.
    default_room_version: Arc<tokio::sync::OnceCell<ruma::RoomVersionId>>,
    store: Store,
    matrix: MatrixClient,
    letta: LettaClient,
    namespace: Arc<Namespace>,
    settings: Arc<Settings>,
    state: SharedSyncState,
    /// Gives agents the tools, when configured.
    tools: Option<Arc<Provisioner>>,
}

impl Reconciler {
    /// A reconciler sharing the service's clients, store and sync state.
    pub fn new(app: &AppState) -> Self {
        Self {
            known: KnownAgents::default(),
            invitees_current: Arc::default(),
            default_room_version: Arc::default(),
            store: app.store.clone(),
            matrix: app.matrix.clone(),
            letta: app.letta.clone(),
            namespace: app.namespace.clone(),
            settings: app.settings.clone(),
            state: app.sync_state.clone(),
            tools: Provisioner::new(&app.settings, app.letta.clone(), app.store.clone()).map(Arc::new),
        }
    }

    /// Runs a pass every interval (the first at once) and whenever `wake` is notified (an
    /// operator's `sync` command).
    pub fn spawn(self, wake: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(self.settings.raw.sync_interval_ms));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leadership: Option<Leadership> = None;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = wake.notified() => *self.known.lock().await = None,
                }
                if self.keep_or_take_leadership(&mut leadership).await {
                    if let Err(error) = self.ensure_management_rooms().await {
                        tracing::warn!(%error, "cannot set up the admins' management rooms");
                    }
                    if let Err(error) = self.ensure_invitees_everywhere().await {
                        tracing::warn!(%error, "cannot invite the configured people to the existing rooms");
                    }
                    self.run_pass().await;
                }
            }
        })
    }

    async fn keep_or_take_leadership(&self, leadership: &mut Option<Leadership>) -> bool {
        if let Some(held) = leadership {
            if held.still_held().await {
                return true;
            }
            tracing::warn!("lost the sync leadership lock");
            *leadership = None;
        }
        match self.store.try_lead().await {
            Ok(Some(taken)) => {
                tracing::info!("this replica now runs agent sync");
                // Another leader may have changed the rows meanwhile.
                *self.known.lock().await = None;
                *leadership = Some(taken);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot ask for the sync leadership lock"),
        }
        let leading = leadership.is_some();
        self.state.write().expect("state lock").leader = leading;
        leading
    }

    /// One pass with its bookkeeping: state for `/status`, metrics, logs.
    pub async fn run_pass(&self) {
        let started = Instant::now();
        let result = self.pass().await;
        let elapsed = started.elapsed();
        metrics::histogram!("letta_matrix_sync_pass_duration_seconds").record(elapsed.as_secs_f64());
        let mut state = self.state.write().expect("state lock");
        state.passes += 1;
        state.last_pass_at_ms = Some(now_ms());
        state.last_pass_duration_ms = Some(elapsed.as_millis() as u64);
        match result {
            Ok(summary) => {
                state.letta = "ok".into();
                state.agents_in_letta = summary.agents;
                if summary.failed == 0 {
                    state.last_error = None;
                }
                if summary.provisioned + summary.retired + summary.failed > 0 {
                    tracing::info!(
                        ?summary,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "sync pass changed Matrix"
                    );
                }
            }
            Err(error) => {
                metrics::counter!("letta_matrix_sync_errors_total").increment(1);
                if let WorkError::Letta(letta) = &error {
                    state.letta = letta.to_string();
                }
                tracing::warn!(%error, "sync pass failed; the next one retries");
                state.last_error = Some(error.to_string());
            }
        }
    }

    /// Brings Matrix in line with Letta. An unchanged agent list costs two Letta calls (a page and
    /// the empty one that ends the list), no database read once cached, and no homeserver call.
    pub async fn pass(&self) -> Result<PassSummary, WorkError> {
        let mut agents = self.letta.list_agents().await?;
        agents.retain(|agent| !agent.is_sleeptime_companion());
        let mut known = self.known.lock().await;
        let records = match known.take() {
            Some(records) => records,
            None => self
                .store
                .agents()
                .await?
                .into_iter()
                .map(|record| (record.agent_id.clone(), record))
                .collect(),
        };
        metrics::gauge!("letta_matrix_agents_known").set(agents.len() as f64);

        let work: Vec<(&Agent, Option<AgentRecord>)> = agents
            .iter()
            .filter_map(|agent| match records.get(&agent.id) {
                Some(record) if !needs_work(record, agent) => None,
                record => Some((agent, record.cloned())),
            })
            .collect();
        let listed: HashSet<&str> = agents.iter().map(|agent| agent.id.as_str()).collect();
        let gone: Vec<AgentRecord> = records
            .values()
            .filter(|record| record.deleted_at.is_none() && !listed.contains(record.agent_id.as_str()))
            .cloned()
            .collect();
        let mut summary = PassSummary {
            agents: agents.len(),
            ..PassSummary::default()
        };
        let tools_due = match &self.tools {
            Some(tools) => tools.due(&agents).await?,
            None => Vec::new(),
        };
        if work.is_empty() && gone.is_empty() && tools_due.is_empty() {
            *known = Some(records);
            return Ok(summary);
        }
        // This pass writes rows: the next one reads them afresh.
        drop(known);

        let space = self.ensure_space().await?;
        // Built eagerly: a lazily mapped stream of borrowing futures trips the compiler's Send
        // inference for the spawned task.
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(agent, record)| {
                let space = &space;
                async move { (agent.id.clone(), self.provision(agent, record, space).await) }
            })
            .collect();
        let results: Vec<(String, Result<(), WorkError>)> = futures::stream::iter(tasks)
            .buffer_unordered(self.settings.raw.sync_concurrency)
            .collect()
            .await;
        let not_bridged: HashSet<String> = results
            .iter()
            .filter(|(_, result)| result.is_err())
            .map(|(agent_id, _)| agent_id.clone())
            .collect();
        if let Some(tools) = &self.tools {
            // Only agents in Matrix: a tool call authenticates against the agent's record.
            let due = tools_due.into_iter().filter(|agent| !not_bridged.contains(&agent.id));
            let tasks: Vec<_> = due
                .map(|agent| async move { (agent.id.clone(), tools.provision(agent).await) })
                .collect();
            let tooled: Vec<(String, Result<(), WorkError>)> = futures::stream::iter(tasks)
                .buffer_unordered(self.settings.raw.sync_concurrency)
                .collect()
                .await;
            for (agent_id, result) in tooled {
                if let Err(error) = result {
                    summary.failed += 1;
                    metrics::counter!("letta_matrix_sync_errors_total").increment(1);
                    tracing::warn!(agent_id, %error, "cannot give the agent its Matrix tools; the next pass retries");
                    self.state.write().expect("state lock").last_error = Some(format!("{agent_id} tools: {error}"));
                }
            }
        }
        for (agent_id, result) in results {
            match result {
                Ok(()) => summary.provisioned += 1,
                Err(error) => {
                    summary.failed += 1;
                    metrics::counter!("letta_matrix_sync_errors_total").increment(1);
                    tracing::warn!(agent_id, %error, "cannot bring the agent into Matrix; the next pass retries");
                    self.state.write().expect("state lock").last_error = Some(format!("{agent_id}: {error}"));
                }
            }
        }
        for record in &gone {
            // A list paged while agents come and go can miss one that exists: only Letta's own
            // "not found" retires an agent.
            match self.letta.agent(&record.agent_id).await {
                Err(LettaError::NotFound { .. }) => {}
                Ok(_) => {
                    tracing::warn!(
                        agent_id = record.agent_id,
                        "the agent list missed an agent that exists; keeping it"
                    );
                    continue;
                }
                Err(error) => {
                    summary.failed += 1;
                    tracing::warn!(agent_id = record.agent_id, %error, "cannot confirm the agent's deletion; the next pass retries");
                    continue;
                }
            }
            match self.retire(record, &space).await {
                Ok(()) => summary.retired += 1,
                Err(error) => {
                    summary.failed += 1;
                    tracing::warn!(agent_id = record.agent_id, %error, "cannot retire the deleted agent; the next pass retries");
                }
            }
        }
        Ok(summary)
    }
}

/// Work is due when the agent is new, half set up, deleted before, or renamed in Letta.
fn needs_work(record: &AgentRecord, agent: &Agent) -> bool {
    record.sync_step != "ready"
        || record.deleted_at.is_some()
        || record.name != agent.name
        || record.description.as_deref().unwrap_or_default() != agent.description.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: &str, name: &str, description: Option<&str>) -> AgentRecord {
        AgentRecord {
            agent_id: "agent-1".into(),
            ghost_user_id: "@letta_agent-1:x".into(),
            name: name.into(),
            description: description.map(Into::into),
            room_id: Some("!r:x".into()),
            room_alias: None,
            sync_step: step.into(),
            deleted_at: None,
        }
    }

    fn agent(name: &str, description: Option<&str>) -> Agent {
        Agent {
            id: "agent-1".into(),
            name: name.into(),
            description: description.map(Into::into),
            created_at: None,
            updated_at: None,
            agent_type: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn only_changes_cost_work() {
        assert!(!needs_work(&record("ready", "A", Some("d")), &agent("A", Some("d"))));
        assert!(
            !needs_work(&record("ready", "A", None), &agent("A", Some(""))),
            "no description is an empty one"
        );
        assert!(needs_work(&record("ready", "A", None), &agent("B", None)), "renamed");
        assert!(
            needs_work(&record("ready", "A", None), &agent("A", Some("new"))),
            "described"
        );
        assert!(needs_work(&record("new", "A", None), &agent("A", None)), "half set up");
        let mut deleted = record("deleted", "A", None);
        deleted.deleted_at = Some(1);
        assert!(needs_work(&deleted, &agent("A", None)), "back in Letta");
    }
}
