//! Read-only views of the store for people and scripts: `runs`, `runs show`, `logs`,
//! `schedules` and `models`, printed as aligned tables or as JSON.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr as _;

use anyhow::{Context as _, Result, anyhow};
use chrono::{DateTime, Local, SecondsFormat, TimeDelta, Utc};
use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use trainyard::artifacts::{ArtifactStore, log_key};
use trainyard::execute::kubernetes::{self, ClusterSettings};
use trainyard::source::discover;
use trainyard::spec::check::Params;
use trainyard::store::{ArtifactRow, AttemptRow, AttemptState, RunRow, StepRow, StepState, Store};

use super::{Format, StoreArgs, print};

mod models;
mod schedules;

use models::list_models;
use schedules::list_schedules;

/// Exit status when the run, step, attempt, log or model asked for does not exist.
const EXIT_NOT_FOUND: u8 = 1;

/// The data directory's name at the root of the repository, when `--data-dir` is not given.
pub(super) const DATA_DIR: &str = ".trainyard";

/// What the views say when the service has not created its database yet.
const NO_RUNS_YET: &str = "no runs yet: start the service with `trainyard serve`";

/// How many runs `trainyard runs` lists without `--limit`.
const DEFAULT_LIMIT: u32 = 20;

/// The widest a message may be in a table before it is cut.
const MESSAGE_WIDTH: usize = 60;

/// Options of every view but `logs`: where the store is, and how to print.
#[derive(Debug, clap::Args)]
pub(super) struct ViewArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
}

/// `trainyard runs`: the newest runs, or one run in detail.
///
/// The store and format options are global, so that they may come before or after `show`;
/// clap's `args_conflicts_with_subcommands` would refuse them before it, so the list's own
/// options are checked against `show` by hand.
#[derive(Debug, clap::Args)]
pub(super) struct RunsArgs {
    #[command(subcommand)]
    command: Option<RunsCommand>,
    /// Only runs of this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// How many runs to list, newest first [default: 20].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Show one run with its steps and artifacts.
    Show {
        /// The run's id.
        id: i64,
    },
}

/// `trainyard logs`: the stored log of one attempt of a step.
#[derive(Debug, clap::Args)]
pub(super) struct LogsArgs {
    /// The run's id.
    run: i64,
    /// The step's name.
    step: String,
    /// Which attempt [default: the latest].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: Option<u32>,
    /// Cluster settings of a service that runs steps on Kubernetes: the log is read from
    /// the step's pod while it exists, and from the store after.
    #[arg(long, env = "TRAINYARD_CLUSTER_CONFIG", value_name = "FILE")]
    cluster_config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

/// `trainyard schedules`: every schedule that is declared.
#[derive(Debug, clap::Args)]
pub(super) struct SchedulesArgs {
    #[command(flatten)]
    view: ViewArgs,
}

/// `trainyard models`: registered model versions.
#[derive(Debug, clap::Args)]
pub(super) struct ModelsArgs {
    /// Only versions of this model.
    name: Option<String>,
    #[command(flatten)]
    view: ViewArgs,
}

/// Something a view was asked for and could not find: exit status 1, where other errors
/// exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotFound(String);

/// Lists runs, or shows one.
pub(super) fn runs(args: RunsArgs) -> Result<ExitCode> {
    block_on(async move {
        match args.command {
            Some(RunsCommand::Show { .. }) if args.pipeline.is_some() || args.limit.is_some() => {
                Err(anyhow!(
                    "--pipeline and --limit choose runs to list; `runs show` shows one run"
                ))
            }
            Some(RunsCommand::Show { id }) => show_run(id, &args.view).await,
            None => {
                let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
                list_runs(args.pipeline.as_deref(), limit, &args.view).await
            }
        }
    })
}

/// Prints the stored log of a step's attempt, byte for byte.
pub(super) fn logs(args: LogsArgs) -> Result<ExitCode> {
    block_on(print_log(args))
}

/// Lists the declared schedules.
pub(super) fn schedules(args: SchedulesArgs) -> Result<ExitCode> {
    block_on(list_schedules(args.view))
}

/// Lists registered model versions.
pub(super) fn models(args: ModelsArgs) -> Result<ExitCode> {
    block_on(list_models(args.name, args.view))
}

/// Runs a view on a runtime of its own (the other commands need none) and turns
/// [`NotFound`] into exit status 1.
fn block_on(view: impl Future<Output = Result<()>>) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(view) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => match error.downcast_ref::<NotFound>() {
            Some(not_found) => {
                eprintln!("trainyard: {not_found}");
                Ok(ExitCode::from(EXIT_NOT_FOUND))
            }
            None => Err(error),
        },
    }
}

