//! What people ask of the service from the command line: cancel a run, retry a finished
//! run's failed steps, backfill a schedule's past fire times, queue a manual run.
//!
//! Each request is written in one transaction and then announced (see
//! [`super::RequestSignals`]): a running service acts on it at once, without polling; a
//! service started later finds it in the store like any other state. A request the store
//! refuses writes nothing.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};
use thiserror::Error;

use super::schedules::record_in;
use super::{NewRun, NewTick, RecordedTick, Result, RunState, Store, TickOutcome, Trigger, millis};

/// The reason a backfill's ticks carry.
pub const BACKFILL_REASON: &str = "backfill";

/// Why the store refused a request; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refused {
    /// No run has this id.
    #[error("run {0} not found")]
    UnknownRun(i64),
    /// The run ended already, so there is nothing to stop.
    #[error("run {id} has already finished ({state}): there is nothing to cancel")]
    AlreadyFinished {
        /// The run.
        id: i64,
        /// How it ended.
        state: RunState,
    },
    /// Only a run that ended can be retried.
    #[error("run {id} is {state}: only a finished run can be retried (cancel it first)")]
    NotFinished {
        /// The run.
        id: i64,
        /// Where it is.
        state: RunState,
    },
    /// The run has no step to start again.
    #[error(
        "run {id} {state}: none of its steps failed or was skipped or cancelled, so there is \
         nothing to retry"
    )]
    NothingToRetry {
        /// The run.
        id: i64,
        /// How it ended.
        state: RunState,
    },
    /// The schedule is unknown or retired.
    #[error("schedule {0} is not declared on the followed branch")]
    UnknownSchedule(String),
}

/// A run's state, read inside the caller's transaction; `None` if there is no such run.
async fn run_state(conn: &mut AnyConnection, id: i64) -> Result<Option<RunState>> {
    let row = sqlx::query("SELECT state FROM runs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| super::Cells::new(&row, "runs", id).word("state", RunState::from_stored))
        .transpose()
}

impl Store {
    /// Asks the service to stop run `id`: its running steps are stopped, its waiting ones
    /// skipped, and it ends cancelled (after its finally steps, which run however the DAG
    /// ended). Asking twice is asking once, except that the cancel that ended a DAG is taken
    /// back when its finally steps start (see [`Store::record_dag_end`]): asking again then
    /// stops them.
    pub async fn cancel_run(&self, id: i64) -> Result<Result<(), Refused>> {
        let mut tx = self.write().await?;
        match run_state(&mut tx, id).await? {
            None => return Ok(Err(Refused::UnknownRun(id))),
            Some(state) if state.is_finished() => {
                return Ok(Err(Refused::AlreadyFinished { id, state }));
            }
            Some(_) => {}
        }
        sqlx::query(
            "UPDATE runs SET cancel_requested = 1
             WHERE id = $1 AND state IN ('pending', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce_request().await;
        Ok(Ok(()))
    }

    /// Starts the failed, skipped and cancelled steps of finished run `id` again, as new
    /// attempts of the same run: succeeded steps and their outputs are kept, each step
    /// started again gets its declared retries afresh, and the run is unfinished again
    /// (running if it had started, else pending) until the service ends it with updated
    /// reports. Steps a run that could not go on left waiting start too, and every finally
    /// step runs again once the retried DAG has ended. Returns the steps that start again,
    /// in definition order.
    pub async fn retry_run(&self, id: i64) -> Result<Result<Vec<String>, Refused>> {
        let mut tx = self.write().await?;
        let state = match run_state(&mut tx, id).await? {
            None => return Ok(Err(Refused::UnknownRun(id))),
            Some(state) if !state.is_finished() => {
                return Ok(Err(Refused::NotFinished { id, state }));
            }
            Some(RunState::Succeeded) => {
                return Ok(Err(Refused::NothingToRetry {
                    id,
                    state: RunState::Succeeded,
                }));
            }
            Some(state) => state,
        };
        let steps: Vec<String> = sqlx::query(
            "SELECT name FROM steps
             WHERE run_id = $1
                 AND (state IN ('failed', 'skipped', 'cancelled', 'waiting') OR is_finally = 1)
             ORDER BY ordinal",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("name"))
        .collect::<Result<_, _>>()?;
        if steps.is_empty() {
            return Ok(Err(Refused::NothingToRetry { id, state }));
        }
        sqlx::query(
            "UPDATE steps SET state = 'waiting', retry_at = NULL, finished_at = NULL,
                 exit_code = NULL, message = NULL, failures = 0
             WHERE run_id = $1
                 AND (state IN ('failed', 'skipped', 'cancelled', 'waiting') OR is_finally = 1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runs SET
                 state = CASE WHEN started_at IS NULL THEN 'pending' ELSE 'running' END,
                 message = NULL, finished_at = NULL, cancel_requested = 0, dag_state = NULL
             WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce_request().await;
        Ok(Ok(steps))
    }

    /// The scheduled times of schedule `name`'s ticks recorded between `from` and `to`
    /// (both included), whatever became of them.
    pub async fn tick_times_between(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeSet<DateTime<Utc>>> {
        let rows = sqlx::query(
            "SELECT scheduled_at FROM ticks
             WHERE schedule = $1 AND scheduled_at >= $2 AND scheduled_at <= $3",
        )
        .bind(name)
        .bind(millis(from))
        .bind(millis(to))
        .fetch_all(&self.pool)
        .await?;
        let mut times = BTreeSet::new();
        for row in &rows {
            let cells = super::Cells::new(row, "ticks", name);
            times.insert(cells.time("scheduled_at")?);
        }
        Ok(times)
    }

    /// Records a backfill of schedule `name`: one fired tick per run, each run pending with
    /// trigger `backfill` until the service starts it (at a bounded rate, within the
    /// schedule's concurrency), in one transaction. A tick recorded before, by a live tick
    /// or an earlier backfill, is left as it was and starts nothing: the ticks' unique key
    /// makes every fire time start at most one run. The schedule's newest tick does not
    /// move, so live ticks go on as they would have.
    pub async fn record_backfill(
        &self,
        name: &str,
        runs: Vec<NewRun>,
    ) -> Result<Result<Vec<RecordedTick>, Refused>> {
        let mut ticks = Vec::with_capacity(runs.len());
        for run in runs {
            let Some(at) = run.scheduled_at else {
                return Err(super::StoreError::Invalid(
                    "a backfilled run needs its scheduled time".to_owned(),
                ));
            };
            if run.trigger != Trigger::Backfill || run.schedule.as_deref() != Some(name) {
                return Err(super::StoreError::Invalid(format!(
                    "the run for {at} is not a backfill of {name}"
                )));
            }
            ticks.push(NewTick {
                scheduled_at: at,
                outcome: TickOutcome::Fired,
                reason: Some(BACKFILL_REASON.to_owned()),
                run: Some(run),
            });
        }
        let mut tx = self.write().await?;
        let batch = [(name.to_owned(), ticks)];
        let recorded = record_in(&mut tx, &batch, Utc::now(), false)
            .await?
            .pop()
            .flatten();
        let Some(recorded) = recorded else {
            return Ok(Err(Refused::UnknownSchedule(name.to_owned())));
        };
        tx.commit().await?;
        if recorded.iter().any(|tick| tick.new) {
            self.announce_request().await;
        }
        Ok(Ok(recorded))
    }
}
