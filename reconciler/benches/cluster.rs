//! Benchmark of cluster mode: the release binary with `--executor kubernetes` against the
//! stand-in API server, N schedules (100 and 1,000 due in the same second, 10,000 spread over
//! one minute), each starting a run of three steps. Measures the time from the tick to each
//! run's first Job, the time until every run finished, the API requests the service made,
//! and its CPU time and peak memory. Run with `cargo bench -p trainyard --bench cluster`;
//! `TRAINYARD_BENCH_SIZES=100,1000` picks the sizes, and `TRAINYARD_BENCH_KEEP_LOG=DIR` keeps
//! each size's service log there (`TRAINYARD_BENCH_RUST_LOG` sets its filter).
//!
//! No kubelet runs pods: the bench plays kubelet and `trainyard-launch` itself, following
//! Jobs through a watch and, for each new one, storing the manifest launch would and
//! completing the Job's pod.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use futures::StreamExt as _;
use git2::Repository;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::watcher::{self, Event};
use trainyard::artifacts::{ArtifactStore, manifest_key};
use trainyard::store::{RunState, Store};
use trainyard_testkit::kube::ApiServer;

mod support;
use support::{POSTGRES, ServiceProcess, commit, create_schema, drop_schema, path_text};

use support::{Error, Result};

/// Schedules, and the seconds their ticks are spread over.
const SIZES: [(usize, u32); 3] = [(100, 1), (1_000, 1), (10_000, 60)];
const NAMESPACE: &str = "trainyard";
const IMAGE: &str =
    "reg.example.com/ml@sha256:4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";
/// The client-side rate limit the service gets, so that the bench measures the service
/// rather than the limit; the default is reported beside it.
const API_QPS: u32 = 1_000;
const API_BURST: u32 = 1_000;
/// How long all runs of one size may take before the bench fails.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// What one size measured.
struct Measured {
    runs: usize,
    /// Seconds the ticks were spread over.
    spread: u32,
    /// Milliseconds from each tick's scheduled second to its run's first Job being seen.
    first_job: Vec<f64>,
    /// From the scheduled second until every run had finished.
    all_done: Duration,
    /// Requests the service made, by (verb, resource, status).
    requests: BTreeMap<(String, String, u16), usize>,
    steps: usize,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

fn pipeline() -> String {
    format!(
        "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: p, owner: team-a}}\n\
         spec:\n  image: {IMAGE}\n  triggers: {{on_change: false}}\n  steps:\n    \
         - {{name: s1, run: [\"true\"]}}\n    \
         - {{name: s2, needs: [s1], run: [\"true\"]}}\n    \
         - {{name: s3, needs: [s2], run: [\"true\"]}}\n"
    )
}

/// `n` schedules of pipeline `p` that fire once a day, schedule `i` at `due` plus `i % spread`
/// seconds (UTC), as the texts of files of a thousand each.
fn schedules(n: usize, due: DateTime<Utc>, spread: u32) -> Vec<String> {
    let mut files = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        if i > 0 && i % 1_000 == 0 {
            files.push(std::mem::take(&mut text));
        }
        let at = due + chrono::Duration::seconds(i64::from(i as u32 % spread));
        let cron = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
        text.push_str(&format!(
            "---\napiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: s{i:04}}}\n\
             spec: {{pipeline: p, cron: '{cron}', catchup: none, concurrency: allow}}\n"
        ));
    }
    files.push(text);
    files
}

/// When each Job was first seen, by name.
type Seen = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

/// Plays kubelet and `trainyard-launch`: for every new Job, stores the manifest of a
/// launch that succeeded with no outputs and completes the Job's pod. The watch is
/// cluster-wide so that its requests (namespace-less) are told apart from the service's.
async fn play_kubelet(
    client: kube::Client,
    api: Arc<ApiServer>,
    artifacts: ArtifactStore,
    seen: Seen,
) {
    let jobs: kube::Api<Job> = kube::Api::all(client);
    let mut stream = watcher::watcher(jobs, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let job = match event {
            Ok(Event::Apply(job) | Event::InitApply(job)) => job,
            Ok(_) => continue,
            Err(error) => {
                eprintln!("bench watch: {error}");
                continue;
            }
        };
        let Some(name) = job.metadata.name.clone() else {
            continue;
        };
        {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains_key(&name) {
                continue;
            }
            seen.insert(name.clone(), Utc::now());
        }
        let (api, artifacts) = (Arc::clone(&api), artifacts.clone());
        tokio::spawn(async move {
            if let Err(error) = launch(&api, &artifacts, &job, &name).await {
                eprintln!("bench: cannot finish job {name}: {error}");
            }
        });
    }
}

