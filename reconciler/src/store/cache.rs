//! The step cache: a succeeded attempt of a cached step is an entry under its cache key, and
//! a later attempt with the same key is recorded as `cached`, pointing at it and taking its
//! outputs (the same URIs and sha256), in one transaction and without running anything.
//!
//! There is no table of entries: an entry is the attempt row itself (state `succeeded`, the
//! key set, still its step's current attempt), found through a partial index, so nothing can
//! say an entry exists whose attempt failed or was superseded.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::runs::{artifact_row, record_artifacts};
use super::{
    AttemptId, CacheEntry, Cells, NewArtifact, Result, Store, StoreError, millis, opt_millis,
};

impl Store {
    /// The newest entry under `key` that ended at or after `not_before` (any age when
    /// `None`), with the outputs its step recorded.
    pub async fn cache_entry(
        &self,
        key: &str,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<Option<CacheEntry>> {
        let row = sqlx::query(
            "SELECT a.run_id, a.step, a.attempt, a.finished_at
             FROM step_attempts a
             JOIN steps s ON s.run_id = a.run_id AND s.name = a.step AND s.attempt = a.attempt
             WHERE a.cache_key = $1 AND a.state = 'succeeded' AND a.finished_at >= $2
                 AND s.state = 'succeeded'
             ORDER BY a.finished_at DESC, a.run_id DESC
             LIMIT 1",
        )
        .bind(key)
        .bind(opt_millis(not_before).unwrap_or(i64::MIN))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let run_id: i64 = row.try_get("run_id")?;
        let step: String = row.try_get("step")?;
        let c = Cells::new(&row, "step_attempts", format!("{run_id}/{step}"));
        let attempt = c.count("attempt")?;
        let finished_at = c.time("finished_at")?;
        let artifacts = sqlx::query(
            "SELECT run_id, step, output, uri, sha256, size, created_at FROM artifacts
             WHERE run_id = $1 AND step = $2 ORDER BY output",
        )
        .bind(run_id)
        .bind(&step)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(artifact_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(CacheEntry {
            attempt: AttemptId {
                run_id,
                step,
                attempt,
            },
            finished_at,
            artifacts,
        }))
    }

    /// Records attempt `cached` as cached from `entry`, under `key`: the attempt (named
    /// `job`, which never runs), the step succeeded with the entry's outputs, and the
    /// run running if it was pending, in one transaction. Returns false, writing nothing,
    /// if the step had moved past that attempt already (a pass that crashed recorded it).
    pub async fn record_cached(
        &self,
        cached: &AttemptId,
        job: &str,
        key: &str,
        entry: &CacheEntry,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let (run_id, step, attempt) = (cached.run_id, cached.step.as_str(), cached.attempt);
        if attempt == 0 {
            return Err(StoreError::Invalid(format!(
                "attempts are numbered from 1 ({run_id}/{step})"
            )));
        }
        let from = &entry.attempt;
        let message = format!(
            "cached: the outputs of run {} step {} attempt {}",
            from.run_id, from.step, from.attempt
        );
        let at = millis(at);
        let mut tx = self.write().await?;
        let moved = sqlx::query(
            "UPDATE steps SET state = 'succeeded', attempt = $3, job = $4, retry_at = NULL,
                 started_at = COALESCE(started_at, $5), finished_at = $5, exit_code = NULL,
                 message = $6
             WHERE run_id = $1 AND name = $2 AND attempt < $3",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(job)
        .bind(at)
        .bind(&message)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO step_attempts (run_id, step, attempt, job, state, created_at,
                 finished_at, message, cache_key, reused_run, reused_step, reused_attempt)
             VALUES ($1, $2, $3, $4, 'cached', $5, $5, $6, $7, $8, $9, $10)",
        )
        .bind(run_id)
        .bind(step)
        .bind(i64::from(attempt))
        .bind(job)
        .bind(at)
        .bind(&message)
        .bind(key)
        .bind(from.run_id)
        .bind(&from.step)
        .bind(i64::from(from.attempt))
        .execute(&mut *tx)
        .await?;
        let outputs: Vec<NewArtifact> = entry
            .artifacts
            .iter()
            .map(|a| NewArtifact {
                output: a.output.clone(),
                uri: a.uri.clone(),
                sha256: a.sha256.clone(),
                size: a.size,
            })
            .collect();
        record_artifacts(&mut tx, run_id, step, &outputs, at).await?;
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
}

/// The attempt a cached attempt reused, from its `reused_*` columns.
pub(super) fn reused_of(c: &Cells<'_>) -> Result<Option<AttemptId>> {
    let run_id: Option<i64> = c.get("reused_run")?;
    let Some(run_id) = run_id else {
        return Ok(None);
    };
    let step: Option<String> = c.get("reused_step")?;
    let attempt: Option<i64> = c.get("reused_attempt")?;
    match (step, attempt.map(u32::try_from)) {
        (Some(step), Some(Ok(attempt))) => Ok(Some(AttemptId {
            run_id,
            step,
            attempt,
        })),
        _ => Err(c.corrupt(
            "reused_attempt",
            "a reused run without its step and attempt",
        )),
    }
}
