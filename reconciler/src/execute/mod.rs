//! The execution seam: a step attempt described as a [`StepJob`], and the [`Executor`] trait
//! every backend (local processes, Kubernetes Jobs) implements and is tested against.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::artifacts;
use crate::spec::model::Resources;

pub mod kubernetes;
pub mod launcher;
pub mod local;
#[cfg(any(test, feature = "executor-suite"))]
#[doc(hidden)]
pub mod suite;

pub use kubernetes::KubernetesExecutor;
pub use local::LocalExecutor;

/// Kubernetes object names (and so job names) are DNS-1123 labels of at most 63 characters.
const MAX_JOB_NAME: usize = 63;

/// One attempt of one step, fully resolved: what to run, with what, and where results go.
#[derive(Debug, Clone, PartialEq)]
pub struct StepJob {
    /// Unique and deterministic per attempt; see [`job_name`]. Submitting a name again is a
    /// no-op, which is what makes a repeated submit after a crash safe.
    pub name: String,
    /// The run this attempt belongs to.
    pub run_id: i64,
    /// The step's name in its pipeline.
    pub step: String,
    /// 1 for the first attempt, counting up with retries.
    pub attempt: u32,
    /// The program and its arguments, templates already rendered; never passed through a shell.
    pub argv: Vec<String>,
    /// Variables set on top of the executor's own environment.
    pub env: BTreeMap<String, String>,
    /// The container image; local processes ignore it.
    pub image: String,
    /// What the step asks of the machine; local processes do not enforce it.
    pub resources: Option<Resources>,
    /// Wall-clock limit of the attempt, from fetching inputs to the program's exit.
    pub timeout: Option<Duration>,
    /// Where the attempt keeps its inputs, outputs and log, as the program sees it: the
    /// executor's [`Executor::job_dir`] for this name.
    pub job_dir: PathBuf,
    /// The program's working directory (locally: the pipeline file's folder in the run's
    /// checkout; on a cluster: that folder inside the downloaded [`StepSource`]).
    pub workdir: PathBuf,
    /// Where the step's files come from when it does not run beside the service's checkout
    /// (see [`Executor::runs_here`]); None when it runs in the checkout.
    pub source: Option<StepSource>,
    /// Artifacts fetched from the store before the program starts.
    pub inputs: Vec<StepInput>,
    /// Files the program must write; stored after it exits with code 0.
    pub outputs: Vec<StepOutput>,
    /// Where the attempt's combined stdout and stderr are stored once it ends.
    pub log_key: String,
    /// Labels copied onto whatever the backend creates (Kubernetes Job labels).
    pub labels: BTreeMap<String, String>,
    /// Facts for people looking at what the backend creates (Kubernetes Job annotations):
    /// the run's commit, pipeline version and schedule.
    pub annotations: BTreeMap<String, String>,
    /// Names of secrets whose keys become environment variables (the step's
    /// `env_from_secrets`); only a cluster resolves them, the values never pass through here.
    pub secrets: Vec<String>,
}

/// The files of the run's commit, as uploaded to the artifact store for steps that run
/// elsewhere: the launcher downloads them into `<job dir>/src` before the program starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSource {
    /// Key prefix of the uploaded files in the artifact store, such as
    /// `sources/<git tree oid>`; see [`artifacts::source_key`].
    pub prefix: String,
    /// The folder, relative to the uploaded root, where the step runs (the pipeline file's
    /// folder).
    pub dir: PathBuf,
}

/// An artifact a step reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInput {
    /// Its key in the artifact store.
    pub key: String,
    /// Where the program expects the file.
    pub path: PathBuf,
}

/// A file a step writes and the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    /// The output's name as declared in the pipeline (`model`).
    pub name: String,
    /// Where the program writes the file.
    pub path: PathBuf,
    /// Its key in the artifact store.
    pub key: String,
}

