//! What the watches on labelled Jobs and Pods tell: per job name its latest Job, its pods'
//! states, and the attempt's [`JobState`], with failure reasons in words people understand.
//! Everything here is synchronous bookkeeping; the executor performs the I/O it asks for.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::time::Instant;

use super::TerminationReport;
use super::manifest::{INIT_CONTAINER, JOB_NAME_LABEL, MAIN_CONTAINER, step_job_of};
use crate::execute::{JobEvent, JobState, StepJob};
use crate::spec::units::format_duration;

/// How a Job stands, from its status alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not finished.
    Active,
    /// Its pod succeeded.
    Complete,
    /// It failed; the condition's reason and message.
    Failed { reason: String, message: String },
}

/// The Job's phase from its conditions.
pub(super) fn phase(job: &Job) -> Phase {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    for condition in conditions.iter().filter(|c| c.status == "True") {
        match condition.type_.as_str() {
            "Complete" => return Phase::Complete,
            "Failed" => {
                return Phase::Failed {
                    reason: condition.reason.clone().unwrap_or_default(),
                    message: condition.message.clone().unwrap_or_default(),
                };
            }
            _ => {}
        }
    }
    Phase::Active
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ended {
    pub(super) exit_code: i32,
    pub(super) reason: String,
    pub(super) message: String,
}

/// Why a pod cannot start, in a form that does not change while the cause persists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stuck {
    /// The Kubernetes reason (`ImagePullBackOff`, `Unschedulable`…).
    pub(super) reason: String,
    /// The attempt's failure reason, should it stay stuck.
    pub(super) words: String,
}

/// What the executor keeps of one pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PodInfo {
    pub(super) name: String,
    pub(super) running: bool,
    pub(super) main: Option<Ended>,
    pub(super) init_failed: Option<Ended>,
    pub(super) stuck: Option<Stuck>,
    /// When the pod became stuck for its current reason.
    pub(super) stuck_since: Option<Instant>,
    pub(super) memory_limit: Option<String>,
}

/// The reasons a container waits for something that will not come by itself.
const STUCK_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

fn ended(status: &ContainerStatus) -> Option<Ended> {
    let terminated = status.state.as_ref()?.terminated.as_ref()?;
    Some(Ended {
        exit_code: terminated.exit_code,
        reason: terminated.reason.clone().unwrap_or_default(),
        message: terminated.message.clone().unwrap_or_default(),
    })
}

/// The job a pod belongs to, by the Job controller's label or the pod's owner.
pub(super) fn job_of_pod(pod: &Pod) -> Option<String> {
    let labels = pod.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(JOB_NAME_LABEL).or_else(|| l.get("job-name")))
        .cloned()
        .or_else(|| {
            pod.metadata
                .owner_references
                .as_deref()?
                .iter()
                .find(|o| o.kind == "Job")
                .map(|o| o.name.clone())
        })
}

/// What matters of `pod`, given what was known of it before (to keep when it got stuck).
pub(super) fn pod_info(pod: &Pod, before: Option<&PodInfo>, now: Instant) -> PodInfo {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let image_of = |container: &str| {
        spec.and_then(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .find(|c| c.name == container)
                .and_then(|c| c.image.clone())
        })
        .unwrap_or_default()
    };
    let memory_limit = spec
        .and_then(|s| s.containers.iter().find(|c| c.name == MAIN_CONTAINER))
        .and_then(|c| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("memory")
                .cloned()
        })
        .map(|q| q.0);
    let status = pod.status.as_ref();
    let statuses = |init: bool| {
        status
            .and_then(|s| {
                if init {
                    s.init_container_statuses.as_deref()
                } else {
                    s.container_statuses.as_deref()
                }
            })
            .unwrap_or_default()
    };
    let main_status = statuses(false).iter().find(|c| c.name == MAIN_CONTAINER);
    let main = main_status.and_then(ended);
    let running = main_status
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    let init_failed = statuses(true)
        .iter()
        .filter(|c| c.name == INIT_CONTAINER)
        .filter_map(ended)
        .find(|e| e.exit_code != 0);

    let waiting = statuses(true).iter().chain(statuses(false)).find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.clone().unwrap_or_default();
        STUCK_WAITING.contains(&reason.as_str()).then(|| {
            let message = waiting.message.clone().unwrap_or_default();
            let words = match reason.as_str() {
                "CreateContainerConfigError" | "CreateContainerError" => {
                    format!("the container could not be created ({reason}): {message}")
                }
                _ => format!(
                    "image {} could not be pulled ({reason}): {message}",
                    image_of(&c.name)
                ),
            };
            Stuck { reason, words }
        })
    });
    let unschedulable = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| Stuck {
            reason: "Unschedulable".to_owned(),
            words: format!(
                "no node can run it: {} (Unschedulable)",
                c.message
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('.')
            ),
        });
    let stuck = waiting.or(unschedulable);
    let stuck_since = match (&stuck, before) {
        (None, _) => None,
        (Some(now_stuck), Some(before))
            if before.stuck.as_ref().map(|s| &s.reason) == Some(&now_stuck.reason) =>
        {
            before.stuck_since
        }
        (Some(_), _) => Some(now),
    };
    PodInfo {
        name,
        running,
        main,
        init_failed,
        stuck,
        stuck_since,
        memory_limit,
    }
}

