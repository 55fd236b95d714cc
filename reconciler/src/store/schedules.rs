//! Schedules and their ticks: what the scheduler loop reads, and the exactly-once record of
//! each tick with the run it starts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::runs::insert_run;
use super::{
    Cells, NewTick, RecordedTick, Result, ScheduleRow, Stalled, Store, StoreError, TickOutcome,
    TickRow, Trigger, millis,
};

/// The columns of [`ScheduleRow`], for `concat!`.
macro_rules! schedule_columns {
    () => {
        "SELECT name, pipeline, version, definition, commit_sha, file, active_since,
             last_tick_at, suspended, paused_at, consecutive_failures, retired_at, stalled_at,
             stalled_reason
         FROM schedules "
    };
}

/// The columns of [`TickRow`], for `concat!`.
macro_rules! tick_columns {
    () => {
        "SELECT id, schedule, scheduled_at, recorded_at, outcome, reason, run_id FROM ticks "
    };
}

impl Store {
    /// Schedules not retired, by name; suspended, paused and stalled ones included. Each
    /// row is read on its own: one that cannot be read is its own error, named by its
    /// schedule ([`StoreError::Corrupt`]'s `row`).
    pub async fn active_schedules(&self) -> Result<Vec<Result<ScheduleRow>>> {
        Ok(sqlx::query(concat!(
            schedule_columns!(),
            "WHERE retired_at IS NULL ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(schedule_row)
        .collect())
    }

    /// Records why schedule `name` cannot fire, from `at` (kept if it was stalled already
    /// for the same reason). Returns false if there is no such schedule.
    pub async fn stall_schedule(
        &self,
        name: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET stalled_reason = $2,
                 stalled_at = CASE WHEN stalled_reason = $2 THEN stalled_at ELSE $3 END
             WHERE name = $1",
        )
        .bind(name)
        .bind(reason)
        .bind(millis(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Why schedule `name` is stalled, if it is: readable even when the rest of its row is
    /// not.
    pub async fn stall_of(&self, name: &str) -> Result<Option<Stalled>> {
        let row = sqlx::query(
            "SELECT stalled_at, stalled_reason FROM schedules WHERE name = $1 AND stalled_at IS NOT NULL",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let c = Cells::new(&row, "schedules", name);
            Ok(Stalled {
                at: c.time("stalled_at")?,
                reason: c
                    .get::<Option<String>>("stalled_reason")?
                    .unwrap_or_default(),
            })
        })
        .transpose()
    }

    /// Clears a stall of schedule `name` whose cause is gone.
    pub async fn clear_stall(&self, name: &str) -> Result<()> {
        sqlx::query(
            "UPDATE schedules SET stalled_reason = NULL, stalled_at = NULL
             WHERE name = $1 AND stalled_reason IS NOT NULL",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One schedule, retired or not.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        sqlx::query(concat!(schedule_columns!(), "WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| schedule_row(&row))
            .transpose()
    }

    /// Records ticks of one schedule and creates the runs of the new fired ones, in one
    /// transaction.
    ///
    /// A tick is unique per (schedule, scheduled time): one recorded before is left as it was,
    /// and its run is not created again, however many callers race. `last_tick_at` advances
    /// to the newest tick given. Fails with [`StoreError::ScheduleNotActive`], recording
    /// nothing, if the schedule is unknown or retired.
    pub async fn record_ticks(
        &self,
        schedule: &str,
        ticks: &[NewTick],
    ) -> Result<Vec<RecordedTick>> {
        for tick in ticks {
            check_tick(schedule, tick)?;
        }
        if ticks.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let recorded = record_in(&mut tx, schedule, ticks, Utc::now(), true)
            .await?
            .ok_or_else(|| StoreError::ScheduleNotActive(schedule.to_owned()))?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// [`Store::record_ticks`] for several schedules in one transaction, so a second in
    /// which many schedules are due costs one commit. A schedule retired meanwhile records
    /// nothing and gets `None`.
    pub async fn record_ticks_batch(
        &self,
        batch: &[(String, Vec<NewTick>)],
    ) -> Result<Vec<Option<Vec<RecordedTick>>>> {
        for (schedule, ticks) in batch {
            for tick in ticks {
                check_tick(schedule, tick)?;
            }
        }
        let now = Utc::now();
        let mut tx = self.write().await?;
        let mut out = Vec::with_capacity(batch.len());
        for (schedule, ticks) in batch {
            out.push(if ticks.is_empty() {
                Some(Vec::new())
            } else {
                record_in(&mut tx, schedule, ticks, now, true).await?
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The pending and running runs of every schedule, oldest first: one query for a pass.
    /// A backfilled run counts once it has started; one waiting for its turn holds no live
    /// tick up.
    pub async fn active_runs_by_schedule(&self) -> Result<HashMap<String, Vec<i64>>> {
        let rows = sqlx::query(
            "SELECT schedule, id FROM runs
             WHERE (state = 'running' OR (state = 'pending' AND triggered_by <> 'backfill'))
                 AND schedule IS NOT NULL
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut active: HashMap<String, Vec<i64>> = HashMap::new();
        for row in &rows {
            active
                .entry(row.try_get("schedule")?)
                .or_default()
                .push(row.try_get("id")?);
        }
        Ok(active)
    }

    /// Ids of the schedule's runs that are pending or running, oldest first.
    pub async fn active_runs_of_schedule(&self, name: &str) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE schedule = $1 AND state IN ('pending', 'running')
             ORDER BY id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Pauses a schedule at `at` (kept if already paused), or with `None` resumes it and
    /// clears its failure streak. Returns false if there is no such schedule.
    pub async fn set_schedule_paused(&self, name: &str, at: Option<DateTime<Utc>>) -> Result<bool> {
        let done = match at {
            Some(at) => {
                sqlx::query(
                    "UPDATE schedules SET paused_at = COALESCE(paused_at, $2) WHERE name = $1",
                )
                .bind(name)
                .bind(millis(at))
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE schedules SET paused_at = NULL, consecutive_failures = 0
                     WHERE name = $1",
                )
                .bind(name)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    /// A schedule's ticks, newest first, at most `limit`.
    pub async fn ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRow>> {
        sqlx::query(concat!(
            tick_columns!(),
            "WHERE schedule = $1 ORDER BY scheduled_at DESC LIMIT $2"
        ))
        .bind(schedule)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(tick_row)
        .collect()
    }

    /// A schedule's newest tick.
    pub async fn last_tick(&self, schedule: &str) -> Result<Option<TickRow>> {
        sqlx::query(concat!(
            tick_columns!(),
            "WHERE schedule = $1 ORDER BY scheduled_at DESC LIMIT 1"
        ))
        .bind(schedule)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| tick_row(&row))
        .transpose()
    }
}

/// A fired tick carries the run it starts, of this schedule (live or backfilled); other
/// ticks start nothing.
fn check_tick(schedule: &str, tick: &NewTick) -> Result<()> {
    match (&tick.run, tick.outcome) {
        (Some(run), TickOutcome::Fired)
            if matches!(run.trigger, Trigger::Schedule | Trigger::Backfill)
                && run.schedule.as_deref() == Some(schedule) =>
        {
            Ok(())
        }
        (Some(_), TickOutcome::Fired) => Err(StoreError::Invalid(format!(
            "the run of tick {} is not a scheduled run of {schedule}",
            tick.scheduled_at
        ))),
        (None, TickOutcome::Fired) => Err(StoreError::Invalid(format!(
            "fired tick {} has no run",
            tick.scheduled_at
        ))),
        (Some(_), outcome) => Err(StoreError::Invalid(format!(
            "{outcome} tick {} cannot start a run",
            tick.scheduled_at
        ))),
        (None, _) => Ok(()),
    }
}

fn schedule_row(row: &AnyRow) -> Result<ScheduleRow> {
    let name: String = row.try_get("name")?;
    let c = Cells::new(row, "schedules", &name);
    let stalled = match (
        c.opt_time("stalled_at")?,
        c.get::<Option<String>>("stalled_reason")?,
    ) {
        (Some(at), Some(reason)) => Some(Stalled { at, reason }),
        _ => None,
    };
    Ok(ScheduleRow {
        pipeline: c.get("pipeline")?,
        version: c.get("version")?,
        definition: c.json("definition")?,
        commit_sha: c.get("commit_sha")?,
        file: c.get("file")?,
        active_since: c.time("active_since")?,
        last_tick_at: c.opt_time("last_tick_at")?,
        suspended: c.flag("suspended")?,
        paused_at: c.opt_time("paused_at")?,
        consecutive_failures: c.count("consecutive_failures")?,
        retired_at: c.opt_time("retired_at")?,
        stalled,
        name,
    })
}

fn tick_row(row: &AnyRow) -> Result<TickRow> {
    let id: i64 = row.try_get("id")?;
    let c = Cells::new(row, "ticks", id);
    Ok(TickRow {
        id,
        schedule: c.get("schedule")?,
        scheduled_at: c.time("scheduled_at")?,
        recorded_at: c.time("recorded_at")?,
        outcome: c.word("outcome", TickOutcome::from_stored)?,
        reason: c.get("reason")?,
        run_id: c.get("run_id")?,
    })
}

/// Records `ticks` of one schedule inside `tx`; `None` when the schedule is not active.
/// With `advance`, the schedule's newest tick moves to the newest of them (live ticks);
/// without, it stays (a backfill of the past).
pub(super) async fn record_in(
    tx: &mut Transaction<'static, Any>,
    schedule: &str,
    ticks: &[NewTick],
    now: DateTime<Utc>,
    advance: bool,
) -> Result<Option<Vec<RecordedTick>>> {
    for tick in ticks {
        check_tick(schedule, tick)?;
    }
    let Some(newest) = ticks.iter().map(|tick| tick.scheduled_at).max() else {
        return Ok(Some(Vec::new()));
    };
    // Writing the schedule's row first locks it, so a retirement committed concurrently
    // either comes first (and nothing is recorded) or waits for this transaction.
    let active = sqlx::query(
        "UPDATE schedules SET last_tick_at = CASE
                 WHEN $3 = 1 AND (last_tick_at IS NULL OR last_tick_at < $2) THEN $2
                 ELSE last_tick_at END
             WHERE name = $1 AND retired_at IS NULL",
    )
    .bind(schedule)
    .bind(millis(newest))
    .bind(i64::from(advance))
    .execute(&mut **tx)
    .await?;
    if active.rows_affected() == 0 {
        return Ok(None);
    }
    let mut recorded = Vec::with_capacity(ticks.len());
    for tick in ticks {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO ticks (schedule, scheduled_at, recorded_at, outcome, reason, run_id)
                 VALUES ($1, $2, $3, $4, $5, NULL)
                 ON CONFLICT (schedule, scheduled_at) DO NOTHING RETURNING id",
        )
        .bind(schedule)
        .bind(millis(tick.scheduled_at))
        .bind(millis(now))
        .bind(tick.outcome.as_str())
        .bind(tick.reason.as_deref())
        .fetch_optional(&mut **tx)
        .await?;
        let (new, run_id) = match (inserted, &tick.run) {
            (Some(tick_id), Some(run)) => {
                let run_id = insert_run(tx, run, None, now).await?;
                sqlx::query("UPDATE ticks SET run_id = $2 WHERE id = $1")
                    .bind(tick_id)
                    .bind(run_id)
                    .execute(&mut **tx)
                    .await?;
                (true, Some(run_id))
            }
            (Some(_), None) => (true, None),
            (None, _) => {
                let run_id: Option<i64> = sqlx::query_scalar(
                    "SELECT run_id FROM ticks WHERE schedule = $1 AND scheduled_at = $2",
                )
                .bind(schedule)
                .bind(millis(tick.scheduled_at))
                .fetch_one(&mut **tx)
                .await?;
                (false, run_id)
            }
        };
        recorded.push(RecordedTick {
            scheduled_at: tick.scheduled_at,
            new,
            run_id,
        });
    }
    Ok(Some(recorded))
}
