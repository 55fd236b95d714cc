//! `trainyard launch`: the in-pod side of a step on a cluster. It fetches the step's source
//! and inputs from the artifact store, runs the command, and stores its outputs, log and a
//! manifest of what it stored, so the service learns the outcome from the store.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedReceiver;

use super::local::{
    LOG_FILE, ProcessGroup, append_to_log, exit_failure, signal_name, store_outputs,
};
use super::{JobState, ProducedArtifact, StepInput, StepJob, StepOutput};
use crate::artifacts::{self, ArtifactStore};

/// Where Kubernetes reads a container's termination message from, by default.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// How long the program's output may keep flowing after it exits (from processes that left
/// its group and still hold the pipes) before the launcher stops copying it.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Kubernetes keeps at most 4096 bytes of a termination message.
const MAX_TERMINATION_MESSAGE: usize = 4096;

/// Exit status of a launch that failed before or around the program rather than in it.
const EXIT_FAILURE: u8 = 1;

/// What `trainyard launch` is told: one step attempt, as [`args`] writes it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LaunchArgs {
    /// The installation that runs the attempt.
    #[arg(long)]
    pub instance: String,
    /// The attempt's job name, under which its manifest is stored.
    #[arg(long)]
    pub job: String,
    /// The run's id.
    #[arg(long)]
    pub run: i64,
    /// The step's name in its pipeline.
    #[arg(long)]
    pub step: String,
    /// The attempt's number, from 1.
    #[arg(long)]
    pub attempt: u32,
    /// The artifact store, as the service opened it (a directory, file:// or s3:// URL).
    #[arg(long, value_name = "URL")]
    pub artifacts: String,
    /// The attempt's own directory: inputs, outputs, the log and the source go under it.
    #[arg(long, value_name = "DIR")]
    pub job_dir: PathBuf,
    /// Where the program runs.
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,
    /// Key prefix of the step's source files, downloaded into JOB_DIR/src first.
    #[arg(long, value_name = "PREFIX", requires = "source_dir")]
    pub source: Option<String>,
    /// The step's folder inside the source (its working directory there).
    #[arg(long, value_name = "DIR", requires = "source")]
    pub source_dir: Option<PathBuf>,
    /// An artifact to fetch before the program starts (repeatable).
    #[arg(long = "input", value_name = "KEY=PATH", value_parser = parse_input)]
    pub inputs: Vec<StepInput>,
    /// A file the program must write, stored under KEY after it exits with 0 (repeatable).
    #[arg(long = "output", value_name = "NAME=PATH=KEY", value_parser = parse_output)]
    pub outputs: Vec<StepOutput>,
    /// Where the attempt's combined output is stored when it ends.
    #[arg(long, value_name = "KEY")]
    pub log_key: String,
    /// Where a failure's reason is written for the service to read (Kubernetes'
    /// terminationMessagePath).
    #[arg(long, value_name = "PATH")]
    pub termination_log: Option<PathBuf>,
    /// The program and its arguments, run without a shell.
    #[arg(last = true, required = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

