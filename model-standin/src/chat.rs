//! Chat completions: what a request asks and shows, and the answer as one object or as chunks.

use serde_json::{Value, json};

use crate::Step;

/// Characters of content per streamed delta: small, so token streaming is visible.
const CONTENT_PIECE: usize = 4;
/// Characters of tool-call arguments per streamed delta.
const ARGUMENTS_PIECE: usize = 8;

pub(crate) enum Answer {
    Message(Message),
    Fail(u16),
}

pub(crate) enum Message {
    Text(String),
    Calls(Vec<(String, Value)>),
    TextAndCalls(String, Vec<(String, Value)>),
}

impl Message {
    pub(crate) fn calls(&self) -> &[(String, Value)] {
        match self {
            Message::Text(_) => &[],
            Message::Calls(calls) | Message::TextAndCalls(_, calls) => calls,
        }
    }
}

/// What a step answers to this request.
///
/// Text goes out as a `send_message` call when the request offers that tool (memgpt-style agents,
/// whose loop fails a step without a tool call; Letta asks them with `tool_choice: "required"`)
/// and as plain content otherwise (`letta_v1_agent`, asked with `tool_choice: "auto"`).
pub(crate) fn answer(request: &Value, step: Step) -> Answer {
    let text = match step {
        Step::Fail(status) => return Answer::Fail(status),
        Step::ToolCall { name, arguments } => return Answer::Message(Message::Calls(vec![(name, arguments)])),
        Step::ToolCalls(calls) => return Answer::Message(Message::Calls(calls)),
        Step::Said { text, calls } => return Answer::Message(Message::TextAndCalls(text, calls)),
        Step::Echo => format!("You said: {}", last_user_text(request)),
        Step::Reply(text) => text,
    };
    if may_call(request, "send_message") {
        let arguments = json!({"message": text, "request_heartbeat": false});
        Answer::Message(Message::Calls(vec![("send_message".to_owned(), arguments)]))
    } else {
        Answer::Message(Message::Text(text))
    }
}

/// The text of a message's `content`: a string, or the text parts of an array joined by lines.
pub(crate) fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|part| part["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

/// The human's text in the last user message that has some. Older agent types wrap it as
/// `{"type": "user_message", "message": ..., "time": ...}`; other wrapped user-role messages
/// (`heartbeat`, `login`, `system_alert`) are Letta speaking, not the human, and are skipped.
pub(crate) fn last_user_text(request: &Value) -> String {
    let messages = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    for message in messages.iter().rev().filter(|m| m["role"] == "user") {
        let Some(text) = content_text(&message["content"]) else {
            continue;
        };
        match serde_json::from_str::<Value>(text.trim()) {
            Ok(wrapped @ Value::Object(_)) if wrapped["type"].is_string() => {
                if wrapped["type"] == "user_message" {
                    return wrapped["message"].as_str().unwrap_or_default().to_owned();
                }
            }
            _ => return text,
        }
    }
    String::new()
}

/// Whether the request offers the tool `name` and `tool_choice` lets the model call it.
fn may_call(request: &Value, name: &str) -> bool {
    let tools = request["tools"].as_array().map(Vec::as_slice).unwrap_or_default();
    let offered = tools
        .iter()
        .any(|tool| tool["function"]["name"] == name || tool["name"] == name);
    offered
        && match &request["tool_choice"] {
            Value::String(choice) => choice != "none",
            Value::Object(choice) => choice
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| choice.get("name"))
                .is_none_or(|forced| forced == name),
            _ => true,
        }
}

pub(crate) struct Ids {
    pub(crate) completion: String,
    /// The number of the first tool call's id; the others follow.
    pub(crate) first_call: u64,
}

struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// One answer, ready to be sent either way.
pub(crate) struct Completion {
    id: String,
    created: u64,
    model: String,
    content: Option<String>,
    calls: Vec<Call>,
    prompt_tokens: usize,
}

fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|piece| piece.iter().collect()).collect()
}

impl Completion {
    pub(crate) fn new(request: &Value, model: &str, message: Message, ids: Ids) -> Self {
        let (content, calls) = match message {
            Message::Text(text) => (Some(text), Vec::new()),
            Message::Calls(calls) => (None, calls),
            Message::TextAndCalls(text, calls) => (Some(text), calls),
        };
        let calls = calls
            .into_iter()
            .zip(ids.first_call..)
            .map(|((name, arguments), number)| Call {
                id: format!("call_standin_{number}"),
                name,
                arguments: arguments.to_string(),
            })
            .collect();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Self {
            id: ids.completion,
            created,
            model: model.to_owned(),
            content,
            calls,
            prompt_tokens: request["messages"].to_string().len().div_ceil(4),
        }
    }

    fn finish_reason(&self) -> &'static str {
        if self.calls.is_empty() { "stop" } else { "tool_calls" }
    }

    /// How many deltas carry the answer: the number of `per_token` waits it takes.
    pub(crate) fn pieces(&self) -> u32 {
        let content = self.content.as_deref().map_or(0, |c| pieces(c, CONTENT_PIECE).len());
        let arguments: usize = self
            .calls
            .iter()
            .map(|call| pieces(&call.arguments, ARGUMENTS_PIECE).len())
            .sum();
        (content + arguments) as u32
    }

    fn usage(&self) -> Value {
        let answer_chars = self.content.as_deref().map_or(0, str::len)
            + self
                .calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>();
        let completion_tokens = answer_chars.div_ceil(4).max(1);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The `chat.completion` object.
    pub(crate) fn unstreamed(&self) -> Value {
        let mut message = json!({"role": "assistant", "content": self.content, "refusal": null});
        if !self.calls.is_empty() {
            message["tool_calls"] = self
                .calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect();
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason(),
            }],
            "usage": self.usage(),
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, include_usage: bool) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The `chat.completion.chunk` objects, as OpenAI streams them: the role first, the content
    /// or each call's id and name then its arguments in pieces, an empty delta with the
    /// `finish_reason`, and with `include_usage` a last chunk without choices carrying the usage.
    pub(crate) fn chunks(&self, include_usage: bool) -> Vec<Value> {
        let mut chunks = Vec::new();
        if let Some(content) = &self.content {
            chunks.push(self.chunk(json!({"role": "assistant", "content": ""}), None, include_usage));
            for piece in pieces(content, CONTENT_PIECE) {
                chunks.push(self.chunk(json!({"content": piece}), None, include_usage));
            }
        }
        for (index, call) in self.calls.iter().enumerate() {
            let mut delta = json!({"tool_calls": [{
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }]});
            if index == 0 {
                delta["role"] = json!("assistant");
                delta["content"] = Value::Null;
            }
            chunks.push(self.chunk(delta, None, include_usage));
            for piece in pieces(&call.arguments, ARGUMENTS_PIECE) {
                let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
                chunks.push(self.chunk(delta, None, include_usage));
            }
        }
        chunks.push(self.chunk(json!({}), Some(self.finish_reason()), include_usage));
        if include_usage {
            let mut usage = self.chunk(json!({}), None, false);
            usage["choices"] = json!([]);
            usage["usage"] = self.usage();
            chunks.push(usage);
        }
        chunks
    }
}
