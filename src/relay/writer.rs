//! Posts an agent's streamed answer as its ghost: each assistant message of the turn is one Matrix
//! message ("part"), posted with the first tokens and completed by throttled `m.replace` edits. An
//! assistant message too long for one event continues in further parts.
//!
//! Every send has a txn id derived from the cause (event, agent, part, edit), so a retried send,
//! or a whole turn redone after a crash, can never post twice; and every posted part is recorded,
//! so a redone turn edits the part it already posted instead of posting another.

use std::time::{Duration, Instant};

use ruma::{OwnedEventId, OwnedRoomId, OwnedTransactionId, OwnedUserId};

use super::reply::{self, Placement};

/// The first tokens wait this long for company: an answer that streams in faster than that (most
/// short ones) appears whole, as one event instead of a message and an instant edit.
const FIRST_POST_DELAY: Duration = Duration::from_millis(50);
use super::{Relay, WorkError};

/// What an aside shows. Letta gives the reasoning, the tool calls and the answer of one step the
/// same message id, so an aside is told apart by its kind as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AsideKind {
    Reasoning,
    ToolCall,
    ToolReturn,
}

struct Aside {
    letta_id: String,
    kind: AsideKind,
    summary: String,
    text: String,
}

struct Part {
    letta_id: String,
    text: String,
    event_id: Option<OwnedEventId>,
    /// The text the room shows now.
    shown: String,
    /// Whether the first post may be answered with an earlier try's event (same txn id), whose
    /// text is unknown: the part is then completed by an edit.
    unsure: bool,
    edits: u32,
    last_post: Instant,
    first_token: Instant,
}

pub(super) struct ReplyWriter<'a> {
    relay: &'a Relay,
    room_id: OwnedRoomId,
    ghost: OwnedUserId,
    agent_id: String,
    cause_event_id: String,
    txn_base: String,
    placement: Placement,
    parts: Vec<Part>,
    /// Reasoning or a tool call in progress.
    aside: Option<Aside>,
    asides_posted: u32,
    pub show_reasoning: bool,
    /// A turn redone after a crash or an outage: any part it posts may exist already.
    pub redone: bool,
    /// When the last token arrived, for the "final token → Matrix send" figure.
    pub last_token_at: Option<Instant>,
}

impl<'a> ReplyWriter<'a> {
    pub fn new(
        relay: &'a Relay,
        room_id: OwnedRoomId,
        ghost: OwnedUserId,
        agent_id: &str,
        cause_event_id: &str,
        placement: Placement,
    ) -> Self {
        Self {
            relay,
            room_id,
            ghost,
            agent_id: agent_id.to_owned(),
            cause_event_id: cause_event_id.to_owned(),
            txn_base: super::txn_base(cause_event_id, agent_id),
            placement,
            parts: Vec::new(),
            aside: None,
            asides_posted: 0,
            show_reasoning: false,
            redone: false,
            last_token_at: None,
        }
    }

    pub fn txn(&self, suffix: &str) -> OwnedTransactionId {
        OwnedTransactionId::from(format!("{}-{suffix}", self.txn_base))
    }

    pub fn room_id(&self) -> &ruma::RoomId {
        &self.room_id
    }

    pub fn ghost(&self) -> &ruma::UserId {
        &self.ghost
    }

    /// The whole answer: every part, in order.
    pub fn answer_text(&self) -> String {
        let parts: Vec<&str> = self
            .parts
            .iter()
            .map(|part| part.text.trim())
            .filter(|t| !t.is_empty())
            .collect();
        parts.join("\n\n")
    }

    pub fn has_answer(&self) -> bool {
        self.parts.iter().any(|part| !part.text.trim().is_empty())
    }

    /// Adds a piece of the answer; a new Letta message id starts a new part.
    pub async fn push_answer(&mut self, letta_id: &str, delta: &str) -> Result<(), WorkError> {
        self.last_token_at = Some(Instant::now());
        self.flush_aside().await?;
        if self.parts.last().is_none_or(|part| part.letta_id != letta_id) {
            self.close_last_part().await?;
            self.open_part(letta_id, String::new()).await?;
        }
        let part = self.parts.last_mut().expect("a part was just ensured");
        part.text.push_str(delta);
        Ok(())
    }

    /// Measured when the part is about to be shown, not on every token: the cut depends on the
    /// text alone, so it falls in the same place whenever it is looked for.
    async fn split_overflow(&mut self) -> Result<(), WorkError> {
        while let Some(part) = self.parts.last_mut()
            && let Some(cut) = reply::overflow_cut(&part.text)
        {
            // Too long for one event: the part ends at a break, the rest goes on in a new one.
            let rest = part.text.split_off(cut).trim_start().to_owned();
            let letta_id = part.letta_id.clone();
            self.flush(self.parts.len() - 1, true).await?;
            self.open_part(&letta_id, rest).await?;
        }
        Ok(())
    }

    async fn close_last_part(&mut self) -> Result<(), WorkError> {
        self.split_overflow().await?;
        match self.parts.len().checked_sub(1) {
            Some(index) => self.flush(index, true).await,
            None => Ok(()),
        }
    }

