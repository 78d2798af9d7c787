//! Reading a room the way a person's client shows it: a ghost's messages with their latest edit
//! applied.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub event_id: String,
    pub msgtype: String,
    /// The latest text: the newest edit's `m.new_content`, or the original's.
    pub body: String,
    pub formatted: Option<String>,
    pub edits: usize,
    /// The original event's content, relations included.
    pub content: Value,
}

/// `sender`'s messages in `events` (newest first, as `/messages?dir=b` gives them), oldest first,
/// with edits folded into the message they edit.
pub fn shown_messages(events: &[Value], sender: &str) -> Vec<Shown> {
    let ours: Vec<&Value> = events
        .iter()
        .rev()
        .filter(|e| e["type"] == "m.room.message" && e["sender"] == sender)
        .collect();
    let mut shown: Vec<Shown> = ours
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] != "m.replace")
        .map(|e| Shown {
            event_id: e["event_id"].as_str().unwrap_or_default().to_owned(),
            msgtype: e["content"]["msgtype"].as_str().unwrap_or_default().to_owned(),
            body: e["content"]["body"].as_str().unwrap_or_default().to_owned(),
            formatted: e["content"]["formatted_body"].as_str().map(str::to_owned),
            edits: 0,
            content: e["content"].clone(),
        })
        .collect();
    for edit in ours
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
    {
        let target = edit["content"]["m.relates_to"]["event_id"].as_str().unwrap_or_default();
        if let Some(original) = shown.iter_mut().find(|s| s.event_id == target) {
            let new = &edit["content"]["m.new_content"];
            original.body = new["body"].as_str().unwrap_or_default().to_owned();
            original.formatted = new["formatted_body"].as_str().map(str::to_owned);
            original.edits += 1;
        }
    }
    shown
}
