//! Results reported back where a change was made: commit statuses (or, on a forge that has
//! them, check runs with annotations) and one sticky comment per pull request, through a
//! [`Forge`]. The embedded default forge writes Git notes ([`notes`]).
//!
//! Reports travel through the store's outbox as JSON ([`Report`], built by [`bodies`]); the
//! delivery loop hands each to [`deliver`], retries [`ForgeError::Transient`] after
//! [`backoff`] and records [`ForgeError::Permanent`]. What forges tell Trainyard comes back
//! as [`ForgeEvent`]s.

pub mod bodies;
mod event;
pub mod github;
pub mod notes;

pub use bodies::{Outgoing, status_report};
pub use event::{ForgeEvent, PrAction};
#[cfg(test)]
pub(crate) mod suite;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest status description GitHub keeps, in characters.
pub const DESCRIPTION_CHARS: usize = 140;
/// Longest comment body GitHub accepts, in characters.
pub const COMMENT_CHARS: usize = 65_536;
/// Longest check run summary (and text) GitHub accepts, in characters.
pub const SUMMARY_CHARS: usize = 65_535;
/// Most annotations GitHub takes in one request; more are sent in further updates.
pub const ANNOTATIONS_PER_REQUEST: usize = 50;
/// Longest wait between two delivery attempts, unless the forge asks for longer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The state of a commit status; GitHub's four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    /// Work has started or is queued.
    Pending,
    /// It passed.
    Success,
    /// It failed because of the change (a failed run, a gate that did not pass).
    Failure,
    /// It could not be decided (Trainyard or its infrastructure failed).
    Error,
}

impl StatusState {
    /// Every state, in GitHub's order.
    pub const ALL: [StatusState; 4] = [
        StatusState::Pending,
        StatusState::Success,
        StatusState::Failure,
        StatusState::Error,
    ];

    /// The state as GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }
}

/// A commit status: one state per context per commit, the latest one wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The full commit id.
    pub commit: String,
    /// What the status is about, such as `trainyard/run/churn`; see [`context`].
    pub context: String,
    /// Its state.
    pub state: StatusState,
    /// One line for people; forges cut it to [`DESCRIPTION_CHARS`].
    pub description: String,
    /// Where to read more, such as the run's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

/// How a completed check run concluded; the ones Trainyard writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    /// It passed.
    Success,
    /// It failed because of the change.
    Failure,
    /// Nothing to judge.
    Neutral,
}

impl Conclusion {
    /// The conclusion as GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Neutral => "neutral",
        }
    }

    /// The commit status that says the same, for forges without check runs.
    pub fn state(self) -> StatusState {
        match self {
            Conclusion::Success | Conclusion::Neutral => StatusState::Success,
            Conclusion::Failure => StatusState::Failure,
        }
    }
}

/// How serious an annotation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationLevel {
    /// For information.
    Notice,
    /// A warning.
    Warning,
    /// An error.
    Failure,
}

impl AnnotationLevel {
    /// The level as GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnotationLevel::Notice => "notice",
            AnnotationLevel::Warning => "warning",
            AnnotationLevel::Failure => "failure",
        }
    }
}

/// A finding shown on a file's line in the pull request's diff.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Annotation {
    /// The file, relative to the repository's root.
    pub path: String,
    /// First line, from 1.
    pub start_line: u32,
    /// Last line.
    pub end_line: u32,
    /// First and last column, only when the annotation is on one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<(u32, u32)>,
    /// How serious it is.
    pub level: AnnotationLevel,
    /// Its title (the check that found it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What it says.
    pub message: String,
}

/// A button on a check run; pressing it sends a `requested_action` webhook naming
/// `identifier`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckAction {
    /// What the button says (GitHub: at most 20 characters).
    pub label: String,
    /// Its tooltip (at most 40).
    pub description: String,
    /// What the webhook names (at most 20).
    pub identifier: String,
}

