-- Pull requests as the forge last described them, the pipeline versions of their heads that
-- previews run, and which comment asked for which preview run.

CREATE TABLE pull_requests (
    number BIGINT PRIMARY KEY NOT NULL,
    head_sha TEXT NOT NULL,
    head_ref TEXT NOT NULL,
    base_ref TEXT NOT NULL,
    from_fork BIGINT NOT NULL CHECK (from_fork IN (0, 1)),
    author TEXT NOT NULL,
    is_open BIGINT NOT NULL CHECK (is_open IN (0, 1)),
    updated_at BIGINT NOT NULL
);

-- Versions read from a pull request's head: runs pin them, but the followed branch does not
-- declare them, so they stay out of pipeline_versions (whose rows are applied commits').
CREATE TABLE preview_versions (
    pipeline TEXT NOT NULL,
    version TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    file TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (pipeline, version)
);

-- One preview run per command comment, so handling a comment again starts nothing new.
CREATE TABLE previews (
    comment_id BIGINT PRIMARY KEY NOT NULL,
    pull_request BIGINT NOT NULL,
    run_id BIGINT NOT NULL REFERENCES runs (id)
);
