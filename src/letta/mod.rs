//! The Letta REST client: agents (paged), health; retries with jittered backoff on 5xx and
//! connection failures, clear errors on 401 and 404. Unknown response fields are ignored: Letta
//! adds fields between versions.

mod conversations;
mod messages;
mod tools;

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::Secret;
use crate::outbound::RetryPolicy;

pub use conversations::Conversation;
pub use messages::{ApprovalDecision, EventStream, LettaMessage, MessageCreate, StopReason, StreamEvent, find_turn};
pub use tools::{AgentTooling, LettaTool, McpServer, McpServerConfig};

/// Letta refuses streaming to clients older than its 1.0 SDK, and other routes change shape by
/// this header too (agents come without relationships); sending it always keeps one dialect.
const SDK_VERSION_HEADER: (&str, &str) = ("X-Stainless-Package-Version", "1.0.0");
/// The header Letta's SDK sends a project's slug in (Letta Cloud).
const PROJECT_HEADER: &str = "X-Project";
/// Letta sets no maximum; 200 keeps a page near 1.3 MB and a 1,000-agent list at five requests
/// (its default of 50 would take twenty).
pub const AGENTS_PAGE_SIZE: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum LettaError {
    #[error("cannot reach Letta at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("Letta refused the API token (HTTP {status}); check letta_token")]
    Unauthorized { status: u16 },
    #[error("Letta has no {what}")]
    NotFound { what: String },
    /// 409 or 423: Letta did nothing because something else holds the agent; the body says what.
    #[error("{kind}")]
    Busy {
        kind: BusyKind,
        retry_after: Option<Duration>,
    },
    /// 429: nothing was done; try again after the pause Letta asks for.
    #[error("Letta asks us to slow down (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Letta answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Letta sent a response we cannot read: {0}")]
    Decode(String),
}

/// What a 409 (or 423) means: Letta 0.16.8 and Cloud send several kinds, told apart by the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusyKind {
    /// Another turn of the same conversation is running (`CONVERSATION_BUSY`, with its run).
    Conversation { run_id: Option<String> },
    /// The agent waits for a person to approve or deny a tool call; nothing else is accepted
    /// until then, so waiting alone never ends it.
    PendingApproval,
    /// A database row lock inside Letta; gone in a moment (`Retry-After: 1`).
    Locked,
    /// Any other conflict.
    Other(String),
}

impl std::fmt::Display for BusyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conversation { run_id: Some(run) } => write!(f, "the agent is busy with run {run}"),
            Self::Conversation { run_id: None } => f.write_str("the agent is busy with another request"),
            Self::PendingApproval => f.write_str("the agent is waiting for a tool call to be approved"),
            Self::Locked => f.write_str("Letta is busy (a database lock)"),
            Self::Other(body) => write!(f, "Letta reports a conflict: {body}"),
        }
    }
}

impl BusyKind {
    /// Reads a 409/423 body: `{"detail": …}` as a string or an object with a `code`/`error`.
    fn from_body(body: &str) -> Self {
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        let detail = &value["detail"];
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let code = text(&detail["code"])
            .or_else(|| text(&detail["error"]))
            .or_else(|| text(&value["code"]))
            .or_else(|| text(&value["error"]))
            .unwrap_or_default()
            .to_ascii_uppercase();
        let message = text(detail)
            .or_else(|| text(&detail["message"]))
            .or_else(|| text(&value["message"]))
            .unwrap_or_else(|| body.to_owned());
        let lower = message.to_ascii_lowercase();
        let run_id = text(&detail["run_id"])
            .or_else(|| text(&value["run_id"]))
            .or_else(|| text(&detail["details"]["run_id"]))
            .or_else(|| {
                lower.find("run-").map(|at| {
                    message[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect()
                })
            });
        if code.contains("PENDING_APPROVAL") || lower.contains("approval") {
            Self::PendingApproval
        } else if code.contains("BUSY") || lower.contains("busy") || lower.contains("currently being processed") {
            Self::Conversation { run_id }
        } else if lower.contains("lock") {
            Self::Locked
        } else {
            Self::Other(message.chars().take(300).collect())
        }
    }
}

/// The pause a server asks for: `retry-after-ms` (what Letta's SDK reads first), else
/// `Retry-After` in seconds. Capped, so a hostile or broken header cannot park a turn for hours.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(60);
    let read = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let delay = read("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| read("retry-after"))?;
    (delay.is_finite() && delay >= 0.0).then(|| Duration::from_secs_f64(delay).min(CAP))
}

impl LettaError {
    fn from_response(status: u16, headers: &reqwest::header::HeaderMap, body: &str, what: &str) -> Self {
        match status {
            401 | 403 => Self::Unauthorized { status },
            404 => Self::NotFound { what: what.to_owned() },
            409 | 423 => Self::Busy {
                kind: BusyKind::from_body(body),
                retry_after: retry_after(headers),
            },
            429 => Self::RateLimited {
                retry_after: retry_after(headers),
            },
            _ => Self::Status {
                status,
                body: body.chars().take(300).collect(),
            },
        }
    }

