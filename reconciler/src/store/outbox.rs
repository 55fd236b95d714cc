//! The report outbox: reports are enqueued in the same transaction as the change they
//! describe, and handed to the delivery loop newest-per-context, with retries.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Cells, NewReport, ReportKind, ReportRow, ReportState, Result, Store, millis, to_json};

/// Adds reports to the outbox, due at once.
pub(super) async fn enqueue<P: Serialize>(
    conn: &mut AnyConnection,
    reports: &[NewReport<P>],
    at: DateTime<Utc>,
) -> Result<()> {
    for report in reports {
        sqlx::query(
            "INSERT INTO outbox (commit_sha, kind, report_key, payload, state, attempts,
                 next_attempt_at, last_error, created_at, delivered_at)
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, NULL, $5, NULL)",
        )
        .bind(&report.commit_sha)
        .bind(report.kind.as_str())
        .bind(&report.key)
        .bind(to_json("a report", &report.payload)?)
        .bind(millis(at))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Reports to deliver now, oldest first, at most `limit`.
    ///
    /// Only the latest state of a context matters to readers, so a pending report with a
    /// newer pending report for the same (commit, kind, key) is marked superseded first and
    /// never delivered.
    ///
    /// Reports reach the forge in the order they were written: while a report waits for its
    /// retry (the forge is rate limiting or failing), none written after it is due.
    ///
    /// Each row is read on its own; one whose payload cannot be read as a `P` comes back
    /// as that error, with its id, so it can be marked failed without holding up the rest.
    pub async fn due_reports<P: DeserializeOwned>(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(i64, Result<ReportRow<P>>)>> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE outbox SET state = 'superseded'
             WHERE state = 'pending' AND EXISTS (
                 SELECT 1 FROM outbox newer
                 WHERE newer.state = 'pending'
                   AND newer.commit_sha = outbox.commit_sha
                   AND newer.kind = outbox.kind
                   AND newer.report_key = outbox.report_key
                   AND newer.id > outbox.id)",
        )
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT id, commit_sha, kind, report_key, payload, state, attempts, next_attempt_at,
                 last_error, created_at, delivered_at
             FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1
                 AND NOT EXISTS (
                     SELECT 1 FROM outbox waiting
                     WHERE waiting.state = 'pending' AND waiting.next_attempt_at > $1
                       AND waiting.id < outbox.id)
             ORDER BY id LIMIT $2",
        )
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, report_row(row))))
            .collect()
    }

    /// When the next pending report is due, if one is: how long the delivery loop may sleep.
    pub async fn next_report_due(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?;
        Ok(at.and_then(DateTime::from_timestamp_millis))
    }

    /// Records that the forge accepted a report. Returns false if it was already delivered or
    /// failed.
    pub async fn mark_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<bool> {
        // A superseded report may have been handed out just before its successor arrived;
        // that it reached the forge is still the truth.
        let done = sqlx::query(
            "UPDATE outbox SET state = 'delivered', delivered_at = $2, attempts = attempts + 1,
                 last_error = NULL
             WHERE id = $1 AND state IN ('pending', 'superseded')",
        )
        .bind(id)
        .bind(millis(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed delivery to be tried again at `next_attempt_at`. Returns false if the
    /// report is no longer pending.
    pub async fn mark_retry(
        &self,
        id: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET next_attempt_at = $2, last_error = $3, attempts = attempts + 1
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .bind(millis(next_attempt_at))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that the forge refused a report for good. Returns false if the report is no
    /// longer pending.
    pub async fn mark_failed(&self, id: i64, error: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'failed', last_error = $2, attempts = attempts + 1
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every report about a commit, oldest first, whatever its state.
    pub async fn reports_of_commit<P: DeserializeOwned>(
        &self,
        commit_sha: &str,
    ) -> Result<Vec<ReportRow<P>>> {
        sqlx::query(
            "SELECT id, commit_sha, kind, report_key, payload, state, attempts, next_attempt_at,
                 last_error, created_at, delivered_at
             FROM outbox WHERE commit_sha = $1 ORDER BY id",
        )
        .bind(commit_sha)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(report_row)
        .collect()
    }
}

fn report_row<P: DeserializeOwned>(row: &AnyRow) -> Result<ReportRow<P>> {
    let id: i64 = row.try_get("id")?;
    let c = Cells::new(row, "outbox", id);
    Ok(ReportRow {
        id,
        commit_sha: c.get("commit_sha")?,
        kind: c.word("kind", ReportKind::from_stored)?,
        key: c.get("report_key")?,
        payload: c.json("payload")?,
        state: c.word("state", ReportState::from_stored)?,
        attempts: c.count("attempts")?,
        next_attempt_at: c.time("next_attempt_at")?,
        last_error: c.get("last_error")?,
        created_at: c.time("created_at")?,
        delivered_at: c.opt_time("delivered_at")?,
    })
}
