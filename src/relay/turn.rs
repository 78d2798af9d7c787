//! One turn: a message (with any context it carries) goes to one agent, and the streamed answer
//! comes back into the room as the agent's ghost.
//!
//! The turn is recorded before Letta is asked. Letta does not deduplicate by `otid`, so when a
//! turn's fate is unknown (a crash, a broken stream, a 5xx after the request left) its `otid` is
//! looked up in the agent's messages first, and the answer found there is posted instead of
//! asking again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ruma::events::room::message::RoomMessageEventContent;
use ruma::{OwnedRoomId, OwnedTransactionId, OwnedUserId};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::reply::{self, Placement};
use super::writer::{AsideKind, ReplyWriter};
use super::{Relay, WorkError};
use crate::letta::{
    ApprovalDecision, BusyKind, Conversation, EventStream, LettaError, MessageCreate, StopReason, StreamEvent,
    find_turn,
};
use crate::matrix::MatrixClient;
use crate::outbound::RetryPolicy;
use crate::store::{AgentRecord, InboxRow, now_ms};

/// What an agent is told when a tool call of its needed approval.
const APPROVAL_DENIAL: &str = "Denied automatically: this agent is reached through Matrix (letta-matrix), where tool calls cannot be approved yet.";
/// Denials in one turn, in case an agent keeps asking.
const MAX_APPROVAL_ROUNDS: usize = 3;
/// How many of the agent's latest messages are searched for a turn of unknown fate.
const LOOKUP_WINDOW: usize = 100;
/// How long to wait for Letta to finish a turn it has started but not answered yet.
const UNFINISHED_TURN_WAIT: Duration = Duration::from_secs(60);
/// Typing notices last this long and are renewed before they run out.
const TYPING_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting turn's delay notice looks whether Letta has failed yet.
const DELAY_CHECK: Duration = Duration::from_millis(250);

pub(super) struct TurnRequest<'a> {
    pub row: &'a InboxRow,
    pub agent: &'a AgentRecord,
    /// Where the turn goes in Letta: the room's conversation.
    pub conversation: Conversation,
    pub ghost: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub inputs: Vec<MessageCreate>,
    pub placement: Placement,
    pub show_reasoning: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum TurnOutcome {
    /// With the answer's text (empty when the agent chose not to say anything).
    Answered(String),
    /// The person was told why; the message is not retried.
    Failed(String),
}

/// How one attempt at asking ended.
enum Attempt {
    Finished {
        stop_reason: Option<StopReason>,
        error: Option<String>,
        /// Tool calls the agent stopped to have approved: (tool_call_id, tool name).
        awaiting: Vec<(String, String)>,
    },
    /// The request may or may not have reached the agent: look before asking again.
    Unknown(LettaError),
    /// Letta refused before doing anything; asking again later may work.
    NotDone(LettaError),
}