/// A completed check run: one per (commit, name), the latest one wins, like a status, with
/// a markdown summary and annotations on files and lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    /// The full commit id.
    pub commit: String,
    /// Its name, such as `trainyard/validate`; see [`context`].
    pub name: String,
    /// How it concluded.
    pub conclusion: Conclusion,
    /// One line for people (the status description on forges without check runs).
    pub title: String,
    /// Markdown; forges cut it to [`SUMMARY_CHARS`].
    pub summary: String,
    /// Findings on files and lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    /// Buttons (GitHub: at most three).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<CheckAction>,
}

impl CheckRun {
    /// The commit status that says the same, for forges without check runs.
    pub fn as_status(&self) -> Status {
        Status {
            commit: self.commit.clone(),
            context: self.name.clone(),
            state: self.conclusion.state(),
            description: fit_description(&self.title),
            target_url: None,
        }
    }
}

/// One report waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// Set a commit status.
    Status(Status),
    /// Create or edit the comment marked `key` on pull request `pr`, or on the pull request
    /// of `commit` when `pr` is not given.
    Comment {
        /// The commit the comment is about; finds the pull request when `pr` is not given.
        commit: String,
        /// The pull request, when the writer knows it (a fork's head commit is not in the
        /// repository, so the forge cannot find its pull request by the commit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pr: Option<u64>,
        /// Which comment: one per key per pull request.
        key: String,
        /// Markdown.
        body: String,
    },
    /// Create or update a check run (a status on forges without them).
    CheckRun(CheckRun),
}

/// Why a forge did not take a report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ForgeError {
    /// Try again later: rate limits, timeouts, a busy repository.
    #[error("{message}")]
    Transient {
        /// What went wrong.
        message: String,
        /// How long the forge asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help: an unknown commit, no permission, a refused request.
    #[error("{message}")]
    Permanent {
        /// What went wrong.
        message: String,
    },
}

