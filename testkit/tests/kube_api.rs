//! The stand-in API server driven by the real `kube` client and kube-runtime's watcher, as
//! the reconciler drives it.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use trainyard_testkit::kube::{ApiServer, Fault};

async fn client_with_retry(server: &ApiServer, retry: bool) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = retry;
    kube::Client::try_from(config).unwrap()
}

async fn client(server: &ApiServer) -> kube::Client {
    client_with_retry(server, true).await
}

fn job(name: &str, extra: Value) -> Job {
    let mut value = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "trainyard", "step": name}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}]}}}
    });
    merge(&mut value, &extra);
    serde_json::from_value(value).unwrap()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_job_is_created_read_back_refused_twice_and_validated() {
    let server = ApiServer::builder().token("t0ken").start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");

    let created = jobs
        .create(&PostParams::default(), &job("train-a", json!({})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.completions, Some(1));
    assert_eq!(spec.suspend, Some(false));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["batch.kubernetes.io/job-name"], "train-a");

    let fetched = jobs.get("train-a").await.unwrap();
    assert_eq!(fetched.metadata.uid, meta.uid);

    let again = api_error(
        jobs.create(&PostParams::default(), &job("train-a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "jobs.batch \"train-a\" already exists");

    let gpu = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:1",
        "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}}]}}}});
    let invalid = api_error(
        jobs.create(&PostParams::default(), &job("gpu", gpu))
            .await
            .unwrap_err(),
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        invalid.message,
        "Job.batch \"gpu\" is invalid: spec.template.spec.containers[0].resources.requests[nvidia.com/gpu]: Invalid value: \"1\": must be equal to nvidia.com/gpu limit of 2"
    );
    let missing = api_error(jobs.get("nope").await.unwrap_err());
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (404, "jobs.batch \"nope\" not found")
    );

    let other_ns: Api<Job> = Api::namespaced(client(&server).await, "elsewhere");
    let no_ns = api_error(
        other_ns
            .create(&PostParams::default(), &job("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (no_ns.code, no_ns.message.as_str()),
        (404, "namespaces \"elsewhere\" not found")
    );
}

#[tokio::test]
async fn a_request_without_the_token_is_unauthorized() {
    let server = ApiServer::builder().token("right").start().await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.auth_info.token = Some("wrong".to_string().into());
    let jobs: Api<Job> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let err = api_error(jobs.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(err.code, 401);
}

#[tokio::test]
async fn lists_select_by_label_and_page_with_continue_tokens_until_compacted() {
    let server = ApiServer::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    for i in 0..5 {
        let extra =
            json!({"metadata": {"labels": {"tier": if i % 2 == 0 { "gpu" } else { "cpu" }}}});
        jobs.create(&PostParams::default(), &job(&format!("j{i}"), extra))
            .await
            .unwrap();
    }
    let names = |list: &kube::core::ObjectList<Job>| -> Vec<String> {
        list.items
            .iter()
            .map(|j| j.metadata.name.clone().unwrap())
            .collect()
    };
    let gpu = jobs
        .list(&ListParams::default().labels("tier=gpu"))
        .await
        .unwrap();
    assert_eq!(names(&gpu), ["j0", "j2", "j4"]);
    let not_in = jobs
        .list(&ListParams::default().labels("tier notin (gpu),step"))
        .await
        .unwrap();
    assert_eq!(names(&not_in), ["j1", "j3"]);
    let by_name = jobs
        .list(&ListParams::default().fields("metadata.name=j3"))
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["j3"]);

    let first = jobs.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first), ["j0", "j1"]);
    let token = first.metadata.continue_.clone().unwrap();
    let second = jobs
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["j2", "j3"]);
    let third = jobs
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_ref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&third), ["j4"]);
    assert!(third.metadata.continue_.as_deref().unwrap_or("").is_empty());

    jobs.create(&PostParams::default(), &job("later", json!({})))
        .await
        .unwrap();
    server.compact();
    let gone = api_error(
        jobs.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((gone.code, gone.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn a_watch_sees_a_job_added_then_modified_when_the_test_completes_it() {
    let server = ApiServer::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    let list = jobs.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = jobs
        .watch(
            &WatchParams::default().labels("app.kubernetes.io/managed-by=trainyard"),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    jobs.create(&PostParams::default(), &job("w", json!({})))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut completed = false;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        match event {
            WatchEvent::Added(j) => {
                seen.push("ADDED");
                assert_eq!(j.metadata.name.as_deref(), Some("w"));
            }
            WatchEvent::Modified(j) => {
                seen.push("MODIFIED");
                let status = j.status.unwrap_or_default();
                if status.active == Some(1) && !completed {
                    completed = true;
                    server.complete_job("default", "w").unwrap();
                }
                let conditions = status.conditions.unwrap_or_default();
                if conditions
                    .iter()
                    .any(|c| c.type_ == "Complete" && c.status == "True")
                {
                    assert_eq!(status.succeeded, Some(1));
                    assert!(status.completion_time.is_some());
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0], "ADDED");
    assert!(seen.len() >= 3, "{seen:?}");
}

#[tokio::test]
async fn the_watcher_recovers_from_a_compacted_version_by_listing_again() {
    let server = ApiServer::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    jobs.create(&PostParams::default(), &job("before", json!({})))
        .await
        .unwrap();

    // A raw watch from a compacted version gets the ERROR event with a 410 Status.
    let old = server.resource_version();
    jobs.create(&PostParams::default(), &job("between", json!({})))
        .await
        .unwrap();
    server.compact();
    let mut raw = jobs
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match raw.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert!(
                status
                    .message
                    .starts_with(&format!("too old resource version: {old} (")),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    let mut events = watcher(jobs.clone(), watcher::Config::default()).boxed();
    let mut phase = 0;
    let mut errors = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .expect("watcher stalled")
            .unwrap();
        match next {
            Ok(watcher::Event::InitDone) if phase == 0 => {
                jobs.create(&PostParams::default(), &job("mid", json!({})))
                    .await
                    .unwrap();
            }
            // The watch is open once it delivers "mid"; compacting now cuts it off.
            Ok(watcher::Event::Apply(j))
                if phase == 0 && j.metadata.name.as_deref() == Some("mid") =>
            {
                phase = 1;
                server.compact();
                jobs.create(&PostParams::default(), &job("after", json!({})))
                    .await
                    .unwrap();
            }
            Ok(watcher::Event::InitApply(j))
                if phase == 1 && j.metadata.name.as_deref() == Some("after") =>
            {
                phase = 2
            }
            Ok(watcher::Event::InitDone) if phase == 2 => break,
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    assert!(errors >= 1, "the 410 reached the watcher");
    assert!(
        server.request_count("list", "jobs") >= 2,
        "the watcher listed again"
    );
}

#[tokio::test]
async fn a_lease_update_from_a_stale_version_conflicts() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "default");
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}),
    )
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut first = created.clone();
    first.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = created;
    stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = api_error(
        leases
            .replace("leader", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message
            .starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\"")
    );

    let stale_patch =
        json!({"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "d"}});
    let err = api_error(
        leases
            .patch(
                "leader",
                &PatchParams::default(),
                &Patch::Merge(&stale_patch),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
}

#[tokio::test]
async fn a_watch_by_name_sees_only_its_lease_and_a_stale_update_is_refused() {
    // How leader election follows and writes its Lease: a watch selected by name, and
    // `update`s carrying the resourceVersion read.
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "default");
    let lease = |name: &str, holder: &str| -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2}
        }))
        .unwrap()
    };
    let created = leases
        .create(&PostParams::default(), &lease("leader", "a"))
        .await
        .unwrap();
    leases
        .create(&PostParams::default(), &lease("other", "a"))
        .await
        .unwrap();
    let params = WatchParams::default().fields("metadata.name=leader");
    let version = created.metadata.resource_version.clone().unwrap();
    let mut events = leases.watch(&params, &version).await.unwrap().boxed();

    let mut other = leases.get("other").await.unwrap();
    other.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("other", &PostParams::default(), &other)
        .await
        .unwrap();
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let written = leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Modified(seen) = event else {
        panic!("expected the leader's update, got {event:?}");
    };
    assert_eq!(seen.metadata.name.as_deref(), Some("leader"));
    assert_eq!(
        seen.metadata.resource_version,
        written.metadata.resource_version
    );

    // The first writer won; a second write from the same read is refused.
    let mut late = created;
    late.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = api_error(
        leases
            .replace("leader", &PostParams::default(), &late)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert_eq!(
        server.get("leases", "default", "leader").unwrap()["spec"]["holderIdentity"],
        "b"
    );
}

#[tokio::test]
async fn deleting_a_job_orphans_its_pods_by_default_and_removes_them_in_background() {
    let server = ApiServer::start().await.unwrap();
    let c = client(&server).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c, "default");
    for name in ["orphaned", "background"] {
        jobs.create(&PostParams::default(), &job(name, json!({})))
            .await
            .unwrap();
    }
    let pods_of = |job: &str| format!("job-name={job}");
    assert_eq!(
        pods.list(&ListParams::default().labels(&pods_of("orphaned")))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let answer = jobs
        .delete("orphaned", &DeleteParams::default())
        .await
        .unwrap();
    let marked = answer
        .left()
        .expect("an orphaning delete answers with the object");
    assert_eq!(
        marked.metadata.finalizers.as_deref(),
        Some(&["orphan".to_string()][..])
    );
    assert!(marked.metadata.deletion_timestamp.is_some());
    let left = pods
        .list(&ListParams::default().labels(&pods_of("orphaned")))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1, "the default for jobs is Orphan");
    assert!(
        left[0]
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );

    let answer = jobs
        .delete("background", &DeleteParams::background())
        .await
        .unwrap();
    assert!(
        answer.is_right(),
        "an immediate delete answers with a Status"
    );
    assert!(
        pods.list(&ListParams::default().labels(&pods_of("background")))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(server.get("jobs", "default", "background").is_none());
}

#[tokio::test]
async fn too_many_requests_carries_retry_after_and_the_client_waits_it_out() {
    let server = ApiServer::start().await.unwrap();
    let no_retry: Api<Job> = Api::namespaced(client_with_retry(&server, false).await, "default");
    server.fail_next(1, 429, Some(1));
    let err = api_error(no_retry.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (429, "TooManyRequests"));

    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    server.fail_next_matching(Fault {
        remaining: 1,
        code: 429,
        retry_after: Some(1),
        verb: Some("create".into()),
        resource: Some("jobs".into()),
    });
    let started = Instant::now();
    jobs.create(&PostParams::default(), &job("patient", json!({})))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the client honoured Retry-After"
    );
    let creates: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.verb == "create")
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [429, 201]);
}

