//! The Kubernetes executor: every step attempt is a batch/v1 Job, followed through one
//! shared watch on labelled Jobs and one on their Pods (never by polling a Job), with its
//! outcome read from what `trainyard-launch` stored in the artifact store.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as ApiEvent, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ExecError, Executor, JobEvent, JobState, StepJob, is_instance, launcher};
use crate::artifacts::ArtifactStore;
pub use launcher::TerminationReport;

mod api;
pub mod manifest;
pub mod settings;
#[cfg(test)]
mod tests;
mod watch;

pub use settings::{ClusterSettings, GpuType};

use api::{RateLimit, status_code};
use manifest::{JOB_NAME_LABEL, MAIN_CONTAINER};
use watch::{Action, Ledger, Tracked};

/// The API access this backend needs, as (API group, resource, verbs): what the service's
/// Role must grant in the namespace, and nothing more.
pub const REQUIRED_RULES: &[(&str, &str, &[&str])] = &[
    (
        "batch",
        "jobs",
        &["create", "delete", "get", "list", "watch"],
    ),
    ("", "pods", &["delete", "list", "watch"]),
    ("", "pods/log", &["get"]),
    ("", "events", &["list"]),
];

/// How long a call that needs the watches' first lists waits for them before it fails.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// How many times the outcome of a completed Job is looked up in the artifact store before
/// the attempt is failed for it.
const OUTCOME_TRIES: u32 = 5;

/// Runs step attempts as Jobs on a cluster. Cheap to clone; clones share their watches.
#[derive(Debug, Clone)]
pub struct KubernetesExecutor {
    shared: Arc<Shared>,
    _watches: Arc<Watches>,
}

#[derive(Debug)]
struct Shared {
    jobs_api: Api<Job>,
    pods_api: Api<Pod>,
    events_api: Api<ApiEvent>,
    /// The installation whose Jobs these are: every Job is labelled with it, and the
    /// watches see no other.
    instance: String,
    settings: ClusterSettings,
    artifacts: ArtifactStore,
    artifacts_url: String,
    events: UnboundedSender<JobEvent>,
    limit: RateLimit,
    ledger: Mutex<Ledger>,
    /// Woken whenever a job reaches its terminal state, for `observe` waiting on one.
    finished: Notify,
    /// Whether the watches on Jobs and on Pods have each finished their first list.
    jobs_synced: signal::Sender<bool>,
    pods_synced: signal::Sender<bool>,
}