impl StoreArgs {
    /// `--data-dir`, or `.trainyard` at the root of the Git repository that holds the current
    /// directory.
    pub(super) fn data_dir(&self) -> Result<PathBuf> {
        self.data_dir_from(Path::new("."))
    }

    /// `--data-dir`, or `.trainyard` at the root of the Git repository that holds `start`.
    pub(super) fn data_dir_from(&self, start: &Path) -> Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let (repo, _) = discover(start).context(
            "no --data-dir given and the current directory is not in a Git repository; \
             run in the repository the service watches, or pass --data-dir",
        )?;
        Ok(repo.root().join(DATA_DIR))
    }

    /// `--database`, or the SQLite file `trainyard.db` in the data directory (given as a path,
    /// which the store escapes into a URL itself).
    pub(super) fn database(&self) -> Result<String> {
        self.database_in(&self.data_dir()?)
    }

    /// `--database`, or the SQLite file `trainyard.db` in `data_dir`.
    pub(super) fn database_in(&self, data_dir: &Path) -> Result<String> {
        match &self.database {
            Some(url) => Ok(url.clone()),
            None => utf8(data_dir.join("trainyard.db")),
        }
    }

    /// `--artifacts`, or the directory `artifacts` in the data directory.
    pub(super) fn artifacts(&self) -> Result<String> {
        self.artifacts_in(&self.data_dir()?)
    }

    /// `--artifacts`, or the directory `artifacts` in `data_dir`.
    pub(super) fn artifacts_in(&self, data_dir: &Path) -> Result<String> {
        match &self.artifacts {
            Some(location) => Ok(location.clone()),
            None => utf8(data_dir.join("artifacts")),
        }
    }
}

fn utf8(path: PathBuf) -> Result<String> {
    path.into_os_string()
        .into_string()
        .map_err(|path| anyhow!("the path {} is not valid UTF-8", Path::new(&path).display()))
}

/// The file a SQLite database URL (or bare path) names; `None` for other databases.
fn sqlite_file(url: &str) -> Result<Option<PathBuf>> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url).context("invalid SQLite URL")?;
        return Ok(Some(options.get_filename().to_owned()));
    }
    if url.contains("://") {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(url)))
}

/// Runs `view` against the store and closes it; `None`, connecting to nothing, when the
/// database is a SQLite file that does not exist yet, because connecting would create it.
async fn with_store<T>(
    args: &StoreArgs,
    view: impl AsyncFnOnce(&Store) -> Result<T>,
) -> Result<Option<T>> {
    let url = args.database()?;
    let file = sqlite_file(&url)?;
    if file.as_deref().is_some_and(|file| !file.exists()) {
        return Ok(None);
    }
    let store = match &file {
        Some(file) => Store::connect(&url)
            .await
            .with_context(|| format!("cannot open the database {}", file.display()))?,
        // The URL may hold a password, so it is not repeated.
        None => Store::connect(&url)
            .await
            .context("cannot open the database")?,
    };
    let result = view(&store).await;
    store.close().await;
    result.map(Some)
}

