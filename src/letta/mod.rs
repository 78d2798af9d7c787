//! The Letta REST client: agents (paged), health; retries with jittered backoff on 5xx and
//! connection failures, clear errors on 401 and 404. Unknown response fields are ignored: Letta
//! adds fields between versions.

mod messages;

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::Secret;
use crate::outbound::RetryPolicy;

pub use messages::{EventStream, LettaMessage, MessageCreate, StreamEvent, find_turn};

/// Letta refuses streaming to clients older than its 1.0 SDK, and other routes change shape by
/// this header too (agents come without relationships); sending it always keeps one dialect.
const SDK_VERSION_HEADER: (&str, &str) = ("X-Stainless-Package-Version", "1.0.0");
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
    /// Some Letta versions refuse a second request to an agent that is still working.
    #[error("the agent is busy with another request")]
    Busy,
    #[error("Letta answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Letta sent a response we cannot read: {0}")]
    Decode(String),
}

impl LettaError {
    fn from_status(status: u16, body: &str, what: &str) -> Self {
        match status {
            401 | 403 => Self::Unauthorized { status },
            404 => Self::NotFound { what: what.to_owned() },
            409 | 423 => Self::Busy,
            _ if body.to_ascii_lowercase().contains("busy") => Self::Busy,
            _ => Self::Status {
                status,
                body: body.chars().take(300).collect(),
            },
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Busy => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
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
}

#[derive(Debug, Clone)]
pub struct LettaClient {
    http: reqwest::Client,
    /// For turns: no overall deadline, only one for silence.
    streaming: reqwest::Client,
    base: Url,
    token: Option<Secret>,
    retry: RetryPolicy,
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
        }
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

    /// Every agent, oldest first, following Letta's `after` cursor page by page. Only a complete
    /// list is returned: a failed page fails the whole call, so a caller never mistakes a
    /// partial list for deletions.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, LettaError> {
        let mut agents: Vec<Agent> = Vec::new();
        loop {
            let mut path = format!("/v1/agents/?limit={AGENTS_PAGE_SIZE}&order=asc&order_by=created_at");
            if let Some(last) = agents.last() {
                path.push_str("&after=");
                path.extend(url::form_urlencoded::byte_serialize(last.id.as_bytes()));
            }
            let page: Vec<Agent> = self.get(&path, "agent list").await?;
            let complete = page.len() < AGENTS_PAGE_SIZE;
            agents.extend(page);
            if complete {
                return Ok(agents);
            }
        }
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Agent, LettaError> {
        let path = format!(
            "/v1/agents/{}",
            url::form_urlencoded::byte_serialize(agent_id.as_bytes()).collect::<String>()
        );
        self.get(&path, &format!("agent {agent_id}")).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, LettaError> {
        let mut attempt = 0;
        loop {
            match self.get_once(path, what).await {
                Err(error) if error.is_retryable() && attempt + 1 < self.retry.attempts => {
                    attempt += 1;
                    let delay = self.retry.delay(attempt);
                    tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "Letta call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    async fn get_once<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, LettaError> {
        let mut request = self
            .http
            .get(self.url(path))
            .header(SDK_VERSION_HEADER.0, SDK_VERSION_HEADER.1);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        match status {
            200..=299 => serde_json::from_str(&body).map_err(|e| LettaError::Decode(format!("{what}: {e}"))),
            _ => Err(LettaError::from_status(status, &body, what)),
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

    #[test]
    fn server_errors_retry_and_client_errors_do_not() {
        let status = |status| LettaError::Status {
            status,
            body: String::new(),
        };
        assert!(status(500).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(422).is_retryable());
        assert!(!LettaError::Unauthorized { status: 401 }.is_retryable());
        assert!(!LettaError::NotFound { what: "x".into() }.is_retryable());
    }
}
