-- Backfill: a run can be started by `trainyard backfill` for a past fire time of a
-- schedule, recorded as a tick like a live one (the same unique key), with trigger
-- 'backfill'.
ALTER TABLE runs DROP CONSTRAINT runs_triggered_by_check;
ALTER TABLE runs ADD CONSTRAINT runs_triggered_by_check
    CHECK (triggered_by IN ('schedule', 'change', 'manual', 'preview', 'backfill'));
