-- Backfill: a run can be started by `trainyard backfill` for a past fire time of a
-- schedule, recorded as a tick like a live one (the same unique key), with trigger
-- 'backfill'.
--
-- SQLite cannot change a CHECK constraint, so runs is copied into a new table. Other tables
-- refer to runs, so foreign keys are off while it is replaced (they can only be switched
-- outside a transaction: this migration runs without sqlx's and brings its own). Running it
-- again, after a crash before it was recorded, copies the new table the same way.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE runs_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    pipeline_version TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    triggered_by TEXT NOT NULL
        CHECK (triggered_by IN ('schedule', 'change', 'manual', 'preview', 'backfill')),
    schedule TEXT REFERENCES schedules (name),
    scheduled_at INTEGER,
    params TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    -- The commit whose application created the run, so a repeated apply returns the same runs.
    applied_commit TEXT REFERENCES commits (sha),
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER
);
INSERT INTO runs_new (id, pipeline, pipeline_version, commit_sha, triggered_by, schedule,
        scheduled_at, params, state, message, cancel_requested, applied_commit, created_at,
        started_at, finished_at)
    SELECT id, pipeline, pipeline_version, commit_sha, triggered_by, schedule, scheduled_at,
        params, state, message, cancel_requested, applied_commit, created_at, started_at,
        finished_at
    FROM runs;
-- Ids are never reused: the new table continues the old one's sequence.
DELETE FROM sqlite_sequence WHERE name = 'runs_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'runs_new', seq FROM sqlite_sequence WHERE name = 'runs';
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_unfinished ON runs (id) WHERE state IN ('pending', 'running');
CREATE INDEX runs_by_schedule ON runs (schedule, state);
CREATE INDEX runs_by_pipeline ON runs (pipeline, id);
CREATE INDEX runs_by_applied_commit ON runs (applied_commit);
COMMIT;
PRAGMA foreign_keys = ON;
