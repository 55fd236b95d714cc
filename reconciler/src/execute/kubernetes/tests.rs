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
        let (events, received) = mpsc::unbounded_channel();
        let executor = KubernetesExecutor::new(
            self.client.clone(),
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
    let name = job_name(run_id, "train", 1);
    let dir = super::manifest::job_dir(&name);
    StepJob {
        name,
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
            key: artifacts::output_key(run_id, "train", "model"),
        }],
        log_key: artifacts::log_key(run_id, "train", 1),
        labels: BTreeMap::from([
            ("trainyard.dev/run".to_owned(), run_id.to_string()),
            ("trainyard.dev/pipeline".to_owned(), "churn".to_owned()),
            ("trainyard.dev/step".to_owned(), "train".to_owned()),
        ]),
        annotations: BTreeMap::new(),
        secrets: Vec::new(),
    }
}

async fn next_event(events: &mut UnboundedReceiver<JobEvent>) -> JobEvent {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event in time")
        .expect("the channel stays open")
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
    let manifest = json!({"run": 3, "step": "train", "attempt": 1, "artifacts": [
        {"output": "model", "uri": stored.uri, "sha256": stored.sha256, "size": stored.size}]});
    c.artifacts
        .put_bytes(
            &artifacts::manifest_key(3, "train", 1),
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
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while executor.observe(&job.name).await.expect("observe") != Some(JobState::Running) {
        assert!(tokio::time::Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
            .observe(&job_name(404, "train", 1))
            .await
            .expect("observe"),
        None,
        "after the first list, a name it does not have is gone"
    );
    assert_eq!(second.jobs(), [running.name.clone(), finished.name.clone()]);
    assert_eq!(
        next_event(&mut events).await,
        JobEvent {
            name: finished.name.clone(),
            state: failed(Some(1), "exited with code 1")
        }
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while second.observe(&running.name).await.expect("observe") != Some(JobState::Running) {
        assert!(tokio::time::Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
