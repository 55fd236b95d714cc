//! Runs, their steps, step attempts and artifacts: what the run loop reads and records.
//!
//! The run loop reads all of its work in three queries ([`Store::unfinished_work`]) and
//! records the attempts a pass starts in one transaction of multi-row statements
//! ([`Store::start_attempts`]) before any is handed to the executor, so a thousand runs due
//! in one second cost a handful of round trips, not thousands.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::cache::reused_of;
use super::outbox::enqueue;
use super::{
    ArtifactRow, AttemptOutcome, AttemptRow, AttemptState, Cells, NewArtifact, NewAttempt,
    NewReport, NewRun, OpenAttempt, ROWS_PER_STATEMENT, Result, RunRow, RunState, RunWork, StepRow,
    StepState, StepWork, Store, StoreError, Trigger, millis, opt_millis, to_json, value_rows,
};

/// The columns of [`RunRow`], for `concat!`.
macro_rules! run_columns {
    () => {
        "SELECT r.id, r.pipeline, r.pipeline_version, r.commit_sha, r.triggered_by, r.schedule,
             r.scheduled_at, r.params, r.state, r.message, r.cancel_requested, r.dag_state,
             r.no_cache, r.created_at, r.started_at, r.finished_at
         FROM runs r "
    };
}

/// The columns of [`StepRow`], for `concat!`.
macro_rules! step_columns {
    () => {
        "SELECT s.run_id, s.name, s.is_finally, s.state, s.attempt, s.failures, s.job,
             s.retry_at, s.started_at, s.finished_at, s.exit_code, s.message
         FROM steps s "
    };
}

/// Creates a pending run with its steps waiting, inside the caller's transaction.
pub(super) async fn insert_run(
    conn: &mut AnyConnection,
    run: &NewRun,
    applied_commit: Option<&str>,
    at: DateTime<Utc>,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (pipeline, pipeline_version, commit_sha, triggered_by, schedule,
             scheduled_at, params, state, message, cancel_requested, applied_commit, created_at,
             started_at, finished_at, no_cache)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, 0, $8, $9, NULL, NULL, $10)
         RETURNING id",
    )
    .bind(&run.pipeline)
    .bind(&run.pipeline_version)
    .bind(&run.commit_sha)
    .bind(run.trigger.as_str())
    .bind(run.schedule.as_deref())
    .bind(opt_millis(run.scheduled_at))
    .bind(to_json("a run's params", &run.params)?)
    .bind(applied_commit)
    .bind(millis(at))
    .bind(i64::from(run.no_cache))
    .fetch_one(&mut *conn)
    .await?;
    for (ordinal, (step, finally)) in (0_i64..).zip(steps_of(run)) {
        sqlx::query(
            "INSERT INTO steps (run_id, name, ordinal, is_finally, state, attempt)
             VALUES ($1, $2, $3, $4, 'waiting', 0)",
        )
        .bind(id)
        .bind(step)
        .bind(ordinal)
        .bind(i64::from(finally))
        .execute(&mut *conn)
        .await?;
    }
    Ok(id)
}

/// A new run's steps in the order they are stored, each with whether it is a finally step.
fn steps_of(run: &NewRun) -> impl Iterator<Item = (&str, bool)> {
    let dag = run.steps.iter().map(|s| (s.as_str(), false));
    dag.chain(run.finally.iter().map(|s| (s.as_str(), true)))
}

