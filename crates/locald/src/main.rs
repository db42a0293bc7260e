//! The `locald` command line.

mod cli;
mod commands;
mod notices;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The unpack helper, first: it unshares a user namespace, which needs a single thread.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == locald_image::owned::HELPER_ARG) {
        let code = locald_image::owned::helper_main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Ok(exe) = std::env::current_exe() {
        locald_image::owned::enable(exe);
    }
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Server { command: cli::ServerCommand::Start }) {
        locald_daemon::daemon_log::init();
    } else {
        quiet_on_closed_stdout();
        notices::init();
    }
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, what and where; the chain gives the where.
            eprintln!("locald: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `locald status | grep -q x` closes our stdout early: end quietly, as `ls | head` does, instead
/// of panicking in `println!` on EPIPE (Rust ignores SIGPIPE by default). The daemon keeps the
/// ignored SIGPIPE: a client going away must never kill it.
fn quiet_on_closed_stdout() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler code, and nothing else in this process has touched
    // SIGPIPE's disposition or runs threads yet.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
