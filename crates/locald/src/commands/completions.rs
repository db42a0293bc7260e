//! `locald completions <shell>`.

use std::process::ExitCode;

use clap::CommandFactory;

pub fn run(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    clap_complete::generate(shell, &mut crate::cli::Cli::command(), "locald", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
