//! Gives agents the tools with no operator step: sync calls [`Provisioner::provision`] for every
//! agent it bridges, new and existing.
//!
//! For one agent: make sure our tools exist in Letta (sandbox tools upserted by name, or our MCP
//! server registered once), attach those the agent lacks, and put its token among its secrets
//! (`LETTA_MATRIX_TOKEN`, kept beside the secrets it has). What was done is remembered as a
//! fingerprint of the tools, the URL and the token, so an unchanged agent costs nothing and a
//! changed URL, secret or tool set is done again. Nothing is ever detached or deleted: a tool an
//! operator detaches stays detached until the tools change.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use url::Url;

use super::{TOKEN_SECRET, ToolName, agent_token, sandbox};
use crate::config::{Secret, Settings, ToolsMode};
use crate::error::WorkError;
use crate::letta::{Agent, LettaClient, LettaError, LettaTool, McpServerConfig};
use crate::store::Store;

/// Our MCP server's name in Letta.
pub const MCP_SERVER_NAME: &str = "letta-matrix";
/// `applied_settings` rows `tools:<agent id>` hold the fingerprint of what the agent was given.
const APPLIED_PREFIX: &str = "tools:";

pub struct Provisioner {
    mode: ToolsMode,
    url: Url,
    secret: Secret,
    only_tags: Vec<String>,
    letta: LettaClient,
    store: Store,
    /// What every agent's fingerprint starts from: the mode, the URL and the tools themselves.
    base_fingerprint: String,
    /// Our tools' ids in Letta, found or made once per process.
    tool_ids: tokio::sync::Mutex<Option<Vec<String>>>,
    /// Agents whose recorded fingerprint is current; loaded from the store once.
    current: tokio::sync::Mutex<Option<HashSet<String>>>,
}

impl Provisioner {
    /// `None` when tools are off or not configured (no `tools_url` or no `mcp_secret`).
    pub fn new(settings: &Settings, letta: LettaClient, store: Store) -> Option<Self> {
        let url = settings.tools_url.clone()?;
        let secret = settings.raw.mcp_secret.clone()?;
        let mode = settings.raw.tools_mode;
        let tools = match mode {
            ToolsMode::Off => return None,
            ToolsMode::Sandbox => sandbox::fingerprint(url.as_str()),
            ToolsMode::Mcp => ToolName::ALL.map(ToolName::as_str).join(","),
        };
        Some(Self {
            mode,
            base_fingerprint: format!("{mode:?} {url} {tools}"),
            url,
            secret,
            only_tags: settings.raw.tools_agent_tags.clone(),
            letta,
            store,
            tool_ids: Default::default(),
            current: Default::default(),
        })
    }

    /// Whether `tools_agent_tags` admits the agent.
    pub fn wants(&self, agent: &Agent) -> bool {
        admits(&self.only_tags, agent)
    }

    fn fingerprint(&self, agent_id: &str) -> String {
        let mut digest = Sha256::new();
        digest.update(self.base_fingerprint.as_bytes());
        digest.update(agent_token(&self.secret, agent_id).as_bytes());
        hex::encode(&digest.finalize()[..12])
    }

