-- A transaction is known by a SHA-256 of its id, a fixed size whatever the homeserver sends
-- (PostgreSQL can neither index a 10,000-character id nor store a NUL), and by a SHA-256 of the
-- ids of the events it stored: Synapse on SQLite numbers transactions from 1 again after a restart,
-- and a reused id that brings other events must be processed, not acknowledged unread.
-- The old rows only answered retries of the latest transaction; a retry processed again stores
-- nothing twice, because the inbox is unique by event id.
DROP TABLE processed_transactions;
CREATE TABLE processed_transactions (
    txn_key     TEXT PRIMARY KEY,
    events_key  TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
