-- An agent's context in a group room is every person's message since its last turn there, also
-- those another agent answered, so held rows alone no longer describe it.
DROP INDEX inbox_held_by_room;
CREATE INDEX inbox_messages_by_room ON inbox (room_id, id) WHERE kind = 'message';
-- Finished rows are pruned after a retention period.
CREATE INDEX inbox_finished ON inbox (finished_at) WHERE state <> 'pending';
