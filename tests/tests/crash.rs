//! Crash tests of `trainyard serve`: the service is killed with SIGKILL at random moments
//! and restarted, and its store must show every tick exactly once, no tick lost, no finished
//! step run again, no step left running, and no report lost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use trainyard::report::notes::read_note;
use trainyard::store::{
    AttemptRow, AttemptState, ReportKind, ReportState, RunRow, RunState, StepState, Store,
    TickOutcome, TickRow, Trigger,
};
use trainyard_tests::{
    DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, trainyard, wait_for,
};

const PIPELINE: &str = "tick";
const SCHEDULE: &str = "every-second";
/// Status context of the pipeline's runs.
const RUN_CONTEXT: &str = "trainyard/run/tick";
/// `retries` of the ticking pipeline's step.
const RETRIES: usize = 1;
/// Replays the kill times of an earlier run of the crash test when set to its seed.
const SEED_VARIABLE: &str = "TRAINYARD_CRASH_SEED";
/// What the service records for an attempt that was running when it died.
const INTERRUPTED: &str = "interrupted";

/// A pipeline whose one short step is retried once, and a schedule firing it every second
/// that replays every missed tick and lets runs overlap.
fn ticking_pipeline() -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: {PIPELINE}, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  steps:
    - name: nap
      retries: {RETRIES}
      run: [python3, -c, \"import time; time.sleep(0.2)\"]
---
apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {{name: {SCHEDULE}}}
spec:
  pipeline: {PIPELINE}
  cron: \"* * * * * *\"
  catchup: all
  max_catchup: 1000
  concurrency: allow
  suspend: false
"
    )
}

/// A pipeline started by its commit: a fast step `a`, then `b`, which sleeps 3 s and may be
/// retried once.
fn two_steps() -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: two-steps, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  steps:
    - name: a
      run: [python3, -c, \"print('a')\"]
    - name: b
      needs: [a]
      retries: 1
      run: [sleep, \"3\"]
"
    )
}

/// xorshift64*: enough randomness for kill times, and reproducible from its seed.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Prng {
        // Zero is the one state xorshift never leaves.
        Prng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration from `low` to `high` milliseconds.
    fn millis_between(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }
}

/// The seed in [`SEED_VARIABLE`], or one taken from the clock.
fn seed() -> Result<u64> {
    if let Ok(text) = std::env::var(SEED_VARIABLE) {
        return Ok(text.parse()?);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(now.as_secs() ^ (u64::from(now.subsec_nanos()) << 32))
}

/// The first whole second after `at`: the first fire time of a per-second cron.
fn next_second(at: DateTime<Utc>) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(at.timestamp() + 1, 0).ok_or_else(|| format!("{at} + 1 s").into())
}

/// Every tick of the schedule, oldest first.
async fn ticks(store: &Store) -> Result<Vec<TickRow>> {
    let mut ticks = store.ticks(SCHEDULE, 100_000).await?;
    ticks.reverse();
    Ok(ticks)
}

/// Reports about `commit` that are neither delivered nor replaced by a newer one.
async fn undelivered_reports(store: &Store, commit: &str) -> Result<usize> {
    Ok(store
        .reports_of_commit::<serde_json::Value>(commit)
        .await?
        .iter()
        .filter(|r| !matches!(r.state, ReportState::Delivered | ReportState::Superseded))
        .count())
}

