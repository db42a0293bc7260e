//! `locald server start|stop`.

use std::process::ExitCode;

use anyhow::Context;
use locald_core::ipc::{Request, Response};
use locald_core::paths;

use super::client::Client;

const ALLOW_ROOT: &str = "LOCALD_ALLOW_ROOT";

pub fn start() -> anyhow::Result<ExitCode> {
    // Containers and CI often only have root; everywhere else root is a mistake.
    if nix::unistd::geteuid().is_root() && std::env::var_os(ALLOW_ROOT).is_none_or(|v| v != "1") {
        anyhow::bail!(
            "the daemon runs as your user, not as root (privileged work goes through locald-shim); \
             set {ALLOW_ROOT}=1 if this machine has no other user"
        );
    }
    let socket = paths::socket_path()?;
    let state = paths::state_dir()?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(locald_daemon::server::run(socket, state))?;
    Ok(ExitCode::SUCCESS)
}

pub fn stop() -> anyhow::Result<ExitCode> {
    let Some(mut client) = Client::existing()? else {
        println!("no daemon running");
        return Ok(ExitCode::SUCCESS);
    };
    client.send(&Request::Shutdown)?;
    match client.next()? {
        Response::Ok => {
            println!("daemon stopped");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}
