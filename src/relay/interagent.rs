//! Agents talking to each other through Matrix, as themselves: a message from one agent's ghost
//! into another agent's room carries who sent it and how many hops the exchange has made, and the
//! receiver's answer goes back the same way, one hop further, until the configured limit.

use ruma::{OwnedEventId, OwnedTransactionId, RoomId, UserId};
use serde_json::{Value, json};

use super::incoming::Incoming;
use super::reply;
use crate::matrix::{MatrixClient, MatrixError};
use crate::store::AgentRecord;

/// Our keys in the content of an inter-agent message. The older Python system wrote
/// `m.letta.from_agent_id` / `m.letta.from_agent_name`; `m.` belongs to the spec, so we write our
/// own names and read both.
pub const FROM_AGENT_ID: &str = "org.lettamatrix.from_agent_id";
pub const FROM_AGENT_NAME: &str = "org.lettamatrix.from_agent_name";
pub const HOPS: &str = "org.lettamatrix.hops";
const LEGACY_FROM_AGENT_ID: &str = "m.letta.from_agent_id";
const LEGACY_FROM_AGENT_NAME: &str = "m.letta.from_agent_name";

/// Which agent a message came from, and how far the exchange has gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOrigin {
    pub agent_id: String,
    pub name: String,
    pub hops: u32,
}

/// The agent behind a message. Only our own ghosts vouch for an agent (`sender_agent`): a person
/// writing the keys proves nothing. The name in the metadata wins when it is about the same agent.
///
/// A ghost's message without the metadata is an ordinary answer of its agent, for people: relaying
/// those to other agents in a shared room would let two agents talk in circles unseen by the hop
/// count, so they are not messages to agents (`None`).
pub fn origin_of(incoming: &Incoming, sender_agent: Option<&AgentRecord>) -> Option<AgentOrigin> {
    let agent = sender_agent?;
    let content = &incoming.content;
    let claimed_id = content[FROM_AGENT_ID]
        .as_str()
        .or(content[LEGACY_FROM_AGENT_ID].as_str());
    claimed_id?;
    let claimed_name = content[FROM_AGENT_NAME]
        .as_str()
        .or(content[LEGACY_FROM_AGENT_NAME].as_str())
        .filter(|_| claimed_id == Some(agent.agent_id.as_str()));
    Some(AgentOrigin {
        agent_id: agent.agent_id.clone(),
        name: claimed_name.unwrap_or(&agent.name).to_owned(),
        hops: content[HOPS].as_u64().unwrap_or(1).min(u64::from(u32::MAX)) as u32,
    })
}

/// What the receiving agent is told, so it knows who speaks and that its answer goes back.
pub fn framed_for_receiver(origin: &AgentOrigin, ghost: &UserId, text: &str) -> String {
    format!(
        "[Message from agent {} ({}, {ghost}). Your reply will be delivered to them automatically.] {text}",
        origin.name, origin.agent_id
    )
}

/// Puts `ghost` in `room`: a join, and when the room is invite-only, an invite from `inviter`
/// (a ghost that is in it) first.
pub async fn ensure_member(
    matrix: &MatrixClient,
    room_id: &RoomId,
    ghost: &UserId,
    inviter: Option<&UserId>,
) -> Result<(), MatrixError> {
    match matrix.join(room_id.to_owned().into(), ghost).await {
        Ok(_) => Ok(()),
        Err(error) => {
            let Some(inviter) = inviter else {
                return Err(error);
            };
            matrix.ensure_invited(room_id, ghost, Some(inviter)).await?;
            matrix.join(room_id.to_owned().into(), ghost).await.map(drop)
        }
    }
}

/// The content of a message one agent sends another.
pub fn content(from: &AgentRecord, text: &str, hops: u32) -> Value {
    let mut content = reply::markdown_content(text, "m.text");
    content[FROM_AGENT_ID] = json!(from.agent_id);
    content[FROM_AGENT_NAME] = json!(from.name);
    content[HOPS] = json!(hops);
    content
}

/// One message from an agent to another room: its text, the exchange's hop count, and the txn id
/// that makes posting it idempotent.
pub struct Outgoing<'a> {
    pub text: &'a str,
    pub hops: u32,
    pub txn_id: OwnedTransactionId,
}

/// Posts a message as `from`'s ghost into `room` (joining it as needed, invited by `inviter`) with
/// the inter-agent metadata.
pub async fn post_as_agent(
    matrix: &MatrixClient,
    room_id: &RoomId,
    (from, from_ghost): (&AgentRecord, &UserId),
    inviter: Option<&UserId>,
    message: Outgoing<'_>,
) -> Result<OwnedEventId, MatrixError> {
    ensure_member(matrix, room_id, from_ghost, inviter).await?;
    post(matrix, room_id, (from, from_ghost), message).await
}

/// Posts a message as `from`'s ghost into a room it is in. A text too long for one event goes in
/// several messages; the first one's id stands for them.
pub async fn post(
    matrix: &MatrixClient,
    room_id: &RoomId,
    (from, from_ghost): (&AgentRecord, &UserId),
    message: Outgoing<'_>,
) -> Result<OwnedEventId, MatrixError> {
    let text = (message.text, message.txn_id.as_str());
    super::send_in_pieces(matrix, room_id, from_ghost, text, None, |piece| {
        content(from, piece, message.hops)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, name: &str) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            ghost_user_id: format!("@letta_{id}:x"),
            name: name.into(),
            description: None,
            room_id: None,
            room_alias: None,
            sync_step: "ready".into(),
            deleted_at: None,
        }
    }

    fn incoming(content: Value) -> Incoming {
        Incoming {
            event_id: "$e".into(),
            sender: "@letta_a:x".into(),
            event_type: "m.room.message".into(),
            content,
        }
    }

    #[test]
    fn our_metadata_round_trips_and_the_old_keys_are_read() {
        let sender = agent("a", "Alpha");
        let sent = content(&sender, "hi **B**", 2);
        assert_eq!(sent[FROM_AGENT_ID], "a");
        assert_eq!(sent["formatted_body"], "<p>hi <strong>B</strong></p>");
        let origin = origin_of(&incoming(sent), Some(&sender)).unwrap();
        assert_eq!(
            origin,
            AgentOrigin {
                agent_id: "a".into(),
                name: "Alpha".into(),
                hops: 2
            }
        );
        let legacy =
            incoming(json!({"body": "x", "m.letta.from_agent_id": "a", "m.letta.from_agent_name": "Old Alpha"}));
        let origin = origin_of(&legacy, Some(&sender)).unwrap();
        assert_eq!((origin.name.as_str(), origin.hops), ("Old Alpha", 1));
    }

    #[test]
    fn a_person_cannot_claim_to_be_an_agent() {
        let forged = incoming(json!({"body": "x", FROM_AGENT_ID: "a", HOPS: 1}));
        assert_eq!(origin_of(&forged, None), None);
        assert_eq!(
            origin_of(
                &incoming(json!({"body": "an ordinary answer"})),
                Some(&agent("b", "Beta"))
            ),
            None,
            "an agent's answer for people is not a message to other agents"
        );
        let mislabelled = origin_of(
            &incoming(json!({"body": "x", FROM_AGENT_ID: "z", FROM_AGENT_NAME: "Zed"})),
            Some(&agent("b", "Beta")),
        )
        .unwrap();
        assert_eq!(
            (mislabelled.agent_id.as_str(), mislabelled.name.as_str()),
            ("b", "Beta"),
            "the sending ghost decides who it is"
        );
    }
}
