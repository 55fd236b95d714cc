//! What a step attempt needs before it is handed over: the run's pinned pipeline version,
//! the repository settings at its commit, its source (a checkout here, an upload for steps
//! that run elsewhere) and the job itself.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Pinned, Runs};
use crate::artifacts;
use crate::execute::launcher::SourceMarker;
use crate::execute::{Executor, StepJob, StepSource, job_name};
use crate::runtime::ObjectError;
use crate::runtime::job::{self, Placement};
use crate::spec::{SETTINGS_FILE, Settings, parse_settings};
use crate::store::{ArtifactRow, RunRow, StoreError};

impl<E: Executor> Runs<E> {
    /// The job of attempt `attempt` of `step` in `run`: `Ok(Err(why))` when it cannot be
    /// built at all, `Err` when what it needs cannot be read now.
    pub(super) async fn job(
        &mut self,
        run: &RunRow,
        pinned: &Pinned,
        step: &str,
        attempt: u32,
        dag_end: Option<&job::DagEnd<'_>>,
    ) -> Result<Result<StepJob, String>, ObjectError> {
        let name = job_name(&self.installation, run.id, step, attempt);
        let settings = self.settings_at(&run.commit_sha).await?;
        let dir = job::step_dir(&pinned.file).to_owned();
        let (workdir, source) = if self.executor.runs_here() {
            let checkout = self.checkout(&run.commit_sha).await?;
            (checkout.join(&self.subdir).join(&dir), None)
        } else {
            let prefix = self.upload_source(&run.commit_sha).await?;
            (
                self.executor.job_dir(&name).join("src").join(&dir),
                Some(StepSource { prefix, dir }),
            )
        };
        let place = Placement {
            job_dir: self.executor.job_dir(&name),
            workdir,
            source,
            default_timeout: settings.default_timeout.as_deref(),
            default_image: settings.image.as_deref(),
            installation: &self.installation,
        };
        let mut job = match job::build(run, &pinned.pipeline, step, attempt, &name, place, dag_end)
        {
            Ok(job) => job,
            Err(why) => return Ok(Err(why)),
        };
        for (key, index) in job::indexes(run, &pinned.pipeline, step, &self.installation) {
            self.artifacts.put_bytes(&key, index).await?;
        }
        self.locate_inputs(run, &mut job).await?;
        Ok(Ok(job))
    }

    /// Points each input of `job` at the object its producing step recorded: a step whose
    /// attempt was cached recorded the outputs of the attempt it reused, under that run's
    /// keys. An input with no record keeps the key its own run's step would write.
    pub(super) async fn locate_inputs(
        &self,
        run: &RunRow,
        job: &mut StepJob,
    ) -> Result<(), ObjectError> {
        let recorded = self.recorded_inputs(run, job).await?;
        for (input, row) in job.inputs.iter_mut().zip(recorded) {
            if let Some(row) = row
                && let Some(key) = self.artifacts.key_of(&row.uri)
            {
                input.key = key.to_owned();
            }
        }
        Ok(())
    }

    /// For each input of `job`, in order, the output of `run` recorded under the key it
    /// names (its producing step's key in this run), if one is; no query for a job without
    /// inputs.
    pub(super) async fn recorded_inputs(
        &self,
        run: &RunRow,
        job: &StepJob,
    ) -> Result<Vec<Option<ArtifactRow>>, ObjectError> {
        if job.inputs.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = self.store.artifacts(run.id).await?;
        Ok(job
            .inputs
            .iter()
            .map(|input| {
                recorded
                    .iter()
                    .find(|row| {
                        artifacts::output_key(&self.installation, run.id, &row.step, &row.output)
                            == input.key
                    })
                    .cloned()
            })
            .collect())
    }

