-- Configuration the bridge has carried out in Matrix, so that a change (a person added to
-- `invite`) reaches the rooms that already exist, once.
CREATE TABLE applied_settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    applied_at BIGINT NOT NULL
);
