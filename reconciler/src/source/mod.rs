//! All Git: the followed repository behind one handle ([`Repo`]: heads, fetches of
//! branches and pull request refs, exports, the tree walk for uploads), the branch watcher,
//! and the tracked path read at a Git revision or from the working tree into a
//! [`Snapshot`]: the definition files with their blob ids.
//!
//! Blob contents from Git are read only when asked for, so a caller that caches parsed files
//! by blob id reads only what changed.

mod repo;
mod watch;

pub use repo::{Repo, TreeFile};
pub use watch::BranchWatcher;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use thiserror::Error;

use crate::spec::{Finding, MAX_FILE_BYTES};

/// Most files a snapshot lists; a larger tree is refused rather than read slowly.
pub const MAX_FILES: usize = 200_000;
/// Most symlinks followed in a row.
const MAX_LINK_HOPS: usize = 8;

/// Errors reading a repository.
#[derive(Debug, Error)]
pub enum SourceError {
    /// git2 failed (corrupt object, unreadable repository).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// The path is not inside a Git repository.
    #[error("{path} is not inside a Git repository")]
    NotARepository {
        /// The path given.
        path: PathBuf,
    },
    /// The revision does not name a commit.
    #[error("revision {rev:?} not found: {reason}")]
    RevisionNotFound {
        /// The revision as given.
        rev: String,
        /// What git2 said.
        reason: String,
    },
    /// The tracked path does not exist at that revision.
    #[error("path {path:?} does not exist at {rev}")]
    PathNotFound {
        /// The tracked path.
        path: String,
        /// The revision.
        rev: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The tracked path has more files than a snapshot lists.
    #[error("more than {MAX_FILES} files under the tracked path")]
    TooManyFiles,
    /// The repository could not be watched for new commits.
    #[error("cannot watch the repository: {0}")]
    Watch(String),
    /// Blocking work on the repository did not finish (the runtime is shutting down).
    #[error("git work was interrupted: {0}")]
    Blocking(String),
}

impl SourceError {
    /// Whether trying again later may help: the network, a lock, the file system; not a
    /// missing revision or a corrupt object.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Git(e) => {
                matches!(
                    e.class(),
                    git2::ErrorClass::Net
                        | git2::ErrorClass::Http
                        | git2::ErrorClass::Ssh
                        | git2::ErrorClass::Ssl
                        | git2::ErrorClass::Os
                ) || matches!(e.code(), git2::ErrorCode::Locked)
            }
            SourceError::Io { .. } | SourceError::Blocking(_) => true,
            _ => false,
        }
    }
}

/// Where a file's bytes are.
#[derive(Debug, Clone)]
enum Body {
    /// A blob of the snapshot's repository, read on demand.
    Blob(Oid),
    /// Already read from disk.
    Bytes(Arc<[u8]>),
    /// Not readable: the finding says why.
    Refused(Finding),
}

/// One definition file (`.yaml`, `.yml` or `.rego`) of a snapshot.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the tracked directory, with `/` separators.
    pub path: String,
    /// Git blob id of the content (computed for working-tree files), so caches key on it.
    pub blob: Oid,
    body: Body,
    /// Reached through a symlink: its content can change without its own entry changing.
    linked: bool,
}

impl SourceFile {
    /// Whether the file holds documents (YAML) rather than policy (Rego).
    pub fn is_yaml(&self) -> bool {
        self.path.ends_with(".yaml") || self.path.ends_with(".yml")
    }
}

/// The definition files under the tracked path at one point in history.
pub struct Snapshot {
    /// The commit, when read from Git.
    pub commit: Option<Oid>,
    /// Files in path order.
    pub files: Vec<SourceFile>,
    /// When made by [`Snapshot::advance`]: the commit it advanced from and the paths that
    /// changed since, so a consumer that saw that commit can look at those paths alone.
    pub changed_since: Option<(Oid, Vec<String>)>,
    repo: Option<Repo>,
}

fn is_definition(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".rego")
}

