//! The `trainyard` binary: parses the command line and runs one command.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trainyard: error: {error:#}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}
