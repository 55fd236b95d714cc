//! The embedded forge: commit statuses as Git notes under `refs/notes/trainyard`, one note
//! per commit with one line per context, readable with `git log --notes=trainyard`.
//!
//! ```text
//! trainyard/model/iris-classifier: success — version 3 accepted, champion (accuracy 0.93 ≥ 0.85)
//! trainyard/run/iris: success — run 12 succeeded in 4.1s
//!   url: http://localhost:8080/runs/12
//! trainyard/validate: success — 2 pipelines, 2 schedules
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use git2::{ErrorClass, ErrorCode, Oid, Repository, Signature};

use super::{Forge, ForgeError, Permission, Status, StatusState, fit_description};
use crate::source::Repo;

/// The notes ref Trainyard writes.
pub const NOTES_REF: &str = "refs/notes/trainyard";

/// Where a write stages its notes commit before moving [`NOTES_REF`] to it.
const STAGING_PREFIX: &str = "refs/trainyard/staging/";

/// How many times a write re-reads and retries when another writer moved the notes ref first.
const MAX_ATTEMPTS: usize = 32;
/// A lock on the notes ref older than this was left by a writer that died (a ref update
/// holds it for milliseconds) and is removed, or no report would be written again.
const STALE_LOCK: Duration = Duration::from_secs(60);

const URL_LINE: &str = "  url: ";

/// Reports statuses as Git notes in a local repository.
///
/// Pull requests exist only on a code host, so a repository alone has none: comments have
/// nowhere to go and [`Forge::pull_request_of`] always answers `None`.
#[derive(Debug, Clone)]
pub struct NotesForge {
    repo: Repo,
}

impl NotesForge {
    /// A forge writing notes into the followed repository, through its one handle.
    pub fn new(repo: Repo) -> Self {
        NotesForge { repo }
    }

    /// A forge writing notes into the repository at `path`, opened now.
    pub fn open(path: &Path) -> Result<Self, ForgeError> {
        Ok(NotesForge {
            repo: Repo::from_git(open(path)?, path.to_path_buf(), None),
        })
    }
}

impl Forge for NotesForge {
    async fn set_status(&self, status: &Status) -> Result<(), ForgeError> {
        let repo = self.repo.clone();
        let status = status.clone();
        tokio::task::spawn_blocking(move || write_status(&repo.git(), &status))
            .await
            .map_err(|e| ForgeError::Permanent {
                message: format!("writing the note failed: {e}"),
            })?
    }

    async fn upsert_comment(&self, _pr: u64, _key: &str, _body: &str) -> Result<(), ForgeError> {
        Err(ForgeError::Permanent {
            message: "pull requests are not available without a forge".to_owned(),
        })
    }

    async fn pull_request_of(&self, _commit: &str) -> Result<Option<u64>, ForgeError> {
        Ok(None)
    }

    async fn permission_of(&self, _user: &str) -> Result<Permission, ForgeError> {
        Err(ForgeError::Permanent {
            message: "user permissions are not available without a forge".to_owned(),
        })
    }
}

/// The Trainyard note of `commit`, if it has one.
pub fn read_note(repo_path: &Path, commit: &str) -> Result<Option<String>, ForgeError> {
    let repo = open(repo_path)?;
    let oid = commit_id(&repo, commit)?;
    note_text(&repo, NOTES_REF, oid)
}

/// One context's line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    state: StatusState,
    description: String,
    target_url: Option<String>,
}

/// A note as Trainyard reads it: its status lines, and any other lines (written by people
/// with `git notes`) kept as they were.
#[derive(Debug, Default, PartialEq)]
struct Note {
    statuses: BTreeMap<String, Entry>,
    other: Vec<String>,
}

