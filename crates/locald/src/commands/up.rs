//! `locald up`: progress per service, then the URLs; on failure, the failing service's last
//! log lines and a non-zero exit.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use locald_core::ipc::{Request, Response, ServiceState};

use super::client::{Client, project_dir};
use super::status::paint;

pub fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = project_dir(dir)?;
    let tty = std::io::stdout().is_terminal();
    let mut client = Client::connect()?;
    client.send(&Request::Up { dir })?;
    loop {
        match client.next()? {
            Response::Progress { service, state, detail } => {
                let state_text = paint(tty, state, state.as_str());
                match detail {
                    Some(detail) if state != ServiceState::Running => {
                        println!("{service:<16} {state_text} ({detail})")
                    }
                    _ => println!("{service:<16} {state_text}"),
                }
            }
            Response::UpDone { project, attached } => {
                if attached {
                    println!("{} was already up", project.name);
                }
                println!("{} is ready:", project.name);
                for s in &project.services {
                    println!("  {:<16} {:<40} (direct: http://127.0.0.1:{})", s.name, s.url, s.port);
                }
                return Ok(ExitCode::SUCCESS);
            }
            Response::UpFailed { service, message, last_lines } => {
                eprintln!("locald: service {service} failed: {message}");
                if !last_lines.is_empty() {
                    eprintln!("last lines of {service}:");
                    for line in last_lines {
                        eprintln!("  {line}");
                    }
                }
                return Ok(ExitCode::FAILURE);
            }
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
}