#[tokio::test]
async fn rbac_forbids_what_the_role_does_not_grant() {
    let server = ApiServer::builder()
        .user("system:serviceaccount:trainyard:trainyard")
        .start()
        .await
        .unwrap();
    server.enforce_rbac(json!([
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}
    ]));
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    jobs.list(&ListParams::default()).await.unwrap();
    let err = api_error(
        jobs.create(&PostParams::default(), &job("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        err.message,
        "jobs.batch is forbidden: User \"system:serviceaccount:trainyard:trainyard\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"default\""
    );
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "default");
    assert_eq!(api_error(leases.get("l").await.unwrap_err()).code, 403);
}

#[tokio::test]
async fn pod_failure_reasons_set_by_the_test_reach_the_client() {
    let server = ApiServer::start().await.unwrap();
    let c = client(&server).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c, "default");
    for name in ["pull", "nogpu", "oom", "queued"] {
        let extra = if name == "queued" {
            json!({"spec": {"suspend": true}})
        } else {
            json!({})
        };
        jobs.create(&PostParams::default(), &job(name, extra))
            .await
            .unwrap();
    }
    server
        .pod_waiting(
            "default",
            "pull",
            "ImagePullBackOff",
            "Back-off pulling image \"busybox:1.36\"",
        )
        .unwrap();
    server
        .pod_unschedulable(
            "default",
            "nogpu",
            "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        )
        .unwrap();
    server.oom_kill("default", "oom").unwrap();
    assert!(server.job_pod("default", "queued").is_none());
    server.admit("default", "queued").unwrap();
    assert!(server.job_pod("default", "queued").is_some());

    let pod = |job: &str| {
        let pods = pods.clone();
        let job = job.to_string();
        async move {
            pods.list(&ListParams::default().labels(&format!("job-name={job}")))
                .await
                .unwrap()
                .items
                .remove(0)
        }
    };
    let pull = pod("pull").await;
    let waiting = pull.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ImagePullBackOff"));
    let log_err = api_error(
        pods.logs(pull.metadata.name.as_deref().unwrap(), &Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(log_err.code, 400);
    assert!(
        log_err
            .message
            .ends_with("is waiting to start: trying and failing to pull image"),
        "{}",
        log_err.message
    );

    let nogpu = pod("nogpu").await.status.unwrap().conditions.unwrap();
    assert_eq!(nogpu[0].reason.as_deref(), Some("Unschedulable"));
    let oom = pod("oom").await.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (oom.reason.as_deref(), oom.exit_code),
        (Some("OOMKilled"), 137)
    );
    let failed = jobs
        .get("oom")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap();
    assert!(
        failed
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("BackoffLimitExceeded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_created_at_once_each_reach_a_shared_watch_once() {
    let server = ApiServer::start().await.unwrap();
    let c = client(&server).await;
    let jobs: Api<Job> = Api::namespaced(c, "default");
    let watch_config = watcher::Config::default().labels("app.kubernetes.io/managed-by=trainyard");
    let mut events = watcher(jobs.clone(), watch_config).boxed();
    loop {
        if let Ok(watcher::Event::InitDone) = events.next().await.unwrap() {
            break;
        }
    }
    let started = Instant::now();
    let creates = (0..1000).map(|i| {
        let jobs = jobs.clone();
        async move {
            jobs.create(
                &PostParams::default(),
                &job(&format!("bench-{i}"), json!({})),
            )
            .await
        }
    });
    let results = futures::future::join_all(creates).await;
    let created_in = started.elapsed();
    assert!(results.iter().all(Result::is_ok));
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 1000 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(j) = event {
            seen.insert(j.metadata.name.unwrap());
        }
    }
    let delivered_in = started.elapsed();
    eprintln!("1000 creates in {created_in:?}, all seen by the watch in {delivered_in:?}");
    assert_eq!(server.request_count("create", "jobs"), 1000);
    assert_eq!(server.request_count("watch", "jobs"), 1);
    assert_eq!(
        server.list("pods", Some("default")).len(),
        1000,
        "one pod per job"
    );
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_the_initial_objects_then_changes() {
    let server = ApiServer::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    jobs.create(&PostParams::default(), &job("existing", json!({})))
        .await
        .unwrap();
    let mut events = watcher(jobs.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(j) => initial.push(j.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["existing"]);
    assert_eq!(
        server.request_count("list", "jobs"),
        0,
        "no list request with streaming lists"
    );
    jobs.create(&PostParams::default(), &job("new", json!({})))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(j) =
            tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            && j.metadata.name.as_deref() == Some("new")
        {
            break;
        }
    }
}

#[tokio::test]
async fn server_side_apply_conflicts_with_another_managers_field_unless_forced() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "default");
    let apply = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
               "spec": {"holderIdentity": holder}})
    };
    leases
        .patch(
            "l",
            &PatchParams::apply("manager-a"),
            &Patch::Apply(apply("a")),
        )
        .await
        .unwrap();
    let err = api_error(
        leases
            .patch(
                "l",
                &PatchParams::apply("manager-b"),
                &Patch::Apply(apply("b")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"manager-a\": .spec.holderIdentity"
    );
    let forced = leases
        .patch(
            "l",
            &PatchParams::apply("manager-b").force(),
            &Patch::Apply(apply("b")),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let no_manager = leases
        .patch("l", &PatchParams::default(), &Patch::Apply(apply("c")))
        .await;
    let no_manager = api_error(no_manager.unwrap_err());
    assert_eq!(
        (no_manager.code, no_manager.message.as_str()),
        (
            422,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        )
    );
}

#[tokio::test]
async fn a_watcher_resumes_without_listing_again_after_its_stream_is_closed() {
    let server = ApiServer::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&server).await, "default");
    let mut events = watcher(jobs.clone(), watcher::Config::default()).boxed();
    loop {
        if let watcher::Event::InitDone = events.next().await.unwrap().unwrap() {
            break;
        }
    }
    jobs.create(&PostParams::default(), &job("first", json!({})))
        .await
        .unwrap();
    next_named(&mut events, "first").await;
    server.close_watches();
    jobs.create(&PostParams::default(), &job("second", json!({})))
        .await
        .unwrap();
    next_named(&mut events, "second").await;
    assert_eq!(
        server.request_count("list", "jobs"),
        1,
        "resumed from its resourceVersion"
    );
    assert_eq!(server.request_count("watch", "jobs"), 2);
}