impl Note {
    fn parse(text: &str) -> Note {
        let mut note = Note::default();
        let mut last: Option<String> = None;
        for line in text.lines() {
            if let (Some(url), Some(context)) = (line.strip_prefix(URL_LINE), &last)
                && let Some(entry) = note.statuses.get_mut(context)
            {
                entry.target_url = Some(url.to_owned());
                continue;
            }
            match parse_status_line(line) {
                Some((context, entry)) => {
                    last = Some(context.clone());
                    note.statuses.insert(context, entry);
                }
                None => {
                    last = None;
                    if !line.trim().is_empty() {
                        note.other.push(line.to_owned());
                    }
                }
            }
        }
        note
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (context, entry) in &self.statuses {
            out.push_str(context);
            out.push_str(": ");
            out.push_str(entry.state.as_str());
            if !entry.description.is_empty() {
                out.push_str(" — ");
                out.push_str(&entry.description);
            }
            out.push('\n');
            if let Some(url) = &entry.target_url {
                out.push_str(URL_LINE);
                out.push_str(url);
                out.push('\n');
            }
        }
        for line in &self.other {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Reads `CONTEXT: STATE` or `CONTEXT: STATE — DESCRIPTION`, taking the first place where a
/// state follows `: ` so that a context holding `: ` still reads back.
fn parse_status_line(line: &str) -> Option<(String, Entry)> {
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    let mut best: Option<(usize, StatusState, &str)> = None;
    for state in StatusState::ALL {
        let needle = format!(": {}", state.as_str());
        for (at, _) in line.match_indices(&needle) {
            let rest = &line[at + needle.len()..];
            let description = if rest.is_empty() {
                Some("")
            } else {
                rest.strip_prefix(" — ")
            };
            if let Some(description) = description {
                if at > 0 && best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, state, description));
                }
                break;
            }
        }
    }
    best.map(|(at, state, description)| {
        (
            line[..at].to_owned(),
            Entry {
                state,
                description: description.to_owned(),
                target_url: None,
            },
        )
    })
}

fn write_status(repo: &Repository, status: &Status) -> Result<(), ForgeError> {
    let one_line = |what: &str, text: &str| {
        if text.is_empty() || text.chars().any(char::is_control) || text != text.trim() {
            Err(ForgeError::Permanent {
                message: format!("{what} {text:?} must be one non-empty line"),
            })
        } else {
            Ok(())
        }
    };
    one_line("status context", &status.context)?;
    if let Some(url) = &status.target_url {
        one_line("target url", url)?;
    }
    let entry = Entry {
        state: status.state,
        description: fit_description(&status.description),
        target_url: status.target_url.clone(),
    };
    let alone = Note {
        statuses: BTreeMap::from([(status.context.clone(), entry.clone())]),
        other: Vec::new(),
    };
    if Note::parse(&alone.render()) != alone {
        return Err(ForgeError::Permanent {
            message: format!(
                "status context {:?} would not read back from a note line",
                status.context
            ),
        });
    }
    let commit = commit_id(repo, &status.commit)?;
    let signature = Signature::now("Trainyard", "trainyard@localhost")
        .map_err(|e| git_error("making the notes signature", e))?;
    let staging = staging_ref();
    // Another writer holding or just having moved the notes ref (or pruning the empty staging
    // directory while this one creates a ref in it) is resolved by reading again.
    let contended = |e: &git2::Error| {
        matches!(
            e.code(),
            ErrorCode::Modified | ErrorCode::Locked | ErrorCode::NotFound
        )
    };
    let mut attempt = 1;
    let outcome = loop {
        match write_once(repo, &staging, commit, status, &entry, &signature) {
            Ok(()) => break Ok(()),
            Err(e) if contended(&e) && attempt < MAX_ATTEMPTS => {
                if e.code() == ErrorCode::Locked {
                    remove_stale_lock(repo);
                }
                std::thread::sleep(Duration::from_millis(1 + attempt as u64 % 8));
                attempt += 1;
            }
            Err(e) if contended(&e) => {
                break Err(ForgeError::Transient {
                    message: format!(
                        "writing the note: {} (after {MAX_ATTEMPTS} attempts)",
                        e.message()
                    ),
                    retry_after: None,
                });
            }
            Err(e) => break Err(git_error("writing the note", e)),
        }
    };
    if let Err(e) = remove_staging(repo, &staging) {
        tracing::warn!(reference = %staging, error = %e, "could not remove a staging ref");
    }
    outcome
}

/// Removes the notes ref's lock file when it is older than [`STALE_LOCK`].
fn remove_stale_lock(repo: &Repository) {
    let lock = repo.path().join(format!("{NOTES_REF}.lock"));
    let age = std::fs::metadata(&lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok());
    if age.is_some_and(|age| age > STALE_LOCK) {
        match std::fs::remove_file(&lock) {
            Ok(()) => {
                tracing::warn!(lock = %lock.display(), "removed a stale lock left by a writer that died")
            }
            Err(e) => {
                tracing::warn!(lock = %lock.display(), error = %e, "could not remove a stale lock")
            }
        }
    }
}

