//! Benchmark of the definitions layer on a generated repository of 10,000 pipelines and
//! 10,000 schedules: cold `trainyard validate` (parse + checks + policies, wall time and peak
//! RSS of the process) and the plan of a one-file commit as the service computes it while
//! following a branch (tree diff, incremental evaluation, plan of the touched documents), and
//! `serve --once` started afresh and then restarted on the unchanged repository (which reads
//! its parse and verdict cache from the data directory). Run with
//! `cargo bench -p trainyard --bench definitions`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use git2::{Repository, Signature};
use trainyard::definitions::Definitions;
use trainyard::plan::Planner;
use trainyard::source::Snapshot;
use trainyard_policies::PolicyConfig;

const PIPELINES: usize = 10_000;
const COLD_RUNS: usize = 5;
const PLAN_RUNS: usize = 20;
const RESTARTS: usize = 5;
const DIGEST: &str = "4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

fn pipeline(i: usize, variant: usize) -> String {
    let gpu = if i.is_multiple_of(10) {
        "\n      resources: {cpu: \"8\", memory: 64Gi, gpu: 2, gpu_type: h100}\n      timeout: 4h"
    } else {
        ""
    };
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata:
  name: pipeline-{i:05}
  owner: team-{team}
spec:
  params:
    epochs: {{type: int, default: {variant}}}
    lr: {{type: float, default: 0.01}}
  image: registry.example.com/ml/p{i}@sha256:{DIGEST}
  steps:
    - name: prepare
      run: [python3, prepare.py, --out, \"{{{{ outputs.dataset }}}}\"]
      outputs: [dataset]
    - name: train
      needs: [prepare]
      run: [python3, train.py, --data, \"{{{{ steps.prepare.outputs.dataset }}}}\", --epochs, \"{{{{ params.epochs }}}}\", --model, \"{{{{ outputs.model }}}}\"]
      outputs: [model, metrics]{gpu}
    - name: evaluate
      needs: [train]
      run: [python3, evaluate.py, \"{{{{ steps.train.outputs.model }}}}\"]
  model:
    name: model-{i:05}
    artifact: steps.train.outputs.model
    metrics: steps.train.outputs.metrics
    gate: [{{metric: auc, min: 0.8}}]
    promote: champion
",
        team = i % 50
    )
}

fn schedule(i: usize) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {{name: schedule-{i:05}}}
spec:
  pipeline: pipeline-{i:05}
  cron: \"{minute} {hour} * * *\"
  timezone: Europe/Berlin
  params: {{epochs: 5}}
",
        minute = i % 60,
        hour = i % 24
    )
}

fn commit(repo: &Repository, message: &str) {
    let mut index = repo.index().expect("index");
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .expect("add");
    index.write().expect("write index");
    let tree = repo
        .find_tree(index.write_tree().expect("tree"))
        .expect("tree");
    let sig = Signature::now("bench", "bench@example.com").expect("signature");
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .expect("commit");
}

fn generate(dir: &Path) -> Repository {
    let repo = Repository::init(dir).expect("init");
    for i in 0..PIPELINES {
        let group = dir.join(format!("pipelines/g{:03}", i / 100));
        std::fs::create_dir_all(&group).expect("mkdir");
        std::fs::write(group.join(format!("p{i:05}.yaml")), pipeline(i, 3)).expect("write");
        let group = dir.join(format!("schedules/g{:03}", i / 100));
        std::fs::create_dir_all(&group).expect("mkdir");
        std::fs::write(group.join(format!("s{i:05}.yaml")), schedule(i)).expect("write");
    }
    std::fs::write(dir.join("trainyard.yaml"), "default_timeout: 12h\n").expect("write");
    commit(&repo, "generated");
    repo
}

