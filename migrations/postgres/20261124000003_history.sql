-- One history import per agent: its cutoff (only messages Letta had before it are imported), how
-- far it got (resumable after a crash), and a lease so one worker runs it.
CREATE TABLE history_imports (
    agent_id         TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    cutoff_ms        BIGINT NOT NULL,
    last_letta_id    TEXT,
    imported         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      BIGINT,
    requested_at     BIGINT NOT NULL,
    finished_at      BIGINT,
    last_error       TEXT
);
