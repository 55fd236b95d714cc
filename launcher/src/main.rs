//! The `trainyard-launch` binary: the command a step's pod runs. It opens the artifact
//! store, turns SIGTERM and SIGINT into signals for the step's program, and exits with the
//! status the launcher decided.

use std::process::ExitCode;

use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use trainyard_launch::launch::{self, LaunchArgs};

/// Run one step attempt where it was scheduled (a pod): fetch its source and inputs from
/// the artifact store, run it, store its outputs, log and manifest. The service writes
/// these arguments; people do not.
#[derive(Debug, clap::Parser)]
#[command(name = "trainyard-launch", version)]
struct Cli {
    #[command(flatten)]
    launch: LaunchArgs,
}

/// The exit status of a launcher that could not start at all.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    // The one TLS crypto provider compiled in; the S3 client needs it installed before it is
    // built. An error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Cli::parse().launch;
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trainyard-launch: error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs the step attempt described by `args` to its end.
fn run(args: &LaunchArgs) -> std::io::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ended = runtime.block_on(async {
        let (forward, signals) = tokio::sync::mpsc::unbounded_channel();
        // Kubernetes sends SIGTERM when the Job is deleted or reaches its deadline; a person
        // at a terminal sends SIGINT. Either goes to the step's program, which decides how
        // to stop; the launcher ends after it.
        for (kind, number) in [
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::interrupt(), libc::SIGINT),
        ] {
            let mut stream = signal(kind)?;
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
        std::io::Result::Ok(launch::launch_at_location(args, signals).await)
    })?;
    Ok(ExitCode::from(ended.exit_code))
}
