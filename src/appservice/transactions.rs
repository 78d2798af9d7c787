//! `PUT /_matrix/app/v1/transactions/{txnId}`: the hot path. Authenticated, parsed, the events
//! that matter stored with the txn id in one database transaction, answered. It never waits on
//! Letta or the homeserver, because the homeserver sends the next transaction only after this one.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use ruma::api::IncomingRequestExt;
use ruma::api::appservice::event::push_events;
use ruma::events::AnyTimelineEvent;
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{AppError, PathParam};
use crate::namespace::Namespace;
use crate::store::{InboxEvent, NewInboxEvent, TransactionOutcome};

pub async fn push_events(
    State(state): State<AppState>,
    PathParam(txn_id): PathParam<String>,
    request: Request,
) -> Result<Json<Value>, AppError> {
    let (parts, body) = request.into_parts();
    let bytes = read_limited(body, &parts.headers, state.settings.raw.max_body_bytes).await?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| AppError::NotJson(e.to_string()))?;
    // serde reads a struct from an array too, field by field, so `[[event]]` would pass as a transaction.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AppError::BadJson("a transaction is a JSON object".into()));
    }
    let http_request = http::Request::from_parts(parts, bytes.as_ref());
    let transaction = push_events::v1::Request::try_from_http_request(http_request, &[txn_id.as_str()])
        .map_err(|e| AppError::BadJson(e.to_string()))?;

    metrics::counter!("letta_matrix_transactions_received_total").increment(1);
    metrics::counter!("letta_matrix_events_received_total").increment(transaction.events.len() as u64);
    let events: Vec<NewInboxEvent> = transaction
        .events
        .iter()
        .filter_map(|raw| classify(raw, &state.namespace))
        .collect();

    match state
        .store
        .record_transaction(transaction.txn_id.as_str(), &events)
        .await?
    {
        TransactionOutcome::Duplicate => {
            metrics::counter!("letta_matrix_transactions_duplicate_total").increment(1);
            tracing::debug!(txn_id = %transaction.txn_id, "transaction seen before; acknowledged again");
        }
        TransactionOutcome::Stored { events: stored } => {
            stored_events(&state, stored);
            tracing::debug!(txn_id = %transaction.txn_id, received = transaction.events.len(), stored, "transaction stored");
        }
        TransactionOutcome::Reused { events: stored } => {
            metrics::counter!("letta_matrix_transactions_reused_total").increment(1);
            stored_events(&state, stored);
            tracing::info!(txn_id = %transaction.txn_id, received = transaction.events.len(), stored, "transaction id seen before with other events (the homeserver restarted its numbering?); processed as new");
        }
    }
    Ok(Json(json!({})))
}

fn stored_events(state: &AppState, stored: u64) {
    metrics::counter!("letta_matrix_events_stored_total").increment(stored);
    if stored > 0 {
        state.inbox_signal.notify_one();
    }
}

/// Reads the body, refusing it with `M_TOO_LARGE` as soon as it passes `limit` bytes.
pub(crate) async fn read_limited(body: Body, headers: &http::HeaderMap, limit: usize) -> Result<Bytes, AppError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(AppError::TooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::iter::successors(std::error::Error::source(&error), |e| e.source())
            .any(|cause| cause.is::<http_body_util::LengthLimitError>());
        if too_large {
            AppError::TooLarge(limit)
        } else {
            AppError::BadJson(format!("cannot read the body: {error}"))
        }
    })
}

/// The fields needed to decide whether an event matters; the relay parses the full event later.
#[derive(Deserialize)]
struct Envelope {
    event_id: OwnedEventId,
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    event_type: String,
    state_key: Option<String>,
    #[serde(default)]
    content: EnvelopeContent,
}

#[derive(Deserialize, Default)]
struct EnvelopeContent {
    #[serde(rename = "m.relates_to")]
    relates_to: Option<Relation>,
}

#[derive(Deserialize)]
struct Relation {
    rel_type: Option<String>,
}