/// The watch tasks; they stop when the last clone of the executor is dropped.
#[derive(Debug)]
struct Watches(Vec<JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl KubernetesExecutor {
    /// An executor that creates the Jobs of installation `instance` in
    /// `settings.namespace` through `client`, whose steps move artifacts through the store
    /// at `artifacts_url` (the store `artifacts` opens), and that pushes when attempts start
    /// running and when they end to `events`. Starts the watches at once; must be called
    /// inside a Tokio runtime.
    pub fn new(
        client: kube::Client,
        instance: &str,
        settings: ClusterSettings,
        artifacts: ArtifactStore,
        artifacts_url: String,
        events: UnboundedSender<JobEvent>,
    ) -> Result<Self, ExecError> {
        if settings.namespace.is_empty() || settings.image.is_empty() {
            return Err(ExecError::Cluster {
                what: "settings".to_owned(),
                reason: "namespace and image must not be empty".to_owned(),
            });
        }
        if !is_instance(instance) {
            return Err(ExecError::Cluster {
                what: "settings".to_owned(),
                reason: format!(
                    "installation {instance:?} is not a DNS-1123 label of at most {} characters",
                    super::MAX_INSTANCE
                ),
            });
        }
        let jobs_api = Api::namespaced(client.clone(), &settings.namespace);
        let pods_api = Api::namespaced(client.clone(), &settings.namespace);
        let events_api = Api::namespaced(client, &settings.namespace);
        let shared = Arc::new(Shared {
            jobs_api,
            pods_api,
            events_api,
            instance: instance.to_owned(),
            limit: RateLimit::new(settings.api_qps, settings.api_burst),
            settings,
            artifacts,
            artifacts_url,
            events,
            ledger: Mutex::new(Ledger::default()),
            finished: Notify::new(),
            jobs_synced: signal::channel(false).0,
            pods_synced: signal::channel(false).0,
        });
        let watches = Watches(vec![
            tokio::spawn(watch_jobs(Arc::clone(&shared))),
            tokio::spawn(watch_pods(Arc::clone(&shared))),
        ]);
        Ok(KubernetesExecutor {
            shared,
            _watches: Arc::new(watches),
        })
    }

    /// The names of this installation's Jobs on the cluster, whichever process submitted
    /// them; for finding Jobs whose run the database does not know.
    pub fn jobs(&self) -> Vec<String> {
        let ledger = self.shared.ledger();
        let mut names: Vec<String> = ledger
            .jobs
            .iter()
            .filter(|(_, t)| t.present)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Waits until both watches have listed what was on the cluster when they started.
    pub async fn synced(&self) {
        for synced in [&self.shared.jobs_synced, &self.shared.pods_synced] {
            let mut receiver = synced.subscribe();
            // The sender lives as long as `shared`, which outlives this borrow.
            let _ = receiver.wait_for(|done| *done).await;
        }
    }

    /// Waits a while for both watches' first lists; an error if the API server has not
    /// answered them yet, so that a caller requeues its work instead of waiting out an
    /// outage (and telling "gone" from "not seen yet" needs those lists).
    async fn listed(&self) -> Result<(), ExecError> {
        match tokio::time::timeout(FIRST_LIST_WAIT, self.synced()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(ExecError::Cluster {
                what: "following Jobs".to_owned(),
                reason: format!(
                    "the namespace's Jobs and pods are not listed yet (no answer within {}s)",
                    FIRST_LIST_WAIT.as_secs()
                ),
            }),
        }
    }
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Updates of the ledger do not panic half-way; a poisoned lock holds consistent data.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries out what the watches asked for.
    fn perform(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Emit(event) => {
                    if event.state.is_terminal() {
                        tracing::info!(job = %event.name, state = ?event.state, "step ended");
                    } else {
                        tracing::info!(job = %event.name, state = ?event.state, "step running");
                    }
                    // A closed channel means the runtime is shutting down; the state stays
                    // observable.
                    let _ = self.events.send(event);
                }
                Action::Resolve(name) => {
                    tokio::spawn(Arc::clone(self).resolve(name));
                }
                Action::Diagnose(name) => {
                    tokio::spawn(Arc::clone(self).diagnose(name));
                }
                Action::CheckStuck { job, at } => {
                    tokio::spawn(Arc::clone(self).check_stuck(job, at));
                }
                Action::CheckPodless { job, at } => {
                    tokio::spawn(Arc::clone(self).check_podless(job, at));
                }
                Action::ForceDelete { job, at } => {
                    tokio::spawn(Arc::clone(self).force_delete(job, at));
                }
            }
        }
    }

    fn finish(self: &Arc<Self>, name: &str, state: JobState) {
        let action = self.ledger().finish(name, state);
        self.finished.notify_waiters();
        self.perform(action.into_iter().collect());
    }

    /// Works out the outcome of a finished Job someone now wants, in this task.
    async fn settle(self: &Arc<Self>, work: Action) {
        match work {
            Action::Resolve(name) => Arc::clone(self).resolve(name).await,
            Action::Diagnose(name) => Arc::clone(self).diagnose(name).await,
            other => self.perform(vec![other]),
        }
    }

    /// The pods of job `name` read once from the API, for when the Job's watch got ahead of
    /// the pods' watch.
    async fn catch_up_pods(self: &Arc<Self>, name: &str) {
        let params = ListParams::default().labels(&format!("{JOB_NAME_LABEL}={name}"));
        match api::call(&self.limit, "list pods", || self.pods_api.list(&params)).await {
            Ok(list) => {
                let now = Instant::now();
                let grace = self.settings.pending_timeout;
                let mut ledger = self.ledger();
                for pod in &list.items {
                    // Stuck checks are moot for a Job that has ended.
                    let _ = ledger.pod_applied(pod, now, grace);
                }
            }
            Err(error) => tracing::warn!(job = %name, %error, "could not read the Job's pods"),
        }
    }

    /// A Job completed: its outputs are what `launch` stored.
    async fn resolve(self: Arc<Self>, name: String) {
        let step = self.ledger().jobs.get(&name).and_then(|t| t.step.clone());
        let Some(step) = step else {
            self.finish(
                &name,
                JobState::Failed {
                    exit_code: None,
                    reason: "its Job does not say which run and step it is".to_owned(),
                },
            );
            return;
        };
        let mut tries = 0;
        let state = loop {
            tries += 1;
            match launcher::outcome(&self.artifacts, &step).await {
                Ok(Some(artifacts)) => break JobState::Succeeded { artifacts },
                Ok(None) => break self.unstored(&name).await,
                Err(error) if tries < OUTCOME_TRIES => {
                    tracing::warn!(job = %name, %error, "could not read the step's outcome; trying again");
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(tries)).await;
                }
                Err(error) => {
                    break JobState::Failed {
                        exit_code: None,
                        reason: format!("could not read the step's outcome: {error}"),
                    };
                }
            }
        };
        self.finish(&name, state);
    }

    /// The state of a completed Job whose outputs were not stored: what `launch` said, if it
    /// said something.
    async fn unstored(self: &Arc<Self>, name: &str) -> JobState {
        let ended = |shared: &Self| shared.ledger().pod(name).and_then(|p| p.main.clone());
        let main = match ended(self) {
            Some(main) => Some(main),
            None => {
                self.catch_up_pods(name).await;
                ended(self)
            }
        };
        let report = main.as_ref().and_then(|m| watch::launch_report(&m.message));
        match report {
            Some(report) => JobState::Failed {
                exit_code: report.exit_code,
                reason: report.reason,
            },
            None => JobState::Failed {
                exit_code: main.map(|m| m.exit_code),
                reason: "outputs were not stored".to_owned(),
            },
        }
    }

    /// A Job failed: say why, from its condition and its pod.
    async fn diagnose(self: Arc<Self>, name: String) {
        let known = |shared: &Self| {
            let ledger = shared.ledger();
            let job = ledger.jobs.get(&name).and_then(|t| t.job.clone());
            let pod = ledger.pod(&name).cloned();
            (job, pod)
        };
        let (mut job, mut pod) = known(&self);
        let Some(current) = &job else { return };
        let watch::Phase::Failed { reason, message } = watch::phase(current) else {
            return;
        };
        let explained = |pod: &Option<watch::PodInfo>| {
            pod.as_ref()
                .is_some_and(|p| p.main.is_some() || p.init_failed.is_some() || p.stuck.is_some())
        };
        if reason != "DeadlineExceeded" && !explained(&pod) {
            self.catch_up_pods(&name).await;
            (job, pod) = known(&self);
        }
        let Some(job) = job else { return };
        let state = watch::failed_state(&job, &reason, &message, pod.as_ref());
        self.finish(&name, state);
    }

    /// Deletes the Job of an attempt that is being failed for good, so that it does not
    /// start (or go on) after the attempt has ended.
    async fn delete_abandoned(self: &Arc<Self>, job: &str) {
        if let Some(tracked) = self.ledger().jobs.get_mut(job) {
            tracked.finishing = true;
        }
        let params = DeleteParams::background();
        let deleted = api::call(&self.limit, "delete job", || {
            self.jobs_api.delete(job, &params)
        })
        .await;
        match deleted {
            Ok(_) => {}
            Err(error) if status_code(&error) == Some(404) => {}
            Err(error) => {
                tracing::warn!(%job, %error, "could not delete the Job of a failed attempt");
            }
        }
    }

    /// A pod of `job` got stuck; at `at`, fail the attempt if it still is.
    async fn check_stuck(self: Arc<Self>, job: String, at: Instant) {
        tokio::time::sleep_until(at).await;
        let grace = self.settings.pending_timeout;
        let Some(reason) = self.ledger().stuck_too_long(&job, Instant::now(), grace) else {
            return;
        };
        tracing::info!(%job, %reason, "failing an attempt whose pod cannot start");
        self.delete_abandoned(&job).await;
        self.finish(
            &job,
            JobState::Failed {
                exit_code: None,
                reason,
            },
        );
    }

    /// `job` had no pod when it was last seen; at `at`, if it still has none, fail the
    /// attempt with what the Job controller said when it could not create one (its
    /// `FailedCreate` events: a quota, an admission webhook, a pod security policy…).
    async fn check_podless(self: Arc<Self>, job: String, at: Instant) {
        tokio::time::sleep_until(at).await;
        let grace = self.settings.pending_timeout;
        if !self.ledger().podless_too_long(&job, Instant::now(), grace) {
            return;
        }
        let uid = self
            .ledger()
            .jobs
            .get(&job)
            .and_then(|t| t.job.as_ref()?.metadata.uid.clone());
        let mut fields =
            format!("involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate");
        if let Some(uid) = &uid {
            fields.push_str(&format!(",involvedObject.uid={uid}"));
        }
        let params = ListParams::default().fields(&fields);
        let listed = api::call(&self.limit, "list events", || self.events_api.list(&params)).await;
        let said = match listed {
            Ok(list) => list
                .items
                .into_iter()
                .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
                .and_then(|e| e.message),
            Err(error) => {
                // The attempt is failed all the same: its pod has not come for too long.
                tracing::warn!(%job, %error, "could not read why the Job has no pod");
                None
            }
        };
        if !self.ledger().podless_too_long(&job, Instant::now(), grace) {
            return;
        }
        let waited = crate::spec::units::format_duration(grace);
        let reason = match said {
            Some(message) => format!(
                "its pod could not be created for {waited}: {}",
                message.strip_prefix("Error creating: ").unwrap_or(&message)
            ),
            None => format!(
                "its Job got no pod within {waited}, and the cluster's events do not say why"
            ),
        };
        tracing::info!(%job, %reason, "failing an attempt whose pod is not created");
        self.delete_abandoned(&job).await;
        self.finish(
            &job,
            JobState::Failed {
                exit_code: None,
                reason,
            },
        );
    }

    /// A cancelled `job`'s pods had their grace; at `at`, delete those still there with a
    /// grace of zero (a node that no longer answers never confirms a graceful stop).
    async fn force_delete(self: Arc<Self>, job: String, at: Instant) {
        tokio::time::sleep_until(at).await;
        let left = self.ledger().left_after_grace(&job);
        for pod in left {
            tracing::warn!(%job, %pod, "the pod of a cancelled step outlived its grace; force-deleting it");
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::background()
            };
            let deleted = api::call(&self.limit, "delete pod", || {
                self.pods_api.delete(&pod, &params)
            })
            .await;
            match deleted {
                Ok(_) => {}
                Err(error) if status_code(&error) == Some(404) => {}
                Err(error) => tracing::warn!(%job, %pod, %error, "could not force-delete a pod"),
            }
        }
    }

    fn on_job(self: &Arc<Self>, event: Event<Job>) {
        let grace = self.settings.pending_timeout;
        let now = Instant::now();
        let actions = {
            let mut ledger = self.ledger();
            match event {
                Event::Init => {
                    ledger.jobs_listing();
                    Vec::new()
                }
                Event::InitApply(job) | Event::Apply(job) => ledger.job_applied(job, now, grace),
                Event::InitDone => {
                    let actions = ledger.jobs_listed(now, grace);
                    self.jobs_synced.send_replace(true);
                    actions
                }
                Event::Delete(job) => match job.metadata.name {
                    Some(name) => ledger.job_deleted(&name),
                    None => Vec::new(),
                },
            }
        };
        self.finished.notify_waiters();
        self.perform(actions);
    }

    fn on_pod(self: &Arc<Self>, event: Event<Pod>) {
        let grace = self.settings.pending_timeout;
        let now = Instant::now();
        let actions = {
            let mut ledger = self.ledger();
            match event {
                Event::Init => {
                    ledger.pods_listing();
                    Vec::new()
                }
                Event::InitApply(pod) | Event::Apply(pod) => ledger.pod_applied(&pod, now, grace),
                Event::InitDone => {
                    let actions = ledger.pods_listed(now, grace);
                    self.pods_synced.send_replace(true);
                    actions
                }
                Event::Delete(pod) => match (watch::job_of_pod(&pod), pod.metadata.name) {
                    (Some(job), Some(name)) => ledger.pod_deleted(&job, &name, now, grace),
                    _ => Vec::new(),
                },
            }
        };
        self.finished.notify_waiters();
        self.perform(actions);
    }
}

