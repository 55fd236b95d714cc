//! The executor suite: what every backend must do, as generic async functions over any
//! [`Executor`], instantiated here for [`LocalExecutor`]; backends tested from other crates
//! (with the `executor-suite` feature) build a [`Harness`] and call the same functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::{Executor, JobEvent, JobState, LocalExecutor, StepInput, StepJob, StepOutput};
use crate::artifacts::{self, ArtifactStore};

/// How long any single step in the suite may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// The installation every job of the suite belongs to; a backend under test must run it.
pub const INSTANCE: &str = "suite";

/// An executor under test with its event stream, its artifact store and a scratch directory
/// that both the test and the steps can see.
pub struct Harness<E> {
    pub executor: E,
    events: UnboundedReceiver<JobEvent>,
    pub artifacts: ArtifactStore,
    pub scratch: PathBuf,
    next_run: i64,
}

impl<E: Executor> Harness<E> {
    /// A harness over `executor`, which pushes its terminal states to `events` and stores
    /// through `artifacts`; `scratch` is a directory both the test and the steps can see.
    pub fn new(
        executor: E,
        events: UnboundedReceiver<JobEvent>,
        artifacts: ArtifactStore,
        scratch: PathBuf,
    ) -> Self {
        Harness {
            executor,
            events,
            artifacts,
            scratch,
            next_run: 0,
        }
    }

    /// A job for a fresh run with the given argv, running in the scratch directory.
    pub fn job(&mut self, step: &str, argv: &[&str]) -> StepJob {
        self.next_run += 1;
        let run_id = self.next_run;
        let name = super::job_name(INSTANCE, run_id, step, 1);
        StepJob {
            job_dir: self.executor.job_dir(&name),
            log_key: artifacts::log_key(&name),
            name,
            instance: INSTANCE.to_owned(),
            run_id,
            step: step.to_owned(),
            attempt: 1,
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            env: BTreeMap::new(),
            image: "busybox".to_owned(),
            resources: None,
            timeout: None,
            workdir: self.scratch.clone(),
            source: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            secrets: Vec::new(),
        }
    }

    /// Declares output `name` on `job` and returns the path the step must write.
    pub fn add_output(&self, job: &mut StepJob, name: &str) -> String {
        let path = self.executor.job_dir(&job.name).join("outputs").join(name);
        job.outputs.push(StepOutput {
            name: name.to_owned(),
            path: path.clone(),
            key: artifacts::output_key(INSTANCE, job.run_id, &job.step, name),
        });
        path_text(&path)
    }

    /// Declares an input fetched from `key` and returns the path the step reads.
    pub fn add_input(&self, job: &mut StepJob, key: &str, file: &str) -> String {
        let path = self.executor.job_dir(&job.name).join("inputs").join(file);
        job.inputs.push(StepInput {
            key: key.to_owned(),
            path: path.clone(),
        });
        path_text(&path)
    }

    /// A path in the scratch directory, as a step argument.
    pub fn scratch_file(&self, name: &str) -> String {
        path_text(&self.scratch.join(name))
    }

    /// The next event, which must be about job `name`.
    async fn next_event(&mut self, name: &str) -> JobState {
        let event = tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event for {name} within {PATIENCE:?}"))
            .expect("the executor keeps its event channel open");
        assert_eq!(event.name, name, "events arrive for the job under test");
        event.state
    }

    /// Waits for the terminal event of job `name`, past at most one `Running` event.
    pub async fn wait(&mut self, name: &str) -> JobState {
        let state = self.next_event(name).await;
        if let JobState::Running { .. } = state {
            let after = self.next_event(name).await;
            assert!(
                after.is_terminal(),
                "one Running event, then the end: {after:?}"
            );
            return after;
        }
        assert!(state.is_terminal(), "pushed: {state:?}");
        state
    }

    /// Asserts that no event is waiting.
    pub fn assert_no_more_events(&mut self) {
        if let Ok(event) = self.events.try_recv() {
            panic!("unexpected event {event:?}");
        }
    }