/// Decides what the relay must see: people's messages, redactions, our users' memberships (invites
/// included), and messages one ghost sends into another's room. Our own edits (the streaming of a
/// reply) come straight back from the homeserver and are dropped here, not stored.
pub fn classify(raw: &Raw<AnyTimelineEvent>, namespace: &Namespace) -> Option<NewInboxEvent> {
    let envelope: Envelope = match raw.deserialize_as_unchecked() {
        Ok(envelope) => envelope,
        Err(error) => {
            metrics::counter!("letta_matrix_events_unparsable_total").increment(1);
            tracing::warn!(%error, "skipping an event that is not a valid room event");
            return None;
        }
    };
    let from_us = namespace.is_ours(&envelope.sender);
    let kind = match envelope.event_type.as_str() {
        "m.room.message" | "m.sticker" | "m.room.encrypted" => {
            let is_edit = envelope.content.relates_to.as_ref().and_then(|r| r.rel_type.as_deref()) == Some("m.replace");
            if from_us && (is_edit || namespace.is_bot(&envelope.sender)) {
                return None;
            }
            InboxEvent::Message
        }
        "m.room.redaction" if !from_us => InboxEvent::Redaction,
        crate::relay::ROOM_SETTINGS_EVENT if !from_us && envelope.state_key.as_deref() == Some("") => {
            InboxEvent::Settings
        }
        "m.room.tombstone" if envelope.state_key.as_deref() == Some("") => InboxEvent::Upgrade,
        "m.room.member" => {
            let target = envelope
                .state_key
                .as_deref()
                .and_then(|key| OwnedUserId::try_from(key).ok())?;
            if !namespace.is_ours(&target) {
                return None;
            }
            InboxEvent::Membership
        }
        _ => return None,
    };
    let event = NewInboxEvent {
        event_id: envelope.event_id.to_string(),
        room_id: envelope.room_id.to_string(),
        sender: envelope.sender.to_string(),
        event_type: envelope.event_type,
        kind,
        event_json: raw.json().get().to_owned(),
    };
    if !event.is_storable() {
        // Refusing the transaction instead would make the homeserver retry it forever.
        metrics::counter!("letta_matrix_events_unstorable_total").increment(1);
        tracing::warn!(event_id = ?event.event_id, room_id = ?event.room_id, "skipping an event with a NUL character in its ids or type");
        return None;
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn namespace() -> Namespace {
        Namespace::new(&Settings::for_tests("example.org"))
    }

    fn event(value: Value) -> Raw<AnyTimelineEvent> {
        Raw::from_json(serde_json::value::to_raw_value(&value).unwrap())
    }

    fn message(sender: &str, content: Value) -> Raw<AnyTimelineEvent> {
        event(
            json!({"type": "m.room.message", "event_id": "$e1", "room_id": "!r:example.org", "sender": sender, "origin_server_ts": 1, "content": content}),
        )
    }

    fn member(sender: &str, target: &str, membership: &str) -> Raw<AnyTimelineEvent> {
        event(
            json!({"type": "m.room.member", "event_id": "$m1", "room_id": "!r:example.org", "sender": sender, "state_key": target, "origin_server_ts": 1, "content": {"membership": membership}}),
        )
    }

    #[test]
    fn people_messages_are_kept_whole() {
        let raw = message("@alice:example.org", json!({"msgtype": "m.text", "body": "hi"}));
        let stored = classify(&raw, &namespace()).unwrap();
        assert_eq!(stored.kind, InboxEvent::Message);
        assert_eq!(
            (stored.event_id.as_str(), stored.room_id.as_str()),
            ("$e1", "!r:example.org")
        );
        assert_eq!(
            serde_json::from_str::<Value>(&stored.event_json).unwrap()["content"]["body"],
            "hi"
        );
    }

    #[test]
    fn our_own_edits_and_bot_messages_are_dropped_but_ghost_messages_kept() {
        let ns = namespace();
        let edit = json!({"msgtype": "m.text", "body": "* x", "m.new_content": {"msgtype": "m.text", "body": "x"}, "m.relates_to": {"rel_type": "m.replace", "event_id": "$o"}});
        assert!(classify(&message("@letta_agent-1:example.org", edit.clone()), &ns).is_none());
        assert!(
            classify(&message("@alice:example.org", edit), &ns).is_some(),
            "a person's edit still matters"
        );
        assert!(
            classify(
                &message("@letta_bot:example.org", json!({"msgtype": "m.notice", "body": "n"})),
                &ns
            )
            .is_none()
        );
        assert!(
            classify(
                &message(
                    "@letta_agent-1:example.org",
                    json!({"msgtype": "m.text", "body": "to another agent"})
                ),
                &ns
            )
            .is_some()
        );
    }

    #[test]
    fn only_our_users_memberships_are_kept() {
        let ns = namespace();
        let invite = classify(
            &member("@alice:example.org", "@letta_agent-1:example.org", "invite"),
            &ns,
        )
        .unwrap();
        assert_eq!(invite.kind, InboxEvent::Membership);
        assert!(classify(&member("@alice:example.org", "@bob:example.org", "join"), &ns).is_none());
    }

    #[test]
    fn room_upgrades_are_kept() {
        let tombstone = |state_key: &str| {
            event(
                json!({"type": "m.room.tombstone", "event_id": "$t", "room_id": "!r:example.org", "sender": "@alice:example.org", "state_key": state_key, "origin_server_ts": 1, "content": {"body": "upgraded", "replacement_room": "!new:example.org"}}),
            )
        };
        assert_eq!(
            classify(&tombstone(""), &namespace()).unwrap().kind,
            InboxEvent::Upgrade
        );
        assert!(
            classify(&tombstone("other"), &namespace()).is_none(),
            "not the room's tombstone"
        );
    }

    #[test]
    fn other_and_broken_events_are_skipped() {
        let ns = namespace();
        assert!(classify(&event(json!({"type": "m.reaction", "event_id": "$r", "room_id": "!r:example.org", "sender": "@a:example.org", "origin_server_ts": 1, "content": {}})), &ns).is_none());
        assert!(classify(&event(json!({"type": "m.room.message", "sender": "not a user"})), &ns).is_none());
    }
}
