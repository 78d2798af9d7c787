//! Talking to an agent: `POST /v1/agents/{id}/messages` with token streaming (server-sent
//! events), and the agent's message list, where a turn of unknown fate is looked up by `otid`.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Conversation, LettaClient, LettaError};

/// One input message. `name` is stored by Letta and shown to the model as the speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageCreate {
    pub role: &'static str,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub otid: String,
}

impl MessageCreate {
    pub fn user(content: String, name: Option<String>, otid: String) -> Self {
        Self {
            role: "user",
            content,
            name,
            otid,
        }
    }
}

/// A decision on a tool call that waits for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalDecision {
    #[serde(rename = "type")]
    kind: &'static str,
    pub tool_call_id: String,
    pub approve: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ApprovalDecision {
    pub fn deny(tool_call_id: String, reason: &str) -> Self {
        Self {
            kind: "approval",
            tool_call_id,
            approve: false,
            reason: Some(reason.to_owned()),
        }
    }
}

/// The one input message that carries decisions (Letta wants every pending call decided at once).
#[derive(Serialize)]
struct ApprovalMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    approvals: &'a [ApprovalDecision],
}

#[derive(Serialize)]
struct SendRequest<T: Serialize> {
    messages: T,
    streaming: bool,
    stream_tokens: bool,
    include_pings: bool,
}

/// What a streamed turn says, reduced to what the relay acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A piece of the agent's answer; pieces with the same `id` make one message.
    Assistant {
        id: String,
        delta: String,
    },
    /// A piece of the agent's private reasoning.
    Reasoning {
        id: String,
        delta: String,
    },
    /// A piece of a tool call: the name comes with the first piece, arguments accumulate.
    ToolCall {
        id: String,
        name: Option<String>,
        arguments: String,
    },
    ToolReturn {
        id: String,
        text: String,
        ok: bool,
    },
    /// A tool call that waits for a person's decision; pieces like [`Self::ToolCall`], each
    /// naming the calls (by `tool_call_id`) it asks about.
    ApprovalRequest {
        id: String,
        tool_call_ids: Vec<String>,
        name: Option<String>,
        arguments: String,
    },
    /// Why the turn ended.
    Stop(StopReason),
    /// Letta failed inside the stream.
    Error(String),
    /// Keep-alives, usage and anything newer than this client.
    Other,
    /// `[DONE]`: the stream ended as it should.
    Done,
}

/// Why a turn ended, as Letta's `stop_reason` event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The normal end: the agent answered.
    EndTurn,
    /// A tool rule ended the turn (a terminal tool ran); also normal.
    ToolRule,
    /// A tool call waits for a person's approval; the agent accepts nothing else until then.
    RequiresApproval,
    MaxSteps,
    MaxTokensExceeded,
    InsufficientCredits,
    ContextWindowOverflowInSystemPrompt,
    Error,
    LlmApiError,
    InvalidLlmResponse,
    InvalidToolCall,
    NoToolCall,
    Cancelled,
    /// A reason newer than this client.
    Other(String),
}

