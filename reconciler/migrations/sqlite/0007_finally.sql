-- Finally steps: a step of a run is either of the DAG or one of the pipeline's finally
-- steps, which start once the DAG has ended. A run records how its DAG ended (NULL while it
-- runs), which finally steps read as run.state and which decides the run's state.
--
-- Columns added with defaults: no table is copied, and every existing step is of the DAG.
ALTER TABLE steps ADD COLUMN is_finally INTEGER NOT NULL DEFAULT 0 CHECK (is_finally IN (0, 1));
ALTER TABLE runs ADD COLUMN dag_state TEXT CHECK (dag_state IN ('succeeded', 'failed', 'cancelled'));