    /// Worth asking again after a pause. A pending approval is not: only a decision ends it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::RateLimited { .. } => true,
            Self::Busy { kind, .. } => *kind != BusyKind::PendingApproval,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Letta certainly did nothing with the request (it refused it before starting).
    pub fn nothing_done(&self) -> bool {
        match self {
            Self::Busy { .. } | Self::RateLimited { .. } | Self::Unauthorized { .. } | Self::NotFound { .. } => true,
            Self::Status { status, .. } => *status < 500,
            Self::Unreachable { .. } | Self::Decode(_) => false,
        }
    }

    /// An `event: error` inside a stream that really is a refusal: Letta 0.16.8 answers a
    /// message sent while a tool call waits for approval with HTTP 200 and this in the stream.
    pub fn from_stream_error(text: &str) -> Option<Self> {
        text.contains("waiting for approval").then_some(Self::Busy {
            kind: BusyKind::PendingApproval,
            retry_after: None,
        })
    }

    /// The pause Letta asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Busy { retry_after, .. } | Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    pub version: String,
    pub status: String,
}

/// The part of Letta's `AgentState` the bridge mirrors into Matrix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub agent_type: Option<String>,
    /// Letta's own labels; `agent_tags` and `tools_agent_tags` select agents by them.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Agent {
    /// A sleeptime companion works on another agent's memory in the background; nobody talks to
    /// it, so it gets no ghost and no room.
    pub fn is_sleeptime_companion(&self) -> bool {
        matches!(
            self.agent_type.as_deref(),
            Some("sleeptime_agent" | "voice_sleeptime_agent")
        )
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

#[derive(Debug, Clone)]
pub struct LettaClient {
    http: reqwest::Client,
    /// For turns: no overall deadline, only one for silence.
    streaming: reqwest::Client,
    base: Url,
    token: Option<Secret>,
    retry: RetryPolicy,
    agents_page: usize,
    /// Letta Cloud's project, sent with every request.
    project: Option<String>,
    /// Only agents with one of these tags are listed (Letta filters).
    tags: Vec<String>,
}

impl LettaClient {
    pub fn new(base: Url, token: Option<Secret>) -> Self {
        let http = crate::outbound::http_client(Duration::from_secs(30));
        Self {
            http,
            streaming: messages::streaming_http_client(Duration::from_secs(90)),
            base,
            token,
            retry: RetryPolicy::default(),
            agents_page: AGENTS_PAGE_SIZE,
            project: None,
            tags: Vec::new(),
        }
    }

    /// The client the configuration describes.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        let mut client = Self::new(settings.letta_url.clone(), settings.letta_token.clone());
        client.project = settings.raw.letta_project.clone().filter(|p| !p.trim().is_empty());
        client.tags = settings.raw.agent_tags.clone();
        client
    }

    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// Headers every request carries: the SDK dialect, the token and the project.
    fn authorize(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request = request.header(SDK_VERSION_HEADER.0, SDK_VERSION_HEADER.1);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(project) = &self.project {
            request = request.header(PROJECT_HEADER, project);
        }
        request
    }

    /// Asks for agents `size` at a time (tests page small lists this way).
    pub fn with_agents_page_size(mut self, size: usize) -> Self {
        self.agents_page = size.max(1);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.base.as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    pub async fn health(&self) -> Result<Health, LettaError> {
        self.get("/v1/health/", "health endpoint").await
    }

    /// Health answers without a token; listing agents does not, so this proves the token works.
    pub async fn verify_token(&self) -> Result<(), LettaError> {
        self.get::<serde_json::Value>("/v1/agents/?limit=1", "agent list")
            .await
            .map(drop)
    }

    /// Every agent, oldest first, following Letta's `after` cursor page by page until a page
    /// comes back empty: a server may cap the page size below what we ask, so a short page does
    /// not prove the end. A failed page fails the whole call. Callers must still not take an
    /// agent missing from the list as deleted without asking for it ([`Self::agent`]): a list
    /// can change while it is paged.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, LettaError> {
        let mut agents: Vec<Agent> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut path = format!(
                "/v1/agents/?limit={}&order=asc&order_by=created_at&include=agent.tags",
                self.agents_page
            );
            for tag in &self.tags {
                path.push_str("&tags=");
                path.extend(url::form_urlencoded::byte_serialize(tag.as_bytes()));
            }
            if let Some(last) = agents.last() {
                path.push_str("&after=");
                path.extend(url::form_urlencoded::byte_serialize(last.id.as_bytes()));
            }
            let page: Vec<Agent> = self.get(&path, "agent list").await?;
            let before = agents.len();
            agents.extend(page.into_iter().filter(|agent| seen.insert(agent.id.clone())));
            // An empty page ends it; so does one with nothing new (a server ignoring the cursor).
            if agents.len() == before {
                return Ok(agents);
            }
        }
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Agent, LettaError> {
        let path = format!("/v1/agents/{}?include=agent.tags", encode(agent_id));
        self.get(&path, &format!("agent {agent_id}")).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, LettaError> {
        self.call(reqwest::Method::GET, path, None, what).await
    }

    /// One request, retried on what `is_retryable` allows: only for calls that are safe to
    /// repeat (reads, upserts, attaching what may be attached already).
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<T, LettaError> {
        let mut attempt = 0;
        loop {
            match self.call_once(method.clone(), path, body, what).await {
                Err(error) if error.is_retryable() && attempt + 1 < self.retry.attempts => {
                    attempt += 1;
                    let delay = error.retry_after().unwrap_or_else(|| self.retry.delay(attempt));
                    tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "Letta call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<T, LettaError> {
        let mut request = self.authorize(self.http.request(method, self.url(path)));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        match status {
            200..=299 => serde_json::from_str(&body).map_err(|e| LettaError::Decode(format!("{what}: {e}"))),
            _ => Err(LettaError::from_response(status, &headers, &body, what)),
        }
    }

    fn unreachable(&self, error: reqwest::Error) -> LettaError {
        LettaError::Unreachable {
            url: self.base.to_string(),
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_agent_list_parses_and_ignores_unknown_fields() {
        let captured = include_str!("../../letta-standin/fixtures/agents_list.json");
        let agents: Vec<Agent> = serde_json::from_str(captured).unwrap();
        assert_eq!(agents.len(), 1);
        assert!(agents[0].id.starts_with("agent-"));
        assert!(!agents[0].name.is_empty());
    }

    /// The 409 bodies Letta 0.16.8 sends (its source: routers/v1/agents.py, app.py handlers).
    #[test]
    fn conflicts_are_told_apart_by_their_bodies() {
        let kind = |body: &str| BusyKind::from_body(body);
        assert_eq!(
            kind(
                r#"{"detail":{"code":"PENDING_APPROVAL","message":"CONFLICT: Cannot send a new message: The agent is waiting for approval on a tool call.","pending_request_id":"message-1"}}"#
            ),
            BusyKind::PendingApproval
        );
        assert_eq!(
            kind(
                r#"{"detail":"CONFLICT: Cannot send a new message: Another request (run_id=run-42ab) is currently being processed for this conversation. Please wait for it to complete.","run_id":"run-42ab"}"#
            ),
            BusyKind::Conversation {
                run_id: Some("run-42ab".into())
            }
        );
        assert_eq!(
            kind(r#"{"detail":"The resource is currently locked by another operation. Please retry shortly."}"#),
            BusyKind::Locked
        );
        assert!(matches!(kind("not json at all"), BusyKind::Other(_)));
    }

    #[test]
    fn a_pause_asked_for_is_honoured_within_a_cap() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().unwrap());
            }
            map
        };
        let error = |pairs: &[(&'static str, &'static str)], status| {
            LettaError::from_response(status, &headers(pairs), "{}", "agent")
        };
        assert_eq!(
            error(&[("retry-after", "1")], 409).retry_after(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            error(&[("retry-after-ms", "250"), ("retry-after", "9")], 429).retry_after(),
            Some(Duration::from_millis(250)),
            "the SDK reads retry-after-ms first"
        );
        assert_eq!(
            error(&[("retry-after", "86400")], 429).retry_after(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(error(&[("retry-after", "soon")], 429).retry_after(), None);
        let limited = error(&[], 429);
        assert!(
            limited.nothing_done() && limited.is_retryable(),
            "a 429 means not done; ask again"
        );
        let approval = LettaError::from_stream_error(
            "CONFLICT: Cannot send a new message: The agent is waiting for approval on a tool call.",
        )
        .unwrap();
        assert!(!approval.is_retryable(), "waiting alone never ends a pending approval");
        assert!(LettaError::from_stream_error("An unknown error occurred").is_none());
    }

    #[test]
    fn server_errors_retry_and_client_errors_do_not() {
        let status = |status| LettaError::Status {
            status,
            body: String::new(),
        };
        assert!(status(500).is_retryable());
        assert!(!status(422).is_retryable());
        assert!(LettaError::RateLimited { retry_after: None }.is_retryable());
        assert!(!LettaError::Unauthorized { status: 401 }.is_retryable());
        assert!(!LettaError::NotFound { what: "x".into() }.is_retryable());
    }
}
