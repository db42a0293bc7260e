//! `locald up`: progress per service (one line each, redrawn in place on a terminal, appended
//! otherwise), then the URLs; on failure, the failing service's last log lines and a non-zero
//! exit.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use locald_core::config::{FILE_NAME, PROCFILE};
use std::process::ExitCode;

use locald_core::ipc::{Request, Response, ServiceState};

use super::client::{Client, project_dir};
use super::status::paint;

pub fn run(mut args: Vec<String>, dir: Option<PathBuf>, profiles: Vec<String>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => Some(dir),
        None if args.first().is_some_and(|a| is_project_dir(a)) => Some(PathBuf::from(args.remove(0))),
        None => None,
    };
    let dir = project_dir(dir)?;
    let mut board = Board { tty: std::io::stdout().is_terminal(), rows: Vec::new(), drawn: 0 };
    let mut client = Client::connect()?;
    client.send(&Request::Up { dir, services: args, profiles })?;
    loop {
        match client.next()? {
            Response::Progress { service, state, detail } => board.update(service, state, detail),
            Response::UpDone { project, attached, proxy, notes } => {
                let name = match &project.checkout {
                    Some(checkout) => {
                        format!("{}@{} ({})", project.name, checkout.label, checkout.describe())
                    }
                    None => project.name.clone(),
                };
                if attached {
                    println!("{name} was already up");
                }
                println!("{name} is ready:");
                for s in &project.services {
                    println!("  {:<16} {:<40} (direct: http://127.0.0.1:{})", s.name, s.url, s.port);
                }
                if let Some(proxy) = &proxy {
                    super::status::print_proxy_note(proxy);
                }
                for note in notes {
                    println!("note: {note}");
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

/// A service name is a DNS label, so an argument with a `/` or a dot is a path; so is a
/// directory that holds a project (`locald up shop` from its parent).
fn is_project_dir(arg: &str) -> bool {
    let path = Path::new(arg);
    arg.contains(['/', '.']) || [FILE_NAME, PROCFILE].iter().any(|f| path.join(f).is_file())
}

/// One row per service. On a terminal the rows are redrawn in place; otherwise every change
/// is a new line, which is what logs and CI want.
struct Board {
    tty: bool,
    rows: Vec<(String, String)>,
    drawn: usize,
}

impl Board {
    fn update(&mut self, service: String, state: ServiceState, detail: Option<String>) {
        let mut text = paint(self.tty, state, state.as_str());
        if let Some(detail) = detail.filter(|_| state != ServiceState::Running) {
            text.push_str(&format!(" ({detail})"));
        }
        if !self.tty {
            println!("{service:<16} {text}");
            return;
        }
        match self.rows.iter_mut().find(|(name, _)| *name == service) {
            Some(row) => row.1 = text,
            None => self.rows.push((service, text)),
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for (name, text) in &self.rows {
            let _ = writeln!(out, "\x1b[2K{name:<16} {text}");
        }
        let _ = out.flush();
        self.drawn = self.rows.len();
    }
}
