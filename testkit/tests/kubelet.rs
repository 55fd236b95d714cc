//! The stand-in kubelet runs Job pods as local processes, driven through the real client.

use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::{Value, json};
use trainyard_testkit::kube::ApiServer;

async fn client(server: &ApiServer) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.default_namespace = "default".into();
    kube::Client::try_from(config).unwrap()
}

fn job(name: &str, pod_spec: Value, extra: Value) -> Job {
    let mut spec = json!({"backoffLimit": 0, "template": {"spec": pod_spec}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let mut pod = spec["template"]["spec"].take();
    pod["restartPolicy"] = json!("Never");
    pod["terminationGracePeriodSeconds"] = json!(1);
    spec["template"]["spec"] = pod;
    serde_json::from_value(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn shell(script: &str) -> Value {
    json!({"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}]})
}

async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn condition(job: &Value, kind: &str) -> Option<Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .cloned()
}

async fn finished_pod(server: &ApiServer, job: &str) -> Value {
    until("the pod to finish", || {
        let pod = server.job_pod("default", job)?;
        matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
        .then_some(pod)
    })
    .await
}

#[tokio::test]
async fn a_failing_command_fails_its_pod_and_job_and_keeps_its_log() {
    let root = tempfile::tempdir().unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path())
        .start()
        .await
        .unwrap();
    let c = client(&server).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    jobs.create(
        &PostParams::default(),
        &job("fails", shell("echo hi; exit 3"), json!({})),
    )
    .await
    .unwrap();

    let pod = finished_pod(&server, "fails").await;
    assert_eq!(pod["status"]["phase"], "Failed");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (
            terminated["exitCode"].as_i64(),
            terminated["reason"].as_str()
        ),
        (Some(3), Some("Error"))
    );
    let pods: Api<Pod> = Api::default_namespaced(c);
    let log = pods
        .logs(
            pod["metadata"]["name"].as_str().unwrap(),
            &LogParams::default(),
        )
        .await
        .unwrap();
    assert_eq!(log, "hi\n");
    let failed = until("the job to fail", || {
        condition(&server.get("jobs", "default", "fails")?, "Failed")
    })
    .await;
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
}

#[tokio::test]
async fn a_passed_deadline_fails_the_job_and_kills_the_process() {
    let root = tempfile::tempdir().unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path())
        .start()
        .await
        .unwrap();
    let jobs: Api<Job> = Api::default_namespaced(client(&server).await);
    let spec = json!({
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "echo $$ > /scratch/pid; exec sleep 30"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]
    });
    jobs.create(
        &PostParams::default(),
        &job("slow", spec, json!({"activeDeadlineSeconds": 1})),
    )
    .await
    .unwrap();
    let pod = until("the pod to run", || server.job_pod("default", "slow")).await;
    let pid_file = server
        .pod_dir(pod["metadata"]["name"].as_str().unwrap())
        .unwrap()
        .join("volumes/scratch/pid");
    let pid: i32 = until("the pid file", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;

    let failed = until("the deadline", || {
        condition(&server.get("jobs", "default", "slow")?, "Failed")
    })
    .await;
    assert_eq!(failed["reason"], "DeadlineExceeded");
    assert_eq!(
        failed["message"],
        "Job was active longer than specified deadline"
    );
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the container process was killed");
    assert!(
        server.job_pod("default", "slow").is_none(),
        "the pod was removed"
    );
}

#[tokio::test]
async fn termination_messages_come_from_the_file_or_the_log_tail() {
    let root = tempfile::tempdir().unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path())
        .start()
        .await
        .unwrap();
    let jobs: Api<Job> = Api::default_namespaced(client(&server).await);
    jobs.create(
        &PostParams::default(),
        &job(
            "says",
            shell("printf 'model at s3://m/1' > /dev/termination-log"),
            json!({}),
        ),
    )
    .await
    .unwrap();
    let mut fallback = shell("echo first; echo boom; exit 1");
    fallback["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    jobs.create(
        &PostParams::default(),
        &job("falls-back", fallback, json!({})),
    )
    .await
    .unwrap();

    let says = finished_pod(&server, "says").await;
    let terminated = &says["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (
            terminated["reason"].as_str(),
            terminated["message"].as_str()
        ),
        (Some("Completed"), Some("model at s3://m/1"))
    );
    until("the job to complete", || {
        condition(&server.get("jobs", "default", "says")?, "Complete")
    })
    .await;
    let fell = finished_pod(&server, "falls-back").await;
    assert_eq!(
        fell["status"]["containerStatuses"][0]["state"]["terminated"]["message"],
        "first\nboom\n"
    );
}

#[tokio::test]
async fn env_from_a_secret_is_resolved_and_a_missing_secret_holds_the_pod() {
    let root = tempfile::tempdir().unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path())
        .start()
        .await
        .unwrap();
    let c = client(&server).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    let spec = json!({"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "echo $API_TOKEN $REGION"],
        "envFrom": [{"secretRef": {"name": "creds"}}],
        "env": [{"name": "REGION", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "region"}}}]}]});
    jobs.create(
        &PostParams::default(),
        &job("needs-secret", spec, json!({})),
    )
    .await
    .unwrap();

    let waiting = until("the config error", || {
        let pod = server.job_pod("default", "needs-secret")?;
        let w = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError").then_some((pod, w))
    })
    .await;
    assert_eq!(waiting.1["message"], "secret \"creds\" not found");
    assert_eq!(waiting.0["status"]["phase"], "Pending");

    server
        .put_object(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "default"},
                           "stringData": {"API_TOKEN": "s3cr3t", "region": "eu-1"}}))
        .unwrap();
    let pod = finished_pod(&server, "needs-secret").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let log = pods
        .logs(
            pod["metadata"]["name"].as_str().unwrap(),
            &LogParams::default(),
        )
        .await
        .unwrap();
    assert_eq!(log, "s3cr3t eu-1\n");
}

