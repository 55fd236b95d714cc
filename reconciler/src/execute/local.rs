//! The local executor: every step attempt is a process tree on this machine, in its own
//! process group, with inputs and outputs moved through the artifact store.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::time::Instant;

use trainyard_launch::process::{
    Failure, LOG_FILE, ProcessGroup, append_to_log, exit_failure, stage, store_outputs,
};

use super::{ExecError, Executor, INTERRUPTED, JobEvent, JobState, StepJob, is_job_name};
use crate::artifacts::{self, ArtifactStore};
use crate::spec::units::format_duration;

/// How long a stopped step may take to exit after SIGTERM before its group gets SIGKILL;
/// Kubernetes' default termination grace, so a step sees the same grace on either backend.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);

/// Runs step attempts as local processes. Cheap to clone; clones share their jobs.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
    stop_grace: Duration,
}

#[derive(Debug)]
struct Inner {
    artifacts: ArtifactStore,
    work_root: PathBuf,
    events: UnboundedSender<JobEvent>,
    jobs: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    state: JobState,
    log_key: String,
    /// Set once the log is in the artifact store; from then on it is read from there.
    log_stored: bool,
    cancel: watch::Sender<bool>,
}

impl LocalExecutor {
    /// An executor that keeps each job's files under `work_root/<job name>/` and pushes
    /// to `events` when an attempt's program starts and when the attempt ends.
    pub fn new(
        artifacts: ArtifactStore,
        work_root: PathBuf,
        events: UnboundedSender<JobEvent>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                artifacts,
                work_root,
                events,
                jobs: Mutex::new(HashMap::new()),
            }),
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }

    /// Sets how long a cancelled or timed-out step may take to exit after SIGTERM before its
    /// whole process group is killed.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }
}

impl Inner {
    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update of an entry is a single assignment, so a panic elsewhere cannot have
        // left one half-written.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, name: &str, state: JobState) {
        if let Some(entry) = self.jobs().get_mut(name) {
            entry.state = state;
        }
    }
}

impl Executor for LocalExecutor {
    async fn submit(&self, job: StepJob) -> Result<(), ExecError> {
        check_job(&job)?;
        let cancel = {
            let mut jobs = self.inner.jobs();
            if jobs.contains_key(&job.name) {
                return Ok(());
            }
            let (cancel, cancelled) = watch::channel(false);
            jobs.insert(
                job.name.clone(),
                Entry {
                    state: JobState::Pending,
                    log_key: job.log_key.clone(),
                    log_stored: false,
                    cancel,
                },
            );
            cancelled
        };
        let dir = self.job_dir(&job.name);
        tokio::spawn(supervise(
            Arc::clone(&self.inner),
            job,
            dir,
            cancel,
            self.stop_grace,
        ));
        Ok(())
    }

    async fn observe(&self, name: &str) -> Result<Option<JobState>, ExecError> {
        Ok(self.inner.jobs().get(name).map(|entry| entry.state.clone()))
    }

    async fn cancel(&self, name: &str) -> Result<(), ExecError> {
        if let Some(entry) = self.inner.jobs().get(name) {
            entry.cancel.send_replace(true);
        }
        Ok(())
    }

    async fn logs(&self, name: &str) -> Result<String, ExecError> {
        let stored_key = |inner: &Inner| -> Result<Option<String>, ExecError> {
            let jobs = inner.jobs();
            let entry = jobs.get(name).ok_or_else(|| ExecError::UnknownJob {
                name: name.to_owned(),
            })?;
            Ok(entry.log_stored.then(|| entry.log_key.clone()))
        };
        if stored_key(&self.inner)?.is_none() {
            match tokio::fs::read(self.job_dir(name).join(LOG_FILE)).await {
                Ok(bytes) => return Ok(String::from_utf8_lossy(&bytes).into_owned()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ExecError::Log {
                        name: name.to_owned(),
                        source,
                    });
                }
            }
        }
        // Either stored already, or the work directory was removed just after the log was
        // stored, or the job has not created its log yet.
        match stored_key(&self.inner)? {
            Some(key) => Ok(self
                .inner
                .artifacts
                .get_bytes(&key)
                .await?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()),
            None => Ok(String::new()),
        }
    }

    /// The work directory of job `name`, holding `inputs/`, `outputs/` and the log. It is
    /// emptied when the job starts and removed once its log is stored.
    fn job_dir(&self, name: &str) -> PathBuf {
        self.inner.work_root.join(name)
    }

    fn runs_here(&self) -> bool {
        true
    }

    async fn known_jobs(&self) -> Result<Vec<String>, ExecError> {
        Ok(self.inner.jobs().keys().cloned().collect())
    }
}

