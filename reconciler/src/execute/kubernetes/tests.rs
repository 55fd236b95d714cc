//! The Kubernetes executor against the stand-in API server (no kubelet: the tests move pods
//! and Jobs themselves), through the real `kube` client and kube-runtime's watcher.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use trainyard_testkit::kube::{ApiServer, Fault};

use super::{ClusterSettings, KubernetesExecutor};
use crate::artifacts::{self, ArtifactStore};
use crate::execute::{ExecError, Executor, JobEvent, JobState, StepJob, StepOutput, job_name};

const NS: &str = "default";
/// The installation the tests' executors run.
const INSTANCE: &str = "test";
const PATIENCE: Duration = Duration::from_secs(15);

struct Cluster {
    server: ApiServer,
    client: kube::Client,
    artifacts: ArtifactStore,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let server = ApiServer::start().await.expect("stand-in API server");
    let config = kube::Config::new(server.url().parse().expect("server URL"));
    let client = kube::Client::try_from(config).expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let location = dir.path().join("artifacts");
    let artifacts =
        ArtifactStore::open(location.to_str().expect("UTF-8 path")).expect("artifact store");
    Cluster {
        server,
        client,
        artifacts,
        _dir: dir,
    }
}

fn settings() -> ClusterSettings {
    let mut settings = ClusterSettings::new("trainyard:test");
    settings.namespace = NS.to_owned();
    settings
}

impl Cluster {
    fn executor(
        &self,
        settings: ClusterSettings,
    ) -> (KubernetesExecutor, UnboundedReceiver<JobEvent>) {
        self.executor_of(INSTANCE, settings)
    }

    fn executor_of(
        &self,
        instance: &str,
        settings: ClusterSettings,
    ) -> (KubernetesExecutor, UnboundedReceiver<JobEvent>) {
        let (events, received) = mpsc::unbounded_channel();
        let executor = KubernetesExecutor::new(
            self.client.clone(),
            instance,
            settings,
            self.artifacts.clone(),
            self.artifacts.uri(""),
            events,
        )
        .expect("executor");
        (executor, received)
    }
}

fn step(run_id: i64) -> StepJob {
    step_of(INSTANCE, run_id)
}

fn step_of(instance: &str, run_id: i64) -> StepJob {
    let name = job_name(instance, run_id, "train", 1);
    let dir = super::manifest::job_dir(&name);
    StepJob {
        log_key: artifacts::log_key(&name),
        name,
        instance: instance.to_owned(),
        run_id,
        step: "train".to_owned(),
        attempt: 1,
        argv: vec!["python".to_owned(), "train.py".to_owned()],
        env: BTreeMap::new(),
        image: "ghcr.io/acme/train:1".to_owned(),
        resources: None,
        timeout: None,
        job_dir: dir.clone(),
        workdir: dir.clone(),
        source: None,
        inputs: Vec::new(),
        outputs: vec![StepOutput {
            name: "model".to_owned(),
            path: dir.join("outputs/model"),
            key: artifacts::output_key(instance, run_id, "train", "model"),
        }],
        labels: BTreeMap::from([
            ("trainyard.dev/run".to_owned(), run_id.to_string()),
            ("trainyard.dev/pipeline".to_owned(), "churn".to_owned()),
            ("trainyard.dev/step".to_owned(), "train".to_owned()),
        ]),
        annotations: BTreeMap::new(),
        secrets: Vec::new(),
    }
}

/// The next event that ends an attempt (Running events pass).
async fn next_event(events: &mut UnboundedReceiver<JobEvent>) -> JobEvent {
    loop {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("an event in time")
            .expect("the channel stays open");
        if event.state.is_terminal() {
            return event;
        }
    }
}

