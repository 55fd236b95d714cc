//! Finally steps through the real binary, against a running service: they run after a failed
//! DAG and see `run.state` = failed and only the outputs that exist, and run again after a
//! retry; they run after a cancel stopped the DAG, and a cancel while they run stops them;
//! a failing finally step makes a succeeded DAG's run failed.

use std::path::Path;
use std::time::Duration;

use trainyard::store::{AttemptState, RunState, StepState, Store};
use trainyard_tests::{
    DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, alive, cli, finished, newest_run,
    temp_dir, wait_for,
};

/// A poll longer than any test: requests are acted on because the command line announces
/// them.
const NO_POLL: &[&str] = &["--poll-seconds", "3600"];

/// How long the service is left alone before a request (see `retry_cancel_backfill.rs`).
const SETTLE: Duration = Duration::from_secs(2);

/// How long a run of these short pipelines may take under a loaded machine.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Each step of run `id` with whether it is a finally step and its state.
async fn steps(store: &Store, id: i64) -> Result<Vec<(String, bool, StepState)>> {
    Ok(store
        .steps(id)
        .await?
        .into_iter()
        .map(|s| (s.name, s.finally, s.state))
        .collect())
}

fn step(name: &str, finally: bool, state: StepState) -> (String, bool, StepState) {
    (name.to_owned(), finally, state)
}

