//! Pull requests: the plan of every pull request's head against its base branch (statuses,
//! or check runs on a forge that shows them), the commands people write in comments (re-plan,
//! preview runs) or press on the plan's check run, and the preview runs they start.
//!
//! Everything here ends in reports enqueued in the outbox (statuses and sticky comments are
//! upserts), so handling an event twice, after a crash, changes nothing the forge shows; a
//! preview run is recorded with the comment that asked for it, so it starts once.

pub mod commands;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::config::Config;
use crate::definitions::{DefinitionsError, Evaluation, SharedDefinitions};
use crate::plan::Action;
use crate::plan::{Plan, Planner};
use crate::report::bodies::{
    Outgoing, PREVIEW_ACTION, command_key, comment_report, plan_check_reports, plan_reports,
    preview_comment, run_key, short, sticky,
};
use crate::report::{Forge, ForgeError};
use crate::source::{Repo, Snapshot, SourceError};
use crate::spec::check::{resolve_params, typed_params};
use crate::spec::model::Previews;
use crate::spec::{Catalog, Kind};
use crate::store::{
    NewRun, PipelineUpsert, PullRequestRow, RunRow, RunState, Store, StoreError, Trigger,
};
use commands::Command;

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
    /// The forge could not answer now (a rate limit, an outage): try again later.
    #[error("the forge: {0}")]
    Forge(ForgeError),
}

impl PullsError {
    /// Whether handling the event again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PullsError::Store(error) => error.is_transient(),
            PullsError::Source(error) => error.is_transient(),
            PullsError::Definitions(DefinitionsError::Source(error)) => error.is_transient(),
            PullsError::Definitions(_) => false,
            PullsError::Forge(error) => matches!(error, ForgeError::Transient { .. }),
        }
    }
}

/// The local reference a pull request's fetched head is kept under: read-only, and outside
/// `refs/heads` so that following branches never sees it.
pub fn head_ref(number: u64) -> String {
    format!("refs/trainyard/pull/{number}")
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

/// The comment on pull request `pr` saying preview run `id` of `run` is queued, with
/// `asked` saying who asked for it and how.
fn queued_comment(
    run: &NewRun,
    id: i64,
    pr: u64,
    now: DateTime<Utc>,
    asked: &str,
) -> Vec<Outgoing> {
    let body = preview_comment(&RunRow::queued(id, run, now), RunState::Pending, &[], asked);
    vec![comment_report(
        &run.commit_sha,
        Some(pr),
        &run_key(id),
        &body,
    )]
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
        definition: entry.value.clone(),
    };
    let run = NewRun::of(definition, &entry.version, head, Trigger::Preview, params);
    Ok((version, run))
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
    /// The pipelines the head adds or changes that a preview can run with their default
    /// params, when the head has no errors.
    pub previewable: Vec<String>,
}

/// The pipelines `plan` adds or changes that run as previews of `head` without params.
fn previewable(plan: &Plan, head: &str, catalog: &Catalog) -> Vec<String> {
    if plan.has_errors() {
        return Vec::new();
    }
    plan.changes
        .iter()
        .filter(|c| c.kind == Kind::Pipeline && matches!(c.action, Action::Added | Action::Changed))
        .filter(|c| preview_run(head, catalog, &c.name, &BTreeMap::new()).is_ok())
        .map(|c| c.name.clone())
        .collect()
}

/// The sticky reply to the button of check run `check_run`.
pub fn action_key(check_run: u64) -> String {
    format!("action-{check_run}")
}

/// Plans pull requests and answers commands: built once, over the followed repository, the
/// store and the one checker the service shares.
pub struct Pulls {
    repo: Repo,
    store: Store,
    definitions: SharedDefinitions,
    branch: Option<String>,
    subdir: String,
    instance: Option<String>,
    /// Whether plans are reported as check runs (the forge shows them) or statuses.
    check_runs: bool,
}

impl Pulls {
    /// Pull requests of the repository `repo`, as `config` follows it.
    pub fn new(repo: Repo, store: Store, definitions: SharedDefinitions, config: &Config) -> Self {
        Pulls {
            repo,
            store,
            definitions,
            branch: config.branch.clone(),
            subdir: config.subdir.clone(),
            instance: config.instance.clone(),
            check_runs: false,
        }
    }

