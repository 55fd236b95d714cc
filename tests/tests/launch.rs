//! `trainyard-launch` as a pod runs it: the real (static) binary against a real S3 server, with the
//! step's source and input placed in the bucket the way the service and an earlier step
//! leave them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trainyard::artifacts::{self, ArtifactStore};
use trainyard::execute::launcher::{self, SourceMarker, TerminationReport};
use trainyard::execute::{StepInput, StepJob, StepOutput, StepSource, job_name};
use trainyard_testkit::s3::S3Server;
use trainyard_tests::{Result, TestResult, launcher_bin};

const SCRIPT: &str = "#!/bin/sh\nset -e\necho \"training on $(cat \"$1\")\"\ntrap 'echo stopping; echo bye > \"$4\"; exit 0' TERM\nif [ -n \"$4\" ]; then : > \"$5\"; while :; do sleep 0.05; done; fi\ncp \"$1\" \"$2\"\nexit \"${3:-0}\"\n";

struct Pod {
    _server: S3Server,
    env: Vec<(String, String)>,
    url: String,
    store: ArtifactStore,
    dir: tempfile::TempDir,
    job: StepJob,
}

impl Pod {
    /// A bucket holding a step's source (with an executable script) and its input, and the
    /// job the service would hand the Kubernetes executor for it.
    async fn new(extra_args: &[&str]) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = S3Server::start()?;
        let env = server.env();
        let url = format!("{}/trainyard", server.url());
        let store = ArtifactStore::open_with_env(&url, env.clone())?;
        let dir = tempfile::tempdir()?;
        let job_dir = dir.path().join("work/job");
        let (run, step) = (3, "train");
        let prefix = artifacts::source_prefix("feedface");
        let script_key = artifacts::source_key(&prefix, b"churn/train.sh");
        store
            .put_bytes(&script_key, SCRIPT.as_bytes().to_vec())
            .await?;
        let marker = SourceMarker {
            executables: vec![script_key],
        };
        store
            .put_bytes(
                &artifacts::source_marker_key(&prefix),
                serde_json::to_vec(&marker)?,
            )
            .await?;
        let input_key = artifacts::output_key("test", run, "prepare", "dataset");
        store.put_bytes(&input_key, b"rows".to_vec()).await?;
        let input = job_dir.join("inputs/prepare/dataset");
        let output = job_dir.join("outputs/model");
        let mut argv = vec![
            "./train.sh".to_owned(),
            input.display().to_string(),
            output.display().to_string(),
        ];
        argv.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let name = job_name("test", run, step, 1);
        let job = StepJob {
            log_key: artifacts::log_key(&name),
            name,
            instance: "test".to_owned(),
            run_id: run,
            step: step.to_owned(),
            attempt: 1,
            argv,
            env: BTreeMap::new(),
            image: "busybox".to_owned(),
            resources: None,
            timeout: None,
            job_dir: job_dir.clone(),
            workdir: job_dir.join("src/churn"),
            source: Some(StepSource {
                prefix,
                dir: PathBuf::from("churn"),
            }),
            inputs: vec![StepInput {
                key: input_key,
                path: input,
            }],
            outputs: vec![StepOutput {
                name: "model".to_owned(),
                path: output,
                key: artifacts::output_key("test", run, step, "model"),
            }],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            secrets: Vec::new(),
        };
        Ok(Pod {
            _server: server,
            env,
            url,
            store,
            dir,
            job,
        })
    }

    fn termination_log(&self) -> PathBuf {
        self.dir.path().join("termination-log")
    }

    /// `trainyard-launch …` with the S3 settings in its environment, as the pod spec sets.
    fn command(&self) -> Result<Command> {
        let mut args = launcher::launch_args(&self.job, &self.url);
        args.termination_log = Some(self.termination_log());
        let mut command = Command::new(launcher_bin()?);
        command
            .args(args.to_args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(command)
    }

    /// The report launch left for the pod's status, if any.
    fn termination_report(&self) -> Result<Option<TerminationReport>> {
        match std::fs::read_to_string(self.termination_log()) {
            Ok(text) => Ok(Some(serde_json::from_str(&text)?)),
            Err(_) => Ok(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_launch_runs_the_step_and_leaves_outputs_log_and_manifest_in_s3() -> TestResult {
    let pod = Pod::new(&[]).await?;
    let output = pod.command()?.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);

    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("training on rows"),
        "the pod log: {stdout:?}"
    );
    assert_eq!(pod.termination_report()?, None, "no report on success");
    assert_eq!(
        pod.store.get_bytes(&pod.job.outputs[0].key).await?,
        Some(b"rows".to_vec())
    );
    let produced = launcher::outcome(&pod.store, &pod.job)
        .await?
        .ok_or("no manifest")?;
    assert_eq!(produced.len(), 1);
    assert_eq!(produced[0].size, 4);
    assert_eq!(
        produced[0].uri,
        format!("{}/test/runs/3/train/model", pod.url),
        "the URI names the bucket and prefix"
    );
    let log = pod
        .store
        .get_bytes(&pod.job.log_key)
        .await?
        .ok_or("no log")?;
    assert!(String::from_utf8_lossy(&log).contains("training on rows"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_exits_with_its_code_and_says_why_in_the_termination_log() -> TestResult {
    let pod = Pod::new(&["3"]).await?;
    let output = pod.command()?.output()?;

    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(
        pod.termination_report()?,
        Some(TerminationReport {
            exit_code: Some(3),
            reason: "exited with code 3".to_owned()
        })
    );
    assert_eq!(launcher::outcome(&pod.store, &pod.job).await?, None);
    let log = pod
        .store
        .get_bytes(&pod.job.log_key)
        .await?
        .ok_or("no log")?;
    assert!(String::from_utf8_lossy(&log).ends_with("trainyard: exited with code 3\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_pod_reaches_the_step_which_cleans_up_before_the_launch_exits() -> TestResult
{
    let pod = Pod::new(&[]).await?;
    let cleaned = pod.dir.path().join("cleaned");
    let ready = pod.dir.path().join("ready");
    let mut job_args = pod.job.argv.clone();
    job_args.extend([
        String::new(),
        cleaned.display().to_string(),
        ready.display().to_string(),
    ]);
    let pod = Pod {
        job: StepJob {
            argv: job_args,
            ..pod.job.clone()
        },
        ..pod
    };
    let child = pod.command()?.spawn()?;
    wait_for(&ready, Duration::from_secs(30))?;
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill only sends a signal, to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;

    assert_eq!(output.status.code(), Some(143), "{output:?}");
    assert_eq!(std::fs::read_to_string(&cleaned)?, "bye\n");
    assert_eq!(
        pod.termination_report()?,
        Some(TerminationReport {
            exit_code: None,
            reason: "stopped by SIGTERM".to_owned()
        })
    );
    assert_eq!(launcher::outcome(&pod.store, &pod.job).await?, None);
    Ok(())
}

fn wait_for(path: &Path, limit: Duration) -> TestResult {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            return Err(format!("{} did not appear", path.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
