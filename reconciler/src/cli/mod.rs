//! Command-line interface: `validate`, `plan`, `schema`, the service (`serve`), requests to it
//! (`run`, `cancel`, `retry`, `backfill`) and views of its state (`runs`, `logs`,
//! `schedules`, `models`). Exit status 0 on success, 1
//! for invalid definitions, policy denials, failed runs and unknown ids, 2 for usage and I/O
//! errors. A step's pod runs the separate `trainyard-launch` binary.

mod intents;
mod views;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use trainyard::definitions::{Definitions, Evaluation};
use trainyard::plan::{Planner, render_markdown, render_text};
use trainyard::source::{Snapshot, SourceError, discover};
use trainyard::spec::Catalog;
use trainyard::spec::schema;
use trainyard_policies::PolicyConfig;

mod serve;

/// Exit status for invalid definitions or policy denials.
pub const EXIT_INVALID: u8 = 1;
/// Exit status for usage and I/O errors.
pub const EXIT_USAGE: u8 = 2;

/// Git-driven ML training: validate, plan and run pipelines defined in a repository.
#[derive(Debug, Parser)]
#[command(name = "trainyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every pipeline and schedule under PATH: format, references, cron, policies.
    Validate {
        /// Directory of definitions (inside a Git repository when --rev is given).
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Read the tree at this Git revision instead of the working tree.
        #[arg(long)]
        rev: Option<String>,
        #[command(flatten)]
        common: Common,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show what changing from one revision to another would do.
    Plan {
        /// Directory of definitions inside a Git repository.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The revision changes are measured from (such as the base branch).
        #[arg(long)]
        from: String,
        /// The revision to apply.
        #[arg(long, default_value = "HEAD")]
        to: String,
        /// Compute fire times and GPU-hours as of this RFC 3339 time instead of now.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
        #[command(flatten)]
        common: Common,
        /// Output format (markdown is what a pull-request comment shows).
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
    },
    /// Run the service: follow a branch, apply its commits, fire schedules, run pipelines,
    /// register models and write results back as Git notes.
    Serve(Box<ServeArgs>),
    /// Queue a run of a declared pipeline; the service starts it (`serve`, or `serve --once`).
    Run(RunArgs),
    /// Cancel a run: the service stops its running steps, skips its waiting ones and ends it
    /// cancelled.
    Cancel(intents::CancelArgs),
    /// Start a failed or cancelled run's failed, skipped and cancelled steps again, as new
    /// attempts in the same run; succeeded steps keep their outputs.
    Retry(intents::RetryArgs),
    /// Fire a schedule's ticks for past fire times it has not recorded (trigger `backfill`).
    Backfill(intents::BackfillArgs),
    /// Print the JSON Schema of documents or of trainyard.yaml, for editors.
    Schema {
        /// Which schema.
        #[arg(value_enum, default_value_t = SchemaKind::Document)]
        kind: SchemaKind,
    },
    /// List recent runs, or show one run with its steps and artifacts.
    Runs(views::RunsArgs),
    /// Print the stored log of a step's attempt.
    Logs(views::LogsArgs),
    /// List schedules with their next fire time and last tick.
    Schedules(views::SchedulesArgs),
    /// List registered model versions, rejected ones and aliases.
    Models(views::ModelsArgs),
}

/// Where the service keeps its state: the database and the artifact store.
///
/// The options are global so that a command with subcommands (`runs show`) takes them on
/// either side of the subcommand.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Data directory [default: .trainyard at the root of the Git repository that holds the
    /// current directory].
    #[arg(long, env = "TRAINYARD_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://… [default: sqlite://DATA_DIR/trainyard.db].
    #[arg(
        long,
        env = "TRAINYARD_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    database: Option<String>,
    /// Artifact store: a directory or file:// URL [default: DATA_DIR/artifacts].
    #[arg(long, env = "TRAINYARD_ARTIFACTS", global = true)]
    artifacts: Option<String>,
}

