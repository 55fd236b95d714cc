-- Check runs: the outbox takes a third kind of report, and a check run's button starts one
-- preview run per pipeline it names, so handling its event again starts nothing new.
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check
    CHECK (kind IN ('status', 'comment', 'check_run'));

CREATE TABLE action_previews (
    check_run_id BIGINT NOT NULL,
    pipeline TEXT NOT NULL,
    pull_request BIGINT NOT NULL,
    run_id BIGINT NOT NULL REFERENCES runs (id),
    PRIMARY KEY (check_run_id, pipeline)
);
CREATE INDEX action_previews_run ON action_previews (run_id);
