//! Applying commits of the followed branch: the commit log, cursors, pipeline versions and
//! the declared schedules.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::outbox::enqueue;
use super::runs::insert_run;
use super::{
    Applied, ApplyCommit, Cells, CommitOutcome, PipelineRow, PipelineUpsert, Result,
    ScheduleUpsert, Store, StoreError, millis, to_json,
};

/// The cursor holding the last commit of the followed branch that was applied or rejected.
pub const FOLLOWED_CURSOR: &str = "followed";

impl Store {
    /// Applies (or records the rejection of) one commit, in one transaction.
    ///
    /// Applying a commit already recorded writes nothing and returns the first result with
    /// `first_time: false`. A rejected commit writes only its commit row, its reports and the
    /// cursor; it must carry no changes.
    pub async fn apply_commit<P: Serialize>(&self, commit: &ApplyCommit<P>) -> Result<Applied> {
        if commit.outcome == CommitOutcome::Rejected
            && !(commit.pipelines.is_empty()
                && commit.retire_pipelines.is_empty()
                && commit.schedules.is_empty()
                && commit.retire_schedules.is_empty()
                && commit.runs.is_empty())
        {
            return Err(StoreError::Invalid(format!(
                "commit {} is rejected but carries changes",
                commit.sha
            )));
        }
        let at = millis(commit.at);
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO commits (sha, applied_at, outcome, summary) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha) DO NOTHING RETURNING sha",
        )
        .bind(&commit.sha)
        .bind(at)
        .bind(commit.outcome.as_str())
        .bind(&commit.summary)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            let run_ids =
                sqlx::query_scalar("SELECT id FROM runs WHERE applied_commit = $1 ORDER BY id")
                    .bind(&commit.sha)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(Applied {
                first_time: false,
                run_ids,
            });
        }

        for pipeline in &commit.pipelines {
            upsert_pipeline(&mut tx, pipeline, &commit.sha, at).await?;
        }
        for name in &commit.retire_pipelines {
            sqlx::query(
                "UPDATE pipelines SET retired_at = $2 WHERE name = $1 AND retired_at IS NULL",
            )
            .bind(name)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        for schedule in &commit.schedules {
            upsert_schedule(&mut tx, schedule, &commit.sha, at).await?;
        }
        for name in &commit.retire_schedules {
            sqlx::query(
                "UPDATE schedules SET retired_at = $2 WHERE name = $1 AND retired_at IS NULL",
            )
            .bind(name)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        let mut run_ids = Vec::with_capacity(commit.runs.len());
        for run in &commit.runs {
            run_ids.push(insert_run(&mut tx, run, Some(&commit.sha), commit.at).await?);
        }
        enqueue(&mut tx, &commit.reports, commit.at).await?;
        set_cursor(&mut tx, FOLLOWED_CURSOR, &commit.sha).await?;
        tx.commit().await?;
        Ok(Applied {
            first_time: true,
            run_ids,
        })
    }

    /// The value of a cursor, such as [`FOLLOWED_CURSOR`].
    pub async fn cursor(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The version of a pipeline the followed branch declares now; `None` if it was never
    /// applied or has been retired.
    pub async fn current_pipeline(&self, name: &str) -> Result<Option<PipelineRow>> {
        sqlx::query(
            "SELECT v.pipeline, v.version, v.commit_sha, v.file, v.definition, v.created_at
             FROM pipelines p
             JOIN pipeline_versions v ON v.pipeline = p.name AND v.version = p.version
             WHERE p.name = $1 AND p.retired_at IS NULL",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| pipeline_row(&row))
        .transpose()
    }

    /// Every pipeline the followed branch declares now, by name: what a restarted service
    /// rebuilds its declared state from. Each row is read on its own.
    pub async fn current_pipelines(&self) -> Result<Vec<Result<PipelineRow>>> {
        Ok(sqlx::query(
            "SELECT v.pipeline, v.version, v.commit_sha, v.file, v.definition, v.created_at
             FROM pipelines p
             JOIN pipeline_versions v ON v.pipeline = p.name AND v.version = p.version
             WHERE p.retired_at IS NULL
             ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(pipeline_row)
        .collect())
    }

    /// Any version of a pipeline ever applied, current or not, or read from a pull
    /// request's head for a preview.
    pub async fn pipeline_version(&self, name: &str, version: &str) -> Result<Option<PipelineRow>> {
        sqlx::query(
            "SELECT pipeline, version, commit_sha, file, definition, created_at
             FROM pipeline_versions WHERE pipeline = $1 AND version = $2
             UNION ALL
             SELECT pipeline, version, commit_sha, file, definition, created_at
             FROM preview_versions p WHERE pipeline = $1 AND version = $2
                 AND NOT EXISTS (SELECT 1 FROM pipeline_versions a
                                 WHERE a.pipeline = p.pipeline AND a.version = p.version)",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| pipeline_row(&row))
        .transpose()
    }
}

fn pipeline_row(row: &AnyRow) -> Result<PipelineRow> {
    let name: String = row.try_get("pipeline")?;
    let version: String = row.try_get("version")?;
    let c = Cells::new(row, "pipeline_versions", format!("{name}@{version}"));
    Ok(PipelineRow {
        commit_sha: c.get("commit_sha")?,
        file: c.get("file")?,
        definition: c.json("definition")?,
        created_at: c.time("created_at")?,
        name,
        version,
    })
}

async fn set_cursor(conn: &mut AnyConnection, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO cursors (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the version (once) and makes it the pipeline's current one.
async fn upsert_pipeline(
    conn: &mut AnyConnection,
    pipeline: &PipelineUpsert,
    sha: &str,
    at: i64,
) -> Result<()> {
    // A version is a content hash, so the definition stored for it is this one; writing it
    // again repairs a row that can no longer be read.
    sqlx::query(
        "INSERT INTO pipeline_versions (pipeline, version, commit_sha, file, definition, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (pipeline, version) DO UPDATE SET definition = excluded.definition",
    )
    .bind(&pipeline.name)
    .bind(&pipeline.version)
    .bind(sha)
    .bind(&pipeline.file)
    .bind(to_json("a pipeline's definition", pipeline.definition.as_ref())?)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    // commit_sha names the commit that made this version current, so re-declaring an
    // unchanged pipeline keeps it.
    sqlx::query(
        "INSERT INTO pipelines (name, version, commit_sha, file, retired_at)
         VALUES ($1, $2, $3, $4, NULL)
         ON CONFLICT (name) DO UPDATE SET
             commit_sha = CASE
                 WHEN pipelines.version = excluded.version AND pipelines.retired_at IS NULL
                 THEN pipelines.commit_sha ELSE excluded.commit_sha END,
             version = excluded.version,
             file = excluded.file,
             retired_at = NULL",
    )
    .bind(&pipeline.name)
    .bind(&pipeline.version)
    .bind(sha)
    .bind(&pipeline.file)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What the database holds about a schedule before a commit changes it.
struct ExistingSchedule {
    version: String,
    suspended: bool,
    retired: bool,
    active_since: i64,
}

/// Creates, changes or leaves a schedule as declared.
///
/// `active_since` moves to the commit's time when the schedule is created, comes back after
/// retirement, or is un-suspended, so none of those replays ticks from before. A re-declared
/// retired schedule also starts over on its failure count and pause.
async fn upsert_schedule(
    conn: &mut AnyConnection,
    schedule: &ScheduleUpsert,
    sha: &str,
    at: i64,
) -> Result<()> {
    let existing = sqlx::query(
        "SELECT version, suspended, retired_at, active_since FROM schedules WHERE name = $1",
    )
    .bind(&schedule.name)
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| -> Result<ExistingSchedule> {
        Ok(ExistingSchedule {
            version: row.try_get("version")?,
            suspended: row.try_get::<i64, _>("suspended")? != 0,
            retired: row.try_get::<Option<i64>, _>("retired_at")?.is_some(),
            active_since: row.try_get("active_since")?,
        })
    })
    .transpose()?;
    let suspended = i64::from(schedule.suspended);
    let definition = to_json("a schedule's definition", schedule.definition.as_ref())?;
    match existing {
        None => {
            sqlx::query(
                "INSERT INTO schedules (name, pipeline, version, definition, commit_sha, file,
                     active_since, last_tick_at, suspended, paused_at, consecutive_failures,
                     retired_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, NULL, 0, NULL)",
            )
            .bind(&schedule.name)
            .bind(&schedule.pipeline)
            .bind(&schedule.version)
            .bind(definition)
            .bind(sha)
            .bind(&schedule.file)
            .bind(at)
            .bind(suspended)
            .execute(&mut *conn)
            .await?;
        }
        Some(old) if old.retired => {
            sqlx::query(
                "UPDATE schedules SET pipeline = $2, version = $3, definition = $4,
                     commit_sha = $5, file = $6, active_since = $7, suspended = $8,
                     paused_at = NULL, consecutive_failures = 0, retired_at = NULL,
                     stalled_at = NULL, stalled_reason = NULL
                 WHERE name = $1",
            )
            .bind(&schedule.name)
            .bind(&schedule.pipeline)
            .bind(&schedule.version)
            .bind(definition)
            .bind(sha)
            .bind(&schedule.file)
            .bind(at)
            .bind(suspended)
            .execute(&mut *conn)
            .await?;
        }
        Some(old) if old.version != schedule.version || old.suspended != schedule.suspended => {
            let resumed = old.suspended && !schedule.suspended;
            let active_since = if resumed { at } else { old.active_since };
            sqlx::query(
                "UPDATE schedules SET pipeline = $2, version = $3, definition = $4,
                     commit_sha = $5, file = $6, suspended = $7, active_since = $8,
                     stalled_at = NULL, stalled_reason = NULL
                 WHERE name = $1",
            )
            .bind(&schedule.name)
            .bind(&schedule.pipeline)
            .bind(&schedule.version)
            .bind(definition)
            .bind(sha)
            .bind(&schedule.file)
            .bind(suspended)
            .bind(active_since)
            .execute(&mut *conn)
            .await?;
        }
        Some(_) => {
            // The same version, declared again: its definition is this one, and writing it
            // repairs a row that could no longer be read (and the stall that caused).
            sqlx::query(
                "UPDATE schedules SET definition = $2, stalled_at = NULL, stalled_reason = NULL
                 WHERE name = $1 AND definition <> $2",
            )
            .bind(&schedule.name)
            .bind(definition)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}