/// Waits until `executor` says `name` runs.
async fn until_running(executor: &KubernetesExecutor, name: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !matches!(
        executor.observe(name).await.expect("observe"),
        Some(JobState::Running { .. })
    ) {
        assert!(tokio::time::Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The manifest `launch` stores for `job` with its one output stored as `stored`.
fn manifest_of(job: &StepJob, stored: &artifacts::Stored) -> serde_json::Value {
    json!({"instance": job.instance, "job": job.name, "run": job.run_id, "step": job.step,
        "attempt": job.attempt, "artifacts": [{"output": "model", "uri": stored.uri,
        "sha256": stored.sha256, "size": stored.size}]})
}

/// Waits until the stand-in's Job controller has given `job` a pod.
async fn pod_of(server: &ApiServer, job: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.job_pod(NS, job).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} got no pod"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn failed(exit_code: Option<i32>, reason: &str) -> JobState {
    JobState::Failed {
        exit_code,
        reason: reason.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_submit_creates_one_job() {
    let c = cluster().await;
    let (first, _events) = c.executor(settings());
    let (second, _more) = c.executor(settings());
    let job = step(1);
    first.submit(job.clone()).await.expect("submit");
    first.submit(job.clone()).await.expect("submit again");
    second
        .submit(job.clone())
        .await
        .expect("another process submits it too");
    assert_eq!(c.server.list("jobs", Some(NS)).len(), 1);
    let creates: Vec<u16> = c
        .server
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.resource == "jobs")
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [201, 409, 409]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_job_is_refused_with_the_apis_message() {
    let c = cluster().await;
    let (executor, _events) = c.executor(settings());
    let mut job = step(2);
    job.labels.insert(
        "trainyard.dev/pipeline".to_owned(),
        "not a label value!".to_owned(),
    );
    let error = executor.submit(job.clone()).await.expect_err("422");
    let ExecError::InvalidJob { name, reason } = error else {
        panic!("expected InvalidJob, got {error:?}");
    };
    assert_eq!(name, job.name);
    assert!(reason.contains("not a label value!"), "{reason}");
    executor.synced().await;
    assert_eq!(executor.observe(&job.name).await.expect("observe"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_succeeds_with_the_outputs_launch_stored() {
    let c = cluster().await;
    let (executor, mut events) = c.executor(settings());
    let job = step(3);
    executor.submit(job.clone()).await.expect("submit");
    pod_of(&c.server, &job.name).await;
    let stored = c
        .artifacts
        .put_bytes(&job.outputs[0].key, b"weights".to_vec())
        .await
        .expect("store output");
    let manifest = manifest_of(&job, &stored);
    c.artifacts
        .put_bytes(
            &artifacts::manifest_key(&job.name),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .await
        .expect("store manifest");
    c.server.complete_job(NS, &job.name).expect("complete");

    let event = next_event(&mut events).await;
    assert_eq!(event.name, job.name);
    let JobState::Succeeded { artifacts } = &event.state else {
        panic!("expected success, got {event:?}");
    };
    assert_eq!(artifacts[0].output, "model");
    assert_eq!(artifacts[0].sha256, stored.sha256);
    assert_eq!(
        executor.observe(&job.name).await.expect("observe"),
        Some(event.state)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_without_stored_outputs_fails() {
    let c = cluster().await;
    let (executor, mut events) = c.executor(settings());
    let job = step(4);
    executor.submit(job.clone()).await.expect("submit");
    pod_of(&c.server, &job.name).await;
    c.server.complete_job(NS, &job.name).expect("complete");
    assert_eq!(
        next_event(&mut events).await.state,
        failed(Some(0), "outputs were not stored")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_the_step_in_words_people_understand() {
    let c = cluster().await;
    let (executor, mut events) = c.executor(settings());

    let exit = step(10);
    executor.submit(exit.clone()).await.expect("submit");
    pod_of(&c.server, &exit.name).await;
    c.server.fail_job(NS, &exit.name, 3).expect("fail");
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.name.as_str(), event.state),
        (exit.name.as_str(), failed(Some(3), "exited with code 3"))
    );

    let mut oom = step(11);
    oom.resources = Some(crate::spec::model::Resources {
        cpu: None,
        memory: Some("4Gi".to_owned()),
        gpu: 0,
        gpu_type: None,
    });
    executor.submit(oom.clone()).await.expect("submit");
    pod_of(&c.server, &oom.name).await;
    c.server.oom_kill(NS, &oom.name).expect("oom");
    assert_eq!(
        next_event(&mut events).await.state,
        failed(
            Some(137),
            "out of memory (OOMKilled) at its 4Gi limit — raise resources.memory"
        )
    );

    let mut slow = step(12);
    slow.timeout = Some(Duration::from_secs(1));
    executor.submit(slow.clone()).await.expect("submit");
    let event = next_event(&mut events).await;
    assert_eq!(event.name, slow.name);
    assert_eq!(event.state, failed(None, "timed out after 1s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_start_fails_the_attempt_after_the_pending_timeout() {
    let c = cluster().await;
    let mut settings = settings();
    settings.pending_timeout = Duration::from_millis(600);
    let (executor, mut events) = c.executor(settings);

    let pull = step(20);
    executor.submit(pull.clone()).await.expect("submit");
    pod_of(&c.server, &pull.name).await;
    let started = tokio::time::Instant::now();
    c.server
        .pod_waiting(
            NS,
            &pull.name,
            "ImagePullBackOff",
            "Back-off pulling image \"ghcr.io/acme/train:1\"",
        )
        .expect("waiting");
    let event = next_event(&mut events).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        event.state,
        failed(
            None,
            "image ghcr.io/acme/train:1 could not be pulled (ImagePullBackOff): Back-off pulling image \"ghcr.io/acme/train:1\""
        )
    );
    assert!(
        c.server.get("jobs", NS, &pull.name).is_none(),
        "the Job is deleted"
    );

    let gpu = step(21);
    executor.submit(gpu.clone()).await.expect("submit");
    pod_of(&c.server, &gpu.name).await;
    c.server
        .pod_unschedulable(
            NS,
            &gpu.name,
            "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        )
        .expect("unschedulable");
    assert_eq!(
        next_event(&mut events).await.state,
        failed(
            None,
            "no node can run it: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu (Unschedulable)"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_deletes_the_job_and_its_pods() {
    let c = cluster().await;
    let (executor, mut events) = c.executor(settings());
    let job = step(30);
    executor.submit(job.clone()).await.expect("submit");
    pod_of(&c.server, &job.name).await;
    c.server.run_job(NS, &job.name).expect("run");
    until_running(&executor, &job.name).await;
    executor.cancel(&job.name).await.expect("cancel");
    assert_eq!(next_event(&mut events).await.state, JobState::Cancelled);
    assert!(c.server.get("jobs", NS, &job.name).is_none());
    assert!(
        c.server.list("pods", Some(NS)).is_empty(),
        "background propagation removed the pods"
    );
    executor
        .cancel(&job.name)
        .await
        .expect("cancelling again is harmless");
    assert_eq!(
        executor.observe(&job.name).await.expect("observe"),
        Some(JobState::Cancelled)
    );
    assert!(events.try_recv().is_err(), "one event per attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_submit_is_retried() {
    let c = cluster().await;
    let (executor, _events) = c.executor(settings());
    executor.synced().await;
    c.server.fail_next_matching(Fault {
        remaining: 6,
        code: 429,
        retry_after: None,
        verb: Some("create".to_owned()),
        resource: Some("jobs".to_owned()),
    });
    let job = step(40);
    executor
        .submit(job.clone())
        .await
        .expect("submit succeeds in the end");
    assert!(c.server.get("jobs", NS, &job.name).is_some());
    let statuses: Vec<u16> = c
        .server
        .requests()
        .iter()
        .filter(|r| r.verb == "create")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 429, 429, 429, 429, 429, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_given_up_mid_create_leaves_nothing_that_looks_submitted() {
    let c = cluster().await;
    let (executor, _events) = c.executor(settings());
    executor.synced().await;
    c.server.fail_next_matching(Fault {
        remaining: 1_000,
        code: 503,
        retry_after: Some(1),
        verb: Some("create".to_owned()),
        resource: Some("jobs".to_owned()),
    });
    let job = step(41);
    // As a replica that stops leading gives its pass up while the create is retried.
    let given_up =
        tokio::time::timeout(Duration::from_millis(300), executor.submit(job.clone())).await;
    assert!(given_up.is_err(), "the create was still being retried");
    assert_eq!(
        executor.observe(&job.name).await.expect("observe"),
        None,
        "a Job that was never created is not reported as submitted"
    );
    assert!(c.server.get("jobs", NS, &job.name).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_while_watching_loses_no_event() {
    let c = cluster().await;
    let (executor, mut events) = c.executor(settings());
    let job = step(50);
    executor.submit(job.clone()).await.expect("submit");
    pod_of(&c.server, &job.name).await;
    executor.synced().await;
    c.server.compact();
    c.server.close_watches();
    c.server
        .fail_job(NS, &job.name, 2)
        .expect("fail while the watch is away");
    let event = next_event(&mut events).await;
    assert_eq!(event.name, job.name);
    assert_eq!(event.state, failed(Some(2), "exited with code 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_executor_adopts_the_jobs_it_finds() {
    let c = cluster().await;
    let (first, _events) = c.executor(settings());
    let running = step(60);
    let finished = step(61);
    for job in [&running, &finished] {
        first.submit(job.clone()).await.expect("submit");
        pod_of(&c.server, &job.name).await;
    }
    drop(first);
    c.server.run_job(NS, &running.name).expect("run");
    c.server.fail_job(NS, &finished.name, 1).expect("fail");

    let (second, mut events) = c.executor(settings());
    assert_eq!(
        second
            .observe(&job_name(INSTANCE, 404, "train", 1))
            .await
            .expect("observe"),
        None,
        "after the first list, a name it does not have is gone"
    );
    assert_eq!(second.jobs(), [running.name.clone(), finished.name.clone()]);
    assert_eq!(
        second.observe(&finished.name).await.expect("observe"),
        Some(failed(Some(1), "exited with code 1")),
        "a Job that ended before anyone asked is worked out when asked"
    );
    assert_eq!(
        next_event(&mut events).await,
        JobEvent {
            name: finished.name.clone(),
            state: failed(Some(1), "exited with code 1")
        }
    );
    until_running(&second, &running.name).await;
    c.server
        .append_log(NS, &running.name, "epoch 1\n")
        .expect("log");
    assert_eq!(second.logs(&running.name).await.expect("logs"), "epoch 1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_needs_only_the_access_it_declares() {
    let c = cluster().await;
    let rules: Vec<serde_json::Value> = super::REQUIRED_RULES
        .iter()
        .map(|(group, resource, verbs)| {
            json!({"apiGroups": [group], "resources": [resource], "verbs": verbs})
        })
        .collect();
    c.server.enforce_rbac(json!(rules));
    let (executor, mut events) = c.executor(settings());
    let job = step(70);
    executor.submit(job.clone()).await.expect("submit");
    pod_of(&c.server, &job.name).await;
    c.server.run_job(NS, &job.name).expect("run");
    c.server.append_log(NS, &job.name, "hello\n").expect("log");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while executor.logs(&job.name).await.expect("logs") != "hello\n" {
        assert!(tokio::time::Instant::now() < deadline, "no log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    executor.cancel(&job.name).await.expect("cancel");
    assert_eq!(next_event(&mut events).await.state, JobState::Cancelled);
    let denied: Vec<_> = c
        .server
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert!(denied.is_empty(), "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_in_one_namespace_run_the_same_attempt_as_their_own_jobs() {
    let c = cluster().await;
    let (a, _a_events) = c.executor_of("a", settings());
    let (b, _b_events) = c.executor_of("b", settings());
    let (job_a, job_b) = (step_of("a", 1), step_of("b", 1));
    a.submit(job_a.clone()).await.expect("a submits");
    b.submit(job_b.clone()).await.expect("b submits");
    assert_ne!(job_a.name, job_b.name);
    assert_eq!(c.server.list("jobs", Some(NS)).len(), 2);
    pod_of(&c.server, &job_a.name).await;
    pod_of(&c.server, &job_b.name).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while a.jobs().is_empty() || b.jobs().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watches saw nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        a.known_jobs().await.expect("a's jobs"),
        std::slice::from_ref(&job_a.name)
    );
    assert_eq!(
        b.known_jobs().await.expect("b's jobs"),
        std::slice::from_ref(&job_b.name)
    );
    assert_eq!(
        a.observe(&job_b.name).await.expect("observe"),
        None,
        "a never sees b's Job"
    );
    let error = a
        .submit(job_b)
        .await
        .expect_err("b's attempt is not a's to run");
    assert!(matches!(error, ExecError::InvalidJob { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_the_same_name_that_is_not_this_attempt_is_refused_with_whose_it_is() {
    let c = cluster().await;
    let (executor, _events) = c.executor(settings());
    let job = step(1);
    // Installation `test-1`'s run 1 step `train`... and a Job there under this very name
    // that says it is another installation's attempt.
    let template = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "trainyard"}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}});
    let labels = json!({"app.kubernetes.io/managed-by": "trainyard",
        "trainyard.dev/instance": "other", "trainyard.dev/run": "1",
        "trainyard.dev/step": "prepare", "trainyard.dev/attempt": "1"});
    c.server
        .put_object(json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job.name, "namespace": NS, "labels": labels},
            "spec": {"template": template}}))
        .expect("a foreign Job");
    let error = executor.submit(job.clone()).await.expect_err("not ours");
    assert_eq!(
        error.to_string(),
        format!(
            "a Job named {} already exists and belongs to installation other (run 1, step prepare, attempt 1)",
            job.name
        )
    );
    assert!(matches!(error, ExecError::Foreign { .. }));
    assert_eq!(
        executor.observe(&job.name).await.expect("observe"),
        None,
        "nothing of the foreign Job is taken as this attempt's"
    );

    // The same installation, run and step, but another attempt's Job: not this one either.
    let mut later = step(2);
    later.attempt = 2;
    let mut second = step(2);
    second.name = later.name.clone();
    executor
        .submit(second)
        .await
        .expect("attempt 1 under attempt 2's name");
    let error = executor.submit(later).await.expect_err("another attempt");
    assert!(
        error
            .to_string()
            .ends_with("belongs to installation test (run 2, step train, attempt 1)"),
        "{error}"
    );
    let gets = c.server.request_count("get", "jobs");
    assert_eq!(gets, 2, "one read per 409");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_a_quota_refuses_fails_the_attempt_with_the_apis_words_after_the_pending_timeout() {
    let c = cluster().await;
    c.server
        .put_object(json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "compute", "namespace": NS},
            "spec": {"hard": {"limits.cpu": "64", "limits.memory": "256Gi"}}}))
        .expect("quota");
    let mut settings = settings();
    settings.pending_timeout = Duration::from_secs(1);
    let (executor, mut events) = c.executor(settings);

    // Its own resources and the init container's satisfy the quota: it gets its pod.
    let mut sized = step(1);
    sized.resources = Some(crate::spec::model::Resources {
        cpu: Some("1".to_owned()),
        memory: Some("1Gi".to_owned()),
        gpu: 0,
        gpu_type: None,
    });
    executor.submit(sized.clone()).await.expect("submit");
    pod_of(&c.server, &sized.name).await;

    // A step that sets no resources has no pod created; the step says why.
    let bare = step(2);
    let started = tokio::time::Instant::now();
    executor.submit(bare.clone()).await.expect("submit");
    let event = next_event(&mut events).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(event.name, bare.name);
    let JobState::Failed {
        exit_code: None,
        reason,
    } = &event.state
    else {
        panic!("{event:?}");
    };
    let pod = format!("pods \"{}-", bare.name);
    assert!(
        reason.starts_with(&format!("its pod could not be created for 1s: {pod}"))
            && reason.ends_with(
                "\" is forbidden: failed quota: compute: must specify limits.cpu for: main; limits.memory for: main"
            ),
        "{reason}"
    );
    assert!(
        c.server.get("jobs", NS, &bare.name).is_none(),
        "the Job is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_repeated_on_every_pass_sends_one_delete() {
    let c = cluster().await;
    let (executor, mut events) = c.executor(settings());
    let job = step(5);
    executor.submit(job.clone()).await.expect("submit");
    pod_of(&c.server, &job.name).await;
    c.server.run_job(NS, &job.name).expect("run");
    until_running(&executor, &job.name).await;
    for _ in 0..5 {
        executor.cancel(&job.name).await.expect("cancel");
    }
    assert_eq!(next_event(&mut events).await.state, JobState::Cancelled);
    executor
        .cancel(&job.name)
        .await
        .expect("cancel after the end");
    let deletes: Vec<u16> = c
        .server
        .requests()
        .iter()
        .filter(|r| r.verb == "delete" && r.resource == "jobs")
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_outcome_of_a_finished_job_only_once_it_is_asked_about() {
    let s3 = trainyard_testkit::s3::S3Server::start().expect("S3 server");
    let c = cluster().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let artifacts =
        ArtifactStore::open_with_env(&format!("{}/t", s3.url()), s3.env()).expect("open S3 store");
    let executor = |c: &Cluster| {
        let (events, received) = mpsc::unbounded_channel();
        let executor = KubernetesExecutor::new(
            c.client.clone(),
            INSTANCE,
            settings(),
            artifacts.clone(),
            artifacts.uri(""),
            events,
        )
        .expect("executor");
        (executor, received)
    };
    let (first, _events) = executor(&c);
    let jobs: Vec<StepJob> = (1..=3).map(step).collect();
    for job in &jobs {
        first.submit(job.clone()).await.expect("submit");
        pod_of(&c.server, &job.name).await;
    }
    drop(first);
    for job in &jobs {
        let stored = artifacts
            .put_bytes(&job.outputs[0].key, b"weights".to_vec())
            .await
            .expect("output");
        let manifest = serde_json::to_vec(&manifest_of(job, &stored)).expect("json");
        artifacts
            .put_bytes(&artifacts::manifest_key(&job.name), manifest)
            .await
            .expect("manifest");
        c.server.complete_job(NS, &job.name).expect("complete");
    }
    let manifest_reads = || {
        s3.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/manifest.json"))
            .count()
    };

    let (second, mut events) = executor(&c);
    second.synced().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(manifest_reads(), 0, "nothing read at start");
    assert!(events.try_recv().is_err());
    let state = second.observe(&jobs[0].name).await.expect("observe");
    assert!(
        matches!(state, Some(JobState::Succeeded { .. })),
        "{state:?}"
    );
    assert_eq!(manifest_reads(), 1, "one read, for the job asked about");
    second.observe(&jobs[0].name).await.expect("observe again");
    assert_eq!(manifest_reads(), 1, "and never again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_watch_has_not_shown_yet_is_found_by_a_recheck_not_taken_for_gone() {
    let c = cluster().await;
    let (behind, _events) = c.executor(settings());
    behind.synced().await;
    // Its watch drops and cannot come back (as after an outage) ...
    c.server.fail_next_matching(Fault {
        remaining: usize::MAX,
        code: 503,
        retry_after: None,
        verb: Some("watch".to_owned()),
        resource: Some("jobs".to_owned()),
    });
    c.server.close_watches();
    // ... while another replica creates the attempt's Job.
    let (other, _other_events) = c.executor(settings());
    other.synced().await;
    let job = step(90);
    other.submit(job.clone()).await.expect("submit");
    assert_eq!(behind.observe(&job.name).await.expect("observe"), None);
    assert_eq!(
        behind.recheck(&job.name).await.expect("recheck"),
        Some(JobState::Pending),
        "read from the API server, not taken for gone"
    );
    assert_eq!(
        behind.observe(&job.name).await.expect("observe"),
        Some(JobState::Pending),
        "and kept"
    );
    let unknown = step(91);
    assert_eq!(behind.recheck(&unknown.name).await.expect("recheck"), None);
}
