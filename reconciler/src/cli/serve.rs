//! `trainyard serve`: the embedded service (local executor, Git-notes reports) over SQLite
//! or PostgreSQL.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use trainyard::artifacts::ArtifactStore;
use trainyard::execute::LocalExecutor;
use trainyard::report::notes::NotesForge;
use trainyard::runtime::{Config, Service};
use trainyard::source::discover;
use trainyard::store::{RunState, Store};

use super::{EXIT_INVALID, LogFormat, ServeArgs, policy_config};

/// Runs the service until interrupted, or once with `--once`.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let start = args.repo.clone().unwrap_or_else(|| ".".into());
    let (repo, _) = discover(&start)?;
    let root = repo
        .workdir()
        .map(Path::to_path_buf)
        .context("the followed repository must have a work tree")?;
    drop(repo);
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| root.join(".trainyard"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("trainyard.db").display()));
    let artifacts_at = args
        .artifacts
        .clone()
        .unwrap_or_else(|| data_dir.join("artifacts").display().to_string());
    let store = Store::connect(&database)
        .await
        .with_context(|| format!("cannot open the database {database}"))?;
    let artifacts = ArtifactStore::open(&artifacts_at)?;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let executor = LocalExecutor::new(artifacts.clone(), data_dir.join("work"), events_tx);
    let forge = NotesForge::new(root.clone());
    let config = Config {
        repo: root.clone(),
        branch: args.branch.clone(),
        subdir: args.path.trim_matches('/').to_owned(),
        data_dir: data_dir.clone(),
        instance: args.instance.clone(),
        max_parallel_steps: args.max_parallel_steps.max(1),
        policy: policy_config(&args.common)?,
    };
    let mut service = Service::new(config, store, executor, events, forge, artifacts).await?;
    if !args.once {
        let shutdown = async {
            // A failing signal handler means we cannot be interrupted gracefully; run on.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        service
            .serve(Duration::from_secs(args.poll_seconds.max(1)), shutdown)
            .await;
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = service.run_once().await?;
    let short = &outcome.commit[..outcome.commit.len().min(12)];
    if outcome.runs.is_empty() {
        println!("{short}: applied; no run to start.");
    }
    for (id, state) in &outcome.runs {
        println!("{short}: run {id} {state}");
    }
    println!(
        "See: git log --notes=trainyard -1 {short}    trainyard runs    trainyard models    (state in {})",
        data_dir.display()
    );
    let all_succeeded = outcome
        .runs
        .iter()
        .all(|(_, state)| *state == RunState::Succeeded);
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}
