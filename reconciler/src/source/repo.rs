//! The followed repository behind one handle, opened once: branch heads, fetches from the
//! remote (branches and pull request heads), exports of a commit into a directory, and the
//! tree walk that uploads a step's source. Every call is blocking; async code goes through
//! [`Repo::run`], which does the work on Tokio's blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use git2::{Oid, Repository};

use super::SourceError;

/// The repository the service follows: a work tree, or the bare cache of a remote. Cheap to
/// clone; clones share the one open repository (libgit2 re-reads references and refreshes
/// its packs on a miss, so a long-lived handle sees new commits).
#[derive(Clone)]
pub struct Repo {
    git: Arc<Mutex<Repository>>,
    /// The work tree's root, or the bare repository's directory.
    root: PathBuf,
    /// The URL fetches come from, for the bare cache of a remote.
    remote: Option<String>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("root", &self.root)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// A regular file of a commit's tree, as a step's source upload lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path from the tree's root, `/`-separated, as Git stores it.
    pub path: Vec<u8>,
    /// Its blob.
    pub blob: Oid,
    /// Whether Git records it as executable.
    pub executable: bool,
}

impl Repo {
    /// Opens the repository at `path` (a work tree or a bare repository).
    pub fn open(path: &Path) -> Result<Repo, SourceError> {
        let git = Repository::open(path).map_err(|_| SourceError::NotARepository {
            path: path.to_owned(),
        })?;
        Ok(Repo::from_git(git, path.to_owned(), None))
    }

    /// The bare cache of `url` at `cache`, cloned first if it is not one yet; fetches come
    /// from `url`.
    pub fn cache_of(url: &str, cache: &Path) -> Result<Repo, SourceError> {
        let git = match Repository::open_bare(cache) {
            Ok(git) => git,
            Err(_) => git2::build::RepoBuilder::new()
                .bare(true)
                .clone(url, cache)?,
        };
        Ok(Repo::from_git(git, cache.to_owned(), Some(url.to_owned())))
    }

    /// Wraps an open repository whose root is `root`.
    pub fn from_git(git: Repository, root: PathBuf, remote: Option<String>) -> Repo {
        Repo {
            git: Arc::new(Mutex::new(git)),
            root,
            remote,
        }
    }

