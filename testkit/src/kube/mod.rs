//! A stand-in Kubernetes API server that the real `kube` client and kube-runtime's watcher
//! talk to unchanged, with a Job controller and an optional
//! stand-in kubelet that runs pods as local processes.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), trainyard_testkit::kube::Error> {
//! use trainyard_testkit::kube::ApiServer;
//! let server = ApiServer::builder().token("secret").start().await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?; // KUBECONFIG for the real binary
//! // ... the code under test creates Job "train" in "default" ...
//! server.complete_job("default", "train")?;            // its pod Succeeded, the Job Complete
//! server.fail_next(2, 429, Some(1));                    // back-pressure for the next 2 requests
//! assert_eq!(server.request_count("create", "jobs"), 1);
//! # Ok(()) }
//! ```
//!
//! * Objects live per (resource, namespace, name) with one global resourceVersion;
//!   `default`, `kube-system` and `kube-public` exist, others are created by POSTing a
//!   Namespace or with [`ApiServer::create_namespace`].
//! * Verbs: get, list (label and field selectors, `limit`/`continue`), watch (resume from a
//!   resourceVersion, bookmarks, `timeoutSeconds`, `sendInitialEvents`), create, update,
//!   patch (merge, strategic — maps merge, lists are replaced — JSON patch, server-side
//!   apply with field-manager conflicts), delete (propagation policies; Jobs default to
//!   Orphan as the real API does), `pods/{name}/log`, `*/status`.
//! * Errors are `Status` objects worded like the real server's: 404, 409 AlreadyExists /
//!   Conflict, 422 Invalid with causes, 410 Expired after [`ApiServer::compact`], 429 with
//!   `Retry-After` from [`ApiServer::fail_next`], 401 without the token, 403 after
//!   [`ApiServer::enforce_rbac`]; [`ApiServer::chaos`] answers a seeded random share of
//!   requests with 500, 429 or a dropped connection (before or after the request took
//!   effect).
//! * The Job controller creates one pod per unsuspended Job, counts finished pods, applies
//!   `backoffLimit`, `activeDeadlineSeconds` and `ttlSecondsAfterFinished`, and writes
//!   `FailureTarget`/`Failed` and `SuccessCriteriaMet`/`Complete` conditions. Without a
//!   kubelet pods stay Pending until a test moves them ([`ApiServer::complete_job`],
//!   [`ApiServer::fail_job`], [`ApiServer::oom_kill`], [`ApiServer::pod_waiting`],
//!   [`ApiServer::pod_unschedulable`], [`ApiServer::run_job`]).
//! * With [`ApiServerBuilder::kubelet`] pods run as local processes: emptyDir volumes and
//!   termination-message files become directories and files under `root/<pod>/`, mapped
//!   container paths (volume mounts and [`ApiServer::map_path`]) are rewritten in
//!   command, args, env values and workingDir, env comes from the test's environment plus
//!   `env`/`envFrom` (Secrets, ConfigMaps; a missing one holds the pod in
//!   `CreateContainerConfigError`), output is the container log, and a graceful delete
//!   sends SIGTERM, then SIGKILL after `terminationGracePeriodSeconds`. The controls above
//!   then override what the processes would report (and `oom_kill` really kills them).
//!
//! Known simplifications: list pages after the first show the current state rather than
//! the first page's snapshot; lists in strategic merge patches replace instead of merging
//! by key; field ownership treats lists as single fields; `managedFields` is not served;
//! Job pods carry no `batch.kubernetes.io/job-tracking` finalizer; a failed init container
//! fails the pod without the `Init:Error` text, which only kubectl derives; `dryRun` is
//! not supported.

mod chaos;
mod controller;
mod kubelet;
mod logs;
mod patch;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use server::{Fault, RequestRecord};
pub use status::ApiError;

use server::Shared;
use store::Store;

