-- One Letta turn per (event, agent). It is written before Letta is asked, so that after a crash a
-- turn in state 'asked' has an unknown fate: its otid is looked up in Letta before asking again.
CREATE TABLE relay_turns (
    event_id    TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    inbox_id    BIGINT NOT NULL,
    otid        TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (event_id, agent_id)
);
CREATE INDEX relay_turns_by_room ON relay_turns (room_id, agent_id, inbox_id);

-- Messages our ghosts posted: a reply to one of them addresses its agent, a crashed turn knows
-- which parts were already posted, and history import knows what not to import again.
CREATE TABLE sent_messages (
    event_id         TEXT PRIMARY KEY,
    room_id          TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    txn_id           TEXT NOT NULL UNIQUE,
    cause_event_id   TEXT,
    letta_message_id TEXT,
    sent_at          BIGINT NOT NULL
);
CREATE INDEX sent_messages_by_letta_id ON sent_messages (letta_message_id);

-- One turn at a time per agent, across replicas: Letta interleaves concurrent turns of one agent.
CREATE TABLE agent_leases (
    agent_id    TEXT PRIMARY KEY,
    lease_owner TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);

-- Per-room behaviour, from the room's `org.lettamatrix.settings` state event. NULL: the global default.
CREATE TABLE room_settings (
    room_id        TEXT PRIMARY KEY,
    respond_to_all INTEGER,
    show_reasoning INTEGER,
    updated_at     BIGINT NOT NULL
);

-- Notices a room gets once (e.g. "you may not use this agent"), however often the cause repeats.
CREATE TABLE room_notices (
    room_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, kind)
);

-- Messages an agent was not addressed by, kept as context for its next turn in the room.
CREATE INDEX inbox_held_by_room ON inbox (room_id, id) WHERE state = 'held';
