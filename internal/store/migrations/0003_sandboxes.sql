-- Sandboxes: long-lived VMs. The spec is JSON without env values (they are secrets and a
-- sandbox never outlives its server, so only the live service holds them).
CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY,
    state       TEXT    NOT NULL,
    template    TEXT    NOT NULL,
    spec        TEXT    NOT NULL,
    metadata    TEXT    NOT NULL DEFAULT '{}',
    vm          TEXT    NOT NULL DEFAULT '{}',
    error       TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL, -- unix nanoseconds
    started_at  INTEGER,
    ended_at    INTEGER,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sandboxes_state ON sandboxes (state, id);

-- One row per metadata pair, for filtering lists by metadata.
CREATE TABLE sandbox_metadata (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, key)
) WITHOUT ROWID;
CREATE INDEX sandbox_metadata_kv ON sandbox_metadata (key, value);
