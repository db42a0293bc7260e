//! One module per command.

mod admin_setup;
mod client;
mod completions;
mod config_show;
mod dashboard;
mod debug_port;
mod doctor;
mod logs;
mod mounted;
mod mounts;
mod project;
mod server;
mod status;
mod trust;
mod up;

use std::process::ExitCode;

use crate::cli::{AdminCommand, Cli, Command, ConfigCommand, DebugCommand, ServerCommand};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { json } => doctor::run(json),
        Command::Admin { command: AdminCommand::Setup { dest } } => admin_setup::run(&dest),
        Command::Mount { image, name, fstype, read_write } => {
            mounts::mount(&image, name, &fstype, read_write)
        }
        Command::Unmount { name } => mounts::unmount(&name),
        Command::Debug { command: DebugCommand::Port { port } } => debug_port::run(port),
        Command::Up { dir } => up::run(dir),
        Command::Down { dir } => project::down(dir),
        Command::Status { json } => status::run(json),
        Command::Logs { services, follow, tail, since, timestamps, project } => {
            logs::run(&project.dir, services, follow, tail, since.as_deref(), timestamps)
        }
        Command::Start { service, project } => {
            project::control(&project.dir, service, project::Action::Start)
        }
        Command::Stop { service, project } => project::control(&project.dir, service, project::Action::Stop),
        Command::Restart { service, project } => {
            project::control(&project.dir, service, project::Action::Restart)
        }
        Command::Config { command: ConfigCommand::Show { dir } } => config_show::run(dir),
        Command::Dashboard { print } => dashboard::run(print),
        Command::Ca => trust::ca(),
        Command::Trust { args } => trust::run(trust::Action::Trust, &args),
        Command::Untrust { args } => trust::run(trust::Action::Untrust, &args),
        Command::Completions { shell } => completions::run(shell),
        Command::Server { command: ServerCommand::Start } => server::start(),
        Command::Server { command: ServerCommand::Stop } => server::stop(),
    }
}
