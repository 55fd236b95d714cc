//! Pull requests: what the forge last said about each, the pipeline versions their heads
//! declare (pinned by preview runs), the preview run each command comment started, and
//! reports enqueued on their own rather than with a change of the declared state.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::outbox::enqueue;
use super::runs::insert_run;
use super::{
    Cells, NewReport, NewRun, PipelineUpsert, Result, Store, StoreError, Trigger, millis, to_json,
};

/// A pull request as the forge last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRow {
    /// Its number.
    pub number: u64,
    /// The commit its head points at.
    pub head_sha: String,
    /// The branch of its head (in the fork, for a fork's pull request).
    pub head_ref: String,
    /// The branch it would merge into.
    pub base_ref: String,
    /// Whether its head lives in another repository.
    pub from_fork: bool,
    /// Who opened it.
    pub author: String,
    /// Whether it is open.
    pub open: bool,
}

/// Pull request numbers are stored as signed 64-bit integers.
fn stored_number(number: u64) -> Result<i64> {
    i64::try_from(number).map_err(|e| StoreError::Invalid(format!("pull request {number}: {e}")))
}

impl Store {
    /// Records what the forge says about a pull request now, replacing what it said before.
    pub async fn upsert_pull_request(&self, pr: &PullRequestRow, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO pull_requests (number, head_sha, head_ref, base_ref, from_fork, author,
                 is_open, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (number) DO UPDATE SET head_sha = excluded.head_sha,
                 head_ref = excluded.head_ref, base_ref = excluded.base_ref,
                 from_fork = excluded.from_fork, author = excluded.author,
                 is_open = excluded.is_open, updated_at = excluded.updated_at",
        )
        .bind(stored_number(pr.number)?)
        .bind(&pr.head_sha)
        .bind(&pr.head_ref)
        .bind(&pr.base_ref)
        .bind(i64::from(pr.from_fork))
        .bind(&pr.author)
        .bind(i64::from(pr.open))
        .bind(millis(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What the forge last said about pull request `number`, if it said anything.
    pub async fn pull_request(&self, number: u64) -> Result<Option<PullRequestRow>> {
        sqlx::query(
            "SELECT number, head_sha, head_ref, base_ref, from_fork, author, is_open
             FROM pull_requests WHERE number = $1",
        )
        .bind(stored_number(number)?)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| pull_request_row(&row))
        .transpose()
    }

    /// Adds reports to the outbox on their own, due at once.
    pub async fn enqueue_reports<P: Serialize>(
        &self,
        reports: &[NewReport<P>],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        enqueue(&mut tx, reports, at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The preview run comment `comment_id` started, if it started one.
    pub async fn preview_of_comment(&self, comment_id: u64) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT run_id FROM previews WHERE comment_id = $1")
                .bind(stored_number(comment_id)?)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Starts the preview run comment `comment_id` asked for on pull request `pr`, storing
    /// the head's version of its pipeline and enqueueing `reports`, in one transaction.
    ///
    /// A comment starts one run: asking again returns that run's id with `false` and writes
    /// nothing.
    pub async fn create_preview<P: Serialize>(
        &self,
        comment_id: u64,
        pr: u64,
        version: &PipelineUpsert,
        run: &NewRun,
        reports: impl FnOnce(i64) -> Vec<NewReport<P>>,
        at: DateTime<Utc>,
    ) -> Result<(i64, bool)> {
        self.insert_preview(Asker::Comment(comment_id), pr, version, run, reports, at)
            .await
    }

    /// Starts the preview run of `run.pipeline` that the button of check run `check_run_id`
    /// asked for on pull request `pr`, as [`Store::create_preview`] does for a comment: one
    /// run per check run and pipeline.
    pub async fn create_action_preview<P: Serialize>(
        &self,
        check_run_id: u64,
        pr: u64,
        version: &PipelineUpsert,
        run: &NewRun,
        reports: impl FnOnce(i64) -> Vec<NewReport<P>>,
        at: DateTime<Utc>,
    ) -> Result<(i64, bool)> {
        self.insert_preview(Asker::CheckRun(check_run_id), pr, version, run, reports, at)
            .await
    }

    async fn insert_preview<P: Serialize>(
        &self,
        asker: Asker,
        pr: u64,
        version: &PipelineUpsert,
        run: &NewRun,
        reports: impl FnOnce(i64) -> Vec<NewReport<P>>,
        at: DateTime<Utc>,
    ) -> Result<(i64, bool)> {
        if run.trigger != Trigger::Preview
            || run.pipeline != version.name
            || run.pipeline_version != version.version
        {
            return Err(StoreError::Invalid(format!(
                "a preview of {asker} must be a preview run of the version it stores"
            )));
        }
        let asked_by = match asker {
            Asker::Comment(id) | Asker::CheckRun(id) => stored_number(id)?,
        };
        let mut tx = self.write().await?;
        let existing: Option<i64> =
            match asker {
                Asker::Comment(_) => {
                    sqlx::query_scalar("SELECT run_id FROM previews WHERE comment_id = $1")
                        .bind(asked_by)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                Asker::CheckRun(_) => sqlx::query_scalar(
                    "SELECT run_id FROM action_previews WHERE check_run_id = $1 AND pipeline = $2",
                )
                .bind(asked_by)
                .bind(&run.pipeline)
                .fetch_optional(&mut *tx)
                .await?,
            };
        if let Some(id) = existing {
            tx.rollback().await?;
            return Ok((id, false));
        }
        // Versions are content hashes: one already stored (applied or previewed) is this one.
        sqlx::query(
            "INSERT INTO preview_versions (pipeline, version, commit_sha, file, definition,
                 created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (pipeline, version) DO NOTHING",
        )
        .bind(&version.name)
        .bind(&version.version)
        .bind(&run.commit_sha)
        .bind(&version.file)
        .bind(to_json(
            "a pipeline's definition",
            version.definition.as_ref(),
        )?)
        .bind(millis(at))
        .execute(&mut *tx)
        .await?;
        let id = insert_run(&mut tx, run, None, at).await?;
        match asker {
            Asker::Comment(_) => {
                sqlx::query(
                    "INSERT INTO previews (comment_id, pull_request, run_id) VALUES ($1, $2, $3)",
                )
                .bind(asked_by)
                .bind(stored_number(pr)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Asker::CheckRun(_) => {
                sqlx::query(
                    "INSERT INTO action_previews (check_run_id, pipeline, pull_request, run_id)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(asked_by)
                .bind(&run.pipeline)
                .bind(stored_number(pr)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        enqueue(&mut tx, &reports(id), at).await?;
        tx.commit().await?;
        Ok((id, true))
    }

    /// The preview runs the button of check run `check_run_id` started.
    pub async fn previews_of_check_run(&self, check_run_id: u64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT run_id FROM action_previews WHERE check_run_id = $1 ORDER BY run_id",
        )
        .bind(stored_number(check_run_id)?)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The pull request whose comment (or check run button) started preview run `run_id`,
    /// if one did.
    pub async fn pull_request_of_preview(&self, run_id: i64) -> Result<Option<u64>> {
        let number: Option<i64> = sqlx::query_scalar(
            "SELECT pull_request FROM previews WHERE run_id = $1
             UNION ALL SELECT pull_request FROM action_previews WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        number
            .map(|n| {
                u64::try_from(n).map_err(|e| StoreError::Corrupt {
                    table: "previews",
                    row: format!("of run {run_id}"),
                    column: "pull_request",
                    reason: format!("{n}: {e}"),
                })
            })
            .transpose()
    }
}

fn pull_request_row(row: &AnyRow) -> Result<PullRequestRow> {
    let number: i64 = row.try_get("number")?;
    let c = Cells::new(row, "pull_requests", number);
    Ok(PullRequestRow {
        number: c.unsigned("number")?,
        head_sha: c.get("head_sha")?,
        head_ref: c.get("head_ref")?,
        base_ref: c.get("base_ref")?,
        from_fork: c.flag("from_fork")?,
        author: c.get("author")?,
        open: c.flag("is_open")?,
    })
}

/// What asked for a preview run.
#[derive(Debug, Clone, Copy)]
enum Asker {
    /// A command comment.
    Comment(u64),
    /// A check run's button.
    CheckRun(u64),
}

impl std::fmt::Display for Asker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asker::Comment(id) => write!(f, "comment {id}"),
            Asker::CheckRun(id) => write!(f, "check run {id}"),
        }
    }
}