impl StopReason {
    pub fn parse(reason: &str) -> Self {
        match reason {
            "end_turn" => Self::EndTurn,
            "tool_rule" => Self::ToolRule,
            "requires_approval" => Self::RequiresApproval,
            "max_steps" => Self::MaxSteps,
            "max_tokens_exceeded" => Self::MaxTokensExceeded,
            "insufficient_credits" => Self::InsufficientCredits,
            "context_window_overflow_in_system_prompt" => Self::ContextWindowOverflowInSystemPrompt,
            "error" => Self::Error,
            "llm_api_error" => Self::LlmApiError,
            "invalid_llm_response" => Self::InvalidLlmResponse,
            "invalid_tool_call" => Self::InvalidToolCall,
            "no_tool_call" => Self::NoToolCall,
            "cancelled" => Self::Cancelled,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::EndTurn => "end_turn",
            Self::ToolRule => "tool_rule",
            Self::RequiresApproval => "requires_approval",
            Self::MaxSteps => "max_steps",
            Self::MaxTokensExceeded => "max_tokens_exceeded",
            Self::InsufficientCredits => "insufficient_credits",
            Self::ContextWindowOverflowInSystemPrompt => "context_window_overflow_in_system_prompt",
            Self::Error => "error",
            Self::LlmApiError => "llm_api_error",
            Self::InvalidLlmResponse => "invalid_llm_response",
            Self::InvalidToolCall => "invalid_tool_call",
            Self::NoToolCall => "no_tool_call",
            Self::Cancelled => "cancelled",
            Self::Other(reason) => reason,
        }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LettaError>> + Send>>;

/// A message in an agent's history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LettaMessage {
    pub id: String,
    pub message_type: String,
    #[serde(default)]
    pub date: Option<String>,
    #[serde(default)]
    pub otid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub step_id: Option<String>,
    #[serde(default)]
    pub content: Option<Value>,
    /// A `reasoning_message` carries its text here instead of in `content`.
    #[serde(default)]
    pub reasoning: Option<String>,
}

impl LettaMessage {
    /// The message's text: Letta sends either a string or a list of typed parts.
    pub fn text(&self) -> String {
        match &self.reasoning {
            Some(reasoning) if self.content.is_none() => reasoning.clone(),
            _ => text_of(self.content.as_ref()),
        }
    }
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

impl LettaClient {
    /// Starts a token-streamed turn. An error before the first event means Letta refused or was
    /// unreachable; the caller decides whether the turn may have happened anyway.
    pub async fn stream_turn(&self, agent_id: &str, messages: &[MessageCreate]) -> Result<EventStream, LettaError> {
        self.stream_turn_in(&Conversation::Default(agent_id.to_owned()), messages)
            .await
    }

    /// [`Self::stream_turn`] in one of the agent's conversations.
    pub async fn stream_turn_in(
        &self,
        conversation: &Conversation,
        messages: &[MessageCreate],
    ) -> Result<EventStream, LettaError> {
        self.stream(conversation, messages).await
    }

    /// Sends decisions on the tool calls an agent waits on; the agent carries on, streamed like
    /// a turn.
    pub async fn stream_decisions(
        &self,
        agent_id: &str,
        decisions: &[ApprovalDecision],
    ) -> Result<EventStream, LettaError> {
        self.stream_decisions_in(&Conversation::Default(agent_id.to_owned()), decisions)
            .await
    }

    /// [`Self::stream_decisions`] for a turn in one of the agent's conversations.
    pub async fn stream_decisions_in(
        &self,
        conversation: &Conversation,
        decisions: &[ApprovalDecision],
    ) -> Result<EventStream, LettaError> {
        let message = ApprovalMessage {
            kind: "approval",
            approvals: decisions,
        };
        self.stream(conversation, [message]).await
    }

    /// The tool calls (by `tool_call_id`) the agent waits on a decision for, if any.
    pub async fn pending_approvals(&self, agent_id: &str) -> Result<Vec<String>, LettaError> {
        let path = format!("/v1/agents/{}?include=agent.pending_approval", encode(agent_id));
        let agent: Value = self.get(&path, &format!("agent {agent_id}")).await?;
        let pending = &agent["pending_approval"];
        let calls = pending["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .chain([&pending["tool_call"]]);
        let mut ids: Vec<String> = Vec::new();
        for id in calls.filter_map(|call| call["tool_call_id"].as_str()) {
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    async fn stream<T: Serialize>(&self, conversation: &Conversation, messages: T) -> Result<EventStream, LettaError> {
        let body = SendRequest {
            messages,
            streaming: true,
            stream_tokens: true,
            include_pings: true,
        };
        let request = self.authorize(
            self.streaming
                .post(self.url(&conversation.messages_path()))
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .json(&body),
        );
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let headers = response.headers().clone();
            let body = response.text().await.unwrap_or_default();
            return Err(LettaError::from_response(
                status,
                &headers,
                &body,
                &conversation.to_string(),
            ));
        }
        let base = self.base.to_string();
        let bytes = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| LettaError::Unreachable {
                url: base.clone(),
                message: format!("the stream broke: {e}"),
            })
        });
        Ok(Box::pin(sse_events(bytes)))
    }

