//! End to end through the real binary: rows of the store that no longer read (edited by hand,
//! written by a newer version) stop only themselves. A schedule whose stored definition is
//! corrupt stalls with the reason while the others keep firing; a run whose pinned pipeline
//! version is corrupt fails with the reason while the others finish; reports go out.

use std::time::Duration;

use chrono::Utc;
use sqlx::Connection as _;
use trainyard::store::{RunState, TickOutcome};
use trainyard_tests::{
    DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, trainyard, wait_for,
};

fn pipeline(name: &str) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: {name}, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  steps:
    - {{name: only, run: [python3, -c, \"print('{name}')\"]}}
"
    )
}

fn every_second(name: &str) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {{name: {name}}}
spec: {{pipeline: steady, cron: '* * * * * *', catchup: none}}
"
    )
}

/// Runs `sql` on the SQLite store of `data`, as a person editing it would.
async fn edit_store(data: &DataDir, sql: &str) -> Result<()> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&data.database()).await?;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_schedule_and_run_stop_only_themselves_and_say_why() -> TestResult {
    let repo = Repo::with_files(&[
        ("steady.yaml", pipeline("steady")),
        ("doomed.yaml", pipeline("doomed")),
        (
            "schedules.yaml",
            format!("{}---\n{}", every_second("tick"), every_second("stuck")),
        ),
    ])?;
    let commit = repo.commit("two pipelines, two schedules")?;
    let data = DataDir::new()?;
    let store = data.store().await?;

    // Both schedules fire while every row reads.
    let first = Service::start(repo.path(), &data, &["--poll-seconds", "1"])?;
    wait_for(
        Duration::from_secs(30),
        "both schedules fired",
        async || {
            let fired = |ticks: Vec<trainyard::store::TickRow>| {
                ticks.iter().any(|t| t.outcome == TickOutcome::Fired)
            };
            Ok(fired(store.ticks("tick", 10).await?) && fired(store.ticks("stuck", 10).await?))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    first.stop()?;

    // A manual run of `doomed` waits for the service; then two rows are broken by hand.
    let queued = trainyard(
        repo.path(),
        &[
            "run",
            "doomed",
            "--data-dir",
            data.path().to_str().ok_or("utf-8")?,
        ],
    )?;
    assert_eq!(queued.code, Some(0), "{queued}");
    let doomed: i64 = queued
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("no run id in {queued}"))?;
    edit_store(
        &data,
        "UPDATE schedules SET definition = 'not json' WHERE name = 'stuck'",
    )
    .await?;
    edit_store(
        &data,
        "UPDATE pipeline_versions SET definition = '{\"spec\": 1}' WHERE pipeline = 'doomed'",
    )
    .await?;

    let restarted = Utc::now();
    let second = Service::start(repo.path(), &data, &["--poll-seconds", "1"])?;
    let mut state = None;
    wait_for(
        Duration::from_secs(40),
        "the broken run ended",
        async || {
            state = store.run(doomed).await?.map(|r| r.state);
            Ok(state.is_some_and(RunState::is_finished))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    // The readable schedule keeps firing, on time, and its runs finish.
    wait_for(
        Duration::from_secs(40),
        "three ticks of `tick` after the restart, their runs succeeded",
        async || {
            let mut done = 0;
            for tick in store.ticks("tick", 50).await? {
                let Some(run) = tick.run_id.filter(|_| tick.scheduled_at > restarted) else {
                    continue;
                };
                if store
                    .run(run)
                    .await?
                    .is_some_and(|r| r.state == RunState::Succeeded)
                {
                    done += 1;
                }
            }
            Ok(done >= 3)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    let late: Vec<_> = store
        .ticks("tick", 50)
        .await?
        .into_iter()
        .filter(|t| t.scheduled_at > restarted && t.outcome == TickOutcome::Fired)
        .map(|t| (t.recorded_at - t.scheduled_at).num_milliseconds())
        .collect();
    assert!(
        late.iter().all(|lag| *lag < 1_000),
        "ticks are recorded within a second of their time: {late:?}"
    );
    assert!(
        store
            .ticks("stuck", 50)
            .await?
            .iter()
            .all(|t| t.scheduled_at <= restarted),
        "the unreadable schedule fires no more"
    );
    second.stop()?;

    let run = store.run(doomed).await?.ok_or("the run is gone")?;
    assert_eq!(run.state, RunState::Failed);
    let message = run.message.unwrap_or_default();
    assert!(
        message.contains("pipeline_versions") && message.contains("definition"),
        "the run says which row and column: {message}"
    );
    let dir = data.path().to_str().ok_or("utf-8")?;
    let shown = trainyard(
        repo.path(),
        &["runs", "show", &doomed.to_string(), "--data-dir", dir],
    )?;
    assert_eq!(shown.code, Some(0), "{shown}");
    assert!(shown.stdout.contains("pipeline_versions"), "{shown}");
    let schedules = trainyard(repo.path(), &["schedules", "--data-dir", dir])?;
    assert_eq!(schedules.code, Some(0), "{schedules}");
    let stuck = schedules
        .stdout
        .lines()
        .find(|l| l.starts_with("stuck"))
        .ok_or_else(|| format!("no row for stuck: {schedules}"))?;
    assert!(
        stuck.contains("stalled:") && stuck.contains("cannot be read"),
        "{stuck}"
    );
    let tick_row = schedules
        .stdout
        .lines()
        .find(|l| l.starts_with("tick"))
        .ok_or_else(|| format!("no row for tick: {schedules}"))?;
    assert!(tick_row.contains("active"), "{tick_row}");

    // Reports were delivered: the commit's note holds both runs' statuses.
    let note = std::process::Command::new("git")
        .args(["notes", "--ref", "trainyard", "show", &commit.to_string()])
        .current_dir(repo.path())
        .output()?;
    let note = String::from_utf8_lossy(&note.stdout);
    assert!(
        note.lines()
            .any(|l| l.starts_with("trainyard/run/steady: success")),
        "{note}"
    );
    assert!(
        note.lines()
            .any(|l| l.starts_with("trainyard/run/doomed: failure")),
        "{note}"
    );
    Ok(())
}
