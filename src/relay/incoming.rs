//! Reading a stored room event: what to tell the agent, and whether the agent was addressed.
//! Events stay JSON here on purpose: the relay needs a handful of fields from any message type,
//! including ones newer than our ruma version, and must never drop a message it cannot model.

use serde::Deserialize;
use serde_json::Value;

/// A message event as the relay sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub event_id: String,
    pub sender: String,
    pub event_type: String,
    pub content: Value,
}

#[derive(Deserialize)]
struct Envelope {
    event_id: String,
    sender: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    content: Value,
}

impl Incoming {
    pub fn parse(event_json: &str) -> Result<Self, String> {
        let envelope: Envelope = serde_json::from_str(event_json).map_err(|e| format!("stored event: {e}"))?;
        Ok(Self {
            event_id: envelope.event_id,
            sender: envelope.sender,
            event_type: envelope.event_type,
            content: envelope.content,
        })
    }

    fn relates_to(&self) -> &Value {
        &self.content["m.relates_to"]
    }

    /// A person's edit of an earlier message. Edits are not sent to the agent: it answered the
    /// original, and a corrected copy would make it answer twice.
    pub fn is_edit(&self) -> bool {
        self.relates_to()["rel_type"] == "m.replace"
    }

    pub fn is_encrypted(&self) -> bool {
        self.event_type == "m.room.encrypted"
    }

    /// The event this one replies to (in a thread too, unless that is only a fallback).
    pub fn reply_to(&self) -> Option<&str> {
        let relation = self.relates_to();
        if relation["rel_type"] == "m.thread" && relation["is_falling_back"] == true {
            return None;
        }
        relation["m.in_reply_to"]["event_id"].as_str()
    }

    /// The root of the thread this message is in.
    pub fn thread_root(&self) -> Option<&str> {
        let relation = self.relates_to();
        (relation["rel_type"] == "m.thread")
            .then(|| relation["event_id"].as_str())
            .flatten()
    }

