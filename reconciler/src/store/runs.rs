//! Runs, their steps, step attempts and artifacts: what the run loop reads and records.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::outbox::enqueue;
use super::{
    ArtifactRow, AttemptOutcome, AttemptRow, AttemptState, NewReport, NewRun, Result, RunRow,
    RunState, StepRow, StepState, Store, StoreError, Trigger, get_count, get_enum, get_exit_code,
    get_flag, get_json, get_opt_time, get_time, millis, opt_millis,
};

/// The columns of [`RunRow`], for `concat!`.
macro_rules! run_columns {
    () => {
        "SELECT id, pipeline, pipeline_version, commit_sha, triggered_by, schedule, scheduled_at,
             params, state, message, cancel_requested, created_at, started_at, finished_at
         FROM runs "
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
             started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, 0, $8, $9, NULL, NULL)
         RETURNING id",
    )
    .bind(&run.pipeline)
    .bind(&run.pipeline_version)
    .bind(&run.commit_sha)
    .bind(run.trigger.as_str())
    .bind(run.schedule.as_deref())
    .bind(opt_millis(run.scheduled_at))
    .bind(run.params.to_string())
    .bind(applied_commit)
    .bind(millis(at))
    .fetch_one(&mut *conn)
    .await?;
    for (ordinal, step) in (0_i64..).zip(&run.steps) {
        sqlx::query(
            "INSERT INTO steps (run_id, name, ordinal, state, attempt)
             VALUES ($1, $2, $3, 'waiting', 0)",
        )
        .bind(id)
        .bind(step)
        .bind(ordinal)
        .execute(&mut *conn)
        .await?;
    }
    Ok(id)
}

