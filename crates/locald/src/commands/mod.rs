//! One module per command.

mod admin_setup;
mod doctor;

use std::process::ExitCode;

use crate::cli::{AdminCommand, Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { json } => doctor::run(json),
        Command::Admin { command: AdminCommand::Setup { dest } } => admin_setup::run(&dest),
    }
}
