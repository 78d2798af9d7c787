//! Tools and the approval rule (Letta 0.16.8's human-in-the-loop): `POST /v1/tools/`, `PUT
//! /v1/tools/` (upsert by name), `PATCH /v1/agents/{id}/tools/attach/{tool_id}` and
//! `…/tools/approval/{tool_name}`; an agent's secrets (replaced whole by a PATCH); the agent
//! relationships Letta returns only when asked (`include=agent.tools` …); and MCP server
//! registration, refused for non-public addresses as Letta does (the stand-in lists no MCP
//! tools: it has no MCP client). The tools never run: a tool the stand-in calls returns "ok".

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, World, detail, uuid_like};

#[derive(Default)]
pub(crate) struct Tools {
    by_id: BTreeMap<String, Value>,
    /// The tool names each agent must ask approval for (Letta's `requires_approval` rules).
    approval: BTreeMap<String, BTreeSet<String>>,
    mcp_servers: Vec<Value>,
}

impl Tools {
    pub(crate) fn requires_approval(&self, agent_id: &str, tool_name: &str) -> bool {
        self.approval
            .get(agent_id)
            .is_some_and(|names| names.contains(tool_name))
    }

    /// `PUT /v1/tools/`: the tool of that name keeps its id and takes the new code and schema.
    fn upsert(&mut self, name: &str, body: &Value) -> Value {
        let existing = self.by_id.values().find(|t| t["name"] == name).map(|t| t["id"].clone());
        let mut tool = match existing {
            Some(id) => self.by_id[id.as_str().unwrap_or_default()].clone(),
            None => self.create(name, "", false),
        };
        for field in ["source_code", "json_schema", "tags", "description"] {
            if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
                tool[field] = value.clone();
            }
        }
        self.by_id
            .insert(tool["id"].as_str().unwrap_or_default().to_owned(), tool.clone());
        tool
    }

    pub(crate) fn create(&mut self, name: &str, source_code: &str, default_requires_approval: bool) -> Value {
        let tool = json!({
            "id": format!("tool-{}", uuid_like(self.by_id.len() as u64)),
            "tool_type": "custom",
            "name": name,
            "description": null,
            "source_type": "python",
            "source_code": source_code,
            "json_schema": {"name": name, "parameters": {"type": "object", "properties": {}, "required": []}},
            "tags": [],
            "return_char_limit": 50000,
            "default_requires_approval": default_requires_approval,
            "metadata_": {},
        });
        self.by_id
            .insert(tool["id"].as_str().unwrap_or_default().to_owned(), tool.clone());
        tool
    }

    fn set_rule(&mut self, agent_id: &str, tool_name: &str, required: bool) {
        let names = self.approval.entry(agent_id.to_owned()).or_default();
        if required {
            names.insert(tool_name.to_owned());
        } else {
            names.remove(tool_name);
        }
    }
}

/// Attaches a tool; a tool created with `default_requires_approval` brings its rule along.
pub(crate) fn attach(world: &mut World, agent_id: &str, tool_id: &str) -> Result<(), (StatusCode, String)> {
    if !world.agents.contains_key(agent_id) {
        return Err((StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found")));
    }
    let Some(tool) = world.tools.by_id.get(tool_id).cloned() else {
        return Err((StatusCode::NOT_FOUND, format!("Tool with id={tool_id} not found")));
    };
    let name = tool["name"].as_str().unwrap_or_default().to_owned();
    if tool["default_requires_approval"] == true {
        world.tools.set_rule(agent_id, &name, true);
    }
    if let Some(tools) = world.agents.get_mut(agent_id).and_then(|a| a["tools"].as_array_mut()) {
        // Attaching an attached tool changes nothing.
        if !tools.iter().any(|t| t["id"] == tool["id"]) {
            tools.push(tool);
        }
    }
    sync_rules(world, agent_id);
    Ok(())
}

/// Mirrors the approval rules into the agent's `tool_rules`, where Letta keeps them.
fn sync_rules(world: &mut World, agent_id: &str) {
    let rules: Vec<Value> = world
        .tools
        .approval
        .get(agent_id)
        .into_iter()
        .flatten()
        .map(|name| json!({"tool_name": name, "type": "requires_approval", "prompt_template": null}))
        .collect();
    if let Some(agent) = world.agents.get_mut(agent_id) {
        agent["tool_rules"] = json!(rules);
    }
}

/// Letta answers these PATCHes with `null` to 1.0 clients and with the agent to older ones.
fn agent_or_null(world: &World, agent_id: &str, headers: &HeaderMap) -> Response {
    if super::messages::is_sdk_v1(headers) {
        Json(Value::Null).into_response()
    } else {
        Json(world.agents[agent_id].clone()).into_response()
    }
}

pub(crate) async fn create_tool(State(world): State<Shared>, Json(body): Json<Value>) -> Response {
    let Some(source_code) = body["source_code"].as_str() else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "source_code is required");
    };
    // Letta takes the name from the function when none is given.
    let from_source = source_code
        .split("def ")
        .nth(1)
        .and_then(|rest| rest.split('(').next())
        .unwrap_or_default();
    let name = body["name"].as_str().unwrap_or(from_source);
    let requires = body["default_requires_approval"].as_bool().unwrap_or(false);
    Json(world.lock().unwrap().tools.create(name, source_code, requires)).into_response()
}