/// What a list view prints when there is no database yet.
fn no_database(format: Format) -> Result<()> {
    match format {
        Format::Text => print(&format!("{NO_RUNS_YET}\n")),
        Format::Json => {
            eprintln!("trainyard: {NO_RUNS_YET}");
            print("[]\n")
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<()> {
    print(&(serde_json::to_string_pretty(value)? + "\n"))
}

/// Writes bytes to standard output as they are (a log need not be UTF-8).
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

// --- runs ------------------------------------------------------------------------------------

async fn list_runs(pipeline: Option<&str>, limit: u32, view: &ViewArgs) -> Result<()> {
    let listed = with_store(&view.store, async |store| {
        Ok(store.list_runs(pipeline, limit).await?)
    })
    .await?;
    let Some(runs) = listed else {
        return no_database(view.format);
    };
    match view.format {
        Format::Json => print_json(
            &runs
                .iter()
                .map(|run| match run {
                    Ok(run) => serde_json::to_value(RunView::from(run)),
                    Err(error) => Ok(serde_json::json!({ "error": error.to_string() })),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Format::Text if runs.is_empty() => match pipeline {
            Some(pipeline) => print(&format!("no runs of pipeline {pipeline}\n")),
            None => print("no runs\n"),
        },
        Format::Text => print(&runs_table(&runs, Utc::now())),
    }
}

fn runs_table(runs: &[trainyard::store::Result<RunRow>], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "ID", "PIPELINE", "TRIGGER", "STATE", "COMMIT", "CREATED", "DURATION",
    ]);
    for run in runs {
        let run = match run {
            Ok(run) => run,
            Err(error) => {
                table.row(vec![
                    "?".to_owned(),
                    one_line(&error.to_string(), 2 * MESSAGE_WIDTH),
                ]);
                continue;
            }
        };
        table.row(vec![
            run.id.to_string(),
            run.pipeline.clone(),
            trigger_text(run),
            run.state.to_string(),
            short_sha(&run.commit_sha).to_owned(),
            local_time(run.created_at),
            took(
                run.started_at,
                run.finished_at,
                !run.state.is_finished(),
                now,
            ),
        ]);
    }
    table.render()
}

/// A run with everything recorded about it.
struct RunDetail {
    run: RunRow,
    steps: Vec<StepRow>,
    attempts: Vec<AttemptRow>,
    artifacts: Vec<ArtifactRow>,
}

async fn show_run(id: i64, view: &ViewArgs) -> Result<()> {
    let found = with_store(&view.store, async |store| {
        let Some(run) = store.run(id).await? else {
            return Err(NotFound(format!("run {id} not found")).into());
        };
        Ok(RunDetail {
            run,
            steps: store.steps(id).await?,
            attempts: store.attempts(id).await?,
            artifacts: store.artifacts(id).await?,
        })
    })
    .await?;
    let detail = found.ok_or_else(|| NotFound(format!("run {id} not found ({NO_RUNS_YET})")))?;
    match view.format {
        Format::Json => print_json(&RunDetailView::from(&detail)),
        Format::Text => print(&run_text(&detail, Utc::now())),
    }
}

fn run_text(detail: &RunDetail, now: DateTime<Utc>) -> String {
    let run = &detail.run;
    let mut trigger = trigger_text(run);
    if let Some(at) = run.scheduled_at {
        trigger.push_str(&format!(", tick {}", local_time(at)));
    }
    let mut state = run.state.to_string();
    if let Some(dag) = run.dag_state.filter(|_| !run.state.is_finished()) {
        state.push_str(&format!(" (DAG {dag}, finally steps running)"));
    }
    if run.cancel_requested && !run.state.is_finished() {
        state.push_str(" (cancel requested)");
    }
    let finished = match run.finished_at {
        Some(at) => format!(
            "{} ({})",
            local_time(at),
            took(run.started_at, run.finished_at, false, now)
        ),
        None => "-".to_owned(),
    };
    let fields = [
        ("Run", run.id.to_string()),
        ("Pipeline", run.pipeline.clone()),
        ("Version", short_sha(&run.pipeline_version).to_owned()),
        ("Commit", run.commit_sha.clone()),
        ("Trigger", trigger),
        ("Params", params_text(&run.params)),
        ("State", state),
        (
            "Message",
            run.message.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("Created", local_time(run.created_at)),
        (
            "Started",
            run.started_at.map_or_else(|| "-".to_owned(), local_time),
        ),
        ("Finished", finished),
    ];
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{:<10}{value}\n", format!("{label}:")));
    }

    let mut steps = Table::new(&["STEP", "STATE", "ATTEMPT", "DURATION", "EXIT", "MESSAGE"]);
    for step in &detail.steps {
        let ongoing = matches!(step.state, StepState::Waiting | StepState::Running);
        let name = if step.finally {
            format!("{} (finally)", step.name)
        } else {
            step.name.clone()
        };
        steps.row(vec![
            name,
            step.state.to_string(),
            step.attempt.to_string(),
            took(step.started_at, step.finished_at, ongoing, now),
            step.exit_code
                .map_or_else(|| "-".to_owned(), |code| code.to_string()),
            step.message
                .as_deref()
                .map_or_else(|| "-".to_owned(), |m| one_line(m, MESSAGE_WIDTH)),
        ]);
    }
    out.push('\n');
    out.push_str(&steps.render());

    // Queued time is not run time: how long each attempt waited for its executor (a
    // queue, a node, an image) before its program ran, and how long it ran.
    if !detail.attempts.is_empty() {
        let mut attempts = Table::new(&[
            "STEP",
            "ATTEMPT",
            "STATE",
            "SUBMITTED",
            "QUEUED",
            "RAN",
            "MESSAGE",
        ]);
        for attempt in &detail.attempts {
            let ongoing = attempt.finished_at.is_none();
            let started = attempt.running_at.or(attempt.finished_at);
            attempts.row(vec![
                attempt.step.clone(),
                attempt.attempt.to_string(),
                attempt.state.to_string(),
                attempt
                    .submitted_at
                    .map_or_else(|| "-".to_owned(), local_time),
                match attempt.submitted_at {
                    Some(submitted) => took(Some(submitted), started, ongoing, now),
                    None => "-".to_owned(),
                },
                match attempt.running_at {
                    Some(running) => took(Some(running), attempt.finished_at, ongoing, now),
                    None => "-".to_owned(),
                },
                attempt
                    .message
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |m| one_line(m, MESSAGE_WIDTH)),
            ]);
        }
        out.push('\n');
        out.push_str(&attempts.render());
    }

    out.push('\n');
    if detail.artifacts.is_empty() {
        out.push_str("no artifacts\n");
    } else {
        let mut artifacts = Table::new(&["STEP", "OUTPUT", "SIZE", "SHA256", "URI"]);
        for artifact in &detail.artifacts {
            artifacts.row(vec![
                artifact.step.clone(),
                artifact.output.clone(),
                human_size(artifact.size),
                short_sha(&artifact.sha256).to_owned(),
                artifact.uri.clone(),
            ]);
        }
        out.push_str(&artifacts.render());
    }
    out
}

fn trigger_text(run: &RunRow) -> String {
    match &run.schedule {
        Some(schedule) => format!("{} {schedule}", run.trigger),
        None => run.trigger.to_string(),
    }
}

// --- logs ------------------------------------------------------------------------------------

async fn print_log(args: LogsArgs) -> Result<()> {
    let (run, step) = (args.run, args.step.as_str());
    let found = with_store(&args.store, async |store| {
        find_attempt(store, run, step, args.attempt).await
    })
    .await?;
    let attempt = found.ok_or_else(|| NotFound(format!("run {run} not found ({NO_RUNS_YET})")))?;
    let missing = || {
        let which = format!("attempt {} of step {step:?} of run {run}", attempt.attempt);
        NotFound(match (&attempt.state, &attempt.reused) {
            (AttemptState::Running, _) => {
                format!(
                    "no log stored yet for {which}: it is running, and its log is stored when it ends"
                )
            }
            (_, Some(from)) => format!(
                "{which} did not run: it reused the outputs of run {} step {} attempt {}, whose \
                 log is shown by: trainyard logs {} {} --attempt {}",
                from.run_id, from.step, from.attempt, from.run_id, from.step, from.attempt
            ),
            _ => format!("no log stored for {which}"),
        })
    };
    if let Some(path) = &args.cluster_config
        && let Some(log) = pod_log(path, &attempt.job).await?
    {
        return write_stdout(log.as_bytes());
    }
    let location = args.store.artifacts()?;
    // Opening a local store creates its directory; a view leaves none behind.
    if !location.contains("://") && !Path::new(&location).exists() {
        return Err(missing().into());
    }
    let artifacts = ArtifactStore::open(&location)?;
    let key = log_key(&attempt.job);
    let log = artifacts.get_bytes(&key).await?.ok_or_else(missing)?;
    write_stdout(&log)
}

/// The live log of job `job` from its pod on the cluster; None once no pod of it is left.
async fn pod_log(cluster_config: &Path, job: &str) -> Result<Option<String>> {
    let settings = ClusterSettings::load(cluster_config)?;
    let config = kube::Config::infer()
        .await
        .context("cannot find a Kubernetes cluster (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let client = kube::Client::try_from(config)
        .context("cannot build a client for the Kubernetes cluster")?;
    Ok(kubernetes::pod_log(client, &settings.namespace, job).await?)
}

/// The attempt asked for (the latest by default), or [`NotFound`] saying what is missing.
async fn find_attempt(
    store: &Store,
    run: i64,
    step: &str,
    attempt: Option<u32>,
) -> Result<AttemptRow> {
    if store.run(run).await?.is_none() {
        return Err(NotFound(format!("run {run} not found")).into());
    }
    let steps = store.steps(run).await?;
    if !steps.iter().any(|s| s.name == step) {
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        return Err(NotFound(format!(
            "run {run} has no step {step:?}; its steps are {}",
            names.join(", ")
        ))
        .into());
    }
    let mut attempts: Vec<AttemptRow> = store
        .attempts(run)
        .await?
        .into_iter()
        .filter(|a| a.step == step)
        .collect();
    attempts.sort_by_key(|a| a.attempt);
    let Some(latest) = attempts.last().map(|a| a.attempt) else {
        return Err(NotFound(format!("step {step:?} of run {run} has not started")).into());
    };
    let wanted = attempt.unwrap_or(latest);
    attempts
        .into_iter()
        .find(|a| a.attempt == wanted)
        .ok_or_else(|| {
            NotFound(format!(
                "step {step:?} of run {run} has no attempt {wanted}; it has attempts 1 to {latest}"
            ))
            .into()
        })
}

// --- JSON rows -------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct RunView<'a> {
    id: i64,
    pipeline: &'a str,
    pipeline_version: &'a str,
    commit: &'a str,
    trigger: &'static str,
    schedule: Option<&'a str>,
    scheduled_at: Option<DateTime<Utc>>,
    params: &'a Params,
    state: &'static str,
    message: Option<&'a str>,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// From the first attempt's start to the end; `None` until the run ends.
    duration_seconds: Option<f64>,
}

impl<'a> From<&'a RunRow> for RunView<'a> {
    fn from(run: &'a RunRow) -> Self {
        RunView {
            id: run.id,
            pipeline: &run.pipeline,
            pipeline_version: &run.pipeline_version,
            commit: &run.commit_sha,
            trigger: run.trigger.as_str(),
            schedule: run.schedule.as_deref(),
            scheduled_at: run.scheduled_at,
            params: &run.params,
            state: run.state.as_str(),
            message: run.message.as_deref(),
            cancel_requested: run.cancel_requested,
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_seconds: seconds(run.started_at, run.finished_at),
        }
    }
}

#[derive(Debug, Serialize)]
struct RunDetailView<'a> {
    run: RunView<'a>,
    steps: Vec<StepView<'a>>,
    artifacts: Vec<ArtifactView<'a>>,
}

#[derive(Debug, Serialize)]
struct StepView<'a> {
    name: &'a str,
    /// A finally step (it ran once the DAG had ended); left out for the DAG's steps.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    finally: bool,
    state: &'static str,
    attempt: u32,
    job: Option<&'a str>,
    retry_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_seconds: Option<f64>,
    exit_code: Option<i32>,
    message: Option<&'a str>,
    attempts: Vec<AttemptView<'a>>,
}