fn check_job(job: &StepJob) -> Result<(), ExecError> {
    let invalid = |reason: String| ExecError::InvalidJob {
        name: job.name.clone(),
        reason,
    };
    if !is_job_name(&job.name) {
        return Err(invalid(
            "the name is not a DNS-1123 label; build it with `job_name`".to_owned(),
        ));
    }
    if job.argv.is_empty() {
        return Err(invalid("argv is empty".to_owned()));
    }
    let keys = std::iter::once(&job.log_key)
        .chain(job.inputs.iter().map(|input| &input.key))
        .chain(job.outputs.iter().map(|output| &output.key));
    for key in keys {
        artifacts::check_key(key).map_err(|error| invalid(error.to_string()))?;
    }
    Ok(())
}

/// Runs one attempt to its end, stores its log, and reports the terminal state.
async fn supervise(
    inner: Arc<Inner>,
    job: StepJob,
    dir: PathBuf,
    mut cancel: watch::Receiver<bool>,
    stop_grace: Duration,
) {
    let log_path = dir.join(LOG_FILE);
    // The directory is made just before the program starts and removed once its log is
    // stored, so finding it here means an earlier life of the service began this attempt
    // and died with it (the process got SIGKILL with its parent): running it again under
    // the same attempt would repeat work unseen and spend no retry.
    let begun = tokio::fs::try_exists(&dir).await.unwrap_or(true);
    let state = if begun {
        tracing::warn!(job = %job.name, "found begun by an earlier life of the service");
        JobState::Failed {
            exit_code: None,
            reason: INTERRUPTED.to_owned(),
        }
    } else {
        tracing::info!(job = %job.name, "starting step");
        attempt(&inner, &job, &dir, &log_path, &mut cancel, stop_grace).await
    };
    if let Some(note) = log_note(&state) {
        append_to_log(&log_path, &note).await;
    }
    let log_stored = match inner.artifacts.put_file(&job.log_key, &log_path).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(job = %job.name, %error, "could not store the step's log");
            false
        }
    };
    if let Some(entry) = inner.jobs().get_mut(&job.name) {
        entry.state = state.clone();
        entry.log_stored = log_stored;
    }
    // Without a stored log the local file is the only copy, so the directory stays.
    if log_stored && let Err(error) = tokio::fs::remove_dir_all(&dir).await {
        tracing::warn!(job = %job.name, dir = %dir.display(), %error, "could not remove the work directory");
    }
    tracing::info!(job = %job.name, state = ?state, "step ended");
    // A closed channel means the runtime is shutting down; the state stays observable.
    let _ = inner.events.send(JobEvent {
        name: job.name,
        state,
    });
}

/// Why the attempt ended, written at the end of its log (as the in-pod launcher does on
/// Kubernetes) so that people reading the log see it; a success needs no note.
fn log_note(state: &JobState) -> Option<String> {
    match state {
        JobState::Failed { reason, .. } => Some(format!("trainyard: {reason}\n")),
        JobState::Cancelled => Some("trainyard: cancelled\n".to_owned()),
        JobState::Pending | JobState::Running { .. } | JobState::Succeeded { .. } => None,
    }
}

/// How the wait for the program ended.
enum Outcome {
    Exited(io::Result<ExitStatus>),
    Cancelled,
    TimedOut,
}

