-- Finally steps: a step of a run is either of the DAG or one of the pipeline's finally
-- steps, which start once the DAG has ended. A run records how its DAG ended (NULL while it
-- runs), which finally steps read as run.state and which decides the run's state.
ALTER TABLE steps ADD COLUMN is_finally BIGINT NOT NULL DEFAULT 0 CHECK (is_finally IN (0, 1));
ALTER TABLE runs ADD COLUMN dag_state TEXT CHECK (dag_state IN ('succeeded', 'failed', 'cancelled'));