#[derive(Debug, Serialize)]
struct AttemptView<'a> {
    attempt: u32,
    job: &'a str,
    state: &'static str,
    /// Recorded, before it was handed to the executor.
    created_at: DateTime<Utc>,
    /// Accepted by the executor (the Job created, the process spawned).
    submitted_at: Option<DateTime<Utc>>,
    /// Its program began to run.
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// From submitted to running (or to its end, if it never ran).
    pending_seconds: Option<f64>,
    /// From running to its end.
    duration_seconds: Option<f64>,
    exit_code: Option<i32>,
    message: Option<&'a str>,
    /// For a cached attempt: the attempt whose outputs it reused.
    #[serde(skip_serializing_if = "Option::is_none")]
    reused: Option<ReusedView<'a>>,
}

#[derive(Debug, Serialize)]
struct ReusedView<'a> {
    run: i64,
    step: &'a str,
    attempt: u32,
}

#[derive(Debug, Serialize)]
struct ArtifactView<'a> {
    step: &'a str,
    output: &'a str,
    size: u64,
    sha256: &'a str,
    uri: &'a str,
    created_at: DateTime<Utc>,
}

impl<'a> From<&'a RunDetail> for RunDetailView<'a> {
    fn from(detail: &'a RunDetail) -> Self {
        let steps = detail
            .steps
            .iter()
            .map(|step| StepView {
                name: &step.name,
                finally: step.finally,
                state: step.state.as_str(),
                attempt: step.attempt,
                job: step.job.as_deref(),
                retry_at: step.retry_at,
                started_at: step.started_at,
                finished_at: step.finished_at,
                duration_seconds: seconds(step.started_at, step.finished_at),
                exit_code: step.exit_code,
                message: step.message.as_deref(),
                attempts: detail
                    .attempts
                    .iter()
                    .filter(|a| a.step == step.name)
                    .map(|a| AttemptView {
                        attempt: a.attempt,
                        job: &a.job,
                        state: a.state.as_str(),
                        created_at: a.created_at,
                        submitted_at: a.submitted_at,
                        started_at: a.running_at,
                        finished_at: a.finished_at,
                        pending_seconds: seconds(a.submitted_at, a.running_at.or(a.finished_at)),
                        duration_seconds: seconds(a.running_at, a.finished_at),
                        exit_code: a.exit_code,
                        message: a.message.as_deref(),
                        reused: a.reused.as_ref().map(|r| ReusedView {
                            run: r.run_id,
                            step: &r.step,
                            attempt: r.attempt,
                        }),
                    })
                    .collect(),
            })
            .collect();
        let artifacts = detail
            .artifacts
            .iter()
            .map(|a| ArtifactView {
                step: &a.step,
                output: &a.output,
                size: a.size,
                sha256: &a.sha256,
                uri: &a.uri,
                created_at: a.created_at,
            })
            .collect();
        RunDetailView {
            run: RunView::from(&detail.run),
            steps,
            artifacts,
        }
    }
}