impl LaunchArgs {
    /// The launch of `job` with artifacts at `artifacts_url`, reporting failures to the
    /// Kubernetes termination log.
    pub fn for_job(job: &StepJob, artifacts_url: &str) -> Self {
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

    /// The command line that parses back into these arguments.
    pub fn to_args(&self) -> Vec<String> {
        let text = |path: &Path| path.to_string_lossy().into_owned();
        let mut args = vec![
            "--instance".to_owned(),
            self.instance.clone(),
            "--job".to_owned(),
            self.job.clone(),
            "--run".to_owned(),
            self.run.to_string(),
            "--step".to_owned(),
            self.step.clone(),
            "--attempt".to_owned(),
            self.attempt.to_string(),
            "--artifacts".to_owned(),
            self.artifacts.clone(),
            "--job-dir".to_owned(),
            text(&self.job_dir),
            "--workdir".to_owned(),
            text(&self.workdir),
        ];
        if let (Some(prefix), Some(dir)) = (&self.source, &self.source_dir) {
            args.extend(["--source".to_owned(), prefix.clone()]);
            args.extend(["--source-dir".to_owned(), text(dir)]);
        }
        for input in &self.inputs {
            args.push("--input".to_owned());
            args.push(format!("{}={}", input.key, text(&input.path)));
        }
        for output in &self.outputs {
            args.push("--output".to_owned());
            args.push(format!(
                "{}={}={}",
                output.name,
                text(&output.path),
                output.key
            ));
        }
        args.extend(["--log-key".to_owned(), self.log_key.clone()]);
        if let Some(path) = &self.termination_log {
            args.extend(["--termination-log".to_owned(), text(path)]);
        }
        args.push("--".to_owned());
        args.extend(self.argv.iter().cloned());
        args
    }
}

/// The arguments after `trainyard launch` that run `job` in a pod, with artifacts at
/// `artifacts_url` (the same store the service uses).
pub fn args(job: &StepJob, artifacts_url: &str) -> Vec<String> {
    LaunchArgs::for_job(job, artifacts_url).to_args()
}

/// `KEY=PATH`; keys cannot hold `=`, so the first one separates.
fn parse_input(text: &str) -> Result<StepInput, String> {
    let (key, path) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=PATH"))?;
    artifacts::check_key(key).map_err(|error| error.to_string())?;
    if path.is_empty() {
        return Err(format!("{text:?} has an empty path"));
    }
    Ok(StepInput {
        key: key.to_owned(),
        path: PathBuf::from(path),
    })
}

/// `NAME=PATH=KEY`; neither names nor keys hold `=`, so a path may.
fn parse_output(text: &str) -> Result<StepOutput, String> {
    let malformed = || format!("{text:?} is not NAME=PATH=KEY");
    let (name, rest) = text.split_once('=').ok_or_else(malformed)?;
    let (path, key) = rest.rsplit_once('=').ok_or_else(malformed)?;
    if name.is_empty() || path.is_empty() {
        return Err(malformed());
    }
    artifacts::check_key(key).map_err(|error| error.to_string())?;
    Ok(StepOutput {
        name: name.to_owned(),
        path: PathBuf::from(path),
        key: key.to_owned(),
    })
}

/// What a successful launch stored, written as the last object of the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    instance: String,
    job: String,
    run: i64,
    step: String,
    attempt: u32,
    artifacts: Vec<ManifestArtifact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestArtifact {
    output: String,
    uri: String,
    sha256: String,
    size: u64,
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

/// How a launch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The exit status for the launcher's process: 0 when every output and the manifest were
    /// stored, the program's own code when it failed, 128 + signal when a signal ended it,
    /// otherwise 1.
    pub exit_code: u8,
    /// The program's own exit code, when it ran and exited by itself.
    pub program_exit: Option<i32>,
    /// Why it failed, for people; None on success.
    pub reason: Option<String>,
}

/// Why an attempt failed, as launch writes it to the pod's termination log (JSON, at most
/// 4,096 bytes) for the service to read from the pod's status. The exit code travels
/// explicitly: launch's own failures also end the container with code 1, and only this
/// tells them apart from a program that exited with 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminationReport {
    /// The program's exit code; none when it never ran or was killed.
    pub exit_code: Option<i32>,
    /// What happened, for people (`exited with code 3`, `output `model` was not written`).
    pub reason: String,
}

/// The contents of the object at a source's marker key: what listing the files cannot say.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceMarker {
    /// Keys of the files that are executable in Git (mode 100755).
    pub executables: Vec<String>,
}