/// Reads the [`TerminationReport`] `trainyard launch` writes as the termination message.
/// Anything else is not launch's: the tail of the log Kubernetes falls back to when the
/// container wrote no message, or a message from a container that never ran launch.
pub(super) fn launch_report(message: &str) -> Option<TerminationReport> {
    serde_json::from_str(message.trim()).ok()
}

/// At most the last `limit` bytes of `text`, on a character boundary.
fn tail(text: &str, limit: usize) -> &str {
    let text = text.trim();
    let mut start = text.len().saturating_sub(limit);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Why a failed Job failed, from its condition and its pod.
pub(super) fn failed_state(
    job: &Job,
    reason: &str,
    message: &str,
    pod: Option<&PodInfo>,
) -> JobState {
    if reason == "DeadlineExceeded" {
        let limit = job
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs);
        return JobState::Failed {
            exit_code: None,
            reason: match limit {
                Some(limit) => format!("timed out after {}", format_duration(limit)),
                None => "timed out (DeadlineExceeded)".to_owned(),
            },
        };
    }
    if let Some(pod) = pod {
        if let Some(init) = &pod.init_failed {
            return JobState::Failed {
                exit_code: None,
                reason: format!(
                    "could not install trainyard in the pod (Init:{}): exited with code {}{}",
                    if init.reason.is_empty() {
                        "Error"
                    } else {
                        &init.reason
                    },
                    init.exit_code,
                    with_message(&init.message)
                ),
            };
        }
        if let Some(main) = &pod.main {
            return ended_state(main, pod.memory_limit.as_deref());
        }
        if let Some(stuck) = &pod.stuck {
            return JobState::Failed {
                exit_code: None,
                reason: stuck.words.clone(),
            };
        }
    }
    JobState::Failed {
        exit_code: None,
        reason: match (reason.is_empty(), message.is_empty()) {
            (true, true) => "the Job failed".to_owned(),
            (false, true) => format!("the Job failed ({reason})"),
            (_, false) => format!("the Job failed: {message} ({reason})"),
        },
    }
}

fn with_message(message: &str) -> String {
    let message = tail(message, 1024);
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The state of an attempt whose main container ended unsuccessfully.
pub(super) fn ended_state(main: &Ended, memory_limit: Option<&str>) -> JobState {
    if main.reason == "OOMKilled" {
        return JobState::Failed {
            exit_code: Some(main.exit_code),
            reason: match memory_limit {
                Some(limit) => format!(
                    "out of memory (OOMKilled) at its {limit} limit — raise resources.memory"
                ),
                None => "out of memory (OOMKilled) — raise resources.memory".to_owned(),
            },
        };
    }
    if let Some(report) = launch_report(&main.message) {
        return JobState::Failed {
            exit_code: report.exit_code,
            reason: report.reason,
        };
    }
    JobState::Failed {
        exit_code: Some(main.exit_code),
        reason: format!(
            "exited with code {}{}",
            main.exit_code,
            with_message(&main.message)
        ),
    }
}

/// What the executor knows of one job name.
#[derive(Debug)]
pub(super) struct Tracked {
    /// The attempt: as submitted, or as read back from the Job.
    pub(super) step: Option<StepJob>,
    pub(super) state: JobState,
    /// The latest Job seen on the cluster.
    pub(super) job: Option<Job>,
    /// The Job is on the cluster (seen by the watch and not deleted since).
    pub(super) present: bool,
    /// `cancel` asked for it to stop.
    pub(super) cancelled: bool,
    /// Its outcome is being worked out; only that work may end it.
    pub(super) finishing: bool,
}

impl Tracked {
    pub(super) fn submitted(step: StepJob) -> Self {
        Tracked {
            step: Some(step),
            state: JobState::Pending,
            job: None,
            present: false,
            cancelled: false,
            finishing: false,
        }
    }
}

/// Work the watches ask the executor to do.
#[derive(Debug, PartialEq)]
pub(super) enum Action {
    /// Push this event.
    Emit(JobEvent),
    /// The Job completed: read the outputs `launch` stored.
    Resolve(String),
    /// The Job failed: work out why.
    Diagnose(String),
    /// A pod got stuck: check again when the grace ends.
    CheckStuck { job: String, at: Instant },
}

/// Everything the watches have told, per job name.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub(super) jobs: HashMap<String, Tracked>,
    pub(super) pods: HashMap<String, HashMap<String, PodInfo>>,
    /// Names seen since the watch started its current (re)list.
    listing_jobs: Option<HashSet<String>>,
    listing_pods: Option<HashSet<(String, String)>>,
}

