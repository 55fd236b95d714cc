//! Backfilled runs → their turn to start. `trainyard backfill` records every tick of its
//! range at once, each with a pending run; the runs loop starts them oldest first, one per
//! schedule at most every [`SPACING`], and only while the schedule's concurrency allows:
//! under `forbid` and `replace` one run of the schedule at a time (live or backfilled), under
//! `allow` up to [`ALLOW_AT_ONCE`]. A run waiting for its turn holds no live tick up (see
//! `Store::active_runs_by_schedule`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::spec::model::Concurrency;
use crate::store::{RunRow, RunState, Trigger};

/// Shortest time between two backfilled runs of one schedule starting.
pub(super) const SPACING: Duration = Duration::from_secs(1);

/// Most runs of a schedule with `concurrency: allow` that may have started when a
/// backfilled one starts.
pub(super) const ALLOW_AT_ONCE: usize = 4;

/// How many runs of a schedule with `concurrency` may have started when a backfilled one
/// starts.
pub(super) fn limit(concurrency: Concurrency) -> usize {
    match concurrency {
        Concurrency::Allow => ALLOW_AT_ONCE,
        Concurrency::Forbid | Concurrency::Replace => 1,
    }
}

/// Whether `run` is a backfilled run waiting to start.
pub(super) fn is_waiting(run: &RunRow) -> bool {
    run.trigger == Trigger::Backfill && run.state == RunState::Pending && !run.cancel_requested
}

/// The backfilled runs among `runs` (oldest first) that must wait this pass: of each
/// schedule, at most the oldest waiting one starts, when `ready` says the schedule's spacing
/// has passed and fewer of its runs than `limit` says have started (a live run pending
/// counts: it starts in this pass). Returns the held runs and the schedules whose run starts.
pub(super) fn turns<'a>(
    runs: &[&'a RunRow],
    limit: &HashMap<String, usize>,
    ready: impl Fn(&str) -> bool,
) -> (HashSet<i64>, Vec<&'a str>) {
    let mut busy: HashMap<&str, usize> = HashMap::new();
    for run in runs {
        let Some(schedule) = run.schedule.as_deref() else {
            continue;
        };
        let started = run.state == RunState::Running
            || (run.state == RunState::Pending && run.trigger != Trigger::Backfill);
        if started {
            *busy.entry(schedule).or_default() += 1;
        }
    }
    let mut held = HashSet::new();
    let mut starting: Vec<&str> = Vec::new();
    for run in runs.iter().filter(|run| is_waiting(run)) {
        let Some(schedule) = run.schedule.as_deref() else {
            continue;
        };
        let room = limit
            .get(schedule)
            .copied()
            .unwrap_or(1)
            .saturating_sub(busy.get(schedule).copied().unwrap_or(0));
        if room > 0 && ready(schedule) && !starting.contains(&schedule) {
            starting.push(schedule);
        } else {
            held.insert(run.id);
        }
    }
    (held, starting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn run(id: i64, schedule: &str, trigger: Trigger, state: RunState) -> RunRow {
        RunRow {
            id,
            pipeline: "p".to_owned(),
            pipeline_version: "v".to_owned(),
            commit_sha: "c".to_owned(),
            trigger,
            schedule: Some(schedule.to_owned()),
            scheduled_at: Some(Utc::now()),
            params: Default::default(),
            state,
            message: None,
            cancel_requested: false,
            dag_state: None,
            no_cache: false,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    fn limits(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
        pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
    }

    #[test]
    fn the_oldest_waiting_backfill_of_a_schedule_starts_alone() {
        let runs = [
            run(1, "a", Trigger::Backfill, RunState::Pending),
            run(2, "a", Trigger::Backfill, RunState::Pending),
            run(3, "b", Trigger::Backfill, RunState::Pending),
        ];
        let refs: Vec<&RunRow> = runs.iter().collect();
        let (held, starting) = turns(&refs, &limits(&[("a", 4), ("b", 1)]), |_| true);
        assert_eq!(held, HashSet::from([2]), "one per schedule per pass");
        assert_eq!(starting, ["a", "b"]);
    }

    #[test]
    fn a_started_run_of_the_schedule_holds_backfills_under_forbid_but_not_allow() {
        let runs = [
            run(1, "a", Trigger::Schedule, RunState::Running),
            run(2, "a", Trigger::Backfill, RunState::Pending),
            run(3, "b", Trigger::Backfill, RunState::Running),
            run(4, "b", Trigger::Backfill, RunState::Pending),
        ];
        let refs: Vec<&RunRow> = runs.iter().collect();
        let forbid = limits(&[("a", limit(Concurrency::Forbid)), ("b", 1)]);
        let (held, starting) = turns(&refs, &forbid, |_| true);
        assert_eq!(held, HashSet::from([2, 4]));
        assert!(starting.is_empty());
        let allow = limits(&[("a", limit(Concurrency::Allow)), ("b", 2)]);
        let (held, _) = turns(&refs, &allow, |_| true);
        assert!(held.is_empty(), "{held:?}");
    }

    #[test]
    fn backfills_wait_for_their_spacing_and_a_cancelled_one_is_not_held() {
        let mut cancelled = run(1, "a", Trigger::Backfill, RunState::Pending);
        cancelled.cancel_requested = true;
        let runs = [cancelled, run(2, "a", Trigger::Backfill, RunState::Pending)];
        let refs: Vec<&RunRow> = runs.iter().collect();
        let (held, starting) = turns(&refs, &limits(&[("a", 1)]), |_| false);
        assert_eq!(held, HashSet::from([2]));
        assert!(starting.is_empty());
        let (held, starting) = turns(&refs, &limits(&[("a", 1)]), |_| true);
        assert!(held.is_empty());
        assert_eq!(starting, ["a"]);
    }
}