/// One read-merge-write of the note of `commit`.
///
/// The note is read from and written onto the staging ref, set to the notes tip seen first;
/// the notes ref then moves only if it still holds that tip, so a writer that raced this one
/// is never overwritten: this one fails with `Modified` and retries on top of it.
fn write_once(
    repo: &Repository,
    staging: &str,
    commit: Oid,
    status: &Status,
    entry: &Entry,
    signature: &Signature,
) -> Result<(), git2::Error> {
    let tip = match repo.refname_to_id(NOTES_REF) {
        Ok(tip) => {
            repo.reference(staging, tip, true, "stage a Trainyard note")?;
            Some(tip)
        }
        Err(e) if e.code() == ErrorCode::NotFound => {
            // A previous attempt's staged commit must not pass for the current notes.
            if let Ok(mut stale) = repo.find_reference(staging) {
                stale.delete()?;
            }
            None
        }
        Err(e) => return Err(e),
    };
    let text = match repo.find_note(Some(staging), commit) {
        Ok(note) => String::from_utf8_lossy(note.message_bytes()).into_owned(),
        Err(e) if e.code() == ErrorCode::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut note = Note::parse(&text);
    if note.statuses.get(&status.context) == Some(entry) {
        return Ok(());
    }
    note.statuses.insert(status.context.clone(), entry.clone());
    repo.note(
        signature,
        signature,
        Some(staging),
        commit,
        &note.render(),
        true,
    )?;
    let written = repo.refname_to_id(staging)?;
    let message = format!("trainyard: {} on {}", status.context, status.commit);
    // The zero id asks for a ref that does not exist yet, checked under the ref's lock like
    // any other expected value (`force: false` would check before taking the lock).
    let expected = tip.unwrap_or(Oid::ZERO_SHA1);
    repo.reference_matching(NOTES_REF, written, true, expected, &message)?;
    Ok(())
}

fn remove_staging(repo: &Repository, staging: &str) -> Result<(), git2::Error> {
    match repo.find_reference(staging) {
        Ok(mut reference) => reference.delete(),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A ref name no other writer, in this process or another, uses at the same time.
fn staging_ref() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{STAGING_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn open(repo_path: &Path) -> Result<Repository, ForgeError> {
    Repository::open(repo_path).map_err(|e| match e.code() {
        ErrorCode::NotFound => ForgeError::Permanent {
            message: format!("{} is not a Git repository", repo_path.display()),
        },
        _ => git_error("opening the repository", e),
    })
}

/// The id of `commit`, which must be a full commit id of a commit in `repo`: an abbreviation
/// could name another commit later, and a status belongs to exactly one.
fn commit_id(repo: &Repository, commit: &str) -> Result<Oid, ForgeError> {
    let full = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    let unknown = || ForgeError::Permanent {
        message: format!("commit {commit:?} is not in the repository"),
    };
    if !full {
        return Err(ForgeError::Permanent {
            message: format!("{commit:?} is not a full commit id"),
        });
    }
    let oid = Oid::from_str(commit).map_err(|_| unknown())?;
    match repo.find_commit(oid) {
        Ok(_) => Ok(oid),
        Err(e) if e.code() == ErrorCode::NotFound => Err(unknown()),
        Err(e) => Err(git_error("finding the commit", e)),
    }
}

fn note_text(
    repo: &Repository,
    notes_ref: &str,
    commit: Oid,
) -> Result<Option<String>, ForgeError> {
    match repo.find_note(Some(notes_ref), commit) {
        Ok(note) => Ok(Some(
            String::from_utf8_lossy(note.message_bytes()).into_owned(),
        )),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(git_error("reading the note", e)),
    }
}

/// Lock contention and I/O failures pass; anything else (a corrupt object, a bad ref name)
/// will fail the same way again.
fn git_error(doing: &str, e: git2::Error) -> ForgeError {
    let message = format!("{doing}: {}", e.message());
    if matches!(e.code(), ErrorCode::Locked | ErrorCode::Modified) || e.class() == ErrorClass::Os {
        ForgeError::Transient {
            message,
            retry_after: None,
        }
    } else {
        ForgeError::Permanent { message }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::report::suite::{Fixture, ForgeProbe, forge_suite};

    impl ForgeProbe for NotesForge {
        fn statuses(&self, commit: &str) -> Vec<Status> {
            let text = read_note(self.repo.root(), commit)
                .expect("the note is readable")
                .unwrap_or_default();
            Note::parse(&text)
                .statuses
                .into_iter()
                .map(|(context, entry)| Status {
                    commit: commit.to_owned(),
                    context,
                    state: entry.state,
                    description: entry.description,
                    target_url: entry.target_url,
                })
                .collect()
        }

        fn writes(&self) -> usize {
            notes_commits(self.repo.root())
        }
    }

    fn notes_commits(repo_path: &Path) -> usize {
        let repo = Repository::open(repo_path).expect("repository opens");
        let Ok(tip) = repo.refname_to_id(NOTES_REF) else {
            return 0;
        };
        let mut walk = repo.revwalk().expect("revwalk");
        walk.push(tip).expect("push tip");
        walk.count()
    }

    /// A repository with two commits; returns their ids, oldest first.
    fn repository(dir: &Path) -> (String, String) {
        let repo = Repository::init(dir).expect("init");
        let sig = Signature::now("Test", "test@example.com").expect("signature");
        let tree = repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .expect("empty tree");
        let tree = repo.find_tree(tree).expect("tree");
        let first = repo
            .commit(Some("HEAD"), &sig, &sig, "first", &tree, &[])
            .expect("first commit");
        let parent = repo.find_commit(first).expect("first commit exists");
        let second = repo
            .commit(Some("HEAD"), &sig, &sig, "second", &tree, &[&parent])
            .expect("second commit");
        (first.to_string(), second.to_string())
    }

    async fn notes_fixture() -> Fixture<NotesForge> {
        let dir = TempDir::new().expect("temp dir");
        let (commit, other_commit) = repository(dir.path());
        Fixture {
            forge: NotesForge::open(dir.path()).expect("a repository"),
            commit,
            other_commit,
            unknown_commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            _keep: Box::new(dir),
        }
    }

    forge_suite!(notes_fixture);

    fn status(commit: &str, context: &str, state: StatusState, description: &str) -> Status {
        Status {
            commit: commit.to_owned(),
            context: context.to_owned(),
            state,
            description: description.to_owned(),
            target_url: None,
        }
    }

    #[tokio::test]
    async fn the_note_lists_one_line_per_context_sorted_with_url_lines() {
        let f = notes_fixture().await;
        let mut run = status(
            &f.commit,
            "trainyard/run/iris",
            StatusState::Success,
            "run 12 succeeded in 4.1s",
        );
        run.target_url = Some("http://localhost:8080/runs/12".to_owned());
        for s in [
            status(
                &f.commit,
                "trainyard/validate",
                StatusState::Success,
                "2 pipelines, 2 schedules",
            ),
            status(
                &f.commit,
                "trainyard/model/iris-classifier",
                StatusState::Success,
                "version 3 accepted, champion (accuracy 0.93 ≥ 0.85)",
            ),
            run,
        ] {
            f.forge.set_status(&s).await.expect("status set");
        }
        let note = read_note(f.forge.repo.root(), &f.commit)
            .expect("readable")
            .expect("a note");
        assert_eq!(
            note,
            "trainyard/model/iris-classifier: success — version 3 accepted, champion \
             (accuracy 0.93 ≥ 0.85)\n\
             trainyard/run/iris: success — run 12 succeeded in 4.1s\n  \
             url: http://localhost:8080/runs/12\n\
             trainyard/validate: success — 2 pipelines, 2 schedules\n"
        );
    }

    #[tokio::test]
    async fn git_log_shows_the_note() {
        let f = notes_fixture().await;
        f.forge
            .set_status(&status(
                &f.commit,
                "trainyard/validate",
                StatusState::Failure,
                "1 error in pipelines/iris.yaml",
            ))
            .await
            .expect("status set");
        let output = Command::new("git")
            .arg("-C")
            .arg(f.forge.repo.root())
            .args(["log", "--notes=trainyard", "--format=%H%n%N", "-1"])
            .arg(&f.commit)
            .output()
            .expect("git runs");
        assert!(output.status.success(), "{output:?}");
        let shown = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            shown.trim_end(),
            format!(
                "{}\ntrainyard/validate: failure — 1 error in pipelines/iris.yaml",
                f.commit
            )
        );
    }

    #[tokio::test]
    async fn concurrent_writers_keep_each_others_lines() {
        let f = notes_fixture().await;
        let writers = 12;
        let mut tasks = Vec::new();
        for i in 0..writers {
            // A forge per writer, as separate processes would have.
            let forge = Arc::new(NotesForge::open(f.forge.repo.root()).expect("opens"));
            let commit = if i % 2 == 0 {
                &f.commit
            } else {
                &f.other_commit
            };
            let s = status(
                commit,
                &format!("trainyard/run/p{i:02}"),
                StatusState::Pending,
                "queued",
            );
            tasks.push(tokio::spawn(async move { forge.set_status(&s).await }));
        }
        for task in tasks {
            task.await.expect("task ran").expect("status set");
        }
        let on_first = f.forge.statuses(&f.commit);
        let on_other = f.forge.statuses(&f.other_commit);
        assert_eq!(
            on_first.len() + on_other.len(),
            writers,
            "{on_first:?} {on_other:?}"
        );
        assert_eq!(notes_commits(f.forge.repo.root()), writers);
        let repo = Repository::open(f.forge.repo.root()).expect("opens");
        let staging_left = repo
            .references_glob(&format!("{STAGING_PREFIX}*"))
            .expect("glob")
            .count();
        assert_eq!(staging_left, 0, "staging refs are removed");
    }

    #[tokio::test]
    async fn lines_written_by_people_are_kept() {
        let f = notes_fixture().await;
        let repo = Repository::open(f.forge.repo.root()).expect("opens");
        let sig = Signature::now("Ann", "ann@example.com").expect("signature");
        let oid = Oid::from_str(&f.commit).expect("commit id");
        repo.note(
            &sig,
            &sig,
            Some(NOTES_REF),
            oid,
            "Reviewed by Ann.\n",
            false,
        )
        .expect("a person's note");
        f.forge
            .set_status(&status(
                &f.commit,
                "trainyard/plan",
                StatusState::Success,
                "no changes",
            ))
            .await
            .expect("status set");
        let note = read_note(f.forge.repo.root(), &f.commit)
            .expect("readable")
            .expect("a note");
        assert_eq!(
            note,
            "trainyard/plan: success — no changes\nReviewed by Ann.\n"
        );
    }

    #[tokio::test]
    async fn comments_and_permissions_are_refused_and_no_commit_has_a_pull_request() {
        let f = notes_fixture().await;
        assert_eq!(f.forge.pull_request_of(&f.commit).await, Ok(None));
        let err = f
            .forge
            .permission_of("ann")
            .await
            .expect_err("no users here");
        assert!(matches!(err, ForgeError::Permanent { .. }), "{err}");
        let err = f
            .forge
            .upsert_comment(1, "plan", "## Plan")
            .await
            .expect_err("no pull requests here");
        assert_eq!(
            err,
            ForgeError::Permanent {
                message: "pull requests are not available without a forge".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn an_abbreviated_commit_id_or_a_context_that_would_not_read_back_is_refused() {
        let f = notes_fixture().await;
        let short = status(&f.commit[..12], "trainyard/plan", StatusState::Success, "x");
        let err = f.forge.set_status(&short).await.expect_err("abbreviated");
        assert!(matches!(err, ForgeError::Permanent { .. }), "{err}");
        let two_lines = status(&f.commit, "trainyard/plan\nevil", StatusState::Success, "x");
        let err = f.forge.set_status(&two_lines).await.expect_err("two lines");
        assert!(matches!(err, ForgeError::Permanent { .. }), "{err}");
        let ambiguous = status(&f.commit, "ci: pending — a", StatusState::Success, "x");
        let err = f.forge.set_status(&ambiguous).await.expect_err("ambiguous");
        assert!(err.to_string().contains("would not read back"), "{err}");
        assert_eq!(notes_commits(f.forge.repo.root()), 0);
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_repository_is_a_permanent_error() {
        let dir = TempDir::new().expect("temp dir");
        let err = NotesForge::open(&dir.path().join("missing")).expect_err("no repository");
        assert!(matches!(err, ForgeError::Permanent { .. }), "{err}");
    }

    #[test]
    fn status_lines_parse_back_including_contexts_with_colons_and_empty_descriptions() {
        let text = "ci: build: failure — broken: success\n\
                    trainyard/plan: pending\n\
                    trainyard/run/x: error — a — b\n  url: http://h/r\n\
                    free text: not a status\n";
        let note = Note::parse(text);
        assert_eq!(note.statuses["ci: build"].state, StatusState::Failure);
        assert_eq!(note.statuses["ci: build"].description, "broken: success");
        assert_eq!(note.statuses["trainyard/plan"].description, "");
        assert_eq!(note.statuses["trainyard/run/x"].description, "a — b");
        assert_eq!(
            note.statuses["trainyard/run/x"].target_url.as_deref(),
            Some("http://h/r")
        );
        assert_eq!(note.other, ["free text: not a status"]);
        assert_eq!(Note::parse(&note.render()), note);
    }
}
