-- Check runs: the outbox takes a third kind of report, and a check run's button starts one
-- preview run per pipeline it names, so handling its event again starts nothing new.
-- SQLite cannot change a CHECK constraint, so the outbox is copied into a new table.
CREATE TABLE outbox_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_sha TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('status', 'comment', 'check_run')),
    report_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'superseded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
);
INSERT INTO outbox_new (id, commit_sha, kind, report_key, payload, state, attempts,
        next_attempt_at, last_error, created_at, delivered_at)
    SELECT id, commit_sha, kind, report_key, payload, state, attempts, next_attempt_at,
        last_error, created_at, delivered_at
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_by_context ON outbox (commit_sha, kind, report_key, id)
    WHERE state = 'pending';

CREATE TABLE action_previews (
    check_run_id INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    pull_request INTEGER NOT NULL,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    PRIMARY KEY (check_run_id, pipeline)
);
CREATE INDEX action_previews_run ON action_previews (run_id);