async fn next_named<S>(events: &mut S, name: &str)
where
    S: futures::Stream<Item = Result<watcher::Event<Job>, watcher::Error>> + Unpin,
{
    let found = async {
        loop {
            if let Ok(watcher::Event::Apply(j)) = events.next().await.unwrap()
                && j.metadata.name.as_deref() == Some(name)
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), found)
        .await
        .expect("the watcher delivered the job");
}

#[tokio::test]
async fn pod_logs_honour_tail_lines_and_limit_bytes() {
    let server = ApiServer::start().await.unwrap();
    let c = client(&server).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c, "default");
    jobs.create(&PostParams::default(), &job("talks", json!({})))
        .await
        .unwrap();
    server.run_job("default", "talks").unwrap();
    server.append_log("default", "talks", "a\nb\nc\n").unwrap();
    let pod = server.job_pod("default", "talks").unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        pods.logs(name, &Default::default()).await.unwrap(),
        "a\nb\nc\n"
    );
    let tail = kube::api::LogParams {
        tail_lines: Some(2),
        ..Default::default()
    };
    assert_eq!(pods.logs(name, &tail).await.unwrap(), "b\nc\n");
    let limited = kube::api::LogParams {
        limit_bytes: Some(1),
        ..Default::default()
    };
    assert_eq!(pods.logs(name, &limited).await.unwrap(), "a");
    let wrong = kube::api::LogParams {
        container: Some("sidecar".into()),
        ..Default::default()
    };
    assert_eq!(
        api_error(pods.logs(name, &wrong).await.unwrap_err()).code,
        400
    );
    assert_eq!(server.request_count("get", "pods/log"), 4);
}

