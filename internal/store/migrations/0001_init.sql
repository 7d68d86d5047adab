-- Workloads keep their spec as JSON (without the archive) so new spec fields need no
-- migration; the columns that lists filter and sort on are real columns with indexes.
CREATE TABLE workloads (
    id          TEXT PRIMARY KEY,
    status      TEXT    NOT NULL,
    runtime     TEXT    NOT NULL,
    isolation   TEXT    NOT NULL,
    backend     TEXT    NOT NULL DEFAULT '',
    spec        TEXT    NOT NULL,
    exit_code   INTEGER,
    output      TEXT    NOT NULL DEFAULT '',
    stdout      TEXT    NOT NULL DEFAULT '',
    stderr      TEXT    NOT NULL DEFAULT '',
    truncated   INTEGER NOT NULL DEFAULT 0,
    error       TEXT    NOT NULL DEFAULT '',
    metadata    TEXT    NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL, -- unix nanoseconds
    started_at  INTEGER,
    finished_at INTEGER
);
CREATE INDEX workloads_status    ON workloads (status, id);
CREATE INDEX workloads_runtime   ON workloads (runtime, id);
CREATE INDEX workloads_isolation ON workloads (isolation, id);

-- Archives can be megabytes; keeping them out of the workloads rows keeps lists and
-- updates from dragging them through the page cache.
CREATE TABLE workload_archives (
    workload_id TEXT PRIMARY KEY REFERENCES workloads (id) ON DELETE CASCADE,
    data        BLOB NOT NULL
);

CREATE TABLE log_lines (
    workload_id TEXT    NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    stream      TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    time        INTEGER NOT NULL,
    PRIMARY KEY (workload_id, seq)
) WITHOUT ROWID;
