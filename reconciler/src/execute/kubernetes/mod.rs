//! The Kubernetes executor: every step attempt is a batch/v1 Job, followed through one
//! shared watch on labelled Jobs and one on their Pods (never by polling a Job), with its
//! outcome read from what `trainyard launch` stored in the artifact store.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ExecError, Executor, JobEvent, JobState, StepJob, launcher};
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
use manifest::{JOB_NAME_LABEL, MAIN_CONTAINER, SELECTOR};
use watch::{Action, Ledger, Tracked};

/// The API access this backend needs, as (API group, resource, verbs): what the service's
/// Role must grant in the namespace, and nothing more.
pub const REQUIRED_RULES: &[(&str, &str, &[&str])] = &[
    ("batch", "jobs", &["create", "delete", "list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("", "pods/log", &["get"]),
];

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
    settings: ClusterSettings,
    artifacts: ArtifactStore,
    artifacts_url: String,
    events: UnboundedSender<JobEvent>,
    limit: RateLimit,
    ledger: Mutex<Ledger>,
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
    /// An executor that creates Jobs in `settings.namespace` through `client`, whose steps
    /// move artifacts through the store at `artifacts_url` (the store `artifacts` opens),
    /// and that pushes terminal states to `events`. Starts the watches at once; must be
    /// called inside a Tokio runtime.
    pub fn new(
        client: kube::Client,
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
        let jobs_api = Api::namespaced(client.clone(), &settings.namespace);
        let pods_api = Api::namespaced(client, &settings.namespace);
        let shared = Arc::new(Shared {
            jobs_api,
            pods_api,
            limit: RateLimit::new(settings.api_qps, settings.api_burst),
            settings,
            artifacts,
            artifacts_url,
            events,
            ledger: Mutex::new(Ledger::default()),
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

    /// The names of all labelled Jobs on the cluster, whoever submitted them; for finding
    /// Jobs whose run the database does not know.
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
                    tracing::info!(job = %event.name, state = ?event.state, "step ended");
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
            }
        }
    }

    fn finish(self: &Arc<Self>, name: &str, state: JobState) {
        let action = self.ledger().finish(name, state);
        self.perform(action.into_iter().collect());
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

    /// A pod of `job` got stuck; at `at`, fail the attempt if it still is.
    async fn check_stuck(self: Arc<Self>, job: String, at: Instant) {
        tokio::time::sleep_until(at).await;
        let grace = self.settings.pending_timeout;
        let Some(reason) = self.ledger().stuck_too_long(&job, Instant::now(), grace) else {
            return;
        };
        tracing::info!(%job, %reason, "failing an attempt whose pod cannot start");
        if let Some(tracked) = self.ledger().jobs.get_mut(&job) {
            tracked.finishing = true;
        }
        let params = DeleteParams::background();
        let deleted = api::call(&self.limit, "delete job", || {
            self.jobs_api.delete(&job, &params)
        })
        .await;
        match deleted {
            Ok(_) => {}
            Err(error) if status_code(&error) == Some(404) => {}
            Err(error) => {
                tracing::warn!(%job, %error, "could not delete the Job of a stuck attempt");
            }
        }
        self.finish(
            &job,
            JobState::Failed {
                exit_code: None,
                reason,
            },
        );
    }

    fn on_job(self: &Arc<Self>, event: Event<Job>) {
        let grace = self.settings.pending_timeout;
        let actions = {
            let mut ledger = self.ledger();
            match event {
                Event::Init => {
                    ledger.jobs_listing();
                    Vec::new()
                }
                Event::InitApply(job) | Event::Apply(job) => ledger.job_applied(job),
                Event::InitDone => {
                    let actions = ledger.jobs_listed(grace);
                    self.jobs_synced.send_replace(true);
                    actions
                }
                Event::Delete(job) => match job.metadata.name {
                    Some(name) => ledger.job_deleted(&name, grace),
                    None => Vec::new(),
                },
            }
        };
        self.perform(actions);
    }

    fn on_pod(self: &Arc<Self>, event: Event<Pod>) {
        let grace = self.settings.pending_timeout;
        let actions = {
            let mut ledger = self.ledger();
            match event {
                Event::Init => {
                    ledger.pods_listing();
                    Vec::new()
                }
                Event::InitApply(pod) | Event::Apply(pod) => {
                    ledger.pod_applied(&pod, Instant::now(), grace)
                }
                Event::InitDone => {
                    let actions = ledger.pods_listed(grace);
                    self.pods_synced.send_replace(true);
                    actions
                }
                Event::Delete(pod) => match (watch::job_of_pod(&pod), pod.metadata.name) {
                    (Some(job), Some(name)) => ledger.pod_deleted(&job, &name, grace),
                    _ => Vec::new(),
                },
            }
        };
        self.perform(actions);
    }
}

/// Follows labelled Jobs: lists them, then watches from the list's resource version, and
/// lists again when the server says that version is too old (410 Gone).
async fn watch_jobs(shared: Arc<Shared>) {
    let config = watcher::Config::default().labels(SELECTOR);
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
    let config = watcher::Config::default().labels(SELECTOR);
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

impl Executor for KubernetesExecutor {
    async fn submit(&self, job: StepJob) -> Result<(), ExecError> {
        let shared = &self.shared;
        let args = launcher::args(&job, &shared.artifacts_url);
        let manifest = manifest::build_job(&job, &shared.settings, args)?;
        let name = job.name.clone();
        let inserted = {
            let mut ledger = shared.ledger();
            if ledger.jobs.contains_key(&name) {
                false
            } else {
                ledger.jobs.insert(name.clone(), Tracked::submitted(job));
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
        let params = PostParams::default();
        let created = api::call(&shared.limit, "create job", || {
            shared.jobs_api.create(&params, &manifest)
        })
        .await;
        match created {
            Ok(_) => Ok(()),
            // The name is the attempt: it exists, so this attempt was submitted before.
            Err(error) if status_code(&error) == Some(409) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                forget();
                Err(ExecError::InvalidJob {
                    name: name.clone(),
                    reason: status.message,
                })
            }
            Err(error) => {
                forget();
                Err(ExecError::Cluster {
                    what: format!("creating job {name:?}"),
                    reason: error.to_string(),
                })
            }
        }
    }

    async fn observe(&self, name: &str) -> Result<Option<JobState>, ExecError> {
        // Before the first list, "not seen" does not yet mean "not there".
        self.synced().await;
        Ok(self.shared.ledger().jobs.get(name).map(|t| t.state.clone()))
    }

    async fn cancel(&self, name: &str) -> Result<(), ExecError> {
        let shared = &self.shared;
        {
            let mut ledger = shared.ledger();
            match ledger.jobs.get_mut(name) {
                Some(tracked) if tracked.state.is_terminal() => return Ok(()),
                Some(tracked) => tracked.cancelled = true,
                None => {}
            }
        }
        // The API's default for Jobs orphans their pods, which would keep the step running.
        let params = DeleteParams::background();
        let deleted = api::call(&shared.limit, "delete job", || {
            shared.jobs_api.delete(name, &params)
        })
        .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(404) => {
                // Never created, or already gone: nothing is running.
                let gone = shared
                    .ledger()
                    .jobs
                    .get(name)
                    .is_some_and(|t| !t.present && !t.finishing);
                if gone {
                    self.shared.finish(name, JobState::Cancelled);
                }
                Ok(())
            }
            Err(error) => Err(ExecError::Cluster {
                what: format!("deleting job {name:?}"),
                reason: error.to_string(),
            }),
        }
    }

    async fn logs(&self, name: &str) -> Result<String, ExecError> {
        self.synced().await;
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
        self.synced().await;
        Ok(self.jobs())
    }
}
