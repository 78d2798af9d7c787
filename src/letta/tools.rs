//! Tools in Letta: our sandbox tools (upserted by name), our MCP server and its tools, and an
//! agent's attached tools and secrets. Used by `crate::tools::provision`.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{LettaClient, LettaError, encode};

/// A tool as Letta lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LettaTool {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An MCP server registered in Letta.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct McpServer {
    pub id: String,
    pub server_name: String,
    #[serde(default)]
    pub server_url: Option<String>,
}

/// A Streamable HTTP MCP server whose bearer token Letta fills in per agent from the agent's
/// secret `token_secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    pub url: String,
    pub token_secret: String,
}

impl McpServerConfig {
    /// The token as Letta templates it. The default (after `|`) stands in when Letta lists tools
    /// with no agent, so that it has nothing to warn about; a call with it is refused.
    pub fn auth_token(&self) -> String {
        format!("Bearer {{{{ {} | no-agent }}}}", self.token_secret)
    }

    /// Whether a registered server is reached at this config's URL. (Its token is not compared:
    /// Letta 0.16.8 keeps a Streamable HTTP server's token through an update.)
    pub fn matches(&self, server: &McpServer) -> bool {
        server.server_url.as_deref() == Some(self.url.as_str())
    }

    fn to_json(&self) -> Value {
        json!({
            "mcp_server_type": "streamable_http",
            "server_url": self.url,
            "auth_header": "Authorization",
            "auth_token": self.auth_token(),
        })
    }
}

/// What provisioning needs to know of an agent: its tools and its secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTooling {
    pub tool_ids: Vec<String>,
    pub secrets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AgentWithTooling {
    #[serde(default)]
    tools: Vec<LettaTool>,
    #[serde(default)]
    secrets: Vec<SecretEntry>,
}

#[derive(Deserialize)]
struct SecretEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

impl LettaClient {
    /// Creates the tool or replaces the one of the same name (`PUT /v1/tools/`).
    pub async fn upsert_tool(
        &self,
        source_code: &str,
        json_schema: &Value,
        description: &str,
        tags: &[&str],
    ) -> Result<LettaTool, LettaError> {
        let body = json!({
            "source_code": source_code,
            "source_type": "python",
            "json_schema": json_schema,
            "description": description,
            "tags": tags,
        });
        let name = json_schema["name"].as_str().unwrap_or("?");
        self.call(Method::PUT, "/v1/tools/", Some(&body), &format!("tool {name}"))
            .await
    }

    pub async fn agent_tooling(&self, agent_id: &str) -> Result<AgentTooling, LettaError> {
        let path = format!(
            "/v1/agents/{}?include=agent.tools&include=agent.secrets",
            encode(agent_id)
        );
        let agent: AgentWithTooling = self.get(&path, &format!("agent {agent_id}")).await?;
        Ok(AgentTooling {
            tool_ids: agent.tools.into_iter().map(|tool| tool.id).collect(),
            secrets: agent
                .secrets
                .into_iter()
                .map(|secret| (secret.key, secret.value.unwrap_or_default()))
                .collect(),
        })
    }

    pub async fn attach_tool(&self, agent_id: &str, tool_id: &str) -> Result<(), LettaError> {
        let path = format!("/v1/agents/{}/tools/attach/{}", encode(agent_id), encode(tool_id));
        self.call::<Value>(Method::PATCH, &path, None, &format!("agent {agent_id}"))
            .await
            .map(drop)
    }

    /// Replaces the agent's secrets with `secrets`: Letta keeps no secret left out, so pass the
    /// ones the agent has as well.
    pub async fn set_agent_secrets(
        &self,
        agent_id: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(), LettaError> {
        let path = format!("/v1/agents/{}", encode(agent_id));
        let body = json!({ "secrets": secrets });
        self.call::<Value>(Method::PATCH, &path, Some(&body), &format!("agent {agent_id}"))
            .await
            .map(drop)
    }

    pub async fn mcp_servers(&self) -> Result<Vec<McpServer>, LettaError> {
        self.get("/v1/mcp-servers/", "MCP server list").await
    }

    /// Registers a Streamable HTTP MCP server. Letta lists and stores its tools as it registers it.
    pub async fn create_mcp_server(&self, name: &str, config: &McpServerConfig) -> Result<McpServer, LettaError> {
        let body = json!({ "server_name": name, "config": config.to_json() });
        self.call_once(Method::POST, "/v1/mcp-servers/", Some(&body), "MCP server")
            .await
    }

    pub async fn update_mcp_server(&self, server_id: &str, config: &McpServerConfig) -> Result<McpServer, LettaError> {
        let path = format!("/v1/mcp-servers/{}", encode(server_id));
        let body = json!({ "config": config.to_json() });
        self.call(Method::PATCH, &path, Some(&body), "MCP server").await
    }

    pub async fn mcp_server_tools(&self, server_id: &str) -> Result<Vec<LettaTool>, LettaError> {
        let path = format!("/v1/mcp-servers/{}/tools", encode(server_id));
        self.get(&path, "MCP server tools").await
    }

    /// Has Letta list the server's tools again and store them.
    pub async fn refresh_mcp_server(&self, server_id: &str) -> Result<(), LettaError> {
        let path = format!("/v1/mcp-servers/{}/refresh", encode(server_id));
        self.call::<Value>(Method::PATCH, &path, None, "MCP server refresh")
            .await
            .map(drop)
    }
}
