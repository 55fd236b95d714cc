//! The service's side of `trainyard-launch`, the in-pod launcher (crate `trainyard-launch`):
//! the arguments that run a [`StepJob`] in a pod, and the outcome read back from the
//! manifest the launcher stores.

use std::path::PathBuf;

pub use trainyard_launch::launch::{
    Ended, LaunchArgs, Manifest, SourceMarker, TERMINATION_LOG, TerminationReport,
};

use super::{ProducedArtifact, StepJob};
use crate::artifacts::{self, ArtifactStore};

/// The launch of `job` with artifacts at `artifacts_url`, reporting failures to the
/// Kubernetes termination log.
pub fn launch_args(job: &StepJob, artifacts_url: &str) -> LaunchArgs {
    LaunchArgs {
        instance: job.instance.clone(),
        job: job.name.clone(),
        run: job.run_id,
        step: job.step.clone(),
        attempt: job.attempt,
        artifacts: artifacts_url.to_owned(),
        job_dir: job.job_dir.clone(),
        workdir: job.workdir.clone(),
        source: job.source.as_ref().map(|source| source.prefix.clone()),
        // The root of the source is `.`: an empty argument is no path to clap.
        source_dir: job
            .source
            .as_ref()
            .map(|source| match source.dir.as_os_str() {
                dir if dir.is_empty() => PathBuf::from("."),
                _ => source.dir.clone(),
            }),
        inputs: job.inputs.clone(),
        outputs: job.outputs.clone(),
        log_key: job.log_key.clone(),
        termination_log: Some(PathBuf::from(TERMINATION_LOG)),
        argv: job.argv.clone(),
    }
}

/// The arguments of `trainyard-launch` that run `job` in a pod, with artifacts at
/// `artifacts_url` (the same store the service uses).
pub fn args(job: &StepJob, artifacts_url: &str) -> Vec<String> {
    launch_args(job, artifacts_url).to_args()
}

