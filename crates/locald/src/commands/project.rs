//! `down`, `start`, `stop`, `restart`: one request, one answer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use locald_core::ipc::Request;

use super::client::{Client, project_dir};

pub enum Action {
    Start,
    Stop,
    Restart,
}

pub fn down(dir: Option<PathBuf>, volumes: bool) -> anyhow::Result<ExitCode> {
    let dir = project_dir(dir)?;
    Client::call(&Request::Down { dir: dir.clone(), volumes })?;
    if volumes {
        println!("stopped {} and removed what its containers wrote", dir.display());
    } else {
        println!("stopped {}", dir.display());
        if let Some(kept) = kept_container_writes(&dir) {
            // Files of the user's subordinate ids among them are not theirs to `rm`: the one
            // way to remove them is said here, where they were kept.
            println!(
                "kept what its containers wrote in {} (`locald down --volumes` removes it)",
                kept.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The project's container writes that `down` keeps, when there are any.
fn kept_container_writes(dir: &Path) -> Option<PathBuf> {
    let containers = locald_core::paths::containers_dir(dir);
    let mut entries = std::fs::read_dir(&containers).ok()?;
    entries.next().is_some().then_some(containers)
}

pub fn control(dir: &Path, services: Vec<String>, action: Action) -> anyhow::Result<ExitCode> {
    let dir = project_dir(Some(dir.to_owned()))?;
    let names = services.join(", ");
    let (request, done) = match action {
        Action::Start => (Request::Start { dir, services }, "started"),
        Action::Stop => (Request::Stop { dir, services }, "stopped"),
        Action::Restart => (Request::Restart { dir, services }, "restarted"),
    };
    Client::call(&request)?;
    println!("{done} {names}");
    Ok(ExitCode::SUCCESS)
}
