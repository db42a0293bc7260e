//! `locald server start|stop`.

use std::process::ExitCode;

use anyhow::Context;
use locald_core::ipc::{Request, Response};
use locald_core::paths;

use super::client::Client;

pub fn start() -> anyhow::Result<ExitCode> {
    // Containers, WSL and CI often have only root: the daemon then runs as root, its services
    // too, and does the shim's root-only jobs itself (`up` says so in one line).
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
