//! The relay: inbox rows become agent turns. Each room is a lane worked in order, one row at a
//! time; lanes run in parallel up to `relay_concurrency`; a Letta conversation takes one turn at
//! a time across all replicas, so an agent answers rooms with conversations of their own at once
//! and the rest one at a time (see `conversation`).
//!
//! Claims are leases in the database (see `store::relay`), renewed while work goes on, so a
//! replica that dies hands its rooms over when the lease runs out, and a replica that restarts
//! takes its own back at once: leases name the replica (see `identity`), not the process.

mod conversation;
mod identity;
mod incoming;
pub mod interagent;
mod management;
mod membership;
mod pieces;
mod policy;
mod reply;
mod turn;
mod upgrade;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument;

pub use identity::ReplicaIdentity;
pub use pieces::send_in_pieces;
pub use policy::{AllowRule, is_allowed};
pub use reply::markdown_content;

use crate::app::AppState;
use crate::config::Settings;
use crate::error::WorkError;
use crate::letta::{LettaClient, MessageCreate};
use crate::matrix::MatrixClient;
use crate::namespace::Namespace;
use crate::outbound::RetryPolicy;
use crate::store::{AgentRecord, InboxEvent, InboxRow, RoomSettings, Store};
use incoming::Incoming;
use reply::Placement;
use turn::{TurnOutcome, TurnRequest};

/// The state event a room's admins set to change how agents behave there.
pub const ROOM_SETTINGS_EVENT: &str = "org.lettamatrix.settings";
/// How often the dispatcher looks for work nobody announced (other replicas' rows, expired leases).
const POLL_INTERVAL: Duration = Duration::from_millis(1000);
/// Display names are re-read after this long.
const NAME_TTL: Duration = Duration::from_secs(300);
const NAME_CACHE_LIMIT: usize = 10_000;
/// How often the backlog gauge is refreshed.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// Between redos of an event while the homeserver is down (each send retries briefly itself).
const HOMESERVER_BACKOFF: RetryPolicy = RetryPolicy {
    attempts: u32::MAX,
    first_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(15),
};

