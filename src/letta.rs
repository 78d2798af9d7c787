//! The Letta REST client. For now what `check` needs: the server's health with our token.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::Secret;

/// Letta refuses streaming to clients older than its 1.0 SDK, and other routes change shape by
/// this header too; sending it always keeps one dialect.
const SDK_VERSION_HEADER: (&str, &str) = ("X-Stainless-Package-Version", "1.0.0");

#[derive(Debug, thiserror::Error)]
pub enum LettaError {
    #[error("cannot reach Letta at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("Letta refused the API token (HTTP {status}); check letta_token")]
    Unauthorized { status: u16 },
    #[error("Letta answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Letta sent a response we cannot read: {0}")]
    Decode(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    pub version: String,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct LettaClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
}

impl LettaClient {
    pub fn new(base: Url, token: Option<Secret>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("letta-matrix/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        Self { http, base, token }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.base.as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    pub async fn health(&self) -> Result<Health, LettaError> {
        let body = self.get("/v1/health/").await?;
        serde_json::from_str(&body).map_err(|e| LettaError::Decode(e.to_string()))
    }

    /// Health answers without a token; listing agents does not, so this proves the token works.
    pub async fn verify_token(&self) -> Result<(), LettaError> {
        self.get("/v1/agents/?limit=1").await.map(drop)
    }

    async fn get(&self, path: &str) -> Result<String, LettaError> {
        let mut request = self
            .http
            .get(self.url(path))
            .header(SDK_VERSION_HEADER.0, SDK_VERSION_HEADER.1);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| LettaError::Unreachable {
            url: self.base.to_string(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(LettaError::Unauthorized { status });
        }
        let body = response.text().await.map_err(|e| LettaError::Decode(e.to_string()))?;
        if status >= 400 {
            return Err(LettaError::Status {
                status,
                body: body.chars().take(300).collect(),
            });
        }
        Ok(body)
    }
}