    /// Submits `job`, which the executor must accept.
    pub async fn submit(&self, job: &StepJob) {
        self.executor
            .submit(job.clone())
            .await
            .expect("the executor accepts the job");
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls until `file` holds a process id written by a step.
pub async fn read_pid(file: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never wrote its pid to {file}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` has ended (a zombie has ended; only its exit status is left).
fn process_is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
    }
}

/// Polls until process `pid` has ended, failing the test if it outlives a few seconds.
pub async fn assert_process_ends(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !process_is_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shell program that starts a grandchild `sleep` (through a subshell), writes the
/// sleep's pid to its first argument, and waits.
const TREE: &str = r#"(sleep 300 & echo $! > "$1"; wait) & wait"#;

pub async fn a_step_that_succeeds_stores_its_output<E: Executor>(h: &mut Harness<E>) {
    let content = "weights: 0.25 0.5 0.75\n";
    let mut job = h.job("train", &[]);
    let model = h.add_output(&mut job, "model");
    job.argv = [
        "sh",
        "-c",
        r#"printf '%s' "$2" > "$1""#,
        "sh",
        &model,
        content,
    ]
    .map(str::to_owned)
    .to_vec();
    h.submit(&job).await;

    let state = h.wait(&job.name).await;
    let key = artifacts::output_key(INSTANCE, job.run_id, "train", "model");
    let JobState::Succeeded { artifacts } = &state else {
        panic!("expected success, got {state:?}");
    };
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].output, "model");
    assert_eq!(artifacts[0].sha256, sha256_hex(content.as_bytes()));
    assert_eq!(artifacts[0].size, content.len() as u64);
    assert_eq!(artifacts[0].uri, h.artifacts.uri(&key));
    assert_eq!(
        h.artifacts.get_bytes(&key).await.expect("read artifact"),
        Some(content.as_bytes().to_vec())
    );
    assert_eq!(
        h.executor.observe(&job.name).await.expect("observe"),
        Some(state)
    );
}

pub async fn a_failing_step_reports_its_exit_code_and_keeps_its_log<E: Executor>(
    h: &mut Harness<E>,
) {
    let job = h.job(
        "evaluate",
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
    );
    h.submit(&job).await;

    assert_eq!(
        h.wait(&job.name).await,
        JobState::Failed {
            exit_code: Some(3),
            reason: "exited with code 3".to_owned()
        }
    );
    let logs = h.executor.logs(&job.name).await.expect("logs");
    assert!(logs.contains("to-stdout\n"), "{logs:?}");
    assert!(logs.contains("to-stderr\n"), "{logs:?}");
    let stored = h
        .artifacts
        .get_bytes(&job.log_key)
        .await
        .expect("read stored log")
        .expect("the log is stored after a failure");
    let stored = String::from_utf8(stored).expect("utf-8 log");
    assert!(
        stored.contains("to-stdout\n") && stored.contains("to-stderr\n"),
        "{stored:?}"
    );
}

pub async fn a_step_that_does_not_write_an_output_fails<E: Executor>(h: &mut Harness<E>) {
    let mut job = h.job("train", &["true"]);
    h.add_output(&mut job, "model");
    h.submit(&job).await;

    assert_eq!(
        h.wait(&job.name).await,
        JobState::Failed {
            exit_code: Some(0),
            reason: "output `model` was not written".to_owned()
        }
    );
    let key = artifacts::output_key(INSTANCE, job.run_id, "train", "model");
    assert_eq!(h.artifacts.get_bytes(&key).await.expect("read"), None);
}

pub async fn inputs_arrive_at_their_paths_before_the_step_starts<E: Executor>(h: &mut Harness<E>) {
    let dataset = b"id,label\n1,0\n2,1\n".to_vec();
    let mut job = h.job("train", &[]);
    let key = artifacts::output_key(INSTANCE, job.run_id, "prepare", "dataset");
    h.artifacts
        .put_bytes(&key, dataset.clone())
        .await
        .expect("store the input");
    let input = h.add_input(&mut job, &key, "nested/dataset.csv");
    let copy = h.add_output(&mut job, "copy");
    job.argv = ["sh", "-c", r#"cat "$1" > "$2""#, "sh", &input, &copy]
        .map(str::to_owned)
        .to_vec();
    h.submit(&job).await;

    let state = h.wait(&job.name).await;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    let copied = artifacts::output_key(INSTANCE, job.run_id, "train", "copy");
    assert_eq!(
        h.artifacts.get_bytes(&copied).await.expect("read copy"),
        Some(dataset)
    );
}

pub async fn a_missing_input_fails_the_step_before_it_starts<E: Executor>(h: &mut Harness<E>) {
    let marker = h.scratch_file("started");
    let mut job = h.job("train", &[]);
    let input = h.add_input(&mut job, "suite/runs/999/prepare/dataset", "dataset");
    job.argv = ["sh", "-c", r#"touch "$1"; cat "$2""#, "sh", &marker, &input]
        .map(str::to_owned)
        .to_vec();
    h.submit(&job).await;

    let state = h.wait(&job.name).await;
    assert_eq!(
        state,
        JobState::Failed {
            exit_code: None,
            reason: r#"input "suite/runs/999/prepare/dataset" is not in the artifact store"#
                .to_owned()
        }
    );
    assert!(!Path::new(&marker).exists(), "the program never started");
}

pub async fn a_timeout_kills_the_whole_process_tree<E: Executor>(h: &mut Harness<E>) {
    let pid_file = h.scratch_file("timeout-grandchild.pid");
    let mut job = h.job("train", &["sh", "-c", TREE, "sh", &pid_file]);
    // Long enough for a cluster to start the pod (the deadline counts from the Job's start)
    // on a loaded machine, so the tree exists before it is killed.
    job.timeout = Some(Duration::from_secs(5));
    h.submit(&job).await;

    let grandchild = read_pid(&pid_file).await;
    assert_eq!(
        h.wait(&job.name).await,
        JobState::Failed {
            exit_code: None,
            reason: "timed out after 5s".to_owned()
        }
    );
    assert_process_ends(grandchild).await;
}

pub async fn cancelling_a_running_step_kills_its_tree_and_reports_cancelled<E: Executor>(
    h: &mut Harness<E>,
) {
    let pid_file = h.scratch_file("cancel-grandchild.pid");
    let job = h.job("train", &["sh", "-c", TREE, "sh", &pid_file]);
    h.submit(&job).await;

    let grandchild = read_pid(&pid_file).await;
    // The program can write its pid before the backend has recorded that it runs.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = h.executor.observe(&job.name).await.expect("observe");
        if let Some(JobState::Running { .. }) = state {
            break;
        }
        assert_eq!(state, Some(JobState::Pending), "the step is still starting");
        assert!(tokio::time::Instant::now() < deadline, "the step never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.executor.cancel(&job.name).await.expect("cancel");
    assert_eq!(h.wait(&job.name).await, JobState::Cancelled);
    assert_process_ends(grandchild).await;
    h.executor.cancel(&job.name).await.expect("cancel again");
    assert_eq!(
        h.executor.observe(&job.name).await.expect("observe"),
        Some(JobState::Cancelled)
    );
    h.assert_no_more_events();
}

pub async fn a_started_step_is_announced_running_with_its_start_then_its_end<E: Executor>(
    h: &mut Harness<E>,
) {
    let release = h.scratch_file("release-running");
    let job = h.job(
        "train",
        &[
            "sh",
            "-c",
            r#"while [ ! -e "$1" ]; do sleep 0.02; done"#,
            "sh",
            &release,
        ],
    );
    // Clusters report start times in whole seconds.
    let submitted = chrono::Utc::now() - chrono::Duration::seconds(1);
    h.submit(&job).await;

    let JobState::Running { since } = h.next_event(&job.name).await else {
        panic!("the first event says the program runs");
    };
    assert!(
        since >= submitted && since <= chrono::Utc::now(),
        "{since} is when the program started"
    );
    assert_eq!(
        h.executor.observe(&job.name).await.expect("observe"),
        Some(JobState::Running { since })
    );
    std::fs::write(&release, "").expect("release the step");
    let state = h.next_event(&job.name).await;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    h.assert_no_more_events();
}

pub async fn submitting_the_same_name_twice_runs_the_command_once<E: Executor>(h: &mut Harness<E>) {
    let counter = h.scratch_file("counter");
    let job = h.job(
        "train",
        &["sh", "-c", r#"echo run >> "$1"; sleep 0.2"#, "sh", &counter],
    );
    h.submit(&job).await;
    h.submit(&job).await;
    let state = h.wait(&job.name).await;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    h.submit(&job).await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        std::fs::read_to_string(&counter).expect("read counter"),
        "run\n"
    );
    h.assert_no_more_events();
}

pub async fn logs_are_readable_while_running_and_after<E: Executor>(h: &mut Harness<E>) {
    let release = h.scratch_file("release");
    let job = h.job(
        "train",
        &[
            "sh",
            "-c",
            r#"echo started; while [ ! -e "$1" ]; do sleep 0.02; done; echo finished"#,
            "sh",
            &release,
        ],
    );
    h.submit(&job).await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let logs = h.executor.logs(&job.name).await.expect("live logs");
        if logs.contains("started\n") {
            assert!(!logs.contains("finished"), "{logs:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live log: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&release, "").expect("release the step");

    let state = h.wait(&job.name).await;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    assert_eq!(
        h.executor.logs(&job.name).await.expect("final logs"),
        "started\nfinished\n"
    );
    assert_eq!(
        h.artifacts
            .get_bytes(&job.log_key)
            .await
            .expect("stored log"),
        Some(b"started\nfinished\n".to_vec())
    );
}

pub async fn an_unknown_name_is_not_observed_and_cancelling_it_is_harmless<E: Executor>(
    h: &mut Harness<E>,
) {
    let name = super::job_name(INSTANCE, 404, "nothing", 1);
    assert_eq!(h.executor.observe(&name).await.expect("observe"), None);
    h.executor
        .cancel(&name)
        .await
        .expect("cancel an unknown job");
    assert!(h.executor.logs(&name).await.is_err());
    h.assert_no_more_events();
}

pub async fn argv_reaches_the_program_unchanged_without_a_shell<E: Executor>(h: &mut Harness<E>) {
    let tricky = [
        "two words",
        r#"it's "quoted""#,
        "a; echo injected",
        "$HOME",
        "*",
        "`id`",
        "",
        "line\nbreak",
        "{{ params.lr }}",
    ];
    let mut job = h.job("train", &[]);
    let out = h.add_output(&mut job, "argv");
    job.argv = [
        "python3",
        "-c",
        "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))",
        &out,
    ]
    .into_iter()
    .chain(tricky)
    .map(str::to_owned)
    .collect();
    h.submit(&job).await;

    let state = h.wait(&job.name).await;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    let key = artifacts::output_key(INSTANCE, job.run_id, "train", "argv");
    let written = h
        .artifacts
        .get_bytes(&key)
        .await
        .expect("read")
        .expect("argv output stored");
    let received: Vec<String> = serde_json::from_slice(&written).expect("json list");
    assert_eq!(received, tricky);
}

pub async fn the_job_environment_is_added_to_the_services<E: Executor>(h: &mut Harness<E>) {
    let mut job = h.job("train", &[]);
    let out = h.add_output(&mut job, "env");
    job.env.insert(
        "TRAINYARD_TEST_GREETING".to_owned(),
        "hello there".to_owned(),
    );
    job.argv = [
        "sh",
        "-c",
        r#"printf '%s\n%s' "$TRAINYARD_TEST_GREETING" "$PATH" > "$1""#,
        "sh",
        &out,
    ]
    .map(str::to_owned)
    .to_vec();
    h.submit(&job).await;

    let state = h.wait(&job.name).await;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    let key = artifacts::output_key(INSTANCE, job.run_id, "train", "env");
    let written = h
        .artifacts
        .get_bytes(&key)
        .await
        .expect("read")
        .expect("stored");
    let path = std::env::var("PATH").unwrap_or_default();
    assert_eq!(
        String::from_utf8(written).expect("utf-8"),
        format!("hello there\n{path}")
    );
}

/// A local executor over a fresh temporary directory; the directory lives as long as the
/// returned guard.
pub fn local_harness() -> (Harness<LocalExecutor>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let artifacts = ArtifactStore::open(&path_text(&dir.path().join("artifacts")))
        .expect("open artifact store");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let (events, received) = mpsc::unbounded_channel();
    let executor = LocalExecutor::new(artifacts.clone(), dir.path().join("work"), events);
    let harness = Harness {
        executor,
        events: received,
        artifacts,
        scratch,
        next_run: 0,
    };
    (harness, dir)
}

#[cfg(test)]
mod local_backend {
    macro_rules! local_suite {
        ($($test:ident),* $(,)?) => {$(
            // The service runs on the multi-threaded runtime; the local executor's own tests
            // cover the current-thread one.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (mut harness, _dir) = super::local_harness();
                super::$test(&mut harness).await;
            }
        )*};
    }

    local_suite!(
        a_step_that_succeeds_stores_its_output,
        a_failing_step_reports_its_exit_code_and_keeps_its_log,
        a_step_that_does_not_write_an_output_fails,
        inputs_arrive_at_their_paths_before_the_step_starts,
        a_missing_input_fails_the_step_before_it_starts,
        a_timeout_kills_the_whole_process_tree,
        cancelling_a_running_step_kills_its_tree_and_reports_cancelled,
        a_started_step_is_announced_running_with_its_start_then_its_end,
        submitting_the_same_name_twice_runs_the_command_once,
        logs_are_readable_while_running_and_after,
        an_unknown_name_is_not_observed_and_cancelling_it_is_harmless,
        argv_reaches_the_program_unchanged_without_a_shell,
        the_job_environment_is_added_to_the_services,
    );
}
