//! The `trainyard` binary: parses the command line and runs one command.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Many small, short-lived allocations (parsed documents, JSON rows, Rego values): mimalloc
/// serves them in a fraction of glibc's time and returns memory to the system sooner.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The one TLS crypto provider compiled in; every TLS client (S3, Kubernetes, GitHub)
    // needs it installed before it is built. An error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trainyard: error: {error:#}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}
