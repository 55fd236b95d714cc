//! Schedules → ticks: each declared schedule's due ticks recorded exactly once (fired,
//! skipped or missed, and why), with the run each fired tick starts, in one transaction for
//! the whole pass.
//!
//! Every schedule is decided on its own. One that cannot fire until a commit changes it (its
//! stored definition cannot be read, its cron or time zone no longer parses, its pipeline's
//! stored definition cannot be read) is stalled with the reason, which `trainyard
//! schedules` shows; the others keep firing on time.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Backoff, Pass, Stop, instant_of};
use crate::schedule::{self, ActiveRuns, TickAction};
use crate::spec::check::resolve_params;
use crate::spec::cron::{CronSchedule, parse_timezone};
use crate::spec::{Pipeline, Schedule};
use crate::store::{
    FOLLOWED_CURSOR, NewRun, NewTick, ScheduleRow, Store, StoreError, TickOutcome, Trigger,
};

/// Backoff key of the pass as a whole (the store failing under it).
const ALL: &str = "all";

/// The sub-reconciler of schedules.
pub(super) struct Ticks {
    store: Store,
    /// Crons by (schedule, version), parsed once.
    crons: HashMap<(String, String), Arc<CronSchedule>>,
    backoff: Backoff,
    errors: u64,
}

/// Why a schedule cannot fire until a commit changes it.
struct Stalled(String);

/// The pipeline a schedule starts, as its current version (`None`: not declared), or why
/// its stored definition cannot be read.
type Target = Result<Option<(String, Arc<Pipeline>)>, String>;

impl Ticks {
    pub(super) fn new(store: Store) -> Self {
        Ticks {
            store,
            crons: HashMap::new(),
            backoff: Backoff::default(),
            errors: 0,
        }
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Forgets backoffs, for a replica taking over.
    pub(super) fn take_over(&mut self) {
        self.backoff.clear();
    }

    /// Records the due ticks of every schedule; asks to run again at the next one.
    pub(super) async fn reconcile(&mut self, now: DateTime<Utc>, stop: &Stop) -> Pass {
        let mut pass = Pass::default();
        match self.fire(now, stop, &mut pass).await {
            Ok(()) => self.backoff.succeeded(ALL),
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed(ALL);
                tracing::error!(%error, retry_in = ?delay, "recording ticks failed; they are recorded when the store answers");
                pass.again_after(delay);
            }
        }
        pass
    }