/// Checks the attempts of one step of `run`: numbered from 1, at most `retries + 1`, every
/// one but the last failed by a crash, none running; returns how many were interrupted.
fn check_attempts(run: &RunRow, step: &str, attempts: &[AttemptRow]) -> Result<usize> {
    let mine: Vec<&AttemptRow> = attempts.iter().filter(|a| a.step == step).collect();
    assert!(
        !mine.is_empty() && mine.len() <= RETRIES + 1,
        "step {step} of run {} has {} attempts, allowed 1 to {}: {mine:#?}",
        run.id,
        mine.len(),
        RETRIES + 1
    );
    for (number, attempt) in (1..).zip(&mine) {
        assert_eq!(attempt.attempt, number, "attempts are numbered: {mine:#?}");
        assert_ne!(
            attempt.state,
            AttemptState::Running,
            "an attempt of finished run {} is left running: {mine:#?}",
            run.id
        );
        if attempt.state == AttemptState::Failed {
            assert!(
                attempt
                    .message
                    .as_deref()
                    .is_some_and(|m| m.starts_with(INTERRUPTED)),
                "the step only fails when the service dies under it: {mine:#?}"
            );
        }
    }
    let (last, earlier) = mine
        .split_last()
        .ok_or_else(|| format!("step {step} of run {} was never attempted", run.id))?;
    for attempt in earlier {
        assert_eq!(
            attempt.state,
            AttemptState::Failed,
            "a step attempted again after an attempt that did not fail: {mine:#?}"
        );
    }
    assert!(
        matches!(last.state, AttemptState::Succeeded | AttemptState::Failed),
        "{mine:#?}"
    );
    Ok(mine
        .iter()
        .filter(|a| a.state == AttemptState::Failed)
        .count())
}