    /// The agent's most recent messages (at most `limit`), oldest first.
    pub async fn recent_messages(&self, agent_id: &str, limit: usize) -> Result<Vec<LettaMessage>, LettaError> {
        self.recent_messages_in(&Conversation::Default(agent_id.to_owned()), limit)
            .await
    }

    /// [`Self::recent_messages`] of one of the agent's conversations.
    pub async fn recent_messages_in(
        &self,
        conversation: &Conversation,
        limit: usize,
    ) -> Result<Vec<LettaMessage>, LettaError> {
        let path = format!("{}?limit={limit}&order=desc", conversation.messages_path());
        let mut messages: Vec<LettaMessage> = self.get(&path, &conversation.to_string()).await?;
        // Letta 0.16.8 answered `order=desc` oldest first; dates say which way a page runs.
        if messages.first().and_then(|m| m.date.as_ref()) > messages.last().and_then(|m| m.date.as_ref()) {
            messages.reverse();
        }
        Ok(messages)
    }
}

/// Messages per page when reading an agent's history. Letta counts stored rows, not the items it
/// returns (one row can be reasoning, a tool call and an answer), so only an empty page ends a walk.
const HISTORY_PAGE: usize = 100;

impl LettaMessage {
    /// When Letta stored the message, in milliseconds since the epoch.
    pub fn date_ms(&self) -> Option<i64> {
        let date = self.date.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(date)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    /// Names this item among the agent's messages. Letta gives the reasoning, the tool calls and
    /// the answer of one step the same `id`, so other kinds carry their type too; people's
    /// messages and answers keep the bare id, which is what earlier imports recorded.
    pub fn key(&self) -> std::borrow::Cow<'_, str> {
        match self.message_type.as_str() {
            "user_message" | "assistant_message" => self.id.as_str().into(),
            other => format!("{}:{other}", self.id).into(),
        }
    }
}

impl LettaClient {
    /// The latest `limit` messages of the agent's default conversation that `wanted` accepts,
    /// dated no later than `cutoff_ms`, oldest first.
    ///
    /// The walk goes forwards from the oldest message (`order=asc` with `after`), the one
    /// dialect every server agrees on: Letta 0.16.8 reads `after` as "newer" whatever the order
    /// and answers `desc` pages oldest first, while its SDK documents cursors relative to the
    /// order; and dates, at second precision, cannot tell which way a page runs.
    pub async fn history(
        &self,
        agent_id: &str,
        cutoff_ms: i64,
        limit: usize,
        wanted: impl Fn(&LettaMessage) -> bool,
    ) -> Result<Vec<LettaMessage>, LettaError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut latest: std::collections::VecDeque<LettaMessage> = std::collections::VecDeque::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        'pages: loop {
            let mut path = format!(
                "/v1/agents/{}/messages?limit={HISTORY_PAGE}&order=asc&conversation_id=default",
                encode(agent_id)
            );
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&after={}", encode(cursor)));
            }
            let page: Vec<LettaMessage> = self.get(&path, &format!("agent {agent_id}")).await?;
            let mut moved = false;
            for message in page {
                if !seen.insert(message.key().into_owned()) {
                    continue;
                }
                moved = true;
                cursor = Some(message.id.clone());
                if message.date_ms().is_some_and(|at| at > cutoff_ms) {
                    // Everything after it is newer still.
                    break 'pages;
                }
                if wanted(&message) {
                    if latest.len() == limit {
                        latest.pop_front();
                    }
                    latest.push_back(message);
                }
            }
            // An empty page ends it; so does one with nothing new (a server ignoring the cursor).
            if !moved {
                break;
            }
        }
        Ok(latest.into())
    }
}