/// An output stored after a successful attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedArtifact {
    /// The output's declared name.
    pub output: String,
    /// Where it was stored.
    pub uri: String,
    /// Lowercase hex sha256 of its content.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

/// Where an attempt is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Accepted; the program has not started yet (inputs may be downloading).
    Pending,
    /// The program is running.
    Running,
    /// The program exited with code 0 and every declared output was stored.
    Succeeded {
        /// The stored outputs, in declaration order.
        artifacts: Vec<ProducedArtifact>,
    },
    /// The attempt ended without producing its outputs.
    Failed {
        /// The program's exit code, if it exited on its own.
        exit_code: Option<i32>,
        /// What happened, for people: "exited with code 2", "timed out after 4h".
        reason: String,
    },
    /// Stopped by [`Executor::cancel`].
    Cancelled,
}

impl JobState {
    /// Whether the attempt has ended; terminal states never change again.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running)
    }
}

/// A job reached a terminal state; backends push these so the runtime need not poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    /// The job's name.
    pub name: String,
    /// Its terminal state.
    pub state: JobState,
}

/// What can go wrong talking to an executor (a failing step is a [`JobState`], not this).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The job cannot be started as described.
    #[error("job {name:?} is invalid: {reason}")]
    InvalidJob {
        /// The job's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// This executor has no job by that name.
    #[error("no job named {name:?}")]
    UnknownJob {
        /// The name asked for.
        name: String,
    },
    /// A running job's log could not be read.
    #[error("log of job {name:?}: {source}")]
    Log {
        /// The job's name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The artifact store failed.
    #[error(transparent)]
    Artifacts(#[from] artifacts::Error),
    /// The cluster's API refused or failed a request after the retries it deserves.
    #[error("{what}: {reason}")]
    Cluster {
        /// What was being done (`creating job "ty-1-train-1"`).
        what: String,
        /// What the API or the connection said.
        reason: String,
    },
}

/// Runs step attempts somewhere: processes on this machine, Jobs on a cluster.
///
/// Terminal states are also pushed as [`JobEvent`]s on the channel given to the backend's
/// constructor.
pub trait Executor: Send + Sync + 'static {
    /// Starts `job`. Idempotent by job.name: submitting a name that exists is success and
    /// starts nothing.
    fn submit(&self, job: StepJob) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// The job's current state; None if this executor does not know the name.
    fn observe(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<JobState>, ExecError>> + Send;

    /// Stops the job (the whole process tree locally). Idempotent; unknown names are Ok.
    /// The terminal state follows as an event once the job has stopped; a job that has
    /// already finished keeps the state it finished with.
    fn cancel(&self, name: &str) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Combined stdout/stderr so far (live while running, stored after).
    fn logs(&self, name: &str) -> impl Future<Output = Result<String, ExecError>> + Send;

    /// The directory where job `name` keeps its inputs and outputs, as the step's program
    /// sees it (a path on this machine locally, a path inside the pod on a cluster).
    fn job_dir(&self, name: &str) -> PathBuf;

    /// The names of the jobs this executor has, whoever submitted them (on a cluster: every
    /// Job labelled as Trainyard's in its namespace, once listed).
    fn known_jobs(&self) -> impl Future<Output = Result<Vec<String>, ExecError>> + Send;

    /// Whether steps run on this machine and so can read the service's checkout of the run's
    /// commit; when false, the step's source travels through the artifact store.
    fn runs_here(&self) -> bool;
}

/// The name of attempt `attempt` of `step` in run `run_id`, such as `ty-42-train-1`.
///
/// Always a DNS-1123 label of at most 63 characters. A step name that is too long or not
/// already a valid label part is shortened and suffixed with a hash of the original, so
/// distinct steps keep distinct names.
pub fn job_name(run_id: i64, step: &str, attempt: u32) -> String {
    let prefix = format!("ty-{run_id}-");
    let suffix = format!("-{attempt}");
    let budget = MAX_JOB_NAME - prefix.len() - suffix.len();
    let sanitized: String = step
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let usable = sanitized == step && !step.starts_with('-') && !step.ends_with('-');
    let middle = if usable && !step.is_empty() && step.len() <= budget {
        step.to_owned()
    } else {
        let hash: String = Sha256::digest(step.as_bytes())
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        // The sanitized text is ASCII, so any byte index is a char boundary.
        let keep = budget.saturating_sub(hash.len() + 1).min(sanitized.len());
        let head = sanitized[..keep].trim_matches('-');
        if head.is_empty() {
            hash
        } else {
            format!("{head}-{hash}")
        }
    };
    format!("{prefix}{middle}{suffix}")
}

/// The run a job belongs to, read back from a name [`job_name`] made (`ty-42-train-1` → 42).
pub fn run_of_job(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("ty-")?;
    let (run, _) = rest.split_once('-')?;
    run.parse().ok()
}

/// Whether `name` is a DNS-1123 label: what [`job_name`] produces and what backends accept.
pub fn is_job_name(name: &str) -> bool {
    (1..=MAX_JOB_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_step_keeps_its_name() {
        assert_eq!(job_name(42, "train", 1), "ty-42-train-1");
        assert!(is_job_name(&job_name(42, "train", 1)));
    }

    #[test]
    fn long_step_names_are_shortened_but_stay_unique() {
        let long_a = format!("{}-a", "x".repeat(60));
        let long_b = format!("{}-b", "x".repeat(60));
        let a = job_name(i64::MAX, &long_a, u32::MAX);
        let b = job_name(i64::MAX, &long_b, u32::MAX);
        assert!(is_job_name(&a), "{a}");
        assert!(is_job_name(&b), "{b}");
        assert_eq!(a.len(), MAX_JOB_NAME);
        assert_ne!(a, b);
        assert!(a.starts_with("ty-9223372036854775807-xxx"), "{a}");
        assert!(a.ends_with("-4294967295"), "{a}");
    }

    #[test]
    fn steps_that_differ_only_in_characters_a_label_cannot_hold_get_different_names() {
        let underscore = job_name(1, "a_b", 1);
        let dot = job_name(1, "a.b", 1);
        let dash = job_name(1, "a-b", 1);
        assert_eq!(dash, "ty-1-a-b-1");
        for name in [&underscore, &dot] {
            assert!(is_job_name(name), "{name}");
        }
        assert_ne!(underscore, dot);
        assert_ne!(underscore, dash);
        assert!(is_job_name(&job_name(1, "", 1)));
        assert!(is_job_name(&job_name(1, "---", 1)));
        assert!(is_job_name(&job_name(1, "Ünïcode", 1)));
    }

    #[test]
    fn the_run_is_read_back_from_a_job_name() {
        assert_eq!(run_of_job(&job_name(42, "train", 1)), Some(42));
        assert_eq!(
            run_of_job(&job_name(i64::MAX, &"x".repeat(80), 9)),
            Some(i64::MAX)
        );
        assert_eq!(run_of_job("ty-x-train-1"), None);
        assert_eq!(run_of_job("other-42-train-1"), None);
        assert_eq!(run_of_job("ty-42"), None);
    }

    #[test]
    fn names_are_deterministic() {
        assert_eq!(job_name(7, "prepare", 3), job_name(7, "prepare", 3));
        assert_ne!(job_name(7, "prepare", 3), job_name(7, "prepare", 4));
    }

    #[test]
    fn a_label_must_be_lowercase_and_bounded() {
        assert!(!is_job_name(""));
        assert!(!is_job_name("Ty-1"));
        assert!(!is_job_name("-ty"));
        assert!(!is_job_name("ty-"));
        assert!(!is_job_name("../etc"));
        assert!(!is_job_name(&"a".repeat(64)));
        assert!(is_job_name(&"a".repeat(63)));
    }
}