async fn attempt(
    inner: &Inner,
    job: &StepJob,
    dir: &Path,
    log_path: &Path,
    cancel: &mut watch::Receiver<bool>,
    stop_grace: Duration,
) -> JobState {
    let timed_out = || JobState::Failed {
        exit_code: None,
        reason: format!(
            "timed out after {}",
            format_duration(job.timeout.unwrap_or_default())
        ),
    };
    // A timeout too large to represent is no limit at all.
    let expiry = expiry(
        job.timeout
            .and_then(|timeout| Instant::now().checked_add(timeout)),
    );
    tokio::pin!(expiry);

    let prepared = tokio::select! {
        biased;
        () = cancelled(cancel) => return JobState::Cancelled,
        () = &mut expiry => return timed_out(),
        prepared = prepare(&inner.artifacts, job, dir, log_path) => prepared,
    };
    let log = match prepared {
        Ok(log) => log,
        Err(reason) => {
            return JobState::Failed {
                exit_code: None,
                reason,
            };
        }
    };
    let mut child = match spawn(job, log).await {
        Ok(child) => child,
        Err(error) => {
            return JobState::Failed {
                exit_code: None,
                reason: format!(
                    "could not start {:?}: {error}",
                    job.argv.first().map(String::as_str).unwrap_or_default()
                ),
            };
        }
    };
    let Some(group) = child.id().and_then(ProcessGroup::led_by) else {
        // Only a reaped child has no id, and nothing has waited for this one yet.
        let _ = child.start_kill();
        return JobState::Failed {
            exit_code: None,
            reason: "the started program has no process id".to_owned(),
        };
    };
    let running = JobState::Running {
        since: chrono::Utc::now(),
    };
    inner.set_state(&job.name, running.clone());
    // A closed channel means the runtime is shutting down; the state stays observable.
    let _ = inner.events.send(JobEvent {
        name: job.name.clone(),
        state: running,
    });

    let outcome = tokio::select! {
        status = child.wait() => Outcome::Exited(status),
        () = cancelled(cancel) => Outcome::Cancelled,
        () = &mut expiry => Outcome::TimedOut,
    };
    let status = match outcome {
        Outcome::Exited(status) => {
            // The step is over when its program is; anything it left running goes with it.
            group.kill_rest();
            status
        }
        Outcome::Cancelled => {
            group.stop(&mut child, stop_grace).await;
            return JobState::Cancelled;
        }
        Outcome::TimedOut => {
            group.stop(&mut child, stop_grace).await;
            return timed_out();
        }
    };
    match status {
        Err(error) => JobState::Failed {
            exit_code: None,
            reason: format!("could not wait for the program: {error}"),
        },
        Ok(status) => match exit_failure(status) {
            Some(Failure { exit_code, reason }) => JobState::Failed { exit_code, reason },
            None => match store_outputs(&inner.artifacts, &job.outputs).await {
                Ok(artifacts) => JobState::Succeeded { artifacts },
                Err(reason) => JobState::Failed {
                    exit_code: Some(0),
                    reason,
                },
            },
        },
    }
}

/// Resolves when the deadline passes; never without one.
async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the job is cancelled.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|cancelled| *cancelled).await.is_err() {
        // The sender lives in the job's entry, which is never removed; without it no cancel
        // can come.
        std::future::pending::<()>().await;
    }
}

/// Lays out the work directory, opens the log and fetches inputs. Errors are reasons for
/// a failed attempt.
async fn prepare(
    artifacts: &ArtifactStore,
    job: &StepJob,
    dir: &Path,
    log_path: &Path,
) -> Result<std::fs::File, String> {
    let shown = |path: &Path, error: io::Error| format!("{}: {error}", path.display());
    // A directory left by an earlier run of the service holds nothing this attempt can trust.
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(format!(
                "could not clear the work directory {}",
                shown(dir, error)
            ));
        }
    }
    for sub in ["inputs", "outputs"] {
        let path = dir.join(sub);
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(|error| format!("could not create {}", shown(&path, error)))?;
    }
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .await
        .map_err(|error| format!("could not create the log {}", shown(log_path, error)))?
        .into_std()
        .await;
    stage(artifacts, &job.workdir, &job.inputs, &job.outputs).await?;
    Ok(log)
}