/// Inserts the runs of newly recorded ticks (each with its schedule and tick time, which
/// identify it) and their waiting steps with a few multi-row statements; returns each run's
/// id by (schedule, tick time in milliseconds).
pub(super) async fn insert_tick_runs(
    conn: &mut AnyConnection,
    runs: &[&NewRun],
    at: DateTime<Utc>,
) -> Result<HashMap<(String, i64), i64>> {
    let mut ids = HashMap::with_capacity(runs.len());
    for chunk in runs.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO runs (pipeline, pipeline_version, commit_sha, triggered_by, schedule,
                 scheduled_at, params, state, message, cancel_requested, applied_commit,
                 created_at, started_at, finished_at, no_cache)
             VALUES {}
             RETURNING id, schedule, scheduled_at",
            value_rows(
                chunk.len(),
                "(?, ?, ?, ?, ?, ?, ?, 'pending', NULL, 0, NULL, ?, NULL, NULL, ?)"
            )
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for run in chunk {
            query = query
                .bind(&run.pipeline)
                .bind(&run.pipeline_version)
                .bind(&run.commit_sha)
                .bind(run.trigger.as_str())
                .bind(run.schedule.as_deref())
                .bind(opt_millis(run.scheduled_at))
                .bind(to_json("a run's params", &run.params)?)
                .bind(millis(at))
                .bind(i64::from(run.no_cache));
        }
        for row in query.fetch_all(&mut *conn).await? {
            let schedule: Option<String> = row.try_get("schedule")?;
            let scheduled_at: Option<i64> = row.try_get("scheduled_at")?;
            if let (Some(schedule), Some(scheduled_at)) = (schedule, scheduled_at) {
                ids.insert((schedule, scheduled_at), row.try_get("id")?);
            }
        }
    }
    if ids.len() != runs.len() {
        return Err(StoreError::Invalid(format!(
            "{} tick runs were written for {} ticks: a run without its schedule and tick time, \
             or two for one tick",
            ids.len(),
            runs.len()
        )));
    }
    let steps: Vec<(i64, i64, &str, bool)> = runs
        .iter()
        .filter_map(|run| {
            let key = (run.schedule.clone()?, millis(run.scheduled_at?));
            Some((*ids.get(&key)?, *run))
        })
        .flat_map(|(id, run)| {
            (0_i64..)
                .zip(steps_of(run))
                .map(move |(i, (s, finally))| (id, i, s, finally))
        })
        .collect();
    for chunk in steps.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO steps (run_id, name, ordinal, is_finally, state, attempt) VALUES {}",
            value_rows(chunk.len(), "(?, ?, ?, ?, 'waiting', 0)")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (run_id, ordinal, name, finally) in chunk {
            query = query
                .bind(*run_id)
                .bind(*name)
                .bind(*ordinal)
                .bind(i64::from(*finally));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(ids)
}

/// Ends run `run_id` as `state` inside the caller's transaction, enqueueing `reports`.
///
/// For a scheduled run, the schedule's failure streak resets on success and grows on
/// failure; when it reaches `pause_after_failures` the schedule is paused at `at`. A
/// cancelled run leaves the streak alone. Returns false, writing nothing, if the run had
/// already finished.
async fn finish_run_in<P: Serialize>(
    conn: &mut AnyConnection,
    run_id: i64,
    state: RunState,
    message: &str,
    at: DateTime<Utc>,
    reports: &[NewReport<P>],
    pause_after_failures: Option<u32>,
) -> Result<bool> {
    if !state.is_finished() {
        return Err(StoreError::Invalid(format!(
            "a run cannot finish as {state}"
        )));
    }
    let finished = sqlx::query(
        "UPDATE runs SET state = $2, message = $3, finished_at = $4
         WHERE id = $1 AND state IN ('pending', 'running')
         RETURNING triggered_by, schedule",
    )
    .bind(run_id)
    .bind(state.as_str())
    .bind(message)
    .bind(millis(at))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(finished) = finished else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await?;
        return match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound {
                what: "run",
                key: run_id.to_string(),
            }),
        };
    };
    let cells = Cells::new(&finished, "runs", run_id);
    let trigger = cells.word("triggered_by", Trigger::from_stored)?;
    let schedule: Option<String> = cells.get("schedule")?;
    if let (Trigger::Schedule, Some(schedule)) = (trigger, schedule) {
        match state {
            RunState::Succeeded => {
                sqlx::query("UPDATE schedules SET consecutive_failures = 0 WHERE name = $1")
                    .bind(&schedule)
                    .execute(&mut *conn)
                    .await?;
            }
            RunState::Failed => {
                let failures: i64 = sqlx::query_scalar(
                    "UPDATE schedules SET consecutive_failures = consecutive_failures + 1
                     WHERE name = $1 RETURNING consecutive_failures",
                )
                .bind(&schedule)
                .fetch_one(&mut *conn)
                .await?;
                if pause_after_failures.is_some_and(|limit| failures >= i64::from(limit)) {
                    sqlx::query(
                        "UPDATE schedules SET paused_at = $2
                         WHERE name = $1 AND paused_at IS NULL",
                    )
                    .bind(&schedule)
                    .bind(millis(at))
                    .execute(&mut *conn)
                    .await?;
                }
            }
            _ => {}
        }
    }
    enqueue(conn, reports, at).await?;
    Ok(true)
}