/// Joins `target` to `base` lexically; `None` when `..` would climb above the root.
fn normalize(base: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

impl Snapshot {
    /// Reads the tracked directory `subdir` (relative to the repository root, `""` for the
    /// root) of `repo` at `rev`.
    pub fn at_revision(repo: &Repo, rev: &str, subdir: &str) -> Result<Snapshot, SourceError> {
        let (commit, files) = list_revision(&repo.git(), rev, subdir)?;
        Ok(Snapshot {
            commit: Some(commit),
            files,
            changed_since: None,
            repo: Some(repo.clone()),
        })
    }

    /// The snapshot of `rev`, listed by diffing its tree against this snapshot's: only the
    /// entries that changed are looked at, so following a branch costs what a commit
    /// changes, not what the repository holds. Falls back to a full listing where a diff
    /// cannot tell (no previous commit, symlinks, a moved tracked directory).
    pub fn advance(self, rev: &str, subdir: &str) -> Result<Snapshot, SourceError> {
        let (Some(repo), Some(old)) = (self.repo, self.commit) else {
            return Err(SourceError::Git(git2::Error::from_str(
                "only a snapshot read from Git can advance",
            )));
        };
        if self.files.iter().any(|f| f.linked) {
            return Snapshot::at_revision(&repo, rev, subdir);
        }
        let delta = diff_listing(&repo.git(), old, rev, subdir)?;
        let Some((commit, changes)) = delta else {
            return Snapshot::at_revision(&repo, rev, subdir);
        };
        let mut files = self.files;
        let paths: Vec<String> = changes.iter().map(|(path, _)| path.clone()).collect();
        for (path, blob) in changes {
            match (files.binary_search_by(|f| f.path.as_str().cmp(&path)), blob) {
                (Ok(i), Some(blob)) => {
                    files[i] = SourceFile {
                        path,
                        blob,
                        body: Body::Blob(blob),
                        linked: false,
                    }
                }
                (Err(i), Some(blob)) => files.insert(
                    i,
                    SourceFile {
                        path,
                        blob,
                        body: Body::Blob(blob),
                        linked: false,
                    },
                ),
                (Ok(i), None) => {
                    files.remove(i);
                }
                (Err(_), None) => {}
            }
        }
        if files.len() > MAX_FILES {
            return Err(SourceError::TooManyFiles);
        }
        Ok(Snapshot {
            commit: Some(commit),
            files,
            changed_since: Some((old, paths)),
            repo: Some(repo),
        })
    }

    /// Reads the definition files under `dir` on disk.
    pub fn from_work_tree(dir: &Path) -> Result<Snapshot, SourceError> {
        let root = dir.canonicalize().map_err(|source| SourceError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut files = Vec::new();
        walk_dir(&root, &root, &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Snapshot {
            commit: None,
            files,
            changed_since: None,
            repo: None,
        })
    }

    /// The bytes of `file`, or the finding that says why it cannot be read.
    pub fn read(&self, file: &SourceFile) -> Result<Arc<[u8]>, ReadProblem> {
        match &file.body {
            Body::Bytes(bytes) => Ok(bytes.clone()),
            Body::Refused(finding) => Err(ReadProblem::Refused(finding.clone())),
            Body::Blob(oid) => {
                let repo = self.repo.as_ref().ok_or_else(|| {
                    ReadProblem::Failed(SourceError::Git(git2::Error::from_str(
                        "snapshot has no repository",
                    )))
                })?;
                // The size comes from the object header, so an oversize blob is never inflated.
                let failed = |e: git2::Error| ReadProblem::Failed(e.into());
                let repo = repo.git();
                let (size, _) = repo
                    .odb()
                    .and_then(|odb| odb.read_header(*oid))
                    .map_err(failed)?;
                if size as u64 > MAX_FILE_BYTES {
                    return Err(ReadProblem::Refused(too_large(size as u64)));
                }
                let blob = repo.find_blob(*oid).map_err(failed)?;
                Ok(Arc::from(blob.content()))
            }
        }
    }

    /// The file at `path`, if the snapshot lists it.
    pub fn file(&self, path: &str) -> Option<&SourceFile> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// Why a file's bytes are not available.
#[derive(Debug)]
pub enum ReadProblem {
    /// The file is refused (too large, a symlink leaving the repository): report it.
    Refused(Finding),
    /// Reading failed: the snapshot is unusable.
    Failed(SourceError),
}

/// Lists the definition files of `subdir` at `rev`, returning the commit id too.
fn list_revision(
    repo: &Repository,
    rev: &str,
    subdir: &str,
) -> Result<(Oid, Vec<SourceFile>), SourceError> {
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| SourceError::RevisionNotFound {
            rev: rev.to_owned(),
            reason: e.message().to_owned(),
        })?;
    let commit_id = commit.id();
    let root = commit.tree()?;
    let tree = if subdir.is_empty() {
        root
    } else {
        let entry = root
            .get_path(Path::new(subdir))
            .map_err(|_| SourceError::PathNotFound {
                path: subdir.to_owned(),
                rev: rev.to_owned(),
            })?;
        entry
            .to_object(repo)?
            .into_tree()
            .map_err(|_| SourceError::PathNotFound {
                path: subdir.to_owned(),
                rev: rev.to_owned(),
            })?
    };
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut too_many = false;
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let Ok(name) = entry.name() else {
            return TreeWalkResult::Skip;
        };
        if name.starts_with('.') {
            return TreeWalkResult::Skip;
        }
        if entry.kind() != Some(ObjectType::Blob) || !is_definition(name) {
            return TreeWalkResult::Ok;
        }
        if files.len() + links.len() >= MAX_FILES {
            too_many = true;
            return TreeWalkResult::Abort;
        }
        let path = format!("{dir}{name}");
        if entry.filemode() == 0o120000 {
            links.push((path, entry.id()));
        } else {
            files.push(SourceFile {
                path,
                blob: entry.id(),
                body: Body::Blob(entry.id()),
                linked: false,
            });
        }
        TreeWalkResult::Ok
    })?;
    if too_many {
        return Err(SourceError::TooManyFiles);
    }
    for (path, link) in links {
        files.push(resolve_git_link(repo, &tree, path, link)?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((commit_id, files))
}

/// Changed paths with their new blob, `None` for deleted ones.
type Delta = Vec<(String, Option<Oid>)>;

/// The tree of the tracked directory at `commit`, if it exists there.
fn tracked_tree<'r>(
    repo: &'r Repository,
    commit: &git2::Commit<'r>,
    subdir: &str,
) -> Result<Option<git2::Tree<'r>>, git2::Error> {
    let root = commit.tree()?;
    if subdir.is_empty() {
        return Ok(Some(root));
    }
    match root.get_path(Path::new(subdir)) {
        Ok(entry) => Ok(entry.to_object(repo)?.into_tree().ok()),
        Err(_) => Ok(None),
    }
}