    /// Reports plans as check runs (`true`: the forge shows them) or as statuses.
    pub fn with_check_runs(mut self, check_runs: bool) -> Self {
        self.check_runs = check_runs;
        self
    }

    /// Answers `sender` pressing the button `identifier` of check run `check_run_id` (on
    /// `head`) of pull request `number`: [`PREVIEW_ACTION`] starts a preview of each
    /// pipeline the head adds or changes, as `/trainyard run` does (the same permission
    /// check, fork rule and recording: one run per check run and pipeline). Refusals are
    /// answered in the sticky reply `action-<check_run_id>`.
    #[allow(clippy::too_many_arguments)]
    pub async fn on_check_action<F: Forge>(
        &self,
        forge: &F,
        check_run_id: u64,
        number: u64,
        head: &str,
        identifier: &str,
        sender: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PullsError> {
        if identifier != PREVIEW_ACTION {
            tracing::info!(
                pr = number,
                identifier,
                "ignored a check run button Trainyard does not offer"
            );
            return Ok(());
        }
        let store = &self.store;
        if !store.previews_of_check_run(check_run_id).await?.is_empty() {
            return Ok(());
        }
        let key = action_key(check_run_id);
        let reply = |text: &str| comment_report(head, Some(number), &key, &sticky(&key, text));
        let Some(pr) = store.pull_request(number).await? else {
            let text = format!(
                "@{sender} nothing runs: Trainyard has not seen pull request #{number} yet; \
                 comment `/trainyard plan` first."
            );
            store.enqueue_reports(&[reply(&text)], now).await?;
            return Ok(());
        };
        if !pr.open {
            let text = format!("@{sender} this pull request is closed: nothing runs from it.");
            store.enqueue_reports(&[reply(&text)], now).await?;
            return Ok(());
        }
        let permission = match forge.permission_of(sender).await {
            Ok(permission) => permission,
            Err(error @ ForgeError::Transient { .. }) => return Err(PullsError::Forge(error)),
            Err(ForgeError::Permanent { message }) => {
                let text = format!(
                    "@{sender} nothing runs: Trainyard could not check your permission on this \
                     repository ({message})."
                );
                store.enqueue_reports(&[reply(&text)], now).await?;
                return Ok(());
            }
        };
        let Some(checked) = self.plan(&pr, now).await? else {
            let text = format!(
                "@{sender} nothing runs: this pull request does not merge into the branch \
                 Trainyard follows, or its head commit cannot be read."
            );
            store.enqueue_reports(&[reply(&text)], now).await?;
            return Ok(());
        };
        if !checked.head.eq_ignore_ascii_case(head) {
            let text = format!(
                "@{sender} nothing runs: that button belongs to head `{}`, and the pull request \
                 is at `{}` now; use the button of its latest plan.",
                short(head),
                short(&checked.head)
            );
            store.enqueue_reports(&[reply(&text)], now).await?;
            return Ok(());
        }
        if let Err(reason) = may_preview(
            sender,
            permission.can_write(),
            pr.from_fork,
            &checked.base_previews,
        ) {
            store.enqueue_reports(&[reply(&reason)], now).await?;
            return Ok(());
        }
        if checked.previewable.is_empty() {
            let text = format!(
                "@{sender} nothing runs: this head adds or changes no pipeline that runs with \
                 its default params; comment `/trainyard run PIPELINE key=value …`."
            );
            store.enqueue_reports(&[reply(&text)], now).await?;
            return Ok(());
        }
        for pipeline in &checked.previewable {
            let (version, run) = match preview_run(
                &checked.head,
                &checked.head_catalog,
                pipeline,
                &BTreeMap::new(),
            ) {
                Ok(found) => found,
                Err(reason) => {
                    let text = format!("@{sender} nothing runs: {reason}");
                    store.enqueue_reports(&[reply(&text)], now).await?;
                    continue;
                }
            };
            let asked =
                format!("Asked for by @{sender} from the plan's check run; waiting for its turn.");
            let queued = |id: i64| queued_comment(&run, id, pr.number, now, &asked);
            let (id, created) = store
                .create_action_preview(check_run_id, pr.number, &version, &run, queued, now)
                .await?;
            if created {
                tracing::info!(pr = pr.number, run = id, pipeline = %pipeline, head = %short(&checked.head), "preview run queued from a check run");
            }
        }
        Ok(())
    }

    /// Records pull request `pr` as the forge describes it and, while it is open, plans its
    /// head against its base branch: statuses and the sticky plan comment go to the outbox.
    pub async fn on_pull_request(
        &self,
        pr: &PullRequestRow,
        now: DateTime<Utc>,
    ) -> Result<(), PullsError> {
        self.store.upsert_pull_request(pr, now).await?;
        if !pr.open {
            return Ok(());
        }
        self.plan(pr, now).await.map(|_| ())
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
        &self,
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
        let store = &self.store;
        let known = store.pull_request(number).await?;
        let pr = match known {
            Some(pr) => pr,
            // Webhooks set up after the pull request was opened: learn its head from the
            // remote, and since nothing says where it comes from, treat it as a fork.
            None => PullRequestRow {
                number,
                head_sha: String::new(),
                head_ref: String::new(),
                base_ref: self.followed().await?.unwrap_or_default(),
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
        let (pipeline, params, no_cache) = match command {
            Command::Help => {
                store
                    .enqueue_reports(&[reply(&pr, commands::HELP)], now)
                    .await?;
                return Ok(());
            }
            Command::Plan => {
                if self.plan(&pr, now).await?.is_none() {
                    let text = format!(
                        "@{author} there is nothing to plan: this pull request does not merge \
                         into the branch Trainyard follows, or its head commit cannot be read."
                    );
                    store.enqueue_reports(&[reply(&pr, &text)], now).await?;
                }
                return Ok(());
            }
            Command::Run {
                pipeline,
                params,
                no_cache,
            } => (pipeline, params, no_cache),
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
        let Some(checked) = self.plan(&pr, now).await? else {
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
        let (version, mut run) =
            match preview_run(&checked.head, &checked.head_catalog, &pipeline, &params) {
                Ok(found) => found,
                Err(reason) => {
                    let text = format!("@{author} nothing runs: {reason}");
                    store.enqueue_reports(&[reply(&pr, &text)], now).await?;
                    return Ok(());
                }
            };
        run.no_cache = no_cache;
        let asked = format!("Asked for by @{author}; waiting for its turn.");
        let queued = |id: i64| queued_comment(&run, id, pr.number, now, &asked);
        let (id, created) = store
            .create_preview(comment_id, pr.number, &version, &run, queued, now)
            .await?;
        if created {
            tracing::info!(pr = pr.number, run = id, pipeline = %pipeline, head = %short(&checked.head), "preview run queued");
        }
        Ok(())
    }

    /// The branch the service follows.
    async fn followed(&self) -> Result<Option<String>, PullsError> {
        let branch = self.branch.clone();
        Ok(self
            .repo
            .run(move |repo| repo.followed_branch(branch.as_deref()))
            .await?)
    }

    /// Plans `pr`'s head against its base branch and enqueues the statuses and the plan
    /// comment; returns what it checked, or `None` when there is nothing to plan (the base
    /// is not the followed branch, or the head cannot be found).
    pub async fn plan(
        &self,
        pr: &PullRequestRow,
        now: DateTime<Utc>,
    ) -> Result<Option<Checked>, PullsError> {
        let checking = Checking {
            repo: self.repo.clone(),
            definitions: self.definitions.clone(),
            branch: self.branch.clone(),
            subdir: self.subdir.clone(),
        };
        let pr_to_check = pr.clone();
        let checked = tokio::task::spawn_blocking(move || checking.check(&pr_to_check, now))
            .await
            .map_err(|e| PullsError::Source(SourceError::Blocking(e.to_string())))??;
        let Some((checked, plan)) = checked else {
            return Ok(None);
        };
        let reports = if self.check_runs {
            // A fork's pull request is not among its check runs' pull requests on GitHub,
            // so a button there could not say which pull request it is for.
            let previewable: &[String] = if pr.from_fork {
                &[]
            } else {
                &checked.previewable
            };
            plan_check_reports(
                pr.number,
                &checked.head,
                &pr.base_ref,
                &plan,
                self.instance.as_deref(),
                &self.subdir,
                previewable,
            )
        } else {
            plan_reports(
                pr.number,
                &checked.head,
                &pr.base_ref,
                &plan,
                self.instance.as_deref(),
            )
        };
        self.store.enqueue_reports(&reports, now).await?;
        tracing::info!(pr = pr.number, head = %short(&checked.head), "planned the pull request");
        Ok(Some(checked))
    }
}

/// What checking a pull request's head needs, moved onto a blocking thread.
struct Checking {
    repo: Repo,
    definitions: SharedDefinitions,
    branch: Option<String>,
    subdir: String,
}

impl Checking {
    /// Reads, checks and plans the head of `pr` against its base branch.
    fn check(
        &self,
        pr: &PullRequestRow,
        now: DateTime<Utc>,
    ) -> Result<Option<(Checked, Plan)>, PullsError> {
        let followed = self.repo.followed_branch(self.branch.as_deref())?;
        if followed.as_deref() != Some(pr.base_ref.as_str()) {
            tracing::info!(pr = pr.number, base = %pr.base_ref, "not planned: it does not merge into the followed branch");
            return Ok(None);
        }
        let Some(head) = self.resolve_head(pr)? else {
            tracing::warn!(pr = pr.number, head = %pr.head_sha, "not planned: its head commit is not in the repository");
            return Ok(None);
        };
        let base = self.repo.head_of(Some(&pr.base_ref))?;
        let mut definitions = self.definitions.lock();
        let base_catalog = match Snapshot::at_revision(&self.repo, &base, &self.subdir) {
            Ok(snapshot) => definitions.catalog(&snapshot)?,
            Err(SourceError::PathNotFound { .. }) => Catalog::default(),
            Err(error) => return Err(error.into()),
        };
        let evaluation = match Snapshot::at_revision(&self.repo, &head, &self.subdir) {
            Ok(snapshot) => definitions.evaluate(&snapshot, now)?,
            Err(SourceError::PathNotFound { .. }) => Evaluation::default(),
            Err(error) => return Err(error.into()),
        };
        drop(definitions);
        let plan = Planner::default().plan(
            short(&base),
            short(&head),
            &base_catalog,
            &evaluation.catalog,
            evaluation.diagnostics,
            now,
        );
        let previewable = previewable(&plan, &head, &evaluation.catalog);
        Ok(Some((
            Checked {
                head,
                base,
                head_catalog: evaluation.catalog,
                base_previews: base_catalog.settings.previews.clone(),
                previewable,
            },
            plan,
        )))
    }

    /// The head commit of `pr`: its `head_sha` when the repository has it (after fetching
    /// from the remote, if there is one), else what the pull request's ref points at when
    /// no commit was named.
    fn resolve_head(&self, pr: &PullRequestRow) -> Result<Option<String>, PullsError> {
        if let Err(error) = self
            .repo
            .fetch_pull(pr.number, &pr.base_ref, &head_ref(pr.number))
        {
            // The pull request may be gone, or its head not published yet: plan what is here.
            tracing::warn!(pr = pr.number, %error, "fetching the pull request's head failed");
        }
        if !pr.head_sha.is_empty() {
            return Ok(self
                .repo
                .has_commit(&pr.head_sha)
                .then(|| pr.head_sha.clone()));
        }
        for name in [head_ref(pr.number), format!("refs/pull/{}/head", pr.number)] {
            if let Some(commit) = self.repo.commit_of_ref(&name)? {
                return Ok(Some(commit));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const HEAD: &str = "1111111111111111111111111111111111111111";

    fn catalog(files: &[(&str, &str)]) -> Catalog {
        Catalog::of_files(files)
    }

    fn pipeline(name: &str, gpus: u32) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t}}\n\
             spec: {{image: i, params: {{epochs: {{type: int, default: 3}}, lr: {{type: float}}}}, \
             steps: [{{name: train, run: [x], resources: {{gpu: {gpus}}}, timeout: 1h}}]}}\n"
        )
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
        assert_eq!(
            serde_json::to_value(&run.params).expect("json"),
            serde_json::json!({"epochs": 3, "lr": 0.5})
        );
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
}
