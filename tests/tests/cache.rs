//! Step caching through the real binary: a second run of a cached pipeline starts no process
//! and registers the same model, pointing at the first run's outputs; `--no-cache` runs every
//! step; a changed input or a bumped `cache_version` misses; editing the pipeline file
//! elsewhere leaves the other steps reused. On SQLite and PostgreSQL.

use std::path::Path;

use trainyard::store::{AttemptId, AttemptState, RunState, Store};
use trainyard_tests::{DataDir, PINNED_IMAGE, Repo, Result, TestResult, cli, temp_dir};

/// `prepare` writes ROWS characters; `train` writes a model holding what it read and its
/// metrics. Each appends its name to COUNTER when its process runs.
const CACHED: &str = r#"apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: cached, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  cache: true
  params:
    rows: {type: int, default: 3}
  steps:
    - name: prepare
      outputs: [data]
      run:
        - python3
        - -c
        - |
          import sys
          open(sys.argv[1], 'a').write('prepare\n')
          open(sys.argv[2], 'w').write('x' * int(sys.argv[3]))
        - COUNTER
        - '{{ outputs.data }}'
        - '{{ params.rows }}'
    - name: train
      needs: [prepare]
      cache_version: "1"
      outputs: [model, metrics]
      run:
        - python3
        - -c
        - |
          import json, sys
          open(sys.argv[1], 'a').write('train\n')
          data = open(sys.argv[2]).read()
          open(sys.argv[3], 'w').write('model of ' + data)
          json.dump({'accuracy': 0.9}, open(sys.argv[4], 'w'))
        - COUNTER
        - '{{ steps.prepare.outputs.data }}'
        - '{{ outputs.model }}'
        - '{{ outputs.metrics }}'
  model:
    name: cached-model
    artifact: steps.train.outputs.model
    metrics: steps.train.outputs.metrics
    gate:
      - {metric: accuracy, min: 0.5}
"#;

/// `serve --once` on the repository: applies what is new and drives every run to its end.
fn once(repo: &Repo, data: &DataDir) -> Result<()> {
    let served = cli(repo, data, &["serve", "--once"])?;
    assert_eq!(served.code, Some(0), "{served}");
    Ok(())
}

/// The newest run, which must have succeeded.
async fn newest_succeeded(store: &Store) -> Result<i64> {
    let run = store
        .list_runs(Some("cached"), 1)
        .await?
        .pop()
        .ok_or("no run")??;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    Ok(run.id)
}

/// Each attempt of run `id`: step, state, and the attempt it reused.
async fn attempts(store: &Store, id: i64) -> Result<Vec<(String, AttemptState, Option<i64>)>> {
    Ok(store
        .attempts(id)
        .await?
        .into_iter()
        .map(|a| (a.step, a.state, a.reused.map(|r| r.run_id)))
        .collect())
}

fn ran(step: &str) -> (String, AttemptState, Option<i64>) {
    (step.to_owned(), AttemptState::Succeeded, None)
}

fn reused(step: &str, from: i64) -> (String, AttemptState, Option<i64>) {
    (step.to_owned(), AttemptState::Cached, Some(from))
}

fn counted(counter: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(counter)?)
}

