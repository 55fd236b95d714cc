//! `trainyard cancel` and `retry`: like `trainyard run`, each writes what it asks for to the
//! store, and the service acts on it (a running one within a poll, or the next one to
//! start). Input that does not fit (an unknown run, a run not finished for retry) is refused
//! with the argument named, and nothing is written.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use trainyard::store::{Refused, Store};

use super::{EXIT_INVALID, StoreArgs, print};

/// `trainyard cancel RUN`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The run's id (as `trainyard runs` lists it).
    run: i64,
    /// Where the service keeps its state.
    #[command(flatten)]
    store: StoreArgs,
}

/// `trainyard retry RUN`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The id of a failed or cancelled run.
    run: i64,
    /// Where the service keeps its state.
    #[command(flatten)]
    store: StoreArgs,
}

/// What the service does with a request, for the messages.
const SERVICE: &str = "the service acts on it (trainyard serve, or serve --once)";

fn block_on(task: impl Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(task)
}

async fn connect(store: &StoreArgs) -> Result<Store> {
    let database = store.database()?;
    Store::connect(&database)
        .await
        .with_context(|| format!("cannot open the database {database}"))
}

/// Prints why a request was refused; the exit status for it.
fn refused(why: &Refused) -> ExitCode {
    eprintln!("trainyard: {why}");
    ExitCode::from(EXIT_INVALID)
}

/// Asks the service to cancel a run.
pub fn cancel(args: CancelArgs) -> Result<ExitCode> {
    block_on(async move {
        let store = connect(&args.store).await?;
        match store.cancel_run(args.run).await? {
            Ok(()) => {
                print(&format!(
                    "run {}: cancel requested; its running steps are stopped, its waiting ones \
                     skipped, and it ends cancelled: {SERVICE}\n",
                    args.run
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => Ok(refused(&why)),
        }
    })
}

/// Starts a finished run's failed, skipped and cancelled steps again.
pub fn retry(args: RetryArgs) -> Result<ExitCode> {
    block_on(async move {
        let store = connect(&args.store).await?;
        match store.retry_run(args.run).await? {
            Ok(steps) => {
                print(&format!(
                    "run {}: retrying {}; they start again as new attempts, the other steps \
                     keep their outputs: {SERVICE}\n",
                    args.run,
                    steps.join(", ")
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => Ok(refused(&why)),
        }
    })
}