/// Where reports go: a code host or the repository itself.
///
/// Every implementation keeps one status per (commit, context), writes nothing for a status
/// identical to the one it holds, cuts descriptions to [`DESCRIPTION_CHARS`], and answers an
/// unknown commit with [`ForgeError::Permanent`]; `suite` holds the tests that check it.
pub trait Forge: Send + Sync + 'static {
    /// Sets the status of `status.context` on `status.commit`, replacing an earlier one.
    fn set_status(&self, status: &Status) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// Creates the comment marked `key` on pull request `pr`, or edits it if it is there; a body
    /// longer than the forge accepts is cut with a note ([`fit_comment`]).
    fn upsert_comment(
        &self,
        pr: u64,
        key: &str,
        body: &str,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// The pull request of `commit`: the open one whose head it is, else the merged one whose
    /// merge commit it is, so results of a merged change go back to where it was reviewed.
    fn pull_request_of(
        &self,
        commit: &str,
    ) -> impl Future<Output = Result<Option<u64>, ForgeError>> + Send;

    /// What `user` may do in the repository; commands that run something need
    /// [`Permission::can_write`].
    fn permission_of(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Permission, ForgeError>> + Send;

    /// Whether the forge shows check runs (GitHub, signed in as an App); the others get
    /// statuses.
    fn has_check_runs(&self) -> bool {
        false
    }

    /// Creates the check run `check.name` on `check.commit`, or brings the one there up to
    /// date, writing nothing when it already shows `check`. A forge without check runs sets
    /// the status that says the same.
    fn upsert_check_run(
        &self,
        check: &CheckRun,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send {
        let status = check.as_status();
        async move { self.set_status(&status).await }
    }
}

/// A user's role on the repository, GitHub's five plus none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Everything, including settings.
    Admin,
    /// Manages the repository without access to sensitive settings.
    Maintain,
    /// Pushes to the repository.
    Write,
    /// Manages issues and pull requests without write access.
    Triage,
    /// Reads and comments.
    Read,
    /// Not a collaborator.
    None,
}

impl Permission {
    /// Whether the user may change the repository, and so may run things through it.
    pub fn can_write(self) -> bool {
        matches!(
            self,
            Permission::Admin | Permission::Maintain | Permission::Write
        )
    }
}

/// The forge a service reports to, chosen at start-up; one type whichever it is, so the
/// service is one type per executor.
#[derive(Debug)]
pub enum AnyForge {
    /// Git notes in the followed repository.
    Notes(notes::NotesForge),
    /// A GitHub repository.
    Github(github::GithubForge),
}

impl From<notes::NotesForge> for AnyForge {
    fn from(forge: notes::NotesForge) -> AnyForge {
        AnyForge::Notes(forge)
    }
}

impl From<github::GithubForge> for AnyForge {
    fn from(forge: github::GithubForge) -> AnyForge {
        AnyForge::Github(forge)
    }
}

impl Forge for AnyForge {
    async fn set_status(&self, status: &Status) -> Result<(), ForgeError> {
        match self {
            AnyForge::Notes(forge) => forge.set_status(status).await,
            AnyForge::Github(forge) => forge.set_status(status).await,
        }
    }

    async fn upsert_comment(&self, pr: u64, key: &str, body: &str) -> Result<(), ForgeError> {
        match self {
            AnyForge::Notes(forge) => forge.upsert_comment(pr, key, body).await,
            AnyForge::Github(forge) => forge.upsert_comment(pr, key, body).await,
        }
    }

    async fn pull_request_of(&self, commit: &str) -> Result<Option<u64>, ForgeError> {
        match self {
            AnyForge::Notes(forge) => forge.pull_request_of(commit).await,
            AnyForge::Github(forge) => forge.pull_request_of(commit).await,
        }
    }

    async fn permission_of(&self, user: &str) -> Result<Permission, ForgeError> {
        match self {
            AnyForge::Notes(forge) => forge.permission_of(user).await,
            AnyForge::Github(forge) => forge.permission_of(user).await,
        }
    }

    fn has_check_runs(&self) -> bool {
        match self {
            AnyForge::Notes(forge) => forge.has_check_runs(),
            AnyForge::Github(forge) => forge.has_check_runs(),
        }
    }

    async fn upsert_check_run(&self, check: &CheckRun) -> Result<(), ForgeError> {
        match self {
            AnyForge::Notes(forge) => forge.upsert_check_run(check).await,
            AnyForge::Github(forge) => forge.upsert_check_run(check).await,
        }
    }
}

/// What became of a delivered report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The forge holds it.
    Delivered,
    /// A comment whose commit has no pull request; there is nowhere to put it.
    NoPullRequest,
}

/// Hands one report to a forge: a status as it is, a comment to the pull request of its
/// commit (the forge cuts it to what it accepts, after its marker).
pub async fn deliver<F: Forge>(forge: &F, report: &Report) -> Result<Delivery, ForgeError> {
    match report {
        Report::Status(status) => {
            forge.set_status(status).await?;
            Ok(Delivery::Delivered)
        }
        Report::CheckRun(check) => {
            forge.upsert_check_run(check).await?;
            Ok(Delivery::Delivered)
        }
        Report::Comment {
            commit,
            pr,
            key,
            body,
        } => {
            let pr = match pr {
                Some(pr) => Some(*pr),
                None => forge.pull_request_of(commit).await?,
            };
            match pr {
                None => Ok(Delivery::NoPullRequest),
                Some(pr) => {
                    forge.upsert_comment(pr, key, body).await?;
                    Ok(Delivery::Delivered)
                }
            }
        }
    }
}

/// The status context for `kind` (`validate`, `plan`, `run`, `model`) and the pipeline or
/// model `name`: `trainyard/run/churn`, or `trainyard/<instance>/run/churn` when several
/// Trainyard instances report on one repository.
pub fn context(instance: Option<&str>, kind: &str, name: Option<&str>) -> String {
    let mut out = String::from("trainyard");
    for part in [instance, Some(kind), name].into_iter().flatten() {
        out.push('/');
        out.push_str(part);
    }
    out
}

