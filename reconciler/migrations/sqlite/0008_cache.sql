-- Step caching: an attempt of a cached step records its cache key; a later attempt with the
-- same key may reuse its outputs instead of running, recorded with state 'cached' and the
-- attempt it reused. A run can be asked to run every step (`trainyard run --no-cache`).
--
-- SQLite cannot change a CHECK constraint, so step_attempts is copied into a new table. No
-- table refers to it, so this runs in sqlx's transaction with foreign keys on.
CREATE TABLE step_attempts_new (
    run_id INTEGER NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL CHECK (attempt > 0),
    job TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled', 'cached')),
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    exit_code INTEGER,
    message TEXT,
    submitted_at INTEGER,
    running_at INTEGER,
    cache_key TEXT,
    reused_run INTEGER,
    reused_step TEXT,
    reused_attempt INTEGER,
    PRIMARY KEY (run_id, step, attempt),
    FOREIGN KEY (run_id, step) REFERENCES steps (run_id, name),
    CHECK ((state = 'cached') = (reused_run IS NOT NULL))
);
INSERT INTO step_attempts_new (run_id, step, attempt, job, state, created_at, finished_at,
        exit_code, message, submitted_at, running_at)
    SELECT run_id, step, attempt, job, state, created_at, finished_at, exit_code, message,
        submitted_at, running_at
    FROM step_attempts;
DROP TABLE step_attempts;
ALTER TABLE step_attempts_new RENAME TO step_attempts;
CREATE INDEX step_attempts_unfinished ON step_attempts (run_id, step) WHERE finished_at IS NULL;
CREATE INDEX step_attempts_by_cache_key ON step_attempts (cache_key, finished_at)
    WHERE cache_key IS NOT NULL AND state = 'succeeded';

ALTER TABLE runs ADD COLUMN no_cache INTEGER NOT NULL DEFAULT 0 CHECK (no_cache IN (0, 1));

-- Sweeps: a model made by a matrix step records which instance won its select, and with
-- which values (NULL for a model of a plain step).
ALTER TABLE model_versions ADD COLUMN selected TEXT;
