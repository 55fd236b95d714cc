//! Following the branch: fetch it (for a remote), read its head, and when the head is new,
//! evaluate its definitions and apply the commit to the declared state in one transaction.
//!
//! The object is the followed branch. A repository that cannot be reached changes nothing
//! and is tried again with backoff; a commit with errors is applied as far as the rules
//! allow (files with errors keep their last good documents) and says so in its status.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use super::{Backoff, Pass, RuntimeError, Stop};
use crate::apply;
use crate::config::Config;
use crate::definitions::{Evaluation, SharedDefinitions};
use crate::source::{Repo, Snapshot};
use crate::spec::Catalog;
use crate::spec::catalog::Entry;
use crate::store::{Store, StoreError};

/// Backoff key of the branch: there is one object.
const BRANCH: &str = "branch";

/// The sub-reconciler that follows the branch.
pub(super) struct Follow {
    repo: Repo,
    store: Store,
    definitions: SharedDefinitions,
    branch: Option<String>,
    subdir: String,
    instance: Option<String>,
    /// The declared state: the last applied commit's documents, with the last good version
    /// of failing files.
    declared: Catalog,
    /// The last snapshot read, so the next one is read by its delta.
    snapshot: Option<Snapshot>,
    /// Pipelines whose stored current definition cannot be read, with that version: the
    /// next commit declaring the same version repairs the row, and must not count it as a
    /// change that starts an `on_change` run again.
    unreadable: BTreeMap<String, String>,
    backoff: Backoff,
    errors: u64,
}

impl Follow {
    /// Follows `config`'s branch of `repo`, starting from `declared` (the declared state in
    /// the store, as [`declared_state`] reads it).
    pub(super) fn new(
        repo: Repo,
        store: Store,
        definitions: SharedDefinitions,
        config: &Config,
        (declared, unreadable): (Catalog, BTreeMap<String, String>),
    ) -> Follow {
        Follow {
            repo,
            store,
            definitions,
            branch: config.branch.clone(),
            subdir: config.subdir.clone(),
            instance: config.instance.clone(),
            declared,
            snapshot: None,
            unreadable,
            backoff: Backoff::default(),
            errors: 0,
        }
    }

    /// Whether the branch comes from a remote, which only polling notices.
    pub(super) fn remote(&self) -> bool {
        self.repo.remote().is_some()
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Reads the declared state back from the store, and looks at the head afresh.
    pub(super) async fn reload(&mut self) -> Result<(), StoreError> {
        let (declared, unreadable) = declared_state(&self.store).await?;
        self.declared = declared;
        self.unreadable = unreadable;
        self.snapshot = None;
        Ok(())
    }

    /// Looks at the branch and applies its head if it is new.
    pub(super) async fn reconcile(&mut self, stop: &Stop) -> Pass {
        let mut pass = Pass::default();
        let mut stop = stop.clone();
        let applied = tokio::select! {
            applied = self.apply_head_once() => applied,
            () = stop.wait() => return pass,
        };
        match applied {
            Ok((_, changed)) => {
                self.backoff.succeeded(BRANCH);
                pass.changed = changed;
            }
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed(BRANCH);
                tracing::error!(%error, transient = error.is_transient(), retry_in = ?delay, "following the branch failed; the declared state is as it was");
                pass.again_after(delay);
            }
        }
        pass
    }

    /// Applies the followed branch's head (again, harmlessly, if it was applied before) and
    /// returns it.
    pub(super) async fn apply_head(&mut self) -> Result<String, RuntimeError> {
        Ok(self.apply_head_once().await?.0)
    }