impl Store {
    /// Creates a run outside of commits and ticks (manual and preview runs). Its creation
    /// time is now.
    pub async fn create_run(&self, run: &NewRun) -> Result<i64> {
        let mut tx = self.write().await?;
        let id = insert_run(&mut tx, run, None, Utc::now()).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The runs applying commit `sha` started (those its change triggered), oldest first.
    pub async fn runs_of_commit(&self, sha: &str) -> Result<Vec<RunRow>> {
        sqlx::query(concat!(
            run_columns!(),
            "WHERE applied_commit = $1 ORDER BY id"
        ))
        .bind(sha)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    /// Runs pending or running, oldest first: the run loop's work after a restart.
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRow>> {
        sqlx::query(concat!(
            run_columns!(),
            "WHERE state IN ('pending', 'running') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    /// One run.
    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        sqlx::query(concat!(run_columns!(), "WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| run_row(&row))
            .transpose()
    }

    /// Runs newest first, of one pipeline or all, at most `limit`.
    pub async fn list_runs(&self, pipeline: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
        sqlx::query(concat!(
            run_columns!(),
            "WHERE ($1 IS NULL OR pipeline = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(pipeline)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    /// The steps of a run in definition order.
    pub async fn steps(&self, run_id: i64) -> Result<Vec<StepRow>> {
        sqlx::query(
            "SELECT run_id, name, state, attempt, job, retry_at, started_at, finished_at,
                 exit_code, message
             FROM steps WHERE run_id = $1 ORDER BY ordinal",
        )
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
            "SELECT a.run_id, a.step, a.attempt, a.job, a.state, a.started_at, a.finished_at,
                 a.exit_code, a.message
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

    /// Records that attempt `attempt` of a step was submitted as executor job `job`: the step
    /// runs it, and the run is running from `at` if it was pending.
    ///
    /// Returns false, writing nothing, if that attempt was recorded before.
    pub async fn start_attempt(
        &self,
        run_id: i64,
        step: &str,
        attempt: u32,
        job: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        if attempt == 0 {
            return Err(StoreError::Invalid(
                "attempts are numbered from 1".to_owned(),
            ));
        }
        let at = millis(at);
        let mut tx = self.write().await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT run_id FROM steps WHERE run_id = $1 AND name = $2")
                .bind(run_id)
                .bind(step)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: "step",
                key: format!("{run_id}/{step}"),
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO step_attempts (run_id, step, attempt, job, state, started_at)
             VALUES ($1, $2, $3, $4, 'running', $5)
             ON CONFLICT (run_id, step, attempt) DO NOTHING RETURNING attempt",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(job)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE steps SET state = 'running', attempt = $3, job = $4, retry_at = NULL,
                 started_at = COALESCE(started_at, $5), finished_at = NULL, exit_code = NULL,
                 message = NULL
             WHERE run_id = $1 AND name = $2",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(job)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runs SET state = 'running', started_at = $2
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(run_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records how an attempt ended, with the outputs it uploaded.
    ///
    /// The step takes the attempt's state, or waits for `retry_at` when that is set. An attempt
    /// that is no longer the step's current one (finished late) changes only its own row, and
    /// its artifacts are not recorded.
    /// Returns false, writing nothing, if the attempt had already finished.
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
            (AttemptState::Failed, Some(_)) => StepState::Waiting,
            (_, Some(_)) => {
                return Err(StoreError::Invalid(
                    "only a failed attempt can be retried".to_owned(),
                ));
            }
            (AttemptState::Succeeded, None) => StepState::Succeeded,
            (AttemptState::Failed, None) => StepState::Failed,
            (AttemptState::Cancelled, None) => StepState::Cancelled,
        };
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
                 message = $8
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
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        // A step's outputs are those of its current attempt; a superseded attempt's uploads
        // would pair outputs with a state they did not produce.
        let artifacts = if current { &outcome.artifacts[..] } else { &[] };
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
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

    /// Ends a run and enqueues its reports, in one transaction.
    ///
    /// For a scheduled run, the schedule's failure streak resets on success and grows on
    /// failure; when it reaches `pause_after_failures` the schedule is paused at `at`. A
    /// cancelled run leaves the streak alone. Returns false, writing nothing, if the run had
    /// already finished.
    pub async fn finish_run(
        &self,
        run_id: i64,
        state: RunState,
        message: Option<&str>,
        at: DateTime<Utc>,
        reports: &[NewReport],
        pause_after_failures: Option<u32>,
    ) -> Result<bool> {
        if !state.is_finished() {
            return Err(StoreError::Invalid(format!(
                "a run cannot finish as {state}"
            )));
        }
        let mut tx = self.write().await?;
        let finished = sqlx::query(
            "UPDATE runs SET state = $2, message = $3, finished_at = $4
             WHERE id = $1 AND state IN ('pending', 'running')
             RETURNING triggered_by, schedule",
        )
        .bind(run_id)
        .bind(state.as_str())
        .bind(message)
        .bind(millis(at))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(finished) = finished else {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            return match exists {
                Some(_) => Ok(false),
                None => Err(StoreError::NotFound {
                    what: "run",
                    key: run_id.to_string(),
                }),
            };
        };
        let trigger = get_enum(&finished, "triggered_by", Trigger::from_stored)?;
        let schedule: Option<String> = finished.try_get("schedule")?;
        if let (Trigger::Schedule, Some(schedule)) = (trigger, schedule) {
            match state {
                RunState::Succeeded => {
                    sqlx::query("UPDATE schedules SET consecutive_failures = 0 WHERE name = $1")
                        .bind(&schedule)
                        .execute(&mut *tx)
                        .await?;
                }
                RunState::Failed => {
                    let failures: i64 = sqlx::query_scalar(
                        "UPDATE schedules SET consecutive_failures = consecutive_failures + 1
                         WHERE name = $1 RETURNING consecutive_failures",
                    )
                    .bind(&schedule)
                    .fetch_one(&mut *tx)
                    .await?;
                    if pause_after_failures.is_some_and(|limit| failures >= i64::from(limit)) {
                        sqlx::query(
                            "UPDATE schedules SET paused_at = $2
                             WHERE name = $1 AND paused_at IS NULL",
                        )
                        .bind(&schedule)
                        .bind(millis(at))
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                _ => {}
            }
        }
        enqueue(&mut tx, reports, at).await?;
        tx.commit().await?;
        Ok(true)
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
    Ok(RunRow {
        id: row.try_get("id")?,
        pipeline: row.try_get("pipeline")?,
        pipeline_version: row.try_get("pipeline_version")?,
        commit_sha: row.try_get("commit_sha")?,
        trigger: get_enum(row, "triggered_by", Trigger::from_stored)?,
        schedule: row.try_get("schedule")?,
        scheduled_at: get_opt_time(row, "scheduled_at")?,
        params: get_json(row, "params")?,
        state: get_enum(row, "state", RunState::from_stored)?,
        message: row.try_get("message")?,
        cancel_requested: get_flag(row, "cancel_requested")?,
        created_at: get_time(row, "created_at")?,
        started_at: get_opt_time(row, "started_at")?,
        finished_at: get_opt_time(row, "finished_at")?,
    })
}

fn step_row(row: &AnyRow) -> Result<StepRow> {
    Ok(StepRow {
        run_id: row.try_get("run_id")?,
        name: row.try_get("name")?,
        state: get_enum(row, "state", StepState::from_stored)?,
        attempt: get_count(row, "attempt")?,
        job: row.try_get("job")?,
        retry_at: get_opt_time(row, "retry_at")?,
        started_at: get_opt_time(row, "started_at")?,
        finished_at: get_opt_time(row, "finished_at")?,
        exit_code: get_exit_code(row, "exit_code")?,
        message: row.try_get("message")?,
    })
}

fn attempt_row(row: &AnyRow) -> Result<AttemptRow> {
    Ok(AttemptRow {
        run_id: row.try_get("run_id")?,
        step: row.try_get("step")?,
        attempt: get_count(row, "attempt")?,
        job: row.try_get("job")?,
        state: get_enum(row, "state", AttemptState::from_stored)?,
        started_at: get_time(row, "started_at")?,
        finished_at: get_opt_time(row, "finished_at")?,
        exit_code: get_exit_code(row, "exit_code")?,
        message: row.try_get("message")?,
    })
}

fn artifact_row(row: &AnyRow) -> Result<ArtifactRow> {
    let size: i64 = row.try_get("size")?;
    Ok(ArtifactRow {
        run_id: row.try_get("run_id")?,
        step: row.try_get("step")?,
        output: row.try_get("output")?,
        uri: row.try_get("uri")?,
        sha256: row.try_get("sha256")?,
        size: u64::try_from(size).map_err(|e| StoreError::Corrupt {
            column: "size",
            value: size.to_string(),
            reason: e.to_string(),
        })?,
        created_at: get_time(row, "created_at")?,
    })
}