async fn a_cached_run_reuses_outputs_until_what_decides_them_changes(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let counter = scratch.path().join("counter");
    let yaml = CACHED
        .replace("IMAGE", PINNED_IMAGE)
        .replace("COUNTER", &counter.display().to_string());
    let repo = Repo::with_files(&[("cached/pipeline.yaml", yaml)])?;
    let store = data.store().await?;

    once(&repo, &data)?;
    let first = newest_succeeded(&store).await?;
    assert_eq!(counted(&counter)?, "prepare\ntrain\n");
    assert_eq!(
        attempts(&store, first).await?,
        [ran("prepare"), ran("train")]
    );

    // The same commit and params: nothing runs, the outputs are the first run's, and the
    // model is registered again from the same artifact.
    let queued = cli(&repo, &data, &["run", "cached"])?;
    assert_eq!(queued.code, Some(0), "{queued}");
    once(&repo, &data)?;
    let second = newest_succeeded(&store).await?;
    assert_eq!(counted(&counter)?, "prepare\ntrain\n", "no process started");
    assert_eq!(
        attempts(&store, second).await?,
        [reused("prepare", first), reused("train", first)]
    );
    let train = store.attempts(second).await?.pop().ok_or("no attempt")?;
    assert_eq!(
        train.reused,
        Some(AttemptId {
            run_id: first,
            step: "train".to_owned(),
            attempt: 1
        })
    );
    let outputs = |run: i64| {
        let store = store.clone();
        async move {
            Ok::<_, trainyard_tests::Error>(
                store
                    .artifacts(run)
                    .await?
                    .into_iter()
                    .map(|a| (a.step, a.output, a.uri, a.sha256))
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(outputs(second).await?, outputs(first).await?);
    let versions = store.models(Some("cached-model")).await?;
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[0].artifact_sha256, versions[1].artifact_sha256);
    assert_eq!(versions[0].artifact_uri, versions[1].artifact_uri);
    assert_eq!(versions[0].metrics, versions[1].metrics);

    let shown = cli(&repo, &data, &["runs", "show", &second.to_string()])?;
    assert_eq!(shown.code, Some(0), "{shown}");
    assert!(
        shown.stdout.contains(&format!(
            "cached: the outputs of run {first} step train attempt 1"
        )),
        "{shown}"
    );
    let log = cli(&repo, &data, &["logs", &second.to_string(), "train"])?;
    assert_ne!(log.code, Some(0), "{log}");
    assert!(
        log.stderr.contains(&format!(
            "did not run: it reused the outputs of run {first} step train attempt 1"
        )),
        "{log}"
    );

    // --no-cache runs every step.
    let queued = cli(&repo, &data, &["run", "cached", "--no-cache"])?;
    assert_eq!(queued.code, Some(0), "{queued}");
    once(&repo, &data)?;
    let third = newest_succeeded(&store).await?;
    assert_eq!(
        attempts(&store, third).await?,
        [ran("prepare"), ran("train")]
    );
    assert_eq!(counted(&counter)?, "prepare\ntrain\n".repeat(2));

    // Another param changes prepare's command, and so its output: train's command is the
    // same, but its input is not, so it runs too.
    let queued = cli(&repo, &data, &["run", "cached", "--param", "rows=5"])?;
    assert_eq!(queued.code, Some(0), "{queued}");
    once(&repo, &data)?;
    let fourth = newest_succeeded(&store).await?;
    assert_eq!(
        attempts(&store, fourth).await?,
        [ran("prepare"), ran("train")]
    );
    assert_eq!(counted(&counter)?, "prepare\ntrain\n".repeat(3));

    // A bumped cache_version misses for its step only: editing the pipeline file does not
    // change what prepare's key is made of.
    repo.edit(
        "cached/pipeline.yaml",
        "cache_version: \"1\"",
        "cache_version: \"2\"",
    )?;
    repo.commit("train: cache_version 2")?;
    once(&repo, &data)?;
    let fifth = newest_succeeded(&store).await?;
    assert_eq!(
        attempts(&store, fifth).await?,
        [reused("prepare", third), ran("train")]
    );
    assert_eq!(
        counted(&counter)?,
        format!("{}train\n", "prepare\ntrain\n".repeat(3))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_run_reuses_outputs_until_what_decides_them_changes_on_sqlite() -> TestResult {
    a_cached_run_reuses_outputs_until_what_decides_them_changes(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_run_reuses_outputs_until_what_decides_them_changes_on_postgres() -> TestResult {
    a_cached_run_reuses_outputs_until_what_decides_them_changes(DataDir::postgres().await?).await
}