/// `prepare` writes its output; `train` fails the first time it runs (leaving MARKER) and
/// writes its model after; `after` needs it. The finally step appends to REPORT the DAG's
/// state and whether each output it reads exists.
const FAILING: &str = "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: failing, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - name: prepare
      run: [python3, -c, \"import sys; open(sys.argv[1], 'w').write('data')\", '{{ outputs.data }}']
      outputs: [data]
    - name: train
      needs: [prepare]
      outputs: [model]
      run:
        - python3
        - -c
        - |
          import os, sys
          marker, model = sys.argv[1], sys.argv[2]
          if not os.path.exists(marker):
              open(marker, 'w').close()
              sys.exit(3)
          open(model, 'w').write('model')
        - MARKER
        - '{{ outputs.model }}'
    - name: after
      needs: [train]
      run: [sh, -c, 'echo after']
  finally:
    - name: report
      run:
        - python3
        - -c
        - |
          import os, sys
          with open(sys.argv[1], 'a') as f:
              f.write(' '.join([sys.argv[2]] + [str(os.path.exists(p)) for p in sys.argv[3:]]) + '\\n')
        - REPORT
        - '{{ run.state }}'
        - '{{ steps.prepare.outputs.data }}'
        - '{{ steps.train.outputs.model }}'
";

async fn finally_runs_after_a_failure_and_again_after_a_retry(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let (marker, report) = (scratch.path().join("marker"), scratch.path().join("report"));
    let yaml = FAILING
        .replace("IMAGE", PINNED_IMAGE)
        .replace("MARKER", &marker.display().to_string())
        .replace("REPORT", &report.display().to_string());
    let repo = Repo::with_files(&[("failing.yaml", yaml)])?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    let run = newest_run(&store, "failing").await?;
    let ended = finished(&store, run, &data).await?;
    let (state, message) = (ended.state, ended.message.unwrap_or_default());
    assert_eq!(state, RunState::Failed);
    assert!(message.starts_with("step train failed"), "{message}");
    assert_eq!(
        steps(&store, run).await?,
        [
            step("prepare", false, StepState::Succeeded),
            step("train", false, StepState::Failed),
            step("after", false, StepState::Skipped),
            step("report", true, StepState::Succeeded),
        ]
    );
    // The output of the failed step is absent; the one that exists is placed.
    assert_eq!(std::fs::read_to_string(&report)?, "failed True False\n");

    let shown = cli(&repo, &data, &["runs", "show", &run.to_string()])?;
    assert_eq!(shown.code, Some(0), "{shown}");
    assert!(shown.stdout.contains("report (finally)"), "{shown}");

    tokio::time::sleep(SETTLE).await;
    let retried = cli(&repo, &data, &["retry", &run.to_string()])?;
    assert_eq!(retried.code, Some(0), "{retried}");
    assert!(retried.stdout.contains("train, after, report"), "{retried}");
    let state = finished(&store, run, &data).await?.state;
    assert_eq!(state, RunState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(&report)?,
        "failed True False\nsucceeded True True\n",
        "the finally step ran again after the retried DAG"
    );
    let attempts: Vec<(u32, AttemptState)> = store
        .attempts(run)
        .await?
        .into_iter()
        .filter(|a| a.step == "report")
        .map(|a| (a.attempt, a.state))
        .collect();
    assert_eq!(
        attempts,
        [(1, AttemptState::Succeeded), (2, AttemptState::Succeeded)]
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// `sleeper` writes its process id to PID and sleeps; `after` needs it; the finally step
/// writes the DAG's state to STATE.
const SLEEPY: &str = "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: sleepy, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - name: sleeper
      run:
        - python3
        - -c
        - |
          import os, sys, time
          with open(sys.argv[1] + '.tmp', 'w') as f:
              f.write(str(os.getpid()))
          os.rename(sys.argv[1] + '.tmp', sys.argv[1])
          time.sleep(60)
        - PID
    - name: after
      needs: [sleeper]
      run: [sh, -c, 'echo after']
  finally:
    - name: cleanup
      run: [sh, -c, 'printf %s \"$1\" > \"$2\"', sh, '{{ run.state }}', STATE]
";

/// Waits for the process id a step writes to `pid_file`; the process runs.
async fn pid_in(pid_file: &Path, data: &DataDir) -> Result<i32> {
    wait_for(RUN_LIMIT, "the step runs", async || Ok(pid_file.exists()))
        .await
        .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    let pid: i32 = std::fs::read_to_string(pid_file)?.trim().parse()?;
    assert!(alive(pid), "the step's process {pid} runs");
    Ok(pid)
}

async fn finally_runs_after_a_cancel(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let (pid_file, state_file) = (scratch.path().join("pid"), scratch.path().join("state"));
    let yaml = SLEEPY
        .replace("IMAGE", PINNED_IMAGE)
        .replace("PID", &pid_file.display().to_string())
        .replace("STATE", &state_file.display().to_string());
    let repo = Repo::with_files(&[("sleepy.yaml", yaml)])?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    let run = newest_run(&store, "sleepy").await?;
    let pid = pid_in(&pid_file, &data).await?;

    tokio::time::sleep(SETTLE).await;
    let cancelled = cli(&repo, &data, &["cancel", &run.to_string()])?;
    assert_eq!(cancelled.code, Some(0), "{cancelled}");
    let state = finished(&store, run, &data).await?.state;
    assert_eq!(state, RunState::Cancelled);
    wait_for(
        Duration::from_secs(15),
        "the DAG's step was stopped",
        async || Ok(!alive(pid)),
    )
    .await?;
    assert_eq!(
        steps(&store, run).await?,
        [
            step("sleeper", false, StepState::Cancelled),
            step("after", false, StepState::Skipped),
            step("cleanup", true, StepState::Succeeded),
        ]
    );
    assert_eq!(std::fs::read_to_string(&state_file)?, "cancelled");
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// A DAG of one quick step; the finally step writes its process id to PID and sleeps.
const SLOW_FINALLY: &str = "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: slow-finally, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - name: quick
      run: [sh, -c, 'echo quick']
  finally:
    - name: linger
      run:
        - python3
        - -c
        - |
          import os, sys, time
          with open(sys.argv[1] + '.tmp', 'w') as f:
              f.write(str(os.getpid()))
          os.rename(sys.argv[1] + '.tmp', sys.argv[1])
          time.sleep(60)
        - PID
";

async fn a_cancel_while_finally_steps_run_stops_them(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let pid_file = scratch.path().join("pid");
    let yaml = SLOW_FINALLY
        .replace("IMAGE", PINNED_IMAGE)
        .replace("PID", &pid_file.display().to_string());
    let repo = Repo::with_files(&[("slow.yaml", yaml)])?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    let run = newest_run(&store, "slow-finally").await?;
    let pid = pid_in(&pid_file, &data).await?;

    tokio::time::sleep(SETTLE).await;
    let cancelled = cli(&repo, &data, &["cancel", &run.to_string()])?;
    assert_eq!(cancelled.code, Some(0), "{cancelled}");
    let state = finished(&store, run, &data).await?.state;
    assert_eq!(state, RunState::Cancelled);
    wait_for(
        Duration::from_secs(15),
        "the finally step's process is gone",
        async || Ok(!alive(pid)),
    )
    .await?;
    assert_eq!(
        steps(&store, run).await?,
        [
            step("quick", false, StepState::Succeeded),
            step("linger", true, StepState::Cancelled),
        ]
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// A DAG that succeeds, a finally step that fails and one that succeeds.
const FAILING_FINALLY: &str = "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: failing-finally, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - name: train
      run: [python3, -c, \"print('trained')\"]
  finally:
    - name: notify
      run: [sh, -c, 'echo cannot notify >&2; exit 4']
    - name: tidy
      run: [sh, -c, 'echo tidy']
";

async fn a_failing_finally_step_fails_a_succeeded_run(data: DataDir) -> TestResult {
    let yaml = FAILING_FINALLY.replace("IMAGE", PINNED_IMAGE);
    let repo = Repo::with_files(&[("failing-finally.yaml", yaml)])?;
    let store = data.store().await?;
    let service = Service::start(repo.path(), &data, NO_POLL)?;
    let run = newest_run(&store, "failing-finally").await?;
    let ended = finished(&store, run, &data).await?;
    let (state, message) = (ended.state, ended.message.unwrap_or_default());
    assert_eq!(state, RunState::Failed);
    assert!(
        message.starts_with("finally step notify failed"),
        "{message}"
    );
    assert_eq!(
        steps(&store, run).await?,
        [
            step("train", false, StepState::Succeeded),
            step("notify", true, StepState::Failed),
            step("tidy", true, StepState::Succeeded),
        ],
        "one finally step failing does not stop the others"
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn finally_runs_after_a_failure_and_again_after_a_retry_on_sqlite() -> TestResult {
    finally_runs_after_a_failure_and_again_after_a_retry(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn finally_runs_after_a_failure_and_again_after_a_retry_on_postgres() -> TestResult {
    finally_runs_after_a_failure_and_again_after_a_retry(DataDir::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn finally_runs_after_a_cancel_on_sqlite() -> TestResult {
    finally_runs_after_a_cancel(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn finally_runs_after_a_cancel_on_postgres() -> TestResult {
    finally_runs_after_a_cancel(DataDir::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_while_finally_steps_run_stops_them_on_sqlite() -> TestResult {
    a_cancel_while_finally_steps_run_stops_them(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_while_finally_steps_run_stops_them_on_postgres() -> TestResult {
    a_cancel_while_finally_steps_run_stops_them(DataDir::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_finally_step_fails_a_succeeded_run_on_sqlite() -> TestResult {
    a_failing_finally_step_fails_a_succeeded_run(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_finally_step_fails_a_succeeded_run_on_postgres() -> TestResult {
    a_failing_finally_step_fails_a_succeeded_run(DataDir::postgres().await?).await
}