/// The commit of `rev` and the definition files that changed under `subdir` since `old`
/// (`None` blob: deleted), or `None` when a diff cannot tell and a full listing is needed.
fn diff_listing(
    repo: &Repository,
    old: Oid,
    rev: &str,
    subdir: &str,
) -> Result<Option<(Oid, Delta)>, SourceError> {
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| SourceError::RevisionNotFound {
            rev: rev.to_owned(),
            reason: e.message().to_owned(),
        })?;
    let (Some(old_tree), Some(new_tree)) = (
        tracked_tree(repo, &repo.find_commit(old)?, subdir)?,
        tracked_tree(repo, &commit, subdir)?,
    ) else {
        return Ok(None);
    };
    let diff = repo.diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)?;
    let mut changes = Vec::new();
    for delta in diff.deltas() {
        let (old_file, new_file) = (delta.old_file(), delta.new_file());
        if old_file.mode() == git2::FileMode::Link || new_file.mode() == git2::FileMode::Link {
            return Ok(None);
        }
        let (file, blob) = match delta.status() {
            git2::Delta::Deleted => (old_file, None),
            git2::Delta::Added | git2::Delta::Modified | git2::Delta::Typechange => {
                let is_blob = matches!(
                    new_file.mode(),
                    git2::FileMode::Blob | git2::FileMode::BlobExecutable
                );
                let id = new_file.id();
                (new_file, is_blob.then_some(id))
            }
            _ => continue,
        };
        let Some(path) = file.path().and_then(Path::to_str) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if path.split('/').any(|part| part.starts_with('.')) || !is_definition(name) {
            continue;
        }
        changes.push((path.to_owned(), blob));
    }
    Ok(Some((commit.id(), changes)))
}