impl Ledger {
    /// Sets the terminal state of `name` unless it has one; the event to push if it changed.
    pub(super) fn finish(&mut self, name: &str, state: JobState) -> Option<Action> {
        let tracked = self.jobs.get_mut(name)?;
        if tracked.state.is_terminal() {
            return None;
        }
        tracked.state = state.clone();
        tracked.finishing = false;
        Some(Action::Emit(JobEvent {
            name: name.to_owned(),
            state,
        }))
    }

    /// The pod that tells most about job `name`: one that ran, else any.
    pub(super) fn pod(&self, name: &str) -> Option<&PodInfo> {
        let pods = self.pods.get(name)?;
        pods.values()
            .find(|p| p.main.is_some() || p.init_failed.is_some())
            .or_else(|| pods.values().find(|p| p.running))
            .or_else(|| pods.values().next())
    }

    /// A watch started listing (again); what it does not list by the end is gone.
    pub(super) fn jobs_listing(&mut self) {
        self.listing_jobs = Some(HashSet::new());
    }

    pub(super) fn pods_listing(&mut self) {
        self.listing_pods = Some(HashSet::new());
    }

    /// The list is complete: Jobs that were present and are not listed were deleted while
    /// the watch was away.
    pub(super) fn jobs_listed(&mut self, stuck_grace: Duration) -> Vec<Action> {
        let Some(listed) = self.listing_jobs.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .jobs
            .iter()
            .filter(|(name, t)| t.present && !listed.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        let mut actions = Vec::new();
        for name in gone {
            actions.extend(self.job_deleted(&name, stuck_grace));
        }
        actions
    }

    pub(super) fn pods_listed(&mut self, stuck_grace: Duration) -> Vec<Action> {
        let Some(listed) = self.listing_pods.take() else {
            return Vec::new();
        };
        let gone: Vec<(String, String)> = self
            .pods
            .iter()
            .flat_map(|(job, pods)| pods.keys().map(move |pod| (job.clone(), pod.clone())))
            .filter(|key| !listed.contains(key))
            .collect();
        let mut actions = Vec::new();
        for (job, pod) in gone {
            actions.extend(self.pod_deleted(&job, &pod, stuck_grace));
        }
        actions
    }

    /// A Job was added or changed.
    pub(super) fn job_applied(&mut self, job: Job) -> Vec<Action> {
        let Some(name) = job.metadata.name.clone() else {
            return Vec::new();
        };
        if let Some(listing) = &mut self.listing_jobs {
            listing.insert(name.clone());
        }
        let tracked = self.jobs.entry(name.clone()).or_insert_with(|| Tracked {
            step: step_job_of(&job),
            state: JobState::Pending,
            job: None,
            present: true,
            cancelled: false,
            finishing: false,
        });
        tracked.present = true;
        let phase = phase(&job);
        let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        tracked.job = Some(job);
        if tracked.state.is_terminal() || tracked.finishing {
            return Vec::new();
        }
        match phase {
            Phase::Complete => {
                tracked.finishing = true;
                vec![Action::Resolve(name)]
            }
            Phase::Failed { .. } => {
                tracked.finishing = true;
                vec![Action::Diagnose(name)]
            }
            Phase::Active => {
                if !suspended {
                    self.refresh_running(&name);
                }
                Vec::new()
            }
        }
    }

    /// Pending or Running, from the pods of an active job.
    fn refresh_running(&mut self, name: &str) {
        let running = self
            .pods
            .get(name)
            .is_some_and(|pods| pods.values().any(|p| p.running));
        if let Some(tracked) = self.jobs.get_mut(name)
            && !tracked.state.is_terminal()
            && !tracked.finishing
        {
            tracked.state = if running {
                JobState::Running
            } else {
                JobState::Pending
            };
        }
    }

    /// A Job is gone from the cluster.
    pub(super) fn job_deleted(&mut self, name: &str, _stuck_grace: Duration) -> Vec<Action> {
        let Some(tracked) = self.jobs.get_mut(name) else {
            return Vec::new();
        };
        tracked.present = false;
        if tracked.state.is_terminal() || tracked.finishing {
            return Vec::new();
        }
        if tracked.cancelled {
            // Its pods are being stopped; the attempt has ended once they are gone.
            if self.pods.get(name).is_some_and(|pods| !pods.is_empty()) {
                return Vec::new();
            }
            return self.finish(name, JobState::Cancelled).into_iter().collect();
        }
        self.finish(
            name,
            JobState::Failed {
                exit_code: None,
                reason: "its Job was deleted before it finished".to_owned(),
            },
        )
        .into_iter()
        .collect()
    }

    /// A pod was added or changed.
    pub(super) fn pod_applied(
        &mut self,
        pod: &Pod,
        now: Instant,
        stuck_grace: Duration,
    ) -> Vec<Action> {
        let (Some(job), Some(pod_name)) = (job_of_pod(pod), pod.metadata.name.clone()) else {
            return Vec::new();
        };
        if let Some(listing) = &mut self.listing_pods {
            listing.insert((job.clone(), pod_name.clone()));
        }
        let pods = self.pods.entry(job.clone()).or_default();
        let info = pod_info(pod, pods.get(&pod_name), now);
        let check = match (&info.stuck_since, pods.get(&pod_name)) {
            (Some(since), before) if before.and_then(|b| b.stuck_since) != Some(*since) => {
                Some(Action::CheckStuck {
                    job: job.clone(),
                    at: *since + stuck_grace,
                })
            }
            _ => None,
        };
        pods.insert(pod_name, info);
        let active = self
            .jobs
            .get(&job)
            .and_then(|t| t.job.as_ref())
            .is_some_and(|j| phase(j) == Phase::Active);
        if active {
            self.refresh_running(&job);
        }
        check.into_iter().collect()
    }

    /// A pod is gone.
    pub(super) fn pod_deleted(
        &mut self,
        job: &str,
        pod: &str,
        _stuck_grace: Duration,
    ) -> Vec<Action> {
        let Some(pods) = self.pods.get_mut(job) else {
            return Vec::new();
        };
        pods.remove(pod);
        if !pods.is_empty() {
            return Vec::new();
        }
        self.pods.remove(job);
        match self.jobs.get(job) {
            Some(t) if t.cancelled && !t.present => {
                self.finish(job, JobState::Cancelled).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// The failure to report for `job` if a pod of it is still stuck for longer than the
    /// grace at `now`.
    pub(super) fn stuck_too_long(
        &self,
        job: &str,
        now: Instant,
        grace: Duration,
    ) -> Option<String> {
        let tracked = self.jobs.get(job)?;
        if tracked.state.is_terminal() || tracked.finishing || tracked.cancelled {
            return None;
        }
        self.pods.get(job)?.values().find_map(|p| {
            let since = p.stuck_since?;
            (now >= since + grace).then(|| p.stuck.as_ref().map(|s| s.words.clone()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "ty-1-train-1", "labels": {
                "app.kubernetes.io/managed-by": "trainyard",
                "trainyard.dev/run": "1", "trainyard.dev/step": "train"},
                "annotations": {"trainyard.dev/attempt": "1", "trainyard.dev/outputs": "[\"model\"]"}},
            "spec": {"activeDeadlineSeconds": 14400, "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "main", "image": "pytorch"}]}}},
            "status": status
        }))
        .expect("job")
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ty-1-train-1-abcde", "labels": {
                "batch.kubernetes.io/job-name": "ty-1-train-1"}},
            "spec": {"containers": [{"name": "main", "image": "ghcr.io/acme/train:1",
                "resources": {"limits": {"memory": "4Gi"}}}],
                "initContainers": [{"name": "install-trainyard", "image": "trainyard"}]},
            "status": status
        }))
        .expect("pod")
    }

