//! The execution seam: a step attempt described as a [`StepJob`], and the [`Executor`] trait
//! every backend (local processes, Kubernetes Jobs) implements and is tested against.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
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
/// The files a step reads and writes; the in-pod launcher shares them.
pub use trainyard_launch::step::{ProducedArtifact, StepInput, StepOutput};

/// Kubernetes object names (and so job names) are DNS-1123 labels of at most 63 characters.
const MAX_JOB_NAME: usize = 63;

/// The longest installation identity: with the longest run id and attempt, a job name then
/// still keeps eight characters for its step.
pub const MAX_INSTANCE: usize = 20;

/// Why an attempt that a stopped service had begun is failed: its process died with the
/// service, or nobody can say whether it ran to the end.
pub const INTERRUPTED: &str = "interrupted: the service stopped while it ran";

/// One attempt of one step, fully resolved: what to run, with what, and where results go.
#[derive(Debug, Clone, PartialEq)]
pub struct StepJob {
    /// Unique and deterministic per attempt; see [`job_name`]. Submitting a name again is a
    /// no-op, which is what makes a repeated submit after a crash safe.
    pub name: String,
    /// The installation that runs this attempt (see [`is_instance`]): part of the job's
    /// name and labels, so that installations sharing a namespace or an artifact store
    /// never take each other's Jobs or outputs.
    pub instance: String,
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

/// Where an attempt is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Accepted; the program has not started yet: queued (a Job suspended by Kueue),
    /// waiting for a node or an image, or fetching inputs.
    Pending,
    /// The program is running.
    Running {
        /// When it started: the main container's `startedAt` on a cluster, the spawn of
        /// the process locally. Time before it was spent queued or starting.
        since: DateTime<Utc>,
    },
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
        !matches!(self, JobState::Pending | JobState::Running { .. })
    }
}

/// An attempt started running or ended; backends push these so the runtime need not poll.
///
/// Each job gets at most one [`JobState::Running`] event (when its program starts; none if
/// it ends before a backend saw it run) and exactly one terminal event, after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    /// The job's name.
    pub name: String,
    /// `Running` or a terminal state.
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
    /// A Job of that name exists and is not this attempt's: another installation's (or a
    /// hand-made one). Nothing of it may be taken as this attempt's work.
    #[error(
        "a Job named {name} already exists and belongs to {}",
        describe_owner(owner.as_ref())
    )]
    Foreign {
        /// The job's name.
        name: String,
        /// Whose attempt the existing Job says it is; None when it carries no Trainyard
        /// labels.
        owner: Option<Owner>,
    },
    /// The cluster's API refused or failed a request after the retries it deserves.
    #[error("{what}: {reason}")]
    Cluster {
        /// What was being done (`creating job "ty-1-train-1"`).
        what: String,
        /// What the API or the connection said.
        reason: String,
    },
}

/// Whose attempt a job is, as its labels say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The installation (`trainyard.dev/instance`).
    pub instance: String,
    /// The run (`trainyard.dev/run`).
    pub run_id: i64,
    /// The step (`trainyard.dev/step`).
    pub step: String,
    /// The attempt (`trainyard.dev/attempt`).
    pub attempt: u32,
}

fn describe_owner(owner: Option<&Owner>) -> String {
    match owner {
        Some(o) => format!(
            "installation {} (run {}, step {}, attempt {})",
            o.instance, o.run_id, o.step, o.attempt
        ),
        None => {
            "no Trainyard installation (it carries no installation, run, step and attempt labels)"
                .to_owned()
        }
    }
}

