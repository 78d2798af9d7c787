-- A message's turn looks for a later redaction of it in its room; without an index that read
-- walks the whole inbox for every message.
CREATE INDEX inbox_redactions_by_room ON inbox (room_id, id) WHERE kind = 'redaction';