    fn failed(reason: &str, message: &str) -> serde_json::Value {
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}]})
    }

    fn terminated(code: i32, reason: &str, message: &str) -> serde_json::Value {
        json!({"phase": "Failed", "containerStatuses": [{"name": "main", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}]})
    }

    fn info(status: serde_json::Value) -> PodInfo {
        pod_info(&pod(status), None, Instant::now())
    }

    #[test]
    fn an_oom_kill_asks_for_more_memory() {
        let pod = info(terminated(137, "OOMKilled", ""));
        let state = failed_state(&job(json!({})), "BackoffLimitExceeded", "", Some(&pod));
        assert_eq!(
            state,
            JobState::Failed {
                exit_code: Some(137),
                reason: "out of memory (OOMKilled) at its 4Gi limit — raise resources.memory"
                    .to_owned()
            }
        );
    }

    #[test]
    fn a_deadline_is_reported_as_the_steps_timeout() {
        let job = job(failed(
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ));
        let pod = info(terminated(143, "Error", ""));
        assert_eq!(
            failed_state(&job, "DeadlineExceeded", "", Some(&pod)),
            JobState::Failed {
                exit_code: None,
                reason: "timed out after 4h".to_owned()
            }
        );
    }

    #[test]
    fn an_exit_code_carries_the_termination_message() {
        let pod = info(terminated(3, "Error", "Traceback\nValueError: bad lr\n"));
        assert_eq!(
            failed_state(&job(json!({})), "BackoffLimitExceeded", "", Some(&pod)),
            JobState::Failed {
                exit_code: Some(3),
                reason: "exited with code 3: Traceback\nValueError: bad lr".to_owned()
            }
        );
    }

    #[test]
    fn a_report_from_launch_is_taken_as_written() {
        let failure = |message: &str, code: i32| {
            let pod = info(terminated(code, "Error", message));
            failed_state(&job(json!({})), "BackoffLimitExceeded", "", Some(&pod))
        };
        let failed = |exit_code: Option<i32>, reason: &str| JobState::Failed {
            exit_code,
            reason: reason.to_owned(),
        };
        let missing = r#"input "runs/9/prepare/data" is not in the artifact store"#;
        let report = |code: Option<i32>, reason: &str| {
            serde_json::to_string(&TerminationReport {
                exit_code: code,
                reason: reason.to_owned(),
            })
            .expect("a report serializes")
        };
        assert_eq!(failure(&report(None, missing), 1), failed(None, missing));
        let unwritten = "output `model` was not written";
        assert_eq!(
            failure(&report(Some(0), unwritten), 1),
            failed(Some(0), unwritten),
            "the program succeeded; launch failed after it"
        );
        assert_eq!(
            failure(&report(Some(1), "exited with code 1"), 1),
            failed(Some(1), "exited with code 1"),
            "only the report tells a program's 1 from launch's own"
        );
        assert_eq!(
            failure(&report(None, "stopped by SIGTERM"), 143),
            failed(None, "stopped by SIGTERM")
        );
        assert_eq!(
            failure("a line of the log", 2),
            failed(Some(2), "exited with code 2: a line of the log"),
            "a message that is not a report is the log's tail"
        );
    }

    #[test]
    fn a_failed_init_container_says_the_binary_could_not_be_installed() {
        let pod = info(
            json!({"phase": "Failed", "initContainerStatuses": [{"name": "install-trainyard",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "cp: not found"}}}]}),
        );
        let JobState::Failed { reason, .. } =
            failed_state(&job(json!({})), "BackoffLimitExceeded", "", Some(&pod))
        else {
            panic!("failed");
        };
        assert_eq!(
            reason,
            "could not install trainyard in the pod (Init:Error): exited with code 1: cp: not found"
        );
    }

    #[test]
    fn a_pulled_image_that_fails_is_stuck_with_the_image_named() {
        let pod = info(
            json!({"phase": "Pending", "containerStatuses": [{"name": "main", "image": "x",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
        );
        let stuck = pod.stuck.expect("stuck");
        assert_eq!(stuck.reason, "ImagePullBackOff");
        assert_eq!(
            stuck.words,
            "image ghcr.io/acme/train:1 could not be pulled (ImagePullBackOff): Back-off pulling image"
        );
        assert!(pod.stuck_since.is_some());
    }

    #[test]
    fn an_unschedulable_pod_names_the_missing_resource() {
        let pod = info(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}),
        );
        assert_eq!(
            pod.stuck.expect("stuck").words,
            "no node can run it: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu (Unschedulable)"
        );
    }

    #[test]
    fn a_pod_stuck_for_the_same_reason_keeps_the_time_it_got_stuck() {
        let waiting = json!({"phase": "Pending", "containerStatuses": [{"name": "main", "image": "x",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]});
        let first = pod_info(&pod(waiting.clone()), None, Instant::now());
        let later = Instant::now() + Duration::from_secs(60);
        let again = pod_info(&pod(waiting), Some(&first), later);
        assert_eq!(again.stuck_since, first.stuck_since);
        let other = pod_info(&pod(json!({"phase": "Pending"})), Some(&first), later);
        assert_eq!(other.stuck_since, None);
    }

    #[test]
    fn a_completed_job_is_resolved_once_and_a_later_change_does_not_end_it_again() {
        let mut ledger = Ledger::default();
        let complete = job(json!({"conditions": [{"type": "Complete", "status": "True"}]}));
        assert_eq!(
            ledger.job_applied(complete.clone()),
            vec![Action::Resolve("ty-1-train-1".to_owned())]
        );
        assert!(ledger.job_applied(complete.clone()).is_empty());
        let artifacts = Vec::new();
        assert!(
            ledger
                .finish("ty-1-train-1", JobState::Succeeded { artifacts })
                .is_some()
        );
        assert!(ledger.job_applied(complete).is_empty());
        assert!(ledger.finish("ty-1-train-1", JobState::Cancelled).is_none());
        let tracked = &ledger.jobs["ty-1-train-1"];
        let step = tracked.step.as_ref().expect("read back from labels");
        assert_eq!(
            (step.run_id, step.step.as_str(), step.attempt),
            (1, "train", 1)
        );
        assert_eq!(step.outputs[0].key, "runs/1/train/model");
    }

    #[test]
    fn a_job_missing_from_a_relist_was_deleted_while_the_watch_was_away() {
        let mut ledger = Ledger::default();
        ledger.job_applied(job(json!({})));
        ledger.jobs_listing();
        let actions = ledger.jobs_listed(Duration::from_secs(600));
        assert_eq!(
            actions,
            vec![Action::Emit(JobEvent {
                name: "ty-1-train-1".to_owned(),
                state: JobState::Failed {
                    exit_code: None,
                    reason: "its Job was deleted before it finished".to_owned()
                }
            })]
        );
    }

    #[test]
    fn a_cancelled_job_ends_when_its_last_pod_is_gone() {
        let mut ledger = Ledger::default();
        let grace = Duration::from_secs(600);
        ledger.job_applied(job(json!({"active": 1})));
        let running = json!({"phase": "Running", "containerStatuses": [{"name": "main", "image": "x",
            "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]});
        ledger.pod_applied(&pod(running), Instant::now(), grace);
        assert_eq!(ledger.jobs["ty-1-train-1"].state, JobState::Running);
        ledger
            .jobs
            .get_mut("ty-1-train-1")
            .expect("tracked")
            .cancelled = true;
        assert!(ledger.job_deleted("ty-1-train-1", grace).is_empty());
        assert_eq!(
            ledger.pod_deleted("ty-1-train-1", "ty-1-train-1-abcde", grace),
            vec![Action::Emit(JobEvent {
                name: "ty-1-train-1".to_owned(),
                state: JobState::Cancelled
            })]
        );
    }

    #[test]
    fn a_stuck_pod_asks_for_a_check_when_its_grace_ends() {
        let mut ledger = Ledger::default();
        let grace = Duration::from_secs(600);
        ledger.job_applied(job(json!({"active": 1})));
        let now = Instant::now();
        let stuck = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "main",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": "secret \"wandb\" not found"}}}]}),
        );
        assert_eq!(
            ledger.pod_applied(&stuck, now, grace),
            vec![Action::CheckStuck {
                job: "ty-1-train-1".to_owned(),
                at: now + grace
            }]
        );
        assert!(
            ledger
                .pod_applied(&stuck, now + grace / 2, grace)
                .is_empty()
        );
        assert_eq!(
            ledger.stuck_too_long("ty-1-train-1", now + grace / 2, grace),
            None
        );
        assert_eq!(
            ledger
                .stuck_too_long("ty-1-train-1", now + grace, grace)
                .as_deref(),
            Some(
                r#"the container could not be created (CreateContainerConfigError): secret "wandb" not found"#
            )
        );
    }
}
