//! One module per command.

mod admin_setup;
mod debug_port;
mod doctor;
mod mounts;

use std::process::ExitCode;

use crate::cli::{AdminCommand, Cli, Command, DebugCommand};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { json } => doctor::run(json),
        Command::Admin { command: AdminCommand::Setup { dest } } => admin_setup::run(&dest),
        Command::Mount { image, name, fstype, read_write } => {
            mounts::mount(&image, name, &fstype, read_write)
        }
        Command::Unmount { name } => mounts::unmount(&name),
        Command::Debug { command: DebugCommand::Port { port } } => debug_port::run(port),
    }
}
