//! End-to-end on a cluster: the real binary with `--executor kubernetes` against the
//! stand-in API server (whose kubelet runs each pod's containers as local processes, so the
//! real static `trainyard-launch` moves every input and output), a real S3 server (moto) for
//! artifacts, PostgreSQL for the store, and the deployed Role enforced on every request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use trainyard::store::{AttemptState, RunState, StepState};
use trainyard_tests::cluster::{Cluster, NAMESPACE, SECRET, replica};
use trainyard_tests::{DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, cli, wait_for};

const QUEUE: &str = "team-ml";

/// The sample repository with its `train` step asking for one H100.
fn gpu_sample() -> Result<Repo> {
    let repo = Repo::from_examples()?;
    repo.edit(
        "pipelines/iris/pipeline.yaml",
        "resources: {cpu: \"1\", memory: 512Mi}",
        "resources: {cpu: \"1\", memory: 512Mi, gpu: 1, gpu_type: h100}",
    )?;
    Ok(repo)
}

/// Starts a service and admits its Jobs until run `run` is in a final state.
async fn run_to_the_end(
    cluster: &Cluster,
    data: &DataDir,
    run: i64,
    limit: Duration,
) -> Result<RunState> {
    let store = data.store().await?;
    let mut last = None;
    wait_for(limit, &format!("run {run} finished"), async || {
        cluster.admit_all()?;
        last = store.run(run).await?.map(|r| r.state);
        Ok(last.is_some_and(RunState::is_finished))
    })
    .await?;
    last.ok_or_else(|| "no run".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_trains_on_the_cluster_registers_the_model_and_notes_the_commit() -> TestResult {
    let cluster = Cluster::start(Some(QUEUE)).await?;
    let repo = gpu_sample()?;
    let commit = repo.commit("sample on the GPU cluster")?;
    let data = DataDir::postgres().await?;
    // The identity this installation's database holds (made up on first use).
    let id = data.store().await?.installation(None).await?;
    // A Job labelled as this installation's that no run of this database started:
    // reported, and left alone.
    let stray = format!("ty-{id}-999-stray-1");
    cluster.api.put_object(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": stray, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "trainyard",
                                "trainyard.dev/instance": id}},
        "spec": {"template": {
            "metadata": {"labels": {"app.kubernetes.io/managed-by": "trainyard",
                                    "trainyard.dev/instance": id}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    }))?;
    let service = cluster.serve(&repo, &data)?;

    let state = run_to_the_end(&cluster, &data, 1, Duration::from_secs(120)).await;
    let output = data.service_output();
    assert_eq!(state?, RunState::Succeeded, "{output}");

    // One Job per step, named from run, step and attempt, each created once.
    for step in ["prepare", "train", "evaluate"] {
        let name = format!("ty-{id}-1-{step}-1");
        let job = cluster.job(&name)?;
        assert_eq!(job["spec"]["backoffLimit"], 0, "{job}");
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        assert_eq!(
            job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
            QUEUE
        );
        assert_eq!(
            job["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "trainyard"
        );
        assert_eq!(job["metadata"]["labels"]["trainyard.dev/run"], "1");
        assert_eq!(
            job["metadata"]["labels"]["trainyard.dev/instance"],
            id.as_str()
        );
        assert_eq!(job["metadata"]["labels"]["trainyard.dev/attempt"], "1");
        assert_eq!(job["metadata"]["labels"]["trainyard.dev/pipeline"], "iris");
        assert_eq!(job["metadata"]["labels"]["trainyard.dev/step"], step);
        assert_eq!(
            job["metadata"]["annotations"]["trainyard.dev/commit"],
            commit.to_string()
        );
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], "training");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
        let main = &pod["containers"][0];
        assert_eq!(main["envFrom"][0]["secretRef"]["name"], SECRET);
        assert!(
            job["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Complete" && c["status"] == "True"),
            "{job}"
        );
    }
    assert_eq!(
        cluster.job_creates(),
        BTreeMap::from([(201, 3)]),
        "one create per step, no retry, no duplicate"
    );
    let agents: BTreeSet<Option<String>> = cluster
        .api
        .requests()
        .into_iter()
        .map(|r| r.user_agent)
        .collect();
    assert_eq!(
        agents,
        BTreeSet::from([Some(format!(
            "trainyard/{} ({id})",
            env!("CARGO_PKG_VERSION")
        ))]),
        "every request says who sends it"
    );
    let jobs = cluster.api.list("jobs", Some(NAMESPACE));
    assert_eq!(jobs.len(), 4, "three steps and the stray");
    assert!(cluster.api.get("jobs", NAMESPACE, &stray).is_some());
    assert!(
        output.contains(&format!(
            "a job labelled as Trainyard's belongs to no run in this database; left alone job={stray}"
        )),
        "{output}"
    );
    // The GPU step: its limit, where such GPUs are, an in-memory /dev/shm, its deadline.
    let train = cluster.job(&format!("ty-{id}-1-train-1"))?;
    let pod = &train["spec"]["template"]["spec"];
    let main = &pod["containers"][0];
    assert_eq!(main["resources"]["limits"]["nvidia.com/gpu"], "1", "{main}");
    assert_eq!(main["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(
        pod["nodeSelector"]["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    let shm = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["emptyDir"]["medium"] == "Memory")
        .ok_or("no in-memory volume")?;
    assert_eq!(shm["emptyDir"]["sizeLimit"], "1Gi");
    assert!(
        main["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == "/dev/shm" && m["name"] == shm["name"]),
        "{main}"
    );
    assert_eq!(train["spec"]["activeDeadlineSeconds"], 600, "timeout: 10m");
    let prepare = cluster.job(&format!("ty-{id}-1-prepare-1"))?;
    assert!(
        prepare["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|v| v["emptyDir"]["medium"] != "Memory"),
        "only GPU steps get an in-memory /dev/shm"
    );

    // The model went through S3 and was registered; the commit carries the results.
    let store = data.store().await?;
    let versions = store.models(Some("iris-classifier")).await?;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(
        versions[0].artifact_uri.starts_with("s3://"),
        "{:?}",
        versions[0]
    );
    let wait_note = wait_for(Duration::from_secs(20), "the note", async || {
        Ok(note(&repo, commit)?.contains("trainyard/model/iris-classifier: success"))
    })
    .await;
    let note = note(&repo, commit)?;
    assert!(wait_note.is_ok(), "{note}\n{}", data.service_output());
    assert!(
        note.contains("trainyard/run/iris: success — run 1 succeeded"),
        "{note}"
    );

    // A second run with other training params reuses the cached split: no Job for it, and
    // the pods of the steps after it read run 1's dataset from S3.
    let queued = cli(&repo, &data, &["run", "iris", "--param", "epochs=50"])?;
    assert_eq!(queued.code, Some(0), "{queued}");
    let state = run_to_the_end(&cluster, &data, 2, Duration::from_secs(120)).await;
    assert_eq!(state?, RunState::Succeeded, "{}", data.service_output());
    assert!(
        cluster
            .api
            .get("jobs", NAMESPACE, &format!("ty-{id}-2-prepare-1"))
            .is_none()
    );
    for step in ["train", "evaluate"] {
        cluster.job(&format!("ty-{id}-2-{step}-1"))?;
    }
    assert_eq!(cluster.job_creates(), BTreeMap::from([(201, 5)]));
    let prepared = store.attempts(2).await?;
    assert_eq!(prepared[0].state, AttemptState::Cached, "{prepared:?}");
    assert_eq!(prepared[0].reused.as_ref().map(|r| r.run_id), Some(1));
    let dataset = |run: i64| {
        let store = store.clone();
        async move {
            let rows = store.artifacts(run).await?;
            let row = rows.into_iter().find(|a| a.step == "prepare");
            Ok::<_, trainyard_tests::Error>(row.map(|a| (a.uri, a.sha256)))
        }
    };
    assert_eq!(dataset(2).await?, dataset(1).await?);
    assert_eq!(store.models(Some("iris-classifier")).await?.len(), 2);
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// The Trainyard note of `commit`, or an empty string.
fn note(repo: &Repo, commit: git2::Oid) -> Result<String> {
    let git = git2::Repository::open(repo.path())?;
    Ok(match git.find_note(Some("refs/notes/trainyard"), commit) {
        Ok(note) => note.message().unwrap_or_default().to_owned(),
        Err(_) => String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_run_hands_the_running_job_over_without_a_second_create()
-> TestResult {
    let cluster = Cluster::start(None).await?;
    let repo = Repo::with_files(&[(
        "pipeline.yaml",
        format!(
            "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: relay, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  steps:
    - {{name: first, run: [sleep, \"1\"]}}
    - {{name: second, needs: [first], retries: 2, run: [sleep, \"6\"]}}
    - {{name: third, needs: [second], run: [\"true\"]}}
"
        ),
    )])?;
    repo.commit("relay")?;
    let first = DataDir::postgres().await?;
    let id = first.store().await?.installation(None).await?;
    let second = first.sharing_database()?;
    let mut replicas = BTreeMap::from([
        ("one", replica(&cluster, &repo, &first, "one")?),
        ("two", replica(&cluster, &repo, &second, "two")?),
    ]);

    // Wait until the leader has the middle step running on the cluster.
    wait_for(Duration::from_secs(60), "second step running", async || {
        Ok(cluster
            .api
            .job_pod(NAMESPACE, &format!("ty-{id}-1-second-1"))
            .is_some_and(|pod| pod["status"]["phase"] == "Running"))
    })
    .await
    .map_err(|e| {
        format!(
            "{e}\n{}\n{}",
            first.service_output(),
            second.service_output()
        )
    })?;
    let lease = cluster
        .api
        .get("leases", NAMESPACE, "trainyard")
        .ok_or("no Lease")?;
    let leader = lease["spec"]["holderIdentity"]
        .as_str()
        .ok_or("the Lease has no holder")?
        .to_owned();
    replicas
        .remove(leader.as_str())
        .ok_or_else(|| format!("unknown leader {leader}"))?
        .kill_hard()?;

    let store = first.store().await?;
    let mut state = None;
    let finished = wait_for(Duration::from_secs(60), "run 1 finished", async || {
        state = store.run(1).await?.map(|r| r.state);
        Ok(state.is_some_and(RunState::is_finished))
    })
    .await;
    let output = format!("{}\n{}", first.service_output(), second.service_output());
    finished.map_err(|e| format!("{e}\n{output}"))?;
    assert_eq!(state, Some(RunState::Succeeded), "{output}");
    let holder = cluster
        .api
        .get("leases", NAMESPACE, "trainyard")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned));
    assert!(
        holder.as_deref().is_some_and(|h| h != leader),
        "the other replica took over: {holder:?}"
    );
    // The running Job was followed, not failed as interrupted and run again.
    let mut names: Vec<String> = cluster
        .api
        .list("jobs", Some(NAMESPACE))
        .iter()
        .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("ty-{id}-1-first-1"),
            format!("ty-{id}-1-second-1"),
            format!("ty-{id}-1-third-1")
        ],
        "{output}"
    );
    assert_eq!(
        cluster.job_creates().get(&201),
        Some(&3),
        "each Job created once: {:?}",
        cluster.job_creates()
    );
    let steps = store.steps(1).await?;
    assert!(steps.iter().all(|s| s.attempt == 1), "{steps:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_client_retries_loses_no_step_and_creates_each_job_once()
-> TestResult {
    let cluster = Cluster::start(None).await?;
    let repo = Repo::with_files(&[("README.md", "pipelines come later\n")])?;
    repo.commit("empty")?;
    let data = DataDir::postgres().await?;
    let (mut args, env) = cluster.service_args()?;
    args.extend(["--poll-seconds".to_owned(), "1".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _service = Service::start_with_env(repo.path(), &data, &args, &env)?;
    let store = data.store().await?;
    // The service is up and watching when the API server stops answering.
    wait_for(Duration::from_secs(30), "Jobs watched", async || {
        Ok(cluster.api.request_count("watch", "jobs") > 0)
    })
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    cluster.api.fail_next(usize::MAX, 503, None);
    repo.write(
        "pipeline.yaml",
        format!(
            "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: relay, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  steps:
    - {{name: first, run: [\"true\"]}}
    - {{name: second, needs: [first], run: [\"true\"]}}
    - {{name: third, needs: [second], run: [\"true\"]}}
"
        ),
    )?;
    repo.commit("relay")?;
    // Longer than the client's retries of one create (about 13 s): every create of the
    // first step fails, and the service keeps handing it over.
    let mut seen = Vec::new();
    let waiting = wait_for(
        Duration::from_secs(40),
        "the first step waiting for its Job",
        async || {
            seen = store.steps(1).await?;
            Ok(seen.first().is_some_and(|s| {
                s.message.as_deref().is_some_and(|m| {
                    m.contains("not started yet") && m.contains("unable to handle the request")
                })
            }))
        },
    )
    .await;
    waiting.map_err(|e| format!("{e}: {seen:?}\n{}", data.service_output()))?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let attempts = store.attempts(1).await?;
    assert_eq!(attempts.len(), 1, "one attempt, not charged: {attempts:?}");
    assert_eq!(attempts[0].submitted_at, None, "no Job exists yet");
    assert_eq!(
        cluster.job_creates().get(&201),
        None,
        "nothing was created during the outage"
    );
    cluster.api.clear_faults();

    let state = run_to_the_end(&cluster, &data, 1, Duration::from_secs(120)).await;
    let output = data.service_output();
    assert_eq!(state?, RunState::Succeeded, "{output}");
    assert_eq!(
        cluster.job_creates().get(&201),
        Some(&3),
        "each Job created exactly once: {:?}\n{output}",
        cluster.job_creates()
    );
    let steps = store.steps(1).await?;
    for step in &steps {
        assert_eq!(
            step.attempt, 1,
            "no attempt charged for the outage: {steps:?}"
        );
        assert_eq!(
            step.message, None,
            "nothing left saying it waits: {steps:?}"
        );
    }
    for attempt in store.attempts(1).await? {
        assert!(attempt.submitted_at.is_some(), "{attempt:?}");
        assert_eq!(attempt.message, None, "{attempt:?}");
    }
    Ok(())
}

/// Finally steps as Jobs: after a failed DAG step, the finally step's Job is created once
/// the DAG has ended, is told `failed`, and reads the output the succeeded step uploaded;
/// the run ends failed, as its DAG did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finally_step_runs_as_a_job_after_a_failed_dag() -> TestResult {
    let cluster = Cluster::start(None).await?;
    let repo = Repo::with_files(&[(
        "pipeline.yaml",
        format!(
            "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: ending, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  steps:
    - {{name: prepare, outputs: [data], run: [sh, -c, 'printf ready > \"$1\"', sh, '{{{{ outputs.data }}}}']}}
    - {{name: train, needs: [prepare], run: [sh, -c, 'exit 3']}}
  finally:
    - name: report
      run: [sh, -c, 'test \"$1\" = failed && test \"$(cat \"$2\")\" = ready', sh, '{{{{ run.state }}}}', '{{{{ steps.prepare.outputs.data }}}}']
"
        ),
    )])?;
    let data = DataDir::postgres().await?;
    let id = data.store().await?.installation(None).await?;
    let service = cluster.serve(&repo, &data)?;

    let state = run_to_the_end(&cluster, &data, 1, Duration::from_secs(120)).await;
    let output = data.service_output();
    assert_eq!(state?, RunState::Failed, "{output}");
    let store = data.store().await?;
    let steps: Vec<(String, bool, StepState)> = store
        .steps(1)
        .await?
        .into_iter()
        .map(|s| (s.name, s.finally, s.state))
        .collect();
    assert_eq!(
        steps,
        [
            ("prepare".to_owned(), false, StepState::Succeeded),
            ("train".to_owned(), false, StepState::Failed),
            ("report".to_owned(), true, StepState::Succeeded),
        ],
        "{output}"
    );
    let report = cluster.job(&format!("ty-{id}-1-report-1"))?;
    assert_eq!(report["metadata"]["labels"]["trainyard.dev/step"], "report");
    assert_eq!(cluster.job_creates(), BTreeMap::from([(201, 3)]));
    let run = store.run(1).await?.ok_or("no run")?;
    assert!(
        run.message
            .as_deref()
            .is_some_and(|m| m.starts_with("step train failed")),
        "{run:?}"
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}

/// A sweep as Jobs: one Job per instance, the step after it reads the instances' outputs
/// and their index from S3 as one directory, and the best instance's model is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_one_job_per_instance_and_registers_the_best() -> TestResult {
    let cluster = Cluster::start(None).await?;
    let pipeline = r#"apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {name: sweep, owner: team-a}
spec:
  image: IMAGE
  triggers: {on_change: true}
  steps:
    - name: train
      matrix: {n: [1, 2]}
      outputs: [model, metrics]
      run: [sh, -c, 'printf "model $1" > "$2" && printf "{\"score\": $1}" > "$3"', sh, '{{ matrix.n }}', '{{ outputs.model }}', '{{ outputs.metrics }}']
    - name: collect
      needs: [train]
      run: [sh, -c, 'test "$(cat "$1/1")" = "model 2" && grep -q "\"n\": 1" "$1/index.json"', sh, '{{ steps.train.outputs.model }}']
  model:
    name: swept
    artifact: steps.train.outputs.model
    metrics: steps.train.outputs.metrics
    select: {metric: score}
"#
    .replace("IMAGE", PINNED_IMAGE);
    let repo = Repo::with_files(&[("pipeline.yaml", pipeline)])?;
    let data = DataDir::postgres().await?;
    let service = cluster.serve(&repo, &data)?;

    let state = run_to_the_end(&cluster, &data, 1, Duration::from_secs(120)).await;
    let output = data.service_output();
    assert_eq!(state?, RunState::Succeeded, "{output}");
    assert_eq!(cluster.job_creates(), BTreeMap::from([(201, 3)]));
    let steps: Vec<String> = cluster
        .api
        .list("jobs", Some(NAMESPACE))
        .iter()
        .filter_map(|j| {
            j["metadata"]["labels"]["trainyard.dev/step"]
                .as_str()
                .map(str::to_owned)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(steps, ["collect", "train.0", "train.1"]);
    let store = data.store().await?;
    let versions = store.models(Some("swept")).await?;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(
        versions[0].selected.as_ref().map(|s| s.step.as_str()),
        Some("train.1")
    );
    assert!(
        versions[0].artifact_uri.starts_with("s3://"),
        "{:?}",
        versions[0]
    );
    assert_eq!(service.stop()?, Some(0));
    Ok(())
}