/// Where the service reads from and keeps its state.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The repository to follow: a work tree, or a URL (fetched into a bare cache in the
    /// data directory); default: the work tree the current directory is in.
    #[arg(long)]
    repo: Option<String>,
    /// Branch to follow; default: the branch HEAD points at.
    #[arg(long)]
    branch: Option<String>,
    /// Directory of definitions inside the repository.
    #[arg(long, default_value = "")]
    path: String,
    /// Where the state is kept (database, artifacts, checkouts).
    #[command(flatten)]
    store: StoreArgs,
    /// Apply the branch head, run what it starts to completion, deliver the reports, exit
    /// (0 when every run succeeded).
    #[arg(long)]
    once: bool,
    /// Steps running at once.
    #[arg(long, default_value_t = 4)]
    max_parallel_steps: usize,
    /// How often the branch is checked for new commits, in seconds.
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// How long a step attempt may wait for the executor to accept it (a cluster refusing
    /// or failing its Job's create) before it fails with the executor's words, in seconds.
    #[arg(long, default_value_t = 300)]
    submit_deadline_seconds: u64,
    /// How long a shutdown waits for steps running on this machine before it stops them,
    /// in seconds; a step stopped so runs again at the next start, not counted against its
    /// retries.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// This installation's name: the prefix of its status contexts when several services
    /// follow one repository, and its identity on a cluster and in the artifact store (in
    /// the names and labels of its Jobs and the keys of its outputs). Lower-case letters,
    /// digits and `-`, at most 20 [default identity: `default`].
    #[arg(long, env = "TRAINYARD_INSTANCE", value_parser = parse_instance)]
    instance: Option<String>,
    /// Log lines as JSON (with run id and step on every line of a run).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where steps run: processes on this machine, or Jobs on a Kubernetes cluster.
    #[arg(long, value_enum, default_value_t = ExecutorKind::Local)]
    executor: ExecutorKind,
    /// Cluster settings (YAML: namespace, image, gpu_types, queue…) for `--executor
    /// kubernetes`. The cluster is found as kubectl finds it: KUBECONFIG, ~/.kube/config, or
    /// the service account of the pod the service runs in.
    #[arg(
        long,
        env = "TRAINYARD_CLUSTER_CONFIG",
        value_name = "FILE",
        required_if_eq("executor", "kubernetes")
    )]
    cluster_config: Option<PathBuf>,
    /// Serve health (/healthz) and readiness (/readyz) over HTTP on this address, such as
    /// 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// File holding the secret GitHub signs webhooks with (the webhook's "Secret"). With it,
    /// POST /webhooks/github is served on --listen and pushes are applied at once; without
    /// it, polling alone follows the branch. The secret itself may instead be given in the
    /// environment as TRAINYARD_WEBHOOK_SECRET.
    #[arg(long, env = "TRAINYARD_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// The GitHub repository (OWNER/NAME) whose webhook deliveries are acted on; others
    /// (a GitHub App is sent the events of every repository it is installed on) are
    /// recorded as refused. Defaults to --github-repo; one of the two is needed for webhooks.
    #[arg(long, env = "TRAINYARD_WEBHOOK_REPO", value_name = "OWNER/NAME")]
    webhook_repo: Option<String>,
    #[command(flatten)]
    election: ElectionArgs,
    #[command(flatten)]
    github: GithubArgs,
    #[command(flatten)]
    common: Common,
}