#[tokio::test]
async fn an_init_container_copies_a_mapped_binary_that_the_main_container_runs_while_its_log_is_followed()
 {
    let root = tempfile::tempdir().unwrap();
    let tool = root.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho \"tool $1\"\nsleep 0.3\necho done\n").unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path().join("pods"))
        .start()
        .await
        .unwrap();
    server.map_path("/usr/local/bin/tool", &tool);
    let c = client(&server).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    let spec = json!({
        "volumes": [{"name": "bin", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory"}}],
        "initContainers": [{"name": "copy", "image": "trainyard:1", "command": ["cp", "/usr/local/bin/tool", "/opt/bin/tool"],
                            "volumeMounts": [{"name": "bin", "mountPath": "/opt/bin"}]}],
        "containers": [{"name": "main", "image": "python:3", "command": ["sh", "/opt/bin/tool"], "args": ["/dev/shm/x"],
                        "volumeMounts": [{"name": "bin", "mountPath": "/opt/bin"}, {"name": "shm", "mountPath": "/dev/shm"}]}]
    });
    jobs.create(&PostParams::default(), &job("tooling", spec, json!({})))
        .await
        .unwrap();
    let pod_name = until("the main container to run", || {
        let pod = server.job_pod("default", "tooling")?;
        (pod["status"]["phase"] == "Running")
            .then(|| pod["metadata"]["name"].as_str().unwrap().to_string())
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let params = LogParams {
        container: Some("main".into()),
        follow: true,
        ..Default::default()
    };
    let lines: Vec<String> = pods
        .log_stream(&pod_name, &params)
        .await
        .unwrap()
        .lines()
        .try_collect()
        .await
        .unwrap();
    let shm = server.pod_dir(&pod_name).unwrap().join("volumes/shm/x");
    assert_eq!(
        lines,
        [format!("tool {}", shm.display()), "done".to_string()]
    );
    let pod = finished_pod(&server, "tooling").await;
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    assert_eq!(pod["status"]["phase"], "Succeeded");
}

#[tokio::test]
async fn an_oom_kill_really_kills_the_container_and_is_reported_as_such() {
    let root = tempfile::tempdir().unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path())
        .start()
        .await
        .unwrap();
    let jobs: Api<Job> = Api::default_namespaced(client(&server).await);
    jobs.create(
        &PostParams::default(),
        &job("hungry", shell("sleep 30"), json!({})),
    )
    .await
    .unwrap();
    until("the pod to run", || {
        let pod = server.job_pod("default", "hungry")?;
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await;
    server.oom_kill("default", "hungry").unwrap();
    let pod = finished_pod(&server, "hungry").await;
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (
            terminated["reason"].as_str(),
            terminated["exitCode"].as_i64()
        ),
        (Some("OOMKilled"), Some(137))
    );
}

#[tokio::test]
async fn deleting_a_running_job_in_background_stops_its_process_within_the_grace_period() {
    let root = tempfile::tempdir().unwrap();
    let server = ApiServer::builder()
        .kubelet(root.path())
        .start()
        .await
        .unwrap();
    let jobs: Api<Job> = Api::default_namespaced(client(&server).await);
    let script =
        "trap 'echo stopping; exit 143' TERM; echo started; while true; do sleep 0.05; done";
    jobs.create(
        &PostParams::default(),
        &job("cancel-me", shell(script), json!({})),
    )
    .await
    .unwrap();
    let pod_name = until("the pod to run", || {
        let pod = server.job_pod("default", "cancel-me")?;
        (pod["status"]["phase"] == "Running")
            .then(|| pod["metadata"]["name"].as_str().unwrap().to_string())
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    until("the script to print", || {
        let pod = server.job_pod("default", "cancel-me")?;
        let log_started = pod["status"]["containerStatuses"][0]["state"]["running"].is_object();
        log_started.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from = server.resource_version().to_string();
    let params = kube::api::WatchParams::default().fields(&format!("metadata.name={pod_name}"));
    let mut watch = pods.watch(&params, &from).await.unwrap().boxed();
    let started = Instant::now();
    jobs.delete("cancel-me", &kube::api::DeleteParams::background())
        .await
        .unwrap();
    assert!(server.get("jobs", "default", "cancel-me").is_none());
    let mut exit_code = None;
    let mut graceful = false;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            kube::api::WatchEvent::Modified(pod) => {
                graceful |= pod.metadata.deletion_timestamp.is_some();
                let state = pod
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c[0].state.clone());
                if let Some(t) = state.and_then(|s| s.terminated) {
                    exit_code = Some(t.exit_code);
                }
            }
            kube::api::WatchEvent::Deleted(_) => break,
            _ => {}
        }
    }
    assert!(graceful, "the pod is deleted gracefully first");
    assert_eq!(exit_code, Some(143), "SIGTERM reached the trap");
    assert!(started.elapsed() < Duration::from_secs(3));
    let err = pods
        .logs(&pod_name, &LogParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}
