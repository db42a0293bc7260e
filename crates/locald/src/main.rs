//! The `locald` command line.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, what and where; the chain gives the where.
            eprintln!("locald: {err:#}");
            ExitCode::FAILURE
        }
    }
}
