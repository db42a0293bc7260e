//! `locald config show`: the configuration as the daemon resolves it (ports, env, domains).

use std::path::PathBuf;
use std::process::ExitCode;

use locald_core::ipc::{Request, Response};

use super::client::{Client, project_dir};

pub fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = project_dir(dir)?;
    match Client::call(&Request::ConfigShow { dir })? {
        Response::Config(config) => {
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}