/// Runs step attempts somewhere: processes on this machine, Jobs on a cluster.
///
/// When an attempt starts running and when it ends, its state is also pushed as a
/// [`JobEvent`] on the channel given to the backend's constructor.
pub trait Executor: Send + Sync + 'static {
    /// Starts `job`. Idempotent by job.name: submitting a name that exists as this very
    /// attempt (same installation, run, step and attempt) is success and starts nothing;
    /// a name taken by anything else is [`ExecError::Foreign`].
    fn submit(&self, job: StepJob) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// The job's current state; None if this executor does not know the name. For a job
    /// that ended and whose outcome was not yet worked out (one found on the cluster, not
    /// submitted by this process), this waits for the outcome.
    fn observe(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<JobState>, ExecError>> + Send;

    /// Asks again, at the source, about a job [`Executor::observe`] did not know, before
    /// the caller treats a job it once had accepted as gone. A backend whose view can lag
    /// behind (a watch catching up after an outage, with a Job another replica created
    /// meanwhile) reads it directly; the local backend's view is the truth.
    fn recheck(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<JobState>, ExecError>> + Send {
        self.observe(name)
    }

    /// Stops the job (the whole process tree locally). Idempotent and cheap to repeat: a
    /// caller may call it on every pass while a run is cancelling, and only the first call
    /// sends anything. Unknown names are Ok. The job is `Cancelled` (and the event pushed)
    /// only once its processes are gone; a job that has already finished keeps the state
    /// it finished with.
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

/// The name of attempt `attempt` of `step` in run `run_id` of installation `instance`, such
/// as `ty-prod-42-train-1`.
///
/// Always a DNS-1123 label of at most 63 characters for an `instance` that
/// [`is_instance`]. A step name that is too long or not already a valid label part is
/// shortened and suffixed with a hash of the original, so distinct steps keep distinct
/// names.
pub fn job_name(instance: &str, run_id: i64, step: &str, attempt: u32) -> String {
    let prefix = format!("ty-{instance}-{run_id}-");
    let suffix = format!("-{attempt}");
    let budget = MAX_JOB_NAME.saturating_sub(prefix.len() + suffix.len());
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

/// The run a job of installation `instance` belongs to, read back from a name [`job_name`]
/// made (`ty-prod-42-train-1` → 42); None for names of other installations or not made by
/// it.
pub fn run_of_job(instance: &str, name: &str) -> Option<i64> {
    let rest = name.strip_prefix("ty-")?.strip_prefix(instance)?;
    let (run, _) = rest.strip_prefix('-')?.split_once('-')?;
    run.parse().ok()
}

/// Whether `instance` can identify an installation: a DNS-1123 label of at most
/// [`MAX_INSTANCE`] characters (lower-case letters, digits and `-`, starting and ending
/// with a letter or digit), which fits in job names and label values.
pub fn is_instance(instance: &str) -> bool {
    instance.len() <= MAX_INSTANCE && is_job_name(instance)
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
    fn a_short_step_keeps_its_name_after_the_installation_and_run() {
        assert_eq!(job_name("prod", 42, "train", 1), "ty-prod-42-train-1");
        assert!(is_job_name(&job_name("prod", 42, "train", 1)));
    }

    #[test]
    fn two_installations_never_share_a_job_name() {
        assert_ne!(
            job_name("a", 1, "prepare", 1),
            job_name("b", 1, "prepare", 1)
        );
        assert_ne!(
            job_name("a", 1, "prepare", 1),
            job_name("ab", 1, "prepare", 1)
        );
        // Names are not a proof of ownership: instance `a-1`'s run 2 step `x` and instance
        // `a`'s run 1 step `2-x` share a name. Labels decide (see ExecError::Foreign).
        assert_eq!(job_name("a-1", 2, "x", 1), job_name("a", 1, "2-x", 1));
    }

    #[test]
    fn long_step_names_are_shortened_but_stay_unique() {
        let instance = "i".repeat(MAX_INSTANCE);
        let long_a = format!("{}-a", "x".repeat(60));
        let long_b = format!("{}-b", "x".repeat(60));
        let a = job_name(&instance, i64::MAX, &long_a, u32::MAX);
        let b = job_name(&instance, i64::MAX, &long_b, u32::MAX);
        assert!(is_job_name(&a), "{a}");
        assert!(is_job_name(&b), "{b}");
        assert_eq!(a.len(), MAX_JOB_NAME);
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("ty-{instance}-9223372036854775807-")),
            "{a}"
        );
        assert!(a.ends_with("-4294967295"), "{a}");
        let short = job_name("p", 1, &long_a, 1);
        assert!(is_job_name(&short), "{short}");
        assert!(short.starts_with("ty-p-1-xxx"), "{short}");
    }

    #[test]
    fn steps_that_differ_only_in_characters_a_label_cannot_hold_get_different_names() {
        let underscore = job_name("p", 1, "a_b", 1);
        let dot = job_name("p", 1, "a.b", 1);
        let dash = job_name("p", 1, "a-b", 1);
        assert_eq!(dash, "ty-p-1-a-b-1");
        for name in [&underscore, &dot] {
            assert!(is_job_name(name), "{name}");
        }
        assert_ne!(underscore, dot);
        assert_ne!(underscore, dash);
        assert!(is_job_name(&job_name("p", 1, "", 1)));
        assert!(is_job_name(&job_name("p", 1, "---", 1)));
        assert!(is_job_name(&job_name("p", 1, "Ünïcode", 1)));
    }

    #[test]
    fn the_run_is_read_back_from_a_job_name_of_the_same_installation() {
        assert_eq!(
            run_of_job("prod", &job_name("prod", 42, "train", 1)),
            Some(42)
        );
        assert_eq!(
            run_of_job(
                "prod-eu",
                &job_name("prod-eu", i64::MAX, &"x".repeat(80), 9)
            ),
            Some(i64::MAX)
        );
        assert_eq!(
            run_of_job("prod", &job_name("staging", 42, "train", 1)),
            None
        );
        assert_eq!(run_of_job("prod", "ty-prod-x-train-1"), None);
        assert_eq!(run_of_job("prod", "other-prod-42-train-1"), None);
        assert_eq!(run_of_job("prod", "ty-prod-42"), None);
        assert_eq!(run_of_job("pro", "ty-prod-42-train-1"), None);
    }

    #[test]
    fn names_are_deterministic() {
        assert_eq!(
            job_name("p", 7, "prepare", 3),
            job_name("p", 7, "prepare", 3)
        );
        assert_ne!(
            job_name("p", 7, "prepare", 3),
            job_name("p", 7, "prepare", 4)
        );
    }

    #[test]
    fn an_installation_is_a_short_dns_label() {
        assert!(is_instance("prod-eu-1"));
        assert!(is_instance(&"a".repeat(MAX_INSTANCE)));
        assert!(!is_instance(&"a".repeat(MAX_INSTANCE + 1)));
        assert!(!is_instance(""));
        assert!(!is_instance("Prod"));
        assert!(!is_instance("-prod"));
        assert!(!is_instance("prod_eu"));
    }

    #[test]
    fn a_foreign_job_is_described_by_whose_it_is() {
        let error = ExecError::Foreign {
            name: "ty-a-1-prepare-1".to_owned(),
            owner: Some(Owner {
                instance: "b".to_owned(),
                run_id: 1,
                step: "prepare".to_owned(),
                attempt: 1,
            }),
        };
        assert_eq!(
            error.to_string(),
            "a Job named ty-a-1-prepare-1 already exists and belongs to installation b (run 1, step prepare, attempt 1)"
        );
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
