//! `trainyard-launch`: the in-pod side of a step on a cluster. It fetches the step's source
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

use crate::artifacts::{self, ArtifactStore};
use crate::process::{
    Failure, LOG_FILE, ProcessGroup, append_to_log, exit_failure, signal_name, stage, store_outputs,
};
use crate::step::{ProducedArtifact, StepInput, StepOutput};

/// Where Kubernetes reads a container's termination message from, by default.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// How long the program's output may keep flowing after it exits (from processes that left
/// its group and still hold the pipes) before the launcher stops copying it.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Kubernetes keeps at most 4096 bytes of a termination message.
const MAX_TERMINATION_MESSAGE: usize = 4096;

/// Exit status of a launch that failed before or around the program rather than in it.
const EXIT_FAILURE: u8 = 1;

/// What `trainyard-launch` is told: one step attempt, as the service writes it.
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

/// What a successful launch stored, written as the last object of the attempt (at
/// [`artifacts::manifest_key`]); the service reads the attempt's outcome from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The installation that ran the attempt.
    pub instance: String,
    /// The attempt's job name.
    pub job: String,
    /// The run's id.
    pub run: i64,
    /// The step's name.
    pub step: String,
    /// The attempt's number.
    pub attempt: u32,
    /// Every declared output, in declaration order.
    pub artifacts: Vec<ManifestArtifact>,
}

/// One stored output in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestArtifact {
    /// The output's declared name.
    pub output: String,
    /// Where it was stored.
    pub uri: String,
    /// Lowercase hex sha256 of its content.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
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

/// Runs one step attempt as `trainyard-launch` does in a pod: lays out the job directory,
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
    /// A failure with the launcher's `exit_code`, before or around the program.
    pub fn failed(exit_code: u8, reason: impl Into<String>) -> Self {
        Ended {
            exit_code,
            program_exit: None,
            reason: Some(reason.into()),
        }
    }

    /// A failure after the program exited with `program_exit` by itself.
    pub fn after_exit(exit_code: u8, program_exit: i32, reason: impl Into<String>) -> Self {
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
    let stdin = match empty_input() {
        Ok(stdin) => stdin,
        Err(error) => {
            return Err(Ended::failed(
                EXIT_FAILURE,
                format!("could not make the program's stdin: {error}"),
            ));
        }
    };
    let mut command = Command::new(program);
    command
        .args(rest)
        .current_dir(&args.workdir)
        .stdin(stdin)
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
    if let Some(Failure { exit_code, reason }) = exit_failure(status) {
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
    store_outputs(store, &args.outputs)
        .await
        .map_err(|reason| Ended::after_exit(EXIT_FAILURE, 0, reason))
}

/// A stdin that is at its end at once, as `/dev/null` would be: the read end of a pipe
/// whose write end is closed. It needs no `/dev/null`, which a minimal root may not have.
fn empty_input() -> io::Result<Stdio> {
    let (reader, writer) = io::pipe()?;
    drop(writer);
    Ok(reader.into())
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
    stage(store, &args.workdir, &args.inputs, &args.outputs).await?;
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
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        launch: LaunchArgs,
    }

    fn parse(args: &[String]) -> LaunchArgs {
        let argv = std::iter::once("trainyard-launch".to_owned()).chain(args.iter().cloned());
        Cli::try_parse_from(argv)
            .expect("the arguments parse")
            .launch
    }

    fn sample() -> LaunchArgs {
        LaunchArgs {
            instance: "test".to_owned(),
            job: "ty-test-7-train-2".to_owned(),
            run: 7,
            step: "train".to_owned(),
            attempt: 2,
            artifacts: "s3://bucket/prefix".to_owned(),
            job_dir: PathBuf::from("/trainyard/work/ty-test-7-train-2"),
            workdir: PathBuf::from("/trainyard/work/ty-test-7-train-2/src/pipelines/churn"),
            source: Some(artifacts::source_prefix("0123abcd")),
            source_dir: Some(PathBuf::from("pipelines/churn")),
            inputs: vec![StepInput {
                key: artifacts::output_key("test", 7, "prepare", "dataset"),
                path: PathBuf::from("/trainyard/work/ty-test-7-train-2/inputs/dataset"),
            }],
            outputs: vec![StepOutput {
                name: "metrics".to_owned(),
                path: PathBuf::from("/trainyard/work/ty-test-7-train-2/outputs/odd=name"),
                key: artifacts::output_key("test", 7, "train", "metrics"),
            }],
            log_key: artifacts::log_key("ty-test-7-train-2"),
            termination_log: Some(PathBuf::from(TERMINATION_LOG)),
            argv: ["python", "train.py", "--", "-x", "--epochs=3"]
                .map(str::to_owned)
                .to_vec(),
        }
    }

    #[test]
    fn the_command_line_parses_back_into_the_same_arguments() {
        let args = sample();
        assert_eq!(parse(&args.to_args()), args);
        let bare = LaunchArgs {
            source: None,
            source_dir: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            termination_log: None,
            ..sample()
        };
        assert!(!bare.to_args().contains(&"--source".to_owned()));
        assert_eq!(parse(&bare.to_args()), bare);
    }

    #[test]
    fn the_programs_stdin_is_empty_without_dev_null() {
        let stdin = empty_input().expect("a pipe");
        let output = std::process::Command::new("sh")
            .args(["-c", "wc -c"])
            .stdin(stdin)
            .output()
            .expect("sh runs");
        assert!(output.status.success());
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");
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
                "trainyard-launch",
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

    #[test]
    fn a_long_reason_is_cut_so_the_termination_message_stays_whole_json() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("termination-log");
        let report = TerminationReport {
            exit_code: Some(2),
            reason: "é".repeat(3000),
        };
        write_termination_log(&path, &report);
        let text = std::fs::read_to_string(&path).expect("written");
        assert!(text.len() <= MAX_TERMINATION_MESSAGE, "{}", text.len());
        let read: TerminationReport = serde_json::from_str(&text).expect("whole JSON");
        assert_eq!(read.exit_code, Some(2));
        assert!(report.reason.starts_with(&read.reason));
        assert!(read.reason.len() > 3000, "only what does not fit is cut");
    }
}