impl Store {
    /// Creates a run outside of commits and ticks (manual and preview runs). Its creation
    /// time is now; a running service is told (see [`super::RequestSignals`]).
    pub async fn create_run(&self, run: &NewRun) -> Result<i64> {
        let mut tx = self.write().await?;
        let id = insert_run(&mut tx, run, None, Utc::now()).await?;
        tx.commit().await?;
        self.announce_request().await;
        Ok(id)
    }

    /// The runs applying commit `sha` started (those its change triggered), oldest first;
    /// each row read on its own.
    pub async fn runs_of_commit(&self, sha: &str) -> Result<Vec<Result<RunRow>>> {
        Ok(sqlx::query(concat!(
            run_columns!(),
            "WHERE r.applied_commit = $1 ORDER BY r.id"
        ))
        .bind(sha)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect())
    }

    /// Ids of the runs pending or running, oldest first.
    pub async fn unfinished_run_ids(&self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE state IN ('pending', 'running') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every run pending or running, oldest first, by id, with its steps and their open
    /// attempts: three queries, however many runs there are. A run any of whose rows cannot
    /// be read comes back as that error, on its own.
    pub async fn unfinished_work(&self) -> Result<Vec<(i64, Result<RunWork>)>> {
        let runs = sqlx::query(concat!(
            run_columns!(),
            "WHERE r.state IN ('pending', 'running') ORDER BY r.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let steps = sqlx::query(concat!(
            step_columns!(),
            "JOIN runs r ON r.id = s.run_id
             WHERE r.state IN ('pending', 'running') ORDER BY s.run_id, s.ordinal"
        ))
        .fetch_all(&self.pool)
        .await?;
        let open = sqlx::query(
            "SELECT a.run_id, a.step, a.attempt, a.job, a.created_at, a.submitted_at,
                 a.running_at, a.message
             FROM step_attempts a JOIN runs r ON r.id = a.run_id
             WHERE a.finished_at IS NULL AND r.state IN ('pending', 'running')",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut attempts: HashMap<(i64, String), Result<OpenAttempt>> = HashMap::new();
        for row in &open {
            let run_id: i64 = row.try_get("run_id")?;
            let step: String = row.try_get("step")?;
            let key = format!("{run_id}/{step}");
            let cells = Cells::new(row, "step_attempts", &key);
            let attempt = (|| {
                Ok(OpenAttempt {
                    attempt: cells.count("attempt")?,
                    job: cells.get("job")?,
                    created_at: cells.time("created_at")?,
                    submitted_at: cells.opt_time("submitted_at")?,
                    running_at: cells.opt_time("running_at")?,
                    message: cells.get("message")?,
                })
            })();
            // Only the newest attempt of a step can be open; an older one left open (a
            // crash between two writes of an older version) is the step's business.
            let newer = match (attempts.get(&(run_id, step.clone())), &attempt) {
                (Some(Ok(known)), Ok(this)) => this.attempt > known.attempt,
                _ => true,
            };
            if newer {
                attempts.insert((run_id, step), attempt);
            }
        }
        let mut steps_of: HashMap<i64, Vec<Result<StepWork>>> = HashMap::new();
        for row in &steps {
            let run_id: i64 = row.try_get("run_id")?;
            let work = step_row(row).and_then(|step| {
                let open = attempts
                    .remove(&(run_id, step.name.clone()))
                    .transpose()?
                    .filter(|a| a.attempt == step.attempt);
                Ok(StepWork { step, open })
            });
            steps_of.entry(run_id).or_default().push(work);
        }
        runs.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let steps = steps_of.remove(&id).unwrap_or_default();
                let work = run_row(row).and_then(|run| {
                    let steps = steps.into_iter().collect::<Result<Vec<_>>>()?;
                    Ok(RunWork { run, steps })
                });
                Ok((id, work))
            })
            .collect()
    }