    /// Applies the head; returns it, and whether applying it wrote anything.
    async fn apply_head_once(&mut self) -> Result<(String, bool), RuntimeError> {
        let now = Utc::now();
        let previous = self.snapshot.take();
        let (branch, subdir) = (self.branch.clone(), self.subdir.clone());
        let definitions = self.definitions.clone();
        let read = self
            .repo
            .run(move |repo| -> Result<Read, RuntimeError> {
                repo.fetch_branches()?;
                let sha = repo.head_of(branch.as_deref())?;
                let seen = previous
                    .as_ref()
                    .and_then(|s| s.commit)
                    .map(|c| c.to_string());
                if seen.as_deref() == Some(sha.as_str()) {
                    return Ok(Read::Unchanged(sha, previous));
                }
                let snapshot = match previous {
                    Some(previous) => previous.advance(&sha, &subdir)?,
                    None => Snapshot::at_revision(repo, &sha, &subdir)?,
                };
                let evaluation = definitions.lock().evaluate(&snapshot, now)?;
                tracing::debug!(commit = %sha, parsed = evaluation.parsed_files, "evaluated");
                Ok(Read::New(sha, snapshot, Box::new(evaluation)))
            })
            .await?;
        let (sha, snapshot, evaluation) = match read {
            Read::Unchanged(sha, snapshot) => {
                self.snapshot = snapshot;
                return Ok((sha, false));
            }
            Read::New(sha, snapshot, evaluation) => (sha, snapshot, evaluation),
        };
        let mut decision = apply::decide(
            &sha,
            now,
            &self.declared,
            &evaluation,
            self.instance.as_deref(),
        );
        // A version whose stored row could not be read is the version declared before: it
        // repairs the row, and runs nothing again.
        let unreadable = &self.unreadable;
        decision
            .apply
            .runs
            .retain(|run| unreadable.get(&run.pipeline) != Some(&run.pipeline_version));
        let applied = self.store.apply_commit(&decision.apply).await?;
        for pipeline in &decision.apply.pipelines {
            self.unreadable.remove(&pipeline.name);
        }
        self.declared = decision.declared;
        self.snapshot = Some(snapshot);
        tracing::info!(commit = %sha, outcome = %decision.apply.outcome, runs = applied.run_ids.len(), "applied {}", decision.apply.summary);
        Ok((sha, applied.first_time))
    }
}

/// What reading the head found.
enum Read {
    /// The head is the commit seen last; the snapshot is handed back.
    Unchanged(String, Option<Snapshot>),
    /// A new head, read and evaluated.
    New(String, Snapshot, Box<Evaluation>),
}

/// The declared state as the store has it, for a restarted service, with the pipelines
/// whose stored definition cannot be read (left out of it, and logged; the schedules loop
/// stalls a schedule that cannot be read, with its reason).
pub(super) async fn declared_state(
    store: &Store,
) -> Result<(Catalog, BTreeMap<String, String>), StoreError> {
    let mut catalog = Catalog::default();
    let mut unreadable = BTreeMap::new();
    for row in store.current_pipelines().await? {
        match row {
            Ok(row) => {
                catalog.pipelines.insert(
                    Arc::from(row.name.as_str()),
                    entry(&row.file, &row.version, row.definition),
                );
            }
            Err(StoreError::Corrupt { row, .. }) if row.contains('@') => {
                tracing::error!(pipeline = %row, "the stored definition of a declared pipeline cannot be read; the next commit that declares it repairs it");
                if let Some((name, version)) = row.split_once('@') {
                    unreadable.insert(name.to_owned(), version.to_owned());
                }
            }
            Err(error) => return Err(error),
        }
    }
    for row in store.active_schedules().await? {
        match row {
            Ok(row) => {
                catalog.schedules.insert(
                    Arc::from(row.name.as_str()),
                    entry(&row.file, &row.version, row.definition),
                );
            }
            Err(error @ StoreError::Corrupt { .. }) => {
                tracing::error!(%error, "a declared schedule cannot be read; it is left out");
            }
            Err(error) => return Err(error),
        }
    }
    Ok((catalog, unreadable))
}

/// A catalog entry read back from a stored definition.
fn entry<T>(file: &str, version: &str, value: Arc<T>) -> Entry<T> {
    Entry {
        file: Arc::from(file),
        line: 0,
        version: Arc::from(version),
        value,
    }
}
