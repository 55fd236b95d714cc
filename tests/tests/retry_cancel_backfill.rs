//! `trainyard cancel`, `retry` and `backfill` through the real binary, against a running
//! service: a cancel stops the running step's process and skips what waits, a retry runs
//! only the failed step again in the same run, and a backfill over a daylight-saving change
//! fires each past fire time once, however often it is asked. Bad input is refused with the
//! argument named, and changes nothing.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use trainyard::report::notes::read_note;
use trainyard::store::{AttemptState, RunState, StepState, TickOutcome, Trigger};
use trainyard_tests::{
    DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, alive, cli, finished, newest_run,
    temp_dir, wait_for,
};

/// A poll longer than any test: a request is acted on because the command line announces it
/// (PostgreSQL's NOTIFY, or the file beside the SQLite database), not because the service
/// looks every so often.
const NO_POLL: &[&str] = &["--poll-seconds", "3600"];

/// How long the service is left alone before a request, so that what a pass just did (a
/// report delivered, a run finished) has woken it for the last time: the request is then
/// acted on only because it was announced.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a run of these short pipelines may take under a loaded machine.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A pipeline started by its commit: `a`, then `b`, which fails the first time it runs (it
/// leaves `marker` behind) and succeeds after, then `c`.
fn flaky_once(marker: &Path) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: flaky, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  steps:
    - name: a
      run: [python3, -c, \"print('a')\"]
    - name: b
      needs: [a]
      run:
        - python3
        - -c
        - |
          import os, sys
          marker = {marker:?}
          if not os.path.exists(marker):
              open(marker, 'w').close()
              sys.exit(3)
          print('b, second time')
    - name: c
      needs: [b]
      run: [sh, -c, \"echo c\"]
",
        marker = marker.display().to_string()
    )
}

async fn retry_reruns_only_the_failed_step(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let marker = scratch.path().join("b-ran-once");
    let repo = Repo::with_files(&[("flaky.yaml", flaky_once(&marker))])?;
    let commit = git2::Repository::open(repo.path())?
        .head()?
        .peel_to_commit()?
        .id()
        .to_string();
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    let run = newest_run(&store, "flaky").await?;
    assert_eq!(finished(&store, run, &data).await?.state, RunState::Failed);
    let steps = store.steps(run).await?;
    let states: Vec<StepState> = steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [StepState::Succeeded, StepState::Failed, StepState::Skipped]
    );

    // Refused: an unknown run; the run's state is left as it is.
    let unknown = cli(&repo, &data, &["retry", "999"])?;
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(unknown.stderr.contains("run 999 not found"), "{unknown}");
    let not_a_number = cli(&repo, &data, &["retry", "latest"])?;
    assert_ne!(not_a_number.code, Some(0), "{not_a_number}");
    assert!(not_a_number.stderr.contains("<RUN>"), "{not_a_number}");

    tokio::time::sleep(SETTLE).await;
    let retried = cli(&repo, &data, &["retry", &run.to_string()])?;
    assert_eq!(retried.code, Some(0), "{retried}");
    assert!(
        retried
            .stdout
            .contains(&format!("run {run}: retrying b, c")),
        "{retried}"
    );
    assert_eq!(
        finished(&store, run, &data).await?.state,
        RunState::Succeeded
    );
    let attempts = store.attempts(run).await?;
    let of = |step: &str| -> Vec<(u32, AttemptState)> {
        attempts
            .iter()
            .filter(|a| a.step == step)
            .map(|a| (a.attempt, a.state))
            .collect()
    };
    assert_eq!(of("a"), [(1, AttemptState::Succeeded)], "a is kept");
    assert_eq!(
        of("b"),
        [(1, AttemptState::Failed), (2, AttemptState::Succeeded)],
        "b ran again as attempt 2"
    );
    assert_eq!(of("c"), [(1, AttemptState::Succeeded)]);

    // The run's report is updated in place: one line for its context, now a success.
    let mut note = String::new();
    wait_for(RUN_LIMIT, "the note says the run succeeded", async || {
        note = read_note(repo.path(), &commit)?.unwrap_or_default();
        Ok(note.contains("trainyard/run/flaky: success"))
    })
    .await
    .map_err(|e| format!("{e}\n{note}"))?;
    assert_eq!(
        note.matches("trainyard/run/flaky:").count(),
        1,
        "one line for the run, not two:\n{note}"
    );

    // A succeeded run has nothing to retry.
    let again = cli(&repo, &data, &["retry", &run.to_string()])?;
    assert_eq!(again.code, Some(1), "{again}");
    assert!(
        again.stderr.contains("nothing") || again.stderr.contains("no failed"),
        "{again}"
    );
    assert_eq!(store.attempts(run).await?.len(), attempts.len());
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// A pipeline started by its commit whose step `sleeper` writes its process id to
/// `pid_file` and sleeps for a minute, and `after`, which needs it.
fn sleeper(pid_file: &Path) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: sleepy, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  steps:
    - name: sleeper
      retries: 2
      run:
        - python3
        - -c
        - |
          import os, time
          with open({pid:?} + '.tmp', 'w') as f:
              f.write(str(os.getpid()))
          os.rename({pid:?} + '.tmp', {pid:?})
          time.sleep(60)
    - name: after
      needs: [sleeper]
      run: [sh, -c, \"echo after\"]
",
        pid = pid_file.display().to_string()
    )
}

