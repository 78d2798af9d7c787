//! Tools and the approval rule (Letta 0.16.8's human-in-the-loop): `POST /v1/tools/`,
//! `PATCH /v1/agents/{id}/tools/attach/{tool_id}` and `…/tools/approval/{tool_name}`. The tools
//! never run: a tool the stand-in calls returns "ok".

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
}

impl Tools {
    pub(crate) fn requires_approval(&self, agent_id: &str, tool_name: &str) -> bool {
        self.approval
            .get(agent_id)
            .is_some_and(|names| names.contains(tool_name))
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
        tools.push(tool);
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
