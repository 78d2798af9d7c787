//! Text too long for one event, posted as several messages: cut where `reply::split_for_events`
//! cuts, each piece with a txn id derived from the message's own (so a retry posts none twice), and
//! the first piece's event standing for the message.

use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedTransactionId, RoomId, UserId};
use serde_json::Value;

use super::reply;
use crate::matrix::{MatrixClient, MatrixError};

/// Posts `markdown` as `sender`, with `content` making each piece's event content, at `timestamp`
/// when given (imported history).
pub async fn send_in_pieces(
    matrix: &MatrixClient,
    room_id: &RoomId,
    sender: &UserId,
    (markdown, txn): (&str, &str),
    timestamp: Option<MilliSecondsSinceUnixEpoch>,
    content: impl Fn(&str) -> Value,
) -> Result<OwnedEventId, MatrixError> {
    let mut first = None;
    for (index, piece) in reply::split_for_events(markdown).into_iter().enumerate() {
        let txn = OwnedTransactionId::from(piece_txn(txn, index));
        let event_id = matrix
            .send_raw_message(room_id, txn, &content(piece), sender, timestamp)
            .await?;
        first.get_or_insert(event_id);
    }
    Ok(first.expect("a message has at least one piece"))
}

/// The txn id of one piece: the first keeps the message's own.
fn piece_txn(txn: &str, index: usize) -> String {
    match index {
        0 => txn.to_owned(),
        n => format!("{txn}-{n}"),
    }
}