    /// The runs whose every step succeeded and that have not finished: what the registry
    /// loop completes, oldest first.
    pub async fn runs_to_complete(&self) -> Result<Vec<Result<RunRow>>> {
        Ok(sqlx::query(concat!(
            run_columns!(),
            "WHERE r.state = 'running' AND NOT EXISTS (
                 SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.state <> 'succeeded')
             ORDER BY r.id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect())
    }

    /// One run.
    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        sqlx::query(concat!(run_columns!(), "WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| run_row(&row))
            .transpose()
    }

    /// Runs newest first, of one pipeline or all, at most `limit`; each row read on its own.
    pub async fn list_runs(
        &self,
        pipeline: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Result<RunRow>>> {
        Ok(sqlx::query(concat!(
            run_columns!(),
            "WHERE ($1 IS NULL OR r.pipeline = $1) ORDER BY r.id DESC LIMIT $2"
        ))
        .bind(pipeline)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect())
    }

    /// The steps of a run in definition order.
    pub async fn steps(&self, run_id: i64) -> Result<Vec<StepRow>> {
        sqlx::query(concat!(
            step_columns!(),
            "WHERE s.run_id = $1 ORDER BY s.ordinal"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(step_row)
        .collect()
    }

    /// Every attempt of every step of a run, by step order then attempt.
    pub async fn attempts(&self, run_id: i64) -> Result<Vec<AttemptRow>> {
        sqlx::query(
            "SELECT a.run_id, a.step, a.attempt, a.job, a.state, a.created_at, a.submitted_at,
                 a.running_at, a.finished_at, a.exit_code, a.message, a.reused_run,
                 a.reused_step, a.reused_attempt
             FROM step_attempts a
             JOIN steps s ON s.run_id = a.run_id AND s.name = a.step
             WHERE a.run_id = $1 ORDER BY s.ordinal, a.attempt",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(attempt_row)
        .collect()
    }

    /// Records attempts before they are handed to the executor, all in one transaction: each
    /// step runs its attempt, and each run is running from `at` if it was pending.
    ///
    /// Returns, for each attempt, whether it is new; one recorded before writes nothing.
    pub async fn start_attempts(
        &self,
        attempts: &[NewAttempt],
        at: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        if let Some(bad) = attempts.iter().find(|a| a.attempt == 0) {
            return Err(StoreError::Invalid(format!(
                "attempts are numbered from 1 ({}/{})",
                bad.run_id, bad.step
            )));
        }
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        let at = millis(at);
        let mut tx = self.write().await?;
        // The steps move to their new attempt, unless one as new was started before.
        let mut moved: HashSet<(i64, String)> = HashSet::new();
        for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE steps SET state = 'running', attempt = v.column3, job = v.column4,
                     retry_at = NULL, started_at = COALESCE(started_at, v.column5),
                     finished_at = NULL, exit_code = NULL, message = NULL
                 FROM (VALUES {}) AS v
                 WHERE steps.run_id = v.column1 AND steps.name = v.column2
                     AND steps.attempt < v.column3
                 RETURNING run_id, name",
                value_rows(chunk.len(), "(?, ?, ?, ?, ?)")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for attempt in chunk {
                query = query
                    .bind(attempt.run_id)
                    .bind(&attempt.step)
                    .bind(i64::from(attempt.attempt))
                    .bind(&attempt.job)
                    .bind(at);
            }
            for row in query.fetch_all(&mut *tx).await? {
                moved.insert((row.try_get("run_id")?, row.try_get("name")?));
            }
        }
        let mut new = Vec::with_capacity(attempts.len());
        let mut started = Vec::new();
        for attempt in attempts {
            let is_new = moved.contains(&(attempt.run_id, attempt.step.clone()));
            if !is_new {
                // Rare: a pass that crashed after recording it, or a step that is not there.
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT attempt FROM steps WHERE run_id = $1 AND name = $2")
                        .bind(attempt.run_id)
                        .bind(&attempt.step)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound {
                        what: "step",
                        key: format!("{}/{}", attempt.run_id, attempt.step),
                    });
                }
            } else {
                started.push(attempt);
            }
            new.push(is_new);
        }
        for chunk in started.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO step_attempts (run_id, step, attempt, job, state, created_at,
                     cache_key)
                 VALUES {}",
                value_rows(chunk.len(), "(?, ?, ?, ?, 'running', ?, ?)")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for attempt in chunk {
                query = query
                    .bind(attempt.run_id)
                    .bind(&attempt.step)
                    .bind(i64::from(attempt.attempt))
                    .bind(&attempt.job)
                    .bind(at)
                    .bind(attempt.cache_key.as_deref());
            }
            query.execute(&mut *tx).await?;
        }
        let mut runs: Vec<i64> = started.iter().map(|a| a.run_id).collect();
        runs.sort_unstable();
        runs.dedup();
        for chunk in runs.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE runs SET state = 'running', started_at = $1
                 WHERE state = 'pending' AND id IN ({})",
                (2..chunk.len() + 2)
                    .map(|n| format!("${n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(at);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Records that the executor accepted these attempts at `at` (kept if recorded before),
    /// in one transaction, clearing any problem noted while handing them over.
    pub async fn mark_submitted(
        &self,
        attempts: &[(i64, String, u32)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for (run_id, step, attempt) in attempts {
            let done = sqlx::query(
                "UPDATE step_attempts SET submitted_at = COALESCE(submitted_at, $4),
                     message = NULL
                 WHERE run_id = $1 AND step = $2 AND attempt = $3 AND finished_at IS NULL",
            )
            .bind(run_id)
            .bind(step)
            .bind(i64::from(*attempt))
            .bind(millis(at))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                sqlx::query(
                    "UPDATE steps SET message = NULL
                     WHERE run_id = $1 AND name = $2 AND attempt = $3 AND state = 'running'",
                )
                .bind(run_id)
                .bind(step)
                .bind(i64::from(*attempt))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records when an attempt's program began to run (kept if recorded before); an attempt
    /// that runs was accepted, at the latest then.
    pub async fn mark_running(
        &self,
        run_id: i64,
        step: &str,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE step_attempts SET running_at = COALESCE(running_at, $4),
                 submitted_at = COALESCE(submitted_at, $4), message = NULL
             WHERE run_id = $1 AND step = $2 AND attempt = $3 AND finished_at IS NULL",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(millis(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes why an attempt has not been accepted by the executor yet (the cluster refused
    /// or failed its create), on the attempt and on its step, where people look.
    pub async fn note_submit_problem(
        &self,
        run_id: i64,
        step: &str,
        attempt: u32,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE step_attempts SET message = $4
             WHERE run_id = $1 AND step = $2 AND attempt = $3 AND finished_at IS NULL
                 AND submitted_at IS NULL",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(message)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            sqlx::query(
                "UPDATE steps SET message = $4
                 WHERE run_id = $1 AND name = $2 AND attempt = $3 AND state = 'running'",
            )
            .bind(run_id)
            .bind(step)
            .bind(i64::from(attempt))
            .bind(message)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records how an attempt ended, with the outputs it uploaded.
    ///
    /// The step takes the attempt's state, or waits for `retry_at` when that is set. A
    /// failure `charged` to the step counts against its retries. An attempt that is no
    /// longer the step's current one (finished late) changes only its own row, and its
    /// artifacts are not recorded. Returns false, writing nothing, if the attempt had
    /// already finished.
    pub async fn finish_attempt(
        &self,
        run_id: i64,
        step: &str,
        attempt: u32,
        outcome: &AttemptOutcome,
    ) -> Result<bool> {
        let step_state = match (outcome.state, outcome.retry_at) {
            (AttemptState::Running, _) => {
                return Err(StoreError::Invalid(
                    "an attempt cannot finish as running".to_owned(),
                ));
            }
            (AttemptState::Cached, _) => {
                return Err(StoreError::Invalid(
                    "a cached attempt is recorded by Store::record_cached".to_owned(),
                ));
            }
            (AttemptState::Succeeded, Some(_)) => {
                return Err(StoreError::Invalid(
                    "a successful attempt is not retried".to_owned(),
                ));
            }
            (_, Some(_)) => StepState::Waiting,
            (AttemptState::Succeeded, None) => StepState::Succeeded,
            (AttemptState::Failed, None) => StepState::Failed,
            (AttemptState::Cancelled, None) => StepState::Cancelled,
        };
        let charged = outcome.state == AttemptState::Failed && outcome.charged;
        let at = millis(outcome.at);
        let mut tx = self.write().await?;
        let finished = sqlx::query(
            "UPDATE step_attempts SET state = $4, finished_at = $5, exit_code = $6, message = $7
             WHERE run_id = $1 AND step = $2 AND attempt = $3 AND finished_at IS NULL",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(outcome.state.as_str())
        .bind(at)
        .bind(outcome.exit_code.map(i64::from))
        .bind(outcome.message.as_deref())
        .execute(&mut *tx)
        .await?;
        if finished.rows_affected() == 0 {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT attempt FROM step_attempts
                 WHERE run_id = $1 AND step = $2 AND attempt = $3",
            )
            .bind(run_id)
            .bind(step)
            .bind(i64::from(attempt))
            .fetch_optional(&mut *tx)
            .await?;
            tx.rollback().await?;
            return match exists {
                Some(_) => Ok(false),
                None => Err(StoreError::NotFound {
                    what: "step attempt",
                    key: format!("{run_id}/{step}/{attempt}"),
                }),
            };
        }
        let step_finished_at = if step_state == StepState::Waiting {
            None
        } else {
            Some(at)
        };
        let current = sqlx::query(
            "UPDATE steps SET state = $4, retry_at = $5, finished_at = $6, exit_code = $7,
                 message = $8, failures = failures + $9
             WHERE run_id = $1 AND name = $2 AND attempt = $3",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(step_state.as_str())
        .bind(opt_millis(outcome.retry_at))
        .bind(step_finished_at)
        .bind(outcome.exit_code.map(i64::from))
        .bind(outcome.message.as_deref())
        .bind(i64::from(charged))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        // A step's outputs are those of its current attempt; a superseded attempt's uploads
        // would pair outputs with a state they did not produce.
        let artifacts = if current { &outcome.artifacts[..] } else { &[] };
        record_artifacts(&mut tx, run_id, step, artifacts, at).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Fails a waiting step that cannot be started at all (its command does not render),
    /// without an attempt. Returns false if the step was not waiting.
    pub async fn fail_step(
        &self,
        run_id: i64,
        step: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE steps SET state = 'failed', message = $3, finished_at = $4
             WHERE run_id = $1 AND name = $2 AND state = 'waiting'",
        )
        .bind(run_id)
        .bind(step)
        .bind(message)
        .bind(millis(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks waiting steps as skipped (a step they need did not succeed, or the run ends).
    /// Steps in any other state are left alone. Returns how many were skipped.
    pub async fn skip_steps(&self, run_id: i64, names: &[String], message: &str) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut skipped = 0;
        for name in names {
            skipped += sqlx::query(
                "UPDATE steps SET state = 'skipped', message = $3
                 WHERE run_id = $1 AND name = $2 AND state = 'waiting'",
            )
            .bind(run_id)
            .bind(name)
            .bind(message)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(skipped)
    }

    /// Ends a run and enqueues its reports, in one transaction; see [`finish_run_in`].
    /// Returns false, writing nothing, if the run had already finished.
    pub async fn finish_run<P: Serialize>(
        &self,
        run_id: i64,
        state: RunState,
        message: &str,
        at: DateTime<Utc>,
        reports: &[NewReport<P>],
        pause_after_failures: Option<u32>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let finished = finish_run_in(
            &mut tx,
            run_id,
            state,
            message,
            at,
            reports,
            pause_after_failures,
        )
        .await?;
        if finished {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(finished)
    }

    /// Records how the DAG of run `run_id` ended, before its finally steps start, and takes
    /// back the cancel request the run was read with (`cancel_seen`): the DAG's state keeps
    /// it, and a cancel requested from now on stops the finally steps. Writes nothing and
    /// returns false if the DAG's end was recorded already or the cancel request changed
    /// since the run was read.
    pub async fn record_dag_end(
        &self,
        run_id: i64,
        state: RunState,
        cancel_seen: bool,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET dag_state = $2, cancel_requested = 0
             WHERE id = $1 AND dag_state IS NULL AND cancel_requested = $3
                 AND state IN ('pending', 'running')",
        )
        .bind(run_id)
        .bind(state.as_str())
        .bind(i64::from(cancel_seen))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Asks the run loop to stop a run. Returns false if the run had already finished.
    pub async fn request_cancel(&self, run_id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET cancel_requested = 1
             WHERE id = $1 AND state IN ('pending', 'running')",
        )
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The outputs a run's steps uploaded, by step order then output name.
    pub async fn artifacts(&self, run_id: i64) -> Result<Vec<ArtifactRow>> {
        sqlx::query(
            "SELECT a.run_id, a.step, a.output, a.uri, a.sha256, a.size, a.created_at
             FROM artifacts a
             JOIN steps s ON s.run_id = a.run_id AND s.name = a.step
             WHERE a.run_id = $1 ORDER BY s.ordinal, a.output",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(artifact_row)
        .collect()
    }
}

fn run_row(row: &AnyRow) -> Result<RunRow> {
    let id: i64 = row.try_get("id")?;
    let c = Cells::new(row, "runs", id);
    Ok(RunRow {
        id,
        pipeline: c.get("pipeline")?,
        pipeline_version: c.get("pipeline_version")?,
        commit_sha: c.get("commit_sha")?,
        trigger: c.word("triggered_by", Trigger::from_stored)?,
        schedule: c.get("schedule")?,
        scheduled_at: c.opt_time("scheduled_at")?,
        params: c.json("params")?,
        state: c.word("state", RunState::from_stored)?,
        message: c.get("message")?,
        cancel_requested: c.flag("cancel_requested")?,
        dag_state: c.opt_word("dag_state", RunState::from_stored)?,
        no_cache: c.flag("no_cache")?,
        created_at: c.time("created_at")?,
        started_at: c.opt_time("started_at")?,
        finished_at: c.opt_time("finished_at")?,
    })
}

fn step_row(row: &AnyRow) -> Result<StepRow> {
    let run_id: i64 = row.try_get("run_id")?;
    let name: String = row.try_get("name")?;
    let c = Cells::new(row, "steps", format!("{run_id}/{name}"));
    Ok(StepRow {
        run_id,
        finally: c.flag("is_finally")?,
        state: c.word("state", StepState::from_stored)?,
        attempt: c.count("attempt")?,
        failures: c.count("failures")?,
        job: c.get("job")?,
        retry_at: c.opt_time("retry_at")?,
        started_at: c.opt_time("started_at")?,
        finished_at: c.opt_time("finished_at")?,
        exit_code: c.exit_code("exit_code")?,
        message: c.get("message")?,
        name,
    })
}

fn attempt_row(row: &AnyRow) -> Result<AttemptRow> {
    let run_id: i64 = row.try_get("run_id")?;
    let step: String = row.try_get("step")?;
    let c = Cells::new(row, "step_attempts", format!("{run_id}/{step}"));
    Ok(AttemptRow {
        run_id,
        attempt: c.count("attempt")?,
        job: c.get("job")?,
        state: c.word("state", AttemptState::from_stored)?,
        created_at: c.time("created_at")?,
        submitted_at: c.opt_time("submitted_at")?,
        running_at: c.opt_time("running_at")?,
        finished_at: c.opt_time("finished_at")?,
        exit_code: c.exit_code("exit_code")?,
        message: c.get("message")?,
        reused: reused_of(&c)?,
        step,
    })
}

/// Records the outputs of `step` in `run_id` at `at` (milliseconds), replacing what an
/// earlier attempt recorded under the same names.
pub(super) async fn record_artifacts(
    conn: &mut AnyConnection,
    run_id: i64,
    step: &str,
    artifacts: &[NewArtifact],
    at: i64,
) -> Result<()> {
    for artifact in artifacts {
        let size = i64::try_from(artifact.size).map_err(|_| {
            StoreError::Invalid(format!("artifact {} is too large", artifact.output))
        })?;
        sqlx::query(
            "INSERT INTO artifacts (run_id, step, output, uri, sha256, size, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (run_id, step, output) DO UPDATE SET uri = excluded.uri,
                 sha256 = excluded.sha256, size = excluded.size,
                 created_at = excluded.created_at",
        )
        .bind(run_id)
        .bind(step)
        .bind(&artifact.output)
        .bind(&artifact.uri)
        .bind(&artifact.sha256)
        .bind(size)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) fn artifact_row(row: &AnyRow) -> Result<ArtifactRow> {
    let run_id: i64 = row.try_get("run_id")?;
    let step: String = row.try_get("step")?;
    let output: String = row.try_get("output")?;
    let c = Cells::new(row, "artifacts", format!("{run_id}/{step}/{output}"));
    Ok(ArtifactRow {
        run_id,
        uri: c.get("uri")?,
        sha256: c.get("sha256")?,
        size: c.unsigned("size")?,
        created_at: c.time("created_at")?,
        step,
        output,
    })
}