async fn random_kills(data: DataDir) -> TestResult {
    let seed = seed()?;
    eprintln!("seed {seed} (set {SEED_VARIABLE}={seed} to kill at the same moments again)");
    let mut random = Prng::new(seed);
    let repo = Repo::new()?;
    repo.write("tick.yaml", ticking_pipeline())?;
    let commit = repo.commit("tick every second")?.to_string();
    let store = data.store().await?;

    let crashing = Instant::now();
    let mut lives = Vec::new();
    while crashing.elapsed() < Duration::from_secs(12) {
        let service = Service::start(repo.path(), &data, &[])?;
        let life = random.millis_between(300, 1500);
        tokio::time::sleep(life).await;
        service.kill_hard()?;
        // Staying down past a tick's time makes the next life fire it by catching up.
        let down = random.millis_between(0, 1500);
        tokio::time::sleep(down).await;
        lives.push((life.as_millis(), down.as_millis()));
    }
    eprintln!("(ms alive, ms down) per life: {lives:?}");

    let last_start = Utc::now();
    let service = Service::start(repo.path(), &data, &["--poll-seconds", "1"])?;
    wait_for(
        Duration::from_secs(10),
        "the last service records the ticks due since it started",
        async || {
            let last = store.last_tick(SCHEDULE).await?;
            Ok(last.is_some_and(|t| t.scheduled_at >= last_start))
        },
    )
    .await?;
    // A per-second schedule always has a run in flight; suspending it lets the service
    // settle, so that every run can be required to be finished and reported.
    repo.edit("tick.yaml", "suspend: false", "suspend: true")?;
    let suspend = repo.commit("suspend")?.to_string();
    wait_for(
        Duration::from_secs(15),
        "every run finishes and every report is delivered",
        async || {
            let suspended = store.schedule(SCHEDULE).await?.is_some_and(|s| s.suspended);
            Ok(suspended
                && store.unfinished_run_ids().await?.is_empty()
                && undelivered_reports(&store, &commit).await? == 0
                && undelivered_reports(&store, &suspend).await? == 0)
        },
    )
    .await?;
    assert_eq!(service.stop()?, Some(0), "SIGINT stops the service cleanly");

    let schedule = store
        .schedule(SCHEDULE)
        .await?
        .ok_or("the schedule is not stored")?;
    let ticks = ticks(&store).await?;
    let distinct: BTreeSet<DateTime<Utc>> = ticks.iter().map(|t| t.scheduled_at).collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick is recorded twice");
    let (first, last) = match (ticks.first(), ticks.last()) {
        (Some(first), Some(last)) => (first, last),
        _ => return Err("no tick was recorded".into()),
    };
    assert_eq!(
        first.scheduled_at,
        next_second(schedule.active_since)?,
        "the first second after the schedule was declared is its first tick"
    );
    assert!(last.scheduled_at >= last_start, "{last:?}");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].scheduled_at - pair[0].scheduled_at,
            TimeDelta::seconds(1),
            "catchup: all keeps every tick, but none is recorded between {} and {}",
            pair[0].scheduled_at,
            pair[1].scheduled_at
        );
    }

    let runs = store
        .list_runs(Some(PIPELINE), 100_000)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut tick_of_run: BTreeMap<i64, &TickRow> = BTreeMap::new();
    for tick in &ticks {
        assert_eq!(tick.outcome, TickOutcome::Fired, "{tick:?}");
        let run = tick
            .run_id
            .ok_or_else(|| format!("fired without a run: {tick:?}"))?;
        if let Some(other) = tick_of_run.insert(run, tick) {
            panic!("run {run} belongs to two ticks: {other:?} and {tick:?}");
        }
    }
    let run_ids: BTreeSet<i64> = runs.iter().map(|r| r.id).collect();
    assert_eq!(
        run_ids,
        tick_of_run.keys().copied().collect::<BTreeSet<_>>(),
        "every run of the pipeline is the run of exactly one tick"
    );

    let mut interrupted = 0;
    let mut finished_by_commit: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        let tick = tick_of_run
            .get(&run.id)
            .ok_or_else(|| format!("run {} has no tick", run.id))?;
        assert_eq!(run.trigger, Trigger::Schedule, "{run:?}");
        assert_eq!(run.schedule.as_deref(), Some(SCHEDULE), "{run:?}");
        assert_eq!(run.scheduled_at, Some(tick.scheduled_at), "{run:?}");
        assert!(run.state.is_finished(), "run left unfinished: {run:?}");
        *finished_by_commit.entry(&run.commit_sha).or_default() += 1;
        let steps = store.steps(run.id).await?;
        let attempts = store.attempts(run.id).await?;
        for step in &steps {
            let expected = match run.state {
                RunState::Succeeded => StepState::Succeeded,
                _ => StepState::Failed,
            };
            assert_eq!(step.state, expected, "step of {run:?}: {step:?}");
            interrupted += check_attempts(run, &step.name, &attempts)?;
        }
    }
    eprintln!(
        "{} lives, {} ticks, {} runs, {interrupted} attempts interrupted",
        lives.len() + 1,
        ticks.len(),
        runs.len()
    );

    for (run_commit, finished) in finished_by_commit {
        let reports = store
            .reports_of_commit::<serde_json::Value>(run_commit)
            .await?;
        for report in &reports {
            assert!(
                matches!(
                    report.state,
                    ReportState::Delivered | ReportState::Superseded
                ),
                "every report is delivered or replaced by a newer one: {report:#?}"
            );
        }
        let of_runs: Vec<_> = reports
            .iter()
            .filter(|r| r.kind == ReportKind::Status && r.key == RUN_CONTEXT)
            .collect();
        assert_eq!(
            of_runs.len(),
            finished,
            "each finished run enqueued its status exactly once"
        );
        let newest = of_runs.last().ok_or("no run status was reported")?;
        assert_eq!(newest.state, ReportState::Delivered, "{newest:#?}");
        let description = newest.payload["description"]
            .as_str()
            .ok_or("a status without description")?;
        let note = read_note(repo.path(), run_commit)?.unwrap_or_default();
        assert!(
            note.lines()
                .any(|l| l.starts_with(&format!("{RUN_CONTEXT}: ")) && l.ends_with(description)),
            "the note shows the newest run status {description:?}:\n{note}"
        );
    }
    Ok(())
}