pub(crate) async fn attach_tool(
    State(world): State<Shared>,
    Path((agent_id, tool_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut world = world.lock().unwrap();
    match attach(&mut world, &agent_id, &tool_id) {
        Ok(()) => agent_or_null(&world, &agent_id, &headers),
        Err((status, text)) => detail(status, text),
    }
}

pub(crate) async fn set_approval(
    State(world): State<Shared>,
    Path((agent_id, tool_name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let Some(required) = body["requires_approval"].as_bool() else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "requires_approval is required");
    };
    let mut world = world.lock().unwrap();
    if !world.agents.contains_key(&agent_id) {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    }
    world.tools.set_rule(&agent_id, &tool_name, required);
    sync_rules(&mut world, &agent_id);
    agent_or_null(&world, &agent_id, &headers)
}

/// Letta's 1.0 dialect leaves an agent's relationships empty unless `include` names them; older
/// clients get them all.
pub(crate) fn with_relationships(mut agent: Value, query: &str, headers: &HeaderMap) -> Value {
    let sdk_v1 = super::messages::is_sdk_v1(headers);
    for (field, include) in [
        ("tools", "agent.tools"),
        ("secrets", "agent.secrets"),
        ("tags", "agent.tags"),
    ] {
        let asked = query.split('&').any(|pair| pair == format!("include={include}"));
        if (sdk_v1 && !asked) || agent[field].is_null() {
            agent[field] = json!([]);
        }
    }
    agent
}

/// A PATCH with `secrets` replaces them all, as Letta does: keys left out are gone.
pub(crate) fn replace_secrets(world: &mut World, agent_id: &str, secrets: &serde_json::Map<String, Value>) {
    let listed: Vec<Value> = secrets
        .iter()
        .map(|(key, value)| {
            json!({"id": format!("agent-env-{}", uuid_like(0)), "key": key, "value": value, "agent_id": agent_id, "description": null})
        })
        .collect();
    if let Some(agent) = world.agents.get_mut(agent_id) {
        agent["secrets"] = Value::Array(listed);
    }
}

pub(crate) async fn upsert_tool(State(world): State<Shared>, Json(body): Json<Value>) -> Response {
    if !body["source_code"].is_string() {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "source_code is required");
    }
    let Some(name) = body["json_schema"]["name"].as_str().or(body["name"].as_str()) else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "json_schema with a name is required");
    };
    let name = name.to_owned();
    Json(world.lock().unwrap().tools.upsert(&name, &body)).into_response()
}

pub(crate) async fn list_mcp_servers(State(world): State<Shared>) -> Response {
    Json(Value::Array(world.lock().unwrap().tools.mcp_servers.clone())).into_response()
}

/// Refuses what Letta's `validate_mcp_server_url` refuses: an address that is not global.
pub(crate) async fn create_mcp_server(State(world): State<Shared>, Json(body): Json<Value>) -> Response {
    let url = body["config"]["server_url"].as_str().unwrap_or_default();
    let host = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned));
    let public = match host
        .as_deref()
        .map(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>())
    {
        Some(Ok(std::net::IpAddr::V4(ip))) => {
            !(ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_unspecified())
        }
        Some(Ok(std::net::IpAddr::V6(ip))) => !(ip.is_loopback() || ip.is_unspecified()),
        Some(Err(_)) => host.as_deref() != Some("localhost"),
        None => false,
    };
    if !public {
        let shown = host.unwrap_or_default();
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Value error, Non-public IP not allowed: {shown}"),
        );
    }
    let mut world = world.lock().unwrap();
    let server = json!({
        "id": format!("mcp_server-{}", uuid_like(0)),
        "server_name": body["server_name"],
        "mcp_server_type": body["config"]["mcp_server_type"],
        "server_url": url,
        "auth_header": body["config"]["auth_header"],
        "auth_token": body["config"]["auth_token"],
        "custom_headers": null,
    });
    world.tools.mcp_servers.push(server.clone());
    Json(server).into_response()
}