async fn spawn(job: &StepJob, log: std::fs::File) -> io::Result<Child> {
    let Some((program, args)) = job.argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "argv is empty"));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(&job.env)
        .current_dir(&job.workdir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    #[cfg(target_os = "linux")]
    die_with_service(&mut command);
    spawner::spawn(command).await
}

/// Asks the kernel to SIGKILL the program when the service dies, so a crashed service does
/// not leave training running unobserved.
#[cfg(target_os = "linux")]
fn die_with_service(command: &mut Command) {
    // SAFETY: getpid has no preconditions and cannot fail.
    let service = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. prctl and getppid are plain system calls that neither allocate nor
    // take locks, and both errors are built from an errno value without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The service may have died between fork and prctl, and then no signal comes.
            if libc::getppid() != service {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Forks step processes from one thread that lives as long as the service.
///
/// Linux sends the parent-death signal when the *thread* that forked the child exits, not
/// the process. Runtime worker threads can be retired (`block_in_place`, blocking-pool
/// threads idle out), which would kill healthy steps; this thread never exits.
mod spawner {
    use std::io;
    use std::sync::OnceLock;
    use std::sync::mpsc::{Sender, channel};

    use tokio::process::{Child, Command};
    use tokio::runtime::Handle;
    use tokio::sync::oneshot;

    struct Request {
        command: Command,
        /// The caller's runtime, which will reap the child and wake its waiter.
        runtime: Handle,
        reply: oneshot::Sender<io::Result<Child>>,
    }

    static REQUESTS: OnceLock<Option<Sender<Request>>> = OnceLock::new();

    /// Spawns `command` from the spawner thread, registered with the caller's runtime.
    pub(super) async fn spawn(command: Command) -> io::Result<Child> {
        let stopped = || io::Error::other("the process-spawning thread is not running");
        let requests = REQUESTS.get_or_init(start).as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(Request {
                command,
                runtime: Handle::current(),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn start() -> Option<Sender<Request>> {
        let (sender, requests) = channel::<Request>();
        let started = std::thread::Builder::new()
            .name("trainyard-spawner".to_owned())
            .spawn(move || {
                for Request {
                    mut command,
                    runtime,
                    reply,
                } in requests
                {
                    let _runtime = runtime.enter();
                    if let Err(Ok(child)) = reply.send(command.spawn()) {
                        // The caller gave up while its program was starting; nobody would
                        // ever stop this process tree.
                        if let Some(group) = child.id().and_then(super::ProcessGroup::led_by) {
                            group.kill_rest();
                        }
                    }
                }
            });
        match started {
            Ok(_) => Some(sender),
            Err(error) => {
                tracing::error!(%error, "could not start the process-spawning thread");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::StepOutput;
    use crate::execute::suite::{assert_process_ends, local_harness, read_pid};

    #[tokio::test]
    async fn a_step_that_ignores_sigterm_is_killed_after_the_grace() {
        let (mut h, _dir) = local_harness();
        h.executor = h
            .executor
            .clone()
            .with_stop_grace(Duration::from_millis(200));
        let pid_file = h.scratch_file("stubborn.pid");
        let mut job = h.job(
            "train",
            &[
                "sh",
                "-c",
                r#"trap "" TERM; sleep 300 & echo $! > "$1"; wait"#,
                "sh",
                &pid_file,
            ],
        );
        job.timeout = Some(Duration::from_secs(1));
        h.executor.submit(job.clone()).await.expect("submit");

        let sleeper = read_pid(&pid_file).await;
        assert_eq!(
            h.wait(&job.name).await,
            JobState::Failed {
                exit_code: None,
                reason: "timed out after 1s".to_owned()
            }
        );
        assert_process_ends(sleeper).await;
    }

    #[tokio::test]
    async fn a_cancelled_step_gets_sigterm_first_so_it_can_clean_up() {
        let (mut h, _dir) = local_harness();
        let ready = h.scratch_file("ready");
        let job = h.job(
            "train",
            &[
                "sh",
                "-c",
                r#"trap 'echo cleaning up; exit 0' TERM; echo 1 > "$1"; while :; do sleep 0.05; done"#,
                "sh",
                &ready,
            ],
        );
        h.executor.submit(job.clone()).await.expect("submit");
        read_pid(&ready).await;
        h.executor.cancel(&job.name).await.expect("cancel");

        assert_eq!(h.wait(&job.name).await, JobState::Cancelled);
        let logs = h.executor.logs(&job.name).await.expect("logs");
        // The shell may also report its `sleep` as terminated: the whole group got SIGTERM.
        assert!(
            logs.ends_with("cleaning up\ntrainyard: cancelled\n"),
            "{logs:?}"
        );
    }

    #[tokio::test]
    async fn a_step_killed_by_a_signal_is_reported_with_the_signal_name() {
        let (mut h, _dir) = local_harness();
        let job = h.job("train", &["sh", "-c", "kill -KILL $$"]);
        h.executor.submit(job.clone()).await.expect("submit");

        assert_eq!(
            h.wait(&job.name).await,
            JobState::Failed {
                exit_code: None,
                reason: "killed by signal 9 (SIGKILL)".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn a_program_that_does_not_exist_fails_with_a_clear_reason() {
        let (mut h, _dir) = local_harness();
        let job = h.job("train", &["trainyard-test-no-such-program", "--flag"]);
        h.executor.submit(job.clone()).await.expect("submit");

        let state = h.wait(&job.name).await;
        let JobState::Failed { exit_code, reason } = &state else {
            panic!("expected a failure, got {state:?}");
        };
        assert_eq!(*exit_code, None);
        assert!(
            reason.starts_with(r#"could not start "trainyard-test-no-such-program": "#),
            "{reason}"
        );
        let logs = h.executor.logs(&job.name).await.expect("logs");
        assert_eq!(logs, format!("trainyard: {reason}\n"));
    }

    #[tokio::test]
    async fn the_step_runs_in_its_working_directory() {
        let (mut h, _dir) = local_harness();
        let workdir = h.scratch.join("pipelines/churn");
        std::fs::create_dir_all(&workdir).expect("create workdir");
        let mut job = h.job("train", &[]);
        let out = h.add_output(&mut job, "cwd");
        job.workdir = workdir.clone();
        job.argv = ["sh", "-c", r#"pwd -P > "$1""#, "sh", &out]
            .map(str::to_owned)
            .to_vec();
        h.executor.submit(job.clone()).await.expect("submit");

        let state = h.wait(&job.name).await;
        assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
        let key =
            artifacts::output_key(crate::execute::suite::INSTANCE, job.run_id, "train", "cwd");
        let written = h.artifacts.get_bytes(&key).await.expect("read");
        let expected = std::fs::canonicalize(&workdir).expect("canonical workdir");
        assert_eq!(
            written,
            Some(format!("{}\n", expected.display()).into_bytes())
        );
    }

    #[tokio::test]
    async fn a_missing_working_directory_fails_the_step() {
        let (mut h, _dir) = local_harness();
        let mut job = h.job("train", &["true"]);
        job.workdir = h.scratch.join("not-there");
        h.executor.submit(job.clone()).await.expect("submit");

        let state = h.wait(&job.name).await;
        let JobState::Failed { reason, .. } = &state else {
            panic!("expected a failure, got {state:?}");
        };
        assert!(reason.starts_with("working directory "), "{reason}");
        assert!(reason.contains("not-there"), "{reason}");
    }

    #[tokio::test]
    async fn jobs_that_cannot_run_are_refused_at_submit() {
        let (mut h, _dir) = local_harness();
        let empty = h.job("train", &[]);
        let mut badly_named = h.job("train", &["true"]);
        badly_named.name = "../../etc".to_owned();
        let mut escaping = h.job("train", &["true"]);
        escaping.outputs.push(StepOutput {
            name: "model".to_owned(),
            path: h.scratch.join("model"),
            key: "runs/1/../../model".to_owned(),
        });
        for job in [empty, badly_named, escaping] {
            let error = h.executor.submit(job.clone()).await.expect_err("refused");
            assert!(matches!(error, ExecError::InvalidJob { .. }), "{error}");
            assert_eq!(h.executor.observe(&job.name).await.expect("observe"), None);
        }
        h.assert_no_more_events();
    }

    #[tokio::test]
    async fn the_work_directory_is_removed_once_the_log_is_stored() {
        let (mut h, _dir) = local_harness();
        let mut job = h.job("train", &[]);
        let out = h.add_output(&mut job, "model");
        job.argv = ["sh", "-c", r#"echo done > "$1""#, "sh", &out]
            .map(str::to_owned)
            .to_vec();
        h.executor.submit(job.clone()).await.expect("submit");

        let state = h.wait(&job.name).await;
        assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
        assert!(!h.executor.job_dir(&job.name).exists());
        assert_eq!(h.executor.logs(&job.name).await.expect("logs"), "");
    }

    #[tokio::test]
    async fn an_attempt_begun_by_an_earlier_life_of_the_service_is_not_run_again() {
        let (mut h, _dir) = local_harness();
        let marker = h.scratch_file("ran");
        let job = h.job(
            "train",
            &["sh", "-c", r#"echo again > "$1""#, "sh", &marker],
        );
        let left = h.executor.job_dir(&job.name);
        std::fs::create_dir_all(left.join("outputs")).expect("create dir");
        std::fs::write(left.join(LOG_FILE), "epoch 1\n").expect("write log");
        h.executor.submit(job.clone()).await.expect("submit");

        assert_eq!(
            h.wait(&job.name).await,
            JobState::Failed {
                exit_code: None,
                reason: INTERRUPTED.to_owned()
            }
        );
        assert!(
            !Path::new(&marker).exists(),
            "the program did not run again"
        );
        let log = h.executor.logs(&job.name).await.expect("logs");
        assert!(
            log.starts_with("epoch 1\n"),
            "the earlier life's log is kept: {log}"
        );
        assert!(log.contains(INTERRUPTED), "{log}");
        assert!(!left.exists(), "the directory goes once the log is stored");
    }

    #[tokio::test]
    async fn a_file_left_by_an_earlier_attempt_does_not_count_as_output() {
        let (mut h, _dir) = local_harness();
        let mut job = h.job("train", &["true"]);
        let stale = h.scratch.join("shared/model");
        std::fs::create_dir_all(h.scratch.join("shared")).expect("create dir");
        std::fs::write(&stale, "from attempt 1").expect("write stale output");
        job.outputs.push(StepOutput {
            name: "model".to_owned(),
            path: stale,
            key: artifacts::output_key(
                crate::execute::suite::INSTANCE,
                job.run_id,
                "train",
                "model",
            ),
        });
        h.executor.submit(job.clone()).await.expect("submit");

        assert_eq!(
            h.wait(&job.name).await,
            JobState::Failed {
                exit_code: Some(0),
                reason: "output `model` was not written".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn a_process_left_running_by_a_finished_step_is_killed() {
        let (mut h, _dir) = local_harness();
        let pid_file = h.scratch_file("daemon.pid");
        let job = h.job(
            "train",
            &["sh", "-c", r#"sleep 300 & echo $! > "$1""#, "sh", &pid_file],
        );
        h.executor.submit(job.clone()).await.expect("submit");

        let state = h.wait(&job.name).await;
        assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
        assert_process_ends(read_pid(&pid_file).await).await;
    }

    #[test]
    fn shutting_down_the_runtime_kills_running_steps() {
        let (mut h, _dir) = local_harness();
        let pid_file = h.scratch_file("orphan.pid");
        let job = h.job(
            "train",
            &[
                "sh",
                "-c",
                r#"sleep 300 & echo $! > "$1"; wait"#,
                "sh",
                &pid_file,
            ],
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let sleeper = runtime.block_on(async {
            h.executor.submit(job).await.expect("submit");
            read_pid(&pid_file).await
        });
        drop(runtime);

        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(assert_process_ends(sleeper));
    }
}