/// One line of at most [`DESCRIPTION_CHARS`] characters: line breaks and runs of blanks
/// become one space, and a longer text is cut with `…`.
pub fn fit_description(text: &str) -> String {
    let line = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.chars().count() <= DESCRIPTION_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(DESCRIPTION_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// A comment body within [`COMMENT_CHARS`] characters; a longer one is cut and ends with a
/// note saying so (closing a code block left open by the cut, so the note renders as text).
pub fn fit_comment(body: &str) -> String {
    fit_comment_within(body, COMMENT_CHARS)
}

/// [`fit_comment`] for a body that must leave room for something else (a marker line) in the
/// forge's [`COMMENT_CHARS`]: it keeps at most `limit` characters.
pub fn fit_comment_within(body: &str, limit: usize) -> String {
    fit_markdown(body, limit, "comment", COMMENT_CHARS)
}

/// A check run summary within [`SUMMARY_CHARS`] characters, cut like [`fit_comment`].
pub fn fit_summary(summary: &str) -> String {
    fit_markdown(summary, SUMMARY_CHARS, "summary", SUMMARY_CHARS)
}

/// `body` within `limit` characters: a longer one is cut on a character boundary, a code
/// block the cut leaves open is closed, and a note says that the `what` was cut and that
/// the forge keeps at most `kept`.
fn fit_markdown(body: &str, limit: usize, what: &str, kept: usize) -> String {
    let total = body.chars().count();
    if total <= limit {
        return body.to_owned();
    }
    let note = format!(
        "\n\n---\n*Trainyard cut this {what}: it was {total} characters long and the forge \
         keeps at most {kept}.*\n"
    );
    let fence = "\n```";
    let room = limit.saturating_sub(note.chars().count() + fence.len());
    let mut kept: String = body.chars().take(room).collect();
    let open_fences = kept
        .lines()
        .filter(|line| line.trim_start().starts_with("```"))
        .count();
    if !open_fences.is_multiple_of(2) {
        kept.push_str(fence);
    }
    kept.push_str(&note);
    kept
}

/// The hidden marker that identifies the comment `key` among a pull request's comments.
pub fn marker(key: &str) -> String {
    format!("<!-- trainyard:{key} -->")
}

/// Whether a comment body carries the marker of `key`.
pub fn has_marker(body: &str, key: &str) -> bool {
    body.contains(&marker(key))
}

/// How long to wait before delivery attempt `attempt + 1`: 1 s doubling per attempt up to
/// [`MAX_BACKOFF`], and never less than what the forge asked for.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let doubling = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    let wait = Duration::from_secs(doubling).min(MAX_BACKOFF);
    retry_after.map_or(wait, |asked| wait.max(asked))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::notes::NotesForge;
    use super::*;

    #[test]
    fn contexts_name_the_kind_and_the_pipeline_or_model() {
        assert_eq!(context(None, "validate", None), "trainyard/validate");
        assert_eq!(context(None, "plan", None), "trainyard/plan");
        assert_eq!(context(None, "run", Some("iris")), "trainyard/run/iris");
        assert_eq!(
            context(None, "model", Some("iris-classifier")),
            "trainyard/model/iris-classifier"
        );
        assert_eq!(
            context(Some("gpu-east"), "run", Some("iris")),
            "trainyard/gpu-east/run/iris"
        );
    }

    #[test]
    fn a_short_description_is_kept_on_one_line() {
        assert_eq!(
            fit_description("run 12 succeeded\nin 4.1s  "),
            "run 12 succeeded in 4.1s"
        );
        assert_eq!(fit_description(&"a".repeat(140)), "a".repeat(140));
    }

    #[test]
    fn a_long_description_is_cut_to_140_characters_on_a_char_boundary() {
        let text = "é".repeat(200);
        let fitted = fit_description(&text);
        assert_eq!(fitted.chars().count(), 140);
        assert_eq!(fitted, format!("{}…", "é".repeat(139)));
    }

    #[test]
    fn a_comment_within_the_limit_is_kept_as_is() {
        let body = format!("{}\nplan\n", marker("plan"));
        assert_eq!(fit_comment(&body), body);
    }

    #[test]
    fn a_long_comment_is_cut_to_the_limit_with_a_closing_note() {
        let body = format!("{}\n{}", marker("plan"), "ü".repeat(70_000));
        let fitted = fit_comment(&body);
        assert!(fitted.chars().count() <= COMMENT_CHARS);
        assert!(fitted.starts_with(&marker("plan")));
        let note = format!(
            "*Trainyard cut this comment: it was {} characters long and the forge keeps at \
             most 65536.*\n",
            body.chars().count()
        );
        assert!(fitted.ends_with(&note), "{fitted:.200}");
    }

    #[test]
    fn a_cut_inside_a_code_block_closes_it_before_the_note() {
        let body = format!("# Plan\n```diff\n{}", "+ line\n".repeat(20_000));
        let fitted = fit_comment(&body);
        assert!(fitted.chars().count() <= COMMENT_CHARS);
        let fences = fitted.lines().filter(|l| l.starts_with("```")).count();
        assert_eq!(fences, 2, "the block is closed");
        assert!(fitted.contains("```\n\n---\n*Trainyard cut this comment"));
    }

    #[test]
    fn a_long_summary_is_cut_within_githubs_limit_on_a_char_boundary() {
        let summary = format!("## Plan\n```diff\n{}", "ü".repeat(70_000));
        let fitted = fit_summary(&summary);
        assert!(fitted.chars().count() <= SUMMARY_CHARS);
        assert!(fitted.starts_with("## Plan\n```diff\nüü"));
        assert!(
            fitted.ends_with(
                "```\n\n---\n*Trainyard cut this summary: it was 70016 characters long and the \
                 forge keeps at most 65535.*\n"
            ),
            "{}",
            &fitted[fitted.len() - 200..]
        );
        let exact = "a".repeat(SUMMARY_CHARS);
        assert_eq!(fit_summary(&exact), exact);
    }

    #[test]
    fn a_check_run_reads_as_the_status_that_says_the_same() {
        let check = CheckRun {
            commit: "c".repeat(40),
            name: "trainyard/validate".to_owned(),
            conclusion: Conclusion::Failure,
            title: "1 error:\nb.yaml:4".to_owned(),
            summary: "## Validation".to_owned(),
            annotations: Vec::new(),
            actions: Vec::new(),
        };
        let status = check.as_status();
        assert_eq!(status.context, "trainyard/validate");
        assert_eq!(status.state, StatusState::Failure);
        assert_eq!(status.description, "1 error: b.yaml:4");
        assert_eq!(Conclusion::Neutral.state(), StatusState::Success);
    }

    #[test]
    fn markers_are_hidden_comments_found_by_exact_key() {
        assert_eq!(marker("plan"), "<!-- trainyard:plan -->");
        let body = format!("{}\n## Plan", marker("plan"));
        assert!(has_marker(&body, "plan"));
        assert!(!has_marker(&body, "pla"));
        assert!(!has_marker(&body, "run"));
    }

    #[test]
    fn only_writers_and_above_can_write() {
        let writers: Vec<Permission> = [
            Permission::Admin,
            Permission::Maintain,
            Permission::Write,
            Permission::Triage,
            Permission::Read,
            Permission::None,
        ]
        .into_iter()
        .filter(|p| p.can_write())
        .collect();
        assert_eq!(
            writers,
            [Permission::Admin, Permission::Maintain, Permission::Write]
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_five_minutes() {
        let waits: Vec<u64> = (0..10).map(|a| backoff(a, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(200, None), MAX_BACKOFF);
    }

    #[test]
    fn backoff_waits_at_least_what_the_forge_asked() {
        let asked = Duration::from_secs(3600);
        assert_eq!(backoff(0, Some(asked)), asked);
        assert_eq!(
            backoff(3, Some(Duration::from_secs(2))),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn reports_round_trip_through_json() {
        let reports = [
            Report::Status(Status {
                commit: "a".repeat(40),
                context: "trainyard/run/iris".to_owned(),
                state: StatusState::Success,
                description: "run 12 succeeded".to_owned(),
                target_url: Some("http://localhost:8080/runs/12".to_owned()),
            }),
            Report::Comment {
                commit: "b".repeat(40),
                pr: Some(7),
                key: "plan".to_owned(),
                body: "## Plan".to_owned(),
            },
            Report::CheckRun(CheckRun {
                commit: "d".repeat(40),
                name: "trainyard/plan".to_owned(),
                conclusion: Conclusion::Success,
                title: "1 to add".to_owned(),
                summary: "## Plan".to_owned(),
                annotations: vec![Annotation {
                    path: "pipelines/a.yaml".to_owned(),
                    start_line: 4,
                    end_line: 4,
                    columns: Some((2, 6)),
                    level: AnnotationLevel::Warning,
                    title: Some("yaml".to_owned()),
                    message: "unknown field".to_owned(),
                }],
                actions: vec![CheckAction {
                    label: "Preview run".to_owned(),
                    description: "d".to_owned(),
                    identifier: "preview".to_owned(),
                }],
            }),
        ];
        for report in reports {
            let json = serde_json::to_value(&report).expect("serializes");
            let back: Report = serde_json::from_value(json.clone()).expect("deserializes");
            assert_eq!(back, report, "{json}");
        }
        let json = serde_json::json!({
            "kind": "status", "commit": "c", "context": "trainyard/validate",
            "state": "failure", "description": "1 error"
        });
        let read: Report = serde_json::from_value(json).expect("the outbox's form reads");
        let check = serde_json::json!({
            "kind": "check_run", "commit": "e", "name": "trainyard/validate",
            "conclusion": "failure", "title": "1 error", "summary": "s"
        });
        let check: Report = serde_json::from_value(check).expect("a check run reads");
        assert!(
            matches!(check, Report::CheckRun(CheckRun { ref annotations, .. }) if annotations.is_empty())
        );
        assert!(matches!(
            read,
            Report::Status(Status {
                state: StatusState::Failure,
                target_url: None,
                ..
            })
        ));
    }

    fn repository_with_a_commit(dir: &Path) -> String {
        let repo = git2::Repository::init(dir).expect("init");
        let sig = git2::Signature::now("Test", "test@example.com").expect("signature");
        let tree = repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .expect("empty tree");
        let tree = repo.find_tree(tree).expect("tree");
        repo.commit(Some("HEAD"), &sig, &sig, "first", &tree, &[])
            .expect("commit")
            .to_string()
    }

    #[tokio::test]
    async fn deliver_sets_a_status_and_finds_no_pull_request_for_a_comment_in_notes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let commit = repository_with_a_commit(dir.path());
        let forge = NotesForge::open(dir.path()).expect("a repository");
        let status = Report::Status(Status {
            commit: commit.clone(),
            context: "trainyard/validate".to_owned(),
            state: StatusState::Success,
            description: "2 pipelines, 2 schedules".to_owned(),
            target_url: None,
        });
        assert_eq!(
            deliver(&forge, &status).await.expect("delivered"),
            Delivery::Delivered
        );
        let note = notes::read_note(dir.path(), &commit)
            .expect("readable")
            .expect("a note");
        assert_eq!(
            note,
            "trainyard/validate: success — 2 pipelines, 2 schedules\n"
        );
        let comment = Report::Comment {
            commit,
            pr: None,
            key: "plan".to_owned(),
            body: "## Plan".to_owned(),
        };
        assert_eq!(
            deliver(&forge, &comment).await.expect("handled"),
            Delivery::NoPullRequest
        );
    }
}
