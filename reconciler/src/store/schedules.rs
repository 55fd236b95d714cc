//! Schedules and their ticks: what the scheduler loop reads, and the exactly-once record of
//! each tick with the run it starts.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::runs::insert_tick_runs;
use super::{
    Cells, NewRun, NewTick, ROWS_PER_STATEMENT, RecordedTick, Result, ScheduleRow, Stalled, Store,
    StoreError, TickOutcome, TickRow, Trigger, millis, value_rows,
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
        let batch = [(schedule.to_owned(), ticks.to_vec())];
        let recorded = record_in(&mut tx, &batch, Utc::now(), true)
            .await?
            .pop()
            .flatten()
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
        let mut tx = self.write().await?;
        let out = record_in(&mut tx, batch, Utc::now(), true).await?;
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
                && run.schedule.as_deref() == Some(schedule)
                && run.scheduled_at == Some(tick.scheduled_at) =>
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

/// Records the ticks of `batch` in `tx` with a few multi-row statements, whatever its size:
/// the schedules' rows (locked, so a retirement committed concurrently either comes first
/// and nothing is recorded for that schedule, which gets `None`, or waits), the ticks, the
/// runs of the new fired ones with their steps, and the links between them. With `advance`,
/// each schedule's newest tick moves to the newest of its ticks (live ticks); without, it
/// stays (a backfill of the past).
pub(super) async fn record_in(
    tx: &mut Transaction<'static, Any>,
    batch: &[(String, Vec<NewTick>)],
    now: DateTime<Utc>,
    advance: bool,
) -> Result<Vec<Option<Vec<RecordedTick>>>> {
    for (schedule, ticks) in batch {
        for tick in ticks {
            check_tick(schedule, tick)?;
        }
    }
    let newest: Vec<(&str, i64)> = batch
        .iter()
        .filter_map(|(schedule, ticks)| {
            let newest = ticks.iter().map(|tick| tick.scheduled_at).max()?;
            Some((schedule.as_str(), millis(newest)))
        })
        .collect();
    let mut active: HashSet<String> = HashSet::new();
    for chunk in newest.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE schedules SET last_tick_at = CASE
                 WHEN v.column3 = 1 AND (last_tick_at IS NULL OR last_tick_at < v.column2)
                     THEN v.column2
                 ELSE last_tick_at END
             FROM (VALUES {}) AS v
             WHERE schedules.name = v.column1 AND schedules.retired_at IS NULL
             RETURNING name",
            value_rows(chunk.len(), "(?, ?, ?)")
        );
        let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
        for (name, newest) in chunk {
            query = query.bind(*name).bind(*newest).bind(i64::from(advance));
        }
        active.extend(query.fetch_all(&mut **tx).await?);
    }

    let due: Vec<(&str, &NewTick)> = batch
        .iter()
        .filter(|(schedule, _)| active.contains(schedule))
        .flat_map(|(schedule, ticks)| ticks.iter().map(move |tick| (schedule.as_str(), tick)))
        .collect();
    // Ticks recorded before are left alone (and their runs not created again).
    let mut inserted: HashMap<(String, i64), i64> = HashMap::new();
    for chunk in due.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO ticks (schedule, scheduled_at, recorded_at, outcome, reason, run_id)
             VALUES {}
             ON CONFLICT (schedule, scheduled_at) DO NOTHING
             RETURNING id, schedule, scheduled_at",
            value_rows(chunk.len(), "(?, ?, ?, ?, ?, NULL)")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (schedule, tick) in chunk {
            query = query
                .bind(*schedule)
                .bind(millis(tick.scheduled_at))
                .bind(millis(now))
                .bind(tick.outcome.as_str())
                .bind(tick.reason.as_deref());
        }
        for row in query.fetch_all(&mut **tx).await? {
            let key = (row.try_get("schedule")?, row.try_get("scheduled_at")?);
            inserted.insert(key, row.try_get("id")?);
        }
    }

    let key = |schedule: &str, tick: &NewTick| (schedule.to_owned(), millis(tick.scheduled_at));
    let starting: Vec<&NewRun> = due
        .iter()
        .filter(|(schedule, tick)| inserted.contains_key(&key(schedule, tick)))
        .filter_map(|(_, tick)| tick.run.as_ref())
        .collect();
    let runs = insert_tick_runs(tx, &starting, now).await?;
    let links: Vec<(i64, i64)> = runs
        .iter()
        .filter_map(|(tick, run_id)| Some((*inserted.get(tick)?, *run_id)))
        .collect();
    for chunk in links.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE ticks SET run_id = v.column2 FROM (VALUES {}) AS v WHERE ticks.id = v.column1",
            value_rows(chunk.len(), "(?, ?)")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (tick_id, run_id) in chunk {
            query = query.bind(*tick_id).bind(*run_id);
        }
        query.execute(&mut **tx).await?;
    }

    let mut out = Vec::with_capacity(batch.len());
    for (schedule, ticks) in batch {
        if !ticks.is_empty() && !active.contains(schedule) {
            out.push(None);
            continue;
        }
        let mut recorded = Vec::with_capacity(ticks.len());
        for tick in ticks {
            let key = key(schedule, tick);
            let (new, run_id) = if inserted.contains_key(&key) {
                (true, runs.get(&key).copied())
            } else {
                // Recorded before, by a pass that crashed or a racing caller: rare, so read
                // one at a time.
                let run_id: Option<i64> = sqlx::query_scalar(
                    "SELECT run_id FROM ticks WHERE schedule = $1 AND scheduled_at = $2",
                )
                .bind(schedule)
                .bind(key.1)
                .fetch_one(&mut **tx)
                .await?;
                (false, run_id)
            };
            recorded.push(RecordedTick {
                scheduled_at: tick.scheduled_at,
                new,
                run_id,
            });
        }
        out.push(Some(recorded));
    }
    Ok(out)
}