    /// A new part, knowing the event a crashed try of this turn posted for it, if any.
    async fn open_part(&mut self, letta_id: &str, text: String) -> Result<(), WorkError> {
        let posted = self
            .relay
            .store
            .sent_by_txn(self.txn(&format!("p{}", self.parts.len())).as_str())
            .await?;
        let now = Instant::now();
        let event_id = posted.and_then(|sent| OwnedEventId::try_from(sent.event_id).ok());
        self.parts.push(Part {
            letta_id: letta_id.to_owned(),
            text,
            unsure: self.redone && event_id.is_none(),
            event_id,
            shown: String::new(),
            edits: 0,
            last_post: now,
            first_token: now,
        });
        Ok(())
    }

    /// Adds a piece of reasoning or of a tool call, shown only when the room asks for it. The
    /// summary of an aside's first piece stays (a streamed tool call names its tool once).
    pub async fn push_aside(
        &mut self,
        letta_id: &str,
        kind: AsideKind,
        summary: &str,
        delta: &str,
    ) -> Result<(), WorkError> {
        if !self.show_reasoning {
            return Ok(());
        }
        if self
            .aside
            .as_ref()
            .is_some_and(|aside| aside.letta_id != letta_id || aside.kind != kind)
        {
            self.flush_aside().await?;
        }
        let aside = self.aside.get_or_insert_with(|| Aside {
            letta_id: letta_id.to_owned(),
            kind,
            summary: summary.to_owned(),
            text: String::new(),
        });
        aside.text.push_str(delta);
        Ok(())
    }

    async fn flush_aside(&mut self) -> Result<(), WorkError> {
        let Some(Aside { summary, text, .. }) = self.aside.take() else {
            return Ok(());
        };
        let mut content = reply::collapsed_notice(&summary, &text);
        // Reasoning belongs with the answer it leads to: in its thread, when it has one.
        if self.placement.thread.is_some() {
            content = reply::place(content, &self.placement);
        }
        let txn = self.txn(&format!("a{}", self.asides_posted));
        self.asides_posted += 1;
        self.relay
            .matrix
            .send_message(&self.room_id, txn, &content, Some(&self.ghost))
            .await?;
        Ok(())
    }

    /// When the room should next see the answer grow, if it has anything new to see.
    pub fn next_flush(&self, edit_interval: Duration) -> Option<Instant> {
        let part = self.parts.last()?;
        if part.text == part.shown || part.text.trim().is_empty() {
            return None;
        }
        Some(match part.event_id {
            None => part.first_token + FIRST_POST_DELAY,
            Some(_) => part.last_post + edit_interval,
        })
    }

    /// Shows the newest part as it is now. A homeserver that is down only delays this: the
    /// stream goes on, and the final text is posted (and waited for) at the end.
    pub async fn flush_latest(&mut self) -> Result<(), WorkError> {
        self.split_overflow().await?;
        let Some(index) = self.parts.len().checked_sub(1) else {
            return Ok(());
        };
        match self.flush(index, false).await {
            Err(WorkError::Matrix(error)) if error.is_transient() => {
                tracing::warn!(%error, "cannot show the answer growing; the whole of it follows");
                self.parts[index].last_post = Instant::now();
                Ok(())
            }
            other => other,
        }
    }

    /// Posts every part in full: the end of the turn.
    pub async fn finish(&mut self) -> Result<(), WorkError> {
        self.flush_aside().await?;
        if let Some(token_at) = self.last_token_at {
            metrics::histogram!("letta_matrix_relay_finish_seconds").record(token_at.elapsed().as_secs_f64());
        }
        self.close_last_part().await
    }

    async fn flush(&mut self, index: usize, last: bool) -> Result<(), WorkError> {
        // A first post that turns out unsure is followed at once by the final edit.
        while self.flush_once(index, last).await? && last {}
        Ok(())
    }

    /// Posts or edits the part once; true when the room may still not show its text.
    async fn flush_once(&mut self, index: usize, last: bool) -> Result<bool, WorkError> {
        let part = &self.parts[index];
        if part.text.trim().is_empty() || (part.text == part.shown && part.event_id.is_some()) {
            return Ok(false);
        }
        let text = part.text.clone();
        let letta_id = part.letta_id.clone();
        let (txn, content) = match &part.event_id {
            None => {
                let mut content = reply::text(&text);
                // The first part answers the message; the rest follow it (in its thread, if any).
                if index == 0 || self.placement.thread.is_some() {
                    content = reply::place(content, &self.placement);
                }
                (self.txn(&format!("p{index}")), content)
            }
            Some(original) => {
                let suffix = if last {
                    format!("p{index}-final")
                } else {
                    format!("p{index}-e{}", part.edits)
                };
                (self.txn(&suffix), reply::replacement(&text, original.clone()))
            }
        };
        let sent = self
            .relay
            .matrix
            .send_message(&self.room_id, txn.clone(), &content, Some(&self.ghost))
            .await;
        let part = &mut self.parts[index];
        let event_id = match sent {
            Ok(event_id) => event_id,
            Err(error) => {
                // The post may have reached the homeserver: a repeat returns that event.
                part.unsure |= part.event_id.is_none();
                return Err(error.into());
            }
        };
        let mut unseen = false;
        if part.event_id.is_none() {
            self.relay
                .store
                .record_sent(
                    event_id.as_str(),
                    self.room_id.as_str(),
                    &self.agent_id,
                    txn.as_str(),
                    Some(&self.cause_event_id),
                    Some(&letta_id),
                )
                .await?;
            part.event_id = Some(event_id);
            unseen = std::mem::take(&mut part.unsure);
        } else {
            part.edits += 1;
        }
        part.shown = if unseen { String::new() } else { text };
        part.last_post = Instant::now();
        Ok(unseen)
    }
}