    pub fn mentions_user(&self, user_id: &str) -> bool {
        self.content["m.mentions"]["user_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == user_id))
    }

    /// The body without the quoted fallback of a reply.
    pub fn body(&self) -> String {
        let body = self.content["body"].as_str().unwrap_or_default();
        if self.reply_to().is_none() {
            return body.to_owned();
        }
        strip_reply_fallback(body).to_owned()
    }

    /// Whether the text names the agent: its user id, or its name as a word of its own.
    pub fn names(&self, user_id: &str, agent_name: &str) -> bool {
        let body = self.body().to_lowercase();
        if body.contains(&user_id.to_lowercase()) {
            return true;
        }
        let name = agent_name.trim().to_lowercase();
        !name.is_empty() && contains_word(&body, &name)
    }

    /// What the agent is told, given the speaker's display name.
    pub fn text_for_agent(&self, speaker: &str) -> String {
        let msgtype = self.content["msgtype"].as_str().unwrap_or_default();
        let body = self.body();
        if self.event_type == "m.sticker" {
            return format!("[{speaker} sent a sticker: {body}]");
        }
        match msgtype {
            "m.text" | "m.notice" => body,
            "m.emote" => format!("* {speaker} {body}"),
            "m.image" | "m.file" | "m.audio" | "m.video" => self.describe_media(msgtype, speaker),
            "m.location" => format!(
                "[{speaker} shared a location: {body} ({})]",
                self.content["geo_uri"].as_str().unwrap_or("no coordinates")
            ),
            _ if !body.is_empty() => body,
            other => format!("[{speaker} sent a message of type {other} that has no text]"),
        }
    }

    fn describe_media(&self, msgtype: &str, speaker: &str) -> String {
        let kind = msgtype.trim_start_matches("m.");
        let content = &self.content;
        let file_name = content["filename"]
            .as_str()
            .or(content["body"].as_str())
            .unwrap_or(kind);
        let url = content["url"]
            .as_str()
            .or(content["file"]["url"].as_str())
            .unwrap_or("no URL");
        let mut details = vec![url.to_owned()];
        if let Some(mimetype) = content["info"]["mimetype"].as_str() {
            details.push(mimetype.to_owned());
        }
        if let Some(size) = content["info"]["size"].as_u64() {
            details.push(format!("{size} bytes"));
        }
        let mut text = format!(
            "[{speaker} sent {} {kind}: {file_name} ({})]",
            article(kind),
            details.join(", ")
        );
        // A caption is a body that differs from the file name.
        if let Some(caption) = content["body"]
            .as_str()
            .filter(|b| Some(*b) != content["filename"].as_str())
            && content["filename"].is_string()
        {
            text.push('\n');
            text.push_str(caption);
        }
        text
    }
}

fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Removes the `> ` quoted lines a reply starts with (and the blank line after them).
fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") {
        return body;
    }
    let mut rest = body;
    while rest.starts_with('>') {
        rest = rest.split_once('\n').map(|(_, after)| after).unwrap_or("");
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

fn contains_word(haystack: &str, word: &str) -> bool {
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    haystack.match_indices(word).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn incoming(content: Value) -> Incoming {
        Incoming {
            event_id: "$e".into(),
            sender: "@alice:example.org".into(),
            event_type: "m.room.message".into(),
            content,
        }
    }

    #[test]
    fn replies_lose_their_quoted_fallback() {
        let reply = incoming(
            json!({"msgtype": "m.text", "body": "> <@bot:x> earlier\n> more\n\nmy answer", "m.relates_to": {"m.in_reply_to": {"event_id": "$p"}}}),
        );
        assert_eq!(reply.body(), "my answer");
        assert_eq!(reply.reply_to(), Some("$p"));
        let plain = incoming(json!({"msgtype": "m.text", "body": "> a quote of my own"}));
        assert_eq!(plain.body(), "> a quote of my own");
    }

    #[test]
    fn threads_are_told_from_replies() {
        let in_thread = incoming(
            json!({"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root", "is_falling_back": true, "m.in_reply_to": {"event_id": "$last"}}}),
        );
        assert_eq!(in_thread.thread_root(), Some("$root"));
        assert_eq!(in_thread.reply_to(), None);
    }

    #[test]
    fn the_agent_is_addressed_by_id_mention_or_name_as_a_word() {
        let message = incoming(
            json!({"msgtype": "m.text", "body": "hey Helper, what now?", "m.mentions": {"user_ids": ["@letta_a:x"]}}),
        );
        assert!(message.mentions_user("@letta_a:x"));
        assert!(message.names("@letta_b:x", "helper"));
        assert!(!message.names("@letta_b:x", "help"));
        assert!(incoming(json!({"msgtype": "m.text", "body": "ask @letta_b:x"})).names("@letta_b:x", "zed"));
    }

    #[test]
    fn media_is_described_with_its_url_never_dropped() {
        let image = incoming(
            json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://x/abc", "info": {"mimetype": "image/png", "size": 1234}}),
        );
        assert_eq!(
            image.text_for_agent("Alice"),
            "[Alice sent an image: cat.png (mxc://x/abc, image/png, 1234 bytes)]"
        );
        let captioned = incoming(
            json!({"msgtype": "m.file", "body": "the report", "filename": "q3.pdf", "file": {"url": "mxc://x/enc"}}),
        );
        assert_eq!(
            captioned.text_for_agent("Alice"),
            "[Alice sent a file: q3.pdf (mxc://x/enc)]\nthe report"
        );
        assert_eq!(
            incoming(json!({"msgtype": "m.emote", "body": "waves"})).text_for_agent("Alice"),
            "* Alice waves"
        );
        assert!(
            incoming(json!({"msgtype": "org.custom"}))
                .text_for_agent("A")
                .contains("org.custom")
        );
    }

    #[test]
    fn edits_are_recognised() {
        assert!(
            incoming(
                json!({"msgtype": "m.text", "body": "* x", "m.relates_to": {"rel_type": "m.replace", "event_id": "$o"}})
            )
            .is_edit()
        );
    }
}