/// Reporting to GitHub instead of Git notes: commit statuses, pull-request comments.
#[derive(Debug, clap::Args)]
struct GithubArgs {
    /// Report to this GitHub repository (OWNER/NAME); without it, reports are Git notes.
    #[arg(long, env = "TRAINYARD_GITHUB_REPO", value_name = "OWNER/NAME")]
    github_repo: Option<String>,
    /// The GitHub API, such as https://HOST/api/v3 for GitHub Enterprise.
    #[arg(
        long,
        env = "TRAINYARD_GITHUB_API_URL",
        value_name = "URL",
        default_value = "https://api.github.com"
    )]
    github_api_url: String,
    /// A file holding the token to sign in with [default: the GITHUB_TOKEN variable].
    #[arg(long, value_name = "FILE", conflicts_with = "github_app_id")]
    github_token_file: Option<PathBuf>,
    /// Sign in as this GitHub App (with --github-private-key-file and
    /// --github-installation-id).
    #[arg(
        long,
        env = "TRAINYARD_GITHUB_APP_ID",
        value_name = "N",
        requires_all = ["github_private_key_file", "github_installation_id"]
    )]
    github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM).
    #[arg(
        long,
        env = "TRAINYARD_GITHUB_PRIVATE_KEY_FILE",
        value_name = "FILE",
        requires = "github_app_id"
    )]
    github_private_key_file: Option<PathBuf>,
    /// The GitHub App's installation on the repository's owner.
    #[arg(
        long,
        env = "TRAINYARD_GITHUB_INSTALLATION_ID",
        value_name = "N",
        requires = "github_app_id"
    )]
    github_installation_id: Option<u64>,
    /// The login the token's comments carry, for a token that cannot read GET /user (an
    /// installation token, or Actions' GITHUB_TOKEN: github-actions[bot]).
    #[arg(
        long,
        env = "TRAINYARD_GITHUB_LOGIN",
        value_name = "LOGIN",
        conflicts_with = "github_app_id"
    )]
    github_login: Option<String>,
    /// Where this service's pages are reachable, for the links of commit statuses.
    #[arg(long, env = "TRAINYARD_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
}

/// Where steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorKind {
    /// Processes on this machine.
    Local,
    /// batch/v1 Jobs on a Kubernetes cluster.
    Kubernetes,
}

/// Leader election among replicas on a Kubernetes Lease (kubeconfig or in-cluster config).
#[derive(Debug, clap::Args)]
struct ElectionArgs {
    /// Act only while holding the Lease, so that of several replicas exactly one acts; the
    /// others serve health and reads and take over when it goes.
    #[arg(long)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "trainyard")]
    lease_name: String,
    /// Namespace of the Lease [default: the client's namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's identity in the election [default: HOSTNAME-PID].
    #[arg(long, env = "POD_NAME")]
    leader_identity: Option<String>,
    /// How long the Lease stays valid after its holder last renewed it, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How long before expiry the holder renews, in seconds; also the clock skew tolerated
    /// between nodes (a holder stops acting half of it before its Lease expires).
    #[arg(long, default_value_t = 5)]
    lease_grace_seconds: u64,
}

/// A manual run.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline, as declared on the followed branch.
    pipeline: String,
    /// A parameter value, `NAME=VALUE`, read as the parameter's declared type (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Run every step, even one whose cache holds an attempt it could reuse; what they make
    /// refreshes the cache.
    #[arg(long)]
    no_cache: bool,
    /// Where the service keeps its state.
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Options shared by the commands that check definitions.
#[derive(Debug, clap::Args)]
struct Common {
    /// Platform policy settings (YAML): allowed_registries, max_gpus_per_step,
    /// gpu_schedule_min_interval_seconds.
    #[arg(long, env = "TRAINYARD_POLICY_CONFIG")]
    policy_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlanFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaKind {
    Document,
    Settings,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; use RFC 3339 such as 2026-01-31T12:00:00Z"))
}

/// Runs the command and returns the process exit status.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate {
            path,
            rev,
            common,
            format,
        } => validate(&path, rev.as_deref(), &common, format),
        Command::Plan {
            path,
            from,
            to,
            now,
            common,
            format,
        } => plan(
            &path,
            &from,
            &to,
            now.unwrap_or_else(Utc::now),
            &common,
            format,
        ),
        Command::Serve(args) => serve::run(*args),
        Command::Run(args) => serve::queue(args),
        Command::Cancel(args) => intents::cancel(args),
        Command::Retry(args) => intents::retry(args),
        Command::Backfill(args) => intents::backfill(args),
        Command::Schema { kind } => {
            let value = match kind {
                SchemaKind::Document => schema::documents(),
                SchemaKind::Settings => schema::settings(),
            };
            print(&(serde_json::to_string_pretty(&value)? + "\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(args) => views::runs(args),
        Command::Logs(args) => views::logs(args),
        Command::Schedules(args) => views::schedules(args),
        Command::Models(args) => views::models(args),
    }
}

/// An installation name as `--instance` takes it (see `execute::is_instance`).
fn parse_instance(text: &str) -> Result<String, String> {
    if trainyard::execute::is_instance(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an installation name: at most {} lower-case letters, digits and `-`, starting and ending with a letter or digit",
            trainyard::execute::MAX_INSTANCE
        ))
    }
}