/// Follows labelled Jobs: lists them, then watches from the list's resource version, and
/// lists again when the server says that version is too old (410 Gone).
async fn watch_jobs(shared: Arc<Shared>) {
    let config = watcher::Config::default().labels(&manifest::selector(&shared.instance));
    let mut stream = watcher::watcher(shared.jobs_api.clone(), config)
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => shared.on_job(event),
            Err(error) => tracing::warn!(%error, "watching Jobs failed; resuming"),
        }
    }
}

/// Follows the pods of labelled Jobs, for what the Job's status does not say: whether the
/// program runs, why it cannot start, how it ended.
async fn watch_pods(shared: Arc<Shared>) {
    let config = watcher::Config::default().labels(&manifest::selector(&shared.instance));
    let mut stream = watcher::watcher(shared.pods_api.clone(), config)
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => shared.on_pod(event),
            Err(error) => tracing::warn!(%error, "watching Pods failed; resuming"),
        }
    }
}

/// The log of the `main` container of job `name`'s pod, read from the API; None when the
/// pod is gone or its container has not started.
async fn pod_log_of(
    pods_api: &Api<Pod>,
    limit: &RateLimit,
    pod: &str,
) -> Result<Option<String>, kube::Error> {
    let params = LogParams {
        container: Some(MAIN_CONTAINER.to_owned()),
        ..LogParams::default()
    };
    match api::call(limit, "read pod log", || pods_api.logs(pod, &params)).await {
        Ok(log) => Ok(Some(log)),
        // 404: the pod is gone; 400: its container is waiting to start.
        Err(error) if matches!(status_code(&error), Some(400 | 404)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The log of job `name`'s step while its pod exists, for views that run without an
/// executor: None when no pod of the job is left (the stored log is then the one to read).
pub async fn pod_log(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, ExecError> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let limit = RateLimit::new(5.0, 5);
    let cluster = |source: kube::Error| ExecError::Cluster {
        what: format!("pods of job {name:?}"),
        reason: source.to_string(),
    };
    let params = ListParams::default().labels(&format!("{JOB_NAME_LABEL}={name}"));
    let list = api::call(&limit, "list pods", || pods.list(&params))
        .await
        .map_err(cluster)?;
    let Some(pod) = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .next()
    else {
        return Ok(None);
    };
    pod_log_of(&pods, &limit, &pod).await.map_err(cluster)
}

impl KubernetesExecutor {
    /// The create of [`Executor::submit`]: its entry in the ledger is the caller's to drop
    /// on failure (this drops it only for a foreign Job of the same name).
    async fn create(
        &self,
        job: &StepJob,
        manifest: &Job,
        name: &str,
        inserted: bool,
    ) -> Result<(), ExecError> {
        let shared = &self.shared;
        let name = name.to_owned();
        let params = PostParams::default();
        // A Job found by name that is gone when read is created again, once.
        for _ in 0..2 {
            let created = api::call(&shared.limit, "create job", || {
                shared.jobs_api.create(&params, manifest)
            })
            .await;
            let outcome = match created {
                Ok(_) => Ok(()),
                // The name is the attempt; the labels say whether it is this attempt.
                Err(error) if status_code(&error) == Some(409) => match self.existing(job).await {
                    Ok(Some(())) => Ok(()),
                    Ok(None) => continue,
                    Err(error) => Err(error),
                },
                Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                    Err(ExecError::InvalidJob {
                        name: name.clone(),
                        reason: status.message,
                    })
                }
                Err(error) => Err(ExecError::Cluster {
                    what: format!("creating job {name:?}"),
                    reason: error.to_string(),
                }),
            };
            // A foreign Job of the same name is not this attempt's: forget the entry even
            // though the watch may never see that Job (it is not labelled ours).
            if let Err(ExecError::Foreign { .. }) = &outcome
                && inserted
            {
                shared.ledger().jobs.remove(&name);
            }
            return outcome;
        }
        Err(ExecError::Cluster {
            what: format!("creating job {name:?}"),
            reason: "the Job exists and vanished each time it was read back".to_owned(),
        })
    }

    /// The create answered 409: whether the Job there is this very attempt (a repeated
    /// submit: success) or someone else's ([`ExecError::Foreign`]); None if it went away
    /// in between.
    async fn existing(&self, job: &StepJob) -> Result<Option<()>, ExecError> {
        let shared = &self.shared;
        let read = api::call(&shared.limit, "get job", || shared.jobs_api.get(&job.name)).await;
        let existing = match read {
            Ok(existing) => existing,
            Err(error) if status_code(&error) == Some(404) => return Ok(None),
            Err(error) => {
                return Err(ExecError::Cluster {
                    what: format!("reading the existing job {:?}", job.name),
                    reason: error.to_string(),
                });
            }
        };
        let owner = manifest::owner_of(&existing);
        let ours = owner.as_ref().is_some_and(|o| {
            (o.instance.as_str(), o.run_id, o.step.as_str(), o.attempt)
                == (
                    job.instance.as_str(),
                    job.run_id,
                    job.step.as_str(),
                    job.attempt,
                )
        });
        if ours {
            Ok(Some(()))
        } else {
            Err(ExecError::Foreign {
                name: job.name.clone(),
                owner,
            })
        }
    }
}

impl Executor for KubernetesExecutor {
    async fn submit(&self, job: StepJob) -> Result<(), ExecError> {
        let shared = &self.shared;
        if job.instance != shared.instance {
            return Err(ExecError::InvalidJob {
                name: job.name.clone(),
                reason: format!(
                    "it is installation {:?}'s; this executor runs installation {:?}'s",
                    job.instance, shared.instance
                ),
            });
        }
        let args = launcher::args(&job, &shared.artifacts_url);
        let manifest = manifest::build_job(&job, &shared.settings, args)?;
        let name = job.name.clone();
        let inserted = {
            let mut ledger = shared.ledger();
            if ledger.jobs.contains_key(&name) {
                false
            } else {
                ledger
                    .jobs
                    .insert(name.clone(), Tracked::submitted(job.clone()));
                true
            }
        };
        let forget = || {
            // Only an entry this call made and the watch has not seen is this call's to drop.
            let mut ledger = shared.ledger();
            if inserted && ledger.jobs.get(&name).is_some_and(|t| !t.present) {
                ledger.jobs.remove(&name);
            }
        };
        // A submit dropped mid-create (the pass given up when the replica stopped leading)
        // forgets its entry too: one left behind looks submitted to the next pass, which
        // records it so, and the next leader then fails it as a Job gone from the cluster
        // (found by the fault suite).
        let unsettled = scopeguard::guard((), |()| forget());
        let outcome = self.create(&job, &manifest, &name, inserted).await;
        if outcome.is_ok() {
            scopeguard::ScopeGuard::into_inner(unsettled);
        }
        outcome
    }

    async fn observe(&self, name: &str) -> Result<Option<JobState>, ExecError> {
        // Before the first list, "not seen" does not yet mean "not there".
        self.listed().await?;
        let shared = &self.shared;
        loop {
            let notified = shared.finished.notified();
            tokio::pin!(notified);
            // Registered before the ledger is read, so a finish in between is not missed.
            notified.as_mut().enable();
            let (state, work) = {
                let mut ledger = shared.ledger();
                let work = ledger.want(name);
                let Some(tracked) = ledger.jobs.get(name) else {
                    return Ok(None);
                };
                if work.is_none() && (!tracked.finishing || tracked.state.is_terminal()) {
                    return Ok(Some(tracked.state.clone()));
                }
                (tracked.state.clone(), work)
            };
            match work {
                // A finished Job nobody asked about until now: its outcome is read here.
                Some(work) => shared.settle(work).await,
                // Another task is working the outcome out; it ends soon (bounded retries).
                None if !state.is_terminal() => notified.await,
                None => return Ok(Some(state)),
            }
        }
    }

    async fn recheck(&self, name: &str) -> Result<Option<JobState>, ExecError> {
        self.listed().await?;
        if !self.shared.ledger().jobs.contains_key(name) {
            let shared = &self.shared;
            let read = api::call(&shared.limit, "get job", || shared.jobs_api.get(name)).await;
            let job = match read {
                Ok(job) => job,
                Err(error) if status_code(&error) == Some(404) => return Ok(None),
                Err(error) => {
                    return Err(ExecError::Cluster {
                        what: format!("reading job {name:?}"),
                        reason: error.to_string(),
                    });
                }
            };
            // Taken in as the watch would have, which brings it later too.
            let grace = shared.settings.pending_timeout;
            let actions = shared.ledger().job_applied(job, Instant::now(), grace);
            shared.perform(actions);
        }
        self.observe(name).await
    }

    async fn cancel(&self, name: &str) -> Result<(), ExecError> {
        self.listed().await?;
        let shared = &self.shared;
        // Only the first call deletes; later ones (a caller repeats cancel on every pass
        // while the run is cancelling) find the delete sent and wait for the pods to go.
        if !shared.ledger().start_cancel(name, Instant::now()) {
            return Ok(());
        }
        // The API's default for Jobs orphans their pods, which would keep the step running.
        let params = DeleteParams::background();
        let deleted = api::call(&shared.limit, "delete job", || {
            shared.jobs_api.delete(name, &params)
        })
        .await;
        let gone = match deleted {
            Ok(_) => false,
            // Never created, or already gone; its pods may still be stopping.
            Err(error) if status_code(&error) == Some(404) => true,
            Err(error) => {
                shared.ledger().cancel_failed(name);
                return Err(ExecError::Cluster {
                    what: format!("deleting job {name:?}"),
                    reason: error.to_string(),
                });
            }
        };
        let actions = shared.ledger().cancel_sent(name, Instant::now(), gone);
        shared.finished.notify_waiters();
        shared.perform(actions);
        Ok(())
    }

    async fn logs(&self, name: &str) -> Result<String, ExecError> {
        self.listed().await?;
        let (pod, log_key) = {
            let ledger = self.shared.ledger();
            let tracked = ledger.jobs.get(name).ok_or_else(|| ExecError::UnknownJob {
                name: name.to_owned(),
            })?;
            let log_key = tracked.step.as_ref().map(|s| s.log_key.clone());
            (ledger.pod(name).map(|p| p.name.clone()), log_key)
        };
        if let Some(pod) = pod {
            let live = pod_log_of(&self.shared.pods_api, &self.shared.limit, &pod).await;
            match live {
                Ok(Some(log)) => return Ok(log),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(job = %name, %error, "could not read the pod's log; reading the stored one");
                }
            }
        }
        let Some(key) = log_key else {
            return Ok(String::new());
        };
        Ok(self
            .shared
            .artifacts
            .get_bytes(&key)
            .await?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default())
    }

    /// `/trainyard/work/<name>` inside the pod, an emptyDir that goes with the pod.
    fn job_dir(&self, name: &str) -> PathBuf {
        manifest::job_dir(name)
    }

    fn runs_here(&self) -> bool {
        false
    }

    async fn known_jobs(&self) -> Result<Vec<String>, ExecError> {
        self.listed().await?;
        Ok(self.jobs())
    }
}