async fn killed_step(data: DataDir) -> TestResult {
    let repo = Repo::with_files(&[("two-steps.yaml", two_steps())])?;
    let store = data.store().await?;

    let service = Service::start(repo.path(), &data, &[])?;
    let mut run = None;
    wait_for(Duration::from_secs(20), "step b runs", async || {
        let Some(Ok(found)) = store.list_runs(Some("two-steps"), 1).await?.pop() else {
            return Ok(false);
        };
        let steps = store.steps(found.id).await?;
        run = Some(found.id);
        Ok(steps
            .iter()
            .any(|s| s.name == "b" && s.state == StepState::Running))
    })
    .await?;
    service.kill_hard()?;
    let run = run.ok_or("no run was created")?;

    let service = Service::start(repo.path(), &data, &[])?;
    wait_for(Duration::from_secs(25), "the run finishes", async || {
        Ok(store.run(run).await?.is_some_and(|r| r.state.is_finished()))
    })
    .await?;
    assert_eq!(service.stop()?, Some(0), "SIGINT stops the service cleanly");

    let finished = store.run(run).await?.ok_or("the run vanished")?;
    assert_eq!(finished.state, RunState::Succeeded, "{finished:?}");
    let attempts = store.attempts(run).await?;
    let of =
        |step: &str| -> Vec<&AttemptRow> { attempts.iter().filter(|a| a.step == step).collect() };
    let a = of("a");
    assert_eq!(
        a.len(),
        1,
        "a finished before the crash and is not run again: {a:#?}"
    );
    assert_eq!(a[0].state, AttemptState::Succeeded, "{a:#?}");
    let b = of("b");
    assert_eq!(b.len(), 2, "b is retried once: {b:#?}");
    assert_eq!(b[0].state, AttemptState::Failed, "{b:#?}");
    assert_eq!(b[0].exit_code, None, "{b:#?}");
    assert!(
        b[0].message
            .as_deref()
            .is_some_and(|m| m.starts_with(INTERRUPTED)),
        "the first attempt of b failed as interrupted: {b:#?}"
    );
    assert_eq!(b[1].state, AttemptState::Succeeded, "{b:#?}");
    let steps = store.steps(run).await?;
    assert!(
        steps
            .iter()
            .all(|s| s.state == StepState::Succeeded && s.finished_at.is_some()),
        "{steps:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_left_on_the_notes_ref_by_a_killed_service_does_not_hold_back_reports() -> TestResult
{
    let repo = Repo::with_files(&[("two-steps.yaml", two_steps())])?;
    let commit = git2::Repository::open(repo.path())?
        .head()?
        .peel_to_commit()?
        .id()
        .to_string();
    // What a SIGKILL between libgit2 taking the ref's lock and renaming it into place leaves;
    // ten minutes old, so no writer that is still alive can be holding it.
    let notes = repo.path().join(".git/refs/notes");
    std::fs::create_dir_all(&notes)?;
    let lock = std::fs::File::create(notes.join("trainyard.lock"))?;
    lock.set_modified(std::time::SystemTime::now() - Duration::from_secs(600))?;
    drop(lock);
    let data = DataDir::new()?;
    let data_dir = data.path().to_string_lossy().into_owned();
    let run = trainyard(repo.path(), &["serve", "--once", "--data-dir", &data_dir])?;
    assert_eq!(run.code, Some(0), "{run}");

    let store = data.store().await?;
    let reports = store
        .reports_of_commit::<serde_json::Value>(&commit)
        .await?;
    assert!(!reports.is_empty(), "{run}");
    for report in &reports {
        assert_eq!(
            report.state,
            ReportState::Delivered,
            "a stale lock does not hold reports back: {report:#?}\n{run}"
        );
    }
    let note = read_note(repo.path(), &commit)?.unwrap_or_default();
    assert!(
        note.contains("trainyard/run/two-steps: success"),
        "{note}\n{run}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_service_at_random_moments_neither_repeats_nor_loses_ticks_on_sqlite()
-> TestResult {
    random_kills(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_service_at_random_moments_neither_repeats_nor_loses_ticks_on_postgres()
-> TestResult {
    random_kills(DataDir::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_killed_with_the_service_is_retried_and_finished_ones_are_not_rerun_on_sqlite()
-> TestResult {
    killed_step(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_killed_with_the_service_is_retried_and_finished_ones_are_not_rerun_on_postgres()
-> TestResult {
    killed_step(DataDir::postgres().await?).await
}