/// Peak resident set of the largest child waited for so far, in MiB.
fn children_peak_rss_mib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as f64 / 1024.0
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let repo = generate(dir.path());
    println!(
        "generated {PIPELINES} pipelines and {PIPELINES} schedules in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let binary = env!("CARGO_BIN_EXE_trainyard");
    let mut cold = Vec::new();
    // getrusage reports the largest child so far: read after each kind of source.
    let mut peaks = Vec::new();
    for source in [["--rev", "HEAD"], ["--format", "text"]] {
        let mut samples = Vec::new();
        for _ in 0..COLD_RUNS {
            let t = Instant::now();
            let out = Command::new(binary)
                .arg("validate")
                .arg(dir.path())
                .args(source)
                .output()
                .expect("run trainyard");
            samples.push(t.elapsed());
            assert!(
                out.status.success(),
                "validate failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        cold.push((
            if source[0] == "--rev" {
                "git tree (--rev HEAD)"
            } else {
                "working tree"
            },
            samples,
        ));
        peaks.push(children_peak_rss_mib());
    }
    let (serve_cold, mut serve_warm) = restarts(binary, dir.path());

    let mut definitions = Definitions::new(PolicyConfig::default()).expect("policies load");
    let mut planner = Planner::default();
    let mut snapshot = Snapshot::at_revision(
        &trainyard::source::Repo::open(dir.path()).expect("open"),
        "HEAD",
        "",
    )
    .expect("snapshot");
    let mut previous = definitions
        .evaluate(&snapshot, Utc::now())
        .expect("evaluate")
        .catalog;
    let mut plans = Vec::new();
    for run in 0..PLAN_RUNS {
        let i = run * 37 % PIPELINES;
        let path = dir
            .path()
            .join(format!("pipelines/g{:03}/p{i:05}.yaml", i / 100));
        std::fs::write(&path, pipeline(i, 100 + run)).expect("write");
        commit(&repo, "one file");
        let t = Instant::now();
        snapshot = snapshot.advance("HEAD", "").expect("advance");
        let evaluation = definitions
            .evaluate(&snapshot, Utc::now())
            .expect("evaluate");
        let plan = planner.plan_touched(
            "a",
            "b",
            &previous,
            &evaluation.catalog,
            &evaluation.touched,
            evaluation.diagnostics,
            Utc::now(),
        );
        plans.push(t.elapsed());
        assert_eq!(plan.counts(), (0, 1, 0), "one pipeline changed");
        previous = evaluation.catalog;
    }

    println!("\n| measurement | p50 | max |\n|---|---|---|");
    for (label, mut samples) in cold {
        let max = *samples.iter().max().expect("samples");
        println!(
            "| cold validate, {label} | {} | {} |",
            ms(percentile(&mut samples, 0.5)),
            ms(max)
        );
    }
    let max = *plans.iter().max().expect("samples");
    println!(
        "| one-file commit → plan (warm, in process) | {} | {} |",
        ms(percentile(&mut plans, 0.5)),
        ms(max)
    );
    println!(
        "| `serve --once`, first start (parse, policies, apply to SQLite) | {} | — |",
        ms(serve_cold)
    );
    let max = *serve_warm.iter().max().expect("samples");
    println!(
        "| `serve --once`, restart on the unchanged repository | {} | {} |",
        ms(percentile(&mut serve_warm, 0.5)),
        ms(max)
    );
    println!(
        "\npeak RSS of `trainyard validate`: {:.0} MiB from the Git tree; \
         largest of both sources {:.0} MiB",
        peaks[0], peaks[1]
    );
}

/// Starts `serve --once` on the repository with a fresh data directory, then again
/// `RESTARTS` times on the same one: the wall time of the first start and of each restart.
fn restarts(binary: &str, repo: &Path) -> (Duration, Vec<Duration>) {
    let data = tempfile::tempdir().expect("tempdir");
    let serve = || {
        let t = Instant::now();
        let out = Command::new(binary)
            .args(["serve", "--once", "--repo"])
            .arg(repo)
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("TRAINYARD_POLICY_CONFIG")
            .output()
            .expect("run trainyard");
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "serve failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    };
    let cold = serve();
    let warm = (0..RESTARTS).map(|_| serve()).collect();
    (cold, warm)
}
