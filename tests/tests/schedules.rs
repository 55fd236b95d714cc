//! End-to-end tests of schedules under `trainyard serve`: per-second crons fire while the
//! service runs, `concurrency: forbid` skips ticks while a run is active, and a suspended
//! schedule records nothing and does not replay its suspended period when resumed.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use trainyard::store::{RunRow, RunState, Store, TickOutcome, TickRow, Trigger};
use trainyard_tests::{DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, wait_for};

const PIPELINE: &str = "job";
const SCHEDULE: &str = "every-second";
/// Why `concurrency: forbid` skips a tick.
const STILL_ACTIVE: &str = "previous run still active";

/// A pipeline whose one step runs `code` in Python, and a per-second schedule of it with the
/// given concurrency. Every missed tick is replayed, so that a late wake-up of the loop on a
/// busy machine fires ticks instead of recording them as missed.
fn scheduled_pipeline(code: &str, concurrency: &str, suspend: bool) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: {PIPELINE}, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  steps:
    - name: work
      run: [python3, -c, \"{code}\"]
---
apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {{name: {SCHEDULE}}}
spec:
  pipeline: {PIPELINE}
  cron: \"* * * * * *\"
  catchup: all
  max_catchup: 1000
  concurrency: {concurrency}
  suspend: {suspend}
"
    )
}

/// Every tick of the schedule, oldest first.
async fn ticks(store: &Store) -> Result<Vec<TickRow>> {
    let mut ticks = store.ticks(SCHEDULE, 10_000).await?;
    ticks.reverse();
    Ok(ticks)
}

/// Every run of the pipeline, oldest first.
async fn runs(store: &Store) -> Result<Vec<RunRow>> {
    let mut runs = store
        .list_runs(Some(PIPELINE), 10_000)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    runs.reverse();
    Ok(runs)
}

/// The first whole second after `at`: the first fire time of a per-second cron.
fn next_second(at: DateTime<Utc>) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(at.timestamp() + 1, 0).ok_or_else(|| format!("{at} + 1 s").into())
}

/// Asserts that `ticks` (oldest first) are one second apart: no tick was lost between them.
fn assert_every_second(ticks: &[TickRow]) {
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].scheduled_at - pair[0].scheduled_at,
            TimeDelta::seconds(1),
            "no tick is recorded between {} and {}",
            pair[0].scheduled_at,
            pair[1].scheduled_at
        );
    }
}