#[tokio::test]
async fn chaos_fails_requests_as_asked_and_a_dropped_answer_can_hide_a_create_that_happened() {
    let server = ApiServer::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client_with_retry(&server, false).await, "default");
    server.chaos(7, 1.0);
    let mut errors = Vec::new();
    for n in 0..40 {
        let name = format!("chaos-{n}");
        let answer = jobs
            .create(&PostParams::default(), &job(&name, json!({})))
            .await;
        errors.push(answer.expect_err("every request meets a fault"));
    }
    server.calm();
    let records: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.verb == "create" && r.resource == "jobs")
        .collect();
    assert_eq!(records.len(), 40);
    let count = |f: &dyn Fn(&trainyard_testkit::kube::RequestRecord) -> bool| {
        records.iter().filter(|r| f(r)).count()
    };
    let (internal, throttled) = (count(&|r| r.status == 500), count(&|r| r.status == 429));
    let unanswered = count(&|r| r.dropped && r.status == 0);
    let lost = count(&|r| r.dropped && r.status == 201);
    assert!(internal > 0 && throttled > 0 && unanswered > 0 && lost > 0);
    assert_eq!(internal + throttled + unanswered + lost, 40);
    // The API's errors come as Status objects; dropped connections as transport errors.
    let api_errors = errors
        .iter()
        .filter(|e| matches!(e, kube::Error::Api(s) if s.code == 500 || s.code == 429))
        .count();
    assert_eq!(api_errors, internal + throttled, "{errors:?}");
    // Exactly the creates whose answer was lost took effect.
    assert_eq!(server.list("jobs", Some("default")).len(), lost);
    // Calm again: requests are answered.
    jobs.create(&PostParams::default(), &job("calm", json!({})))
        .await
        .unwrap();
}