// --- formatting ------------------------------------------------------------------------------

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(column) {
                    Some(widest) => *widest = (*widest).max(width),
                    None => widths.push(width),
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A time in the local zone, RFC 3339 to the second.
fn local_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// How long something took, or has taken so far while `ongoing`; `-` when it has no start
/// (or, finished, no end).
fn took(
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    ongoing: bool,
    now: DateTime<Utc>,
) -> String {
    let end = if ongoing { Some(now) } else { finished };
    match (started, end) {
        (Some(start), Some(end)) => human_duration(end - start),
        _ => "-".to_owned(),
    }
}

/// Seconds from `started` to `finished`, when both are known.
fn seconds(started: Option<DateTime<Utc>>, finished: Option<DateTime<Utc>>) -> Option<f64> {
    let elapsed = finished? - started?;
    Some(elapsed.num_milliseconds() as f64 / 1000.0)
}

/// A duration for people: `4.1s` under a minute, then `2m03s`, `5h07m` and `3d04h`.
fn human_duration(elapsed: TimeDelta) -> String {
    // Clocks of different machines may disagree; a negative span is shown as none.
    let millis = elapsed.num_milliseconds().max(0);
    let tenths = (millis + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = (millis + 500) / 1000;
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    if mins < 60 {
        format!("{mins}m{:02}s", secs % 60)
    } else if hours < 24 {
        format!("{hours}h{:02}m", mins % 60)
    } else {
        format!("{days}d{:02}h", hours % 24)
    }
}

/// A size for people, in powers of 1024: `512 B`, `1.5 KiB`, `12 MiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Past 1023.5 the value would print as 1024 of this unit, which is one of the next.
    while value >= 1023.5 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// The first 12 characters of a hash, enough to tell commits and contents apart.
fn short_sha(sha: &str) -> &str {
    sha.char_indices()
        .nth(12)
        .map_or(sha, |(end, _)| &sha[..end])
}

/// The first line of `text`, cut to `max` characters with an ellipsis when anything was left
/// out, so that one table row stays one line.
fn one_line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    let more_lines = first.len() < text.trim_end().len();
    if first.chars().count() <= max && !more_lines {
        return first.to_owned();
    }
    let kept: String = first.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

/// Params as compact `key=value` pairs (`epochs=3,name=x`); `-` when there are none.
fn params_text(params: &Params) -> String {
    if params.is_empty() {
        return "-".to_owned();
    }
    params
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => format!("{key}={text}"),
            other => format!("{key}={other}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Metrics as compact `key=value` pairs (`auc=0.91,loss=0.2`); `-` when there are none.
fn metrics_text(metrics: &BTreeMap<String, f64>) -> String {
    if metrics.is_empty() {
        return "-".to_owned();
    }
    metrics
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(seconds: f64) -> TimeDelta {
        TimeDelta::milliseconds((seconds * 1000.0).round() as i64)
    }

    #[test]
    fn durations_under_a_minute_show_tenths_of_seconds() {
        assert_eq!(human_duration(secs(0.0)), "0.0s");
        assert_eq!(human_duration(secs(4.06)), "4.1s");
        assert_eq!(human_duration(secs(59.94)), "59.9s");
    }

    #[test]
    fn durations_round_up_into_the_next_unit() {
        assert_eq!(human_duration(secs(59.96)), "1m00s");
        assert_eq!(human_duration(secs(3599.6)), "1h00m");
    }

    #[test]
    fn longer_durations_show_two_units() {
        assert_eq!(human_duration(secs(123.0)), "2m03s");
        assert_eq!(
            human_duration(secs(5.0 * 3600.0 + 7.0 * 60.0 + 30.0)),
            "5h07m"
        );
        assert_eq!(human_duration(secs(3.0 * 86_400.0 + 4.0 * 3600.0)), "3d04h");
    }

    #[test]
    fn a_negative_duration_shows_as_none() {
        assert_eq!(human_duration(secs(-3.0)), "0.0s");
    }

    #[test]
    fn byte_sizes_use_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 * 1024 * 1024), "12 MiB");
        assert_eq!(
            human_size(3 * 1024 * 1024 * 1024 + 300 * 1024 * 1024),
            "3.3 GiB"
        );
    }

    #[test]
    fn a_size_just_under_the_next_unit_is_shown_in_it() {
        assert_eq!(human_size(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn hashes_are_cut_to_twelve_characters() {
        assert_eq!(
            short_sha("0123456789abcdef0123456789abcdef01234567"),
            "0123456789ab"
        );
        assert_eq!(short_sha("abc"), "abc");
    }

    #[test]
    fn long_messages_are_cut_with_an_ellipsis() {
        assert_eq!(one_line("out of memory", 20), "out of memory");
        assert_eq!(one_line("exactly ten", 11), "exactly ten");
        assert_eq!(one_line("exactly ten", 10), "exactly t…");
        assert_eq!(one_line("ünïcödé text", 5), "ünïc…");
    }

    #[test]
    fn only_the_first_line_of_a_message_is_kept() {
        assert_eq!(one_line("first\nsecond", 40), "first…");
        assert_eq!(one_line("only line\n", 40), "only line");
        assert_eq!(one_line("", 40), "");
    }

    #[test]
    fn params_and_metrics_become_compact_pairs() {
        let params: Params = [("name".to_owned(), json!("x")), ("n".to_owned(), json!(3))].into();
        assert_eq!(params_text(&params), "n=3,name=x");
        assert_eq!(params_text(&Params::new()), "-");
        let metrics = BTreeMap::from([("loss".to_owned(), 0.2), ("auc".to_owned(), 0.91)]);
        assert_eq!(metrics_text(&metrics), "auc=0.91,loss=0.2");
        assert_eq!(metrics_text(&BTreeMap::new()), "-");
    }

    #[test]
    fn table_columns_line_up_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "STATE"]);
        table.row(vec!["7".into(), "churn".into(), "failed".into()]);
        table.row(vec!["12".into(), "a".into(), "ok".into()]);
        assert_eq!(
            table.render(),
            "ID  NAME   STATE\n7   churn  failed\n12  a      ok\n"
        );
    }

    #[test]
    fn an_ongoing_span_is_measured_to_now_and_a_finished_one_to_its_end() {
        let start = DateTime::from_timestamp(1_000, 0).expect("a valid time");
        let end = start + secs(4.1);
        let now = start + secs(123.0);
        assert_eq!(took(Some(start), Some(end), false, now), "4.1s");
        assert_eq!(took(Some(start), None, true, now), "2m03s");
        assert_eq!(took(Some(start), None, false, now), "-");
        assert_eq!(took(None, None, true, now), "-");
    }

    #[test]
    fn sqlite_urls_and_paths_name_their_file_and_other_urls_none() {
        let file = |url| sqlite_file(url).expect("a valid URL");
        assert_eq!(
            file("sqlite:///data/ty.db"),
            Some(PathBuf::from("/data/ty.db"))
        );
        assert_eq!(file("sqlite:ty.db?mode=rwc"), Some(PathBuf::from("ty.db")));
        assert_eq!(
            file("sqlite:///my%20dir/ty.db"),
            Some(PathBuf::from("/my dir/ty.db"))
        );
        assert_eq!(file("data/ty.db"), Some(PathBuf::from("data/ty.db")));
        assert_eq!(file("postgres://u@localhost/ty"), None);
    }
}