    /// The definition `run` is pinned to, and the file it was declared in.
    pub(super) async fn pinned(&mut self, run: &RunRow) -> Result<Arc<Pinned>, ObjectError> {
        let key = (run.pipeline.clone(), run.pipeline_version.clone());
        if let Some(found) = self.pinned.get(&key) {
            return Ok(found.clone());
        }
        let row = match self
            .store
            .pipeline_version(&run.pipeline, &run.pipeline_version)
            .await
        {
            Ok(Some(row)) => row,
            Ok(None) => {
                return Err(ObjectError::Permanent(format!(
                    "its pipeline version {}@{} is not stored",
                    run.pipeline, run.pipeline_version
                )));
            }
            Err(error @ StoreError::Corrupt { .. }) => {
                return Err(ObjectError::Permanent(format!(
                    "its pipeline definition cannot be read: {error}"
                )));
            }
            Err(error) => return Err(error.into()),
        };
        let found = Arc::new(Pinned {
            pipeline: row.definition,
            file: row.file,
        });
        self.pinned.insert(key, found.clone());
        Ok(found)
    }

    /// The repository settings (`trainyard.yaml`) at `commit`, which its runs use for the
    /// defaults they inherit.
    pub(super) async fn settings_at(&mut self, commit: &str) -> Result<Arc<Settings>, ObjectError> {
        if let Some(found) = self.settings.get(commit) {
            return Ok(found.clone());
        }
        let (at, subdir) = (commit.to_owned(), self.subdir.clone());
        let bytes = self
            .repo
            .run(move |repo| repo.file_at(&at, &subdir, SETTINGS_FILE))
            .await?;
        let settings =
            Arc::new(bytes.map_or_else(Settings::default, |b| parse_settings(&b).settings));
        self.settings.insert(commit.to_owned(), settings.clone());
        Ok(settings)
    }

    /// The run's commit exported once into the data directory (steps run in it, so a run
    /// always sees the files of its own commit).
    pub(super) async fn checkout(&self, commit: &str) -> Result<PathBuf, ObjectError> {
        let target = self.data_dir.join("checkouts").join(commit);
        if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
            return Ok(target);
        }
        let (at, path) = (commit.to_owned(), target.clone());
        self.repo.run(move |repo| repo.export(&at, &path)).await?;
        Ok(target)
    }

    /// Uploads the followed directory's tree at `commit` for steps that run elsewhere, once:
    /// keys are addressed by the tree's id, and a marker written after the last file makes
    /// every later run and step of the same tree reuse the upload. Returns the key prefix.
    ///
    /// Every blob is stored with its Git path; executables are listed in the marker (object
    /// stores keep no file modes).
    pub(super) async fn upload_source(&mut self, commit: &str) -> Result<String, ObjectError> {
        if let Some(prefix) = self.uploaded.get(commit) {
            return Ok(prefix.clone());
        }
        let (at, subdir) = (commit.to_owned(), self.subdir.clone());
        let (tree, files) = self
            .repo
            .run(move |repo| repo.tree_files(&at, &subdir))
            .await?;
        let prefix = artifacts::source_prefix(&tree);
        let marker_key = artifacts::source_marker_key(&prefix);
        if self.artifacts.exists(&marker_key).await? {
            self.uploaded.insert(commit.to_owned(), prefix.clone());
            return Ok(prefix);
        }
        let mut marker = SourceMarker::default();
        for file in &files {
            let key = artifacts::source_key(&prefix, &file.path);
            let blob = file.blob;
            let content = self.repo.run(move |repo| repo.blob(blob)).await?;
            self.artifacts.put_bytes(&key, content).await?;
            if file.executable {
                marker.executables.push(key);
            }
        }
        let marker = serde_json::to_vec(&marker).map_err(|e| {
            ObjectError::Permanent(format!("the source marker cannot be written: {e}"))
        })?;
        self.artifacts.put_bytes(&marker_key, marker).await?;
        tracing::info!(%tree, files = files.len(), "uploaded the step source");
        self.uploaded.insert(commit.to_owned(), prefix.clone());
        Ok(prefix)
    }
}