/// What `trainyard-launch` of a step with no outputs leaves behind, then the pod's exit 0.
async fn launch(api: &ApiServer, artifacts: &ArtifactStore, job: &Job, name: &str) -> Result<()> {
    let labels = job.metadata.labels.clone().unwrap_or_default();
    let run: i64 = labels
        .get("trainyard.dev/run")
        .ok_or("no run label")?
        .parse()?;
    let step = labels.get("trainyard.dev/step").ok_or("no step label")?;
    let instance = labels
        .get("trainyard.dev/instance")
        .ok_or("no instance label")?;
    let attempt: u32 = labels
        .get("trainyard.dev/attempt")
        .ok_or("no attempt label")?
        .parse()?;
    let manifest = serde_json::json!({"instance": instance, "job": name, "run": run,
        "step": step, "attempt": attempt, "artifacts": []});
    artifacts
        .put_bytes(&manifest_key(name), serde_json::to_vec(&manifest)?)
        .await?;
    // The Job controller may not have made the pod yet.
    for _ in 0..100 {
        match api.complete_job(NAMESPACE, name) {
            Ok(()) => return Ok(()),
            Err(trainyard_testkit::kube::Error::NoPod { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(format!("job {name} got no pod").into())
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(n: usize, spread: u32) -> Result<Measured> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let (repo_dir, data, artifacts_dir) = (
        dir.path().join("repo"),
        dir.path().join("data"),
        dir.path().join("artifacts"),
    );
    std::fs::create_dir_all(&artifacts_dir)?;
    let api = Arc::new(ApiServer::start().await?);
    api.create_namespace(NAMESPACE)?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let settings = dir.path().join("cluster.yaml");
    std::fs::write(
        &settings,
        format!(
            "namespace: {NAMESPACE}\nimage: registry.example.com/trainyard:bench\n\
             api_qps: {API_QPS}\napi_burst: {API_BURST}\n"
        ),
    )?;

    // The ticks are due far enough ahead for the service to start and apply the schedules.
    let lead = Duration::from_secs(if n <= 100 {
        8
    } else if n <= 1_000 {
        15
    } else {
        40
    });
    let due = (Utc::now() + lead).with_nanosecond(0).ok_or("time")?;
    let repo = Repository::init(&repo_dir)?;
    std::fs::write(repo_dir.join("p.yaml"), pipeline())?;
    // A thousand schedules a file keeps each well under the 1 MiB a file may have.
    for (part, text) in schedules(n, due, spread).iter().enumerate() {
        std::fs::write(repo_dir.join(format!("schedules-{part:02}.yaml")), text)?;
    }
    commit(&repo)?;

    let schema = create_schema().await?;
    let database = format!("{POSTGRES}?options=-c%20search_path%3D{schema}");
    let outcome = run_service(
        n,
        (due, spread),
        &api,
        &database,
        &repo_dir,
        &data,
        &artifacts_dir,
        &kubeconfig,
        &settings,
    )
    .await;
    let dropped = drop_schema(&schema).await;
    let measured = outcome?;
    dropped?;
    Ok(measured)
}

#[allow(clippy::too_many_arguments)]
async fn run_service(
    n: usize,
    (due, spread): (DateTime<Utc>, u32),
    api: &Arc<ApiServer>,
    database: &str,
    repo_dir: &Path,
    data: &Path,
    artifacts_dir: &Path,
    kubeconfig: &Path,
    settings: &Path,
) -> Result<Measured> {
    let log_path = data.with_extension("log");
    std::fs::create_dir_all(data)?;
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["serve", "--repo", path_text(repo_dir)?])
        .args(["--data-dir", path_text(data)?])
        .args(["--database", database])
        .args(["--artifacts", path_text(artifacts_dir)?])
        .args(["--executor", "kubernetes"])
        .args(["--cluster-config", path_text(settings)?])
        .args(["--poll-seconds", "1"])
        .args(["--max-parallel-steps", &n.to_string()])
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("TRAINYARD_BENCH_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .env_remove("TRAINYARD_POLICY_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let service = ServiceProcess(child);
    let fail = |message: String| -> Error {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{message}\n--- service log (last lines)\n{}",
            tail.join("\n")
        )
        .into()
    };

    let client = {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        kube::Client::try_from(config)?
    };
    let seen: Seen = Arc::default();
    let kubelet = tokio::spawn(play_kubelet(
        client,
        Arc::clone(api),
        ArtifactStore::open(path_text(artifacts_dir)?)?,
        Arc::clone(&seen),
    ));

    // The schedules must be active before their tick, or it never fires.
    let store = loop {
        if let Ok(store) = Store::connect(database).await {
            break store;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let active = store.active_schedules().await.map(|s| s.len()).unwrap_or(0);
        if active == n {
            break;
        }
        if Utc::now() >= due {
            return Err(fail(format!(
                "only {active} of {n} schedules were active when their tick was due"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_before = service.cpu_seconds()?;
    let ready_ahead = (due - Utc::now()).num_milliseconds();
    eprintln!("{n} schedules active {ready_ahead} ms before their tick");

    let deadline = Instant::now() + RUN_LIMIT;
    let runs = loop {
        let runs = store
            .list_runs(None, (n * 2) as u32)
            .await?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        if runs.len() >= n && runs.iter().all(|r| r.state.is_finished()) {
            break runs;
        }
        if Instant::now() > deadline {
            let finished = runs.iter().filter(|r| r.state.is_finished()).count();
            return Err(fail(format!(
                "{finished} of {} runs ({n} expected) finished within {RUN_LIMIT:?}",
                runs.len()
            )));
        }
        // Reading every run is not free: at the largest size, look less often.
        tokio::time::sleep(Duration::from_millis(if n > 1_000 { 1_000 } else { 50 })).await;
    };
    let all_done = (Utc::now() - due).to_std().unwrap_or_default();
    let cpu_seconds = service.cpu_seconds()? - cpu_before;
    let peak_rss_kib = service.peak_rss_kib()?;
    kubelet.abort();

    if runs.len() != n {
        return Err(fail(format!("{} runs started, not {n}", runs.len())));
    }
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.state != RunState::Succeeded)
        .map(|r| format!("run {}: {:?} {:?}", r.id, r.state, r.message))
        .collect();
    if !failed.is_empty() {
        return Err(fail(format!(
            "{} of {n} runs did not succeed:\n{}",
            failed.len(),
            failed.join("\n")
        )));
    }
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut first_job = Vec::with_capacity(n);
    // The installation the service created in its store names its Jobs.
    let installation = store.installation(None).await?;
    for run in &runs {
        let name = trainyard::execute::job_name(&installation, run.id, "s1", 1);
        let at = seen
            .get(&name)
            .ok_or_else(|| fail(format!("job {name} was never seen")))?;
        let scheduled = run.scheduled_at.ok_or("a run without its tick")?;
        let offset = (scheduled - due).num_seconds();
        if !(0..i64::from(spread)).contains(&offset) {
            return Err(fail(format!(
                "run {} is for tick {scheduled}, not within {spread} s of {due}",
                run.id
            )));
        }
        first_job.push((*at - scheduled).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
    }
    service.stop()?;
    // For a closer look at where the time went: the service's log, with its timestamps.
    if let Some(keep) = std::env::var_os("TRAINYARD_BENCH_KEEP_LOG") {
        let kept = Path::new(&keep).join(format!("cluster-{n}.log"));
        std::fs::copy(&log_path, &kept)?;
        eprintln!("service log kept in {}", kept.display());
    }

    let mut requests = BTreeMap::new();
    for request in api.requests() {
        // The bench's own watch is cluster-wide; the service works in its namespace.
        if request.namespace.is_none() && request.resource == "jobs" {
            continue;
        }
        *requests
            .entry((request.verb, request.resource, request.status))
            .or_default() += 1;
    }
    Ok(Measured {
        runs: n,
        spread,
        first_job,
        all_done,
        requests,
        steps: seen.len(),
        cpu_seconds,
        peak_rss_kib,
    })
}

fn report(measured: &mut [Measured]) {
    println!(
        "\n| runs × 3 steps | ticks over | tick → first Job p50 | p99 | max | all runs done | service CPU | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for m in measured.iter_mut() {
        let max = m.first_job.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {} s | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} s | {:.2} s | {:.1} MiB |",
            m.runs,
            m.spread,
            percentile(&mut m.first_job, 0.5),
            percentile(&mut m.first_job, 0.99),
            max,
            m.all_done.as_secs_f64(),
            m.cpu_seconds,
            m.peak_rss_kib as f64 / 1024.0
        );
    }
    for m in measured.iter() {
        println!(
            "\nAPI requests of the service, {} runs ({} Jobs):",
            m.runs, m.steps
        );
        println!("| verb | resource | status | count |\n|---|---|---|---|");
        let mut others = 0;
        let mut creates = 0;
        for ((verb, resource, status), count) in &m.requests {
            println!("| {verb} | {resource} | {status} | {count} |");
            if verb == "create" && resource == "jobs" {
                creates += count;
            } else {
                others += count;
            }
        }
        println!(
            "Job creates per step: {:.3}; other requests per step: {:.4} ({others} in all)",
            creates as f64 / m.steps as f64,
            others as f64 / m.steps as f64
        );
    }
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let wanted: Option<Vec<usize>> = std::env::var("TRAINYARD_BENCH_SIZES").ok().map(|list| {
        list.split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    });
    let mut measured = Vec::new();
    for (n, spread) in SIZES {
        if wanted.as_ref().is_some_and(|w| !w.contains(&n)) {
            continue;
        }
        measured.push(runtime.block_on(measure(n, spread))?);
    }
    println!(
        "\nservice client rate limit: api_qps {API_QPS}, api_burst {API_BURST}; \
         store: PostgreSQL; load average before: {}",
        load.trim()
    );
    report(&mut measured);
    Ok(())
}
