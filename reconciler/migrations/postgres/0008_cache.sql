-- Step caching: an attempt of a cached step records its cache key; a later attempt with the
-- same key may reuse its outputs instead of running, recorded with state 'cached' and the
-- attempt it reused. A run can be asked to run every step (`trainyard run --no-cache`).
ALTER TABLE step_attempts DROP CONSTRAINT step_attempts_state_check;
ALTER TABLE step_attempts ADD CONSTRAINT step_attempts_state_check
    CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled', 'cached'));
ALTER TABLE step_attempts ADD COLUMN cache_key TEXT;
ALTER TABLE step_attempts ADD COLUMN reused_run BIGINT;
ALTER TABLE step_attempts ADD COLUMN reused_step TEXT;
ALTER TABLE step_attempts ADD COLUMN reused_attempt BIGINT;
ALTER TABLE step_attempts ADD CONSTRAINT step_attempts_reused_check
    CHECK ((state = 'cached') = (reused_run IS NOT NULL));
CREATE INDEX step_attempts_by_cache_key ON step_attempts (cache_key, finished_at)
    WHERE cache_key IS NOT NULL AND state = 'succeeded';

ALTER TABLE runs ADD COLUMN no_cache BIGINT NOT NULL DEFAULT 0 CHECK (no_cache IN (0, 1));

-- Sweeps: a model made by a matrix step records which instance won its select, and with
-- which values (NULL for a model of a plain step).
ALTER TABLE model_versions ADD COLUMN selected TEXT;
