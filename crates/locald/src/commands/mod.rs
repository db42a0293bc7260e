//! One module per command.

mod admin_setup;
mod client;
mod completions;
mod config_show;
mod dashboard;
mod debug_port;
mod doctor;
mod exec;
mod images;
mod logs;
mod mounted;
mod mounts;
mod project;
mod server;
mod status;
mod trust;
mod up;

use std::process::ExitCode;

use crate::cli::{AdminCommand, Cli, Command, ConfigCommand, DebugCommand, ImagesCommand, ServerCommand};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { json } => doctor::run(json),
        Command::Admin { command: AdminCommand::Setup { dest, ports_only } } => {
            admin_setup::run(&dest, ports_only)
        }
        Command::Mount { image, name, fstype, read_write } => {
            mounts::mount(&image, name, &fstype, read_write)
        }
        Command::Unmount { name } => mounts::unmount(&name),
        Command::Debug { command: DebugCommand::Port { port } } => debug_port::run(port),
        Command::Up { args, dir, profiles, watch } => up::run(args, dir, profiles, watch),
        Command::Watch { dir, stop: false } => up::run(Vec::new(), dir, Vec::new(), true),
        Command::Watch { dir, stop: true } => up::unwatch(dir),
        Command::Down { dir, volumes } => project::down(dir, volumes),
        Command::Pull { services, project } => up::pull(&project.dir, services),
        Command::Images { command: None } => images::list(),
        Command::Images { command: Some(ImagesCommand::Prune) } => images::prune(),
        Command::Status { json } => status::run(json),
        Command::Logs { services, follow, tail, since, timestamps, project } => {
            logs::run(&project.dir, services, follow, tail, since.as_deref(), timestamps)
        }
        Command::Start { services, project } => {
            project::control(&project.dir, services, project::Action::Start)
        }
        Command::Stop { services, project } => {
            project::control(&project.dir, services, project::Action::Stop)
        }
        Command::Restart { services, project } => {
            project::control(&project.dir, services, project::Action::Restart)
        }
        Command::Config { command: ConfigCommand::Show { dir } } => config_show::run(dir),
        Command::Exec { service, command, project } => exec::exec(&project.dir, &service, &command),
        Command::Env { service, project } => exec::print(&project.dir, &service),
        Command::Dashboard { print } => dashboard::run(print),
        Command::Ca => trust::ca(),
        Command::Trust { args } => trust::run(trust::Action::Trust, &args),
        Command::Untrust { args } => trust::run(trust::Action::Untrust, &args),
        Command::Completions { shell } => completions::run(shell),
        Command::Server { command: ServerCommand::Start } => server::start(),
        Command::Server { command: ServerCommand::Stop } => server::stop(),
    }
}