fn too_large(size: u64) -> Finding {
    Finding::file_error(
        "file-too-large",
        format!("file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes"),
    )
}

fn resolve_git_link(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    path: String,
    link: Oid,
) -> Result<SourceFile, SourceError> {
    let mut current = path.clone();
    let mut blob = link;
    for _ in 0..MAX_LINK_HOPS {
        let target_bytes = repo.find_blob(blob)?.content().to_vec();
        let target = String::from_utf8_lossy(&target_bytes).into_owned();
        let refused = |why: String| SourceFile {
            path: path.clone(),
            blob: link,
            body: Body::Refused(Finding::file_error("symlink", why)),
            linked: true,
        };
        let Some(resolved) = normalize(parent(&current), &target) else {
            return Ok(refused(format!(
                "symlink to {target:?} leaves the tracked directory; it is not followed"
            )));
        };
        let Ok(entry) = tree.get_path(Path::new(&resolved)) else {
            return Ok(refused(format!("symlink to {target:?} points at nothing")));
        };
        match (entry.kind(), entry.filemode()) {
            (Some(ObjectType::Blob), 0o120000) => {
                current = resolved;
                blob = entry.id();
            }
            (Some(ObjectType::Blob), _) => {
                return Ok(SourceFile {
                    path,
                    blob: entry.id(),
                    body: Body::Blob(entry.id()),
                    linked: true,
                });
            }
            _ => return Ok(refused(format!("symlink to {target:?} is not a file"))),
        }
    }
    Ok(SourceFile {
        path,
        blob: link,
        body: Body::Refused(Finding::file_error("symlink", "too many symlinks in a row")),
        linked: true,
    })
}

fn walk_dir(root: &Path, dir: &Path, files: &mut Vec<SourceFile>) -> Result<(), SourceError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Io { path, source }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = entry.file_type().map_err(io(&path))?;
        if meta.is_dir() {
            walk_dir(root, &path, files)?;
            continue;
        }
        if !is_definition(name) {
            continue;
        }
        if files.len() >= MAX_FILES {
            return Err(SourceError::TooManyFiles);
        }
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => p.to_str(),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/");
        let real = if meta.is_symlink() {
            match path.canonicalize() {
                Ok(real) if real.starts_with(root) && real.is_file() => real,
                Ok(real) if real.starts_with(root) => {
                    files.push(refused_file(relative, "symlink does not point at a file"));
                    continue;
                }
                Ok(_) => {
                    let why = "symlink leaves the tracked directory; it is not followed";
                    files.push(refused_file(relative, why));
                    continue;
                }
                Err(_) => {
                    files.push(refused_file(relative, "symlink points at nothing"));
                    continue;
                }
            }
        } else {
            path
        };
        let size = std::fs::metadata(&real).map_err(io(&real))?.len();
        if size > MAX_FILE_BYTES {
            files.push(SourceFile {
                path: relative,
                blob: Oid::ZERO_SHA1,
                body: Body::Refused(too_large(size)),
                linked: false,
            });
            continue;
        }
        let bytes = std::fs::read(&real).map_err(io(&real))?;
        let blob = Oid::hash_object(ObjectType::Blob, &bytes)?;
        files.push(SourceFile {
            path: relative,
            blob,
            body: Body::Bytes(Arc::from(bytes)),
            linked: false,
        });
    }
    Ok(())
}

fn refused_file(path: String, why: &str) -> SourceFile {
    SourceFile {
        path,
        blob: Oid::ZERO_SHA1,
        body: Body::Refused(Finding::file_error("symlink", why)),
        linked: false,
    }
}