/// The user message Letta stored under `otid`, and the assistant messages of the same run that
/// answered it, when Letta has them.
pub fn find_turn<'a>(messages: &'a [LettaMessage], otid: &str) -> Option<(&'a LettaMessage, Vec<&'a LettaMessage>)> {
    let asked = messages
        .iter()
        .find(|m| m.message_type == "user_message" && m.otid.as_deref() == Some(otid))?;
    let answers = messages
        .iter()
        .filter(|m| m.message_type == "assistant_message" && m.run_id.is_some() && m.run_id == asked.run_id)
        .collect();
    Some((asked, answers))
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

/// Splits a byte stream into server-sent events and decodes their `data:` payloads.
fn sse_events<S>(bytes: S) -> impl Stream<Item = Result<StreamEvent, LettaError>> + Send
where
    S: Stream<Item = Result<bytes::Bytes, LettaError>> + Send + Unpin + 'static,
{
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buffer, finished)| async move {
            if finished {
                return None;
            }
            loop {
                if let Some(end) = event_end(&buffer) {
                    let raw: Vec<u8> = buffer.drain(..end.0 + end.1).collect();
                    let text = String::from_utf8_lossy(&raw[..end.0]).into_owned();
                    let Some(event) = decode_event(&text) else {
                        continue;
                    };
                    let done = matches!(event, Ok(StreamEvent::Done));
                    return Some((event, (bytes, buffer, done)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(error)) => return Some((Err(error), (bytes, buffer, true))),
                    None => {
                        let error = LettaError::Unreachable {
                            url: String::new(),
                            message: "the stream ended before [DONE]".into(),
                        };
                        return Some((Err(error), (bytes, buffer, true)));
                    }
                }
            }
        },
    )
}