/// Runs one step attempt as `trainyard launch` does in a pod: lays out the job directory,
/// downloads the source and inputs from `store`, runs the program with its output copied to
/// this process's stdout and stderr and to a log, forwards every signal that arrives on
/// `signals` to the program's process group, stores outputs, the log and the manifest, and
/// writes the reason of a failure to the termination log.
pub async fn launch(
    args: &LaunchArgs,
    store: &ArtifactStore,
    signals: UnboundedReceiver<libc::c_int>,
) -> Ended {
    let log_path = args.job_dir.join(LOG_FILE);
    let attempted = attempt(args, store, &log_path, signals).await;
    if let Err(ended) = &attempted
        && let Some(reason) = &ended.reason
    {
        let note = format!("trainyard: {reason}\n");
        eprint!("{note}");
        append_to_log(&log_path, &note).await;
    }
    // A log that was never created (the job directory could not be) has nothing to keep.
    if tokio::fs::try_exists(&log_path).await.unwrap_or(false)
        && let Err(error) = store.put_file(&args.log_key, &log_path).await
    {
        eprintln!("trainyard: could not store the step's log: {error}");
    }
    // The manifest comes last: once it exists, the outputs and the log are in place.
    let ended = match attempted {
        Ok(artifacts) => match write_manifest(args, store, artifacts).await {
            Ok(()) => Ended {
                exit_code: 0,
                program_exit: Some(0),
                reason: None,
            },
            Err(error) => {
                let reason = format!("could not store the manifest: {error}");
                eprintln!("trainyard: {reason}");
                Ended::failed(EXIT_FAILURE, reason)
            }
        },
        Err(ended) => ended,
    };
    if let (Some(report), Some(path)) = (ended.report(), &args.termination_log) {
        write_termination_log(path, &report);
    }
    ended
}

/// [`launch`] with the store opened from `args.artifacts` (and, for S3, this process's
/// `AWS_*` environment); a store that cannot be opened fails the attempt like a missing
/// input does.
pub async fn launch_at_location(
    args: &LaunchArgs,
    signals: UnboundedReceiver<libc::c_int>,
) -> Ended {
    match ArtifactStore::open(&args.artifacts) {
        Ok(store) => launch(args, &store, signals).await,
        Err(error) => {
            let ended = Ended::failed(
                EXIT_FAILURE,
                format!("cannot open the artifact store: {error}"),
            );
            if let Some(report) = ended.report() {
                eprintln!("trainyard: {}", report.reason);
                if let Some(path) = &args.termination_log {
                    write_termination_log(path, &report);
                }
            }
            ended
        }
    }
}

impl Ended {
    fn failed(exit_code: u8, reason: impl Into<String>) -> Self {
        Ended {
            exit_code,
            program_exit: None,
            reason: Some(reason.into()),
        }
    }

    /// A failure after the program exited with `program_exit` by itself.
    fn after_exit(exit_code: u8, program_exit: i32, reason: impl Into<String>) -> Self {
        Ended {
            program_exit: Some(program_exit),
            ..Ended::failed(exit_code, reason)
        }
    }

    /// What the termination log says about this end; None on success.
    pub fn report(&self) -> Option<TerminationReport> {
        self.reason.as_ref().map(|reason| TerminationReport {
            exit_code: self.program_exit,
            reason: reason.clone(),
        })
    }
}

