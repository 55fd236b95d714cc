//! Pull requests: the plan of every pull request's head against its base branch, the
//! commands people write in comments (re-plan, preview runs), and the comments that carry
//! preview results and the results of merged changes back to the pull request.
//!
//! Everything here ends in reports enqueued in the outbox (statuses and sticky comments are
//! upserts), so handling an event twice, after a crash, changes nothing the forge shows; a
//! preview run is recorded with the comment that asked for it, so it starts once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use git2::Repository;
use serde_json::Value;
use thiserror::Error;
use trainyard_policies::PolicyConfig;

use crate::apply::status_report;
use crate::commands::{self, Command};
use crate::definitions::{Definitions, DefinitionsError};
use crate::plan::{Plan, Planner, render_markdown};
use crate::report::{self, Forge, ForgeError, Report, StatusState};
use crate::runtime::Config;
use crate::source::{Snapshot, SourceError};
use crate::spec::check::{resolve_params, typed_params};
use crate::spec::model::Previews;
use crate::spec::{Catalog, Severity};
use crate::store::{
    ModelState, ModelVersionRow, NewReport, NewRun, PipelineUpsert, PullRequestRow, ReportKind,
    RunRow, RunState, StepRow, Store, StoreError, Trigger,
};

/// Errors that stop handling an event; it is handled again on the next pass.
#[derive(Debug, Error)]
pub enum PullsError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The repository could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Definitions could not be evaluated.
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
    /// Git failed (fetching the pull request's head, resolving a branch).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// The forge could not answer now (a rate limit, an outage): try again later.
    #[error("the forge: {0}")]
    Forge(ForgeError),
}

/// The sticky comment holding a pull request's plan.
pub const PLAN_KEY: &str = "plan";
/// The sticky comment holding the results of the runs a merged change started.
pub const RESULTS_KEY: &str = "results";

/// The sticky comment of preview run `run`.
pub fn run_key(run: i64) -> String {
    format!("run-{run}")
}

/// The sticky comment answering command comment `comment`.
pub fn command_key(comment: u64) -> String {
    format!("command-{comment}")
}

/// The local reference a pull request's fetched head is kept under: read-only, and outside
/// `refs/heads` so that following branches never sees it.
pub fn head_ref(number: u64) -> String {
    format!("refs/trainyard/pull/{number}")
}

/// The first 12 characters of a commit id.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// A comment report for the outbox: on pull request `pr` when known, else on the pull
/// request of `commit`.
pub fn comment_report(commit: &str, pr: Option<u64>, key: &str, body: &str) -> NewReport {
    let comment = Report::Comment {
        commit: commit.to_owned(),
        pr,
        key: key.to_owned(),
        body: body.to_owned(),
    };
    NewReport {
        commit_sha: commit.to_owned(),
        kind: ReportKind::Comment,
        key: key.to_owned(),
        payload: serde_json::to_value(comment).unwrap_or(Value::Null),
    }
}

/// A comment body: the hidden marker of `key` (so the forge finds the comment again), then
/// `text`.
fn sticky(key: &str, text: &str) -> String {
    format!("{}\n{text}", report::marker(key))
}