    async fn fire(
        &mut self,
        now: DateTime<Utc>,
        stop: &Stop,
        pass: &mut Pass,
    ) -> Result<(), StoreError> {
        let head = self.store.cursor(FOLLOWED_CURSOR).await?;
        let active = self.store.active_runs_by_schedule().await?;
        let mut targets: HashMap<String, Target> = HashMap::new();
        let mut batch = Vec::new();
        let mut fixed = Vec::new();
        for row in self.store.active_schedules().await? {
            if stop.requested() {
                break;
            }
            let row = match row {
                Ok(row) => row,
                Err(StoreError::Corrupt {
                    table: "schedules",
                    row: name,
                    column,
                    reason,
                }) => {
                    self.errors += 1;
                    let why = format!(
                        "its stored definition cannot be read (column {column} {reason}); the \
                         next commit that declares it repairs it"
                    );
                    self.stall(&name, &why, now).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match self
                .decide(&row, now, head.as_deref(), &active, &mut targets)
                .await?
            {
                Ok((ticks, next)) => {
                    if let Some(next) = next {
                        pass.again_at(instant_of(next, now));
                    }
                    if row.stalled.is_some() {
                        fixed.push(row.name.clone());
                    }
                    if !ticks.is_empty() {
                        for tick in &ticks {
                            if tick.outcome == TickOutcome::Fired
                                && tick.reason.as_deref() == Some(REPLACED)
                            {
                                for id in active.get(&row.name).into_iter().flatten() {
                                    self.store.request_cancel(*id).await?;
                                }
                            }
                        }
                        batch.push((row.name.clone(), ticks));
                    }
                }
                Err(Stalled(why)) => {
                    self.errors += 1;
                    self.stall(&row.name, &why, now).await?;
                }
            }
        }
        for name in fixed {
            self.store.clear_stall(&name).await?;
        }
        if !batch.is_empty() {
            let recorded = self.store.record_ticks_batch(&batch).await?;
            pass.changed = recorded.iter().flatten().flatten().any(|tick| tick.new);
        }
        Ok(())
    }

    /// The ticks of `row` due by `now`, and when it is due next; `Stalled` when it cannot
    /// fire until a commit changes it.
    async fn decide(
        &mut self,
        row: &ScheduleRow,
        now: DateTime<Utc>,
        head: Option<&str>,
        active: &HashMap<String, Vec<i64>>,
        targets: &mut HashMap<String, Target>,
    ) -> Result<Result<(Vec<NewTick>, Option<DateTime<Utc>>), Stalled>, StoreError> {
        let schedule: &Schedule = &row.definition;
        if schedule.spec.suspend {
            return Ok(Ok((Vec::new(), None)));
        }
        let cron = match self.cron(row) {
            Ok(cron) => cron,
            Err(why) => return Ok(Err(Stalled(why))),
        };
        let since = row
            .last_tick_at
            .map_or(row.active_since, |t| t.max(row.active_since));
        let running = active.get(&row.name).map_or(0, Vec::len);
        let decisions = match schedule::decide(
            &schedule.spec,
            &cron,
            since,
            now,
            ActiveRuns { count: running },
            row.paused_at.is_some(),
        ) {
            Ok(decisions) => decisions,
            Err(error) => return Ok(Err(Stalled(error.to_string()))),
        };
        let next = schedule::next_fire_after(&cron, now, now);
        if decisions.is_empty() {
            return Ok(Ok((Vec::new(), next)));
        }
        let name = &schedule.spec.pipeline;
        if !targets.contains_key(name) {
            let target = match self.store.current_pipeline(name).await {
                Ok(found) => Ok(found.map(|p| (p.version, p.definition))),
                Err(StoreError::Corrupt { column, reason, .. }) => Err(format!(
                    "the stored definition of pipeline {name} cannot be read (column {column} \
                     {reason}); the next commit that declares it repairs it"
                )),
                Err(error) => return Err(error),
            };
            targets.insert(name.clone(), target);
        }
        let target = match targets.get(name) {
            Some(Ok(target)) => target.as_ref(),
            Some(Err(why)) => return Ok(Err(Stalled(why.clone()))),
            None => None,
        };
        let mut ticks = Vec::with_capacity(decisions.len());
        for decision in decisions {
            let (outcome, reason, fire) = match decision.action {
                TickAction::Fire => (TickOutcome::Fired, None, true),
                TickAction::FireReplacing => (TickOutcome::Fired, Some(REPLACED.to_owned()), true),
                TickAction::Skip(reason) => (TickOutcome::Skipped, Some(reason), false),
                TickAction::Miss(reason) => (TickOutcome::Missed, Some(reason), false),
            };
            let tick = if !fire {
                NewTick {
                    scheduled_at: decision.at,
                    outcome,
                    reason,
                    run: None,
                }
            } else {
                match (target, head) {
                    (Some((version, pipeline)), Some(head)) => {
                        match resolve_params(pipeline, &schedule.spec.params) {
                            Ok(params) => NewTick {
                                scheduled_at: decision.at,
                                outcome,
                                reason,
                                run: Some(
                                    NewRun::of(pipeline, version, head, Trigger::Schedule, params)
                                        .for_tick(&row.name, decision.at),
                                ),
                            },
                            Err(problems) => skipped(
                                decision.at,
                                format!(
                                    "its params do not fit pipeline {name}: {}",
                                    problems
                                        .into_iter()
                                        .map(|p| p.message)
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                ),
                            ),
                        }
                    }
                    _ => skipped(decision.at, format!("pipeline {name} is not declared")),
                }
            };
            ticks.push(tick);
        }
        Ok(Ok((ticks, next)))
    }

    /// The cron of `row`, parsed once per version.
    fn cron(&mut self, row: &ScheduleRow) -> Result<Arc<CronSchedule>, String> {
        let key = (row.name.clone(), row.version.clone());
        if let Some(cron) = self.crons.get(&key) {
            return Ok(cron.clone());
        }
        let spec = &row.definition.spec;
        let tz = parse_timezone(&spec.timezone).map_err(|(why, _)| why)?;
        let cron = Arc::new(
            CronSchedule::new(&spec.cron, tz)
                .map_err(|why| format!("cron {:?}: {why}", spec.cron))?,
        );
        self.crons.insert(key, cron.clone());
        Ok(cron)
    }

    /// Records why `name` cannot fire.
    async fn stall(&self, name: &str, why: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        tracing::error!(schedule = %name, reason = %why, "schedule stalled");
        self.store.stall_schedule(name, why, now).await?;
        Ok(())
    }
}

/// The reason a tick that replaced the schedule's active run carries.
const REPLACED: &str = "replaced the active run";

/// A due tick that starts nothing, for `reason`.
fn skipped(at: DateTime<Utc>, reason: String) -> NewTick {
    NewTick {
        scheduled_at: at,
        outcome: TickOutcome::Skipped,
        reason: Some(reason),
        run: None,
    }
}
