//! Wakes the service when a local repository's branches move, so a commit is applied at once
//! rather than at the next poll.

use std::path::{Path, PathBuf};

use notify::EventKind;

use super::SourceError;

/// Watches the references of one repository and says when one may have moved.
pub struct BranchWatcher {
    _watcher: notify::RecommendedWatcher,
    changes: tokio::sync::mpsc::Receiver<()>,
}

impl BranchWatcher {
    /// Watches `HEAD`, `packed-refs` and everything under `refs/heads` of the repository
    /// whose git directory is `git_dir`. Object writes are ignored, and so is every event
    /// that does not change a file: the service itself reads `HEAD` on each look at the
    /// branch, and a watcher woken by reads would wake the loop for ever.
    pub fn new(git_dir: &Path) -> Result<Self, SourceError> {
        use notify::Watcher as _;
        let (tx, changes) = tokio::sync::mpsc::channel(1);
        let heads = git_dir.join("refs").join("heads");
        let watched_heads = heads.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if moves_a_ref(&event, &watched_heads) {
                    // A full channel already holds a wake-up; one is enough.
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| SourceError::Watch(e.to_string()))?;
        let mut watch = |path: &Path, mode| {
            watcher
                .watch(path, mode)
                .map_err(|e| SourceError::Watch(e.to_string()))
        };
        watch(git_dir, notify::RecursiveMode::NonRecursive)?;
        if heads.is_dir() {
            watch(&heads, notify::RecursiveMode::Recursive)?;
        }
        Ok(BranchWatcher {
            _watcher: watcher,
            changes,
        })
    }

    /// Completes when a reference may have moved since the last call.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            // The watcher's thread is gone: nothing will say so again.
            std::future::pending::<()>().await;
        }
    }
}

/// Whether `event` changed `HEAD`, `packed-refs` or a branch under `heads`.
fn moves_a_ref(event: &notify::Event, heads: &PathBuf) -> bool {
    let writes = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Any
            | EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
    );
    writes
        && event.paths.iter().any(|p| {
            p.starts_with(heads)
                || p.file_name()
                    .is_some_and(|n| n == "HEAD" || n == "packed-refs")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn reading_head_does_not_count_as_a_move() {
        let heads = PathBuf::from("/r/.git/refs/heads");
        for access in [
            AccessKind::Open(AccessMode::Read),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Read,
        ] {
            assert!(!moves_a_ref(
                &event(EventKind::Access(access), "/r/.git/HEAD"),
                &heads
            ));
        }
    }

    #[test]
    fn writing_a_branch_head_or_packed_refs_counts() {
        let heads = PathBuf::from("/r/.git/refs/heads");
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(moves_a_ref(
            &event(renamed, "/r/.git/refs/heads/main"),
            &heads
        ));
        assert!(moves_a_ref(
            &event(EventKind::Create(CreateKind::File), "/r/.git/packed-refs"),
            &heads
        ));
        assert!(!moves_a_ref(
            &event(EventKind::Create(CreateKind::File), "/r/.git/objects/ab/cd"),
            &heads
        ));
    }
}