async fn cancel_stops_the_running_step_and_skips_the_rest(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let pid_file = scratch.path().join("sleeper.pid");
    let repo = Repo::with_files(&[("sleepy.yaml", sleeper(&pid_file))])?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    let run = newest_run(&store, "sleepy").await?;
    wait_for(
        RUN_LIMIT,
        "the sleeper runs",
        async || Ok(pid_file.exists()),
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(alive(pid), "the step's process {pid} runs");

    let unknown = cli(&repo, &data, &["cancel", "999"])?;
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(unknown.stderr.contains("run 999 not found"), "{unknown}");
    let early_retry = cli(&repo, &data, &["retry", &run.to_string()])?;
    assert_eq!(early_retry.code, Some(1), "{early_retry}");
    assert!(
        early_retry
            .stderr
            .contains("only a finished run can be retried"),
        "{early_retry}"
    );

    tokio::time::sleep(SETTLE).await;
    let cancelled = cli(&repo, &data, &["cancel", &run.to_string()])?;
    assert_eq!(cancelled.code, Some(0), "{cancelled}");
    assert!(cancelled.stdout.contains("cancel requested"), "{cancelled}");
    // Acted on when announced: well before the service's own look at running steps, which
    // comes every 30 s.
    let mut state = None;
    wait_for(
        Duration::from_secs(15),
        "the run is cancelled",
        async || {
            state = store.run(run).await?.map(|r| r.state);
            Ok(state.is_some_and(RunState::is_finished))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    assert_eq!(state, Some(RunState::Cancelled));
    wait_for(
        Duration::from_secs(15),
        "the step's process is gone",
        async || Ok(!alive(pid)),
    )
    .await?;
    let steps = store.steps(run).await?;
    let states: Vec<(&str, StepState)> = steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        states,
        [
            ("sleeper", StepState::Cancelled),
            ("after", StepState::Skipped)
        ]
    );
    let attempts = store.attempts(run).await?;
    assert_eq!(attempts.len(), 1, "a cancel is not retried: {attempts:#?}");
    assert_eq!(attempts[0].state, AttemptState::Cancelled);

    let twice = cli(&repo, &data, &["cancel", &run.to_string()])?;
    assert_eq!(twice.code, Some(1), "{twice}");
    assert!(
        twice.stderr.contains("already finished (cancelled)"),
        "{twice}"
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// A nightly schedule at 02:30 in Berlin, whose local time is repeated on the last Sunday
/// of October, and the pipeline it starts, which lasts a little so that overlaps would show.
const NIGHTLY: &str = "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: report, owner: team-a}
spec:
  image: IMAGE
  steps:
    - name: build
      run: [python3, -c, \"import time; time.sleep(0.5); print('report')\"]
---
apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {name: nightly}
spec:
  pipeline: report
  cron: \"30 2 * * *\"
  timezone: Europe/Berlin
  concurrency: forbid
";

fn utc(text: &str) -> Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

async fn backfill_fires_each_past_time_once(data: DataDir) -> TestResult {
    let repo = Repo::with_files(&[("nightly.yaml", NIGHTLY.replace("IMAGE", PINNED_IMAGE))])?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    wait_for(RUN_LIMIT, "the schedule is declared", async || {
        Ok(store.schedule("nightly").await?.is_some())
    })
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    let range = [
        "--from",
        "2026-10-23T12:00:00Z",
        "--to",
        "2026-10-26T12:00:00Z",
    ];
    // In Berlin: 24 October 02:30 CEST, 25 October 02:30 CEST (the first of two), and
    // 26 October 02:30 CET.
    let expected = [
        utc("2026-10-24T00:30:00Z")?,
        utc("2026-10-25T00:30:00Z")?,
        utc("2026-10-26T01:30:00Z")?,
    ];

    // Refused, and nothing recorded: reversed and unparsable ranges, an unknown schedule.
    let reversed = cli(
        &repo,
        &data,
        &[
            "backfill",
            "nightly",
            "--from",
            "2026-10-26T12:00:00Z",
            "--to",
            "2026-10-23T12:00:00Z",
        ],
    )?;
    assert_eq!(reversed.code, Some(1), "{reversed}");
    assert!(
        reversed
            .stderr
            .contains("--from 2026-10-26T12:00:00+00:00 is after --to"),
        "{reversed}"
    );
    let unparsable = cli(
        &repo,
        &data,
        &[
            "backfill",
            "nightly",
            "--from",
            "last tuesday",
            "--to",
            "2026-10-23T12:00:00Z",
        ],
    )?;
    assert_ne!(unparsable.code, Some(0), "{unparsable}");
    assert!(unparsable.stderr.contains("--from"), "{unparsable}");
    let mut unknown_args = vec!["backfill", "weekly"];
    unknown_args.extend(range);
    let unknown = cli(&repo, &data, &unknown_args)?;
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(
        unknown.stderr.contains("schedule weekly is not declared"),
        "{unknown}"
    );

    let mut dry_args = vec!["backfill", "nightly", "--dry-run"];
    dry_args.extend(range);
    let dry = cli(&repo, &data, &dry_args)?;
    assert_eq!(dry.code, Some(0), "{dry}");
    for line in [
        "2026-10-24T00:30:00Z  2026-10-24 02:30:00 CEST",
        "2026-10-25T00:30:00Z  2026-10-25 02:30:00 CEST",
        "2026-10-26T01:30:00Z  2026-10-26 02:30:00 CET",
    ] {
        assert!(dry.stdout.contains(line), "{line} in\n{dry}");
    }
    assert!(dry.stdout.contains("3 fire times to backfill"), "{dry}");
    assert_eq!(dry.stdout.lines().count(), 4, "{dry}");
    assert!(
        store.ticks("nightly", 100).await?.is_empty(),
        "a dry run records nothing"
    );
    assert!(store.list_runs(Some("report"), 10).await?.is_empty());

    let mut args = vec!["backfill", "nightly"];
    args.extend(range);
    let first = cli(&repo, &data, &args)?;
    assert_eq!(first.code, Some(0), "{first}");
    assert!(first.stdout.contains("3 ticks backfilled"), "{first}");
    let mut ticks = store.ticks("nightly", 100).await?;
    ticks.reverse();
    let times: Vec<DateTime<Utc>> = ticks.iter().map(|t| t.scheduled_at).collect();
    assert_eq!(times, expected);
    assert!(ticks.iter().all(|t| t.outcome == TickOutcome::Fired));
    let mut runs = Vec::new();
    for tick in &ticks {
        let id = tick.run_id.ok_or("a fired tick has its run")?;
        assert_eq!(
            finished(&store, id, &data).await?.state,
            RunState::Succeeded
        );
        runs.push(store.run(id).await?.ok_or("the run")?);
    }
    for (run, at) in runs.iter().zip(expected) {
        assert_eq!(run.trigger, Trigger::Backfill);
        assert_eq!(run.scheduled_at, Some(at));
    }
    // `concurrency: forbid`: one run at a time, oldest first.
    for pair in runs.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            after.started_at >= before.finished_at,
            "run {} started before run {} finished: {pair:#?}",
            after.id,
            before.id
        );
    }

    let second = cli(&repo, &data, &args)?;
    assert_eq!(second.code, Some(0), "{second}");
    assert!(
        second
            .stdout
            .contains("nothing to backfill (3 ticks already recorded)"),
        "{second}"
    );
    assert_eq!(store.ticks("nightly", 100).await?.len(), 3);
    assert_eq!(store.list_runs(Some("report"), 10).await?.len(), 3);
    assert_eq!(service.stop()?, Some(0));

    // With no service running, a backfill is recorded and waits for one: here over the
    // spring change (02:30 on 29 March does not exist and fires at 03:00 CEST), at most one.
    let spring = cli(
        &repo,
        &data,
        &[
            "backfill",
            "nightly",
            "--from",
            "2026-03-28T12:00:00Z",
            "--to",
            "2026-03-30T12:00:00Z",
            "--max",
            "1",
        ],
    )?;
    assert_eq!(spring.code, Some(0), "{spring}");
    assert!(
        spring
            .stdout
            .contains("2026-03-29T01:00:00Z  2026-03-29 03:00:00 CEST  run 4"),
        "{spring}"
    );
    assert!(
        spring
            .stdout
            .contains("1 tick backfilled (1 fire time beyond --max left for another backfill)"),
        "{spring}"
    );
    assert_eq!(
        store.run(4).await?.map(|r| r.state),
        Some(RunState::Pending),
        "it waits for a service"
    );
    let once = cli(&repo, &data, &["serve", "--once"])?;
    assert_eq!(once.code, Some(0), "{once}");
    assert!(once.stdout.contains("run 4 succeeded"), "{once}");
    let april = utc("2026-04-01T00:00:00Z")?;
    let spring_ticks: Vec<DateTime<Utc>> = store
        .ticks("nightly", 100)
        .await?
        .iter()
        .map(|t| t.scheduled_at)
        .filter(|t| *t < april)
        .collect();
    assert_eq!(spring_ticks, [utc("2026-03-29T01:00:00Z")?]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_reruns_only_the_failed_step_on_sqlite() -> TestResult {
    retry_reruns_only_the_failed_step(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_reruns_only_the_failed_step_on_postgres() -> TestResult {
    retry_reruns_only_the_failed_step(DataDir::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_running_step_and_skips_the_rest_on_sqlite() -> TestResult {
    cancel_stops_the_running_step_and_skips_the_rest(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_running_step_and_skips_the_rest_on_postgres() -> TestResult {
    cancel_stops_the_running_step_and_skips_the_rest(DataDir::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_fires_each_past_time_once_on_sqlite() -> TestResult {
    backfill_fires_each_past_time_once(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_fires_each_past_time_once_on_postgres() -> TestResult {
    backfill_fires_each_past_time_once(DataDir::postgres().await?).await
}
