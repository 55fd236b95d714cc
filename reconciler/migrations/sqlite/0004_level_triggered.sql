-- Level-triggered reconciling. Each attempt records when it was recorded (created_at), when
-- the executor accepted it (submitted_at: the Job exists, the process started) and when its
-- program began running (running_at), so queued time is told apart from run time and an
-- attempt recorded but never accepted is created again instead of waiting for ever. A
-- step counts the failures charged against its retries (a shutdown of the service is not
-- the step's failure). A schedule that cannot be read is stalled with the reason; a forge
-- event records what became of it. The installation's identity is created once.
ALTER TABLE step_attempts RENAME COLUMN started_at TO created_at;
ALTER TABLE step_attempts ADD COLUMN submitted_at INTEGER;
ALTER TABLE step_attempts ADD COLUMN running_at INTEGER;
UPDATE step_attempts SET submitted_at = created_at;
CREATE INDEX step_attempts_unfinished ON step_attempts (run_id, step) WHERE finished_at IS NULL;

ALTER TABLE steps ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
UPDATE steps SET failures = (
    SELECT COUNT(*) FROM step_attempts a
    WHERE a.run_id = steps.run_id AND a.step = steps.name AND a.state = 'failed');

ALTER TABLE schedules ADD COLUMN stalled_at INTEGER;
ALTER TABLE schedules ADD COLUMN stalled_reason TEXT;

ALTER TABLE forge_events ADD COLUMN outcome TEXT;

CREATE TABLE installation (
    id TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);
