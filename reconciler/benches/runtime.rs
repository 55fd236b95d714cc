//! Benchmark of the embedded service: the time from a commit to its first step starting,
//! and the lag from a tick's scheduled time to its run being recorded when 1,000 schedules
//! are due in the same second. Run with `cargo bench -p trainyard --bench runtime`.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use git2::{Repository, Signature};
use trainyard::artifacts::ArtifactStore;
use trainyard::execute::LocalExecutor;
use trainyard::report::notes::NotesForge;
use trainyard::runtime::{Config, Service};
use trainyard::store::Store;
use trainyard_policies::PolicyConfig;

const SCHEDULES: usize = 1_000;
const COMMITS: usize = 10;
const IMAGE: &str =
    "reg.example.com/ml@sha256:4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

fn pipeline(name: &str, on_change: bool, marker: usize) -> String {
    format!(
        "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: team-a}}\n\
         spec:\n  image: {IMAGE}\n  triggers: {{on_change: {on_change}}}\n  params: {{m: {{type: int, default: {marker}}}}}\n  \
         steps: [{{name: s, run: [\"true\"]}}]\n"
    )
}

fn commit(repo: &Repository) {
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
    repo.commit(Some("HEAD"), &sig, &sig, "bench", &tree, &parents)
        .expect("commit");
}

async fn service(repo: &Path, data: &Path) -> Service<LocalExecutor, NotesForge> {
    std::fs::create_dir_all(data).expect("data dir");
    let store = Store::connect(&data.join("trainyard.db").display().to_string())
        .await
        .expect("store");
    let artifacts =
        ArtifactStore::open(&data.join("artifacts").display().to_string()).expect("artifacts");
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let executor = LocalExecutor::new(artifacts.clone(), data.join("work"), tx);
    let config = Config {
        repo: repo.to_owned(),
        remote: None,
        branch: None,
        subdir: String::new(),
        data_dir: data.to_owned(),
        instance: None,
        installation: "bench".to_owned(),
        max_parallel_steps: 4,
        policy: PolicyConfig::default(),
    };
    Service::new(
        config,
        store,
        executor,
        events,
        NotesForge::new(repo.to_owned()),
        artifacts,
    )
    .await
    .expect("service")
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

async fn commit_to_first_step() -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo_dir, data) = (dir.path().join("repo"), dir.path().join("data"));
    let repo = Repository::init(&repo_dir).expect("init");
    let mut service = service(&repo_dir, &data).await;
    let mut samples = Vec::new();
    for n in 0..COMMITS {
        std::fs::write(repo_dir.join("p.yaml"), pipeline("p", true, n)).expect("write");
        commit(&repo);
        let started = Instant::now();
        let (_, runs) = service.apply_head().await.expect("apply");
        assert_eq!(runs.len(), 1, "the change starts one run");
        service.drive_runs().await.expect("drive");
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        service.run_once().await.expect("finish");
    }
    samples
}

async fn tick_lag() -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo_dir, data) = (dir.path().join("repo"), dir.path().join("data"));
    let repo = Repository::init(&repo_dir).expect("init");
    std::fs::write(repo_dir.join("p.yaml"), pipeline("p", false, 0)).expect("write");
    let due = Utc::now() + chrono::Duration::seconds(8);
    let cron = format!("{} {} {} * * *", due.second(), due.minute(), due.hour());
    let mut schedules = String::new();
    for i in 0..SCHEDULES {
        schedules.push_str(&format!(
            "---\napiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: s{i:04}}}\nspec: {{pipeline: p, cron: '{cron}', catchup: none}}\n"
        ));
    }
    std::fs::write(repo_dir.join("schedules.yaml"), schedules).expect("write");
    commit(&repo);
    let mut service = service(&repo_dir, &data).await;
    service.apply_head().await.expect("apply");
    let wait = (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(4);
    service
        .serve(
            Duration::from_secs(60),
            None,
            None,
            tokio::time::sleep(wait),
        )
        .await;
    let store = Store::connect(&data.join("trainyard.db").display().to_string())
        .await
        .expect("store");
    let mut lags = Vec::new();
    for i in 0..SCHEDULES {
        for tick in store.ticks(&format!("s{i:04}"), 10).await.expect("ticks") {
            if tick.run_id.is_some() {
                lags.push((tick.recorded_at - tick.scheduled_at).num_milliseconds() as f64);
            }
        }
    }
    lags
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut first = runtime.block_on(commit_to_first_step());
    let mut lags = runtime.block_on(tick_lag());
    println!("\n| measurement | p50 | p99 | max |\n|---|---|---|---|");
    let max = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
    println!(
        "| commit → first step started ({COMMITS} commits) | {:.1} ms | {:.1} ms | {:.1} ms |",
        percentile(&mut first, 0.5),
        percentile(&mut first, 0.99),
        max(&first)
    );
    println!(
        "| tick lag, {} of {SCHEDULES} schedules due in one second | {:.0} ms | {:.0} ms | {:.0} ms |",
        lags.len(),
        percentile(&mut lags, 0.5),
        percentile(&mut lags, 0.99),
        max(&lags)
    );
}