/// Failures of the test controls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be opened.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    /// A file (kubeconfig) could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The resource name is not one the stand-in serves.
    #[error("the stand-in serves no resource called {0:?}")]
    UnknownResource(String),
    /// The object a control names does not exist.
    #[error("{resource} {namespace}/{name} does not exist")]
    NotFound {
        /// Resource plural.
        resource: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The Job has no pod to act on (suspended, or not yet created).
    #[error("job {namespace}/{job} has no pod")]
    NoPod {
        /// Namespace.
        namespace: String,
        /// Job name.
        job: String,
    },
    /// The API server refused the change, as it would refuse a client.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Builds an [`ApiServer`].
#[derive(Debug, Default)]
pub struct ApiServerBuilder {
    token: Option<String>,
    user: Option<String>,
    bookmark_interval: Option<Duration>,
    history: Option<usize>,
    kubelet_root: Option<PathBuf>,
}

impl ApiServerBuilder {
    /// Requires `Authorization: Bearer <token>` on every request (401 otherwise).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The user name RBAC denials name (default `system:serviceaccount:default:trainyard`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// How often open watches that allow bookmarks get one (default 5 s).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = Some(every);
        self
    }

    /// How many events watches can resume from before older ones are compacted (default
    /// 100,000; the real watch cache keeps far fewer, so resuming clients must handle 410).
    pub fn history(mut self, events: usize) -> Self {
        self.history = Some(events);
        self
    }

    /// Runs a stand-in kubelet that executes pods as local processes, keeping each pod's
    /// volumes and termination-message files under `root/<pod>/`.
    pub fn kubelet(mut self, root: impl Into<PathBuf>) -> Self {
        self.kubelet_root = Some(root.into());
        self
    }

    /// Starts listening on 127.0.0.1 with a random port, plus the controllers' timer task.
    pub async fn start(self) -> Result<ApiServer, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let mut store = Store::new(self.history.unwrap_or(100_000));
        let mut tasks = Vec::new();
        let kubelet = self
            .kubelet_root
            .map(|root| Arc::new(kubelet::Kubelet::new(root)));
        let (work_tx, work_rx) = tokio::sync::mpsc::unbounded_channel();
        if kubelet.is_some() {
            store.kubelet = Some(work_tx);
            store.node_name = Some("standin-node".to_string());
        }
        let pod_logs = Arc::new(logs::Logs::default());
        store.logs = Some(pod_logs.clone());
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            logs: pod_logs,
            token: self.token,
            user: self
                .user
                .unwrap_or_else(|| "system:serviceaccount:default:trainyard".to_string()),
            faults: Mutex::new(Vec::new()),
            chaos: chaos::Chaos::default(),
            records: Mutex::new(Vec::new()),
            rbac: Mutex::new(None),
            bookmark_interval: self.bookmark_interval.unwrap_or(Duration::from_secs(5)),
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let serve = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(%err, "the stand-in API server stopped");
            }
        });
        let timer_shared = shared.clone();
        let timers = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let mut store = timer_shared.store();
                controller::fire_timers(&mut store, Instant::now());
            }
        });
        tasks.push(serve);
        tasks.push(timers);
        if let Some(k) = &kubelet {
            tasks.push(tokio::spawn(kubelet::run(
                shared.clone(),
                k.clone(),
                work_rx,
            )));
        }
        Ok(ApiServer {
            shared,
            addr,
            tasks,
            kubelet,
        })
    }
}

/// A running stand-in API server. Dropping it stops the server.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    kubelet: Option<Arc<kubelet::Kubelet>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(kubelet) = &self.kubelet {
            kubelet.kill_all();
        }
    }
}

impl ApiServer {
    /// Starts a server with no token, no RBAC and no kubelet.
    pub async fn start() -> Result<Self, Error> {
        Self::builder().start().await
    }

    /// A builder for token, user and timing options.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bearer token the server expects, if any.
    pub fn token(&self) -> Option<&str> {
        self.shared.token.as_deref()
    }

    /// Writes a kubeconfig (cluster = this server, user = the token, namespace `default`)
    /// that the real client reads through `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        let user = match self.token() {
            Some(t) => format!(
                "    token: {}\n",
                serde_json::to_string(t).unwrap_or_default()
            ),
            None => "    {}\n".to_string(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\nusers:\n- name: standin\n  user:\n{user}contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\n",
            self.url()
        );
        std::fs::write(path, text).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// One object by resource (`jobs`, `pods`, `leases`, `batch/v1/jobs`, ...), namespace and name.
    pub fn get(&self, resource_name: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = resources::by_name(resource_name)?;
        let ns = if r.namespaced { namespace } else { "" };
        self.shared
            .store()
            .get(r, ns, name)
            .map(|s| s.object.clone())
    }