/// Everything up to the program's end and its outputs stored: what was stored, or how the
/// attempt failed.
async fn attempt(
    args: &LaunchArgs,
    store: &ArtifactStore,
    log_path: &Path,
    mut signals: UnboundedReceiver<libc::c_int>,
) -> Result<Vec<ProducedArtifact>, Ended> {
    let log = match prepare(args, store, log_path).await {
        Ok(log) => log,
        Err(reason) => return Err(Ended::failed(EXIT_FAILURE, reason)),
    };
    let Some((program, rest)) = args.argv.split_first() else {
        return Err(Ended::failed(EXIT_FAILURE, "argv is empty"));
    };
    let mut command = Command::new(program);
    command
        .args(rest)
        .current_dir(&args.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Err(Ended::failed(
                EXIT_FAILURE,
                format!("could not start {program:?}: {error}"),
            ));
        }
    };
    let Some(group) = child.id().and_then(ProcessGroup::led_by) else {
        let _ = child.start_kill();
        return Err(Ended::failed(
            EXIT_FAILURE,
            "the started program has no process id",
        ));
    };
    let log = Arc::new(log);
    let copies = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(tee(out, io::stdout, Arc::clone(&log)))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(tee(err, io::stderr, Arc::clone(&log)))),
    ];

    let mut stopped_by = None;
    let mut listening = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.recv(), if listening => match signal {
                // The program decides how to stop; Kubernetes sends SIGKILL after the grace.
                Some(signal) => {
                    group.signal(signal);
                    stopped_by.get_or_insert(signal);
                }
                None => listening = false,
            },
        }
    };
    // The step is over when its program is; anything it left running goes with it.
    group.kill_rest();
    for copy in copies.into_iter().flatten() {
        // Output still flowing from processes that left the group is cut off, not waited for.
        let _ = tokio::time::timeout(OUTPUT_DRAIN, copy).await;
    }

    let status = match status {
        Ok(status) => status,
        Err(error) => {
            return Err(Ended::failed(
                EXIT_FAILURE,
                format!("could not wait for the program: {error}"),
            ));
        }
    };
    if let Some(signal) = stopped_by {
        let name = signal_name(signal).map_or_else(|| signal.to_string(), str::to_owned);
        return Err(Ended::failed(
            signal_exit_code(signal),
            format!("stopped by {name}"),
        ));
    }
    if let Some(JobState::Failed { exit_code, reason }) = exit_failure(status) {
        let code = match (
            exit_code,
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => {
                return Err(Ended::after_exit(
                    u8::try_from(code).unwrap_or(EXIT_FAILURE),
                    code,
                    reason,
                ));
            }
            (None, Some(signal)) => signal_exit_code(signal),
            (None, None) => EXIT_FAILURE,
        };
        return Err(Ended::failed(code, reason));
    }
    match store_outputs(store, &args.outputs).await {
        JobState::Succeeded { artifacts } => Ok(artifacts),
        JobState::Failed { reason, .. } => Err(Ended::after_exit(EXIT_FAILURE, 0, reason)),
        other => Err(Ended::failed(
            EXIT_FAILURE,
            format!("unexpected state {other:?}"),
        )),
    }
}

fn signal_exit_code(signal: libc::c_int) -> u8 {
    u8::try_from(128 + signal).unwrap_or(EXIT_FAILURE)
}

async fn write_manifest(
    args: &LaunchArgs,
    store: &ArtifactStore,
    artifacts: Vec<ProducedArtifact>,
) -> Result<(), artifacts::Error> {
    let manifest = Manifest {
        instance: args.instance.clone(),
        job: args.job.clone(),
        run: args.run,
        step: args.step.clone(),
        attempt: args.attempt,
        artifacts: artifacts
            .into_iter()
            .map(|a| ManifestArtifact {
                output: a.output,
                uri: a.uri,
                sha256: a.sha256,
                size: a.size,
            })
            .collect(),
    };
    let key = artifacts::manifest_key(&args.job);
    // Serializing plain strings and numbers cannot fail.
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    store.put_bytes(&key, bytes).await.map(drop)
}

/// Copies the program's stream to ours (the pod log) and to the attempt's log file.
///
/// The writes are blocking ones: tokio's async stdio is not compiled in, and a chunk written
/// to a pipe the container runtime drains returns at once.
async fn tee<W: io::Write>(
    mut from: impl AsyncRead + Unpin,
    console: fn() -> W,
    log: Arc<std::fs::File>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        // Losing the console must not lose the log, nor the other way round.
        let mut to = console();
        let _ = to.write_all(chunk).and_then(|()| to.flush());
        // An append-mode file takes each write whole, so the two streams interleave by chunk.
        let _ = (&*log).write_all(chunk);
    }
}