    /// The work tree's root, or the bare repository's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The URL fetches come from, when this is the cache of a remote.
    pub fn remote(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// The repository itself, for one blocking piece of work. Callers never hold it across an
    /// await point.
    pub fn git(&self) -> MutexGuard<'_, Repository> {
        // libgit2 calls do not panic half-way through our state; a poisoned lock guards a
        // repository that is as good as before.
        self.git.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` on a blocking thread, so that Git and file-system work never stalls the
    /// async worker threads.
    pub async fn run<T, E, W>(&self, work: W) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SourceError> + Send + 'static,
        W: FnOnce(&Repo) -> Result<T, E> + Send + 'static,
    {
        let repo = self.clone();
        tokio::task::spawn_blocking(move || work(&repo))
            .await
            .map_err(|e| E::from(SourceError::Blocking(e.to_string())))?
    }

    /// The git directory (`.git` of a work tree, or the bare repository itself).
    pub fn git_dir(&self) -> PathBuf {
        self.git().path().to_path_buf()
    }

    /// Brings every branch of the bare cache up to date with the remote; nothing without one.
    pub fn fetch_branches(&self) -> Result<(), SourceError> {
        let Some(url) = &self.remote else {
            return Ok(());
        };
        let git = self.git();
        let mut remote = git.remote_anonymous(url)?;
        remote.fetch(&["+refs/heads/*:refs/heads/*"], None, None)?;
        Ok(())
    }

    /// Brings pull request `number`'s head (`refs/pull/N/head`, which also holds the heads
    /// of forks) into `local_ref`, and branch `base`, from the remote. Nothing is pushed;
    /// nothing happens without a remote.
    pub fn fetch_pull(&self, number: u64, base: &str, local_ref: &str) -> Result<(), SourceError> {
        let Some(url) = &self.remote else {
            return Ok(());
        };
        let git = self.git();
        let mut remote = git.remote_anonymous(url)?;
        let head = format!("+refs/pull/{number}/head:{local_ref}");
        let base = format!("+refs/heads/{base}:refs/heads/{base}");
        remote.fetch(&[head.as_str(), base.as_str()], None, None)?;
        Ok(())
    }

    /// The branch followed: `branch` when given, else the one `HEAD` points at (`None` for a
    /// detached `HEAD`).
    pub fn followed_branch(&self, branch: Option<&str>) -> Result<Option<String>, SourceError> {
        if let Some(branch) = branch {
            return Ok(Some(branch.to_owned()));
        }
        let git = self.git();
        let head = git.find_reference("HEAD")?;
        Ok(head
            .symbolic_target()?
            .and_then(|t| t.strip_prefix("refs/heads/"))
            .map(str::to_owned))
    }

    /// The commit at the head of `branch`, or of `HEAD` without one.
    pub fn head_of(&self, branch: Option<&str>) -> Result<String, SourceError> {
        let git = self.git();
        let commit = match branch {
            Some(branch) => git
                .find_branch(branch, git2::BranchType::Local)?
                .get()
                .peel_to_commit()?,
            None => git.head()?.peel_to_commit()?,
        };
        Ok(commit.id().to_string())
    }

    /// Whether `sha` names a commit the repository holds.
    pub fn has_commit(&self, sha: &str) -> bool {
        let git = self.git();
        Oid::from_str(sha)
            .ok()
            .is_some_and(|oid| git.find_commit(oid).is_ok())
    }

    /// The commit a reference points at, if the reference exists.
    pub fn commit_of_ref(&self, name: &str) -> Result<Option<String>, SourceError> {
        let git = self.git();
        let Ok(reference) = git.find_reference(name) else {
            return Ok(None);
        };
        Ok(Some(reference.peel_to_commit()?.id().to_string()))
    }

    /// Writes the files of `commit` into `target`, which must not exist: they are written
    /// beside it first and moved into place, so `target` is either whole or absent.
    pub fn export(&self, commit: &str, target: &Path) -> Result<(), SourceError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SourceError::Io { path, source }
        };
        let partial = target.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        {
            let git = self.git();
            let tree = git.find_commit(Oid::from_str(commit)?)?.tree()?;
            let mut options = git2::build::CheckoutBuilder::new();
            options.target_dir(&partial).force().recreate_missing(true);
            git.checkout_tree(tree.as_object(), Some(&mut options))?;
        }
        std::fs::rename(&partial, target).map_err(io(target))?;
        Ok(())
    }

    /// The id of the tree at `subdir` (`""`: the root) of `commit`, with every regular file
    /// under it. Symbolic links and submodules are left out (and logged): a link may point
    /// anywhere on this machine, which a pod cannot see.
    pub fn tree_files(
        &self,
        commit: &str,
        subdir: &str,
    ) -> Result<(String, Vec<TreeFile>), SourceError> {
        let git = self.git();
        let root = git.find_commit(Oid::from_str(commit)?)?.tree()?;
        let tree = if subdir.is_empty() {
            root
        } else {
            root.get_path(Path::new(subdir))?
                .to_object(&git)?
                .peel_to_tree()?
        };
        let mut files = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            let mode = entry.filemode();
            if entry.kind() != Some(git2::ObjectType::Blob) {
                if entry.kind() == Some(git2::ObjectType::Commit) {
                    tracing::warn!(path = %format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes())), "submodule not uploaded with the step source");
                }
                return git2::TreeWalkResult::Ok;
            }
            let mut path = dir.as_bytes().to_vec();
            path.extend_from_slice(entry.name_bytes());
            if mode == i32::from(git2::FileMode::Link) {
                tracing::warn!(path = %String::from_utf8_lossy(&path), "symbolic link not uploaded with the step source");
                return git2::TreeWalkResult::Ok;
            }
            files.push(TreeFile {
                path,
                blob: entry.id(),
                executable: mode == i32::from(git2::FileMode::BlobExecutable),
            });
            git2::TreeWalkResult::Ok
        })?;
        Ok((tree.id().to_string(), files))
    }

    /// The content of `path` under `subdir` (`""`: the root) at `commit`, if it is a file
    /// there.
    pub fn file_at(
        &self,
        commit: &str,
        subdir: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let git = self.git();
        let tree = git.find_commit(Oid::from_str(commit)?)?.tree()?;
        let full = Path::new(subdir).join(path);
        let Ok(entry) = tree.get_path(&full) else {
            return Ok(None);
        };
        match entry.to_object(&git)?.into_blob() {
            Ok(blob) => Ok(Some(blob.content().to_vec())),
            Err(_) => Ok(None),
        }
    }

    /// The content of blob `blob`.
    pub fn blob(&self, blob: Oid) -> Result<Vec<u8>, SourceError> {
        Ok(self.git().find_blob(blob)?.content().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Signature;

    fn commit_all(git: &Repository, message: &str) -> String {
        let mut index = git.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.write().expect("write index");
        let tree = git
            .find_tree(index.write_tree().expect("tree"))
            .expect("find tree");
        let sig = Signature::now("t", "t@example.com").expect("sig");
        let parent = git.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        git.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
            .to_string()
    }

    #[test]
    fn a_handle_opened_once_sees_commits_made_after_it_was_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Repository::init(dir.path()).expect("init");
        std::fs::write(dir.path().join("a.yaml"), "a: 1\n").expect("write");
        let first = commit_all(&git, "first");
        let repo = Repo::open(dir.path()).expect("open");
        assert_eq!(repo.head_of(None).expect("head"), first);
        std::fs::write(dir.path().join("b.yaml"), "b: 1\n").expect("write");
        let second = commit_all(&git, "second");
        assert_eq!(repo.head_of(None).expect("head"), second);
        assert!(repo.has_commit(&second));
        assert!(!repo.has_commit(&"0".repeat(40)));
    }

    #[test]
    fn an_export_is_whole_and_holds_the_commits_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Repository::init(dir.path()).expect("init");
        std::fs::create_dir_all(dir.path().join("p")).expect("mkdir");
        std::fs::write(dir.path().join("p/train.py"), "print(1)\n").expect("write");
        let commit = commit_all(&git, "first");
        let repo = Repo::open(dir.path()).expect("open");
        let out = tempfile::tempdir().expect("tempdir");
        let target = out.path().join(&commit);
        repo.export(&commit, &target).expect("export");
        assert_eq!(
            std::fs::read_to_string(target.join("p/train.py")).expect("read"),
            "print(1)\n"
        );
        assert!(!target.with_extension("partial").exists());
    }

    #[test]
    fn the_tree_walk_lists_regular_files_with_their_modes_and_skips_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = Repository::init(dir.path()).expect("init");
        std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/run.sh"), "#!/bin/sh\n").expect("write");
        std::fs::write(dir.path().join("src/data.csv"), "a\n").expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            dir.path().join("src/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("src/link")).expect("link");
        let commit = commit_all(&git, "first");
        let repo = Repo::open(dir.path()).expect("open");
        let (tree, files) = repo.tree_files(&commit, "src").expect("walk");
        assert_eq!(tree.len(), 40);
        let listed: Vec<(String, bool)> = files
            .iter()
            .map(|f| (String::from_utf8_lossy(&f.path).into_owned(), f.executable))
            .collect();
        assert_eq!(
            listed,
            [("data.csv".to_owned(), false), ("run.sh".to_owned(), true)]
        );
        assert_eq!(repo.blob(files[1].blob).expect("blob"), b"#!/bin/sh\n");
    }
}