/// Opens the repository containing `path` and returns it with `path` relative to its work
/// tree's root (with `/` separators, `""` for the root itself).
pub fn discover(path: &Path) -> Result<(Repo, String), SourceError> {
    let repo = Repository::discover(path).map_err(|_| SourceError::NotARepository {
        path: path.to_owned(),
    })?;
    let workdir = repo
        .workdir()
        .ok_or_else(|| SourceError::NotARepository {
            path: path.to_owned(),
        })?
        .canonicalize()
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            source,
        })?;
    let absolute = path.canonicalize().map_err(|source| SourceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let relative = absolute
        .strip_prefix(&workdir)
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(p) => p.to_str(),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default();
    Ok((Repo::from_git(repo, workdir, None), relative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Signature;

    /// Commits `files` (path, content) to a fresh repository and returns it with its dir.
    fn repo_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        for (path, content) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, content).expect("write");
        }
        commit_all(&repo, "first");
        (dir, repo)
    }

    /// The one handle a snapshot reads through.
    fn handle(repo: Repository) -> Repo {
        let root = repo.path().to_path_buf();
        Repo::from_git(repo, root, None)
    }

    fn commit_all(repo: &Repository, message: &str) -> Oid {
        let mut index = repo.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("find tree");
        let sig = Signature::now("t", "t@example.com").expect("sig");
        let parents: Vec<git2::Commit<'_>> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
    }

    #[test]
    fn a_revision_lists_definition_files_of_the_subdir_and_skips_hidden_ones() {
        let (_dir, repo) = repo_with(&[
            ("defs/a.yaml", b"x: 1"),
            ("defs/sub/b.yml", b"y: 2"),
            ("defs/p.rego", b"package p"),
            ("defs/notes.txt", b"no"),
            ("defs/.hidden/c.yaml", b"z"),
            ("other.yaml", b"w"),
        ]);
        let snap = Snapshot::at_revision(&handle(repo), "HEAD", "defs").expect("snapshot");
        let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.yaml", "p.rego", "sub/b.yml"]);
        let bytes = snap.read(&snap.files[0]).expect("readable");
        assert_eq!(&*bytes, b"x: 1");
    }

    #[test]
    fn blob_ids_match_between_git_and_the_work_tree() {
        let (dir, repo) = repo_with(&[("a.yaml", b"x: 1\n")]);
        let from_git = Snapshot::at_revision(&handle(repo), "HEAD", "").expect("snapshot");
        let from_disk = Snapshot::from_work_tree(dir.path()).expect("snapshot");
        assert_eq!(from_git.files[0].blob, from_disk.files[0].blob);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_that_leave_the_tracked_directory_are_refused_in_git_and_on_disk() {
        let (dir, repo) = repo_with(&[("defs/ok.yaml", b"x: 1"), ("secret.yaml", b"s")]);
        std::os::unix::fs::symlink("../secret.yaml", dir.path().join("defs/escape.yaml"))
            .expect("link");
        std::os::unix::fs::symlink("ok.yaml", dir.path().join("defs/inside.yaml")).expect("link");
        commit_all(&repo, "links");
        let snap = Snapshot::at_revision(&handle(repo), "HEAD", "defs").expect("snapshot");
        let escape = snap.file("escape.yaml").expect("listed");
        assert!(matches!(snap.read(escape), Err(ReadProblem::Refused(f)) if f.code == "symlink"));
        let inside = snap.file("inside.yaml").expect("listed");
        assert_eq!(&*snap.read(inside).expect("followed"), b"x: 1");

        let disk = Snapshot::from_work_tree(&dir.path().join("defs")).expect("snapshot");
        assert!(matches!(
            disk.read(disk.file("escape.yaml").expect("listed")),
            Err(ReadProblem::Refused(_))
        ));
        assert_eq!(
            &*disk
                .read(disk.file("inside.yaml").expect("listed"))
                .expect("followed"),
            b"x: 1"
        );
    }

    #[test]
    fn oversize_blobs_are_refused_without_reading_them() {
        let big = vec![b'#'; MAX_FILE_BYTES as usize + 1];
        let (_dir, repo) = repo_with(&[("big.yaml", &big)]);
        let snap = Snapshot::at_revision(&handle(repo), "HEAD", "").expect("snapshot");
        assert!(
            matches!(snap.read(&snap.files[0]), Err(ReadProblem::Refused(f)) if f.code == "file-too-large")
        );
    }

    #[test]
    fn unknown_revisions_and_paths_are_errors() {
        let (dir, repo) = repo_with(&[("a.yaml", b"x")]);
        assert!(matches!(
            Snapshot::at_revision(&handle(repo), "nope", ""),
            Err(SourceError::RevisionNotFound { .. })
        ));
        let repo = Repository::open(dir.path()).expect("open");
        assert!(matches!(
            Snapshot::at_revision(&handle(repo), "HEAD", "missing"),
            Err(SourceError::PathNotFound { .. })
        ));
    }

    #[test]
    fn discover_finds_the_repository_and_the_relative_path() {
        let (dir, _repo) = repo_with(&[("defs/a.yaml", b"x")]);
        let (_, relative) = discover(&dir.path().join("defs")).expect("found");
        assert_eq!(relative, "defs");
    }

    /// Files to write (`Some`) or delete (`None`) in one commit.
    type Edit<'a> = &'a [(&'a str, Option<&'a [u8]>)];

    fn listing(snapshot: &Snapshot) -> Vec<(String, Oid)> {
        snapshot
            .files
            .iter()
            .map(|f| (f.path.clone(), f.blob))
            .collect()
    }

    #[test]
    fn advancing_lists_what_a_full_listing_does() {
        let (dir, repo) = repo_with(&[
            ("defs/a.yaml", b"a"),
            ("defs/b/c.yml", b"c"),
            ("defs/d.yaml", b"d"),
            ("x.yaml", b"x"),
        ]);
        let mut snapshot = Snapshot::at_revision(&handle(repo), "HEAD", "defs").expect("snapshot");
        let edits: [Edit<'_>; 4] = [
            &[
                ("defs/a.yaml", Some(b"a2")),
                ("defs/new/e.yaml", Some(b"e")),
                ("defs/d.yaml", None),
            ],
            &[
                ("defs/.hidden/h.yaml", Some(b"h")),
                ("defs/notes.txt", Some(b"t")),
                ("x.yaml", Some(b"x2")),
            ],
            &[("defs/b/c.yml", None), ("defs/p.rego", Some(b"package p"))],
            &[],
        ];
        for edit in edits {
            for (path, content) in edit {
                let full = dir.path().join(path);
                match content {
                    Some(bytes) => {
                        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
                        std::fs::write(&full, bytes).expect("write");
                    }
                    None => std::fs::remove_file(&full).expect("remove"),
                }
            }
            let repo = Repository::open(dir.path()).expect("open");
            let mut index = repo.index().expect("index");
            index
                .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
                .expect("add");
            index.update_all(["*"], None).expect("update");
            index.write().expect("write index");
            commit_all(&repo, "edit");
            snapshot = snapshot.advance("HEAD", "defs").expect("advance");
            let full =
                Snapshot::at_revision(&Repo::open(dir.path()).expect("open"), "HEAD", "defs")
                    .expect("snapshot");
            assert_eq!(listing(&snapshot), listing(&full));
            assert_eq!(snapshot.commit, full.commit);
            let changed = snapshot
                .changed_since
                .as_ref()
                .map(|(_, paths)| paths.len());
            assert_eq!(
                changed,
                Some(
                    edit.iter()
                        .filter(|(p, _)| p.starts_with("defs/")
                            && !p.contains(".hidden")
                            && !p.ends_with(".txt"))
                        .count()
                )
            );
            let first = snapshot.files.first().expect("a file");
            assert_eq!(snapshot.read(first).ok(), full.read(first).ok());
        }
    }

    #[cfg(unix)]
    #[test]
    fn advancing_past_a_symlink_follows_its_target() {
        let (dir, repo) = repo_with(&[("ok.yaml", b"v1")]);
        std::os::unix::fs::symlink("ok.yaml", dir.path().join("link.yaml")).expect("link");
        commit_all(&repo, "link");
        let snapshot = Snapshot::at_revision(&handle(repo), "HEAD", "").expect("snapshot");
        std::fs::write(dir.path().join("ok.yaml"), b"v2").expect("write");
        let repo = Repository::open(dir.path()).expect("open");
        commit_all(&repo, "edit target");
        let snapshot = snapshot.advance("HEAD", "").expect("advance");
        let link = snapshot.file("link.yaml").expect("listed");
        assert_eq!(&*snapshot.read(link).expect("readable"), b"v2");
    }

    #[test]
    fn link_targets_are_normalized_lexically() {
        assert_eq!(normalize("a/b", "../c.yaml").as_deref(), Some("a/c.yaml"));
        assert_eq!(normalize("a", "../../c.yaml"), None);
        assert_eq!(normalize("", "/etc/passwd"), None);
    }
}