    /// All objects of a resource in a namespace (`None`: every namespace), in name order.
    pub fn list(&self, resource_name: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(r) = resources::by_name(resource_name) else {
            return Vec::new();
        };
        let store = self.shared.store();
        store.range(r, namespace, None).cloned().collect()
    }

    /// Creates an object from its `apiVersion`/`kind` (e.g. a Secret to seed), or replaces it.
    pub fn put_object(&self, object: Value) -> Result<Value, Error> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let r = resources::by_kind(api_version, kind)
            .ok_or_else(|| Error::UnknownResource(format!("{api_version}/{kind}")))?;
        let namespace = if r.namespaced {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut store = self.shared.store();
        let result = if store.get(r, &namespace, &name).is_some() {
            let mut replacement = object;
            if let Some(m) = replacement["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            store.update(r, &namespace, &name, replacement, None, None, "test")
        } else {
            store.create(r, &namespace, object, "test")
        };
        controller::settle(&mut store);
        Ok(result?)
    }

    /// Creates a namespace (idempotent).
    pub fn create_namespace(&self, name: &str) -> Result<(), Error> {
        let mut store = self.shared.store();
        match store.create(
            resources::namespaces(),
            "",
            json!({"metadata": {"name": name}}),
            "test",
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn with_job_pod(
        &self,
        namespace: &str,
        job: &str,
        f: impl FnOnce(&mut Store, &str),
    ) -> Result<(), Error> {
        let mut store = self.shared.store();
        if store.get(resources::jobs(), namespace, job).is_none() {
            return Err(Error::NotFound {
                resource: "jobs".into(),
                namespace: namespace.into(),
                name: job.into(),
            });
        }
        let pod = controller::job_pod(&store, namespace, job).ok_or_else(|| Error::NoPod {
            namespace: namespace.into(),
            job: job.into(),
        })?;
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // A test setting the outcome replaces whatever the pod's processes would report.
        if let Some(kubelet) = &self.kubelet {
            kubelet.take_over(namespace, &name);
        }
        f(&mut store, &name);
        controller::settle(&mut store);
        Ok(())
    }

    /// The Job's current pod (the newest unfinished one, else the newest).
    pub fn job_pod(&self, namespace: &str, job: &str) -> Option<Value> {
        controller::job_pod(&self.shared.store(), namespace, job)
    }

    /// Its pod exits 0: pod Succeeded, Job Complete.
    pub fn complete_job(&self, namespace: &str, job: &str) -> Result<(), Error> {
        self.with_job_pod(namespace, job, |s, pod| {
            controller::terminate_pod(s, namespace, pod, 0, "Completed", None)
        })
    }

    /// Its pod exits with `exit_code` (reason Error): the Job fails once failures pass
    /// `backoffLimit`, otherwise the controller starts a new pod.
    pub fn fail_job(&self, namespace: &str, job: &str, exit_code: i32) -> Result<(), Error> {
        let code = if exit_code == 0 { 1 } else { exit_code };
        self.with_job_pod(namespace, job, |s, pod| {
            controller::terminate_pod(s, namespace, pod, code.into(), "Error", None)
        })
    }

    /// Its pod is killed for memory: terminated, reason OOMKilled, exit code 137.
    pub fn oom_kill(&self, namespace: &str, job: &str) -> Result<(), Error> {
        if let (Some(kubelet), Some(pod)) = (&self.kubelet, self.job_pod(namespace, job)) {
            let name = pod
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            // A running container is really killed; the kubelet reports it OOMKilled.
            if kubelet.is_running(namespace, name) && kubelet.oom_kill(namespace, name) {
                return Ok(());
            }
        }
        self.with_job_pod(namespace, job, |s, pod| {
            controller::terminate_pod(s, namespace, pod, 137, "OOMKilled", None)
        })
    }

    /// Its pod is Running and Ready.
    pub fn run_job(&self, namespace: &str, job: &str) -> Result<(), Error> {
        self.with_job_pod(namespace, job, |s, pod| {
            controller::run_pod(s, namespace, pod)
        })
    }

    /// Its pod's containers wait: `ImagePullBackOff`, `ErrImagePull`,
    /// `CreateContainerConfigError`, with the kubelet's message.
    pub fn pod_waiting(
        &self,
        namespace: &str,
        job: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        self.with_job_pod(namespace, job, |s, pod| {
            controller::wait_pod(s, namespace, pod, reason, message)
        })
    }

    /// Its pod cannot be scheduled, e.g. `0/4 nodes are available: 4 Insufficient nvidia.com/gpu.`
    pub fn pod_unschedulable(
        &self,
        namespace: &str,
        job: &str,
        message: &str,
    ) -> Result<(), Error> {
        self.with_job_pod(namespace, job, |s, pod| {
            controller::unschedulable_pod(s, namespace, pod, message)
        })
    }

    /// Appends to the log of the Job pod's main (first) container, as if it printed `text`.
    pub fn append_log(&self, namespace: &str, job: &str, text: &str) -> Result<(), Error> {
        let pod = self.job_pod(namespace, job).ok_or_else(|| Error::NoPod {
            namespace: namespace.into(),
            job: job.into(),
        })?;
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let container = pod
            .pointer("/spec/containers/0/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.shared
            .logs
            .buffer(namespace, name, container)
            .append(text.as_bytes());
        Ok(())
    }

    /// Unsuspends a Job, as Kueue does when it admits the workload.
    pub fn admit(&self, namespace: &str, job: &str) -> Result<(), Error> {
        let mut store = self.shared.store();
        let stored = store
            .get(resources::jobs(), namespace, job)
            .ok_or_else(|| Error::NotFound {
                resource: "jobs".into(),
                namespace: namespace.into(),
                name: job.into(),
            })?;
        let mut object = stored.object.clone();
        object["spec"]["suspend"] = json!(false);
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        store.update(
            resources::jobs(),
            namespace,
            job,
            object,
            None,
            None,
            "kueue-admission",
        )?;
        controller::settle(&mut store);
        Ok(())
    }

    /// The next `n` requests fail with `status` (and `Retry-After: retry_after`).
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.fail_next_matching(Fault {
            remaining: n,
            code: status,
            retry_after,
            verb: None,
            resource: None,
        });
    }

    /// Like [`ApiServer::fail_next`], only for requests matching the fault's verb/resource.
    pub fn fail_next_matching(&self, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fault);
    }

    /// From now on `rate` (0.0–1.0) of all requests, after authentication, are answered 500,
    /// 429 with `Retry-After: 1`, or with a dropped connection — before the request takes
    /// effect, or after it (the answer is lost) — drawn in equal shares from `seed`. The
    /// same seed draws the same sequence; which request meets which draw depends on the
    /// order requests arrive in. [`RequestRecord::dropped`] marks the dropped ones.
    pub fn chaos(&self, seed: u64, rate: f64) {
        self.shared.chaos.start(seed, rate);
    }

    /// Ends [`ApiServer::chaos`]: every request is answered normally again.
    pub fn calm(&self) {
        self.shared.chaos.stop();
    }

    /// Ends every fault still pending: the outage is over.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Compacts history: every resourceVersion before now is gone (410 for watches and
    /// continue tokens); open watches get an ERROR event and end.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch stream, as an API server restart would.
    pub fn close_watches(&self) {
        self.shared.store().close_watches();
    }

    /// Every request so far, in arrival order (watches when they start streaming).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests had this verb and resource (`pods/log` for logs).
    pub fn request_count(&self, verb: &str, resource_plural: &str) -> usize {
        let records = self
            .shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        records
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource_plural)
            .count()
    }

    /// Forgets the request records (e.g. after setup, before what a test measures).
    pub fn clear_requests(&self) {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// From now on, only requests a Role with these `rules` allows succeed; others get 403.
    pub fn enforce_rbac(&self, rules: Value) {
        *self.shared.rbac.lock().unwrap_or_else(|e| e.into_inner()) = Some(rules);
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().current_rv()
    }

    /// Maps a path inside every container to a host path (kubelet only), e.g.
    /// `map_path("/usr/local/bin/trainyard-launch", real_binary)`.
    pub fn map_path(&self, container_path: &str, host_path: impl Into<PathBuf>) {
        if let Some(kubelet) = &self.kubelet {
            kubelet.map_path(container_path, host_path.into());
        }
    }

    /// The host directory the kubelet keeps a pod's volumes and termination files in.
    pub fn pod_dir(&self, pod: &str) -> Option<PathBuf> {
        self.kubelet.as_ref().map(|k| k.pod_dir(pod))
    }
}
