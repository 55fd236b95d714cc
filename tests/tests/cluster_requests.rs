//! `trainyard retry` and `trainyard cancel` against a service that runs steps as Jobs on the
//! stand-in API server (its kubelet runs each pod's containers as local processes): a retry
//! creates a Job for the failed step only, a cancel deletes the running step's Job, skips
//! what waits and still runs the finally step, told `cancelled`.

use std::collections::BTreeMap;
use std::time::Duration;

use trainyard::store::{AttemptState, RunState, StepState, Store};
use trainyard_tests::cluster::{Cluster, NAMESPACE};
use trainyard_tests::{
    DataDir, PINNED_IMAGE, Repo, Result, TestResult, cli, newest_run, temp_dir, wait_for,
};

/// `flaky` fails the first time (leaving MARKER) and succeeds after; `sleepy` sleeps until
/// it is cancelled, and its finally step checks that it is told so.
const PIPELINES: &str = r#"apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: flaky, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - {name: once, run: [sh, -c, 'if [ -e "$1" ]; then exit 0; fi; : > "$1"; exit 3', sh, MARKER]}
    - {name: after, needs: [once], run: ["true"]}
---
apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: sleepy, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - {name: sleeper, run: [sleep, "120"]}
    - {name: after, needs: [sleeper], run: ["true"]}
  finally:
    - {name: report, run: [sh, -c, 'test "$1" = cancelled', sh, '{{ run.state }}']}
"#;

/// Admits Jobs until run `id` is in a final state.
async fn ended(cluster: &Cluster, store: &Store, data: &DataDir, id: i64) -> Result<RunState> {
    let mut state = None;
    wait_for(
        Duration::from_secs(120),
        &format!("run {id} finished"),
        async || {
            cluster.admit_all()?;
            state = store.run(id).await?.map(|r| r.state);
            Ok(state.is_some_and(RunState::is_finished))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    state.ok_or_else(|| "no run".into())
}

async fn states(store: &Store, id: i64) -> Result<Vec<(String, StepState)>> {
    Ok(store
        .steps(id)
        .await?
        .into_iter()
        .map(|s| (s.name, s.state))
        .collect())
}

fn step(name: &str, state: StepState) -> (String, StepState) {
    (name.to_owned(), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_act_on_jobs() -> TestResult {
    let cluster = Cluster::start(None).await?;
    let scratch = temp_dir()?;
    let marker = scratch.path().join("marker");
    let yaml = PIPELINES
        .replace("IMAGE", PINNED_IMAGE)
        .replace("MARKER", &marker.display().to_string());
    let repo = Repo::with_files(&[("pipelines.yaml", yaml)])?;
    let data = DataDir::postgres().await?;
    let store = data.store().await?;
    let id = store.installation(None).await?;
    let service = cluster.serve(&repo, &data)?;

    // The failed step's Job, then a retry: one more Job, for that step only.
    let flaky = newest_run(&store, "flaky").await?;
    assert_eq!(
        ended(&cluster, &store, &data, flaky).await?,
        RunState::Failed
    );
    let retried = cli(&repo, &data, &["retry", &flaky.to_string()])?;
    assert_eq!(retried.code, Some(0), "{retried}");
    assert_eq!(
        ended(&cluster, &store, &data, flaky).await?,
        RunState::Succeeded
    );
    let attempts: Vec<(String, u32, AttemptState)> = store
        .attempts(flaky)
        .await?
        .into_iter()
        .map(|a| (a.step, a.attempt, a.state))
        .collect();
    assert_eq!(
        attempts,
        [
            ("once".to_owned(), 1, AttemptState::Failed),
            ("once".to_owned(), 2, AttemptState::Succeeded),
            ("after".to_owned(), 1, AttemptState::Succeeded),
        ]
    );
    for job in ["once-1", "once-2", "after-1"] {
        cluster.job(&format!("ty-{id}-{flaky}-{job}"))?;
    }

    // A cancel while the sleeper's pod runs: its Job is deleted, the next step skipped,
    // and the finally step still runs, told the run was cancelled.
    let sleepy = newest_run(&store, "sleepy").await?;
    let sleeper = format!("ty-{id}-{sleepy}-sleeper-1");
    wait_for(Duration::from_secs(60), "the sleeper runs", async || {
        cluster.admit_all()?;
        Ok(cluster
            .api
            .job_pod(NAMESPACE, &sleeper)
            .is_some_and(|pod| pod["status"]["phase"] == "Running"))
    })
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    let cancelled = cli(&repo, &data, &["cancel", &sleepy.to_string()])?;
    assert_eq!(cancelled.code, Some(0), "{cancelled}");
    assert_eq!(
        ended(&cluster, &store, &data, sleepy).await?,
        RunState::Cancelled
    );
    assert_eq!(
        states(&store, sleepy).await?,
        [
            step("sleeper", StepState::Cancelled),
            step("after", StepState::Skipped),
            step("report", StepState::Succeeded),
        ],
        "{}",
        data.service_output()
    );
    wait_for(
        Duration::from_secs(30),
        "the sleeper's Job is deleted",
        async || Ok(cluster.api.get("jobs", NAMESPACE, &sleeper).is_none()),
    )
    .await?;
    cluster.job(&format!("ty-{id}-{sleepy}-report-1"))?;
    assert_eq!(
        cluster.job_creates(),
        BTreeMap::from([(201, 5)]),
        "once twice, after, sleeper and report, each created once"
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}