/// What the plan of pull request `pr`'s head `head` against `base_ref` posts: the
/// `validate` and `plan` statuses on the head and the sticky plan comment.
pub fn plan_reports(
    pr: u64,
    head: &str,
    base_ref: &str,
    plan: &Plan,
    instance: Option<&str>,
) -> Vec<NewReport> {
    let errors: Vec<String> = plan
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| match d.line {
            0 => format!("{}: {}", d.file, d.message),
            line => format!("{}:{line}: {}", d.file, d.message),
        })
        .collect();
    let warnings = plan
        .diagnostics
        .iter()
        .filter(|d| d.severity != Severity::Error)
        .count();
    let (validate, validated) = if errors.is_empty() {
        let mut text = "valid".to_owned();
        if warnings > 0 {
            let _ = write!(text, ", {}", plural(warnings, "warning"));
        }
        (StatusState::Success, text)
    } else {
        (
            StatusState::Failure,
            format!("{}: {}", plural(errors.len(), "error"), errors.join("; ")),
        )
    };
    let (added, changed, removed) = plan.counts();
    let hours = &plan.gpu_hours;
    let (planned, summary) = if errors.is_empty() {
        (
            StatusState::Success,
            format!(
                "{added} to add, {changed} to change, {removed} to remove; GPU-hours/month ≤ {:.0} → {:.0}",
                hours.before, hours.after
            ),
        )
    } else {
        (
            StatusState::Failure,
            format!("cannot be applied as is: {}", plural(errors.len(), "error")),
        )
    };
    let body = sticky(
        PLAN_KEY,
        &format!(
            "**Trainyard** planned head `{}` of #{pr} against `{base_ref}`; this comment follows \
             every push.\n\n{}",
            short(head),
            render_markdown(plan)
        ),
    );
    vec![
        status_report(
            head,
            &report::context(instance, "validate", None),
            validate,
            &validated,
        ),
        status_report(
            head,
            &report::context(instance, "plan", None),
            planned,
            &summary,
        ),
        comment_report(head, Some(pr), PLAN_KEY, &body),
    ]
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Whether `commenter` may start a preview of a pull request: people with write permission
/// on the repository, and for a pull request from a fork only the maintainers the base
/// branch's `trainyard.yaml` names as approvers. `Err` says why not, for the reply.
pub fn may_preview(
    commenter: &str,
    can_write: bool,
    from_fork: bool,
    previews: &Previews,
) -> Result<(), String> {
    if !can_write {
        return Err(format!(
            "@{commenter} cannot start preview runs: that needs write permission on this \
             repository."
        ));
    }
    if from_fork && !previews.fork_approvers.iter().any(|a| a == commenter) {
        return Err(if previews.fork_approvers.is_empty() {
            "This pull request comes from a fork, and nothing from a fork runs: the base \
             branch's trainyard.yaml names no `previews.fork_approvers`."
                .to_owned()
        } else {
            format!(
                "This pull request comes from a fork: only {} may start its preview runs \
                 (`previews.fork_approvers` in the base branch's trainyard.yaml).",
                previews
                    .fork_approvers
                    .iter()
                    .map(|a| format!("@{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    }
    Ok(())
}

/// The preview run of `pipeline` as `head`'s `catalog` declares it, with `given` params
/// checked against the declared ones, and the version it pins. `Err` says what is wrong.
pub fn preview_run(
    head: &str,
    catalog: &Catalog,
    pipeline: &str,
    given: &BTreeMap<String, String>,
) -> Result<(PipelineUpsert, NewRun), String> {
    let Some(entry) = catalog.pipelines.get(pipeline) else {
        let mut message = format!("Pipeline `{pipeline}` is not declared at `{}`", short(head));
        if let Some(file) = catalog.failed_files.iter().find(|f| f.contains(pipeline)) {
            let _ = write!(message, " (`{file}` has errors; see the plan)");
        } else if !catalog.pipelines.is_empty() {
            let names: Vec<String> = catalog.pipelines.keys().map(|n| format!("`{n}`")).collect();
            let _ = write!(message, "; it declares {}", names.join(", "));
        }
        message.push('.');
        return Err(message);
    };
    let definition = entry.value.as_ref();
    let params =
        resolve_params(definition, &typed_params(definition, given)).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| match p.hint {
                    Some(hint) => format!("{} ({hint})", p.message),
                    None => p.message,
                })
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    let version = PipelineUpsert {
        name: pipeline.to_owned(),
        version: entry.version.to_string(),
        file: entry.file.to_string(),
        definition: serde_json::to_value(definition).unwrap_or(Value::Null),
    };
    let run = NewRun {
        pipeline: pipeline.to_owned(),
        pipeline_version: entry.version.to_string(),
        commit_sha: head.to_owned(),
        trigger: Trigger::Preview,
        schedule: None,
        scheduled_at: None,
        params: serde_json::to_value(params).unwrap_or(Value::Null),
        steps: definition
            .spec
            .steps
            .iter()
            .map(|s| s.name.clone())
            .collect(),
    };
    Ok((version, run))
}

fn state_icon(state: RunState) -> &'static str {
    match state {
        RunState::Pending => "⏳",
        RunState::Running => "🔄",
        RunState::Succeeded => "✅",
        RunState::Failed => "❌",
        RunState::Cancelled => "⏹️",
    }
}

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The sticky comment of preview run `run`: its state, params and steps, and `message` (the
/// outcome, or what it is waiting for).
pub fn preview_comment(run: &RunRow, state: RunState, steps: &[StepRow], message: &str) -> String {
    let mut out = format!(
        "### {} Preview run {} of `{}`: {state}\n\nHead `{}` · params `{}` · nothing is \
         promoted and no schedule changes.\n\n",
        state_icon(state),
        run.id,
        run.pipeline,
        short(&run.commit_sha),
        run.params
    );
    if !steps.is_empty() {
        out.push_str("| Step | State | Attempts | |\n|---|---|---|---|\n");
        for step in steps {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                cell(&step.name),
                step.state,
                step.attempt,
                cell(step.message.as_deref().unwrap_or(""))
            );
        }
        out.push('\n');
    }
    if !message.is_empty() {
        let _ = writeln!(out, "{message}");
    }
    sticky(&run_key(run.id), &out)
}

/// One run that applying a commit started, as the results comment shows it.
pub struct RunResult {
    /// The run, as it is or as it ends.
    pub run: RunRow,
    /// Models it registered.
    pub models: Vec<ModelVersionRow>,
}

/// The sticky results comment of merged `commit`: every run applying it started, with the
/// models they registered (version, gate results against the champion, metrics).
pub fn results_comment(commit: &str, results: &[RunResult]) -> String {
    let mut out = format!(
        "### Results of `{}` on the followed branch\n\n",
        short(commit)
    );
    for RunResult { run, models } in results {
        let _ = writeln!(
            out,
            "- {} run {} of `{}`: {}{}",
            state_icon(run.state),
            run.id,
            run.pipeline,
            run.state,
            run.message
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| format!(" ({})", cell(m)))
                .unwrap_or_default()
        );
        for model in models {
            let verdict = match (model.state, model.version) {
                (ModelState::Accepted, Some(version)) => format!("accepted as version {version}"),
                _ => "rejected".to_owned(),
            };
            let _ = writeln!(out, "  - model `{}` {verdict}", model.model);
            if let Some(checks) = model.gates.as_array() {
                for check in checks {
                    let passed = check.get("passed").and_then(Value::as_bool) == Some(true);
                    let detail = check
                        .get("detail")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "    - {} {}",
                        if passed { "✅" } else { "❌" },
                        cell(detail)
                    );
                }
            }
            if let Some(metrics) = model.metrics.as_object().filter(|m| !m.is_empty()) {
                let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "    - metrics: `{}`", shown.join(", "));
            }
        }
    }
    sticky(RESULTS_KEY, &out)
}

/// The sticky comment of preview run `run` once its first step started; nothing for other
/// runs.
pub async fn started_run_reports(
    store: &Store,
    run: &RunRow,
) -> Result<Vec<NewReport>, StoreError> {
    if run.trigger != Trigger::Preview {
        return Ok(Vec::new());
    }
    let Some(pr) = store.pull_request_of_preview(run.id).await? else {
        return Ok(Vec::new());
    };
    let steps = store.steps(run.id).await?;
    let body = preview_comment(run, RunState::Running, &steps, "Running.");
    Ok(vec![comment_report(
        &run.commit_sha,
        Some(pr),
        &run_key(run.id),
        &body,
    )])
}

/// The comment reports a run finishing as `state` adds besides its status: a preview's
/// sticky comment, or the results comment of the commit whose change started the run.
pub async fn finished_run_reports(
    store: &Store,
    run: &RunRow,
    state: RunState,
    message: &str,
) -> Result<Vec<NewReport>, StoreError> {
    match run.trigger {
        Trigger::Preview => {
            let Some(pr) = store.pull_request_of_preview(run.id).await? else {
                return Ok(Vec::new());
            };
            let steps = store.steps(run.id).await?;
            let body = preview_comment(run, state, &steps, message);
            Ok(vec![comment_report(
                &run.commit_sha,
                Some(pr),
                &run_key(run.id),
                &body,
            )])
        }
        Trigger::Change => {
            let mut results = Vec::new();
            for mut other in store.runs_of_commit(&run.commit_sha).await? {
                if other.id == run.id {
                    other.state = state;
                    other.message = Some(message.to_owned());
                }
                let models = store.models_of_run(other.id).await?;
                results.push(RunResult { run: other, models });
            }
            let body = results_comment(&run.commit_sha, &results);
            Ok(vec![comment_report(
                &run.commit_sha,
                None,
                RESULTS_KEY,
                &body,
            )])
        }
        Trigger::Schedule | Trigger::Manual => Ok(Vec::new()),
    }
}

/// The branch the service follows: the configured one, or the one `HEAD` points at.
fn followed_branch(repo: &Repository, config: &Config) -> Result<Option<String>, git2::Error> {
    if let Some(branch) = &config.branch {
        return Ok(Some(branch.clone()));
    }
    let head = repo.find_reference("HEAD")?;
    Ok(head
        .symbolic_target()?
        .and_then(|t| t.strip_prefix("refs/heads/"))
        .map(str::to_owned))
}

/// Brings pull request `number`'s head (`refs/pull/N/head`, which also holds the heads of
/// forks) and branch `base` from the remote into the cache. Nothing is pushed.
fn fetch_pull(cache: &Path, url: &str, number: u64, base: &str) -> Result<(), git2::Error> {
    let repo = Repository::open_bare(cache)?;
    let mut remote = repo.remote_anonymous(url)?;
    let head = format!("+refs/pull/{number}/head:{}", head_ref(number));
    let base = format!("+refs/heads/{base}:refs/heads/{base}");
    remote.fetch(&[head.as_str(), base.as_str()], None, None)
}

/// The head commit of pull request `number`: `head_sha` when the repository has it (after
/// fetching from the remote, if there is one), else what the remote's pull request ref
/// points at when no commit was named.
fn resolve_head(
    config: &Config,
    number: u64,
    base: &str,
    head_sha: Option<&str>,
) -> Result<Option<String>, PullsError> {
    if let Some(url) = &config.remote
        && let Err(error) = fetch_pull(&config.repo, url, number, base)
    {
        // The pull request may be gone, or its head not published yet: plan what is here.
        tracing::warn!(pr = number, %error, "fetching the pull request's head failed");
    }
    let repo = Repository::open(&config.repo)?;
    if let Some(sha) = head_sha {
        let found = git2::Oid::from_str(sha)
            .ok()
            .and_then(|oid| repo.find_commit(oid).ok())
            .is_some();
        return Ok(found.then(|| sha.to_owned()));
    }
    for name in [head_ref(number), format!("refs/pull/{number}/head")] {
        if let Ok(reference) = repo.find_reference(&name) {
            return Ok(Some(reference.peel_to_commit()?.id().to_string()));
        }
    }
    Ok(None)
}

/// What handling an event found out about a pull request's code.
pub struct Checked {
    /// The head commit.
    pub head: String,
    /// The base branch's head commit.
    pub base: String,
    /// The head's valid documents.
    pub head_catalog: Catalog,
    /// The base branch's settings (`trainyard.yaml`): who may approve runs from forks.
    pub base_previews: Previews,
}

/// Plans pull requests and answers commands, with its own checker so that following the
/// branch keeps building on its own evaluations.
pub struct Pulls {
    definitions: Definitions,
}

impl Pulls {
    /// A handler with the platform's policy configuration.
    pub fn new(policy: PolicyConfig) -> Result<Self, DefinitionsError> {
        Ok(Pulls {
            definitions: Definitions::new(policy)?,
        })
    }

    /// Records pull request `pr` as the forge describes it and, while it is open, plans its
    /// head against its base branch: statuses and the sticky plan comment go to the outbox.
    pub async fn on_pull_request(
        &mut self,
        config: &Config,
        store: &Store,
        pr: &PullRequestRow,
        now: DateTime<Utc>,
    ) -> Result<(), PullsError> {
        store.upsert_pull_request(pr, now).await?;
        if !pr.open {
            return Ok(());
        }
        self.plan(config, store, pr, now).await.map(|_| ())
    }

    /// Answers the command in comment `comment_id` by `author` on pull request `number`, if
    /// the comment holds one: re-plans, explains, or starts a preview run when `author` may
    /// (write permission, and for a fork a named approver); anything refused is answered in
    /// the sticky reply `command-<comment_id>`.
    ///
    /// A transient forge failure (checking the permission) is returned, so the event is
    /// handled again later; everything else ends in a reply or a run.
    #[allow(clippy::too_many_arguments)]
    pub async fn on_comment<F: Forge>(
        &mut self,
        config: &Config,
        store: &Store,
        forge: &F,
        number: u64,
        comment_id: u64,
        author: &str,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PullsError> {
        // Trainyard's own comments quote commands in their help; they never hold one.
        if body.contains("<!-- trainyard:") {
            return Ok(());
        }
        let Some(command) = commands::parse(body) else {
            return Ok(());
        };
        let known = store.pull_request(number).await?;
        let pr = match known {
            Some(pr) => pr,
            // Webhooks set up after the pull request was opened: learn its head from the
            // remote, and since nothing says where it comes from, treat it as a fork.
            None => PullRequestRow {
                number,
                head_sha: String::new(),
                head_ref: String::new(),
                base_ref: self.followed(config)?.unwrap_or_default(),
                from_fork: true,
                author: String::new(),
                open: true,
            },
        };
        let key = command_key(comment_id);
        let reply = |pr: &PullRequestRow, text: &str| {
            let commit = if pr.head_sha.is_empty() {
                "unknown"
            } else {
                pr.head_sha.as_str()
            };
            comment_report(commit, Some(pr.number), &key, &sticky(&key, text))
        };
        let command = match command {
            Ok(command) => command,
            Err(error) => {
                let text = format!("@{author} {error}\n\n{}", commands::HELP);
                store.enqueue_reports(&[reply(&pr, &text)], now).await?;
                return Ok(());
            }
        };
        let (pipeline, params) = match command {
            Command::Help => {
                store
                    .enqueue_reports(&[reply(&pr, commands::HELP)], now)
                    .await?;
                return Ok(());
            }
            Command::Plan => {
                if self.plan(config, store, &pr, now).await?.is_none() {
                    let text = format!(
                        "@{author} there is nothing to plan: this pull request does not merge \
                         into the branch Trainyard follows, or its head commit cannot be read."
                    );
                    store.enqueue_reports(&[reply(&pr, &text)], now).await?;
                }
                return Ok(());
            }
            Command::Run { pipeline, params } => (pipeline, params),
        };
        if store.preview_of_comment(comment_id).await?.is_some() {
            return Ok(());
        }
        if !pr.open {
            let text = format!("@{author} this pull request is closed: nothing runs from it.");
            store.enqueue_reports(&[reply(&pr, &text)], now).await?;
            return Ok(());
        }
        let permission = match forge.permission_of(author).await {
            Ok(permission) => permission,
            Err(error @ ForgeError::Transient { .. }) => return Err(PullsError::Forge(error)),
            Err(ForgeError::Permanent { message }) => {
                let text = format!(
                    "@{author} nothing runs: Trainyard could not check your permission on this \
                     repository ({message})."
                );
                store.enqueue_reports(&[reply(&pr, &text)], now).await?;
                return Ok(());
            }
        };
        let Some(checked) = self.plan(config, store, &pr, now).await? else {
            let text = format!(
                "@{author} nothing runs: this pull request does not merge into the branch \
                 Trainyard follows, or its head commit cannot be read."
            );
            store.enqueue_reports(&[reply(&pr, &text)], now).await?;
            return Ok(());
        };
        let pr = PullRequestRow {
            head_sha: checked.head.clone(),
            ..pr
        };
        if let Err(reason) = may_preview(
            author,
            permission.can_write(),
            pr.from_fork,
            &checked.base_previews,
        ) {
            store.enqueue_reports(&[reply(&pr, &reason)], now).await?;
            return Ok(());
        }
        let (version, run) =
            match preview_run(&checked.head, &checked.head_catalog, &pipeline, &params) {
                Ok(found) => found,
                Err(reason) => {
                    let text = format!("@{author} nothing runs: {reason}");
                    store.enqueue_reports(&[reply(&pr, &text)], now).await?;
                    return Ok(());
                }
            };
        let queued = |id: i64| {
            let row = RunRow {
                id,
                pipeline: run.pipeline.clone(),
                pipeline_version: run.pipeline_version.clone(),
                commit_sha: run.commit_sha.clone(),
                trigger: Trigger::Preview,
                schedule: None,
                scheduled_at: None,
                params: run.params.clone(),
                state: RunState::Pending,
                message: None,
                cancel_requested: false,
                created_at: now,
                started_at: None,
                finished_at: None,
            };
            let body = preview_comment(
                &row,
                RunState::Pending,
                &[],
                &format!("Asked for by @{author}; waiting for its turn."),
            );
            vec![comment_report(
                &run.commit_sha,
                Some(pr.number),
                &run_key(id),
                &body,
            )]
        };
        let (id, created) = store
            .create_preview(comment_id, pr.number, &version, &run, queued, now)
            .await?;
        if created {
            tracing::info!(pr = pr.number, run = id, pipeline = %pipeline, head = %short(&checked.head), "preview run queued");
        }
        Ok(())
    }

    /// The branch the service follows.
    fn followed(&self, config: &Config) -> Result<Option<String>, PullsError> {
        Ok(followed_branch(&Repository::open(&config.repo)?, config)?)
    }

    /// Plans `pr`'s head against its base branch and enqueues the statuses and the plan
    /// comment; returns what it checked, or `None` when there is nothing to plan (the base
    /// is not the followed branch, or the head cannot be found).
    pub async fn plan(
        &mut self,
        config: &Config,
        store: &Store,
        pr: &PullRequestRow,
        now: DateTime<Utc>,
    ) -> Result<Option<Checked>, PullsError> {
        let head_sha = (!pr.head_sha.is_empty()).then_some(pr.head_sha.as_str());
        let checked = tokio::task::block_in_place(|| self.check(config, pr, head_sha, now))?;
        let Some((checked, plan)) = checked else {
            return Ok(None);
        };
        let reports = plan_reports(
            pr.number,
            &checked.head,
            &pr.base_ref,
            &plan,
            config.instance.as_deref(),
        );
        store.enqueue_reports(&reports, now).await?;
        tracing::info!(pr = pr.number, head = %short(&checked.head), "planned the pull request");
        Ok(Some(checked))
    }

    /// Reads, checks and plans the head of `pr` against its base branch.
    fn check(
        &mut self,
        config: &Config,
        pr: &PullRequestRow,
        head_sha: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<(Checked, Plan)>, PullsError> {
        let followed = followed_branch(&Repository::open(&config.repo)?, config)?;
        if followed.as_deref() != Some(pr.base_ref.as_str()) {
            tracing::info!(pr = pr.number, base = %pr.base_ref, "not planned: it does not merge into the followed branch");
            return Ok(None);
        }
        let Some(head) = resolve_head(config, pr.number, &pr.base_ref, head_sha)? else {
            tracing::warn!(pr = pr.number, head = %pr.head_sha, "not planned: its head commit is not in the repository");
            return Ok(None);
        };
        let repo = Repository::open(&config.repo)?;
        let base = repo
            .find_branch(&pr.base_ref, git2::BranchType::Local)?
            .get()
            .peel_to_commit()?
            .id()
            .to_string();
        let base_catalog = match Snapshot::at_revision(repo, &base, &config.subdir) {
            Ok(snapshot) => self.definitions.catalog(&snapshot)?,
            Err(SourceError::PathNotFound { .. }) => Catalog::default(),
            Err(error) => return Err(error.into()),
        };
        let evaluation =
            match Snapshot::at_revision(Repository::open(&config.repo)?, &head, &config.subdir) {
                Ok(snapshot) => self.definitions.evaluate(&snapshot, now)?,
                Err(SourceError::PathNotFound { .. }) => crate::definitions::Evaluation {
                    catalog: Catalog::default(),
                    diagnostics: Vec::new(),
                    touched: Default::default(),
                },
                Err(error) => return Err(error.into()),
            };
        let plan = Planner::default().plan(
            short(&base),
            short(&head),
            &base_catalog,
            &evaluation.catalog,
            evaluation.diagnostics,
            now,
        );
        Ok(Some((
            Checked {
                head,
                base,
                head_catalog: evaluation.catalog,
                base_previews: base_catalog.settings.previews.clone(),
            },
            plan,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spec::{Settings, parse_file};

    const HEAD: &str = "1111111111111111111111111111111111111111";

    fn catalog(files: &[(&str, &str)]) -> Catalog {
        let parsed: Vec<_> = files
            .iter()
            .map(|(p, y)| (Arc::from(*p), Arc::new(parse_file(y.as_bytes()))))
            .collect();
        Catalog::assemble(Settings::default(), &parsed).0
    }

    fn pipeline(name: &str, gpus: u32) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t}}\n\
             spec: {{image: i, params: {{epochs: {{type: int, default: 3}}, lr: {{type: float}}}}, \
             steps: [{{name: train, run: [x], resources: {{gpu: {gpus}}}, timeout: 1h}}]}}\n"
        )
    }

    fn schedule(name: &str, pipeline: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\n\
             spec: {{pipeline: {pipeline}, cron: '0 2 * * *', params: {{lr: 0.1}}}}\n"
        )
    }

    fn payloads(reports: &[NewReport]) -> Vec<(String, Value)> {
        reports
            .iter()
            .map(|r| (r.key.clone(), r.payload.clone()))
            .collect()
    }

    #[test]
    fn a_pull_request_gets_both_statuses_and_one_plan_comment_on_its_head() {
        let base = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let head = catalog(&[
            ("a.yaml", &pipeline("churn", 2)),
            ("s.yaml", &schedule("nightly", "churn")),
        ]);
        let plan = Planner::default().plan("base", "head", &base, &head, Vec::new(), Utc::now());
        let reports = plan_reports(7, HEAD, "main", &plan, Some("eu"));
        let found = payloads(&reports);
        assert_eq!(
            found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["trainyard/eu/validate", "trainyard/eu/plan", "plan"]
        );
        assert!(reports.iter().all(|r| r.commit_sha == HEAD));
        assert_eq!(found[0].1["state"], "success");
        assert_eq!(found[1].1["state"], "success");
        assert_eq!(
            found[1].1["description"],
            "1 to add, 1 to change, 0 to remove; GPU-hours/month ≤ 0 → 60"
        );
        let comment: Report = serde_json::from_value(found[2].1.clone()).expect("a comment");
        let Report::Comment { pr, key, body, .. } = comment else {
            panic!("a comment, got {comment:?}");
        };
        assert_eq!((pr, key.as_str()), (Some(7), "plan"));
        assert!(body.starts_with("<!-- trainyard:plan -->\n"), "{body}");
        assert!(
            body.contains("head `111111111111` of #7 against `main`"),
            "{body}"
        );
        assert!(
            body.contains("| `nightly` |"),
            "the schedule is listed: {body}"
        );
        assert!(body.contains("next: "), "next fire times are shown: {body}");
    }

    #[test]
    fn a_head_with_errors_fails_both_statuses_and_names_the_line() {
        let base = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let head = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let diagnostic = crate::spec::Diagnostic {
            severity: Severity::Error,
            file: "b.yaml".to_owned(),
            line: 4,
            column: 2,
            code: "yaml".into(),
            message: "unknown field `stepz`".into(),
            hint: None,
            source_line: None,
            width: 1,
        };
        let plan = Planner::default().plan("b", "h", &base, &head, vec![diagnostic], Utc::now());
        let found = payloads(&plan_reports(7, HEAD, "main", &plan, None));
        assert_eq!(found[0].0, "trainyard/validate");
        assert_eq!(found[0].1["state"], "failure");
        assert_eq!(
            found[0].1["description"],
            "1 error: b.yaml:4: unknown field `stepz`"
        );
        assert_eq!(found[1].1["state"], "failure");
        let body = found[2].1["body"].as_str().unwrap_or_default();
        assert!(body.contains("b.yaml:4"), "{body}");
    }

    #[test]
    fn only_writers_may_preview_and_forks_need_a_named_approver() {
        let none = Previews::default();
        let alice = Previews {
            fork_approvers: vec!["alice".to_owned()],
        };
        assert_eq!(may_preview("bob", true, false, &none), Ok(()));
        let reader = may_preview("bob", false, false, &alice).expect_err("a reader is refused");
        assert!(
            reader.contains("@bob") && reader.contains("write permission"),
            "{reader}"
        );
        let fork = may_preview("bob", true, true, &none).expect_err("no approvers");
        assert!(fork.contains("previews.fork_approvers"), "{fork}");
        let not_named = may_preview("bob", true, true, &alice).expect_err("not named");
        assert!(not_named.contains("@alice"), "{not_named}");
        assert_eq!(may_preview("alice", true, true, &alice), Ok(()));
        assert!(
            may_preview("alice", false, true, &alice).is_err(),
            "a named approver still needs write permission"
        );
    }

    #[test]
    fn a_preview_pins_the_heads_version_with_typed_params() {
        let head = catalog(&[("a.yaml", &pipeline("churn", 2))]);
        let given = BTreeMap::from([("lr".to_owned(), "0.5".to_owned())]);
        let (version, run) = preview_run(HEAD, &head, "churn", &given).expect("a run");
        let entry = &head.pipelines["churn"];
        assert_eq!(version.version, entry.version.as_ref());
        assert_eq!(version.file, "a.yaml");
        assert_eq!(run.pipeline_version, version.version);
        assert_eq!(run.commit_sha, HEAD);
        assert_eq!(run.trigger, Trigger::Preview);
        assert_eq!(run.params, serde_json::json!({"epochs": 3, "lr": 0.5}));
        assert_eq!(run.steps, ["train"]);
    }

    #[test]
    fn a_preview_of_an_unknown_pipeline_or_with_bad_params_says_what_is_wrong() {
        let head = catalog(&[("a.yaml", &pipeline("churn", 2))]);
        let unknown = preview_run(HEAD, &head, "chrun", &BTreeMap::new()).expect_err("unknown");
        assert!(
            unknown.contains("`chrun`") && unknown.contains("`churn`"),
            "{unknown}"
        );
        let missing = preview_run(HEAD, &head, "churn", &BTreeMap::new()).expect_err("no lr");
        assert!(missing.contains("\"lr\""), "{missing}");
        let typed = BTreeMap::from([
            ("lr".to_owned(), "0.1".to_owned()),
            ("epochs".to_owned(), "many".to_owned()),
        ]);
        let wrong = preview_run(HEAD, &head, "churn", &typed).expect_err("bad int");
        assert!(
            wrong.contains("\"epochs\"") && wrong.contains("int"),
            "{wrong}"
        );
    }

    fn run(id: i64, state: RunState, trigger: Trigger) -> RunRow {
        RunRow {
            id,
            pipeline: "churn".to_owned(),
            pipeline_version: "v1".to_owned(),
            commit_sha: HEAD.to_owned(),
            trigger,
            schedule: None,
            scheduled_at: None,
            params: serde_json::json!({"epochs": 3}),
            state,
            message: Some(format!("run {id} {state}")),
            cancel_requested: false,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_preview_comment_is_sticky_per_run_and_shows_its_steps() {
        let step = StepRow {
            run_id: 12,
            name: "train".to_owned(),
            state: crate::store::StepState::Failed,
            attempt: 2,
            job: None,
            retry_at: None,
            started_at: None,
            finished_at: None,
            exit_code: Some(1),
            message: Some("exit | 1".to_owned()),
        };
        let body = preview_comment(
            &run(12, RunState::Failed, Trigger::Preview),
            RunState::Failed,
            &[step],
            "step train failed",
        );
        assert!(body.starts_with("<!-- trainyard:run-12 -->\n"), "{body}");
        assert!(body.contains("Preview run 12 of `churn`: failed"), "{body}");
        assert!(
            body.contains("| `train` | failed | 2 | exit \\| 1 |"),
            "{body}"
        );
        assert!(body.ends_with("step train failed\n"), "{body}");
    }

    #[test]
    fn the_results_comment_lists_every_run_and_model_of_the_commit() {
        let model = ModelVersionRow {
            id: 1,
            model: "churn-model".to_owned(),
            version: Some(4),
            run_id: 3,
            state: ModelState::Accepted,
            metrics: serde_json::json!({"auc": 0.91}),
            gates: serde_json::json!([
                {"passed": true, "detail": "auc 0.91 ≥ champion 0.90"}
            ]),
            reasons: Vec::new(),
            artifact_uri: String::new(),
            artifact_sha256: String::new(),
            commit_sha: HEAD.to_owned(),
            pipeline: "churn".to_owned(),
            pipeline_version: "v1".to_owned(),
            params: Value::Null,
            created_at: Utc::now(),
        };
        let body = results_comment(
            HEAD,
            &[
                RunResult {
                    run: run(3, RunState::Succeeded, Trigger::Change),
                    models: vec![model],
                },
                RunResult {
                    run: run(4, RunState::Running, Trigger::Change),
                    models: Vec::new(),
                },
            ],
        );
        assert!(body.starts_with("<!-- trainyard:results -->\n"), "{body}");
        assert!(body.contains("✅ run 3 of `churn`: succeeded"), "{body}");
        assert!(
            body.contains("model `churn-model` accepted as version 4"),
            "{body}"
        );
        assert!(body.contains("✅ auc 0.91 ≥ champion 0.90"), "{body}");
        assert!(body.contains("metrics: `auc=0.91`"), "{body}");
        assert!(body.contains("🔄 run 4 of `churn`: running"), "{body}");
    }
}