pub struct Relay {
    settings: Arc<Settings>,
    store: Store,
    matrix: MatrixClient,
    letta: LettaClient,
    namespace: Arc<Namespace>,
    /// Names this replica in leases; the same after a restart.
    owner: String,
    identity: tokio::sync::Mutex<ReplicaIdentity>,
    sync_state: crate::sync::SharedSyncState,
    sync_signal: Arc<Notify>,
    history_signal: Arc<Notify>,
    agent_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    names: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Relay {
    pub fn new(app: &AppState, identity: ReplicaIdentity) -> Arc<Self> {
        Arc::new(Self {
            settings: app.settings.clone(),
            store: app.store.clone(),
            matrix: app.matrix.clone(),
            letta: app.letta.clone(),
            namespace: app.namespace.clone(),
            owner: format!("relay-{}", identity.id),
            identity: tokio::sync::Mutex::new(identity),
            sync_state: app.sync_state.clone(),
            sync_signal: app.sync_signal.clone(),
            history_signal: app.history_signal.clone(),
            agent_locks: Mutex::default(),
            names: Mutex::default(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn lease_ms(&self) -> i64 {
        self.settings.raw.relay_lease_ms as i64
    }

    /// Starts the dispatcher and the lease keeper; `wake` announces new inbox rows.
    pub fn spawn(self: Arc<Self>, wake: Arc<Notify>) -> Vec<tokio::task::JoinHandle<()>> {
        let keeper = tokio::spawn(self.clone().keep_leases());
        vec![tokio::spawn(self.dispatch(wake)), keeper]
    }

    async fn dispatch(self: Arc<Self>, wake: Arc<Notify>) {
        if let Err(error) = self.store.release_dead_leases_if_single_process().await {
            tracing::warn!(%error, "cannot release the leases of a previous run");
        }
        // No live process shares our id, so leases under it are a previous run's: free them now.
        if let Err(error) = self.store.release_leases(&self.owner).await {
            tracing::warn!(%error, "cannot release this replica's leases of a previous run");
        }
        let lanes = Arc::new(Semaphore::new(self.settings.raw.relay_concurrency));
        let lane_ended = Arc::new(Notify::new());
        let mut backlog_measured = Instant::now() - BACKLOG_INTERVAL;
        loop {
            if backlog_measured.elapsed() >= BACKLOG_INTERVAL {
                backlog_measured = Instant::now();
                if let Ok((pending, _)) = self.store.inbox_backlog().await {
                    metrics::gauge!("letta_matrix_relay_pending_events").set(pending as f64);
                }
            }
            let free = lanes.available_permits();
            if free > 0 {
                match self
                    .store
                    .claim_room_heads(&self.owner, self.lease_ms(), free as i64)
                    .await
                {
                    Ok(rows) => {
                        for row in rows {
                            let permit = lanes
                                .clone()
                                .try_acquire_owned()
                                .expect("claimed no more than the free lanes");
                            let ended = lane_ended.clone();
                            tokio::spawn(self.clone().run_lane(row, permit, ended));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot claim inbox rows"),
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = lane_ended.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Works a room's rows in order until none is left that this worker can claim.
    async fn run_lane(
        self: Arc<Self>,
        first: InboxRow,
        _permit: tokio::sync::OwnedSemaphorePermit,
        ended: Arc<Notify>,
    ) {
        let mut row = first;
        while let Some(next) = self.work_row(&row).await {
            row = next;
        }
        ended.notify_one();
    }

    /// Works one row, then closes it and claims the room's next row at once.
    async fn work_row(&self, row: &InboxRow) -> Option<InboxRow> {
        // Lanes interleave on one thread: the span must follow this row's future, not the thread.
        let span = tracing::info_span!("relay", event_id = row.event_id, room_id = row.room_id, kind = row.kind);
        self.work_row_in_span(row).instrument(span).await
    }

    async fn work_row_in_span(&self, row: &InboxRow) -> Option<InboxRow> {
        let (state, error) = match self.process_patiently(row).await {
            Ok(state) => (state, None),
            Err(error) => {
                tracing::warn!(%error, "cannot relay an event");
                ("failed", Some(error.to_string()))
            }
        };
        match self
            .store
            .finish_and_claim_next(row, &self.owner, state, error.as_deref(), self.lease_ms())
            .await
        {
            Ok((true, next)) => next,
            Ok((false, _)) => {
                tracing::warn!("the row's lease was lost before it was finished; another worker redoes it");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot mark a row finished; it will be redone");
                None
            }
        }
    }

    /// Processes a row, redoing it while the homeserver is unreachable or failing, up to
    /// `relay_give_up_after_ms`. Redoing is safe: a turn already asked is looked up in Letta by its
    /// `otid`, never asked again, and every send repeats its txn id.
    async fn process_patiently(&self, row: &InboxRow) -> Result<&'static str, WorkError> {
        let started = Instant::now();
        let give_up = Duration::from_millis(self.settings.raw.relay_give_up_after_ms);
        let mut attempt = 0;
        loop {
            match self.process(row).await {
                Err(WorkError::Matrix(error)) if error.is_transient() && started.elapsed() < give_up => {
                    attempt += 1;
                    let delay = HOMESERVER_BACKOFF.delay(attempt);
                    tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "homeserver failing; redoing the event later");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Renews every lease this process holds, well before they run out.
    async fn keep_leases(self: Arc<Self>) {
        let period = Duration::from_millis(self.settings.raw.relay_lease_ms / 3);
        loop {
            tokio::time::sleep(period).await;
            if !self.identity.lock().await.still_ours(&self.store).await {
                // Another process now claims under our id: neither could tell its leases apart.
                tracing::error!(
                    owner = self.owner,
                    "another process took this replica's id while its database session was lost; stopping"
                );
                std::process::exit(1);
            }
            if let Err(error) = self.store.renew_leases(&self.owner, self.lease_ms()).await {
                tracing::warn!(%error, "cannot renew relay leases");
            }
        }
    }

    /// Handles one row; returns the state it ends in.
    async fn process(&self, row: &InboxRow) -> Result<&'static str, WorkError> {
        match InboxEvent::parse(&row.kind) {
            Some(InboxEvent::Message) => self.handle_message(row).await,
            Some(InboxEvent::Membership) => self.handle_membership(row).await.map(|()| "done"),
            Some(InboxEvent::Settings) => self.apply_settings(row).await.map(|()| "done"),
            Some(InboxEvent::Upgrade) => self.follow_upgrade(row).await.map(|()| "done"),
            // A message redacted before its turn is skipped when its turn comes (see
            // `was_redacted`); one already answered keeps its answer.
            Some(InboxEvent::Redaction) => Ok("done"),
            None => Ok("skipped"),
        }
    }

    async fn handle_message(&self, row: &InboxRow) -> Result<&'static str, WorkError> {
        let incoming = Incoming::parse(&row.event_json).map_err(WorkError::Invalid)?;
        let sender = parse_user(&incoming.sender)?;
        if self.namespace.is_bot(&sender) || incoming.is_edit() {
            return Ok("skipped");
        }
        if !self.settings.admins.is_empty() && self.is_management_room(&row.room_id).await? {
            return self.handle_command(row, &incoming).await;
        }
        // A ghost's message is another agent speaking; one no agent owns is nobody's.
        let sender_agent = match self.namespace.is_ours(&sender) {
            true => match self.store.agent_by_ghost(sender.as_str()).await? {
                Some(agent) => Some(agent),
                None => return Ok("skipped"),
            },
            false => None,
        };
        let origin = interagent::origin_of(&incoming, sender_agent.as_ref());
        if sender_agent.is_some() && origin.is_none() {
            return Ok("skipped");
        }
        let mut agents = self.store.agents_in_room(&row.room_id).await?;
        // An agent never hears its own messages back.
        agents.retain(|(agent, _)| Some(&agent.agent_id) != sender_agent.as_ref().map(|a| &a.agent_id));
        let Some((first_agent, _)) = agents.first() else {
            return Ok("skipped");
        };
        if self.store.was_redacted(&row.room_id, row.id, &row.event_id).await? {
            return Ok("skipped");
        }
        let room_id = parse_room(&row.room_id)?;
        let first_ghost = parse_user(&first_agent.ghost_user_id)?;
        if let Some(origin) = &origin
            && origin.hops > self.settings.raw.inter_agent_max_hops
        {
            let text = format!(
                "Stopped an exchange between agents after {} hops (`inter_agent_max_hops`), so that they cannot loop forever.",
                self.settings.raw.inter_agent_max_hops
            );
            let txn = format!("{}-n-hops", txn_base(&row.event_id, &first_agent.agent_id));
            self.matrix
                .send_message(&room_id, txn.into(), &reply::notice(&text), Some(&first_ghost))
                .await?;
            return Ok("skipped");
        }
        if sender_agent.is_none() && !is_allowed(&self.settings.allow, &self.settings.server_name, &sender) {
            let text = "Sorry, I only answer people this bridge allows. Ask the operator of letta-matrix to add you to its `allow` list.";
            self.notice_once(&room_id, &first_ghost, "not-allowed", text).await?;
            return Ok("skipped");
        }
        if incoming.is_encrypted() {
            let text = "I cannot read encrypted messages. Please talk to me in a room without encryption.";
            self.notice_once(&room_id, &first_ghost, "encrypted", text).await?;
            return Ok("skipped");
        }
        let room_settings = self.store.room_settings(&row.room_id).await?;
        let mut state = "held";
        for (agent, kind) in &agents {
            let ghost = parse_user(&agent.ghost_user_id)?;
            if !self.is_addressed(&incoming, agent, &ghost, kind, room_settings).await? {
                continue;
            }
            let outcome = self
                .answer(row, &incoming, agent, ghost.clone(), kind, room_settings)
                .await?;
            // An answer to another agent in the receiver's own room goes back to the sender.
            if let (Some(origin), Some(from), TurnOutcome::Answered(text)) = (&origin, &sender_agent, &outcome)
                && kind == "own"
                && !text.trim().is_empty()
            {
                self.route_back(row, agent, &ghost, from, text, origin.hops + 1).await?;
            }
            state = match (outcome, state) {
                (TurnOutcome::Failed(_), _) | (_, "failed") => "failed",
                _ => "done",
            };
        }
        Ok(state)
    }

    /// Delivers `answerer`'s answer into the asking agent's own room, as the answerer.
    async fn route_back(
        &self,
        row: &InboxRow,
        answerer: &AgentRecord,
        answerer_ghost: &UserId,
        asker: &AgentRecord,
        text: &str,
        hops: u32,
    ) -> Result<(), WorkError> {
        let Some(room) = asker.room_id.as_deref() else {
            return Ok(());
        };
        let room_id = parse_room(room)?;
        let asker_ghost = parse_user(&asker.ghost_user_id)?;
        let txn = format!("{}-route", txn_base(&row.event_id, &answerer.agent_id));
        let message = interagent::Outgoing {
            text,
            hops,
            txn_id: txn.into(),
        };
        interagent::post_as_agent(
            &self.matrix,
            &room_id,
            (answerer, answerer_ghost),
            Some(&asker_ghost),
            message,
        )
        .await?;
        tracing::info!(
            from = answerer.agent_id,
            to = asker.agent_id,
            hops,
            "answer routed back to the asking agent"
        );
        Ok(())
    }

    async fn is_addressed(
        &self,
        incoming: &Incoming,
        agent: &AgentRecord,
        ghost: &UserId,
        kind: &str,
        settings: RoomSettings,
    ) -> Result<bool, WorkError> {
        // Another agent writing into this agent's own room or DM is talking to it, like a person.
        if kind != "group" || settings.respond_to_all == Some(true) {
            return Ok(true);
        }
        if incoming.mentions_user(ghost.as_str()) || incoming.names(ghost.as_str(), &agent.name) {
            return Ok(true);
        }
        for replied in [incoming.reply_to(), incoming.thread_root()].into_iter().flatten() {
            if self.store.sender_agent(replied).await?.as_deref() == Some(agent.agent_id.as_str()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn answer(
        &self,
        row: &InboxRow,
        incoming: &Incoming,
        agent: &AgentRecord,
        ghost: OwnedUserId,
        kind: &str,
        settings: RoomSettings,
    ) -> Result<TurnOutcome, WorkError> {
        let room_id = parse_room(&row.room_id)?;
        let mut inputs = Vec::new();
        if kind == "group" {
            let limit = self.settings.raw.relay_context_messages as i64;
            for held in self
                .store
                .held_context(&row.room_id, &agent.agent_id, row.id, limit)
                .await?
            {
                if let Ok(context) = Incoming::parse(&held.event_json) {
                    inputs.push(self.input_for(&room_id, &context, agent, &ghost).await?);
                }
            }
        }
        inputs.push(self.input_for(&room_id, incoming, agent, &ghost).await?);
        let event_id =
            OwnedEventId::try_from(incoming.event_id.as_str()).map_err(|e| WorkError::Invalid(e.to_string()))?;
        let sender = parse_user(&incoming.sender)?;
        let placement = match incoming.thread_root() {
            Some(root) => Placement {
                reply_to: Some((event_id.clone(), sender)),
                thread: Some((
                    OwnedEventId::try_from(root).map_err(|e| WorkError::Invalid(e.to_string()))?,
                    event_id,
                )),
            },
            None if kind == "group" || self.store.has_newer_pending(&row.room_id, row.id).await? => Placement {
                reply_to: Some((event_id, sender)),
                thread: None,
            },
            None => Placement::default(),
        };
        let show_reasoning = settings.show_reasoning.unwrap_or(self.settings.raw.show_reasoning);
        let conversation = self.conversation_for(agent, &room_id).await?;
        let key = conversation::serial_key(&conversation).to_owned();
        let _turn = self.agent_turn(&key).await?;
        let outcome = self
            .run_turn(TurnRequest {
                row,
                agent,
                conversation,
                ghost,
                room_id,
                inputs,
                placement,
                show_reasoning,
            })
            .instrument(tracing::info_span!("turn", agent_id = agent.agent_id))
            .await;
        self.store.release_agent(&key, &self.owner).await?;
        outcome
    }

    /// Waits until this worker may start a turn on `agent_id` (an agent, or one of its
    /// conversations: `conversation::serial_key`): first among this process's lanes, then among
    /// replicas.
    async fn agent_turn(&self, agent_id: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, WorkError> {
        let lock = self
            .agent_locks
            .lock()
            .expect("the lock map is never poisoned")
            .entry(agent_id.to_owned())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        while !self.store.lease_agent(agent_id, &self.owner, self.lease_ms()).await? {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(guard)
    }

    /// The message as Letta gets it: who speaks (display name and Matrix id), then what they said.
    async fn input_for(
        &self,
        room_id: &RoomId,
        incoming: &Incoming,
        agent: &AgentRecord,
        ghost: &UserId,
    ) -> Result<MessageCreate, WorkError> {
        let sender = parse_user(&incoming.sender)?;
        let otid = otid(&incoming.event_id, &agent.agent_id);
        if self.namespace.is_ours(&sender)
            && let Some(from) = self.store.agent_by_ghost(sender.as_str()).await?
            && let Some(origin) = interagent::origin_of(incoming, Some(&from))
        {
            let text = incoming.text_for_agent(&origin.name);
            return Ok(MessageCreate::user(
                interagent::framed_for_receiver(&origin, &sender, &text),
                Some(letta_name(&origin.name, sender.localpart())),
                otid,
            ));
        }
        let speaker = self.display_name(room_id, &sender, ghost).await;
        let text = incoming.text_for_agent(&speaker);
        Ok(MessageCreate::user(
            format!("{speaker} ({sender}): {text}"),
            Some(letta_name(&speaker, sender.localpart())),
            otid,
        ))
    }

    async fn display_name(&self, room_id: &RoomId, user: &UserId, reader: &UserId) -> String {
        let key = (room_id.to_string(), user.to_string());
        if let Some((name, at)) = self.names.lock().expect("never poisoned").get(&key)
            && at.elapsed() < NAME_TTL
        {
            return name.clone();
        }
        let name = match self.matrix.display_name(room_id, user, reader).await {
            Ok(Some(name)) if !name.trim().is_empty() => name,
            Ok(_) => user.localpart().to_owned(),
            Err(error) => {
                tracing::debug!(%error, %user, "cannot read a display name");
                user.localpart().to_owned()
            }
        };
        let mut names = self.names.lock().expect("never poisoned");
        if names.len() >= NAME_CACHE_LIMIT {
            names.clear();
        }
        names.insert(key, (name.clone(), Instant::now()));
        name
    }

    async fn notice_once(&self, room_id: &RoomId, ghost: &UserId, kind: &str, text: &str) -> Result<(), WorkError> {
        if !self.store.claim_room_notice(room_id.as_str(), kind).await? {
            return Ok(());
        }
        let txn = format!("notice-{kind}-{}", short_hash(room_id.as_str()));
        self.matrix
            .send_message(room_id, txn.into(), &reply::notice(text), Some(ghost))
            .await?;
        Ok(())
    }

    async fn apply_settings(&self, row: &InboxRow) -> Result<(), WorkError> {
        let event: serde_json::Value =
            serde_json::from_str(&row.event_json).map_err(|e| WorkError::Invalid(format!("settings event: {e}")))?;
        let sender = event["sender"].as_str().map(parse_user).transpose()?;
        if !sender.as_deref().is_some_and(|sender| self.trusts(sender)) {
            tracing::warn!(sender = ?event["sender"].as_str(), "ignored room settings from a user `allow` does not admit");
            return Ok(());
        }
        let content = &event["content"];
        let settings = RoomSettings {
            respond_to_all: content["respond_to"].as_str().map(|mode| mode == "all"),
            show_reasoning: content["show_reasoning"].as_bool(),
        };
        self.store.set_room_settings(&row.room_id, settings).await?;
        tracing::info!(?settings, "room settings changed");
        Ok(())
    }
}

fn parse_user(user: &str) -> Result<OwnedUserId, WorkError> {
    OwnedUserId::try_from(user).map_err(|e| WorkError::Invalid(format!("user id `{user}`: {e}")))
}

fn parse_room(room: &str) -> Result<OwnedRoomId, WorkError> {
    OwnedRoomId::try_from(room).map_err(|e| WorkError::Invalid(format!("room id `{room}`: {e}")))
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..10])
}

/// The prefix of every txn id a turn uses: the cause and the agent (txn ids are scoped to the
/// appservice, not to each ghost, so the agent must be part of it).
pub fn txn_base(event_id: &str, agent_id: &str) -> String {
    format!("lm-{}-{agent_id}", short_hash(event_id))
}

/// A uuid-shaped `otid` derived from the event and the agent, so a redone turn carries the same one.
pub(crate) fn otid(event_id: &str, agent_id: &str) -> String {
    let digest = Sha256::digest(format!("{event_id}\n{agent_id}").as_bytes());
    let hex = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Letta's `name` field follows OpenAI's rule: letters, digits, `_` and `-`, at most 64.
fn letta_name(display_name: &str, localpart: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect::<String>()
            .trim_matches('_')
            .chars()
            .take(64)
            .collect()
    };
    let name = clean(display_name);
    if name.chars().any(|c| c.is_ascii_alphanumeric()) {
        name
    } else {
        clean(localpart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derived_from_the_cause_repeat_and_differ_per_agent() {
        assert_eq!(otid("$e", "agent-1"), otid("$e", "agent-1"));
        assert_ne!(otid("$e", "agent-1"), otid("$e", "agent-2"));
        assert_eq!(
            otid("$e", "a").split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert_ne!(txn_base("$e", "agent-1"), txn_base("$e", "agent-2"));
        assert!(txn_base("$e", "agent-1").len() < 80);
    }

    #[test]
    fn letta_names_are_safe_and_fall_back_to_the_localpart() {
        assert_eq!(letta_name("Alice Smith", "alice"), "Alice_Smith");
        assert_eq!(letta_name("🦊🦊", "fox.user"), "fox_user");
        assert_eq!(letta_name(&"x".repeat(100), "x").len(), 64);
    }
}
