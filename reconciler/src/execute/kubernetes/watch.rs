//! What the watches on labelled Jobs and Pods tell: per job name its latest Job, its pods'
//! states, and the attempt's [`JobState`], with failure reasons in words people understand.
//! Everything here is synchronous bookkeeping; the executor performs the I/O it asks for.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
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
    /// When its main container started running, while it runs.
    pub(super) running: Option<DateTime<Utc>>,
    /// How long the kubelet waits after SIGTERM before it kills the pod.
    pub(super) grace: Duration,
    pub(super) main: Option<Ended>,
    pub(super) init_failed: Option<Ended>,
    pub(super) stuck: Option<Stuck>,
    /// When the pod became stuck for its current reason.
    pub(super) stuck_since: Option<Instant>,
    pub(super) memory_limit: Option<String>,
}

/// The kubelet's wait between SIGTERM and SIGKILL when a pod names none.
const DEFAULT_TERMINATION_GRACE: Duration = Duration::from_secs(30);

/// A Kubernetes timestamp as chrono's.
fn time_of(time: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(time.as_second(), time.subsec_nanosecond().max(0) as u32)
        .unwrap_or_else(Utc::now)
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
        .and_then(|c| c.state.as_ref()?.running.as_ref())
        .map(|r| {
            r.started_at
                .as_ref()
                .map_or_else(Utc::now, |t| time_of(&t.0))
        });
    let grace = spec
        .and_then(|s| s.termination_grace_period_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_TERMINATION_GRACE, Duration::from_secs);
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
        grace,
        main,
        init_failed,
        stuck,
        stuck_since,
        memory_limit,
    }
}

/// Reads the [`TerminationReport`] `trainyard-launch` writes as the termination message.
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
    /// Someone wants this job's outcome: this process submitted it, or asked about it. Only
    /// then is a finished Job's outcome worked out as soon as it finishes (reading the
    /// artifact store or the API), and events pushed for it; other Jobs found on the
    /// cluster are worked out when first asked about.
    pub(super) wanted: bool,
    /// The Job finished and nobody has asked about it yet: what to do once someone does.
    pub(super) unresolved: Option<Action>,
    /// When `cancel` deleted the Job; the attempt is cancelled once its pods are gone.
    pub(super) cancelled: Option<Instant>,
    /// Its outcome is being worked out; only that work may end it.
    pub(super) finishing: bool,
    /// Since when the Job is active and unsuspended with no pod, if it is.
    pub(super) podless_since: Option<Instant>,
    /// The Running event was pushed.
    pub(super) announced: bool,
}

impl Tracked {
    pub(super) fn submitted(step: StepJob) -> Self {
        Tracked {
            wanted: true,
            ..Tracked::found(Some(step))
        }
    }

    fn found(step: Option<StepJob>) -> Self {
        Tracked {
            step,
            state: JobState::Pending,
            job: None,
            present: false,
            wanted: false,
            unresolved: None,
            cancelled: None,
            finishing: false,
            podless_since: None,
            announced: false,
        }
    }
}