/// Lays out the job directory and fetches the source and inputs; errors are the reasons the
/// attempt failed before its program started.
async fn prepare(
    args: &LaunchArgs,
    store: &ArtifactStore,
    log_path: &Path,
) -> Result<std::fs::File, String> {
    let shown = |path: &Path, error: io::Error| format!("{}: {error}", path.display());
    tokio::fs::create_dir_all(&args.job_dir)
        .await
        .map_err(|error| format!("could not create {}", shown(&args.job_dir, error)))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|error| format!("could not create the log {}", shown(log_path, error)))?;
    if let Some(prefix) = &args.source {
        download_source(store, prefix, &args.job_dir.join("src")).await?;
    }
    super::local::stage(store, &args.workdir, &args.inputs, &args.outputs).await?;
    Ok(log)
}

/// Downloads the source tree under `prefix` into `into`, refusing keys that would land
/// outside it; the marker must be there, or the upload was never finished.
async fn download_source(store: &ArtifactStore, prefix: &str, into: &Path) -> Result<(), String> {
    let marker_key = artifacts::source_marker_key(prefix);
    let marker = store
        .get_bytes(&marker_key)
        .await
        .map_err(|error| format!("could not read the source: {error}"))?
        .ok_or_else(|| format!("source {prefix:?} is not (completely) in the artifact store"))?;
    let marker: SourceMarker = serde_json::from_slice(&marker)
        .map_err(|error| format!("source marker {marker_key:?} is unreadable: {error}"))?;
    let keys = store
        .list(prefix)
        .await
        .map_err(|error| format!("could not list the source: {error}"))?;
    for key in &keys {
        let relative = artifacts::source_path(prefix, key).map_err(|error| error.to_string())?;
        store
            .get_to_file(key, &into.join(relative))
            .await
            .map_err(|error| format!("could not fetch the source: {error}"))?;
    }
    for key in &marker.executables {
        use std::os::unix::fs::PermissionsExt as _;
        let relative = artifacts::source_path(prefix, key).map_err(|error| error.to_string())?;
        let path = into.join(relative);
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|error| format!("could not make {} executable: {error}", path.display()))?;
    }
    Ok(())
}

/// Best effort: a termination log that cannot be written leaves the reason in the log.
fn write_termination_log(path: &Path, report: &TerminationReport) {
    let mut report = report.clone();
    // Kubernetes keeps at most 4,096 bytes; shorten the reason so the JSON stays whole.
    let mut text = serde_json::to_string(&report).unwrap_or_default();
    while text.len() > MAX_TERMINATION_MESSAGE && !report.reason.is_empty() {
        let mut end = report
            .reason
            .len()
            .saturating_sub(text.len() - MAX_TERMINATION_MESSAGE);
        while !report.reason.is_char_boundary(end) {
            end -= 1;
        }
        report.reason.truncate(end);
        text = serde_json::to_string(&report).unwrap_or_default();
    }
    if let Err(error) = std::fs::write(path, text) {
        eprintln!(
            "trainyard: could not write the termination log {}: {error}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Parser as _;
    use sha2::Digest as _;
    use tokio::sync::mpsc;

    use super::*;
    use crate::execute::{StepSource, job_name};

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

        assert_eq!(parsed, LaunchArgs::for_job(&job, "s3://bucket/prefix"));
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

    #[test]
    fn malformed_inputs_and_outputs_are_usage_errors() {
        for bad in [
            vec!["--input", "no-equals-sign"],
            vec!["--input", "runs/../x=/a"],
            vec!["--output", "model=/a"],
            vec!["--output", "=/a=runs/1/s/m"],
        ] {
            let mut argv = vec![
                "launch",
                "--instance",
                "test",
                "--job",
                "ty-test-1-s-1",
                "--run",
                "1",
                "--step",
                "s",
                "--attempt",
                "1",
                "--artifacts",
                "/s",
                "--job-dir",
                "/j",
                "--workdir",
                "/j",
                "--log-key",
                "runs/1/s/l",
            ];
            argv.extend(bad.iter().copied());
            argv.extend(["--", "true"]);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }
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
        let open = |prefix: &str| {
            crate::artifacts::tests::s3::open(&server, &format!("{}/{prefix}", server.url()))
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