impl Relay {
    pub(super) async fn run_turn(&self, turn: TurnRequest<'_>) -> Result<TurnOutcome, WorkError> {
        let row = turn.row;
        let agent_id = turn.agent.agent_id.as_str();
        let conversation = &turn.conversation;
        let otid = turn.inputs.last().expect("a turn has a message").otid.clone();
        let existing = self.store.turn(&row.event_id, agent_id).await?;
        if existing.as_ref().is_some_and(|t| t.state != "asked") {
            return Ok(TurnOutcome::Answered(String::new()));
        }
        let mut fate_unknown = existing.is_some();
        // The receipt is for people; Letta need not wait for it.
        if let Ok(event_id) = ruma::OwnedEventId::try_from(row.event_id.as_str()) {
            let (matrix, room_id, ghost) = (self.matrix.clone(), turn.room_id.clone(), turn.ghost.clone());
            tokio::spawn(
                async move {
                    if let Err(error) = matrix.read_receipt(&room_id, &event_id, &ghost).await {
                        tracing::debug!(%error, "cannot send a read receipt");
                    }
                }
                .in_current_span(),
            );
        }
        let typing = self.show_typing(turn.room_id.clone(), turn.ghost.clone());
        let mut writer = ReplyWriter::new(
            self,
            turn.room_id.clone(),
            turn.ghost.clone(),
            agent_id,
            &row.event_id,
            turn.placement.clone(),
        );
        writer.show_reasoning = turn.show_reasoning;
        writer.redone = fate_unknown;

        let started = Instant::now();
        let delay = DelayNotice::start(
            self.matrix.clone(),
            &writer,
            started + Duration::from_millis(self.settings.raw.relay_notice_after_ms),
        );
        let backoff = RetryPolicy {
            attempts: u32::MAX,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        };
        let mut attempt = 0;
        let mut cleared_stale_approval = false;
        let outcome = loop {
            if fate_unknown {
                match self.recover(&mut writer, &delay, conversation, &otid, started).await {
                    Ok(Some(outcome)) => break outcome,
                    Ok(None) => {}
                    Err(WorkError::Letta(error)) if error.is_retryable() => {
                        attempt += 1;
                        if let Some(outcome) = self
                            .wait_or_give_up(&writer, &delay, &error, started, attempt, &backoff)
                            .await?
                        {
                            break outcome;
                        }
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            self.store.begin_turn(row, agent_id, &otid).await?;
            match self.ask(&mut writer, &delay, conversation, &turn.inputs, row).await? {
                Attempt::Finished {
                    stop_reason,
                    error,
                    awaiting,
                } => {
                    let (stop_reason, error) = self
                        .settle_approvals(&mut writer, conversation, stop_reason, error, awaiting)
                        .await?;
                    break self.close_turn(&mut writer, stop_reason, error).await?;
                }
                Attempt::NotDone(LettaError::Busy {
                    kind: BusyKind::PendingApproval,
                    ..
                }) if !cleared_stale_approval => {
                    // Left waiting by an earlier turn or another client: nothing can be asked
                    // until it is decided.
                    cleared_stale_approval = true;
                    self.deny_pending(conversation).await?;
                    continue;
                }
                Attempt::Unknown(error) | Attempt::NotDone(error) if !error.is_retryable() => {
                    let message = describe_refusal(&error);
                    self.post_notice(&writer, "refused", &message).await?;
                    break TurnOutcome::Failed(error.to_string());
                }
                Attempt::Unknown(error) => {
                    fate_unknown = true;
                    attempt += 1;
                    if let Some(outcome) = self
                        .wait_or_give_up(&writer, &delay, &error, started, attempt, &backoff)
                        .await?
                    {
                        break outcome;
                    }
                }
                Attempt::NotDone(error) => {
                    attempt += 1;
                    if let Some(outcome) = self
                        .wait_or_give_up(&writer, &delay, &error, started, attempt, &backoff)
                        .await?
                    {
                        break outcome;
                    }
                }
            }
        };
        delay.over().await;
        drop(typing);
        if let Err(error) = self.matrix.typing(&turn.room_id, &turn.ghost, None).await {
            tracing::debug!(%error, "cannot clear the typing notice");
        }
        let state = match &outcome {
            TurnOutcome::Answered(_) => "answered",
            TurnOutcome::Failed(reason) => {
                tracing::warn!(reason, "the turn failed; the room was told");
                "failed"
            }
        };
        self.store.finish_turn(&row.event_id, agent_id, state).await?;
        metrics::counter!("letta_matrix_relay_turns_total", "outcome" => state).increment(1);
        metrics::histogram!("letta_matrix_relay_turn_seconds").record(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    /// Asks once and streams the answer into the room.
    async fn ask(
        &self,
        writer: &mut ReplyWriter<'_>,
        delay: &DelayNotice,
        conversation: &Conversation,
        inputs: &[MessageCreate],
        row: &InboxRow,
    ) -> Result<Attempt, WorkError> {
        metrics::histogram!("letta_matrix_relay_pickup_seconds")
            .record((now_ms() - row.received_at).max(0) as f64 / 1000.0);
        match self.letta.stream_turn_in(conversation, inputs).await {
            Ok(stream) => {
                delay.over().await;
                self.consume(writer, stream).await
            }
            // Refused outright (4xx, busy, 429): nothing happened. Anything else may have.
            Err(error) if error.nothing_done() => Ok(Attempt::NotDone(error)),
            Err(error) => Ok(Attempt::Unknown(error)),
        }
    }

    /// Streams an answer into the room until Letta says the turn is over.
    async fn consume(&self, writer: &mut ReplyWriter<'_>, mut stream: EventStream) -> Result<Attempt, WorkError> {
        let edit_interval = Duration::from_millis(self.settings.raw.relay_edit_interval_ms);
        let mut stop_reason = None;
        let mut error = None;
        let mut awaiting: Vec<(String, String)> = Vec::new();
        loop {
            let next = match writer.next_flush(edit_interval) {
                Some(at) => tokio::select! {
                    biased;
                    event = stream.next() => Some(event),
                    _ = tokio::time::sleep_until(at.into()) => None,
                },
                None => Some(stream.next().await),
            };
            let event = match next {
                None => {
                    writer.flush_latest().await?;
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(error))) => return Ok(Attempt::Unknown(error)),
                Some(Some(Ok(event))) => event,
            };
            match event {
                StreamEvent::Assistant { id, delta } => writer.push_answer(&id, &delta).await?,
                StreamEvent::Reasoning { id, delta } => {
                    writer
                        .push_aside(&id, AsideKind::Reasoning, "Reasoning", &delta)
                        .await?
                }
                StreamEvent::ToolCall { id, name, arguments } => {
                    let summary = format!("Tool call: {}", name.as_deref().unwrap_or("tool"));
                    writer
                        .push_aside(&id, AsideKind::ToolCall, &summary, &arguments)
                        .await?;
                }
                StreamEvent::ToolReturn { id, text, ok } => {
                    let summary = if ok { "Tool result" } else { "Tool error" };
                    writer.push_aside(&id, AsideKind::ToolReturn, summary, &text).await?;
                }
                StreamEvent::ApprovalRequest {
                    id,
                    tool_call_ids,
                    name,
                    arguments,
                } => {
                    // A streamed request names its tool in its first piece only.
                    let tool = name
                        .clone()
                        .or_else(|| awaiting.last().map(|(_, tool)| tool.clone()))
                        .unwrap_or_else(|| "a tool".into());
                    for call in tool_call_ids {
                        if !awaiting.iter().any(|(known, _)| *known == call) {
                            awaiting.push((call, tool.clone()));
                        }
                    }
                    let summary = format!("Approval requested: {}", name.as_deref().unwrap_or("tool"));
                    writer
                        .push_aside(&id, AsideKind::ToolCall, &summary, &arguments)
                        .await?;
                }
                StreamEvent::Stop(reason) => stop_reason = Some(reason),
                StreamEvent::Error(message) => error = Some(message),
                StreamEvent::Other => {}
                StreamEvent::Done => break,
            }
        }
        // Letta reports a message refused for a pending approval inside the stream.
        if let Some(refusal) = error.as_deref().and_then(LettaError::from_stream_error)
            && !writer.has_answer()
        {
            return Ok(Attempt::NotDone(refusal));
        }
        Ok(Attempt::Finished {
            stop_reason,
            error,
            awaiting,
        })
    }

    /// Looks a turn of unknown fate up in Letta. `Ok(None)`: Letta never got it; ask.
    async fn recover(
        &self,
        writer: &mut ReplyWriter<'_>,
        delay: &DelayNotice,
        conversation: &Conversation,
        otid: &str,
        started: Instant,
    ) -> Result<Option<TurnOutcome>, WorkError> {
        let agent_id = conversation.agent_id();
        loop {
            let messages = self.letta.recent_messages_in(conversation, LOOKUP_WINDOW).await?;
            let Some((_, answers)) = find_turn(&messages, otid) else {
                // Letta stores a turn's input with its answer, when the step ends: a run still
                // going may be this very turn.
                if started.elapsed() <= UNFINISHED_TURN_WAIT && self.letta.has_active_run(conversation).await? {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                tracing::info!(agent_id, otid, "Letta never received this message; asking now");
                return Ok(None);
            };
            if !answers.is_empty() {
                tracing::info!(
                    agent_id,
                    otid,
                    parts = answers.len(),
                    "Letta had answered already; posting that answer"
                );
                metrics::counter!("letta_matrix_relay_recovered_total").increment(1);
                delay.over().await;
                for answer in answers {
                    writer.push_answer(&answer.id, &answer.text()).await?;
                }
                writer.finish().await?;
                return Ok(Some(TurnOutcome::Answered(writer.answer_text())));
            }
            if started.elapsed() > UNFINISHED_TURN_WAIT {
                let message = "I received this message but my answer to it was lost. Please ask again.";
                self.post_notice(writer, "lost", message).await?;
                return Ok(Some(TurnOutcome::Failed("Letta kept the message but no answer".into())));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Approvals cannot be given from Matrix yet, so a tool call that waits for one is denied
    /// at once with a reason the agent sees, and the agent's reaction streams into the same
    /// answer; an agent is never left stuck. Bounded, in case an agent asks again and again.
    async fn settle_approvals(
        &self,
        writer: &mut ReplyWriter<'_>,
        conversation: &Conversation,
        mut stop_reason: Option<StopReason>,
        mut error: Option<String>,
        mut awaiting: Vec<(String, String)>,
    ) -> Result<(Option<StopReason>, Option<String>), WorkError> {
        let agent_id = conversation.agent_id();
        for _ in 0..MAX_APPROVAL_ROUNDS {
            if stop_reason != Some(StopReason::RequiresApproval) || awaiting.is_empty() {
                break;
            }
            let mut tools: Vec<String> = awaiting.iter().map(|(_, tool)| format!("`{tool}`")).collect();
            tools.dedup();
            let message = format!(
                "⚠️ The agent asked to run {}, which needs a person's approval. Approvals cannot be given from Matrix yet, so the call was denied and the agent was told why.",
                tools.join(", ")
            );
            self.post_notice(writer, "approval-denied", &message).await?;
            let decisions: Vec<ApprovalDecision> = awaiting
                .drain(..)
                .map(|(call, _)| ApprovalDecision::deny(call, APPROVAL_DENIAL))
                .collect();
            tracing::info!(
                agent_id,
                calls = decisions.len(),
                "denying tool calls that wait for approval"
            );
            let stream = match self.letta.stream_decisions_in(conversation, &decisions).await {
                Ok(stream) => stream,
                Err(failure) => {
                    tracing::warn!(agent_id, error = %failure, "cannot deny the tool calls; the next turn clears them");
                    break;
                }
            };
            match self.consume(writer, stream).await? {
                Attempt::Finished {
                    stop_reason: next_stop,
                    error: next_error,
                    awaiting: next,
                } => {
                    stop_reason = next_stop;
                    error = next_error.or(error);
                    awaiting = next;
                }
                Attempt::Unknown(failure) | Attempt::NotDone(failure) => {
                    tracing::warn!(agent_id, error = %failure, "the agent's answer to a denied tool call was lost");
                    break;
                }
            }
        }
        Ok((stop_reason, error))
    }

    /// Denies whatever the agent waits on, and lets its reaction run its course unseen: it
    /// belongs to a turn that is over.
    async fn deny_pending(&self, conversation: &Conversation) -> Result<(), WorkError> {
        let agent_id = conversation.agent_id();
        let pending = self.letta.pending_approvals(agent_id).await?;
        tracing::info!(
            agent_id,
            calls = pending.len(),
            "denying tool calls left waiting for approval"
        );
        if pending.is_empty() {
            return Ok(());
        }
        let decisions: Vec<ApprovalDecision> = pending
            .into_iter()
            .map(|call| ApprovalDecision::deny(call, APPROVAL_DENIAL))
            .collect();
        let mut stream = self.letta.stream_decisions_in(conversation, &decisions).await?;
        while let Some(event) = stream.next().await {
            if matches!(event, Ok(StreamEvent::Done) | Err(_)) {
                break;
            }
        }
        Ok(())
    }

    async fn close_turn(
        &self,
        writer: &mut ReplyWriter<'_>,
        stop_reason: Option<StopReason>,
        error: Option<String>,
    ) -> Result<TurnOutcome, WorkError> {
        writer.finish().await?;
        if let Some(error) = error {
            self.post_notice(writer, "error", &format!("⚠️ The agent ran into an error: {error}"))
                .await?;
            return Ok(TurnOutcome::Failed(error));
        }
        match stop_reason {
            None | Some(StopReason::EndTurn | StopReason::ToolRule) => Ok(TurnOutcome::Answered(writer.answer_text())),
            Some(reason) => {
                let prefix = if writer.has_answer() { "" } else { "No answer: " };
                let message = format!(
                    "⚠️ {prefix}The agent stopped because {} (`{}`).",
                    explain_stop(&reason),
                    reason.as_str()
                );
                tracing::warn!(reason = reason.as_str(), "the agent's turn ended abnormally");
                self.post_notice(writer, "stopped", &message).await?;
                Ok(TurnOutcome::Answered(writer.answer_text()))
            }
        }
    }

    /// Backs off before the next attempt; gives up (with a notice) after the configured time.
    async fn wait_or_give_up(
        &self,
        writer: &ReplyWriter<'_>,
        delay_notice: &DelayNotice,
        error: &LettaError,
        started: Instant,
        attempt: u32,
        backoff: &RetryPolicy,
    ) -> Result<Option<TurnOutcome>, WorkError> {
        let waited = started.elapsed();
        let raw = &self.settings.raw;
        if waited >= Duration::from_millis(raw.relay_give_up_after_ms) {
            let message = format!(
                "⚠️ I could not reach my agent for {} minutes and gave up on this message ({error}).",
                waited.as_secs() / 60
            );
            delay_notice.over().await;
            self.post_notice(writer, "gave-up", &message).await?;
            return Ok(Some(TurnOutcome::Failed(error.to_string())));
        }
        // Busy agents are ordinary: they are waited for without telling anyone.
        if !matches!(error, LettaError::Busy { .. }) {
            delay_notice.failing().await;
        }
        let delay = error.retry_after().unwrap_or_else(|| backoff.delay(attempt));
        tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "Letta turn failed; retrying");
        tokio::time::sleep(delay).await;
        Ok(None)
    }

    async fn post_notice(&self, writer: &ReplyWriter<'_>, kind: &str, text: &str) -> Result<(), WorkError> {
        let content = reply::notice(text);
        self.matrix
            .send_message(
                writer.room_id(),
                writer.txn(&format!("n-{kind}")),
                &content,
                Some(writer.ghost()),
            )
            .await?;
        Ok(())
    }

    /// Keeps the ghost typing until the returned task is dropped.
    fn show_typing(&self, room_id: OwnedRoomId, ghost: OwnedUserId) -> Background {
        let matrix = self.matrix.clone();
        Background(tokio::spawn(
            async move {
                loop {
                    if let Err(error) = matrix.typing(&room_id, &ghost, Some(TYPING_TIMEOUT)).await {
                        tracing::debug!(%error, "cannot send a typing notice");
                    }
                    tokio::time::sleep(TYPING_TIMEOUT * 2 / 3).await;
                }
            }
            .in_current_span(),
        ))
    }
}

/// A task that lives as long as its turn, however the turn ends (an error included).
struct Background(JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Delay {
    /// Letta has not failed this turn (it may be thinking, or busy).
    Waiting,
    /// Letta failed; the room is told once the turn has waited long enough.
    Failing,
    /// Told, or no longer waiting.
    Over,
}

/// The "queued" notice: a timer of its own, so that every turn kept waiting past
/// `relay_notice_after_ms` by a failing Letta gets it, however long the gaps between retries.
/// The state's lock is held while posting, so an answer never overtakes its notice.
struct DelayNotice {
    state: Arc<tokio::sync::Mutex<Delay>>,
    _timer: Background,
}

impl DelayNotice {
    fn start(matrix: MatrixClient, writer: &ReplyWriter<'_>, due: Instant) -> Self {
        let state = Arc::new(tokio::sync::Mutex::new(Delay::Waiting));
        let post = DelayPost {
            matrix,
            room_id: writer.room_id().to_owned(),
            ghost: writer.ghost().to_owned(),
            txn: writer.txn("n-delayed"),
            content: reply::notice(
                "⏳ My agent server is not answering right now. Your message is queued and I will answer when it is back.",
            ),
        };
        let timer = Background(tokio::spawn(post.when_due(state.clone(), due).in_current_span()));
        Self { state, _timer: timer }
    }

    async fn failing(&self) {
        let mut state = self.state.lock().await;
        if *state == Delay::Waiting {
            *state = Delay::Failing;
        }
    }

    /// Waits for a notice being posted, so that what follows comes after it.
    async fn over(&self) {
        *self.state.lock().await = Delay::Over;
    }
}

struct DelayPost {
    matrix: MatrixClient,
    room_id: OwnedRoomId,
    ghost: OwnedUserId,
    txn: OwnedTransactionId,
    content: RoomMessageEventContent,
}

impl DelayPost {
    async fn when_due(self, state: Arc<tokio::sync::Mutex<Delay>>, due: Instant) {
        tokio::time::sleep_until(due.into()).await;
        let mut attempt = 0;
        loop {
            {
                let mut state = state.lock().await;
                match *state {
                    Delay::Over => return,
                    Delay::Waiting => {}
                    Delay::Failing => {
                        let sent = self
                            .matrix
                            .send_message(&self.room_id, self.txn.clone(), &self.content, Some(&self.ghost))
                            .await;
                        match sent {
                            Ok(_) => {
                                *state = Delay::Over;
                                return;
                            }
                            Err(error) => {
                                attempt += 1;
                                tracing::warn!(%error, attempt, "cannot post the notice that Letta is not answering");
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(DELAY_CHECK).await;
        }
    }
}

/// What a person is told when Letta refuses a message for good.
fn describe_refusal(error: &LettaError) -> String {
    match error {
        LettaError::NotFound { .. } => "⚠️ This agent no longer exists in Letta.".into(),
        LettaError::Unauthorized { .. } => {
            "⚠️ The bridge's Letta token was refused; an operator needs to fix `letta_token`.".into()
        }
        other => format!("⚠️ Letta refused this message: {other}"),
    }
}

/// Why an agent stopped, for the people in the room: what happened and who can do something.
fn explain_stop(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn | StopReason::ToolRule => "it finished",
        StopReason::RequiresApproval => {
            "it kept asking to run tools that need approval, which cannot be given from Matrix yet"
        }
        StopReason::MaxSteps => "it reached its step limit",
        StopReason::MaxTokensExceeded => {
            "its answer reached the model's output limit, so it may be cut short; an operator can raise `max_tokens` in the agent's model settings"
        }
        StopReason::InsufficientCredits => "the Letta account is out of credits; an operator needs to add some",
        StopReason::ContextWindowOverflowInSystemPrompt => {
            "its instructions and memory no longer fit the model's context window; an operator needs to shorten the agent's memory blocks or pick a model with a larger window"
        }
        StopReason::Error => "Letta ran into an internal error",
        StopReason::LlmApiError => "its language model failed",
        StopReason::InvalidLlmResponse => "its language model answered something unusable",
        StopReason::InvalidToolCall => "it made a tool call that could not be run",
        StopReason::NoToolCall => "it did not call a tool",
        StopReason::Cancelled => "the run was cancelled",
        StopReason::Other(_) => "of a reason this bridge does not know",
    }
}