/// The outputs a finished launch stored for `job`, read from its manifest; None when the
/// launch stored none (it failed, or never ran).
pub async fn outcome(
    artifacts: &ArtifactStore,
    job: &StepJob,
) -> Result<Option<Vec<ProducedArtifact>>, artifacts::Error> {
    let key = artifacts::manifest_key(&job.name);
    let Some(bytes) = artifacts.get_bytes(&key).await? else {
        return Ok(None);
    };
    let corrupt = |reason: String| artifacts::Error::Corrupt {
        key: key.clone(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    // Job names of two installations can coincide (see `job_name`); the manifest says
    // whose attempt stored it, and only this attempt's counts.
    if (
        manifest.instance.as_str(),
        manifest.job.as_str(),
        manifest.run,
        manifest.step.as_str(),
        manifest.attempt,
    ) != (
        job.instance.as_str(),
        job.name.as_str(),
        job.run_id,
        job.step.as_str(),
        job.attempt,
    ) {
        return Err(corrupt(format!(
            "it describes job {} of installation {} (run {} step {:?} attempt {})",
            manifest.job, manifest.instance, manifest.run, manifest.step, manifest.attempt
        )));
    }
    if manifest.artifacts.len() != job.outputs.len() {
        return Err(corrupt(format!(
            "it lists {} artifacts for {} declared outputs",
            manifest.artifacts.len(),
            job.outputs.len()
        )));
    }
    let mut produced = Vec::with_capacity(job.outputs.len());
    for (stored, declared) in manifest.artifacts.into_iter().zip(&job.outputs) {
        if stored.output != declared.name {
            return Err(corrupt(format!(
                "it lists output {:?} where {:?} is declared",
                stored.output, declared.name
            )));
        }
        let expected_uri = artifacts.uri(&declared.key);
        if stored.uri != expected_uri {
            return Err(corrupt(format!(
                "output {:?} is at {:?}, not {expected_uri:?}",
                stored.output, stored.uri
            )));
        }
        let is_hash = stored.sha256.len() == 64
            && stored
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hash {
            return Err(corrupt(format!(
                "output {:?} has no lowercase hex sha256",
                stored.output
            )));
        }
        produced.push(ProducedArtifact {
            output: stored.output,
            uri: stored.uri,
            sha256: stored.sha256,
            size: stored.size,
        });
    }
    Ok(Some(produced))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use clap::Parser as _;
    use sha2::Digest as _;
    use tokio::sync::mpsc::{self, UnboundedReceiver};
    use trainyard_launch::launch::launch;

    use super::*;
    use crate::execute::{StepInput, StepOutput, StepSource, job_name};

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        launch: LaunchArgs,
    }

    fn parse(args: &[String]) -> LaunchArgs {
        let argv = std::iter::once("launch".to_owned()).chain(args.iter().cloned());
        Cli::try_parse_from(argv)
            .expect("the arguments parse")
            .launch
    }

    /// A job laid out as the runtime lays out one for a cluster, under `job_dir`.
    fn job(job_dir: &Path) -> StepJob {
        let (run, step) = (7, "train");
        StepJob {
            name: job_name("test", run, step, 2),
            instance: "test".to_owned(),
            run_id: run,
            step: step.to_owned(),
            attempt: 2,
            argv: vec!["true".to_owned()],
            env: BTreeMap::new(),
            image: "busybox".to_owned(),
            resources: None,
            timeout: None,
            job_dir: job_dir.to_owned(),
            workdir: job_dir.join("src/pipelines/churn"),
            source: Some(StepSource {
                prefix: artifacts::source_prefix("0123abcd"),
                dir: PathBuf::from("pipelines/churn"),
            }),
            inputs: vec![StepInput {
                key: artifacts::output_key("test", run, "prepare", "dataset"),
                path: job_dir.join("inputs/prepare/dataset"),
            }],
            outputs: vec![StepOutput {
                name: "model".to_owned(),
                path: job_dir.join("outputs/model"),
                key: artifacts::output_key("test", run, step, "model"),
            }],
            log_key: artifacts::log_key(&job_name("test", run, step, 2)),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn the_arguments_parse_back_into_the_same_job() {
        let job_dir = PathBuf::from("/trainyard/work/ty-7-train-2");
        let mut job = job(&job_dir);
        job.argv = ["python", "train.py", "--", "-x", "--epochs=3"]
            .map(str::to_owned)
            .to_vec();
        job.outputs.push(StepOutput {
            name: "metrics".to_owned(),
            path: job_dir.join("outputs/odd=name"),
            key: artifacts::output_key("test", 7, "train", "metrics"),
        });
        let args = args(&job, "s3://bucket/prefix");
        let parsed = parse(&args);

        assert_eq!(parsed, launch_args(&job, "s3://bucket/prefix"));
        assert_eq!(parsed.run, job.run_id);
        assert_eq!(parsed.step, job.step);
        assert_eq!(parsed.attempt, job.attempt);
        assert_eq!(parsed.artifacts, "s3://bucket/prefix");
        assert_eq!(parsed.job_dir, job_dir);
        assert_eq!(parsed.workdir, job.workdir);
        assert_eq!(parsed.source.as_deref(), Some("sources/0123abcd"));
        assert_eq!(parsed.source_dir, Some(PathBuf::from("pipelines/churn")));
        assert_eq!(parsed.inputs, job.inputs);
        assert_eq!(parsed.outputs, job.outputs);
        assert_eq!(parsed.log_key, job.log_key);
        assert_eq!(parsed.termination_log, Some(PathBuf::from(TERMINATION_LOG)));
        assert_eq!(parsed.argv, job.argv);
    }

    #[test]
    fn a_pipeline_at_the_root_of_its_source_round_trips() {
        let job_dir = PathBuf::from("/trainyard/work/ty-7-train-2");
        let mut job = job(&job_dir);
        if let Some(source) = job.source.as_mut() {
            source.dir = PathBuf::new();
        }
        job.workdir = job_dir.join("src");
        let parsed = parse(&args(&job, "s3://bucket/prefix"));
        assert_eq!(parsed.source_dir, Some(PathBuf::from(".")));
        assert_eq!(parsed.workdir, job.workdir);
    }

    #[test]
    fn a_job_without_source_or_files_runs_in_its_workdir() {
        let mut job = job(Path::new("/w/j"));
        job.source = None;
        job.inputs.clear();
        job.outputs.clear();
        let parsed = parse(&args(&job, "file:///store"));
        assert_eq!(parsed.source, None);
        assert_eq!(parsed.source_dir, None);
        assert_eq!(parsed.job_dir, job.job_dir);
        assert!(!args(&job, "file:///store").contains(&"--source".to_owned()));
    }

    fn store(dir: &Path) -> ArtifactStore {
        ArtifactStore::open(dir.join("store").to_str().expect("utf-8")).expect("open store")
    }

    fn manifest(job: &StepJob, store: &ArtifactStore) -> serde_json::Value {
        serde_json::json!({
            "instance": job.instance,
            "job": job.name,
            "run": job.run_id,
            "step": job.step,
            "attempt": job.attempt,
            "artifacts": [{
                "output": "model",
                "uri": store.uri(&job.outputs[0].key),
                "sha256": "ab".repeat(32),
                "size": 3,
            }],
        })
    }

    #[tokio::test]
    async fn a_valid_manifest_reads_as_the_stored_outputs_and_none_when_absent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let job = job(Path::new("/j"));
        assert_eq!(outcome(&store, &job).await.expect("outcome"), None);

        let key = artifacts::manifest_key(&job.name);
        let bytes = serde_json::to_vec(&manifest(&job, &store)).expect("json");
        store.put_bytes(&key, bytes).await.expect("put");
        assert_eq!(
            outcome(&store, &job).await.expect("outcome"),
            Some(vec![ProducedArtifact {
                output: "model".to_owned(),
                uri: store.uri(&job.outputs[0].key),
                sha256: "ab".repeat(32),
                size: 3,
            }])
        );
    }

    #[tokio::test]
    async fn a_manifest_that_does_not_match_its_job_is_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let job = job(Path::new("/j"));
        let key = artifacts::manifest_key(&job.name);
        let good = manifest(&job, &store);
        let mut bad = Vec::new();
        for (pointer, value) in [
            ("/attempt", serde_json::json!(1)),
            ("/instance", serde_json::json!("other")),
            ("/job", serde_json::json!("ty-other-7-train-2")),
            ("/artifacts/0/output", serde_json::json!("weights")),
            ("/artifacts/0/uri", serde_json::json!("s3://elsewhere/x")),
            ("/artifacts/0/sha256", serde_json::json!("AB".repeat(32))),
            ("/artifacts/0/sha256", serde_json::json!("abc")),
            ("/artifacts", serde_json::json!([])),
        ] {
            let mut value_set = good.clone();
            *value_set.pointer_mut(pointer).expect("pointer") = value;
            bad.push(serde_json::to_vec(&value_set).expect("json"));
        }
        bad.push(b"{not json".to_vec());
        for bytes in bad {
            store.put_bytes(&key, bytes.clone()).await.expect("put");
            let error = outcome(&store, &job).await.expect_err("corrupt");
            assert!(
                matches!(error, artifacts::Error::Corrupt { .. }),
                "{}: {error}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    /// Uploads a source tree with an executable script in the step's folder, and the
    /// step's input, as the runtime and an earlier step would.
    async fn stage(store: &ArtifactStore, job: &StepJob) {
        let prefix = &job.source.as_ref().expect("a source").prefix;
        let script = artifacts::source_key(prefix, b"pipelines/churn/train step.sh");
        let script_text = "#!/bin/sh\nset -e\necho training\necho warning >&2\ncat ../shared.txt \"$1\" > \"$2\"\nexit \"${3:-0}\"\n";
        store
            .put_bytes(&script, script_text.as_bytes().to_vec())
            .await
            .expect("put script");
        store
            .put_bytes(
                &artifacts::source_key(prefix, b"pipelines/shared.txt"),
                b"shared ".to_vec(),
            )
            .await
            .expect("put shared");
        let marker = SourceMarker {
            executables: vec![script],
        };
        store
            .put_bytes(
                &artifacts::source_marker_key(prefix),
                serde_json::to_vec(&marker).expect("json"),
            )
            .await
            .expect("put marker");
        store
            .put_bytes(&job.inputs[0].key, b"data".to_vec())
            .await
            .expect("put input");
    }

    /// `job` set to run the staged script, with its extra arguments.
    fn running_script(mut job: StepJob, extra: &[&str]) -> StepJob {
        job.argv = vec![
            "./train step.sh".to_owned(),
            job.inputs[0].path.display().to_string(),
            job.outputs[0].path.display().to_string(),
        ];
        job.argv.extend(extra.iter().map(|arg| (*arg).to_owned()));
        job
    }

    /// Launches `job` as the pod would, with the termination log in the scratch dir.
    async fn run(job: &StepJob, store: &ArtifactStore, scratch: &Path) -> (Ended, String) {
        let (_signals, receiver) = mpsc::unbounded_channel();
        run_with(job, store, scratch, receiver).await
    }

    async fn run_with(
        job: &StepJob,
        store: &ArtifactStore,
        scratch: &Path,
        signals: UnboundedReceiver<libc::c_int>,
    ) -> (Ended, String) {
        let termination = scratch.join("termination-log");
        let mut args = parse(&args(job, store.location()));
        args.termination_log = Some(termination.clone());
        let ended = launch(&args, store, signals).await;
        let message = match std::fs::read_to_string(&termination) {
            Ok(text) => {
                let report: TerminationReport =
                    serde_json::from_str(&text).expect("the termination log is a report");
                assert_eq!(Some(report.clone()), ended.report());
                report.reason
            }
            Err(_) => String::new(),
        };
        (ended, message)
    }

    async fn stored_log(store: &ArtifactStore, job: &StepJob) -> String {
        let bytes = store.get_bytes(&job.log_key).await.expect("get log");
        String::from_utf8(bytes.expect("the log is stored")).expect("utf-8")
    }

    /// The whole in-pod path against `store`: the source and input arrive, the program runs
    /// in its folder, its output, log and manifest are stored.
    async fn a_launch_fetches_runs_and_stores_everything(store: &ArtifactStore) {
        let scratch = tempfile::tempdir().expect("temp dir");
        let job = running_script(job(&scratch.path().join("job")), &[]);
        stage(store, &job).await;

        let (ended, message) = run(&job, store, scratch.path()).await;

        assert_eq!(
            ended,
            Ended {
                exit_code: 0,
                program_exit: Some(0),
                reason: None
            }
        );
        assert_eq!(message, "", "no termination message on success");
        let model = store.get_bytes(&job.outputs[0].key).await.expect("get");
        assert_eq!(model.as_deref(), Some(&b"shared data"[..]));
        let produced = outcome(store, &job)
            .await
            .expect("outcome")
            .expect("a manifest");
        assert_eq!(produced.len(), 1);
        assert_eq!(produced[0].output, "model");
        assert_eq!(produced[0].size, 11);
        let expected: String = sha2::Sha256::digest(b"shared data")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(produced[0].sha256, expected);
        assert_eq!(produced[0].uri, store.uri(&job.outputs[0].key));
        let log = stored_log(store, &job).await;
        assert!(log.contains("training\n"), "{log:?}");
        assert!(log.contains("warning\n"), "{log:?}");
    }

    #[tokio::test]
    async fn a_launch_against_a_directory_store_fetches_runs_and_stores_everything() {
        let dir = tempfile::tempdir().expect("temp dir");
        a_launch_fetches_runs_and_stores_everything(&store(dir.path())).await;
    }

    async fn a_missing_input_fails_before_the_program_runs(store: &ArtifactStore) {
        let scratch = tempfile::tempdir().expect("temp dir");
        let job = running_script(job(&scratch.path().join("job")), &[]);
        stage(store, &job).await;
        let mut job = job;
        job.inputs[0].key = artifacts::output_key("test", job.run_id, "prepare", "data");

        let (ended, message) = run(&job, store, scratch.path()).await;

        assert_eq!(
            message,
            r#"input "test/runs/7/prepare/data" is not in the artifact store"#
        );
        assert_eq!(ended, Ended::failed(1, message.clone()));
        assert_eq!(
            stored_log(store, &job).await,
            "trainyard: input \"test/runs/7/prepare/data\" is not in the artifact store\n",
            "the program never ran"
        );
        assert_eq!(outcome(store, &job).await.expect("outcome"), None);
    }

    #[tokio::test]
    async fn a_missing_input_against_a_directory_store_fails_before_the_program_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        a_missing_input_fails_before_the_program_runs(&store(dir.path())).await;
    }

    #[tokio::test]
    async fn a_missing_output_fails_the_attempt_without_a_manifest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let mut job = running_script(job(&dir.path().join("job")), &[]);
        stage(&store, &job).await;
        job.argv = vec!["true".to_owned()];

        let (ended, message) = run(&job, &store, dir.path()).await;

        assert_eq!(message, "output `model` was not written");
        assert_eq!(ended, Ended::after_exit(1, 0, message.clone()));
        assert_eq!(outcome(&store, &job).await.expect("outcome"), None);
        let log = stored_log(&store, &job).await;
        assert!(
            log.ends_with("trainyard: output `model` was not written\n"),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn the_programs_exit_code_is_the_launchers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let job = running_script(job(&dir.path().join("job")), &["3"]);
        stage(&store, &job).await;

        let (ended, message) = run(&job, &store, dir.path()).await;

        assert_eq!(message, "exited with code 3");
        assert_eq!(ended, Ended::after_exit(3, 3, "exited with code 3"));
        assert_eq!(outcome(&store, &job).await.expect("outcome"), None);
        assert_eq!(
            store.get_bytes(&job.outputs[0].key).await.expect("get"),
            None,
            "outputs of a failed program are not stored"
        );
    }

    #[tokio::test]
    async fn a_program_killed_by_a_signal_ends_the_launch_with_128_plus_the_signal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let mut job = job(&dir.path().join("job"));
        job.source = None;
        job.inputs.clear();
        job.workdir = dir.path().to_owned();
        job.argv = ["sh", "-c", "kill -KILL $$"].map(str::to_owned).to_vec();

        let (ended, message) = run(&job, &store, dir.path()).await;

        assert_eq!(message, "killed by signal 9 (SIGKILL)");
        assert_eq!(ended.exit_code, 137);
    }

    #[tokio::test]
    async fn sigterm_reaches_the_program_which_may_clean_up_before_the_launch_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let ready = dir.path().join("ready");
        let cleaned = dir.path().join("cleaned");
        let mut job = job(&dir.path().join("job"));
        job.source = None;
        job.inputs.clear();
        job.workdir = dir.path().to_owned();
        job.argv = [
            "sh",
            "-c",
            r#"trap 'echo bye > "$2"; exit 0' TERM; : > "$1"; while :; do sleep 0.05; done"#,
            "sh",
        ]
        .map(str::to_owned)
        .to_vec();
        job.argv.push(ready.display().to_string());
        job.argv.push(cleaned.display().to_string());
        let (signals, receiver) = mpsc::unbounded_channel();
        let launched = run_with(&job, &store, dir.path(), receiver);
        let signal = async {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            signals.send(libc::SIGTERM).expect("send");
        };

        let ((ended, message), ()) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(launched, signal)
        })
        .await
        .expect("the launch ends after its program");

        assert_eq!(std::fs::read_to_string(&cleaned).expect("cleaned"), "bye\n");
        assert_eq!(message, "stopped by SIGTERM");
        assert_eq!(ended.exit_code, 143);
        assert_eq!(outcome(&store, &job).await.expect("outcome"), None);
    }

    #[tokio::test]
    async fn a_launch_against_s3_fetches_runs_and_stores_everything_or_reports_a_missing_input() {
        let server = trainyard_testkit::s3::S3Server::start().expect("S3 server");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let open = |prefix: &str| {
            ArtifactStore::open_with_env(&format!("{}/{prefix}", server.url()), server.env())
                .expect("open S3 store")
        };
        a_launch_fetches_runs_and_stores_everything(&open("one")).await;
        a_missing_input_fails_before_the_program_runs(&open("two")).await;
    }

    #[tokio::test]
    async fn an_incomplete_source_upload_fails_the_launch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let job = running_script(job(&dir.path().join("job")), &[]);
        stage(&store, &job).await;
        let prefix = &job.source.as_ref().expect("source").prefix;
        std::fs::remove_file(
            dir.path()
                .join("store")
                .join(artifacts::source_marker_key(prefix)),
        )
        .expect("remove marker");

        let (ended, message) = run(&job, &store, dir.path()).await;

        assert_eq!(
            message,
            r#"source "sources/0123abcd" is not (completely) in the artifact store"#
        );
        assert_eq!(ended.exit_code, 1);
    }
}
