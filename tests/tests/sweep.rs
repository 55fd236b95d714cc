//! Sweeps through the real binary: a matrix step runs once per combination (at most
//! `max_parallel` at a time), the step that needs it reads each output as a directory of
//! one file per instance with `index.json`, and the model block registers the instance
//! with the best metric, saying which combination won. On SQLite and PostgreSQL.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trainyard::store::{RunState, Selected, StepState};
use trainyard_tests::{DataDir, PINNED_IMAGE, Repo, TestResult, cli, temp_dir};

/// A 2 × 3 sweep whose best instance is lr=0.01, seed=1 (instance 3: axes in name order,
/// the last one fastest), and a step that lists what it got of the sweep's models.
const SWEEP: &str = r#"apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: sweep, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - name: train
      matrix: {lr: [0.1, 0.01], seed: [1, 2, 3]}
      max_parallel: 2
      outputs: [model, metrics]
      run:
        - python3
        - -c
        - |
          import json, sys, time
          lr, seed = float(sys.argv[1]), int(sys.argv[2])
          time.sleep(0.3)
          open(sys.argv[3], 'w').write(f'model lr={lr} seed={seed}')
          json.dump({'accuracy': 1 - abs(lr - 0.01) - seed / 100}, open(sys.argv[4], 'w'))
        - '{{ matrix.lr }}'
        - '{{ matrix.seed }}'
        - '{{ outputs.model }}'
        - '{{ outputs.metrics }}'
    - name: collect
      needs: [train]
      run:
        - python3
        - -c
        - |
          import json, os, sys
          models = sys.argv[1]
          files = sorted(os.listdir(models))
          index = json.load(open(os.path.join(models, 'index.json')))
          third = open(os.path.join(models, '3')).read()
          json.dump({'files': files, 'index': index, 'third': third}, open(sys.argv[2], 'w'))
        - '{{ steps.train.outputs.model }}'
        - OUT
  model:
    name: swept
    artifact: steps.train.outputs.model
    metrics: steps.train.outputs.metrics
    select: {metric: accuracy, greater_is_better: true}
    gate:
      - {metric: accuracy, min: 0.5}
"#;

async fn a_sweep_runs_every_instance_and_registers_the_best(data: DataDir) -> TestResult {
    let scratch = temp_dir()?;
    let out = scratch.path().join("collected.json");
    let yaml = SWEEP
        .replace("IMAGE", PINNED_IMAGE)
        .replace("OUT", &out.display().to_string());
    let repo = Repo::with_files(&[("sweep/pipeline.yaml", yaml)])?;
    let served = cli(&repo, &data, &["serve", "--once"])?;
    assert_eq!(served.code, Some(0), "{served}");

    let store = data.store().await?;
    let run = store
        .list_runs(Some("sweep"), 1)
        .await?
        .pop()
        .ok_or("no run")??;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    let steps: Vec<(String, StepState)> = store
        .steps(run.id)
        .await?
        .into_iter()
        .map(|s| (s.name, s.state))
        .collect();
    let mut expected: Vec<(String, StepState)> = (0..6)
        .map(|i| (format!("train.{i}"), StepState::Succeeded))
        .collect();
    expected.push(("collect".to_owned(), StepState::Succeeded));
    assert_eq!(steps, expected);

    // No more than two instances were in flight at once, and two were.
    let attempts = store.attempts(run.id).await?;
    let spans: Vec<_> = attempts
        .iter()
        .filter(|a| a.step.starts_with("train."))
        .map(|a| (a.created_at, a.finished_at.unwrap_or(a.created_at)))
        .collect();
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(most, 2, "{spans:?}");

    // The downstream step got one file per instance and the index of their values.
    let collected: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(
        collected["files"],
        json!(["0", "1", "2", "3", "4", "5", "index.json"])
    );
    assert_eq!(collected["index"]["3"], json!({"lr": 0.01, "seed": 1}));
    assert_eq!(collected["index"]["0"], json!({"lr": 0.1, "seed": 1}));
    assert_eq!(collected["third"], "model lr=0.01 seed=1");

    // The best instance was registered, with what won.
    let versions = store.models(Some("swept")).await?;
    assert_eq!(versions.len(), 1, "{versions:?}");
    let version = &versions[0];
    assert_eq!(
        version.selected,
        Some(Selected {
            step: "train.3".to_owned(),
            values: BTreeMap::from([
                ("lr".to_owned(), json!(0.01)),
                ("seed".to_owned(), json!(1)),
            ]),
        })
    );
    assert!(
        version.artifact_uri.ends_with("/train.3/model"),
        "{version:?}"
    );
    assert_eq!(version.metrics.get("accuracy").copied(), Some(0.99));
    let message = run.message.unwrap_or_default();
    assert!(
        message.contains("(selected train.3: lr=0.01, seed=1)"),
        "{message}"
    );
    let shown = cli(&repo, &data, &["models", "swept"])?;
    assert!(shown.stdout.contains("train.3"), "{shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_every_instance_and_registers_the_best_on_sqlite() -> TestResult {
    a_sweep_runs_every_instance_and_registers_the_best(DataDir::new()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_every_instance_and_registers_the_best_on_postgres() -> TestResult {
    a_sweep_runs_every_instance_and_registers_the_best(DataDir::postgres().await?).await
}