    /// The agents among `agents` that are wanted and not yet given the current tools.
    pub async fn due<'a>(&self, agents: &'a [Agent]) -> Result<Vec<&'a Agent>, WorkError> {
        let mut current = self.current.lock().await;
        if current.is_none() {
            let applied = self.store.applied_settings_with_prefix(APPLIED_PREFIX).await?;
            *current = Some(
                applied
                    .into_iter()
                    .filter_map(|(name, value)| {
                        let agent_id = name.strip_prefix(APPLIED_PREFIX)?;
                        (value == self.fingerprint(agent_id)).then(|| agent_id.to_owned())
                    })
                    .collect(),
            );
        }
        let current = current.as_ref().expect("loaded above");
        Ok(agents
            .iter()
            .filter(|agent| self.wants(agent) && !current.contains(&agent.id))
            .collect())
    }

    /// Gives one agent the tools; safe to repeat and to resume after a crash at any step.
    pub async fn provision(&self, agent: &Agent) -> Result<(), WorkError> {
        let tool_ids = self.our_tools().await?;
        let tooling = self.letta.agent_tooling(&agent.id).await?;
        let mut attached = 0;
        for tool_id in tool_ids.iter().filter(|id| !tooling.tool_ids.contains(id)) {
            if let Err(error) = self.letta.attach_tool(&agent.id, tool_id).await {
                if matches!(error, LettaError::NotFound { .. }) {
                    // Our tool was deleted in Letta (or the agent was): find or make them again.
                    *self.tool_ids.lock().await = None;
                }
                return Err(error.into());
            }
            attached += 1;
        }
        let token = agent_token(&self.secret, &agent.id);
        if tooling.secrets.get(TOKEN_SECRET) != Some(&token) {
            let mut secrets = tooling.secrets;
            secrets.insert(TOKEN_SECRET.to_owned(), token);
            self.letta.set_agent_secrets(&agent.id, &secrets).await?;
        }
        let fingerprint = self.fingerprint(&agent.id);
        self.store
            .set_applied_setting(&format!("{APPLIED_PREFIX}{}", agent.id), &fingerprint)
            .await?;
        if let Some(current) = self.current.lock().await.as_mut() {
            current.insert(agent.id.clone());
        }
        tracing::info!(agent_id = agent.id, mode = ?self.mode, attached, "the agent has its Matrix tools");
        Ok(())
    }

    async fn our_tools(&self) -> Result<Vec<String>, WorkError> {
        let mut ids = self.tool_ids.lock().await;
        if let Some(ids) = ids.as_ref() {
            return Ok(ids.clone());
        }
        let tools = match self.mode {
            ToolsMode::Sandbox => self.upsert_sandbox_tools().await?,
            ToolsMode::Mcp => self.register_mcp_server().await?,
            ToolsMode::Off => Vec::new(),
        };
        let found: Vec<String> = tools.into_iter().map(|tool| tool.id).collect();
        *ids = Some(found.clone());
        Ok(found)
    }

    async fn upsert_sandbox_tools(&self) -> Result<Vec<LettaTool>, WorkError> {
        let mut made = Vec::new();
        for tool in sandbox::tools(self.url.as_str()) {
            let made_tool = self
                .letta
                .upsert_tool(
                    &tool.source_code,
                    &tool.json_schema,
                    tool.description,
                    &[sandbox::TOOL_TAG],
                )
                .await?;
            made.push(made_tool);
        }
        tracing::info!(tools = made.len(), url = %self.url, "our sandbox tools are in Letta");
        Ok(made)
    }

    /// Our MCP server's tools as Letta stored them, registering the server first if need be.
    async fn register_mcp_server(&self) -> Result<Vec<LettaTool>, WorkError> {
        let url = format!("{}{}", self.url.as_str().trim_end_matches('/'), crate::mcp::MCP_PATH);
        let config = McpServerConfig {
            url: url.clone(),
            token_secret: TOKEN_SECRET.to_owned(),
        };
        let refused = |error: LettaError| match error {
            LettaError::Status {
                status: 400 | 422,
                body,
            } => WorkError::Invalid(format!(
                "Letta refused our MCP server at {url}: {body} (Letta 0.16.8 refuses loopback and private addresses: use tools_mode = \"sandbox\")"
            )),
            other => other.into(),
        };
        let servers = self.letta.mcp_servers().await?;
        let server = match servers.into_iter().find(|s| s.server_name == MCP_SERVER_NAME) {
            Some(server) if config.matches(&server) => server,
            // Ours by its name: brought up to date (a new tools_url, say).
            Some(server) => {
                let updated = self
                    .letta
                    .update_mcp_server(&server.id, &config)
                    .await
                    .map_err(refused)?;
                self.letta.refresh_mcp_server(&updated.id).await?;
                updated
            }
            None => self
                .letta
                .create_mcp_server(MCP_SERVER_NAME, &config)
                .await
                .map_err(refused)?,
        };
        let mut tools = self.letta.mcp_server_tools(&server.id).await?;
        if tools.is_empty() {
            // Registered while our listing needed a token (older versions): list again.
            self.letta.refresh_mcp_server(&server.id).await?;
            tools = self.letta.mcp_server_tools(&server.id).await?;
        }
        let ours: HashSet<&str> = ToolName::ALL.iter().map(|t| t.as_str()).collect();
        tools.retain(|tool| ours.contains(tool.name.as_str()));
        if tools.is_empty() {
            return Err(WorkError::Invalid(format!(
                "Letta lists no tools of our MCP server at {url}; can Letta reach that URL?"
            )));
        }
        Ok(tools)
    }
}

fn admits(only_tags: &[String], agent: &Agent) -> bool {
    only_tags.is_empty() || agent.tags.iter().any(|tag| only_tags.contains(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_agent_tags_limit_who_gets_the_tools() {
        let agent = |tags: &[&str]| Agent {
            id: "agent-1".into(),
            name: "A".into(),
            description: None,
            created_at: None,
            updated_at: None,
            agent_type: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        assert!(admits(&[], &agent(&[])), "no limit: every agent");
        let only = ["matrix-tools".to_owned()];
        assert!(admits(&only, &agent(&["x", "matrix-tools"])));
        assert!(!admits(&only, &agent(&["x"])));
        assert!(!admits(&only, &agent(&[])));
    }
}