/// Work the watches ask the executor to do.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Push this event.
    Emit(JobEvent),
    /// The Job completed: read the outputs `launch` stored.
    Resolve(String),
    /// The Job failed: work out why.
    Diagnose(String),
    /// A pod got stuck: check again when the grace ends.
    CheckStuck { job: String, at: Instant },
    /// The Job has no pod: at `at`, ask the API's events why its pod cannot be created.
    CheckPodless { job: String, at: Instant },
    /// A cancelled Job's pods had their grace: at `at`, force-delete those left.
    ForceDelete { job: String, at: Instant },
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
    /// Sets the terminal state of `name` unless it has one; the event to push if it changed
    /// and someone wants it.
    pub(super) fn finish(&mut self, name: &str, state: JobState) -> Option<Action> {
        let tracked = self.jobs.get_mut(name)?;
        if tracked.state.is_terminal() {
            return None;
        }
        tracked.state = state.clone();
        tracked.finishing = false;
        tracked.unresolved = None;
        tracked.wanted.then(|| {
            Action::Emit(JobEvent {
                name: name.to_owned(),
                state,
            })
        })
    }

    /// The pod that tells most about job `name`: one that ran, else any.
    pub(super) fn pod(&self, name: &str) -> Option<&PodInfo> {
        let pods = self.pods.get(name)?;
        pods.values()
            .find(|p| p.main.is_some() || p.init_failed.is_some())
            .or_else(|| pods.values().find(|p| p.running.is_some()))
            .or_else(|| pods.values().next())
    }

    fn has_pods(&self, name: &str) -> bool {
        self.pods.get(name).is_some_and(|pods| !pods.is_empty())
    }

    /// Someone asks about `name`: from now on its outcome is worked out as it comes. The
    /// work a finished Job was waiting for, if any.
    pub(super) fn want(&mut self, name: &str) -> Option<Action> {
        let tracked = self.jobs.get_mut(name)?;
        tracked.wanted = true;
        let action = tracked.unresolved.take();
        if action.is_some() {
            tracked.finishing = true;
        }
        action
    }

    /// `cancel` is about to delete the Job: whether it should (it was not deleted before and
    /// has not ended); unknown names have nothing to delete.
    pub(super) fn start_cancel(&mut self, name: &str, now: Instant) -> bool {
        match self.jobs.get_mut(name) {
            Some(t) if !t.state.is_terminal() && t.cancelled.is_none() => {
                t.cancelled = Some(now);
                t.wanted = true;
                true
            }
            _ => false,
        }
    }

    /// The delete `cancel` sent failed: a later `cancel` tries again.
    pub(super) fn cancel_failed(&mut self, name: &str) {
        if let Some(t) = self.jobs.get_mut(name) {
            t.cancelled = None;
        }
    }

    /// The Job `cancel` deleted is gone, or was never there (404): cancelled now if no pod is
    /// left; otherwise once they are, or when their grace is over (force-deleted then).
    pub(super) fn cancel_sent(&mut self, name: &str, now: Instant, gone: bool) -> Vec<Action> {
        if gone && let Some(t) = self.jobs.get_mut(name) {
            t.present = false;
        }
        let Some(tracked) = self.jobs.get(name) else {
            return Vec::new();
        };
        if tracked.state.is_terminal() || tracked.finishing {
            return Vec::new();
        }
        // A Job this delete removed is confirmed gone by its watch event.
        if gone && !self.has_pods(name) {
            return self.finish(name, JobState::Cancelled).into_iter().collect();
        }
        let grace = self
            .pods
            .get(name)
            .and_then(|pods| pods.values().map(|p| p.grace).max())
            .unwrap_or(DEFAULT_TERMINATION_GRACE);
        // A kubelet kills the pod at the end of its grace; a little later it should be gone.
        let at = now + grace + Duration::from_secs(5);
        vec![Action::ForceDelete {
            job: name.to_owned(),
            at,
        }]
    }

    /// The pods of a cancelled `job` still there when their grace is over.
    pub(super) fn left_after_grace(&self, job: &str) -> Vec<String> {
        match self.jobs.get(job) {
            Some(t) if t.cancelled.is_some() && !t.state.is_terminal() => self
                .pods
                .get(job)
                .map(|pods| pods.keys().cloned().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
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
    pub(super) fn jobs_listed(&mut self, now: Instant, stuck_grace: Duration) -> Vec<Action> {
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
            actions.extend(self.job_deleted(&name));
        }
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            actions.extend(self.refresh(&name, now, stuck_grace));
        }
        actions
    }

    pub(super) fn pods_listed(&mut self, now: Instant, stuck_grace: Duration) -> Vec<Action> {
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
            actions.extend(self.pod_deleted(&job, &pod, now, stuck_grace));
        }
        actions
    }

    /// A Job was added or changed.
    pub(super) fn job_applied(
        &mut self,
        job: Job,
        now: Instant,
        stuck_grace: Duration,
    ) -> Vec<Action> {
        let Some(name) = job.metadata.name.clone() else {
            return Vec::new();
        };
        if let Some(listing) = &mut self.listing_jobs {
            listing.insert(name.clone());
        }
        let tracked = self
            .jobs
            .entry(name.clone())
            .or_insert_with(|| Tracked::found(step_job_of(&job)));
        if tracked.step.is_none() {
            tracked.step = step_job_of(&job);
        }
        tracked.present = true;
        let phase = phase(&job);
        tracked.job = Some(job);
        if tracked.state.is_terminal() || tracked.finishing || tracked.unresolved.is_some() {
            return Vec::new();
        }
        let work = match phase {
            Phase::Complete => Action::Resolve(name.clone()),
            Phase::Failed { .. } => Action::Diagnose(name.clone()),
            Phase::Active => return self.refresh(&name, now, stuck_grace),
        };
        let Some(tracked) = self.jobs.get_mut(&name) else {
            return Vec::new();
        };
        if tracked.wanted {
            tracked.finishing = true;
            vec![work]
        } else {
            tracked.unresolved = Some(work);
            Vec::new()
        }
    }

    /// Pending or Running, from the Job and the pods of an active job; and the checks a Job
    /// without pods needs.
    fn refresh(&mut self, name: &str, now: Instant, stuck_grace: Duration) -> Vec<Action> {
        let running = self
            .pods
            .get(name)
            .and_then(|pods| pods.values().filter_map(|p| p.running).min());
        let has_pods = self.has_pods(name);
        let Some(tracked) = self.jobs.get_mut(name) else {
            return Vec::new();
        };
        let Some(job) = &tracked.job else {
            return Vec::new();
        };
        if tracked.state.is_terminal()
            || tracked.finishing
            || tracked.unresolved.is_some()
            || phase(job) != Phase::Active
        {
            return Vec::new();
        }
        // A Job that Kueue holds (or preempted) is queued, whatever its pods last said.
        let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        let mut actions = Vec::new();
        if suspended || has_pods || tracked.cancelled.is_some() {
            tracked.podless_since = None;
        } else if tracked.podless_since.is_none() {
            tracked.podless_since = Some(now);
            actions.push(Action::CheckPodless {
                job: name.to_owned(),
                at: now + stuck_grace,
            });
        }
        tracked.state = match running {
            Some(since) if !suspended => JobState::Running { since },
            _ => JobState::Pending,
        };
        if let JobState::Running { .. } = tracked.state
            && !tracked.announced
            && tracked.wanted
        {
            tracked.announced = true;
            actions.push(Action::Emit(JobEvent {
                name: name.to_owned(),
                state: tracked.state.clone(),
            }));
        }
        actions
    }

    /// Whether `job` still has no pod at `now`, a whole grace after it was first seen so.
    pub(super) fn podless_too_long(&self, job: &str, now: Instant, grace: Duration) -> bool {
        self.jobs.get(job).is_some_and(|t| {
            !t.state.is_terminal()
                && !t.finishing
                && t.cancelled.is_none()
                && t.podless_since.is_some_and(|since| now >= since + grace)
        }) && !self.has_pods(job)
    }

    /// A Job is gone from the cluster.
    pub(super) fn job_deleted(&mut self, name: &str) -> Vec<Action> {
        let has_pods = self.has_pods(name);
        let Some(tracked) = self.jobs.get_mut(name) else {
            return Vec::new();
        };
        tracked.present = false;
        tracked.podless_since = None;
        if tracked.state.is_terminal() || tracked.finishing {
            return Vec::new();
        }
        if tracked.cancelled.is_some() {
            // Its pods are being stopped; the attempt has ended once they are gone.
            if has_pods {
                return Vec::new();
            }
            return self.finish(name, JobState::Cancelled).into_iter().collect();
        }
        if tracked.unresolved.is_some() {
            // It finished before it went (its TTL, say); its outcome is what it finished with.
            return Vec::new();
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
        let mut actions: Vec<Action> = check.into_iter().collect();
        actions.extend(self.refresh(&job, now, stuck_grace));
        actions
    }

    /// A pod is gone.
    pub(super) fn pod_deleted(
        &mut self,
        job: &str,
        pod: &str,
        now: Instant,
        stuck_grace: Duration,
    ) -> Vec<Action> {
        let Some(pods) = self.pods.get_mut(job) else {
            return Vec::new();
        };
        pods.remove(pod);
        if !pods.is_empty() {
            return self.refresh(job, now, stuck_grace);
        }
        self.pods.remove(job);
        match self.jobs.get(job) {
            Some(t) if t.cancelled.is_some() && !t.present => {
                self.finish(job, JobState::Cancelled).into_iter().collect()
            }
            _ => self.refresh(job, now, stuck_grace),
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
        if tracked.state.is_terminal() || tracked.finishing || tracked.cancelled.is_some() {
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

    const NAME: &str = "ty-t-1-train-1";
    const POD: &str = "ty-t-1-train-1-abcde";
    const GRACE: Duration = Duration::from_secs(600);

    fn running() -> serde_json::Value {
        json!({"phase": "Running", "containerStatuses": [{"name": "main", "image": "x",
            "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
    }

    fn started() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().expect("a time")
    }

    fn submitted() -> StepJob {
        step_job_of(&job(json!({}))).expect("labelled")
    }

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": NAME, "uid": "u-1", "labels": {
                "app.kubernetes.io/managed-by": "trainyard", "trainyard.dev/instance": "t",
                "trainyard.dev/run": "1", "trainyard.dev/step": "train", "trainyard.dev/attempt": "1"},
                "annotations": {"trainyard.dev/outputs": "[\"model\"]"}},
            "spec": {"activeDeadlineSeconds": 14400, "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "main", "image": "pytorch"}]}}},
            "status": status
        }))
        .expect("job")
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD, "labels": {
                "batch.kubernetes.io/job-name": NAME}},
            "spec": {"terminationGracePeriodSeconds": 7, "containers": [{"name": "main", "image": "ghcr.io/acme/train:1",
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
        let missing = r#"input "t/runs/9/prepare/data" is not in the artifact store"#;
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
    fn a_submitted_job_is_resolved_once_it_completes_and_a_later_change_does_not_end_it_again() {
        let mut ledger = Ledger::default();
        ledger
            .jobs
            .insert(NAME.to_owned(), Tracked::submitted(submitted()));
        let now = Instant::now();
        let complete = job(json!({"conditions": [{"type": "Complete", "status": "True"}]}));
        assert_eq!(
            ledger.job_applied(complete.clone(), now, GRACE),
            vec![Action::Resolve(NAME.to_owned())]
        );
        assert!(ledger.job_applied(complete.clone(), now, GRACE).is_empty());
        let artifacts = Vec::new();
        assert!(
            ledger
                .finish(NAME, JobState::Succeeded { artifacts })
                .is_some()
        );
        assert!(ledger.job_applied(complete, now, GRACE).is_empty());
        assert!(ledger.finish(NAME, JobState::Cancelled).is_none());
        let step = ledger.jobs[NAME].step.as_ref().expect("known");
        assert_eq!(
            (
                step.instance.as_str(),
                step.run_id,
                step.step.as_str(),
                step.attempt
            ),
            ("t", 1, "train", 1)
        );
        assert_eq!(step.outputs[0].key, "t/runs/1/train/model");
    }

    #[test]
    fn a_job_found_finished_is_worked_out_only_when_someone_asks_about_it() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let complete = job(json!({"conditions": [{"type": "Complete", "status": "True"}]}));
        assert!(
            ledger.job_applied(complete, now, GRACE).is_empty(),
            "nobody asked: nothing is read"
        );
        assert_eq!(ledger.jobs[NAME].state, JobState::Pending);
        assert_eq!(ledger.want(NAME), Some(Action::Resolve(NAME.to_owned())));
        assert!(ledger.jobs[NAME].finishing);
        assert_eq!(ledger.want(NAME), None, "asked once, worked out once");
        let failed = job(json!({"conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded"}]}));
        let mut other = Ledger::default();
        assert!(other.job_applied(failed, now, GRACE).is_empty());
        assert!(other.job_deleted(NAME).is_empty(), "its TTL removed it");
        assert_eq!(other.want(NAME), Some(Action::Diagnose(NAME.to_owned())));
    }

    #[test]
    fn a_job_missing_from_a_relist_was_deleted_while_the_watch_was_away() {
        let mut ledger = Ledger::default();
        ledger
            .jobs
            .insert(NAME.to_owned(), Tracked::submitted(submitted()));
        let now = Instant::now();
        ledger.job_applied(job(json!({})), now, GRACE);
        ledger.jobs_listing();
        let actions = ledger.jobs_listed(now, GRACE);
        assert_eq!(
            actions,
            vec![Action::Emit(JobEvent {
                name: NAME.to_owned(),
                state: JobState::Failed {
                    exit_code: None,
                    reason: "its Job was deleted before it finished".to_owned()
                }
            })]
        );
    }

    #[test]
    fn a_running_pod_makes_the_attempt_running_since_its_start_announced_once() {
        let mut ledger = Ledger::default();
        ledger
            .jobs
            .insert(NAME.to_owned(), Tracked::submitted(submitted()));
        let now = Instant::now();
        ledger.job_applied(job(json!({"active": 1})), now, GRACE);
        let since = started();
        assert_eq!(
            ledger.pod_applied(&pod(running()), now, GRACE),
            vec![Action::Emit(JobEvent {
                name: NAME.to_owned(),
                state: JobState::Running { since }
            })]
        );
        assert!(ledger.pod_applied(&pod(running()), now, GRACE).is_empty());
        assert_eq!(ledger.jobs[NAME].state, JobState::Running { since });
    }

    #[test]
    fn a_job_kueue_holds_is_pending_even_with_a_pod_still_running() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let mut suspended = job(json!({"active": 1}));
        if let Some(spec) = suspended.spec.as_mut() {
            spec.suspend = Some(true);
        }
        ledger.pod_applied(&pod(running()), now, GRACE);
        assert!(ledger.job_applied(suspended, now, GRACE).is_empty());
        assert_eq!(ledger.jobs[NAME].state, JobState::Pending);
    }

    #[test]
    fn a_job_without_a_pod_asks_for_a_check_when_the_grace_ends() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        assert_eq!(
            ledger.job_applied(job(json!({"active": 0})), now, GRACE),
            vec![Action::CheckPodless {
                job: NAME.to_owned(),
                at: now + GRACE
            }]
        );
        assert!(!ledger.podless_too_long(NAME, now + GRACE / 2, GRACE));
        assert!(ledger.podless_too_long(NAME, now + GRACE, GRACE));
        ledger.pod_applied(&pod(json!({"phase": "Pending"})), now, GRACE);
        assert!(!ledger.podless_too_long(NAME, now + GRACE, GRACE));
    }

    #[test]
    fn a_cancelled_job_is_deleted_once_and_ends_when_its_last_pod_is_gone() {
        let mut ledger = Ledger::default();
        ledger
            .jobs
            .insert(NAME.to_owned(), Tracked::submitted(submitted()));
        let now = Instant::now();
        ledger.job_applied(job(json!({"active": 1})), now, GRACE);
        ledger.pod_applied(&pod(running()), now, GRACE);
        assert!(ledger.start_cancel(NAME, now));
        assert!(!ledger.start_cancel(NAME, now), "deleted once");
        assert!(
            !ledger.start_cancel("ty-t-9-other-1", now),
            "unknown: nothing"
        );
        assert_eq!(
            ledger.cancel_sent(NAME, now, false),
            vec![Action::ForceDelete {
                job: NAME.to_owned(),
                at: now + Duration::from_secs(7 + 5)
            }],
            "the pod's own grace, then a little more"
        );
        assert!(ledger.job_deleted(NAME).is_empty(), "its pod still stops");
        assert_eq!(ledger.left_after_grace(NAME), [POD]);
        assert_eq!(
            ledger.pod_deleted(NAME, POD, now, GRACE),
            vec![Action::Emit(JobEvent {
                name: NAME.to_owned(),
                state: JobState::Cancelled
            })]
        );
        assert!(ledger.left_after_grace(NAME).is_empty());
    }

    #[test]
    fn a_cancel_of_a_job_already_gone_without_pods_ends_at_once() {
        let mut ledger = Ledger::default();
        ledger
            .jobs
            .insert(NAME.to_owned(), Tracked::submitted(submitted()));
        let now = Instant::now();
        assert!(ledger.start_cancel(NAME, now));
        assert_eq!(
            ledger.cancel_sent(NAME, now, true),
            vec![Action::Emit(JobEvent {
                name: NAME.to_owned(),
                state: JobState::Cancelled
            })]
        );
    }

    #[test]
    fn a_stuck_pod_asks_for_a_check_when_its_grace_ends() {
        let mut ledger = Ledger::default();
        let grace = GRACE;
        let now = Instant::now();
        ledger.job_applied(job(json!({"active": 1})), now, grace);
        let stuck = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "main",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": "secret \"wandb\" not found"}}}]}),
        );
        assert_eq!(
            ledger.pod_applied(&stuck, now, grace),
            vec![Action::CheckStuck {
                job: NAME.to_owned(),
                at: now + grace
            }]
        );
        assert!(
            ledger
                .pod_applied(&stuck, now + grace / 2, grace)
                .is_empty()
        );
        assert_eq!(ledger.stuck_too_long(NAME, now + grace / 2, grace), None);
        assert_eq!(
            ledger.stuck_too_long(NAME, now + grace, grace).as_deref(),
            Some(
                r#"the container could not be created (CreateContainerConfigError): secret "wandb" not found"#
            )
        );
    }
}
