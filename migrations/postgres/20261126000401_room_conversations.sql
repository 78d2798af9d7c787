-- Which Letta conversation an agent talks in, per room (`conversation_scope = "room"`). A NULL
-- conversation_id is the agent's default conversation: kept for agent types whose conversations
-- Letta 0.16.8 does not give a context of their own, so the choice is made once per room.
CREATE TABLE room_conversations (
    agent_id        TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    conversation_id TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (agent_id, room_id)
);
