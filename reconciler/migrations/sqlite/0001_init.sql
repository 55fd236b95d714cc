-- Trainyard's store on SQLite. Times are unix milliseconds UTC, JSON is TEXT, flags are 0/1.

CREATE TABLE cursors (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE commits (
    sha TEXT PRIMARY KEY NOT NULL,
    applied_at INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'rejected')),
    summary TEXT NOT NULL
);

CREATE TABLE pipeline_versions (
    pipeline TEXT NOT NULL,
    version TEXT NOT NULL,
    commit_sha TEXT NOT NULL REFERENCES commits (sha),
    file TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, version)
);

CREATE TABLE pipelines (
    name TEXT PRIMARY KEY NOT NULL,
    version TEXT NOT NULL,
    commit_sha TEXT NOT NULL REFERENCES commits (sha),
    file TEXT NOT NULL,
    retired_at INTEGER,
    FOREIGN KEY (name, version) REFERENCES pipeline_versions (pipeline, version)
);

CREATE TABLE schedules (
    name TEXT PRIMARY KEY NOT NULL,
    pipeline TEXT NOT NULL,
    version TEXT NOT NULL,
    definition TEXT NOT NULL,
    commit_sha TEXT NOT NULL REFERENCES commits (sha),
    file TEXT NOT NULL,
    active_since INTEGER NOT NULL,
    last_tick_at INTEGER,
    suspended INTEGER NOT NULL CHECK (suspended IN (0, 1)),
    paused_at INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    retired_at INTEGER
);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    pipeline_version TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    triggered_by TEXT NOT NULL CHECK (triggered_by IN ('schedule', 'change', 'manual', 'preview')),
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
CREATE INDEX runs_unfinished ON runs (id) WHERE state IN ('pending', 'running');
CREATE INDEX runs_by_schedule ON runs (schedule, state);
CREATE INDEX runs_by_pipeline ON runs (pipeline, id);
CREATE INDEX runs_by_applied_commit ON runs (applied_commit);

CREATE TABLE ticks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule TEXT NOT NULL REFERENCES schedules (name),
    scheduled_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('fired', 'skipped', 'missed')),
    reason TEXT,
    run_id INTEGER REFERENCES runs (id),
    UNIQUE (schedule, scheduled_at)
);

CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('waiting', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    attempt INTEGER NOT NULL DEFAULT 0,
    job TEXT,
    retry_at INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    exit_code INTEGER,
    message TEXT,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE step_attempts (
    run_id INTEGER NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL CHECK (attempt > 0),
    job TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    exit_code INTEGER,
    message TEXT,
    PRIMARY KEY (run_id, step, attempt),
    FOREIGN KEY (run_id, step) REFERENCES steps (run_id, name)
);

CREATE TABLE artifacts (
    run_id INTEGER NOT NULL,
    step TEXT NOT NULL,
    output TEXT NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step, output),
    FOREIGN KEY (run_id, step) REFERENCES steps (run_id, name)
);

-- One row per model name holding its newest version number, so concurrent registrations
-- serialise on this row instead of racing on max(version).
CREATE TABLE models (
    name TEXT PRIMARY KEY NOT NULL,
    latest_version INTEGER NOT NULL
);

CREATE TABLE model_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version INTEGER,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    state TEXT NOT NULL CHECK (state IN ('accepted', 'rejected')),
    metrics TEXT NOT NULL,
    gates TEXT NOT NULL,
    reasons TEXT,
    artifact_uri TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    pipeline_version TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (model, version),
    UNIQUE (run_id, model),
    CHECK ((state = 'accepted') = (version IS NOT NULL))
);

CREATE TABLE model_aliases (
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_sha TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('status', 'comment')),
    report_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'superseded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
);
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_by_context ON outbox (commit_sha, kind, report_key, id)
    WHERE state = 'pending';