/// Where the first event in `buffer` ends: (length of the event, length of the separator).
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|at| (at, 2));
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|at| (at, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One event's lines to a [`StreamEvent`]; `None` for comment-only events and for what this
/// client cannot use. Letta adds event kinds between versions, and one odd line must never cost a
/// person their answer, so unknown named events and undecodable data are logged and skipped.
fn decode_event(text: &str) -> Option<Result<StreamEvent, LettaError>> {
    let mut name = None;
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    if data.trim() == "[DONE]" {
        return Some(Ok(StreamEvent::Done));
    }
    let value: Option<Value> = serde_json::from_str(&data).ok();
    match name {
        None | Some("" | "message") => {}
        Some("error") => {
            let message = value
                .as_ref()
                .and_then(error_text)
                .unwrap_or_else(|| data.chars().take(300).collect());
            return Some(Ok(StreamEvent::Error(message)));
        }
        Some(other) => {
            tracing::debug!(event = other, "skipping a stream event this client does not know");
            return Some(Ok(StreamEvent::Other));
        }
    }
    match value {
        Some(value) => Some(Ok(event_from_json(&value))),
        None => {
            let shown: String = data.chars().take(200).collect();
            tracing::warn!(data = shown, "skipping a stream line that is not JSON");
            Some(Ok(StreamEvent::Other))
        }
    }
}

/// The readable part of an error payload: Letta sends `{"error": {"message", "detail"}}`,
/// `{"message", "detail"}` or `{"detail"}`.
fn error_text(value: &Value) -> Option<String> {
    let error = value.get("error").unwrap_or(value);
    if let Some(text) = error.as_str() {
        return Some(text.to_owned());
    }
    let message = error["message"].as_str().or(error["detail"].as_str());
    let detail = error["detail"].as_str().filter(|d| Some(*d) != message);
    match (message, detail) {
        (Some(message), Some(detail)) => Some(format!("{message} ({detail})")),
        (Some(message), None) => Some(message.to_owned()),
        (None, _) => None,
    }
}

fn event_from_json(value: &Value) -> StreamEvent {
    let id = || value["id"].as_str().unwrap_or_default().to_owned();
    let string = |field: &str| value[field].as_str().unwrap_or_default().to_owned();
    if value.get("error").is_some() {
        return StreamEvent::Error(error_text(value).unwrap_or_else(|| value["error"].to_string()));
    }
    match value["message_type"].as_str().unwrap_or_default() {
        "assistant_message" => StreamEvent::Assistant {
            id: id(),
            delta: text_of(value.get("content")),
        },
        "reasoning_message" => StreamEvent::Reasoning {
            id: id(),
            delta: string("reasoning"),
        },
        "tool_call_message" => {
            let call = &value["tool_call"];
            StreamEvent::ToolCall {
                id: id(),
                name: call["name"].as_str().map(str::to_owned),
                arguments: call["arguments"].as_str().unwrap_or_default().to_owned(),
            }
        }
        "approval_request_message" => {
            let call = &value["tool_call"];
            // Whole messages list every call in `tool_calls`; token chunks carry one delta there.
            let calls = match &value["tool_calls"] {
                Value::Array(calls) => calls.iter().collect(),
                Value::Object(_) => vec![&value["tool_calls"]],
                _ => vec![],
            };
            let mut tool_call_ids: Vec<String> = std::iter::once(call)
                .chain(calls)
                .filter_map(|c| c["tool_call_id"].as_str().map(str::to_owned))
                .collect();
            tool_call_ids.dedup();
            StreamEvent::ApprovalRequest {
                id: id(),
                tool_call_ids,
                name: call["name"].as_str().map(str::to_owned),
                arguments: call["arguments"].as_str().unwrap_or_default().to_owned(),
            }
        }
        "tool_return_message" => StreamEvent::ToolReturn {
            id: id(),
            text: string("tool_return"),
            ok: value["status"].as_str() != Some("error"),
        },
        "stop_reason" => StreamEvent::Stop(StopReason::parse(value["stop_reason"].as_str().unwrap_or_default())),
        "error_message" => StreamEvent::Error(error_text(value).unwrap_or_else(|| "unknown error".into())),
        _ => StreamEvent::Other,
    }
}

/// A client for streams: no deadline for the whole response (a turn may take minutes), but one
/// for silence, since Letta sends keep-alive pings about every 20 s.
pub(super) fn streaming_http_client(idle: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(idle)
        .user_agent(concat!("letta-matrix/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode_all(text: &'static str, chunk: usize) -> Vec<Result<StreamEvent, String>> {
        let pieces: Vec<Result<bytes::Bytes, LettaError>> = text
            .as_bytes()
            .chunks(chunk)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        sse_events(futures::stream::iter(pieces))
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn captured_token_stream_decodes_whatever_the_chunking() {
        let captured = include_str!("../../letta-standin/fixtures/stream_tokens.sse");
        for chunk in [1, 7, 64, 100_000] {
            let events = decode_all(captured, chunk).await;
            let text: String = events
                .iter()
                .filter_map(|e| match e {
                    Ok(StreamEvent::Assistant { delta, .. }) => Some(delta.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(text, "You said: Stream me a reply please", "chunk {chunk}");
            assert_eq!(events.first(), Some(&Ok(StreamEvent::Other)), "a ping comes first");
            assert!(events.contains(&Ok(StreamEvent::Stop(StopReason::EndTurn))));
            assert_eq!(events.last(), Some(&Ok(StreamEvent::Done)));
        }
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error_not_an_end() {
        let events = decode_all(
            "data: {\"message_type\":\"assistant_message\",\"id\":\"m\",\"content\":\"Hi\"}\n\n",
            5,
        )
        .await;
        assert_eq!(
            events[0],
            Ok(StreamEvent::Assistant {
                id: "m".into(),
                delta: "Hi".into()
            })
        );
        assert!(events[1].as_ref().unwrap_err().contains("before [DONE]"));
    }

    #[tokio::test]
    async fn errors_inside_the_stream_are_events() {
        let events = decode_all(
            "event: error\r\ndata: {\"error\":{\"message\":\"LLM down\"}}\r\n\r\n",
            3,
        )
        .await;
        assert_eq!(events[0], Ok(StreamEvent::Error("LLM down".into())));
    }

    #[test]
    fn a_turn_is_found_by_otid_with_the_answers_of_its_run() {
        let captured = include_str!("../../letta-standin/fixtures/messages_list.json");
        let messages: Vec<LettaMessage> = serde_json::from_str(captured).unwrap();
        let (asked, answers) = find_turn(&messages, "otid-evt-1").unwrap();
        assert_eq!(asked.text(), "Hello from Matrix");
        assert_eq!(asked.name.as_deref(), Some("alice"));
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].text(), "You said: Hello from Matrix");
        assert!(find_turn(&messages, "never-sent").is_none());
    }

    #[test]
    fn reasoning_is_read_from_its_own_field() {
        let message: LettaMessage = serde_json::from_value(serde_json::json!({
            "id": "message-1", "message_type": "reasoning_message", "source": "reasoner_model",
            "reasoning": "The person greets me.", "signature": null
        }))
        .unwrap();
        assert_eq!(message.text(), "The person greets me.");
    }
}