fn policy_config(common: &Common) -> Result<PolicyConfig> {
    let Some(path) = &common.policy_config else {
        return Ok(PolicyConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy config {}", path.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("invalid policy config {}", path.display()))
}

fn snapshot(path: &Path, rev: Option<&str>) -> Result<Snapshot> {
    match rev {
        None => Ok(Snapshot::from_work_tree(path)?),
        Some(rev) => {
            let (repo, subdir) = discover(path)?;
            Ok(Snapshot::at_revision(&repo, rev, &subdir)?)
        }
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn exit_for(invalid: bool) -> ExitCode {
    if invalid {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn validate(path: &Path, rev: Option<&str>, common: &Common, format: Format) -> Result<ExitCode> {
    let snapshot = snapshot(path, rev)?;
    let mut definitions = Definitions::new(policy_config(common)?)?;
    let evaluation = definitions.evaluate(&snapshot, Utc::now())?;
    let output = match format {
        Format::Json => {
            serde_json::to_string_pretty(&serde_json::json!({
                "valid": !evaluation.has_errors(),
                "pipelines": evaluation.catalog.pipelines.len(),
                "schedules": evaluation.catalog.schedules.len(),
                "diagnostics": evaluation.diagnostics,
            }))? + "\n"
        }
        Format::Text => validate_text(path, &evaluation),
    };
    print(&output)?;
    Ok(exit_for(evaluation.has_errors()))
}

fn validate_text(path: &Path, evaluation: &Evaluation) -> String {
    let mut out: String = evaluation.diagnostics.iter().map(|d| d.render()).collect();
    let errors = evaluation
        .diagnostics
        .iter()
        .filter(|d| d.severity == trainyard::spec::Severity::Error)
        .count();
    let warnings = evaluation.diagnostics.len() - errors;
    let verdict = if errors == 0 { "valid" } else { "invalid" };
    out.push_str(&format!(
        "{}: {verdict}: {} pipelines, {} schedules, {errors} errors, {warnings} warnings\n",
        path.display(),
        evaluation.catalog.pipelines.len(),
        evaluation.catalog.schedules.len(),
    ));
    out
}

fn plan(
    path: &Path,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
    common: &Common,
    format: PlanFormat,
) -> Result<ExitCode> {
    let (repo, subdir) = discover(path)?;
    let short = |rev: &str| -> Result<String> {
        let git = repo.git();
        let commit = git
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .with_context(|| format!("revision {rev:?} not found"))?;
        Ok(commit.id().to_string()[..12].to_owned())
    };
    let (from_id, to_id) = (short(from)?, short(to)?);
    let mut definitions = Definitions::new(policy_config(common)?)?;
    // Planning from before the tracked directory existed plans from nothing.
    let old = match Snapshot::at_revision(&repo, from, &subdir) {
        Ok(snapshot) => definitions.catalog(&snapshot)?,
        Err(SourceError::PathNotFound { .. }) => Catalog::default(),
        Err(error) => return Err(error.into()),
    };
    let new = definitions.evaluate(&Snapshot::at_revision(&repo, to, &subdir)?, now)?;
    let plan = Planner::default().plan(&from_id, &to_id, &old, &new.catalog, new.diagnostics, now);
    let output = match format {
        PlanFormat::Text => render_text(&plan),
        PlanFormat::Markdown => render_markdown(&plan),
        PlanFormat::Json => serde_json::to_string_pretty(&plan)? + "\n",
    };
    print(&output)?;
    Ok(exit_for(plan.has_errors()))
}
