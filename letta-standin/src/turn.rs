//! What one request to an agent does, as Letta 0.16.8's `letta_v1_agent` loop does it: store the
//! input, answer (maybe after a tool call, maybe stopping for an approval), or fail. The result is
//! a [`Turn`] that `messages` renders as a stream or as one JSON response.
//!
//! Storage follows Letta's rows: one stored message (a row) can show as several items sharing an
//! `id` (reasoning and answer of one step), told apart by `otid`s derived from the id.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::messages::{Pending, Row};
use super::{World, uuid_like};

/// Letta's wording when a normal message arrives while a tool call waits for approval.
pub(crate) const PENDING_APPROVAL: &str = "CONFLICT: Cannot send a new message: The agent is waiting for approval on a tool call. Please approve or deny the pending request before continuing.";
const NOTHING_PENDING: &str = "Cannot process approval response: No tool call is currently awaiting approval. Please send a regular message to interact with the agent.";

/// How a part's text is cut when tokens are streamed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Delta {
    /// The named string field carries the text.
    Text(&'static str),
    /// `tool_call.arguments` carries the text; the first chunk names the tool.
    ToolCall,
    /// Sent whole.
    Whole,
}

pub(crate) struct Part {
    pub item: Value,
    pub delta: Delta,
}

pub(crate) enum End {
    Stop(String),
    /// An error: in a stream the stop reason and an `event: error`, otherwise `http`.
    Error {
        stop_reason: String,
        error: Value,
        http: (StatusCode, Value),
    },
}

pub(crate) struct Turn {
    pub run_id: String,
    pub parts: Vec<Part>,
    pub end: End,
    pub steps: u32,
}