/// Asserts that the fired ticks and the runs of the schedule match one to one, and returns
/// the runs in tick order.
fn assert_one_run_per_fired_tick<'a>(ticks: &[TickRow], runs: &'a [RunRow]) -> Vec<&'a RunRow> {
    let fired: Vec<&TickRow> = ticks
        .iter()
        .filter(|t| t.outcome == TickOutcome::Fired)
        .collect();
    let mut matched = Vec::with_capacity(fired.len());
    for tick in &fired {
        let of_tick: Vec<&RunRow> = runs.iter().filter(|r| Some(r.id) == tick.run_id).collect();
        assert_eq!(of_tick.len(), 1, "fired tick without its run: {tick:?}");
        let run = of_tick[0];
        assert_eq!(run.trigger, Trigger::Schedule, "{run:?}");
        assert_eq!(run.schedule.as_deref(), Some(SCHEDULE), "{run:?}");
        assert_eq!(run.scheduled_at, Some(tick.scheduled_at), "{run:?}");
        matched.push(run);
    }
    let distinct: BTreeSet<i64> = matched.iter().map(|r| r.id).collect();
    assert_eq!(distinct.len(), matched.len(), "a run serves two ticks");
    assert_eq!(
        runs.len(),
        matched.len(),
        "every run of the schedule has its tick: {runs:#?}"
    );
    matched
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_second_schedule_fires_while_serving() -> TestResult {
    let repo = Repo::with_files(&[(
        "job.yaml",
        scheduled_pipeline("print('tick')", "allow", false),
    )])?;
    let data = DataDir::new()?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, &[])?;
    wait_for(Duration::from_secs(15), "three runs succeed", async || {
        let runs = runs(&store).await?;
        Ok(runs
            .iter()
            .filter(|r| r.state == RunState::Succeeded)
            .count()
            >= 3)
    })
    .await?;
    assert_eq!(service.stop()?, Some(0), "SIGINT stops the service cleanly");

    let schedule = store
        .schedule(SCHEDULE)
        .await?
        .ok_or("the schedule is not stored")?;
    let ticks = ticks(&store).await?;
    let first = ticks.first().ok_or("no tick was recorded")?;
    assert_eq!(
        first.scheduled_at,
        next_second(schedule.active_since)?,
        "the schedule fires from the first second after it was declared"
    );
    assert_every_second(&ticks);
    assert!(
        ticks.iter().all(|t| t.outcome == TickOutcome::Fired),
        "with concurrency: allow every tick fires: {ticks:#?}"
    );
    let runs = runs(&store).await?;
    assert_one_run_per_fired_tick(&ticks, &runs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_forbid_skips_ticks_while_a_run_is_active() -> TestResult {
    let code = "import time; time.sleep(2.5)";
    let repo = Repo::with_files(&[("job.yaml", scheduled_pipeline(code, "forbid", false))])?;
    let data = DataDir::new()?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, &[])?;
    wait_for(
        Duration::from_secs(20),
        "two runs finish and a tick is skipped",
        async || {
            let finished = runs(&store)
                .await?
                .iter()
                .filter(|r| r.state.is_finished())
                .count();
            let skipped = ticks(&store)
                .await?
                .iter()
                .filter(|t| t.outcome == TickOutcome::Skipped)
                .count();
            Ok(finished >= 2 && skipped >= 1)
        },
    )
    .await?;
    assert_eq!(service.stop()?, Some(0), "SIGINT stops the service cleanly");

    let ticks = ticks(&store).await?;
    assert_every_second(&ticks);
    let runs = runs(&store).await?;
    let fired = assert_one_run_per_fired_tick(&ticks, &runs);
    for pair in fired.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        assert!(
            earlier
                .finished_at
                .is_some_and(|end| end <= later.created_at),
            "runs of a forbid schedule never overlap: {earlier:#?} {later:#?}"
        );
    }
    for tick in ticks.iter().filter(|t| t.outcome != TickOutcome::Fired) {
        assert_eq!(tick.outcome, TickOutcome::Skipped, "{tick:?}");
        assert_eq!(tick.reason.as_deref(), Some(STILL_ACTIVE), "{tick:?}");
        assert_eq!(tick.run_id, None, "a skipped tick starts nothing: {tick:?}");
        let blocking = fired
            .iter()
            .rev()
            .find(|r| r.scheduled_at < Some(tick.scheduled_at))
            .ok_or_else(|| format!("skipped before any run started: {tick:?}"))?;
        assert!(
            blocking
                .finished_at
                .is_none_or(|end| end >= tick.scheduled_at),
            "the run before a skipped tick was still active at its time: {tick:?} {blocking:#?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_schedule_records_nothing_and_resuming_does_not_replay() -> TestResult {
    let repo = Repo::with_files(&[("job.yaml", scheduled_pipeline("pass", "allow", false))])?;
    let data = DataDir::new()?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, &["--poll-seconds", "1"])?;
    wait_for(Duration::from_secs(15), "two ticks fire", async || {
        Ok(ticks(&store).await?.len() >= 2)
    })
    .await?;

    repo.edit("job.yaml", "suspend: false", "suspend: true")?;
    repo.commit("suspend")?;
    wait_for(
        Duration::from_secs(10),
        "the schedule is suspended",
        async || Ok(store.schedule(SCHEDULE).await?.is_some_and(|s| s.suspended)),
    )
    .await?;
    let suspended_at = Utc::now();
    // Long enough for three ticks that catchup: all would replay if resuming replayed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let while_suspended = ticks(&store).await?;

    let resume_committed = Utc::now();
    repo.edit("job.yaml", "suspend: true", "suspend: false")?;
    repo.commit("resume")?;
    let mut resumed_at = None;
    wait_for(
        Duration::from_secs(10),
        "the schedule fires again",
        async || {
            let Some(schedule) = store.schedule(SCHEDULE).await? else {
                return Ok(false);
            };
            if schedule.suspended {
                return Ok(false);
            }
            resumed_at = Some(schedule.active_since);
            let after = ticks(&store)
                .await?
                .iter()
                .filter(|t| t.scheduled_at > schedule.active_since)
                .count();
            Ok(after >= 2)
        },
    )
    .await?;
    assert_eq!(service.stop()?, Some(0), "SIGINT stops the service cleanly");
    let resumed_at = resumed_at.ok_or("the schedule was not resumed")?;

    let ticks = ticks(&store).await?;
    assert!(
        while_suspended
            .iter()
            .all(|t| t.scheduled_at <= suspended_at),
        "no tick is recorded while the schedule is suspended: {while_suspended:#?}"
    );
    let (before, after): (Vec<TickRow>, Vec<TickRow>) = ticks
        .into_iter()
        .partition(|t| t.scheduled_at <= suspended_at);
    let replayed: Vec<&TickRow> = after
        .iter()
        .filter(|t| t.scheduled_at <= resume_committed)
        .collect();
    assert!(
        replayed.is_empty(),
        "nothing of the suspended period ({suspended_at} to {resume_committed}) is replayed: \
         {replayed:#?}"
    );
    assert!(before.len() >= 2, "{before:#?}");
    assert!(
        resumed_at >= resume_committed,
        "the schedule is active again from the resuming commit: {resumed_at}"
    );
    let first_after = after.first().ok_or("no tick after resuming")?;
    assert_eq!(
        first_after.scheduled_at,
        next_second(resumed_at)?,
        "the schedule fires again from the first second after it was resumed: {after:#?}"
    );
    assert_every_second(&before);
    assert_every_second(&after);
    let runs = runs(&store).await?;
    let mut all = before;
    all.extend(after);
    assert_one_run_per_fired_tick(&all, &runs);
    Ok(())
}
