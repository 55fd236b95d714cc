//! `trainyard launch`: the command a step's pod runs. It opens the artifact store, turns
//! SIGTERM and SIGINT into signals for the step's program, and exits with the status the
//! launcher decided.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use trainyard::execute::launcher::{self, LaunchArgs};

/// Runs the step attempt described by `args` to its end.
pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ended = runtime.block_on(async {
        let (forward, signals) = tokio::sync::mpsc::unbounded_channel();
        // Kubernetes sends SIGTERM when the Job is deleted or reaches its deadline; a person
        // at a terminal sends SIGINT. Either goes to the step's program, which decides how
        // to stop; the launcher ends after it.
        for (kind, number) in [
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::interrupt(), libc::SIGINT),
        ] {
            let mut stream = signal(kind).context("cannot listen for signals")?;
            let forward = forward.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if forward.send(number).is_err() {
                        break;
                    }
                }
            });
        }
        drop(forward);
        anyhow::Ok(launcher::launch_at_location(&args, signals).await)
    })?;
    Ok(ExitCode::from(ended.exit_code))
}
