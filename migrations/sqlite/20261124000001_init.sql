-- Transaction ids the homeserver has delivered; a re-sent id is answered without re-processing.
CREATE TABLE processed_transactions (
    txn_id      TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);

-- Events waiting for (or finished by) the relay. `id` orders events within a room's lane.
CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    room_id      TEXT NOT NULL,
    sender       TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    event_json   TEXT NOT NULL,
    txn_id       TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  BIGINT,
    finished_at  BIGINT,
    last_error   TEXT
);
CREATE INDEX inbox_pending_by_room ON inbox (room_id, id) WHERE state = 'pending';

-- One row per Letta agent we have seen; kept after deletion so old rooms stay explained.
CREATE TABLE agents (
    agent_id      TEXT PRIMARY KEY,
    ghost_user_id TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    description   TEXT,
    room_id       TEXT,
    room_alias    TEXT UNIQUE,
    sync_step     TEXT NOT NULL DEFAULT 'new',
    letta_updated_at TEXT,
    deleted_at    BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Rooms an agent takes part in beyond its own room (DMs, group rooms it was invited to).
CREATE TABLE agent_rooms (
    room_id    TEXT NOT NULL,
    agent_id   TEXT NOT NULL REFERENCES agents (agent_id),
    kind       TEXT NOT NULL,
    joined_at  BIGINT NOT NULL,
    left_at    BIGINT,
    PRIMARY KEY (room_id, agent_id)
);

-- Named rooms the bridge itself owns, such as the "Letta Agents" space.
CREATE TABLE bridge_rooms (
    name       TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
