//! The process side of a step attempt, shared by the local executor and the in-pod
//! launcher: laying out its files, its process group, reading how it exited, and storing
//! its outputs.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Child;

use crate::artifacts::{self, ArtifactStore};
use crate::step::{ProducedArtifact, StepInput, StepOutput};

/// The combined stdout and stderr of an attempt, inside its work directory.
pub const LOG_FILE: &str = "step.log";

/// How an attempt failed: the program's exit code when it exited by itself, and why, for
/// people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The program's exit code, if it exited on its own.
    pub exit_code: Option<i32>,
    /// What happened: "exited with code 2", "killed by signal 9 (SIGKILL)".
    pub reason: String,
}

/// Appends `note` to the log at `path`, best effort: a log that cannot be written is
/// reported, not fatal.
pub async fn append_to_log(path: &Path, note: &str) {
    let written = async {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        file.write_all(note.as_bytes()).await?;
        file.flush().await
    }
    .await;
    if let Err(error) = written {
        tracing::warn!(log = %path.display(), %error, "could not append to the step's log");
    }
}

/// What every backend does before a step's program starts: checks its working directory,
/// fetches its inputs, and clears the paths of its outputs, so a file left by an earlier
/// attempt cannot pass for this attempt's output. The error is a reason for people.
pub async fn stage(
    artifacts: &ArtifactStore,
    workdir: &Path,
    inputs: &[StepInput],
    outputs: &[StepOutput],
) -> Result<(), String> {
    let shown = |path: &Path, error: io::Error| format!("{}: {error}", path.display());
    match tokio::fs::metadata(workdir).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "working directory {} is not a directory",
                workdir.display()
            ));
        }
        Err(error) => return Err(format!("working directory {}", shown(workdir, error))),
    }
    for input in inputs {
        artifacts
            .get_to_file(&input.key, &input.path)
            .await
            .map_err(|error| match error {
                artifacts::Error::NotFound { key } => {
                    format!("input {key:?} is not in the artifact store")
                }
                error => format!("could not fetch input {:?}: {error}", input.key),
            })?;
    }
    for output in outputs {
        if let Some(parent) = output.path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|error| format!("could not create {}", shown(parent, error)))?;
        }
        match tokio::fs::remove_file(&output.path).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(format!(
                    "could not clear output `{}` at {}",
                    output.name,
                    shown(&output.path, error)
                ));
            }
        }
    }
    Ok(())
}

/// The process group a step's program leads. Dropped while still armed (the supervising
/// task was dropped, for example when the runtime shuts down), it kills the whole group.
pub struct ProcessGroup {
    id: libc::pid_t,
    armed: bool,
}

impl ProcessGroup {
    /// The group led by process `pid`, which was started with `process_group(0)`.
    pub fn led_by(pid: u32) -> Option<Self> {
        libc::pid_t::try_from(pid)
            .ok()
            .map(|id| Self { id, armed: true })
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: killpg touches no memory of this process. The group id stays reserved
        // while any member lives; it is signalled right after its leader is reaped at the
        // latest, long before pid numbers wrap around to reuse it.
        let result = unsafe { libc::killpg(self.id, signal) };
        if result == -1 {
            let error = io::Error::last_os_error();
            // ESRCH: the group is already gone, which is what signalling it is for.
            if error.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(group = self.id, signal, %error, "could not signal a step's processes");
            }
        }
    }

    /// Kills what is left of the group after its leader exited.
    pub fn kill_rest(mut self) {
        self.signal(libc::SIGKILL);
        self.armed = false;
    }

    /// SIGTERM to the group, then SIGKILL to whatever is left after `grace`.
    pub async fn stop(mut self, leader: &mut Child, grace: Duration) {
        self.signal(libc::SIGTERM);
        // Timing out here is expected for programs that ignore SIGTERM; SIGKILL follows.
        let _ = tokio::time::timeout(grace, leader.wait()).await;
        self.signal(libc::SIGKILL);
        self.armed = false;
        if let Err(error) = leader.wait().await {
            tracing::warn!(group = self.id, %error, "could not reap a stopped step");
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            self.signal(libc::SIGKILL);
        }
    }
}

/// The failed state for a non-zero exit or a death by signal; None for exit code 0.
pub fn exit_failure(status: ExitStatus) -> Option<Failure> {
    if let Some(code) = status.code() {
        return (code != 0).then(|| Failure {
            exit_code: Some(code),
            reason: format!("exited with code {code}"),
        });
    }
    let reason = match status.signal() {
        Some(signal) => match signal_name(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        },
        None => format!("ended abnormally ({status})"),
    };
    Some(Failure {
        exit_code: None,
        reason,
    })
}

pub fn signal_name(signal: libc::c_int) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Stores every declared output after a successful exit, in declaration order; a missing
/// one fails the attempt (the error is the reason, for people).
pub async fn store_outputs(
    artifacts: &ArtifactStore,
    outputs: &[StepOutput],
) -> Result<Vec<ProducedArtifact>, String> {
    let mut produced = Vec::with_capacity(outputs.len());
    for output in outputs {
        match tokio::fs::metadata(&output.path).await {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(format!(
                    "output `{}` is not a file; write a single file (an archive for a directory)",
                    output.name
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(format!("output `{}` was not written", output.name));
            }
            Err(error) => {
                return Err(format!(
                    "output `{}` could not be read: {error}",
                    output.name
                ));
            }
        }
        match artifacts.put_file(&output.key, &output.path).await {
            Ok(stored) => produced.push(ProducedArtifact {
                output: output.name.clone(),
                uri: stored.uri,
                sha256: stored.sha256,
                size: stored.size,
            }),
            Err(error) => {
                return Err(format!(
                    "output `{}` could not be stored: {error}",
                    output.name
                ));
            }
        }
    }
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn exit_code_zero_is_no_failure_and_others_say_what_happened() {
        assert_eq!(exit_failure(ExitStatus::from_raw(0)), None);
        assert_eq!(
            exit_failure(ExitStatus::from_raw(3 << 8)),
            Some(Failure {
                exit_code: Some(3),
                reason: "exited with code 3".to_owned()
            })
        );
        assert_eq!(
            exit_failure(ExitStatus::from_raw(libc::SIGKILL)),
            Some(Failure {
                exit_code: None,
                reason: "killed by signal 9 (SIGKILL)".to_owned()
            })
        );
        assert_eq!(signal_name(libc::SIGTERM), Some("SIGTERM"));
        assert_eq!(signal_name(64), None);
    }

    #[tokio::test]
    async fn outputs_are_stored_hashed_in_order_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            ArtifactStore::open(dir.path().join("store").to_str().expect("utf-8")).expect("open");
        let output = |name: &str| StepOutput {
            name: name.to_owned(),
            path: dir.path().join(name),
            key: artifacts::output_key("test", 1, "s", name),
        };
        std::fs::write(dir.path().join("model"), b"abc").expect("write");
        let produced = store_outputs(&store, &[output("model")])
            .await
            .expect("stored");
        assert_eq!(
            produced,
            [ProducedArtifact {
                output: "model".to_owned(),
                uri: store.uri(&output("model").key),
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                    .to_owned(),
                size: 3,
            }]
        );
        assert_eq!(
            store_outputs(&store, &[output("model"), output("metrics")]).await,
            Err("output `metrics` was not written".to_owned())
        );
    }
}
