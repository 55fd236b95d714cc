//! `trainyard launch`: the in-pod side of a step on a cluster. It fetches the step's source
//! and inputs from the artifact store, runs the command, and stores its outputs, log and a
//! manifest of what it stored, so the service learns the outcome from the store.

use super::{ProducedArtifact, StepJob};
use crate::artifacts::{self, ArtifactStore};

/// The arguments after `trainyard launch` that run `job` in a pod, with artifacts at
/// `artifacts_url` (the same store the service uses).
pub fn args(job: &StepJob, artifacts_url: &str) -> Vec<String> {
    let _ = (job, artifacts_url);
    todo!("issue 4: launcher")
}

/// The outputs a finished launch stored for `job`, read from its manifest; None when the
/// launch stored none (it failed, or never ran).
pub async fn outcome(
    artifacts: &ArtifactStore,
    job: &StepJob,
) -> Result<Option<Vec<ProducedArtifact>>, artifacts::Error> {
    let _ = (artifacts, job);
    todo!("issue 4: launcher")
}