/// Letta's `Message.generate_otid_from_id`: the id's uuid with its last 7 bits set to `index`.
pub(crate) fn otid_from_id(id: &str, index: u8) -> String {
    let hex: String = id.trim_start_matches("message-").replace('-', "");
    let value = u128::from_str_radix(&hex, 16).unwrap_or_default();
    let hex = format!("{:032x}", (value & !0x7f) | u128::from(index & 0x7f));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Builds one stored row; its items share the id and date.
pub(crate) struct RowBuilder {
    id: String,
    date: String,
    ids: Value,
    items: Vec<Value>,
}

impl RowBuilder {
    /// `ids` holds the `run_id` and `step_id` the row belongs to (nulls outside a run).
    pub(crate) fn new(world: &mut World, ids: &Value) -> Self {
        Self {
            id: format!("message-{}", uuid_like(world.clock)),
            date: world.tick(),
            ids: ids.clone(),
            items: Vec::new(),
        }
    }

    pub(crate) fn dated(mut self, date: &str) -> Self {
        self.date = date.to_owned();
        self
    }

    /// Adds an item of `message_type` with its own `fields`; its otid is derived from the id.
    pub(crate) fn push(&mut self, message_type: &str, fields: Value) -> &mut Value {
        let mut item = json!({
            "id": self.id,
            "date": self.date,
            "name": null,
            "message_type": message_type,
            "otid": otid_from_id(&self.id, self.items.len() as u8),
            "sender_id": null,
            "step_id": self.ids["step_id"],
            "is_err": null,
            "seq_id": null,
            "run_id": self.ids["run_id"],
        });
        if let (Some(item), Value::Object(fields)) = (item.as_object_mut(), fields) {
            item.extend(fields);
        }
        self.items.push(item);
        self.items.last_mut().expect("just pushed")
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Stores the row in the conversation being served and returns its items.
    pub(crate) fn store(self, world: &mut World, agent_id: &str) -> Vec<Value> {
        let row = Row {
            items: self.items.clone(),
            conversation_id: world.serving.clone(),
        };
        world.chats.chat(agent_id).rows.push(row);
        self.items
    }
}

pub(crate) fn reasoning_fields(text: &str) -> Value {
    json!({"source": "reasoner_model", "reasoning": text, "signature": null})
}

fn tool_call(name: &str, arguments: &str, tool_call_id: &str) -> Value {
    json!({"name": name, "arguments": arguments, "tool_call_id": tool_call_id})
}

fn tool_return(tool_call_id: &str, status: &str, text: &str) -> Value {
    let single =
        json!({"tool_return": text, "status": status, "tool_call_id": tool_call_id, "stdout": null, "stderr": null});
    let mut fields = single.clone();
    fields["tool_returns"] = json!([single]);
    fields
}

fn run_ids(world: &World) -> Value {
    json!({
        "run_id": format!("run-{}", uuid_like(world.clock)),
        "step_id": format!("step-{}", uuid_like(world.clock + 1)),
    })
}

fn error_turn(run_id: String, stop_reason: &str, error_type: &str, message: &str, http: (StatusCode, Value)) -> Turn {
    let error = json!({"message_type": "error_message", "run_id": run_id, "error_type": error_type, "message": message, "detail": message, "seq_id": null});
    Turn {
        run_id,
        parts: Vec::new(),
        end: End::Error {
            stop_reason: stop_reason.to_owned(),
            error,
            http,
        },
        steps: 0,
    }
}

/// A scripted LLM failure, as `error_aware_stream` reports it: nothing of the turn is stored.
fn llm_failure(run_id: String, error_type: &str, message: &str) -> Turn {
    let stop_reason = match error_type {
        "llm_timeout" | "llm_rate_limit" | "llm_authentication" | "llm_error" => "llm_api_error",
        "llm_empty_response" => "invalid_llm_response",
        "context_window_overflow_in_system_prompt" => error_type,
        _ => "error",
    };
    let status = match error_type {
        "llm_rate_limit" => StatusCode::TOO_MANY_REQUESTS,
        "llm_authentication" => StatusCode::UNAUTHORIZED,
        "llm_timeout" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = json!({"error": {"type": error_type, "message": message, "detail": message}});
    error_turn(run_id, stop_reason, error_type, message, (status, body))
}

/// A request the agent loop refuses before it starts (a plain `ValueError` in Letta): 400, or
/// in a stream an `internal_error` with Letta's generic message.
fn refused(run_id: String, detail: &str) -> Turn {
    let mut turn = error_turn(
        run_id,
        "error",
        "internal_error",
        "An unknown error occurred with the LLM streaming request.",
        (StatusCode::BAD_REQUEST, json!({"detail": detail})),
    );
    if let End::Error { error, .. } = &mut turn.end {
        error["detail"] = json!(detail);
    }
    turn
}

/// Text of a Letta input message: a string, or typed parts.
fn input_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// A normal turn: the user's messages, then the scripted behaviour or "You said: …".
pub(crate) fn converse(world: &mut World, agent_id: &str, inputs: &[Value]) -> Turn {
    let ids = run_ids(world);
    let run_id = ids["run_id"].as_str().unwrap_or_default().to_owned();
    let chat = world.chats.chat(agent_id);
    if let Some(pending) = &chat.pending {
        let body = json!({"detail": {"code": "PENDING_APPROVAL", "message": PENDING_APPROVAL, "pending_request_id": pending.request["id"]}});
        return error_turn(
            run_id,
            "error",
            "internal_error",
            PENDING_APPROVAL,
            (StatusCode::CONFLICT, body),
        );
    }
    if let Some((error_type, message)) = chat.scripted_errors.pop_front() {
        return llm_failure(run_id, &error_type, &message);
    }
    let mut last_text = String::new();
    for input in inputs {
        last_text = input_text(&input["content"]);
        let mut row = RowBuilder::new(world, &ids);
        let item = row.push("user_message", json!({"content": last_text}));
        item["name"] = input["name"].clone();
        item["otid"] = input["otid"].clone();
        row.store(world, agent_id);
    }
    let mut parts = Vec::new();
    let mut steps = 1;
    let chat = world.chats.chat(agent_id);
    if let Some((tool_name, arguments)) = chat.scripted_tools.pop_front() {
        let needs_approval = world.tools.requires_approval(agent_id, &tool_name);
        let reasoning = world.chats.chat(agent_id).scripted_reasoning.pop_front();
        let tool_call_id = format!("call_{}", &uuid_like(world.clock).replace('-', "")[..24]);
        let call = tool_call(&tool_name, &arguments, &tool_call_id);
        let mut row = RowBuilder::new(world, &ids);
        if let Some(thought) = &reasoning {
            row.push("reasoning_message", reasoning_fields(thought));
        }
        if needs_approval {
            // Streamed and stored with otid = id (Letta passes index -1 for approval requests).
            let id = row.id().to_owned();
            let item = row.push(
                "approval_request_message",
                json!({"tool_call": call, "tool_calls": [call]}),
            );
            item["otid"] = json!(id);
            let items = row.store(world, agent_id);
            parts.extend(items.iter().map(streamed));
            let request = items.last().cloned().unwrap_or_default();
            world.chats.chat(agent_id).pending = Some(Pending { request, tool_call_id });
            return Turn {
                run_id,
                parts,
                end: End::Stop("requires_approval".into()),
                steps,
            };
        }
        row.push("tool_call_message", json!({"tool_call": call, "tool_calls": [call]}));
        parts.extend(row.store(world, agent_id).iter().map(streamed));
        parts.extend(returned(world, agent_id, &ids, &tool_call_id, "success", "ok"));
        steps += 1;
    }
    let agent_name = world.agents[agent_id]["name"].as_str().unwrap_or_default().to_owned();
    let default = world.chats.replies.answer(&agent_name, &last_text);
    let end = answer(world, agent_id, &ids, &default, &mut parts);
    Turn {
        run_id,
        parts,
        end,
        steps,
    }
}

/// The decisions on a pending approval: the response is stored, denied calls return an error,
/// approved ones run (and return "ok"), and the agent answers.
pub(crate) fn approve(world: &mut World, agent_id: &str, input: &Value) -> Turn {
    let ids = run_ids(world);
    let run_id = ids["run_id"].as_str().unwrap_or_default().to_owned();
    let approvals: Vec<Value> = match input["approvals"].as_array() {
        Some(list) => list.clone(),
        // The deprecated single form.
        None => vec![
            json!({"type": "approval", "tool_call_id": input["approval_request_id"], "approve": input["approve"], "reason": input["reason"]}),
        ],
    };
    let Some(pending) = world.chats.chat(agent_id).pending.take() else {
        return refused(run_id, NOTHING_PENDING);
    };
    let given: Vec<String> = approvals
        .iter()
        .map(|a| a["tool_call_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let legacy = given.len() == 1 && pending.request["id"] == given[0].as_str();
    if !legacy && given != [pending.tool_call_id.clone()] {
        let python_list = |ids: &[String]| {
            let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let detail = format!(
            "Invalid tool call IDs. Expected '{}', but received '{}'.",
            python_list(std::slice::from_ref(&pending.tool_call_id)),
            python_list(&given)
        );
        world.chats.chat(agent_id).pending = Some(pending);
        return refused(run_id, &detail);
    }
    let decision = &approvals[0];
    let approved = decision["approve"].as_bool().unwrap_or(false);
    let reason = decision["reason"].as_str().unwrap_or("None").to_owned();
    let mut row = RowBuilder::new(world, &ids);
    let item = row.push(
        "approval_response_message",
        json!({"approvals": [{"type": "approval", "tool_call_id": pending.tool_call_id, "approve": approved, "reason": decision["reason"]}],
               "approve": approved, "approval_request_id": pending.tool_call_id, "reason": decision["reason"]}),
    );
    item["otid"] = input["otid"].clone();
    row.store(world, agent_id);
    let (status, text) = if approved {
        ("success", "ok".to_owned())
    } else {
        (
            "error",
            format!("Error: request to call tool denied. User reason: {reason}"),
        )
    };
    let mut parts = returned(world, agent_id, &ids, &pending.tool_call_id, status, &text);
    let default = if approved {
        "The tool returned: ok".to_owned()
    } else {
        format!("The tool call was denied: {reason}")
    };
    let end = answer(world, agent_id, &ids, &default, &mut parts);
    Turn {
        run_id,
        parts,
        end,
        steps: 2,
    }
}

/// Stores and returns a tool's return.
fn returned(world: &mut World, agent_id: &str, ids: &Value, call_id: &str, status: &str, text: &str) -> Vec<Part> {
    let mut row = RowBuilder::new(world, ids);
    let item = row.push("tool_return_message", tool_return(call_id, status, text));
    item["otid"] = Value::Null;
    row.store(world, agent_id).iter().map(streamed).collect()
}

/// The agent's answer row (scripted reasoning, scripted text or `default`) and how the turn ends.
fn answer(world: &mut World, agent_id: &str, ids: &Value, default: &str, parts: &mut Vec<Part>) -> End {
    let chat = world.chats.chat(agent_id);
    let text = chat.scripted.pop_front().unwrap_or_else(|| default.to_owned());
    let reasoning = chat.scripted_reasoning.pop_front();
    let stop = chat.scripted_stops.pop_front().unwrap_or_else(|| "end_turn".into());
    let mut row = RowBuilder::new(world, ids);
    if let Some(thought) = &reasoning {
        row.push("reasoning_message", reasoning_fields(thought));
    }
    row.push("assistant_message", json!({"content": text}));
    parts.extend(row.store(world, agent_id).iter().map(streamed));
    End::Stop(stop)
}

fn streamed(item: &Value) -> Part {
    let delta = match item["message_type"].as_str() {
        Some("assistant_message") => Delta::Text("content"),
        Some("reasoning_message") => Delta::Text("reasoning"),
        Some("tool_call_message" | "approval_request_message") => Delta::ToolCall,
        _ => Delta::Whole,
    };
    Part {
        item: item.clone(),
        delta,
    }
}

#[cfg(test)]
mod tests {
    use super::otid_from_id;

    #[test]
    fn otids_are_letta_s() {
        // From the captures: the answer of a step is item 0 of its row.
        assert_eq!(
            otid_from_id("message-616e514c-3802-4330-bb55-92f8d3e1c94f", 0),
            "616e514c-3802-4330-bb55-92f8d3e1c900"
        );
        assert_eq!(
            otid_from_id("message-ca5cf1a4-780a-4003-a74c-fbf819e624ad", 0),
            "ca5cf1a4-780a-4003-a74c-fbf819e62480"
        );
        assert_eq!(
            otid_from_id("message-616e514c-3802-4330-bb55-92f8d3e1c94f", 1),
            "616e514c-3802-4330-bb55-92f8d3e1c901"
        );
    }
}
